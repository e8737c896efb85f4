//! SQL injection rules. They look for SQL structure, not SQL words: a
//! search for "select a dress from the shop" or "union station" is plain
//! text, while `' or 'a'='a`, `1 union/**/select` and `; drop table` are
//! not. Rules read the `sql` form (comments removed), except the one about
//! comments, which reads the `text` form.

use crate::normalize::Normalized;

/// Every rule this module reports.
pub(crate) const RULES: &[&str] = &[
    "sqli-union-select",
    "sqli-quote-breakout",
    "sqli-tautology",
    "sqli-subquery",
    "sqli-comment",
    "sqli-stacked-query",
    "sqli-function",
    "sqli-schema",
];

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'@' | b'$')
}

/// A word of the `sql` form and its byte offset.
type Word<'a> = (usize, &'a str);

/// The words of `s` with their byte offsets.
fn words(s: &str) -> Vec<Word<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_word(b[i]) {
            let start = i;
            while i < b.len() && is_word(b[i]) {
                i += 1;
            }
            out.push((start, &s[start..i]));
        } else {
            i += 1;
        }
    }
    out
}

fn skip(b: &[u8], mut i: usize, set: &[u8]) -> usize {
    while i < b.len() && set.contains(&b[i]) {
        i += 1;
    }
    i
}

fn word_at(b: &[u8], i: usize) -> &[u8] {
    let end = (i..b.len()).find(|&j| !is_word(b[j])).unwrap_or(b.len());
    &b[i.min(end)..end]
}

#[derive(Debug, PartialEq)]
enum Operand<'a> {
    Number(&'a [u8]),
    Quoted(&'a [u8]),
    Name(&'a [u8]),
}

impl Operand<'_> {
    fn is_literal(&self) -> bool {
        match self {
            Operand::Number(_) | Operand::Quoted(_) => true,
            Operand::Name(n) => *n == b"true",
        }
    }
}

/// Where the next `)` is, remembered between questions asked in order
/// along a text, so that many unclosed calls cost one scan, not one each.
#[derive(Default)]
struct Closing {
    /// The last question (from where) and its answer.
    last: Option<(usize, Option<usize>)>,
}

impl Closing {
    fn after(&mut self, b: &[u8], from: usize) -> Option<usize> {
        if let Some((asked, found)) = self.last {
            // No `)` between `asked` and `found`: none before it from here.
            if asked <= from && found.is_none_or(|at| from <= at) {
                return found;
            }
        }
        let found = (from..b.len()).find(|&j| b[j] == b')');
        self.last = Some((from, found));
        found
    }
}

/// The operand starting at `i`, and where it ends. A name followed by `(`
/// is a call and takes its arguments with it.
fn operand<'b>(b: &'b [u8], i: usize, closing: &mut Closing) -> Option<(usize, Operand<'b>)> {
    let first = *b.get(i)?;
    if first == b'\'' || first == b'"' {
        let end = (i + 1..b.len()).find(|&j| b[j] == first).unwrap_or(b.len());
        return Some(((end + 1).min(b.len()), Operand::Quoted(&b[i + 1..end])));
    }
    let start = i + usize::from(first == b'-');
    if b.get(start).is_some_and(u8::is_ascii_digit) {
        let end = (start..b.len())
            .find(|&j| !(b[j].is_ascii_digit() || b[j] == b'.'))
            .unwrap_or(b.len());
        return Some((end, Operand::Number(&b[i..end])));
    }
    let name = word_at(b, i);
    if name.is_empty() {
        return None;
    }
    let mut end = i + name.len();
    let open = skip(b, end, b" ");
    if b.get(open) == Some(&b'(') {
        end = closing.after(b, open).map_or(b.len(), |j| j + 1);
    }
    Some((end, Operand::Name(name)))
}

/// The end of a comparison operator at `i`.
fn comparison(b: &[u8], i: usize) -> Option<usize> {
    const SYMBOLS: [&[u8]; 8] = [b"<=>", b"<>", b"!=", b">=", b"<=", b"=", b"<", b">"];
    const WORDS: [&[u8]; 7] = [
        b"like", b"is", b"in", b"between", b"regexp", b"rlike", b"sounds",
    ];
    if let Some(op) = SYMBOLS
        .iter()
        .find(|op| b[i.min(b.len())..].starts_with(op))
    {
        return Some(i + op.len());
    }
    let w = word_at(b, i);
    WORDS.contains(&w).then_some(i + w.len())
}

/// The end of a boolean operator at `i`.
fn logic(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i.min(b.len())..];
    if rest.starts_with(b"||") || rest.starts_with(b"&&") {
        return Some(i + 2);
    }
    let w = word_at(b, i);
    matches!(w, b"or" | b"and" | b"xor").then_some(i + w.len())
}

