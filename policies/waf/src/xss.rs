//! Cross-site scripting rules: markup that runs script (a `script` tag, an
//! event-handler attribute, an embedding tag) and script URLs. A `<` that
//! opens no tag ("a < b", "<3") is text. Rules read the `html` form
//! (character references decoded) and, for URLs, the `url` form.

use crate::normalize::Normalized;

/// Every rule this module reports.
pub(crate) const RULES: &[&str] = &[
    "xss-script-tag",
    "xss-event-handler",
    "xss-dangerous-tag",
    "xss-script-url",
];

/// Tags that load or run content, or change how the page resolves URLs.
const DANGEROUS_TAGS: [&str; 12] = [
    "iframe", "frame", "frameset", "object", "embed", "applet", "base", "meta", "svg", "math",
    "link", "style",
];

const SCRIPT_SCHEMES: [&str; 3] = ["javascript:", "vbscript:", "livescript:"];

/// What event-handler names go on after `on`, for values outside any tag,
/// where prose like `"online = better"` must not count.
const HANDLER_STEMS: [&str; 24] = [
    "abort",
    "animation",
    "auxclick",
    "begin",
    "blur",
    "canplay",
    "change",
    "click",
    "contextmenu",
    "copy",
    "dblclick",
    "drag",
    "drop",
    "error",
    "focus",
    "input",
    "key",
    "load",
    "mouse",
    "paste",
    "pointer",
    "scroll",
    "toggle",
    "transition",
];

/// Whether an event-handler attribute starts at `p`: `on` and at least three
/// letters, then `=`, after a separator that can start an attribute
/// (`<img src=x onerror=...`, `<svg/onload=...`). `Some(true)` when the
/// name is also a known handler's.
fn handler_at(b: &[u8], p: usize) -> Option<bool> {
    if p == 0 || !matches!(b[p - 1], b' ' | b'/' | b'"' | b'\'') || !b[p..].starts_with(b"on") {
        return None;
    }
    let name_end = (p + 2..b.len())
        .find(|&j| !b[j].is_ascii_alphabetic())
        .unwrap_or(b.len());
    let name = &b[p + 2..name_end];
    let eq = (name_end..b.len()).find(|&j| b[j] != b' ');
    (name.len() >= 3 && eq.is_some_and(|j| b[j] == b'=')).then(|| {
        HANDLER_STEMS
            .iter()
            .any(|stem| name.starts_with(stem.as_bytes()))
    })
}

/// The name of the tag a `<` at `at` opens or closes, and where it ends;
/// none when the `<` starts no tag ("a < b", "<3").
fn tag_at(b: &[u8], at: usize) -> Option<(&[u8], usize, bool)> {
    let closing = b.get(at + 1) == Some(&b'/');
    let start = at + 1 + usize::from(closing);
    let name_end = (start..b.len())
        .find(|&j| !b[j].is_ascii_alphanumeric())
        .unwrap_or(b.len());
    let name = &b[start..name_end];
    let opens = name.first().is_some_and(u8::is_ascii_alphabetic)
        && b.get(name_end)
            .is_none_or(|c| matches!(c, b' ' | b'/' | b'>'));
    opens.then_some((name, name_end, closing))
}

