//! Text substitution in response bodies, as they stream.
//!
//! Every position of the body is tried against the rules in order; the
//! first rule whose `from` starts there is replaced by its `to`, and the
//! scan goes on after it, so replaced text is never matched again. A piece
//! is decided up to where the longest `from` still fits in it; the rest is
//! held back by the host and comes again in front of the next piece, so a
//! match that a chunk boundary cuts is found whole.

use adc_sdk::{Chunk, Error, Response};
use memchr::memmem::Finder;
use serde::Deserialize;

/// The longest `from`: what a piece leaves undecided stays well under what
/// the host may hold back ([`Chunk::MAX_HOLD`]).
pub const MAX_FROM: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    from: String,
    to: String,
}

/// The `body` settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyRules {
    /// Content types (without parameters) whose bodies are substituted.
    content_types: Vec<String>,
    /// Text substitutions, in order of precedence.
    replace: Vec<Rule>,
    /// From before bodies streamed, when larger ones passed unchanged:
    /// accepted and ignored, with a warning.
    #[serde(default)]
    max_bytes: Option<u32>,
}

/// The substitution, ready to run.
pub struct Substitution {
    content_types: Vec<String>,
    finders: Vec<Finder<'static>>,
    to: Vec<Vec<u8>>,
    /// The length of the longest `from`.
    longest: usize,
}

impl Substitution {
    /// # Errors
    ///
    /// When a `from` is empty or longer than [`MAX_FROM`] bytes.
    pub fn new(rules: BodyRules) -> Result<Substitution, Error> {
        if let Some(rule) = rules
            .replace
            .iter()
            .find(|r| r.from.is_empty() || r.from.len() > MAX_FROM)
        {
            return Err(Error::new(format!(
                "body.replace: 'from' {:?} must be 1 to {MAX_FROM} bytes long",
                rule.from
            )));
        }
        if rules.max_bytes.is_some() {
            adc_sdk::log::warn(
                "body.max_bytes is ignored: bodies are substituted as they stream, whatever their size",
            );
        }
        Ok(Substitution {
            content_types: rules.content_types,
            finders: rules
                .replace
                .iter()
                .map(|r| Finder::new(r.from.as_bytes()).into_owned())
                .collect(),
            to: rules
                .replace
                .iter()
                .map(|r| r.to.clone().into_bytes())
                .collect(),
            longest: rules
                .replace
                .iter()
                .map(|r| r.from.len())
                .max()
                .unwrap_or(1),
        })
    }

    /// Whether to substitute in this response's body: one of the content
    /// types, and not compressed (its bytes are not its text).
    pub fn applies(&self, resp: &Response) -> bool {
        let listed = resp.header("content-type").is_some_and(|ct| {
            let media = ct.split(';').next().unwrap_or("").trim();
            self.content_types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media))
        });
        let encoded = resp
            .header_values("content-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|coding| !coding.trim().eq_ignore_ascii_case("identity"));
        listed && !encoded
    }

    /// Substitute in one piece; unless it is the last, hold back what a
    /// longer input could still decide otherwise.
    pub fn substitute(&self, input: &[u8], last: bool) -> Chunk {
        // Where a match may start whose every rule fits in the input.
        let settled = if last {
            input.len()
        } else {
            input.len().saturating_sub(self.longest - 1)
        };
        let mut out = Vec::with_capacity(input.len());
        let mut pos = 0;
        // The next match of each rule at or after `pos` (None: no more).
        let mut next: Vec<Option<usize>> = self.finders.iter().map(|f| f.find(input)).collect();
        loop {
            for (i, finder) in self.finders.iter().enumerate() {
                if next[i].is_some_and(|at| at < pos) {
                    next[i] = finder.find(&input[pos..]).map(|at| at + pos);
                }
            }
            // The leftmost match; at one position, the first rule.
            let Some((rule, at)) = next
                .iter()
                .enumerate()
                .filter_map(|(i, at)| at.map(|at| (i, at)))
                .min_by_key(|&(i, at)| (at, i))
                .filter(|&(_, at)| at < settled)
            else {
                break;
            };
            out.extend_from_slice(&input[pos..at]);
            out.extend_from_slice(&self.to[rule]);
            pos = at + self.finders[rule].needle().len();
        }
        let end = pos.max(settled);
        out.extend_from_slice(&input[pos..end]);
        Chunk::hold(out, input.len() - end)
    }
}

#[cfg(test)]
mod tests {
    use adc_sdk::testing::{MockRequest, MockResponse, TestHost};
    use adc_sdk::{Chunk, Policy};

    use crate::Rewrite;

    const INTERNAL: &str = "http://internal.example/";
    const PUBLIC: &str = "https://www.example.com/";

    fn rewrite(host: &TestHost, replace: &[(&str, &str)]) -> Rewrite {
        let rules: Vec<String> = replace
            .iter()
            .map(|(from, to)| format!(r#"{{"from": {from:?}, "to": {to:?}}}"#))
            .collect();
        host.init(&format!(
            r#"{{"body": {{"content_types": ["text/html"], "replace": [{}]}}}}"#,
            rules.join(", ")
        ))
        .unwrap()
    }

    /// Stream `pieces` through `policy` as an HTML response.
    fn stream(host: &TestHost, policy: &Rewrite, pieces: &[&[u8]]) -> Vec<u8> {
        let req = MockRequest::get("/");
        let resp = MockResponse::new(200).with_header("content-type", "text/html");
        policy.on_response_headers(&req.as_request(), &resp.as_response());
        assert!(resp.streams());
        host.stream_body(policy, &req, &resp, pieces)
    }

    #[test]
    fn a_match_cut_by_a_chunk_boundary_is_replaced_whole() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[(INTERNAL, PUBLIC)]);
        let sent = stream(
            &host,
            &policy,
            &[b"<a href=\"http://inter", b"nal.example/a\">a</a>"],
        );
        assert_eq!(sent, format!("<a href=\"{PUBLIC}a\">a</a>").as_bytes());
    }