/// Offsets of quotes that leave the value with an odd number of that quote
/// so far: the quote that would close the application's string literal.
/// Quotes in balanced pairs (`he said 'no' or 'yes' = fine`) are prose.
fn breakout_quotes(b: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let (mut single, mut double) = (0u32, 0u32);
    (0..b.len()).filter(move |&i| match b[i] {
        b'\'' => {
            single += 1;
            single % 2 == 1
        }
        b'"' => {
            double += 1;
            double % 2 == 1
        }
        _ => false,
    })
}

/// `' or 'a'='a`, `1') or (1=1`, `' or true--`, `' having 1=1`,
/// `' order by 3`.
fn quote_breakout(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut closing = Closing::default();
    breakout_quotes(b).any(|q| {
        let j = skip(b, q + 1, b" )");
        if word_at(b, j) == b"order" || word_at(b, j) == b"group" {
            let by = skip(b, j + 5, b" ");
            return word_at(b, by) == b"by"
                && b.get(skip(b, by + 2, b" ")).is_some_and(u8::is_ascii_digit);
        }
        let having = word_at(b, j) == b"having";
        let Some(k) = logic(b, j).or(having.then_some(j + 6)) else {
            return false;
        };
        let Some((end, left)) = operand(b, skip(b, k, b" ("), &mut closing) else {
            return false;
        };
        let after = skip(b, end, b" )");
        comparison(b, after).is_some()
            || (left.is_literal() && (after == b.len() || b[after] == b';'))
    })
}

/// `or 1=1`, `and 'x'='x'`, `or 2<>3`: a boolean operator followed by a
/// comparison of two literals that is always true.
fn tautology(sql: &str, ws: &[Word]) -> bool {
    let b = sql.as_bytes();
    let mut closing = Closing::default();
    ws.iter()
        .filter(|(_, w)| matches!(*w, "or" | "and" | "xor"))
        .any(|(at, w)| {
            let mut check = || -> Option<bool> {
                let (end, left) = operand(b, skip(b, at + w.len(), b" ("), &mut closing)?;
                let op_at = skip(b, end, b" ");
                let op_end = comparison(b, op_at)?;
                let (_, right) = operand(b, skip(b, op_end, b" "), &mut closing)?;
                if !(left.is_literal() && right.is_literal()) || matches!(left, Operand::Name(_)) {
                    return Some(false);
                }
                let op = &b[op_at..op_end];
                let order = || match (&left, &right) {
                    (Operand::Number(l), Operand::Number(r)) => {
                        let num = |n: &[u8]| std::str::from_utf8(n).ok()?.parse::<f64>().ok();
                        num(l)?.partial_cmp(&num(r)?)
                    }
                    (Operand::Quoted(l), Operand::Quoted(r)) => Some(l.cmp(r)),
                    _ => None,
                };
                use std::cmp::Ordering::{Equal, Greater, Less};
                Some(match op {
                    b"=" | b"like" | b"<=>" => left == right,
                    b"!=" | b"<>" => left != right,
                    b">" => order() == Some(Greater),
                    b"<" => order() == Some(Less),
                    b">=" => matches!(order(), Some(Greater | Equal)),
                    b"<=" => matches!(order(), Some(Less | Equal)),
                    _ => false,
                })
            };
            check() == Some(true)
        })
}

/// `and (select ... from ...)`, `or exists(select ... from ...)`,
/// `=(select ... from ...)`, `ascii(substring((select ... from ...`: a
/// query inside a condition or a call, the shape of blind injection. A
/// `(select` after an ordinary word ("please (select one from the list)")
/// is prose.
fn subquery(sql: &str, ws: &[Word]) -> bool {
    let b = sql.as_bytes();
    ws.iter().enumerate().any(|(k, &(at, w))| {
        // A query reads from something.
        if w != "select" || !ws[k + 1..].iter().any(|(_, w)| *w == "from") {
            return false;
        }
        // Back over spaces to the `(` the query opens with.
        let mut i = at;
        while i > 0 && b[i - 1] == b' ' {
            i -= 1;
        }
        if i == 0 || b[i - 1] != b'(' {
            return false;
        }
        let open = i - 1;
        // What comes before that `(`: another `(`, a call's name right
        // against it, a comparison, or a boolean word.
        let mut j = open;
        if j > 0 && is_word(b[j - 1]) {
            return true;
        }
        while j > 0 && b[j - 1] == b' ' {
            j -= 1;
        }
        if j == 0 {
            return false;
        }
        if matches!(b[j - 1], b'(' | b'=' | b'<' | b'>' | b',') {
            return true;
        }
        let end = j;
        while j > 0 && is_word(b[j - 1]) {
            j -= 1;
        }
        matches!(
            &sql[j..end],
            "and" | "or" | "xor" | "not" | "exists" | "in" | "like" | "between"
        )
    })
}

