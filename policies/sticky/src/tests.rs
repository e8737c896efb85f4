use std::time::Duration;

use super::*;
use adc_sdk::testing::{member, MockRequest, MockResponse, TestHost};

const INSERT: &str = r#"{"pool": "web", "secret": "0123456789abcdef", "max_age": 3600}"#;
const LEARN: &str = r#"{"pool": "web", "mode": "learn", "cookie": "JSESSIONID", "ttl": 600}"#;

fn host_with_pool() -> TestHost {
    let host = TestHost::new();
    host.set_pool(
        "web",
        vec![
            member("web-1", "10.0.0.1:80"),
            member("web-2", "10.0.0.2:80"),
        ],
    );
    host
}

fn backend(name: &str) -> Backend {
    Backend {
        pool: "web".into(),
        member: name.into(),
        address: "10.0.0.9:80".into(),
    }
}

/// Run a transaction through every hook: the request's own decision, then
/// `served_by` selected, then the response. Returns the decision and the
/// `Set-Cookie` lines the response ends with.
fn transaction(
    policy: &Sticky,
    req: &MockRequest,
    served_by: &str,
    resp: MockResponse,
) -> (Decision, Vec<String>) {
    let decision = policy.on_request_headers(&req.as_request());
    policy.on_backend_selected(&req.as_request(), &backend(served_by));
    policy.on_response_headers(&req.as_request(), &resp.as_response());
    (decision, resp.as_response().header_values("set-cookie"))
}

/// The value of the cookie in a `Set-Cookie` line.
fn cookie_value(line: &str) -> String {
    let pair = line.split(';').next().expect("a pair");
    pair.split_once('=').expect("name=value").1.to_owned()
}

#[test]
fn a_client_without_cookie_is_left_to_the_pool_then_pinned() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (decision, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-2",
        MockResponse::new(200),
    );
    assert_eq!(decision, Decision::Continue);
    assert_eq!(set.len(), 1);
    assert!(set[0].starts_with("adc_sticky=web-2."), "{}", set[0]);
    assert!(
        set[0].ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
        "{}",
        set[0]
    );
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="absent"}"#),
        1
    );
    assert_eq!(host.counter("sticky_cookies_issued_total"), 1);
}

#[test]
fn a_valid_cookie_routes_to_its_member_without_a_new_cookie() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-2",
        MockResponse::new(200),
    );
    let req = MockRequest::get("/next")
        .with_header("cookie", &format!("adc_sticky={}", cookie_value(&set[0])));
    let (decision, set) = transaction(&policy, &req, "web-2", MockResponse::new(200));
    assert_eq!(decision, Decision::route_to_member("web", "web-2"));
    assert!(set.is_empty(), "a fresh cookie is not sent again: {set:?}");
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="pinned"}"#),
        1
    );
}

#[test]
fn a_quoted_cookie_on_the_second_of_two_http2_cookie_lines_is_found() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    let req = MockRequest::get("/")
        .with_version("HTTP/2")
        .with_header("cookie", "theme=dark; lang=en")
        .with_header(
            "cookie",
            &format!("adc_sticky=\"{}\"", cookie_value(&set[0])),
        );
    assert_eq!(
        policy.on_request_headers(&req.as_request()),
        Decision::route_to_member("web", "web-1")
    );
}

#[test]
fn a_forged_cookie_is_ignored_and_the_client_pinned_anew() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    let forged = cookie_value(&set[0]).replacen("web-1", "web-2", 1);
    let req = MockRequest::get("/").with_header("cookie", &format!("adc_sticky={forged}"));
    let (decision, set) = transaction(&policy, &req, "web-1", MockResponse::new(200));
    assert_eq!(decision, Decision::Continue);
    assert!(set[0].starts_with("adc_sticky=web-1."), "{set:?}");
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="forged"}"#),
        1
    );
}

#[test]
fn a_cookie_signed_with_another_secret_is_forged() {
    let host = host_with_pool();
    let other: Sticky = host
        .init(r#"{"pool": "web", "secret": "another-secret-123"}"#)
        .expect("valid");
    let ours: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &other,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    let req = MockRequest::get("/").with_header("cookie", &set[0]);
    assert_eq!(
        ours.on_request_headers(&req.as_request()),
        Decision::Continue
    );
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="forged"}"#),
        1
    );
}