/// The markup rules, in one pass from the end of the text, so that every
/// `<` and quote is judged in constant time however long the text:
///
/// - a `script` tag; a tag with an event-handler attribute before the tag
///   ends (its first `>` outside a quoted attribute value); a dangerous
///   tag (the first of the first two found from the start wins, as a
///   reader meets them);
/// - a quote that ends an attribute value, then a known event handler
///   before the tag ends: `" onmouseover=alert(1) x="` injected into
///   `value="..."`.
///
/// Going backwards, where a tag ends when read from a position is known
/// from where it ends when read from the next one: a `>` ends it there; a
/// quote defers to where it ends past the matching quote; anything else
/// changes nothing.
fn markup(html: &str) -> Option<&'static str> {
    let b = html.as_bytes();
    let len = b.len();
    // Where a tag read from `i + 1` ends; the same past the nearest `"` and
    // `'` to the right (none: no such quote); the nearest handlers at or
    // after `i + 1`, any and known.
    let mut tag_end = len;
    let mut past_quote: [Option<usize>; 2] = [None, None];
    let (mut any_handler, mut known_handler) = (usize::MAX, usize::MAX);
    let mut first = None;
    let mut dangerous = false;
    let mut breakout = false;
    for i in (0..len).rev() {
        let quote = match b[i] {
            b'"' => Some(0),
            b'\'' => Some(1),
            _ => None,
        };
        if quote.is_some() && known_handler < tag_end {
            breakout = true;
        }
        if b[i] == b'<' {
            if let Some((name, _, closing)) = tag_at(b, i) {
                // No handler can start inside the name: the nearest is
                // past it, and the tag ends where it ends read from `i + 1`.
                if name == b"script" {
                    first = Some("xss-script-tag");
                } else if !closing && any_handler < tag_end {
                    first = Some("xss-event-handler");
                }
                dangerous |= DANGEROUS_TAGS.iter().any(|t| t.as_bytes() == name);
            }
        }

        let here = match (b[i], quote) {
            (b'>', _) => i,
            (_, Some(q)) => past_quote[q].unwrap_or(len),
            _ => tag_end,
        };
        if let Some(q) = quote {
            past_quote[q] = Some(tag_end);
        }
        tag_end = here;
        if let Some(known) = handler_at(b, i) {
            any_handler = i;
            if known {
                known_handler = i;
            }
        }
    }
    first
        .or(dangerous.then_some("xss-dangerous-tag"))
        .or(breakout.then_some("xss-event-handler"))
}

/// `javascript:alert(1)`, `javascript: void(0)`, `data:text/html,...`.
/// "learn javascript: the good parts" is text: after the colon comes
/// neither code nor an immediate character.
fn script_url(url: &str) -> bool {
    if url.contains("data:text/html") || url.contains("data:image/svg+xml") {
        return true;
    }
    SCRIPT_SCHEMES.iter().any(|scheme| {
        url.match_indices(scheme).any(|(at, _)| {
            let rest = &url[at + scheme.len()..];
            let trimmed = rest.trim_start();
            if trimmed.is_empty() {
                return false;
            }
            if trimmed.len() == rest.len() {
                return true;
            }
            let token = trimmed
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_$.".contains(c)))
                .unwrap_or(trimmed.len());
            token > 0 && trimmed[token..].trim_start().starts_with(['(', '`', '='])
        })
    })
}