/// `admin'--`, `x' #`, `1'/*`: a breakout quote followed by a comment that
/// cuts off the rest of the application's query.
fn comment_after_quote(text: &str) -> bool {
    let b = text.as_bytes();
    breakout_quotes(b).any(|q| {
        let j = skip(b, q + 1, b" )");
        let rest = &b[j.min(b.len())..];
        rest.starts_with(b"--")
            || rest.starts_with(b"/*")
            || (rest.first() == Some(&b'#') && rest.get(1).is_none_or(|&c| c == b' '))
    })
}

/// `; drop table`, `; insert into`, `; exec xp_...`.
fn stacked_query(sql: &str, ws: &[Word]) -> bool {
    // The first word after the `;`: both go forward together.
    let mut w = 0;
    sql.match_indices(';').any(|(at, _)| {
        while ws.get(w).is_some_and(|(p, _)| *p <= at) {
            w += 1;
        }
        let next: Vec<&str> = ws[w..].iter().take(3).map(|(_, w)| *w).collect();
        let (first, second, third) = (
            next.first().copied(),
            next.get(1).copied(),
            next.get(2).copied(),
        );
        match (first, second) {
            (Some("drop"), Some(w)) => {
                matches!(
                    w,
                    "table"
                        | "database"
                        | "schema"
                        | "user"
                        | "view"
                        | "procedure"
                        | "function"
                        | "index"
                )
            }
            (Some("delete"), Some("from"))
            | (Some("insert"), Some("into"))
            | (Some("truncate"), Some("table")) => true,
            (Some("update"), Some(_)) => third == Some("set"),
            (Some("alter" | "create"), Some(w)) => {
                matches!(
                    w,
                    "table" | "database" | "user" | "function" | "procedure" | "view" | "trigger"
                )
            }
            (Some("declare"), Some(w)) => w.starts_with('@'),
            (Some("exec" | "execute" | "shutdown"), _) => true,
            _ => false,
        }
    })
}

/// Calls and clauses used for timing, file access and error-based probing.
fn functions(sql: &str, ws: &[Word]) -> bool {
    let b = sql.as_bytes();
    let call = |at: usize, name: &str| {
        let open = skip(b, at + name.len(), b" ");
        (b.get(open) == Some(&b'(')).then(|| skip(b, open + 1, b" "))
    };
    ws.iter().enumerate().any(|(i, &(at, w))| {
        let next = ws.get(i + 1).map(|(_, n)| *n);
        match w {
            // `sleep(5)`, not "sleep (8 hours)".
            "sleep" => call(at, w).is_some_and(|arg| {
                let end = skip(b, arg, b"0123456789");
                end > arg && b.get(skip(b, end, b" ")) == Some(&b')')
            }),
            "benchmark" => {
                call(at, w).is_some_and(|arg| b.get(arg).is_some_and(u8::is_ascii_digit))
            }
            "pg_sleep" | "load_file" | "extractvalue" | "updatexml" | "utl_inaddr"
            | "dbms_pipe" => call(at, w).is_some(),
            "xp_cmdshell" | "@@version" | "@@datadir" => true,
            "waitfor" => matches!(next, Some("delay" | "time")),
            "into" => matches!(next, Some("outfile" | "dumpfile")),
            _ => false,
        }
    })
}

/// Names of the catalogues an attacker reads to map the database.
fn schema(sql: &str, ws: &[Word]) -> bool {
    const NAMES: [&str; 6] = [
        "information_schema",
        "sqlite_master",
        "pg_catalog",
        "sysobjects",
        "syscolumns",
        "all_tables",
    ];
    ws.iter().any(|(_, w)| NAMES.contains(w)) || sql.contains("mysql.user")
}

fn union_select(ws: &[Word]) -> bool {
    ws.iter().enumerate().any(|(i, (_, w))| {
        *w == "union" && {
            let mut next = ws.iter().skip(i + 1).map(|(_, w)| *w);
            match next.next() {
                Some("all" | "distinct" | "distinctrow") => next.next() == Some("select"),
                first => first == Some("select"),
            }
        }
    })
}

/// The first SQL injection rule `v` meets: in the value read as SQL
/// code, then read as the rest of a string literal (see
/// `Normalized::sql_in_string`).
pub(crate) fn detect(v: &Normalized) -> Option<&'static str> {
    detect_sql(&v.sql)
        .or_else(|| comment_after_quote(&v.text).then_some("sqli-comment"))
        .or_else(|| {
            (!v.sql_in_string.is_empty() && v.sql_in_string != v.sql)
                .then(|| detect_sql(&v.sql_in_string))
                .flatten()
        })
}

