//! Normalisation: every value is brought to the forms the rules read before
//! any rule looks at it, so that an encoding trick meets the same rule as
//! the plain payload.
//!
//! 1. Percent-decode (and IIS-style `%uXXXX`) repeatedly until the value
//!    stops changing, at most `rounds` times; `+` is a space in the first
//!    round of form values only, so an encoded `%2B` stays a plus.
//! 2. Fold overlong UTF-8 encodings of ASCII (`%c0%ae` is `.`), which no
//!    valid client sends and filters often miss.
//! 3. Remove NUL bytes, lowercase ASCII, collapse runs of whitespace.
//! 4. For SQL rules: remove comments (`/* */`, `-- `, `#`), keeping the
//!    body of MySQL's executable `/*! */` comments, and collapse again.
//! 5. For HTML rules: decode character references (`&#x3c;`, `&lt;`).

/// The forms of one value the rules read.
#[derive(Debug, Default)]
pub(crate) struct Normalized {
    /// Decoded, NUL-free, lowercase, whitespace collapsed.
    pub text: String,
    /// `text` without SQL comments.
    pub sql: String,
    /// `text` read as the rest of a string literal the application opened:
    /// kept as it is up to the first quote, which closes the literal,
    /// without SQL comments after it. A `--` or `#` before that quote is
    /// inside the literal, not a comment (`a--' union select ...`). Empty
    /// for a value without a quote.
    pub sql_in_string: String,
    /// `text` with character references decoded.
    pub html: String,
    /// `html` before whitespace collapsing, tabs and line breaks removed:
    /// browsers ignore them inside a URL scheme (`java\tscript:`).
    pub url: String,
    /// A NUL byte was present after decoding.
    pub null_byte: bool,
    /// An overlong UTF-8 sequence was folded.
    pub overlong: bool,
    /// The value still decodes further after `rounds` rounds.
    pub too_deep: bool,
}

fn hex_at(bytes: &[u8], at: usize, len: usize) -> Option<u32> {
    let digits = bytes.get(at..at + len)?;
    digits.iter().try_fold(0u32, |acc, &b| {
        Some(acc << 4 | u32::from(adc_sdk::text::hex_digit(b)?))
    })
}

