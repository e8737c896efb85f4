use super::*;
use adc_sdk::testing::{member, MockRequest, TestHost};

const REDIRECT: &str = r#"{"redirect": {"exclude": ["/.well-known/acme-challenge/"]}}"#;

fn policy(host: &TestHost, settings: &str) -> Maintenance {
    host.init(settings).expect("settings are valid")
}

fn http(uri: &str, host: &str) -> MockRequest {
    MockRequest::get(uri).with_header("host", host)
}

fn backend(pool: &str) -> Backend {
    Backend {
        pool: pool.into(),
        member: format!("{pool}-1"),
        address: "10.0.0.1:80".into(),
    }
}

fn reply(decision: Decision) -> Reply {
    match decision {
        Decision::Respond(reply) => reply,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn plain_http_is_redirected_to_https_keeping_host_path_and_query() {
    let host = TestHost::new();
    let p = policy(&host, REDIRECT);
    let req = http("/shop/items?page=2&q=a%20b", "Www.Example.com:80");
    assert_eq!(
        p.on_request_headers(&req.as_request()),
        Decision::redirect(301, "https://www.example.com/shop/items?page=2&q=a%20b")
    );
    assert_eq!(host.counter("maintenance_redirects_total"), 1);
}

#[test]
fn https_requests_are_not_redirected() {
    let host = TestHost::new();
    let p = policy(&host, REDIRECT);
    let req = http("/", "www.example.com").with_scheme("https");
    assert_eq!(p.on_request_headers(&req.as_request()), Decision::Continue);
}

#[test]
fn acme_challenges_stay_on_plain_http_but_dot_segments_do_not_escape_the_exclusion() {
    let host = TestHost::new();
    let p = policy(&host, REDIRECT);
    let acme = http("/.well-known/acme-challenge/token123", "example.com");
    assert_eq!(p.on_request_headers(&acme.as_request()), Decision::Continue);
    // The host forwards the normalised path, and the redirect carries it.
    let escape = http("/.well-known/acme-challenge/../../admin", "example.com");
    assert_eq!(
        p.on_request_headers(&escape.as_request()),
        Decision::redirect(301, "https://example.com/admin")
    );
}

#[test]
fn status_port_and_host_of_the_redirect_are_configurable() {
    let host = TestHost::new();
    let p = policy(
        &host,
        r#"{"redirect": {"status": 308, "port": 8443, "host": "WWW.example.com"}}"#,
    );
    let req = http("/login", "example.com");
    assert_eq!(
        p.on_request_headers(&req.as_request()),
        Decision::redirect(308, "https://www.example.com:8443/login")
    );
    let default_port = policy(&host, r#"{"redirect": {"port": 443}}"#);
    assert_eq!(
        default_port.on_request_headers(&req.as_request()),
        Decision::redirect(301, "https://example.com/login")
    );
}

#[test]
fn an_ipv6_literal_host_is_kept_in_brackets() {
    let host = TestHost::new();
    let p = policy(&host, REDIRECT);
    let req = http("/", "[2001:db8::1]:8080");
    assert_eq!(
        p.on_request_headers(&req.as_request()),
        Decision::redirect(301, "https://[2001:db8::1]/")
    );
}

#[test]
fn a_missing_or_malformed_host_gets_400_not_a_redirect() {
    let host = TestHost::new();
    let p = policy(&host, REDIRECT);
    for req in [
        MockRequest::get("/"),
        http("/", "evil.com/x"),
        http("/", "a@b"),
        http("/", ""),
    ] {
        let answer = reply(p.on_request_headers(&req.as_request()));
        assert_eq!(answer.status, 400, "{:?}", req.headers());
    }
    assert_eq!(host.counter("maintenance_bad_host_total"), 4);
}

#[test]
fn maintenance_switched_on_answers_the_page_with_retry_after() {
    let host = TestHost::new();
    let p = policy(
        &host,
        r#"{"sorry": {"enabled": true, "retry_after": 600, "page": "<h1>back soon</h1>"}}"#,
    );
    let answer = reply(p.on_request_headers(&http("/cart", "example.com").as_request()));
    assert_eq!(answer.status, 503);
    assert_eq!(header(&answer, "retry-after"), Some("600"));
    assert_eq!(
        header(&answer, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&answer, "cache-control"), Some("no-store"));
    assert_eq!(answer.body, b"<h1>back soon</h1>");
    assert_eq!(
        host.counter(r#"maintenance_pages_total{reason="switched_on"}"#),
        1
    );
}

#[test]
fn the_default_page_is_html_and_retry_after_zero_leaves_the_header_out() {
    let host = TestHost::new();
    let p = policy(
        &host,
        r#"{"sorry": {"enabled": true, "retry_after": 0, "status": 200}}"#,
    );
    let answer = reply(p.on_request_headers(&http("/", "example.com").as_request()));
    assert_eq!(answer.status, 200);
    assert_eq!(header(&answer, "retry-after"), None);
    assert!(String::from_utf8_lossy(&answer.body).contains("Down for maintenance"));
}

#[test]
fn excluded_paths_reach_the_backend_during_maintenance() {
    let host = TestHost::new();
    let p = policy(
        &host,
        r#"{"sorry": {"enabled": true, "exclude": ["/healthz", "/.well-known/"]}}"#,
    );
    assert_eq!(
        p.on_request_headers(&http("/healthz", "example.com").as_request()),
        Decision::Continue
    );
    assert_eq!(
        reply(p.on_request_headers(&http("/", "example.com").as_request())).status,
        503
    );
}

#[test]
fn plain_http_is_redirected_before_the_page_is_answered() {
    let host = TestHost::new();
    let p = policy(&host, r#"{"redirect": {}, "sorry": {"enabled": true}}"#);
    assert_eq!(
        p.on_request_headers(&http("/", "example.com").as_request()),
        Decision::redirect(301, "https://example.com/")
    );
    let https = http("/", "example.com").with_scheme("https");
    assert_eq!(reply(p.on_request_headers(&https.as_request())).status, 503);
}

#[test]
fn the_page_is_answered_while_the_pool_has_no_available_member() {
    let host = TestHost::new();
    let p = policy(&host, r#"{"sorry": {"pool": "web"}}"#);
    host.set_pool("web", vec![member("web-1", "10.0.0.1:80")]);
    let req = http("/", "example.com").with_scheme("https");
    assert_eq!(p.on_request_headers(&req.as_request()), Decision::Continue);

    let mut down = member("web-1", "10.0.0.1:80");
    down.healthy = false;
    let mut drained = member("web-2", "10.0.0.2:80");
    drained.enabled = false;
    host.set_pool("web", vec![down, drained]);
    assert_eq!(reply(p.on_request_headers(&req.as_request())).status, 503);
    assert_eq!(
        host.counter(r#"maintenance_pages_total{reason="pool_unavailable"}"#),
        1
    );
}

#[test]
fn an_unknown_pool_is_warned_about_once_and_never_shows_the_page() {
    let host = TestHost::new();
    let p = policy(&host, r#"{"sorry": {"pool": "wbe"}}"#);
    for _ in 0..3 {
        assert_eq!(
            p.on_request_headers(&http("/", "example.com").as_request()),
            Decision::Continue
        );
    }
    let warnings: Vec<_> = host
        .logs()
        .into_iter()
        .filter(|(l, _)| *l == log::Level::Warn)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].1.contains("\"wbe\""));
}

#[test]
fn a_failed_backend_is_answered_with_the_page() {
    let host = TestHost::new();
    let p = policy(&host, r#"{"sorry": {"pool": "web"}}"#);
    let req = http("/", "example.com");
    let answer = reply(p.on_backend_failed(&req.as_request(), &backend("web"), "connect refused"));
    assert_eq!(answer.status, 503);
    assert_eq!(
        host.counter(r#"maintenance_pages_total{reason="backend_failed"}"#),
        1
    );
    assert_eq!(
        p.on_backend_failed(&req.as_request(), &backend("api"), "timeout"),
        Decision::Continue
    );
}

#[test]
fn without_a_pool_any_failed_backend_gets_the_page_unless_switched_off() {
    let host = TestHost::new();
    let any = policy(&host, r#"{"sorry": {}}"#);
    let req = http("/", "example.com");
    assert_eq!(
        reply(any.on_backend_failed(&req.as_request(), &backend("api"), "timeout")).status,
        503
    );
    let off = policy(
        &host,
        r#"{"sorry": {"enabled": true, "on_backend_failure": false}}"#,
    );
    assert_eq!(
        off.on_backend_failed(&req.as_request(), &backend("api"), "timeout"),
        Decision::Continue
    );
    let redirect_only = policy(&host, REDIRECT);
    assert_eq!(
        redirect_only.on_backend_failed(&req.as_request(), &backend("api"), "timeout"),
        Decision::Continue
    );
}

#[test]
fn invalid_settings_are_refused() {
    let host = TestHost::new();
    let cases = [
        ("{}", "nothing to do"),
        (
            r#"{"redirect": {"status": 302, "stauts": 1}}"#,
            "unknown field `stauts`",
        ),
        (
            r#"{"redirect": {"status": 200}}"#,
            "is not 301, 302, 303, 307 or 308",
        ),
        (
            r#"{"redirect": {"exclude": ["acme"]}}"#,
            "redirect.exclude entry \"acme\"",
        ),
        (r#"{"redirect": {"host": "a/b"}}"#, "not a host name"),
        (r#"{"redirect": {"port": 0}}"#, "not a port"),
        (r#"{"sorry": {"status": 999}}"#, "not from 200 to 599"),
        (
            r#"{"sorry": {"on_backend_failure": false}}"#,
            "it would never show",
        ),
        (r#"{"sorry": {"pool": ""}}"#, "sorry.pool is empty"),
        (r#"{"sorry": {"exclude": ["x"]}}"#, "sorry.exclude entry"),
        (
            r#"{"sorry": {"content_type": "text/html\n"}}"#,
            "not a valid header value",
        ),
        (r#"{"maintenance": {}}"#, "unknown field `maintenance`"),
    ];
    for (settings, expected) in cases {
        let err = host.init::<Maintenance>(settings).err().expect(settings);
        assert!(err.message().contains(expected), "{settings}: {err}");
    }
}