fn detect_sql(sql: &str) -> Option<&'static str> {
    let ws = words(sql);
    if union_select(&ws) {
        Some("sqli-union-select")
    } else if quote_breakout(sql) {
        Some("sqli-quote-breakout")
    } else if tautology(sql, &ws) {
        Some("sqli-tautology")
    } else if subquery(sql, &ws) {
        Some("sqli-subquery")
    } else if stacked_query(sql, &ws) {
        Some("sqli-stacked-query")
    } else if functions(sql, &ws) {
        Some("sqli-function")
    } else if schema(sql, &ws) {
        Some("sqli-schema")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn rule(raw: &str) -> Option<&'static str> {
        detect(&normalize(raw.as_bytes(), true, 3))
    }

    #[test]
    fn attacks_are_caught_by_the_rule_for_their_shape() {
        let cases = [
            (
                "1 UNION SELECT username, password FROM users",
                "sqli-union-select",
            ),
            ("1 union/**/all/**/select 1,2", "sqli-union-select"),
            ("1%20UnIoN%0aSeLeCt%201", "sqli-union-select"),
            ("1 /*!50000union*/ /*!50000select*/ 1", "sqli-union-select"),
            ("-1')union(select(1))", "sqli-union-select"),
            ("' or '1'='1", "sqli-quote-breakout"),
            ("admin' OR 1=1--", "sqli-quote-breakout"),
            ("x\") or (\"a\"=\"a", "sqli-quote-breakout"),
            ("' or true--", "sqli-quote-breakout"),
            ("1' || 1=1 #", "sqli-quote-breakout"),
            ("' order by 3--", "sqli-quote-breakout"),
            ("a' having 1=1--", "sqli-quote-breakout"),
            ("1 or 1=1", "sqli-tautology"),
            ("1) and ('x'='x", "sqli-tautology"),
            ("10 and 2<>3", "sqli-tautology"),
            ("admin'--", "sqli-comment"),
            ("admin' #", "sqli-comment"),
            ("1; DROP TABLE users", "sqli-stacked-query"),
            ("x'; insert into admins values (1)", "sqli-stacked-query"),
            ("1;exec master..xp_cmdshell 'dir'", "sqli-stacked-query"),
            ("1 and sleep(5)", "sqli-function"),
            ("1 AND SLEEP /**/ ( 5 )", "sqli-function"),
            ("1;waitfor delay '0:0:5'", "sqli-function"),
            ("benchmark(5000000,md5(1))", "sqli-function"),
            ("x into outfile '/tmp/a'", "sqli-function"),
            ("select @@version", "sqli-function"),
            ("1 and extractvalue(1,concat(0x7e,user()))", "sqli-function"),
            (
                "select table_name from information_schema.tables",
                "sqli-schema",
            ),
            // Found by a review: a `--` or `#` before the quote that closes
            // the application's literal is inside that literal, not a
            // comment hiding the rest.
            (
                "a--' union select password from users-- ",
                "sqli-union-select",
            ),
            (
                "a#' union select password from users-- ",
                "sqli-union-select",
            ),
            ("a--' or '1'='1", "sqli-quote-breakout"),
            // Blind injection: a query inside a condition or a call.
            (
                "1' and (select substring(password,1,1) from users limit 1)='a",
                "sqli-subquery",
            ),
            (
                "1' and ascii(substring((select password from users),1,1))>64-- ",
                "sqli-subquery",
            ),
            ("1 and (select count(*) from users)>0", "sqli-subquery"),
            ("1 and exists(select * from users)", "sqli-subquery"),
            // Orderings of literals are tautologies too.
            ("1 or 2>1", "sqli-tautology"),
            ("1 and 3 >= 3", "sqli-tautology"),
            ("x' or 'b'>'a", "sqli-quote-breakout"),
            ("-1 union distinctrow select 1", "sqli-union-select"),
        ];
        for (raw, expected) in cases {
            assert_eq!(rule(raw), Some(expected), "{raw:?}");
        }
    }

    #[test]
    fn ordinary_text_is_not_sql() {
        let text = [
            "select a dress from the shop",
            "union station to grand central",
            "drop me a line; update your address",
            "I'd like to order by phone",
            "O'Reilly and Sons -- books",
            "he said 'no' -- then left",
            "he said 'yes' or 'no' = fine",
            "rock 'n' roll or jazz",
            "what is 2 and 2=4",
            "tom and jerry = classic cartoon",
            "how much sleep (8 hours) do I need",
            "#1 hits of the 80's #retro",
            "it's 100% cotton; machine wash",
            "C# and F# programming",
            "size 8 or 10 = fine",
            "execute order 66",
            "please insert coin",
            "please (select one from the list)",
            "shoes (select sizes) and socks",
            "C#--the language's best parts",
        ];
        for raw in text {
            assert_eq!(rule(raw), None, "{raw:?}");
        }
    }
}
