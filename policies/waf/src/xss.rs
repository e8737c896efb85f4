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

/// `on` and at least three letters, then `=`, after a separator that can
/// start an attribute: `<img src=x onerror=...`, `<svg/onload=...`. With
/// `known_only`, the name must also be a known handler's.
fn event_handler(region: &[u8], known_only: bool) -> bool {
    (1..region.len()).any(|i| {
        if !matches!(region[i - 1], b' ' | b'/' | b'"' | b'\'') || !region[i..].starts_with(b"on") {
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
    markup(&v.html)
        .or_else(|| attribute_breakout(&v.html).then_some("xss-event-handler"))
        .or_else(|| script_url(&v.url).then_some("xss-script-url"))
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
}
