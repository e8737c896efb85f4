use super::*;
use adc_sdk::testing::{member, MockRequest, TestHost};

/// A router with `settings`, on a mock host that has every pool (and
/// member) they name, as the adc configuration would.
fn router(host: &TestHost, settings: &str) -> Router {
    let config = Config::from_json(settings).expect("settings are JSON");
    let value = config.value();
    let rules = value["rules"].as_array().cloned().unwrap_or_default();
    let named = rules
        .iter()
        .map(|r| (r["pool"].as_str(), r["member"].as_str()))
        .chain([(value["default"].as_str(), None)]);
    for (pool, name) in named {
        if let Some(pool) = pool {
            let members = name.map(|m| member(m, "127.0.0.1:1"));
            host.set_pool(pool, members.into_iter().collect());
        }
    }
    host.init(settings).expect("settings are valid")
}

fn route(policy: &Router, req: &MockRequest) -> Decision {
    policy.on_request_headers(&req.as_request())
}

#[test]
fn the_first_matching_rule_wins() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [
            {"name": "api-v2", "pool": "api2", "path_prefix": "/api/v2/"},
            {"name": "api", "pool": "api", "path_prefix": "/api/"}
        ]}"#,
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/api/v2/users")),
        Decision::route("api2")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/api/v1/users")),
        Decision::route("api")
    );
}

#[test]
fn an_exact_host_matches_without_regard_to_case_or_port() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "shop", "pool": "shop", "host": "Shop.Example.com"}]}"#,
    );
    let req = MockRequest::get("/").with_header("host", "SHOP.example.COM:8443");
    assert_eq!(route(&policy, &req), Decision::route("shop"));
    let other = MockRequest::get("/").with_header("host", "www.example.com");
    assert_eq!(route(&policy, &other), Decision::Continue);
}

#[test]
fn a_wildcard_host_matches_subdomains_but_not_the_apex_or_lookalikes() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "tenants", "pool": "t", "host": "*.example.com"}]}"#,
    );
    for (name, expected) in [
        ("a.example.com", Decision::route("t")),
        ("a.b.example.com", Decision::route("t")),
        ("example.com", Decision::Continue),
        ("badexample.com", Decision::Continue),
    ] {
        let req = MockRequest::get("/").with_header("host", name);
        assert_eq!(route(&policy, &req), expected, "host {name}");
    }
}

#[test]
fn a_request_without_host_meets_no_host_condition() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "any", "pool": "p", "host": "*.example.com"}]}"#,
    );
    assert_eq!(route(&policy, &MockRequest::get("/")), Decision::Continue);
}

#[test]
fn path_prefixes_match_the_normalised_path() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "api", "pool": "api", "path_prefix": "/api/"}]}"#,
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/%61pi/x")),
        Decision::route("api")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/static/../api/x?y=1")),
        Decision::route("api")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/apix")),
        Decision::Continue
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/api/../admin")),
        Decision::Continue
    );
}

#[test]
fn a_path_pattern_star_spans_any_characters_and_the_whole_path_must_match() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "png", "pool": "img", "path": "/img/*.png"}]}"#,
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/img/a.png")),
        Decision::route("img")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/img/a/b/c.png?v=2")),
        Decision::route("img")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/img/a.png.txt")),
        Decision::Continue
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/x/img/a.png")),
        Decision::Continue
    );
}

#[test]
fn glob_matching_backtracks_over_several_stars() {
    assert!(glob_match("/*/v*/items/*", "/shop/v2/items/42"));
    assert!(glob_match("*a*b", "xaxxab"));
    assert!(glob_match("/**", "/"));
    assert!(!glob_match("*a*b", "xaxxa"));
    assert!(!glob_match("/a", "/a/"));
    assert!(glob_match("", ""));
}