#[test]
fn an_expired_cookie_is_refused() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    let cookie = format!("adc_sticky={}", cookie_value(&set[0]));
    host.advance(Duration::from_secs(3599));
    let req = MockRequest::get("/").with_header("cookie", &cookie);
    assert_eq!(
        policy.on_request_headers(&req.as_request()),
        Decision::route_to_member("web", "web-1")
    );
    host.advance(Duration::from_secs(1));
    let req = MockRequest::get("/").with_header("cookie", &cookie);
    assert_eq!(
        policy.on_request_headers(&req.as_request()),
        Decision::Continue
    );
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="expired"}"#),
        1
    );
}

#[test]
fn a_cookie_past_half_its_life_is_refreshed() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    let cookie = format!("adc_sticky={}", cookie_value(&set[0]));
    host.advance(Duration::from_secs(1801));
    let req = MockRequest::get("/").with_header("cookie", &cookie);
    let (decision, set) = transaction(&policy, &req, "web-1", MockResponse::new(200));
    assert_eq!(decision, Decision::route_to_member("web", "web-1"));
    assert_eq!(set.len(), 1, "refreshed");
    assert_ne!(
        cookie_value(&set[0]),
        cookie.trim_start_matches("adc_sticky=")
    );
}

#[test]
fn a_cookie_for_a_down_drained_or_unknown_member_is_ignored() {
    let host = TestHost::new();
    let mut down = member("web-1", "10.0.0.1:80");
    down.healthy = false;
    let mut drained = member("web-2", "10.0.0.2:80");
    drained.enabled = false;
    host.set_pool("web", vec![down, drained, member("web-3", "10.0.0.3:80")]);
    let policy: Sticky = host.init(INSERT).expect("valid");
    for name in ["web-1", "web-2", "web-9"] {
        let (_, set) = transaction(
            &policy,
            &MockRequest::get("/"),
            name,
            MockResponse::new(200),
        );
        let req = MockRequest::get("/").with_header("cookie", &set[0]);
        let (decision, set) = transaction(&policy, &req, "web-3", MockResponse::new(200));
        assert_eq!(decision, Decision::Continue, "{name}");
        assert!(
            set[0].starts_with("adc_sticky=web-3."),
            "re-pinned: {set:?}"
        );
    }
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="unavailable"}"#),
        3
    );
}

