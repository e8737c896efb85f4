use std::time::Duration;

use super::*;
use adc_sdk::testing::{MockRequest, TestHost};

fn limiter(host: &TestHost, settings: &str) -> RateLimit {
    host.init(settings).expect("settings are valid")
}

fn from(ip: &str, uri: &str) -> MockRequest {
    MockRequest::get(uri).with_client_ip(ip)
}

fn status(policy: &RateLimit, req: &MockRequest) -> u16 {
    match policy.on_request_headers(&req.as_request()) {
        Decision::Continue => 200,
        Decision::Respond(reply) => reply.status,
        other => panic!("unexpected decision {other:?}"),
    }
}

/// How many of `n` requests from `ip` to `uri` get through right now.
fn allowed(policy: &RateLimit, ip: &str, uri: &str, n: usize) -> usize {
    (0..n)
        .filter(|_| status(policy, &from(ip, uri)) == 200)
        .count()
}

#[test]
fn a_client_over_its_limit_gets_429_with_retry_after_until_the_bucket_refills() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 1, "per": 10, "burst": 3}"#);
    assert_eq!(allowed(&policy, "192.0.2.1", "/", 3), 3);

    let Decision::Respond(reply) = policy.on_request_headers(&from("192.0.2.1", "/").as_request())
    else {
        panic!("the fourth request is refused");
    };
    assert_eq!(reply.status, 429);
    assert!(
        reply.headers.contains(&("retry-after".into(), "10".into())),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.body, b"too many requests\n");

    host.advance(Duration::from_secs(9));
    assert_eq!(status(&policy, &from("192.0.2.1", "/")), 429);
    host.advance(Duration::from_secs(1));
    assert_eq!(
        allowed(&policy, "192.0.2.1", "/", 3),
        1,
        "one token back after one interval"
    );
    host.advance(Duration::from_secs(60));
    assert_eq!(
        allowed(&policy, "192.0.2.1", "/", 5),
        3,
        "a rested bucket is full again"
    );
}

#[test]
fn outcomes_are_counted_per_route() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 2}"#);
    allowed(&policy, "192.0.2.1", "/", 5);
    assert_eq!(
        host.counter(r#"ratelimit_requests_total{route="default",outcome="allowed"}"#),
        2
    );
    assert_eq!(
        host.counter(r#"ratelimit_requests_total{route="default",outcome="limited"}"#),
        3
    );
}

#[test]
fn clients_have_buckets_of_their_own() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 2}"#);
    assert_eq!(allowed(&policy, "192.0.2.1", "/", 5), 2);
    assert_eq!(allowed(&policy, "192.0.2.2", "/", 5), 2);
}

#[test]
fn ipv6_clients_share_a_bucket_per_64_bit_prefix_by_default() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 2}"#);
    assert_eq!(allowed(&policy, "2001:db8:1:2::1", "/", 1), 1);
    assert_eq!(allowed(&policy, "2001:db8:1:2:ffff::9", "/", 5), 1);
    assert_eq!(allowed(&policy, "2001:db8:1:3::1", "/", 5), 2);

    let per_host = limiter(&host, r#"{"rate": 2, "ipv6_prefix": 128}"#);
    assert_eq!(allowed(&per_host, "2001:db8:9::1", "/", 5), 2);
    assert_eq!(allowed(&per_host, "2001:db8:9::2", "/", 5), 2);
}

#[test]
fn allow_listed_clients_are_never_limited() {
    let host = TestHost::new();
    let policy = limiter(
        &host,
        r#"{"rate": 1, "allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]}"#,
    );
    assert_eq!(allowed(&policy, "10.20.30.40", "/", 10), 10);
    assert_eq!(
        allowed(&policy, "::ffff:10.1.1.1", "/", 10),
        10,
        "IPv4-mapped IPv6 is IPv4"
    );
    assert_eq!(allowed(&policy, "2001:db8:42::1", "/", 10), 10);
    assert_eq!(allowed(&policy, "192.0.2.7", "/", 10), 10);
    assert_eq!(allowed(&policy, "192.0.2.8", "/", 10), 1);
    assert_eq!(allowed(&policy, "2001:db9::1", "/", 10), 1);
    assert_eq!(host.counter("ratelimit_exempt_total"), 40);
}