/// One round of percent-decoding; invalid escapes stay as written.
pub(crate) fn percent_decode_once(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                if let Some(v) = hex_at(input, i + 1, 2) {
                    out.push(v as u8);
                    i += 3;
                    continue;
                }
                let wide = matches!(input.get(i + 1), Some(b'u' | b'U'));
                if let Some(c) = wide
                    .then(|| hex_at(input, i + 2, 4))
                    .flatten()
                    .and_then(char::from_u32)
                {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 6;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Decode until stable or `rounds` are spent; true as well when the result
/// would still decode further.
fn decode(raw: &[u8], form: bool, rounds: u8) -> (Vec<u8>, bool) {
    let mut current = raw.to_vec();
    for round in 0..rounds {
        let next = percent_decode_once(&current, form && round == 0);
        if next == current {
            return (current, false);
        }
        current = next;
    }
    let deeper = percent_decode_once(&current, false) != current;
    (current, deeper)
}

/// Replace two- and three-byte overlong encodings of ASCII by the ASCII
/// byte; true when one was found.
fn fold_overlong(bytes: &mut Vec<u8>) -> bool {
    if memchr::memchr3(0xc0, 0xc1, 0xe0, bytes).is_none() {
        return false;
    }
    let cont = |b: Option<&u8>| b.is_some_and(|b| (0x80..=0xbf).contains(b));
    let mut out = Vec::with_capacity(bytes.len());
    let mut found = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if (b == 0xc0 || b == 0xc1) && cont(bytes.get(i + 1)) {
            out.push(((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f));
            found = true;
            i += 2;
        } else if b == 0xe0
            && bytes.get(i + 1).is_some_and(|b| (0x80..=0x81).contains(b))
            && cont(bytes.get(i + 2))
        {
            out.push(((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f));
            found = true;
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    *bytes = out;
    found
}

/// Collapse every run of whitespace into one space.
pub(crate) fn collapse_whitespace(text: &str) -> String {
    if !text.is_ascii() {
        return collapse_unicode_whitespace(text);
    }
    // ASCII alone, byte by byte: `char::is_whitespace` there is the ASCII
    // whitespace and the vertical tab.
    let mut out = Vec::with_capacity(text.len());
    let mut in_space = false;
    for &b in text.as_bytes() {
        if b.is_ascii_whitespace() || b == 0x0b {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b);
            in_space = false;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

fn collapse_unicode_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// Remove SQL comments, each replaced by a space.
fn strip_sql_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Once a `/*` finds no `*/`, no later one will: the text is not read
    // to its end again for each.
    let mut unclosed = false;
    while let Some(at) = memchr::memchr3(b'/', b'-', b'#', rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(body) = tail.strip_prefix("/*") {
            let end = if unclosed { None } else { body.find("*/") };
            unclosed = end.is_none();
            match end {
                Some(end) => {
                    // `/*!50000 select */` runs its body on MySQL.
                    let inner = &body[..end];
                    if let Some(code) = inner.strip_prefix('!') {
                        out.push(' ');
                        out.push_str(code.trim_start_matches(|c: char| c.is_ascii_digit()));
                    }
                    out.push(' ');
                    rest = &body[end + 2..];
                }
                None => {
                    out.push(' ');
                    rest = body;
                }
            }
        } else if tail.starts_with("--") || tail.starts_with('#') {
            out.push(' ');
            rest = tail.find('\n').map_or("", |end| &tail[end..]);
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn named_reference(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "amp" => '&',
        "colon" => ':',
        "lpar" => '(',
        "rpar" => ')',
        "sol" => '/',
        "tab" => '\t',
        "newline" => '\n',
        _ => return None,
    })
}

/// The character a reference at the start of `tail` (after its `&`) stands
/// for, and the length of the reference; the `;` is optional, as browsers
/// accept `&#60` too.
fn reference(tail: &str) -> Option<(char, usize)> {
    let run = |s: &str, f: fn(&char) -> bool| s.chars().take_while(f).count();
    let (c, len) = if let Some(num) = tail.strip_prefix("#x").or_else(|| tail.strip_prefix("#X")) {
        let n = run(num, char::is_ascii_hexdigit);
        (
            u32::from_str_radix(num.get(..n.min(8))?, 16)
                .ok()
                .and_then(char::from_u32)?,
            2 + n,
        )
    } else if let Some(num) = tail.strip_prefix('#') {
        let n = run(num, char::is_ascii_digit);
        (
            num.get(..n.min(10))?
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)?,
            1 + n,
        )
    } else {
        let n = run(tail, char::is_ascii_alphanumeric);
        (named_reference(&tail[..n])?, n)
    };
    Some((c, len + usize::from(tail[len..].starts_with(';'))))
}

/// Decode HTML character references.
fn decode_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        match reference(tail) {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every form of `raw`. `form`: `+` is a space (query strings, form bodies).
pub(crate) fn normalize(raw: &[u8], form: bool, rounds: u8) -> Normalized {
    let (mut bytes, too_deep) = decode(raw, form, rounds);
    let overlong = fold_overlong(&mut bytes);
    let null_byte = bytes.contains(&0);
    bytes.retain(|&b| b != 0);
    let mut lower = String::from_utf8_lossy(&bytes).into_owned();
    lower.make_ascii_lowercase();

    let referenced = decode_references(&lower).to_ascii_lowercase();
    // Only ASCII bytes go: what is left is UTF-8 still.
    let url = String::from_utf8(
        referenced
            .bytes()
            .filter(|b| !matches!(b, b'\t' | b'\n' | b'\r' | 0))
            .collect(),
    )
    .unwrap_or_default();
    Normalized {
        text: collapse_whitespace(&lower),
        sql: collapse_whitespace(&strip_sql_comments(&lower)),
        sql_in_string: match lower.find(['\'', '"']) {
            Some(q) => collapse_whitespace(&format!(
                "{}{}",
                &lower[..=q],
                strip_sql_comments(&lower[q + 1..])
            )),
            None => String::new(),
        },
        html: collapse_whitespace(&referenced),
        url,
        null_byte,
        overlong,
        too_deep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_whitespace_collapses_as_unicode_whitespace_does() {
        let text: String = (0u8..128).map(char::from).cycle().take(1000).collect();
        let spaced = format!("a \t\x0b\x0c\r\n b{text}  ");
        for t in [text.as_str(), spaced.as_str()] {
            assert_eq!(collapse_whitespace(t), collapse_unicode_whitespace(t));
        }
        assert_eq!(collapse_whitespace("a\u{a0}\u{2003} b"), "a b");
    }

    #[test]
    fn values_are_decoded_until_stable_within_the_bound() {
        let n = normalize(b"%252e%252e%252f", false, 3);
        assert_eq!(n.text, "../");
        assert!(!n.too_deep);
        let deep = normalize(b"%2525252e", false, 3);
        assert_eq!(deep.text, "%2e");
        assert!(deep.too_deep);
    }

    #[test]
    fn plus_is_a_space_only_in_the_first_round_of_form_values() {
        assert_eq!(normalize(b"a+b%2Bc", true, 3).text, "a b+c");
        assert_eq!(normalize(b"a+b", false, 3).text, "a+b");
    }

    #[test]
    fn iis_wide_escapes_and_overlong_utf8_are_decoded() {
        assert_eq!(normalize(b"%u002e%u002e/", false, 3).text, "../");
        let n = normalize(b"%c0%ae%c0%ae%c0%af", false, 3);
        assert_eq!(n.text, "../");
        assert!(n.overlong);
        assert!(normalize(b"%e0%80%ae", false, 3).overlong);
        assert!(!normalize("caf\u{e9}".as_bytes(), false, 3).overlong);
    }

    #[test]
    fn nul_bytes_are_flagged_and_removed() {
        let n = normalize(b"file.php%00.jpg", false, 3);
        assert!(n.null_byte);
        assert_eq!(n.text, "file.php.jpg");
    }

    #[test]
    fn case_and_whitespace_are_normalised() {
        assert_eq!(
            normalize(b"UNION%0a%09  SeLeCt", false, 3).text,
            "union select"
        );
    }

    #[test]
    fn sql_comments_are_removed_but_executable_ones_keep_their_body() {
        assert_eq!(normalize(b"union/**/select", false, 3).sql, "union select");
        assert_eq!(
            normalize(b"union/*!50000select*/1", false, 3).sql,
            "union select 1"
        );
        assert_eq!(
            normalize(b"union-- x\nselect", false, 3).sql,
            "union select"
        );
        assert_eq!(normalize(b"union#x%0aselect", false, 3).sql, "union select");
        assert_eq!(normalize(b"a/*b", false, 3).sql, "a b");
        assert_eq!(normalize(b"a-b/c", false, 3).sql, "a-b/c");
    }

    #[test]
    fn character_references_are_decoded_for_html_rules() {
        let n = normalize(
            b"&lt;script&gt; &#x3C;img &#60;b &#106avascript&colon;",
            false,
            3,
        );
        assert_eq!(n.html, "<script> <img <b javascript:");
        assert_eq!(
            normalize(b"fish &chips; &#xzz;", false, 3).html,
            "fish &chips; &#xzz;"
        );
    }

    #[test]
    fn the_url_form_drops_tabs_and_line_breaks() {
        assert_eq!(
            normalize(b"java%09scr%0aipt:alert(1)", false, 3).url,
            "javascript:alert(1)"
        );
    }
}