#[test]
fn a_cookie_signed_with_a_previous_secret_is_honoured_and_replaced() {
    let host = host_with_pool();
    let old: Sticky = host
        .init(r#"{"pool": "web", "secret": "the-old-secret-123"}"#)
        .expect("valid");
    let (_, set) = transaction(
        &old,
        &MockRequest::get("/"),
        "web-2",
        MockResponse::new(200),
    );
    let rotated: Sticky = host
        .init(r#"{"pool": "web", "secret": "0123456789abcdef", "previous_secrets": ["the-old-secret-123"]}"#)
        .expect("valid");
    let req = MockRequest::get("/").with_header("cookie", &set[0]);
    let (decision, renewed) = transaction(&rotated, &req, "web-2", MockResponse::new(200));
    assert_eq!(decision, Decision::route_to_member("web", "web-2"));
    assert_eq!(renewed.len(), 1, "re-signed with the current secret");
    let again = MockRequest::get("/").with_header("cookie", &renewed[0]);
    let (_, none) = transaction(&rotated, &again, "web-2", MockResponse::new(200));
    assert!(none.is_empty());
}

#[test]
fn requests_the_router_sent_to_another_pool_are_left_alone() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let (_, set) = transaction(
        &policy,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    let req = MockRequest::get("/img/a.png").with_header("cookie", &set[0]);
    req.as_request().set_var("router.pool", "static");
    assert_eq!(
        policy.on_request_headers(&req.as_request()),
        Decision::Continue
    );
    let ours = MockRequest::get("/").with_header("cookie", &set[0]);
    ours.as_request().set_var("router.pool", "web");
    assert_eq!(
        policy.on_request_headers(&ours.as_request()),
        Decision::route_to_member("web", "web-1")
    );
}

#[test]
fn a_backend_of_another_pool_is_not_pinned() {
    let host = host_with_pool();
    let policy: Sticky = host.init(INSERT).expect("valid");
    let req = MockRequest::get("/");
    let other = Backend {
        pool: "static".into(),
        member: "s-1".into(),
        address: "10.0.1.1:80".into(),
    };
    policy.on_backend_selected(&req.as_request(), &other);
    let resp = MockResponse::new(200);
    policy.on_response_headers(&req.as_request(), &resp.as_response());
    assert!(resp.headers().is_empty());
}

#[test]
fn cookie_attributes_follow_the_settings_and_the_scheme() {
    let host = host_with_pool();
    let auto: Sticky = host
        .init(r#"{"pool": "web", "secret": "0123456789abcdef"}"#)
        .expect("valid");
    let https = MockRequest::get("/").with_scheme("https");
    let (_, set) = transaction(&auto, &https, "web-1", MockResponse::new(200));
    assert!(
        set[0].ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax"),
        "{}",
        set[0]
    );
    assert!(
        cookie_value(&set[0]).starts_with("web-1.0."),
        "no expiry: {}",
        set[0]
    );

    let custom: Sticky = host
        .init(
            r#"{"pool": "web", "secret": "0123456789abcdef", "cookie": "srv", "path": "/app",
                  "domain": "example.com", "http_only": false, "same_site": "None"}"#,
        )
        .expect("valid");
    let (_, set) = transaction(
        &custom,
        &MockRequest::get("/"),
        "web-1",
        MockResponse::new(200),
    );
    assert!(set[0].starts_with("srv=web-1."), "{}", set[0]);
    assert!(
        set[0].ends_with("; Path=/app; Domain=example.com; Secure; SameSite=None"),
        "{}",
        set[0]
    );
}

#[test]
fn learn_mode_routes_a_session_to_the_member_that_issued_it() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let login =
        MockResponse::new(200).with_header("set-cookie", "JSESSIONID=\"A1B2\"; Path=/; HttpOnly");
    let (decision, _) = transaction(&policy, &MockRequest::get("/login"), "web-2", login);
    assert_eq!(decision, Decision::Continue);
    assert_eq!(
        host.counter(r#"sticky_sessions_learned_total{source="set_cookie"}"#),
        1
    );

    let req = MockRequest::get("/cart")
        .with_version("HTTP/2")
        .with_header("cookie", "theme=dark")
        .with_header("cookie", "JSESSIONID=A1B2");
    assert_eq!(
        policy.on_request_headers(&req.as_request()),
        Decision::route_to_member("web", "web-2")
    );
    let quoted = MockRequest::get("/cart").with_header("cookie", "JSESSIONID=\"A1B2\"");
    assert_eq!(
        policy.on_request_headers(&quoted.as_request()),
        Decision::route_to_member("web", "web-2")
    );
}

#[test]
fn learn_mode_forgets_a_session_after_its_ttl() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let login = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1");
    transaction(&policy, &MockRequest::get("/"), "web-1", login);
    host.advance(Duration::from_secs(600));
    let req = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
    assert_eq!(
        policy.on_request_headers(&req.as_request()),
        Decision::Continue
    );
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="unknown"}"#),
        1
    );
}

#[test]
fn learn_mode_keeps_an_active_session_alive() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let login = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1");
    transaction(&policy, &MockRequest::get("/"), "web-1", login);
    for _ in 0..4 {
        host.advance(Duration::from_secs(400));
        let req = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
        assert_eq!(
            policy.on_request_headers(&req.as_request()),
            Decision::route_to_member("web", "web-1")
        );
    }
}

#[test]
fn learn_mode_never_learns_a_session_from_the_request_alone() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let req = MockRequest::get("/").with_header("cookie", "JSESSIONID=made-up");
    transaction(&policy, &req, "web-1", MockResponse::new(200));
    let again = MockRequest::get("/").with_header("cookie", "JSESSIONID=made-up");
    assert_eq!(
        policy.on_request_headers(&again.as_request()),
        Decision::Continue
    );
}

#[test]
fn learn_mode_repins_a_session_whose_member_is_down() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let login = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1");
    transaction(&policy, &MockRequest::get("/"), "web-1", login);

    let mut down = member("web-1", "10.0.0.1:80");
    down.healthy = false;
    host.set_pool("web", vec![down, member("web-2", "10.0.0.2:80")]);
    let req = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
    let (decision, _) = transaction(&policy, &req, "web-2", MockResponse::new(200));
    assert_eq!(decision, Decision::Continue);
    assert_eq!(
        host.counter(r#"sticky_sessions_learned_total{source="repin"}"#),
        1
    );

    host.set_pool(
        "web",
        vec![
            member("web-1", "10.0.0.1:80"),
            member("web-2", "10.0.0.2:80"),
        ],
    );
    let next = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
    assert_eq!(
        policy.on_request_headers(&next.as_request()),
        Decision::route_to_member("web", "web-2")
    );
}

