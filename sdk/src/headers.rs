//! The header block: every field line of a request or response in one
//! buffer, which the host hands over in a single call (`header-block` in
//! the WIT), so that a policy reading several headers crosses into the host
//! once instead of once per header.
//!
//! The block is a run of field lines, in order, each laid out as
//!
//! | bytes | what |
//! |---|---|
//! | 2 | name length, little-endian |
//! | 4 | value length, little-endian |
//! | name length | the name, lowercase |
//! | value length | the value's bytes |
//!
//! Lengths come first so that a lookup steps from line to line without
//! scanning text (Wasm has no fast byte search). Bytes of a value that are
//! not UTF-8 are replaced when it is read, as by every other header read.
//!
//! [`Request`](crate::Request) and [`Response`](crate::Response) read their
//! headers through the block and keep it for the rest of the hook; any edit
//! of the message drops it. Authors do not need this module; the host
//! writes the block with [`push_line`], so both sides share one layout.
//!
//! ```
//! use adc_sdk::headers;
//! let mut block = Vec::new();
//! headers::push_line(&mut block, "set-cookie", b"a=1");
//! headers::push_line(&mut block, "accept", b"*/*");
//! headers::push_line(&mut block, "set-cookie", b"b=2");
//! assert_eq!(headers::first(&block, "Accept").as_deref(), Some("*/*"));
//! assert_eq!(headers::values(&block, "set-cookie"), ["a=1", "b=2"]);
//! assert_eq!(headers::names(&block), ["set-cookie", "accept"]);
//! ```

/// Append one field line to `block`; `name` must already be lowercase.
/// A name longer than 65,535 bytes or a value longer than 4 GiB cannot be
/// in a block (nor in any request the host accepts); such a line is
/// skipped.
pub fn push_line(block: &mut Vec<u8>, name: &str, value: &[u8]) {
    let (Ok(n), Ok(v)) = (u16::try_from(name.len()), u32::try_from(value.len())) else {
        return;
    };
    block.extend_from_slice(&n.to_le_bytes());
    block.extend_from_slice(&v.to_le_bytes());
    block.extend_from_slice(name.as_bytes());
    block.extend_from_slice(value);
}

/// The field lines of a block as (name, value) pairs, in order; a
/// truncated line ends the walk.
fn lines(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = block;
    std::iter::from_fn(move || {
        let (lens, after) = rest.split_at_checked(6)?;
        let n = usize::from(u16::from_le_bytes([lens[0], lens[1]]));
        let v = usize::try_from(u32::from_le_bytes([lens[2], lens[3], lens[4], lens[5]])).ok()?;
        let (name, after) = after.split_at_checked(n)?;
        let (value, after) = after.split_at_checked(v)?;
        rest = after;
        Some((name, value))
    })
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// The first value of the header `name` (any case).
pub fn first(block: &[u8], name: &str) -> Option<String> {
    let name = name.as_bytes();
    lines(block)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| text(v))
}

/// Every value of the header `name` (any case), one per field line.
pub fn values(block: &[u8], name: &str) -> Vec<String> {
    let name = name.as_bytes();
    lines(block)
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| text(v))
        .collect()
}

/// The names present, each once, in the order they first appear.
pub fn names(block: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (n, _) in lines(block) {
        if !out.iter().any(|seen| seen.as_bytes() == n) {
            out.push(text(n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(lines: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in lines {
            push_line(&mut b, n, v.as_bytes());
        }
        b
    }

    #[test]
    fn values_keep_colons_inner_spaces_and_empty_values() {
        let b = block(&[
            ("host", "example.com:8080"),
            ("x-empty", ""),
            ("x-sp", " a b "),
        ]);
        assert_eq!(first(&b, "host").as_deref(), Some("example.com:8080"));
        assert_eq!(first(&b, "x-empty").as_deref(), Some(""));
        assert_eq!(first(&b, "X-SP").as_deref(), Some(" a b "));
        assert_eq!(first(&b, "x-missing"), None);
    }

    #[test]
    fn a_name_is_never_matched_by_its_prefix_or_inside_a_value() {
        let b = block(&[("x-ab", "1"), ("x-c", "x-a")]);
        assert_eq!(first(&b, "x-a"), None);
        assert!(values(&b, "x-a").is_empty());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced() {
        let mut b = Vec::new();
        push_line(&mut b, "x-raw", b"caf\xe9");
        assert_eq!(first(&b, "x-raw").as_deref(), Some("caf\u{fffd}"));
    }

    #[test]
    fn a_truncated_block_yields_the_whole_lines_before_the_cut() {
        let b = block(&[("a", "1"), ("b", "2")]);
        for cut in 0..b.len() {
            let seen = names(&b[..cut]);
            assert!(seen.len() <= 1, "{cut}: {seen:?}");
        }
        assert_eq!(names(&b), ["a", "b"]);
    }

    #[test]
    fn an_empty_block_has_nothing() {
        assert_eq!(first(&[], "a"), None);
        assert!(names(&[]).is_empty());
    }
}