#[test]
fn routes_have_their_own_limits_and_buckets() {
    let host = TestHost::new();
    let policy = limiter(
        &host,
        r#"{"rate": 5, "routes": [{"prefix": "/login", "rate": 1, "per": 60}, {"prefix": "/api/", "rate": 3}]}"#,
    );
    assert_eq!(allowed(&policy, "192.0.2.1", "/login", 5), 1);
    assert_eq!(allowed(&policy, "192.0.2.1", "/api/x", 5), 3);
    assert_eq!(allowed(&policy, "192.0.2.1", "/home", 10), 5);
    assert_eq!(
        allowed(&policy, "192.0.2.1", "/%6cogin", 5),
        0,
        "routes match the normalised path"
    );
    assert_eq!(
        host.counter(r#"ratelimit_requests_total{route="/login",outcome="limited"}"#),
        9
    );
}

#[test]
fn route_prefixes_compare_paths_as_adc_routes_and_the_router_do() {
    let host = TestHost::new();
    let policy = limiter(
        &host,
        r#"{"routes": [{"prefix": "/%7Euser//login", "rate": 1}]}"#,
    );
    // Normalised alike on both sides, case included: `/~USER/login` is
    // another path, which no adc route or router rule on `/~user/` takes.
    assert_eq!(allowed(&policy, "192.0.2.1", "/~user/login", 3), 1);
    assert_eq!(allowed(&policy, "192.0.2.2", "/%7euser/./login", 3), 1);
    assert_eq!(allowed(&policy, "192.0.2.3", "/~USER/login", 3), 3);
}

#[test]
fn without_a_top_level_rate_only_routes_are_limited() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"routes": [{"prefix": "/api/", "rate": 1}]}"#);
    assert_eq!(allowed(&policy, "192.0.2.1", "/api/a", 3), 1);
    assert_eq!(allowed(&policy, "192.0.2.1", "/static/a.css", 50), 50);
}

#[test]
fn a_key_header_splits_a_clients_bucket() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 2, "key_header": "x-api-key"}"#);
    let with_key = |key: &str| from("192.0.2.1", "/").with_header("x-api-key", key);
    let count = |key: &str| {
        (0..5)
            .filter(|_| status(&policy, &with_key(key)) == 200)
            .count()
    };
    assert_eq!(count("alpha"), 2);
    assert_eq!(count("beta"), 2);
    assert_eq!(count("alpha"), 0);
    assert_eq!(
        allowed(&policy, "192.0.2.1", "/", 5),
        2,
        "no header is a bucket of its own"
    );
}

#[test]
fn a_client_that_never_stops_stays_limited_past_its_entrys_first_lifetime() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 1, "burst": 5}"#);
    let mut through = allowed(&policy, "192.0.2.1", "/", 5);
    for _ in 0..60 {
        host.advance(Duration::from_secs(1));
        through += allowed(&policy, "192.0.2.1", "/", 3);
    }
    assert_eq!(
        through,
        5 + 60,
        "one request per second after the burst, never a second burst"
    );
}

#[test]
fn a_client_address_that_is_not_an_ip_is_still_limited() {
    let host = TestHost::new();
    let policy = limiter(&host, r#"{"rate": 1}"#);
    assert_eq!(allowed(&policy, "unix:/run/adc.sock", "/", 3), 1);
}

#[test]
fn invalid_settings_are_refused() {
    let host = TestHost::new();
    let cases = [
        ("{}", "nothing to limit"),
        (r#"{"rate": 0}"#, "at least 1"),
        (r#"{"rate": 1, "per": 0}"#, "at least 1"),
        (r#"{"burst": 5}"#, "need a `rate`"),
        (
            r#"{"routes": [{"prefix": "api", "rate": 1}]}"#,
            "must start with '/'",
        ),
        (
            r#"{"routes": [{"prefix": "/api", "rate": 0}]}"#,
            "route \"/api\"",
        ),
        (
            r#"{"rate": 1, "allow": ["10.0.0.0/40"]}"#,
            "allow entry \"10.0.0.0/40\"",
        ),
        (
            r#"{"rate": 1, "allow": ["example.com"]}"#,
            "not an IP address",
        ),
        (r#"{"rate": 1, "ipv6_prefix": 0}"#, "not from 1 to 128"),
        (r#"{"rate": 1, "key_header": "x key"}"#, "not a header name"),
        (r#"{"rate": 1, "rates": 2}"#, "unknown field `rates`"),
        (
            r#"{"routes": [{"prefix": "/a", "rate": 1, "path": "/b"}]}"#,
            "unknown field `path`",
        ),
    ];
    for (settings, expected) in cases {
        let err = host.init::<RateLimit>(settings).err().expect(settings);
        assert!(err.message().contains(expected), "{settings}: {err}");
    }
}