    #[test]
    fn every_place_a_boundary_can_fall_gives_the_same_body() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[(INTERNAL, PUBLIC)]);
        let body = format!("{INTERNAL}x {INTERNAL}{INTERNAL} http://internal y {INTERNAL}");
        let want = body.replace(INTERNAL, PUBLIC);
        let bytes = body.as_bytes();
        for cut in 0..=bytes.len() {
            let sent = stream(&host, &policy, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(String::from_utf8(sent).unwrap(), want, "cut at {cut}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(stream(&host, &policy, &one_by_one), want.as_bytes());
    }

    #[test]
    fn an_earlier_rule_wins_over_a_shorter_one_that_a_boundary_would_favour() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[("abcd", "X"), ("ab", "Y")]);
        assert_eq!(stream(&host, &policy, &[b"..ab", b"cd..ab."]), b"..X..Y.");
        // At the very end nothing longer can come: the shorter rule applies.
        assert_eq!(stream(&host, &policy, &[b"..ab"]), b"..Y");
    }

    #[test]
    fn replaced_text_is_not_matched_again() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[("a", "b"), ("b", "c")]);
        assert_eq!(stream(&host, &policy, &[b"ab", b"ba"]), b"bccb");
    }

    #[test]
    fn what_a_piece_holds_back_is_less_than_the_longest_rule() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[(INTERNAL, PUBLIC), ("#", "%")]);
        let body = policy.body.as_ref().unwrap();
        let input = format!("{}http://internal.exa", "z".repeat(100));
        let out = body.substitute(input.as_bytes(), false);
        assert_eq!(out.hold, INTERNAL.len() - 1);
        assert_eq!(out.data, "z".repeat(100 - 4).as_bytes());
        // The last piece holds nothing.
        assert_eq!(
            body.substitute(input.as_bytes(), true),
            Chunk::send(input.as_bytes())
        );
    }

    #[test]
    fn a_body_far_larger_than_any_cap_is_substituted_piece_by_piece() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[(INTERNAL, PUBLIC)]);
        let unit = format!(
            "<p>{}<a href=\"{INTERNAL}page\">link</a></p>\n",
            "t".repeat(61)
        );
        let body = unit.repeat(4 * 1024 * 1024 / unit.len());
        // Pieces of an odd size, so that matches straddle many boundaries.
        let pieces: Vec<&[u8]> = body.as_bytes().chunks(10_007).collect();
        let sent = stream(&host, &policy, &pieces);
        assert!(sent == body.replace(INTERNAL, PUBLIC).as_bytes());
    }

    #[test]
    fn compressed_and_unlisted_bodies_are_not_streamed() {
        let host = TestHost::new();
        let policy = rewrite(&host, &[(INTERNAL, PUBLIC)]);
        let req = MockRequest::get("/");
        for resp in [
            MockResponse::new(200)
                .with_header("content-type", "text/html")
                .with_header("content-encoding", "gzip"),
            MockResponse::new(200).with_header("content-type", "image/png"),
            MockResponse::new(200),
            MockResponse::new(304).with_header("content-type", "text/html"),
        ] {
            policy.on_response_headers(&req.as_request(), &resp.as_response());
            assert!(!resp.streams(), "{:?}", resp.headers());
        }
        let identity = MockResponse::new(200)
            .with_header("content-type", "TEXT/HTML; charset=utf-8")
            .with_header("content-encoding", "identity");
        policy.on_response_headers(&req.as_request(), &identity.as_response());
        assert!(identity.streams());
    }

    #[test]
    fn empty_and_overlong_patterns_and_the_old_cap_are_handled_at_load() {
        let host = TestHost::new();
        let long = "x".repeat(super::MAX_FROM + 1);
        for from in ["", long.as_str()] {
            let settings = format!(
                r#"{{"body": {{"content_types": ["text/html"], "replace": [{{"from": "{from}", "to": "y"}}]}}}}"#
            );
            let err = host.init::<Rewrite>(&settings).err().unwrap();
            assert!(err.message().contains("1 to 4096 bytes"), "{err}");
        }
        host.init::<Rewrite>(
            r#"{"body": {"content_types": ["text/html"], "replace": [{"from": "a", "to": "b"}], "max_bytes": 1024}}"#,
        )
        .unwrap();
        assert!(host
            .logs()
            .iter()
            .any(|(_, l)| l.contains("body.max_bytes is ignored")));
    }

    /// Not a test of speed (those are benches): what a 1 MiB body costs
    /// natively, printed for the record.
    #[test]
    fn one_mebibyte_in_pieces_of_sixty_four_kibibytes() {
        let host = TestHost::new();
        let policy = rewrite(
            &host,
            &[(INTERNAL, PUBLIC), ("</body>", "<p>adc</p></body>")],
        );
        let unit = format!(
            "<p>{}<a href=\"{INTERNAL}page\">link</a></p>\n",
            "t".repeat(61)
        );
        let body = unit.repeat(1024 * 1024 / unit.len());
        let pieces: Vec<&[u8]> = body.as_bytes().chunks(Chunk::MAX_PIECE).collect();
        let started = std::time::Instant::now();
        let sent = stream(&host, &policy, &pieces);
        eprintln!(
            "rewrite: {} bytes in {} pieces substituted in {:?}",
            body.len(),
            pieces.len(),
            started.elapsed()
        );
        assert_eq!(sent.len(), body.replace(INTERNAL, PUBLIC).len());
    }
}