/// The first XSS rule `v` meets.
pub(crate) fn detect(v: &Normalized) -> Option<&'static str> {
    markup(&v.html).or_else(|| script_url(&v.url).then_some("xss-script-url"))
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
            ("<script>alert(1)</script>", "xss-script-tag"),
            ("<ScRiPt src=//evil.example/x.js>", "xss-script-tag"),
            ("%3Cscript%3Ealert(1)%3C%2Fscript%3E", "xss-script-tag"),
            ("%253Cscript%253E", "xss-script-tag"),
            ("&lt;script&gt;alert(1)", "xss-script-tag"),
            ("\"><img src=x onerror=alert(1)>", "xss-event-handler"),
            ("<img%0asrc=x%0aonerror=alert(1)>", "xss-event-handler"),
            ("<body onload = go()>", "xss-event-handler"),
            ("<svg/onload=alert(1)>", "xss-event-handler"),
            ("<details open ontoggle=alert(1)>", "xss-event-handler"),
            ("\" onmouseover=alert(1) x=\"", "xss-event-handler"),
            ("'/onfocus='alert(1)", "xss-event-handler"),
            ("<iframe src=//evil.example>", "xss-dangerous-tag"),
            ("<object data=x.swf>", "xss-dangerous-tag"),
            ("<a href=\"javascript:alert(1)\">x</a>", "xss-script-url"),
            ("javascript:alert`1`", "xss-script-url"),
            ("java%09script:alert(1)", "xss-script-url"),
            ("&#106;avascript&colon;alert(1)", "xss-script-url"),
            ("javascript: void(0)", "xss-script-url"),
            ("data:text/html;base64,PHNjcmlwdD4=", "xss-script-url"),
        ];
        for (raw, expected) in cases {
            assert_eq!(rule(raw), Some(expected), "{raw:?}");
        }
    }

    #[test]
    fn ordinary_text_is_not_markup() {
        let text = [
            "price < 5 and > 2",
            "I <3 this shop",
            "x<y and y>z",
            "<b>bold</b> online = yes",
            "learn javascript: the good parts",
            "tom & jerry; fish &chips",
            "a<b onion",
            "the one = the only",
            "she said \"online = better\"",
            "'only' = the word",
        ];
        for raw in text {
            assert_eq!(rule(raw), None, "{raw:?}");
        }
    }

    /// The rules as first written: a scan to the end of the tag from every
    /// `<` and every quote, quadratic in the worst case. The one-pass
    /// `markup` must decide every text as they did.
    mod quadratic {
        use super::super::{DANGEROUS_TAGS, HANDLER_STEMS};

        /// `on` and at least three letters, then `=`, after a separator that can
        /// start an attribute: `<img src=x onerror=...`, `<svg/onload=...`. With
        /// `known_only`, the name must also be a known handler's.
        fn event_handler(region: &[u8], known_only: bool) -> bool {
            (1..region.len()).any(|i| {
                if !matches!(region[i - 1], b' ' | b'/' | b'"' | b'\'')
                    || !region[i..].starts_with(b"on")
                {
                    return false;
                }
                let name_end = (i + 2..region.len())
                    .find(|&j| !region[j].is_ascii_alphabetic())
                    .unwrap_or(region.len());
                let name = &region[i + 2..name_end];
                let eq = (name_end..region.len()).find(|&j| region[j] != b' ');
                name.len() >= 3
                    && eq.is_some_and(|j| region[j] == b'=')
                    && (!known_only
                        || HANDLER_STEMS
                            .iter()
                            .any(|stem| name.starts_with(stem.as_bytes())))
            })
        }

        /// Where the tag whose attributes start at `from` ends: its first `>`
        /// outside a quoted attribute value, or the end of the text.
        fn tag_end(b: &[u8], from: usize) -> usize {
            let mut quote = None;
            for (i, &c) in b.iter().enumerate().skip(from) {
                match (quote, c) {
                    (None, b'>') => return i,
                    (None, b'"' | b'\'') => quote = Some(c),
                    (Some(q), c) if c == q => quote = None,
                    _ => {}
                }
            }
            b.len()
        }

        /// A quote that ends an attribute value, then a new event-handler
        /// attribute: `" onmouseover=alert(1) x="` injected into `value="..."`.
        fn attribute_breakout(html: &str) -> bool {
            let b = html.as_bytes();
            html.match_indices(['"', '\'']).any(|(at, _)| {
                let next = (at + 1..b.len())
                    .find(|&j| !matches!(b[j], b' ' | b'/'))
                    .unwrap_or(b.len());
                event_handler(&b[next - 1..tag_end(b, next)], true)
            })
        }

        fn markup(html: &str) -> Option<&'static str> {
            let b = html.as_bytes();
            let mut found = None;
            for (at, _) in html.match_indices('<') {
                let start = at + 1 + usize::from(b.get(at + 1) == Some(&b'/'));
                let name_end = (start..b.len())
                    .find(|&j| !b[j].is_ascii_alphanumeric())
                    .unwrap_or(b.len());
                let name = &html[start..name_end];
                let opens_tag = name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && b.get(name_end)
                        .is_none_or(|c| matches!(c, b' ' | b'/' | b'>'));
                if !opens_tag {
                    continue;
                }
                if name == "script" {
                    return Some("xss-script-tag");
                }
                let closing = start > at + 1;
                if !closing && event_handler(&b[name_end..tag_end(b, name_end)], false) {
                    return Some("xss-event-handler");
                }
                if DANGEROUS_TAGS.contains(&name) {
                    found = found.or(Some("xss-dangerous-tag"));
                }
            }
            found
        }

        pub fn decide(html: &str) -> Option<&'static str> {
            markup(html).or_else(|| attribute_breakout(html).then_some("xss-event-handler"))
        }
    }

    #[test]
    fn the_one_pass_markup_rules_decide_as_the_quadratic_ones_did() {
        const PIECES: [&str; 18] = [
            "<",
            ">",
            "\"",
            "'",
            " ",
            "/",
            "=",
            "on",
            "onerror",
            "onlinex",
            "x",
            "a",
            "script",
            "iframe",
            "img",
            "</",
            "<b>",
            "onmouseover",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let len = next() % 14;
            let text: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            assert_eq!(markup(&text), quadratic::decide(&text), "{text:?}");
        }
    }
}
