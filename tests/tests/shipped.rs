#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

//! The shipped policies (router, sticky, waf, ratelimit, rewrite,
//! maintenance) through a real adc, each against what its README promises,
//! the hostile inputs included; and `adc check` on every example.

use std::collections::HashMap;

use adc_tests::{backend, client, listener, policy, pool, send_raw_target, Adc, Backend};

/// A `[policies.<name>]` block for a shipped policy file, with its settings.
fn shipped(name: &str, file: &str, settings: &str) -> String {
    format!(
        "\n[policies.{name}]\nfile = \"{file}.wasm\"\n\n[policies.{name}.settings]\n{settings}\n"
    )
}

/// The backend that answered, from the test backends' `x-backend` header.
fn served_by(response: &reqwest::Response) -> String {
    response.headers()["x-backend"].to_str().unwrap().to_owned()
}

// ---------------------------------------------------------------- router

const ROUTER_RULES: &str = r#"default = "web"

[[policies.router.settings.rules]]
name = "shop"
pool = "shop"
host = "*.example.com"

[[policies.router.settings.rules]]
name = "admin"
pool = "admin"
path_prefix = "/admin/"

[[policies.router.settings.rules]]
name = "images"
pool = "static"
path = "/img/*.png"

[[policies.router.settings.rules]]
name = "canary"
pool = "canary"
headers = [{ name = "x-canary", equals = "yes" }]

[[policies.router.settings.rules]]
name = "beta"
pool = "beta"
cookies = [{ name = "beta", prefix = "on" }]

[[policies.router.settings.rules]]
name = "v2"
pool = "v2"
query = [{ name = "api", equals = "v 2" }]

[[policies.router.settings.rules]]
name = "writes"
pool = "writes"
methods = ["delete", "PUT"]
"#;

/// Metrics are process-wide and tests run in parallel: each test names its
/// policy instance differently (the `policy` label) to count alone.
async fn router_adc(instance: &str) -> (Adc, Vec<Backend>) {
    policy("router");
    let names = [
        "web", "shop", "admin", "static", "canary", "beta", "v2", "writes",
    ];
    let mut backends = Vec::new();
    let mut config = listener("web", &[instance]);
    for name in names {
        let b = backend(name).await;
        config += &pool(name, "round_robin", &[&b]);
        backends.push(b);
    }
    config += &shipped(
        instance,
        "router",
        &ROUTER_RULES.replace("policies.router.", &format!("policies.{instance}.")),
    );
    (Adc::start(&config).await, backends)
}

#[tokio::test]
async fn router_chooses_the_pool_by_host_path_pattern_header_cookie_query_and_method() {
    let (adc, _backends) = router_adc("router-rules").await;
    let http = client();
    let get = |path: &str| http.get(adc.url("web", path));

    // (request, the pool it must reach)
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (get("/"), "web"),
        (get("/").header("host", "shop.example.com"), "shop"),
        (get("/").header("host", "A.b.EXAMPLE.com:8443"), "shop"),
        (get("/").header("host", "example.com"), "web"),
        (get("/admin/users"), "admin"),
        (get("/admin"), "web"),
        (get("/img/a/b.png"), "static"),
        (get("/img/a.png.txt"), "web"),
        (get("/IMG/a.png"), "web"),
        (get("/").header("x-canary", "yes"), "canary"),
        (get("/").header("x-canary", "no"), "web"),
        (get("/").header("cookie", "beta=on-1"), "beta"),
        (get("/").header("cookie", "beta=\"on\""), "beta"),
        (
            get("/")
                .header("cookie", "a=1")
                .header("cookie", "b=2; beta=only"),
            "beta",
        ),
        (get("/").header("cookie", "beta=off"), "web"),
        (get("/?api=v%202"), "v2"),
        (get("/?x=1&api=v+2"), "v2"),
        (get("/?api=v2"), "web"),
        (http.delete(adc.url("web", "/item/1")), "writes"),
        (http.put(adc.url("web", "/item/1")), "writes"),
        (http.post(adc.url("web", "/item/1")), "web"),
    ];
    let mut expected_matches: HashMap<&str, f64> = HashMap::new();
    let mut expected_default = 0.0;
    for (i, (request, pool)) in cases.into_iter().enumerate() {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "case {i}");
        assert_eq!(served_by(&response), pool, "case {i}");
        let rule = match pool {
            "web" => None,
            "static" => Some("images"),
            "shop" | "admin" | "canary" | "beta" | "v2" | "writes" => Some(pool),
            other => panic!("no rule for {other}"),
        };
        match rule {
            Some(rule) => *expected_matches.entry(rule).or_default() += 1.0,
            None => expected_default += 1.0,
        }
    }
    for (rule, n) in expected_matches {
        assert_eq!(
            adc.metric(
                "adc_policy_route_matches_total",
                &[("policy", "router-rules"), ("rule", rule)]
            )
            .await,
            n,
            "matches of rule {rule}"
        );
    }
    assert_eq!(
        adc.metric(
            "adc_policy_route_default_total",
            &[("policy", "router-rules")]
        )
        .await,
        expected_default
    );
}

#[tokio::test]
async fn router_sees_through_encoded_dot_segments_and_forwards_the_path_it_routed() {
    let (adc, backends) = router_adc("router-dots").await;
    let addr = adc.running.listeners["web"];
    // (target as sent, pool, path the backend must receive)
    let cases = [
        ("/public/%2e%2e/admin/x", "admin", "/admin/x"),
        ("/public/%2E%2E/admin/x", "admin", "/admin/x"),
        ("/public/./../admin/x", "admin", "/admin/x"),
        ("/%61dmin/x?q=1", "admin", "/admin/x?q=1"),
        ("//admin//x", "admin", "/admin/x"),
        ("/../../admin/x", "admin", "/admin/x"),
        ("/admin/%2e%2e/public/x", "web", "/public/x"),
        ("/img/%2e/a.png", "static", "/img/a.png"),
        // An encoded slash is not a separator: no dot segment to remove.
        ("/public/..%2fadmin/x", "web", "/public/..%2Fadmin/x"),
    ];
    for (target, pool, path) in cases {
        let response = send_raw_target(addr, "GET", target, &[]).await;
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(response.headers["x-backend"], pool, "{target}");
        assert_eq!(response.body, format!("{pool} GET {path}"), "{target}");
    }
    let admin = &backends[2];
    assert_eq!(admin.hits(), 6);
}
