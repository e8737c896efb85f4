//! Path traversal rules: `..` segments however they are encoded (`%2e%2e`,
//! `..%2f`, `%252e`, `..\`, `..;/`, overlong UTF-8), and names of files an
//! attacker reaches for. Rules read the `text` form with backslashes taken
//! as slashes, as Windows backends take them.

use crate::normalize::Normalized;

/// Every rule this module reports.
pub(crate) const RULES: &[&str] = &[
    "traversal-dot-dot",
    "traversal-overlong-utf8",
    "traversal-sensitive-file",
];

const SENSITIVE: [&str; 10] = [
    "/etc/passwd",
    "/etc/shadow",
    "/proc/self/",
    "win.ini",
    "boot.ini",
    "/windows/system32/",
    ".htpasswd",
    ".htaccess",
    "/.git/",
    "/.ssh/",
];

fn dot_dot(path: &str) -> bool {
    path == ".."
        || path.starts_with("../")
        || path.starts_with("..;/")
        || path.contains("/../")
        || path.contains("/..;/")
        || path.ends_with("/..")
}

fn sensitive(path: &str) -> bool {
    SENSITIVE.iter().any(|s| path.contains(s))
        || path
            .split('/')
            .any(|segment| segment == ".env" || segment == ".git")
}

/// The first traversal rule `v` meets.
pub(crate) fn detect(v: &Normalized) -> Option<&'static str> {
    if v.overlong {
        return Some("traversal-overlong-utf8");
    }
    let path = v.text.replace('\\', "/");
    if dot_dot(&path) {
        Some("traversal-dot-dot")
    } else if sensitive(&path) {
        Some("traversal-sensitive-file")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    fn rule(raw: &str) -> Option<&'static str> {
        detect(&normalize(raw.as_bytes(), false, 3))
    }

    #[test]
    fn dot_dot_segments_are_caught_in_every_encoding() {
        for raw in [
            "/static/../../etc/x",
            "../../x",
            "/a/%2e%2e/b",
            "/a/..%2fb",
            "/a/%2e%2e%2fb",
            "/a/%252e%252e/b",
            "/a/%25252e%25252e/b",
            "/a/..\\..\\b",
            "..%5c..%5cb",
            "/a/..;/b",
            "/a/%u002e%u002e/b",
            "/a/..",
        ] {
            assert_eq!(rule(raw), Some("traversal-dot-dot"), "{raw:?}");
        }
    }

    #[test]
    fn overlong_utf8_is_an_evasion_of_its_own() {
        assert_eq!(rule("/a/%c0%ae%c0%ae/b"), Some("traversal-overlong-utf8"));
        assert_eq!(rule("/a/%c0%af"), Some("traversal-overlong-utf8"));
    }

    #[test]
    fn files_attackers_reach_for_are_caught() {
        for raw in [
            "/x?f=/etc/passwd",
            "c:\\windows\\win.ini",
            "/.git/config",
            "/app/.env",
            "/proc/self/environ",
        ] {
            assert_eq!(rule(raw), Some("traversal-sensitive-file"), "{raw:?}");
        }
    }

    #[test]
    fn dots_in_ordinary_paths_and_text_are_fine() {
        for raw in [
            "/a/b.c/d",
            "/releases/1.2..1.3",
            "wait...",
            "/...",
            "/a/.well-known/x",
            "/environment",
            "/a/..b",
        ] {
            assert_eq!(rule(raw), None, "{raw:?}");
        }
    }
}