#[test]
fn learn_mode_forgets_a_session_the_backend_deletes() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let login = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1");
    transaction(&policy, &MockRequest::get("/"), "web-1", login);
    let req = MockRequest::get("/logout").with_header("cookie", "JSESSIONID=s1");
    let logout = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1; Max-Age=0");
    transaction(&policy, &req, "web-1", logout);
    assert_eq!(host.counter("sticky_sessions_forgotten_total"), 1);
    let after = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
    assert_eq!(
        policy.on_request_headers(&after.as_request()),
        Decision::Continue
    );
}

#[test]
fn learn_mode_forgets_the_presented_session_when_the_deleting_line_names_none() {
    // Tomcat ends a session with `JSESSIONID=; Max-Age=0`, PHP with
    // `PHPSESSID=deleted; Max-Age=0`: neither names the session, which is
    // the one the request carried.
    for deleting in [
        "JSESSIONID=; Path=/; Max-Age=0",
        "JSESSIONID=deleted; Max-Age=0",
    ] {
        let host = host_with_pool();
        let policy: Sticky = host.init(LEARN).expect("valid");
        let login = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1");
        transaction(&policy, &MockRequest::get("/"), "web-1", login);
        let req = MockRequest::get("/logout").with_header("cookie", "JSESSIONID=s1");
        let logout = MockResponse::new(200).with_header("set-cookie", deleting);
        transaction(&policy, &req, "web-1", logout);
        assert_eq!(
            host.counter("sticky_sessions_forgotten_total"),
            1,
            "{deleting}"
        );
        let after = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
        assert_eq!(
            policy.on_request_headers(&after.as_request()),
            Decision::Continue,
            "{deleting}"
        );
    }
}

#[test]
fn learn_mode_does_not_repin_a_session_ended_by_another_member() {
    let host = host_with_pool();
    let policy: Sticky = host.init(LEARN).expect("valid");
    let login = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=s1");
    transaction(&policy, &MockRequest::get("/"), "web-1", login);

    // web-1 is down; web-2 serves the logout and ends the session.
    let mut down = member("web-1", "10.0.0.1:80");
    down.healthy = false;
    host.set_pool("web", vec![down, member("web-2", "10.0.0.2:80")]);
    let req = MockRequest::get("/logout").with_header("cookie", "JSESSIONID=s1");
    let logout = MockResponse::new(200).with_header("set-cookie", "JSESSIONID=; Max-Age=0");
    transaction(&policy, &req, "web-2", logout);
    assert_eq!(
        host.counter(r#"sticky_sessions_learned_total{source="repin"}"#),
        0
    );
    let after = MockRequest::get("/").with_header("cookie", "JSESSIONID=s1");
    policy.on_request_headers(&after.as_request());
    assert_eq!(
        host.counter(r#"sticky_requests_total{outcome="unknown"}"#),
        1
    );
}

#[test]
fn invalid_settings_are_refused() {
    let host = TestHost::new();
    let cases = [
        (r#"{"pool": "web"}"#, "needs a `secret`"),
        (
            r#"{"pool": "web", "secret": "short"}"#,
            "shorter than 16 bytes",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "previous_secrets": ["x"]}"#,
            "previous_secrets entry",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "ttl": 5}"#,
            "`ttl` applies to mode = \"learn\"",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "max_age": 0}"#,
            "at least 1 second",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "same_site": "None", "secure": false}"#,
            "needs secure",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "path": "app"}"#,
            "must start with '/'",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "cookie": "a b"}"#,
            "not a token",
        ),
        (r#"{"pool": "web", "mode": "learn"}"#, "needs `cookie`"),
        (
            r#"{"pool": "web", "mode": "learn", "cookie": "sid", "secret": "0123456789abcdef"}"#,
            "`secret` applies",
        ),
        (
            r#"{"pool": "web", "mode": "learn", "cookie": "sid", "ttl": 0}"#,
            "at least 1 second",
        ),
        (
            r#"{"pool": "web", "mode": "copy"}"#,
            "unknown variant `copy`",
        ),
        (
            r#"{"pool": "", "secret": "0123456789abcdef"}"#,
            "`pool` is empty",
        ),
        (
            r#"{"pool": "web", "secret": "0123456789abcdef", "maxage": 5}"#,
            "unknown field `maxage`",
        ),
    ];
    for (settings, expected) in cases {
        let err = host.init::<Sticky>(settings).err().expect(settings);
        assert!(err.message().contains(expected), "{settings}: {err}");
    }
}
