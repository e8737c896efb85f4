//! Content transformation: edit request and response headers, rewrite the
//! URL by prefix, map `Location` from backend names to public ones, and
//! substitute text in response bodies of chosen content types as they
//! stream.

mod body;

use adc_sdk::{policy, Chunk, Config, Decision, Error, Policy, Request, Response};
use serde::Deserialize;

use body::{BodyRules, Substitution};

/// Header edits, applied in order: remove, set, then append.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderEdits {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: Vec<(String, String)>,
    #[serde(default)]
    append: Vec<(String, String)>,
}

impl HeaderEdits {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.append.is_empty()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixRule {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    request_headers: HeaderEdits,
    #[serde(default)]
    response_headers: HeaderEdits,
    /// Path prefixes replaced before forwarding; the first match wins.
    #[serde(default)]
    url: Vec<PrefixRule>,
    /// `Location` prefixes replaced in responses; the first match wins.
    #[serde(default)]
    location: Vec<PrefixRule>,
    body: Option<BodyRules>,
}

/// The rewrite policy.
pub struct Rewrite {
    settings: Settings,
    body: Option<Substitution>,
}

/// Apply every edit; each the host refuses is logged, and the rest still
/// apply.
fn apply_request(edits: &HeaderEdits, req: &Request) {
    for name in &edits.remove {
        req.remove_header(name);
    }
    for (name, value) in &edits.set {
        if let Err(e) = req.set_header(name, value) {
            refused("request", "set", name, e);
        }
    }
    for (name, value) in &edits.append {
        if let Err(e) = req.append_header(name, value) {
            refused("request", "append", name, e);
        }
    }
}

/// As [`apply_request`], for the response.
fn apply_response(edits: &HeaderEdits, resp: &Response) {
    for name in &edits.remove {
        resp.remove_header(name);
    }
    for (name, value) in &edits.set {
        if let Err(e) = resp.set_header(name, value) {
            refused("response", "set", name, e);
        }
    }
    for (name, value) in &edits.append {
        if let Err(e) = resp.append_header(name, value) {
            refused("response", "append", name, e);
        }
    }
}

fn refused(what: &str, edit: &str, name: &str, e: adc_sdk::EditError) {
    adc_sdk::log::warn(&format!("{what} header edit refused: {edit} {name:?}: {e}"));
}

fn replace_prefix(rules: &[PrefixRule], text: &str) -> Option<String> {
    rules
        .iter()
        .find(|r| text.starts_with(&r.from))
        .map(|r| format!("{}{}", r.to, &text[r.from.len()..]))
}

#[policy]
impl Policy for Rewrite {
    fn init(config: Config) -> Result<Self, Error> {
        let mut settings: Settings = config.parse()?;
        for rule in settings.url.iter() {
            if !rule.from.starts_with('/') || !rule.to.starts_with('/') {
                return Err(Error::new(format!(
                    "url rule {:?} -> {:?}: both must start with '/'",
                    rule.from, rule.to
                )));
            }
        }
        let body = settings.body.take().map(Substitution::new).transpose()?;
        Ok(Rewrite { settings, body })
    }

    fn on_request_headers(&self, req: &Request) -> Decision {
        if !self.settings.url.is_empty() {
            let uri = req.uri();
            if let Some(rewritten) = replace_prefix(&self.settings.url, &uri) {
                if let Err(e) = req.set_uri(&rewritten) {
                    adc_sdk::log::warn(&format!("url rewrite to {rewritten:?} refused: {e}"));
                }
            }
        }
        if !self.settings.request_headers.is_empty() {
            apply_request(&self.settings.request_headers, req);
        }
        Decision::Continue
    }

    fn on_response_headers(&self, req: &Request, resp: &Response) -> Decision {
        if !self.settings.location.is_empty() {
            if let Some(location) = resp.header("location") {
                if let Some(mapped) = replace_prefix(&self.settings.location, &location) {
                    let _ = resp.set_header("location", &mapped);
                }
            }
        }
        if !self.settings.response_headers.is_empty() {
            apply_response(&self.settings.response_headers, resp);
        }
        // A 206 carries a slice of the backend's body: substituting in it
        // would break the byte ranges the client puts together.
        if resp.status() != 206 && self.body.as_ref().is_some_and(|b| b.applies(resp)) {
            // Refused only for a response without a body (to HEAD, 204, 304);
            // an answer to HEAD still describes the GET one, so it loses the
            // same headers.
            if resp.stream_body().is_ok() || req.method() == "HEAD" {
                // The body sent is no longer the one the backend's validators
                // and byte ranges describe: a cache or a client resuming a
                // download would mix the two.
                resp.remove_header("etag");
                resp.remove_header("last-modified");
                let _ = resp.set_header("accept-ranges", "none");
            }
        }
        Decision::Continue
    }

    fn on_response_chunk(&self, _: &Request, _: &Response, chunk: &[u8], last: bool) -> Chunk {
        match &self.body {
            Some(body) => body.substitute(chunk, last),
            None => Chunk::send(chunk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adc_sdk::testing::{MockRequest, MockResponse, TestHost};

    #[test]
    fn request_headers_are_removed_set_and_appended_in_order() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"request_headers": {"remove": ["x-debug"], "set": [["x-env", "prod"]], "append": [["via", "adc"]]}}"#)
            .unwrap();
        let req = MockRequest::get("/")
            .with_header("x-debug", "1")
            .with_header("via", "cdn");
        assert_eq!(
            policy.on_request_headers(&req.as_request()),
            Decision::Continue
        );
        assert_eq!(
            req.headers(),
            vec![
                ("via".into(), "cdn".into()),
                ("x-env".into(), "prod".into()),
                ("via".into(), "adc".into())
            ]
        );
    }

    #[test]
    fn url_prefix_is_rewritten_and_query_kept() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"url": [{"from": "/old/", "to": "/new/"}]}"#)
            .unwrap();
        let req = MockRequest::get("/old/page?x=1");
        policy.on_request_headers(&req.as_request());
        assert_eq!(req.as_request().uri(), "/new/page?x=1");
    }