#[test]
fn headers_can_be_required_present_equal_or_prefixed() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [
            {"name": "canary", "pool": "canary", "headers": [{"name": "X-Canary", "equals": "1"}]},
            {"name": "mobile", "pool": "mobile", "headers": [{"name": "user-agent", "prefix": "MobileApp/"}]},
            {"name": "traced", "pool": "traced", "headers": [{"name": "x-trace"}]}
        ]}"#,
    );
    let canary = MockRequest::get("/").with_header("x-canary", "1");
    assert_eq!(route(&policy, &canary), Decision::route("canary"));
    let not_canary = MockRequest::get("/").with_header("x-canary", "10");
    assert_eq!(route(&policy, &not_canary), Decision::Continue);
    let mobile = MockRequest::get("/").with_header("user-agent", "MobileApp/3.1");
    assert_eq!(route(&policy, &mobile), Decision::route("mobile"));
    let traced = MockRequest::get("/").with_header("x-trace", "");
    assert_eq!(route(&policy, &traced), Decision::route("traced"));
}

#[test]
fn a_header_condition_looks_at_every_field_line() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "b", "pool": "b", "headers": [{"name": "x-group", "equals": "beta"}]}]}"#,
    );
    let req = MockRequest::get("/")
        .with_header("x-group", "alpha")
        .with_header("x-group", "beta");
    assert_eq!(route(&policy, &req), Decision::route("b"));
}

#[test]
fn cookies_are_found_across_split_cookie_lines() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "beta", "pool": "beta", "cookies": [{"name": "beta", "equals": "yes"}]}]}"#,
    );
    let req = MockRequest::get("/")
        .with_version("HTTP/2")
        .with_header("cookie", "sid=abc")
        .with_header("cookie", "beta=\"yes\"");
    assert_eq!(route(&policy, &req), Decision::route("beta"));
}

#[test]
fn query_parameters_are_compared_after_decoding() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "v2", "pool": "v2", "query": [{"name": "version", "equals": "2 beta"}]}]}"#,
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/?a=1&version=2%20beta")),
        Decision::route("v2")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/?version=2+beta")),
        Decision::route("v2")
    );
    assert_eq!(
        route(&policy, &MockRequest::get("/?version=2")),
        Decision::Continue
    );
}

#[test]
fn methods_are_matched_from_a_list() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "writes", "pool": "primary", "methods": ["post", "PUT"]}]}"#,
    );
    assert_eq!(
        route(&policy, &MockRequest::new("POST", "/x")),
        Decision::route("primary")
    );
    assert_eq!(
        route(&policy, &MockRequest::new("PUT", "/x")),
        Decision::route("primary")
    );
    assert_eq!(route(&policy, &MockRequest::get("/x")), Decision::Continue);
}

#[test]
fn every_condition_of_a_rule_must_hold() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "admin", "pool": "admin", "host": "example.com",
            "path_prefix": "/admin/", "methods": ["GET"], "cookies": [{"name": "role"}]}]}"#,
    );
    let full = || {
        MockRequest::get("/admin/x")
            .with_header("host", "example.com")
            .with_header("cookie", "role=ops")
    };
    assert_eq!(route(&policy, &full()), Decision::route("admin"));
    let no_cookie = MockRequest::get("/admin/x").with_header("host", "example.com");
    assert_eq!(route(&policy, &no_cookie), Decision::Continue);
    let other_method = MockRequest::new("POST", "/admin/x")
        .with_header("host", "example.com")
        .with_header("cookie", "role=ops");
    assert_eq!(route(&policy, &other_method), Decision::Continue);
}

#[test]
fn a_rule_with_a_member_routes_to_that_member() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "debug", "pool": "web", "member": "web-3", "headers": [{"name": "x-debug"}]}]}"#,
    );
    let req = MockRequest::get("/").with_header("x-debug", "1");
    assert_eq!(
        route(&policy, &req),
        Decision::route_to_member("web", "web-3")
    );
}

#[test]
fn unmatched_requests_go_to_the_default_pool() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"default": "web", "rules": [{"name": "api", "pool": "api", "path_prefix": "/api/"}]}"#,
    );
    let req = MockRequest::get("/home");
    assert_eq!(route(&policy, &req), Decision::route("web"));
    assert_eq!(req.as_request().var(POOL_VAR).as_deref(), Some("web"));
    assert_eq!(req.as_request().var(RULE_VAR), None);
    assert_eq!(host.counter("route_default_total"), 1);
}