    #[test]
    fn location_maps_backend_name_to_public_name() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"location": [{"from": "http://10.0.0.5:8080/", "to": "https://www.example.com/"}]}"#)
            .unwrap();
        let req = MockRequest::get("/");
        let resp = MockResponse::new(302).with_header("location", "http://10.0.0.5:8080/login");
        policy.on_response_headers(&req.as_request(), &resp.as_response());
        assert_eq!(
            resp.as_response().header("location").as_deref(),
            Some("https://www.example.com/login")
        );
    }

    #[test]
    fn body_is_substituted_only_for_listed_content_types() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"body": {"content_types": ["text/html"], "replace": [{"from": "http://", "to": "https://"}]}}"#)
            .unwrap();
        let req = MockRequest::get("/");
        let html = MockResponse::new(200).with_header("content-type", "text/html; charset=utf-8");
        policy.on_response_headers(&req.as_request(), &html.as_response());
        assert!(html.streams());
        let sent = host.stream_body(&policy, &req, &html, &[b"<a href=http://x>"]);
        assert_eq!(sent, b"<a href=https://x>");

        let json = MockResponse::new(200).with_header("content-type", "application/json");
        policy.on_response_headers(&req.as_request(), &json.as_response());
        assert!(!json.streams());
        assert_eq!(
            host.stream_body(&policy, &req, &json, &[b"http://x"]),
            b"http://x"
        );
    }

    #[test]
    fn a_substituted_body_loses_its_validator_and_ranges_and_a_206_is_left_alone() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"body": {"content_types": ["text/html"], "replace": [{"from": "a", "to": "b"}]}}"#)
            .unwrap();
        let req = MockRequest::get("/");
        let whole = MockResponse::new(200)
            .with_header("content-type", "text/html")
            .with_header("etag", "\"v1\"")
            .with_header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .with_header("accept-ranges", "bytes");
        policy.on_response_headers(&req.as_request(), &whole.as_response());
        assert!(whole.streams());
        let headers = whole.headers();
        assert!(!headers.iter().any(|(n, _)| n == "etag"), "{headers:?}");
        assert!(
            headers.contains(&("accept-ranges".into(), "none".into())),
            "{headers:?}"
        );

        assert!(
            !headers.iter().any(|(n, _)| n == "last-modified"),
            "{headers:?}"
        );

        // HEAD gets the headers GET would.
        let head = MockRequest::new("HEAD", "/");
        let described = MockResponse::new(200)
            .with_header("content-type", "text/html")
            .with_header("etag", "\"v1\"")
            .with_header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT");
        policy.on_response_headers(&head.as_request(), &described.as_response());
        let headers = described.headers();
        assert!(
            !headers
                .iter()
                .any(|(n, _)| n == "etag" || n == "last-modified"),
            "{headers:?}"
        );
        assert!(
            headers.contains(&("accept-ranges".into(), "none".into())),
            "{headers:?}"
        );

        let part = MockResponse::new(206)
            .with_header("content-type", "text/html")
            .with_header("etag", "\"v1\"");
        policy.on_response_headers(&req.as_request(), &part.as_response());
        assert!(!part.streams());
        assert!(part.headers().iter().any(|(n, _)| n == "etag"));
    }

    #[test]
    fn managed_headers_cannot_be_set() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"request_headers": {"set": [["connection", "close"]]}}"#)
            .unwrap();
        let req = MockRequest::get("/");
        policy.on_request_headers(&req.as_request());
        assert!(req.headers().is_empty());
        assert!(host
            .logs()
            .iter()
            .any(|(_, l)| l.contains("header is managed by the host")));
    }

    #[test]
    fn a_refused_edit_does_not_stop_the_ones_after_it() {
        let host = TestHost::new();
        let policy: Rewrite = host
            .init(r#"{"request_headers": {"set": [["connection", "close"], ["x-env", "prod"]], "append": [["transfer-encoding", "chunked"], ["via", "adc"]]},
                      "response_headers": {"set": [["connection", "close"], ["x-served-by", "adc"]]}}"#)
            .unwrap();
        let req = MockRequest::get("/");
        policy.on_request_headers(&req.as_request());
        assert_eq!(
            req.headers(),
            vec![
                ("x-env".into(), "prod".into()),
                ("via".into(), "adc".into())
            ]
        );
        let resp = MockResponse::new(200);
        policy.on_response_headers(&req.as_request(), &resp.as_response());
        assert_eq!(resp.headers(), vec![("x-served-by".into(), "adc".into())]);
        let refusals = host
            .logs()
            .iter()
            .filter(|(_, l)| l.contains("header is managed by the host"))
            .count();
        assert_eq!(refusals, 3);
    }

    #[test]
    fn unknown_settings_are_refused() {
        let host = TestHost::new();
        let err = host.init::<Rewrite>(r#"{"urls": []}"#).err().unwrap();
        assert!(err.message().contains("unknown field `urls`"), "{err}");
    }
}