#[test]
fn unmatched_requests_continue_without_a_default_and_are_counted() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "api", "pool": "api", "path_prefix": "/api/"}]}"#,
    );
    let req = MockRequest::get("/home");
    assert_eq!(route(&policy, &req), Decision::Continue);
    assert_eq!(req.as_request().var(POOL_VAR), None);
    assert_eq!(host.counter("route_unmatched_total"), 1);
}

#[test]
fn matches_are_counted_per_rule() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [
            {"name": "api", "pool": "api", "path_prefix": "/api/"},
            {"name": "static", "pool": "cdn", "path": "/*.css"}
        ]}"#,
    );
    route(&policy, &MockRequest::get("/api/a"));
    route(&policy, &MockRequest::get("/api/b"));
    route(&policy, &MockRequest::get("/home"));
    assert_eq!(host.counter(r#"route_matches_total{rule="api"}"#), 2);
    assert_eq!(host.counter(r#"route_matches_total{rule="static"}"#), 0);
    assert_eq!(host.counter("route_unmatched_total"), 1);
}

#[test]
fn a_matched_rule_is_left_in_variables() {
    let host = TestHost::new();
    let policy = router(
        &host,
        r#"{"rules": [{"name": "static", "pool": "cdn", "path": "/*.css"}]}"#,
    );
    let css = MockRequest::get("/site.css");
    assert_eq!(route(&policy, &css), Decision::route("cdn"));
    assert_eq!(css.as_request().var(RULE_VAR).as_deref(), Some("static"));
    assert_eq!(css.as_request().var(POOL_VAR).as_deref(), Some("cdn"));
    assert_eq!(host.counter(r#"route_matches_total{rule="static"}"#), 1);
}

#[test]
fn invalid_settings_are_refused_with_the_rule_named() {
    let host = TestHost::new();
    let cases = [
        (
            r#"{"rules": [{"name": "a", "pool": "p"}]}"#,
            "rule \"a\": no condition",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "host": "*"}]}"#,
            "rule \"a\": host",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "host": "a.*.com"}]}"#,
            "expected a host name",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "host": "a.com:80"}]}"#,
            "without port",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "path_prefix": "api/"}]}"#,
            "must start with '/'",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "methods": ["GE T"]}]}"#,
            "not a method token",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "headers": [{"name": "x", "equals": "1", "prefix": "1"}]}]}"#,
            "not both",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "path": "/a"}, {"name": "a", "pool": "q", "path": "/b"}]}"#,
            "used twice",
        ),
        (
            r#"{"rules": [{"name": "", "pool": "p", "path": "/a"}]}"#,
            "empty `name`",
        ),
        (
            r#"{"rules": [{"name": "a", "pool": "", "path": "/a"}]}"#,
            "`pool` is empty",
        ),
        (r#"{"rules": []}"#, "nothing to route"),
        (
            r#"{"rules": [{"name": "a", "pool": "p", "paths": "/a"}]}"#,
            "unknown field `paths`",
        ),
        (
            r#"{"default": "web", "defaults": 1}"#,
            "unknown field `defaults`",
        ),
    ];
    for (settings, expected) in cases {
        let err = host.init::<Router>(settings).err().expect(settings);
        assert!(err.message().contains(expected), "{settings}: {err}");
    }
}

#[test]
fn a_rule_naming_a_pool_or_member_the_configuration_lacks_is_refused_naming_both() {
    let host = TestHost::new();
    host.set_pool("web", vec![member("web-1", "127.0.0.1:1")]);
    let cases = [
        (
            r#"{"rules": [{"name": "shop", "pool": "shopp", "host": "shop.example"}]}"#,
            r#"rule "shop": pool "shopp" is not configured"#,
        ),
        (
            r#"{"rules": [{"name": "debug", "pool": "web", "member": "web-9", "path": "/x"}]}"#,
            r#"rule "debug": pool "web" has no member "web-9""#,
        ),
        (
            r#"{"default": "wbe"}"#,
            r#"`default`: pool "wbe" is not configured"#,
        ),
    ];
    for (settings, expected) in cases {
        let err = host.init::<Router>(settings).err().expect(settings);
        assert!(err.message().contains(expected), "{settings}: {err}");
    }
    host.init::<Router>(
        r#"{"default": "web", "rules": [{"name": "one", "pool": "web", "member": "web-1", "path": "/x"}]}"#,
    )
    .expect("pools and member are configured");
}
