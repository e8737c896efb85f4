#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

//! The shipped policies (router, sticky, waf, ratelimit, rewrite,
//! maintenance) through a real adc, each against what its README promises,
//! the hostile inputs included; and `adc check` on every example.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adc_tests::{
    backend, backend_with, client, eventually, h2_client, listener, policy, pool, send_raw_target,
    Adc, Backend,
};

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

#[tokio::test]
async fn a_router_rule_naming_a_pool_that_is_not_configured_is_refused_by_check_and_start() {
    policy("router");
    let b = backend("web").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adc.toml");
    let config = listener("web", &["router"])
        + &pool("web", "round_robin", &[&b])
        + &shipped(
            "router",
            "router",
            "default = \"web\"\n\n[[policies.router.settings.rules]]\nname = \"shop\"\npool = \"shopp\"\nhost = \"shop.example\"\n",
        );
    let policies = adc_tests::policy_dir().display().to_string();
    std::fs::write(&path, config.replace("{policies}", &policies)).unwrap();

    let refused = format!("{:#}", adc::serve::check(&path).unwrap_err());
    assert!(
        refused.contains(r#"policy "router""#)
            && refused.contains(r#"rule "shop": pool "shopp" is not configured"#),
        "{refused}"
    );
    let line = config
        .lines()
        .position(|l| l == "file = \"router.wasm\"")
        .unwrap()
        + 1;
    assert!(refused.contains(&format!("adc.toml:{line}:")), "{refused}");
    assert!(adc::serve::start(&path).await.is_err());

    // With the pool configured, both accept it.
    let fixed = config.replace("pool = \"shopp\"", "pool = \"web\"");
    std::fs::write(&path, fixed.replace("{policies}", &policies)).unwrap();
    adc::serve::check(&path).unwrap();
}

#[tokio::test]
async fn a_reload_may_add_a_pool_and_its_router_rule_at_once_but_not_a_rule_alone() {
    policy("router");
    let (web, shop) = (backend("web").await, backend("shop").await);
    let rule = |pool: &str| {
        shipped(
            "router-reload",
            "router",
            &format!("default = \"web\"\n\n[[policies.router-reload.settings.rules]]\nname = \"shop\"\npool = \"{pool}\"\nhost = \"shop.example\"\n"),
        )
    };
    let base = listener("web", &["router-reload"]) + &pool("web", "round_robin", &[&web]);
    let adc =
        Adc::start(&(base.clone() + &shipped("router-reload", "router", "default = \"web\"\n")))
            .await;
    let path = adc.dir.path().join("adc.toml");
    let policies = adc_tests::policy_dir().display().to_string();
    let reload = |text: String| {
        std::fs::write(&path, text.replace("{policies}", &policies)).unwrap();
        client().post(adc.admin("/reload")).send()
    };
    let to_shop = || {
        client()
            .get(adc.url("web", "/"))
            .header("host", "shop.example")
            .send()
    };

    // The new pool is seen by the router's start-up in the same reload.
    let both = base.clone() + &pool("shop", "round_robin", &[&shop]) + &rule("shop");
    assert_eq!(reload(both).await.unwrap().status(), 200);
    assert_eq!(served_by(&to_shop().await.unwrap()), "shop");

    // A rule whose pool is missing refuses the reload; the running one stays.
    let answer = reload(base + &rule("shopp")).await.unwrap();
    assert_eq!(answer.status(), 422);
    let error = answer.text().await.unwrap();
    assert!(
        error.contains(r#"rule \"shop\": pool \"shopp\" is not configured"#),
        "{error}"
    );
    assert_eq!(served_by(&to_shop().await.unwrap()), "shop");
}

// ---------------------------------------------------------------- sticky

const STICKY_SECRET: &str = "integration-test-secret-0123456789";

/// An insert-mode cookie value as the sticky README documents it:
/// `member.expiry.tag`, the tag the hex HMAC-SHA256 of `pool\nmember\nexpiry`.
fn seal(pool: &str, member: &str, expiry: u64, secret: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{pool}\n{member}\n{expiry}").as_bytes());
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{member}.{expiry}.{tag}")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `Set-Cookie` lines of a response for cookie `name`.
fn set_cookies(response: &reqwest::Response, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .filter(|l| l.starts_with(&format!("{name}=")))
        .collect()
}

/// The value of the one `adc_sticky` cookie a response sets, if any.
fn sticky_cookie(response: &reqwest::Response) -> Option<String> {
    let lines = set_cookies(response, "adc_sticky");
    assert!(lines.len() <= 1, "one sticky cookie at most: {lines:?}");
    let line = lines.first()?;
    let (pair, _) = line.split_once(';').unwrap_or((line, ""));
    Some(pair.strip_prefix("adc_sticky=").unwrap().to_owned())
}

/// The member an insert-mode cookie value names.
fn cookie_member(value: &str) -> &str {
    value.split('.').next().unwrap()
}

/// Two members `m0` (backend "a") and `m1` (backend "b") in round robin,
/// behind the sticky policy in insert mode, instance `instance`.
async fn sticky_insert(instance: &str) -> (Adc, Backend, Backend) {
    policy("sticky");
    let (a, b) = (backend("a").await, backend("b").await);
    let config = listener("web", &[instance])
        + &pool("web", "round_robin", &[&a, &b])
        + &shipped(
            instance,
            "sticky",
            &format!(
                "pool = \"web\"\nmode = \"insert\"\nsecret = \"{STICKY_SECRET}\"\nmax_age = 3600\n"
            ),
        );
    (Adc::start(&config).await, a, b)
}

fn backend_of(member: &str) -> &'static str {
    match member {
        "m0" => "a",
        "m1" => "b",
        other => panic!("no member {other}"),
    }
}

async fn sticky_count(adc: &Adc, instance: &str, outcome: &str) -> f64 {
    adc.metric(
        "adc_policy_sticky_requests_total",
        &[("policy", instance), ("outcome", outcome)],
    )
    .await
}

/// Send `cookie` (a whole `Cookie` value) `n` times; every answer must come
/// from a member that the response then pins (a new cookie naming it), and
/// the set of backends that answered is returned.
async fn ignored_cookie(adc: &Adc, cookie: &str, n: usize) -> std::collections::BTreeSet<String> {
    let http = client();
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..n {
        let r = http
            .get(adc.url("web", "/"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let by = served_by(&r);
        let fresh = sticky_cookie(&r).expect("an ignored cookie is replaced");
        assert_eq!(backend_of(cookie_member(&fresh)), by, "{cookie}");
        served.insert(by);
    }
    served
}

#[tokio::test]
async fn sticky_insert_pins_a_client_and_ignores_forged_expired_and_malformed_cookies() {
    let instance = "sticky-pin";
    let (adc, _a, _b) = sticky_insert(instance).await;
    let http = client();

    // The first answer pins the client with a signed cookie.
    let first = http.get(adc.url("web", "/")).send().await.unwrap();
    let line = set_cookies(&first, "adc_sticky").pop().expect("a cookie");
    for attribute in ["; Path=/", "; Max-Age=3600", "; HttpOnly", "; SameSite=Lax"] {
        assert!(line.contains(attribute), "{line}");
    }
    assert!(!line.contains("Secure"), "plain HTTP: {line}");
    let value = sticky_cookie(&first).unwrap();
    let member = cookie_member(&value).to_owned();
    assert_eq!(backend_of(&member), served_by(&first));
    let expiry: u64 = value.split('.').nth(1).unwrap().parse().unwrap();
    assert!(expiry.abs_diff(unix_now() + 3600) < 60, "{value}");

    // Sent back, it holds the client to that member, without a new cookie.
    for _ in 0..6 {
        let r = http
            .get(adc.url("web", "/"))
            .header("cookie", format!("adc_sticky={value}"))
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&r), backend_of(&member));
        assert_eq!(sticky_cookie(&r), None, "a fresh cookie is not sent again");
    }

    // A cookie signed as the README says is honoured for either member.
    let other = if member == "m0" { "m1" } else { "m0" };
    let signed = seal("web", other, unix_now() + 600, STICKY_SECRET);
    for _ in 0..4 {
        let r = http
            .get(adc.url("web", "/"))
            .header("cookie", format!("adc_sticky={signed}"))
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&r), backend_of(other));
    }
    assert_eq!(sticky_count(&adc, instance, "pinned").await, 10.0);

    // Forged: the other member's name under this cookie's tag; a made-up
    // tag; a cookie signed under another secret. All ignored, all re-pinned:
    // round robin reaches both members.
    let tag = value.rsplit('.').next().unwrap();
    let forgeries = [
        format!("adc_sticky={other}.{expiry}.{tag}"),
        format!("adc_sticky={other}.{expiry}.{}", "0".repeat(64)),
        format!(
            "adc_sticky={}",
            seal("web", other, expiry, "another-secret-of-enough-bytes")
        ),
        format!("adc_sticky={}", seal("api", other, expiry, STICKY_SECRET)),
    ];
    for forged in &forgeries {
        assert_eq!(ignored_cookie(&adc, forged, 4).await.len(), 2, "{forged}");
    }
    assert_eq!(sticky_count(&adc, instance, "forged").await, 16.0);

    // Expired: correctly signed, but its time is past.
    let expired = seal("web", other, unix_now() - 60, STICKY_SECRET);
    let served = ignored_cookie(&adc, &format!("adc_sticky={expired}"), 4).await;
    assert_eq!(served.len(), 2);
    assert_eq!(sticky_count(&adc, instance, "expired").await, 4.0);

    // Malformed values are ignored the same way.
    for junk in ["adc_sticky=m1", "adc_sticky=m1.soon.abc", "adc_sticky=.1.2"] {
        assert_eq!(ignored_cookie(&adc, junk, 2).await.len(), 2, "{junk}");
    }
    assert_eq!(sticky_count(&adc, instance, "malformed").await, 6.0);
}

#[tokio::test]
async fn sticky_insert_reads_a_quoted_cookie_and_cookies_split_over_http2_fields() {
    let instance = "sticky-forms";
    let (adc, _a, _b) = sticky_insert(instance).await;
    let value = seal("web", "m1", unix_now() + 3000, STICKY_SECRET);

    let quoted = client()
        .get(adc.url("web", "/"))
        .header("cookie", format!("x=1; adc_sticky=\"{value}\"; y=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&quoted), "b");
    assert_eq!(sticky_cookie(&quoted), None);

    // HTTP/2 clients may send each cookie in a field of its own.
    let h2 = h2_client();
    for _ in 0..4 {
        let r = h2
            .get(adc.url("web", "/"))
            .header("cookie", "theme=dark")
            .header("cookie", format!("adc_sticky={value}"))
            .header("cookie", "lang=en")
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(served_by(&r), "b");
    }
    // And a quoted value in a split field, over HTTP/2 too.
    let r = h2
        .get(adc.url("web", "/"))
        .header("cookie", "theme=dark")
        .header("cookie", format!("adc_sticky=\"{value}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&r), "b");
    assert_eq!(sticky_count(&adc, instance, "pinned").await, 6.0);

    // Over HTTP/2 a client without a cookie is pinned like any other.
    let fresh = h2.get(adc.url("web", "/")).send().await.unwrap();
    let value = sticky_cookie(&fresh).expect("a cookie over HTTP/2");
    assert_eq!(backend_of(cookie_member(&value)), served_by(&fresh));
}

#[tokio::test]
async fn sticky_insert_repins_a_client_whose_member_is_drained() {
    let instance = "sticky-drain";
    let (adc, a, b) = sticky_insert(instance).await;
    let http = client();
    let pinned_a = format!("adc_sticky={}", seal("web", "m0", 0, STICKY_SECRET));
    let r = http
        .get(adc.url("web", "/"))
        .header("cookie", &pinned_a)
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&r), "a");

    let drained = http
        .post(adc.admin("/pools/web/members/m0/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let r = http
        .get(adc.url("web", "/"))
        .header("cookie", &pinned_a)
        .send()
        .await
        .unwrap();
    assert_eq!(
        served_by(&r),
        "b",
        "a drained member takes no pinned client"
    );
    let repinned = sticky_cookie(&r).expect("the client is pinned anew");
    assert_eq!(cookie_member(&repinned), "m1");
    assert_eq!(sticky_count(&adc, instance, "unavailable").await, 1.0);

    // The new cookie holds, also once m0 takes requests again.
    http.post(adc.admin("/pools/web/members/m0/enable"))
        .send()
        .await
        .unwrap();
    for _ in 0..4 {
        let r = http
            .get(adc.url("web", "/"))
            .header("cookie", format!("adc_sticky={repinned}"))
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&r), "b");
    }
    assert_eq!((a.hits(), b.hits()), (1, 5));
}

#[tokio::test]
async fn sticky_leaves_alone_a_request_the_router_sent_to_another_pool() {
    policy("router");
    policy("sticky");
    let (a, b, api) = (backend("a").await, backend("b").await, backend("api").await);
    let config = listener("web", &["router", "sticky"])
        + &pool("web", "round_robin", &[&a, &b])
        + &pool("api", "round_robin", &[&api])
        + &shipped(
            "router",
            "router",
            "default = \"web\"\n[[policies.router.settings.rules]]\nname = \"api\"\npool = \"api\"\npath_prefix = \"/api/\"\n",
        )
        + &shipped(
            "sticky",
            "sticky",
            &format!("pool = \"web\"\nsecret = \"{STICKY_SECRET}\"\n"),
        );
    let adc = Adc::start(&config).await;
    let cookie = format!("adc_sticky={}", seal("web", "m1", 0, STICKY_SECRET));
    let http = client();
    let r = http
        .get(adc.url("web", "/api/users"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&r), "api");
    assert_eq!(sticky_cookie(&r), None, "no cookie for another pool");
    let r = http
        .get(adc.url("web", "/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&r), "b");
}

/// A backend like [`backend`]'s that issues an application session, as a
/// Java application would: `JSESSIONID=<name>-<n>` to a request without
/// one, and a deleting `Set-Cookie` on `/logout`.
async fn session_backend(name: &'static str) -> Backend {
    let issued = Arc::new(AtomicUsize::new(0));
    backend_with(Arc::new(move |req| {
        let has_session = req
            .headers()
            .get_all("cookie")
            .iter()
            .any(|v| v.to_str().unwrap_or("").contains("JSESSIONID="));
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            format!("{name} {}", req.uri()),
        )));
        response
            .headers_mut()
            .insert("x-backend", name.parse().unwrap());
        let set_cookie = if req.uri().path() == "/logout" {
            Some("JSESSIONID=; Path=/; Max-Age=0".to_owned())
        } else if !has_session {
            let n = issued.fetch_add(1, Ordering::Relaxed);
            Some(format!("JSESSIONID={name}-{n}; Path=/; HttpOnly"))
        } else {
            None
        };
        if let Some(line) = set_cookie {
            response
                .headers_mut()
                .append("set-cookie", line.parse().unwrap());
        }
        response
    }))
    .await
}

#[tokio::test]
async fn sticky_learn_maps_an_application_session_to_the_member_that_issued_it() {
    policy("sticky");
    let instance = "sticky-learn";
    let (a, b) = (session_backend("a").await, session_backend("b").await);
    let config = listener("web", &[instance])
        + &pool("web", "round_robin", &[&a, &b])
        + &shipped(
            instance,
            "sticky",
            "pool = \"web\"\nmode = \"learn\"\ncookie = \"JSESSIONID\"\nttl = 600\n",
        );
    let adc = Adc::start(&config).await;
    let http = client();
    let count = |outcome: &'static str| sticky_count(&adc, instance, outcome);

    // New clients until each member has issued a session.
    let mut sessions: HashMap<String, String> = HashMap::new();
    let mut issued = 0.0;
    for _ in 0..6 {
        issued += 1.0;
        let r = http.get(adc.url("web", "/login")).send().await.unwrap();
        let by = served_by(&r);
        let line = set_cookies(&r, "JSESSIONID").pop().expect("a session");
        let id = line
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("JSESSIONID=")
            .unwrap()
            .to_owned();
        assert!(id.starts_with(&format!("{by}-")), "{id} from {by}");
        sessions.insert(by, id);
        if sessions.len() == 2 {
            break;
        }
    }
    assert_eq!(sessions.len(), 2, "round robin reaches both members");
    assert_eq!(
        adc.metric(
            "adc_policy_sticky_sessions_learned_total",
            &[("policy", instance), ("source", "set_cookie")]
        )
        .await,
        issued
    );

    // Each session goes back to its member, in any cookie form.
    for (member, id) in &sessions {
        for cookie in [
            format!("JSESSIONID={id}"),
            format!("a=1; JSESSIONID=\"{id}\""),
        ] {
            for _ in 0..3 {
                let r = http
                    .get(adc.url("web", "/cart"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(&served_by(&r), member, "{cookie}");
            }
        }
    }
    assert_eq!(count("pinned").await, 12.0);

    // A session no backend issued is left to the pool, and never learned.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = http
            .get(adc.url("web", "/cart"))
            .header("cookie", "JSESSIONID=made-up")
            .send()
            .await
            .unwrap();
        served.insert(served_by(&r));
    }
    assert_eq!(served.len(), 2, "a made-up session is not pinned");
    assert_eq!(count("unknown").await, 4.0);

    // The backend deleting the session makes the policy forget it.
    let a_session = format!("JSESSIONID={}", sessions["a"]);
    let r = http
        .get(adc.url("web", "/logout"))
        .header("cookie", &a_session)
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&r), "a");
    assert_eq!(
        adc.metric(
            "adc_policy_sticky_sessions_forgotten_total",
            &[("policy", instance)]
        )
        .await,
        1.0
    );
    let unknown_before = count("unknown").await;
    for _ in 0..2 {
        http.get(adc.url("web", "/cart"))
            .header("cookie", &a_session)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(count("unknown").await, unknown_before + 2.0);

    // When a session's member is drained, the member that serves it
    // instead takes it over, and keeps it once the first is back.
    let b_session = format!("JSESSIONID={}", sessions["b"]);
    http.post(adc.admin("/pools/web/members/m1/drain"))
        .send()
        .await
        .unwrap();
    let r = http
        .get(adc.url("web", "/cart"))
        .header("cookie", &b_session)
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&r), "a");
    http.post(adc.admin("/pools/web/members/m1/enable"))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        let r = http
            .get(adc.url("web", "/cart"))
            .header("cookie", &b_session)
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&r), "a", "the session moved with the drain");
    }
    assert_eq!(
        adc.metric(
            "adc_policy_sticky_sessions_learned_total",
            &[("policy", instance), ("source", "repin")]
        )
        .await,
        1.0
    );
}

// ---------------------------------------------------------------- waf

/// The rule a waf answer names, or `None` when the request went through.
async fn waf_verdict(response: reqwest::Response) -> Option<String> {
    match response.status().as_u16() {
        200 => None,
        403 => {
            assert_eq!(
                response.headers()["content-type"],
                "text/plain; charset=utf-8"
            );
            let body = response.text().await.unwrap();
            Some(
                body.strip_prefix("request blocked: ")
                    .unwrap_or_else(|| panic!("names the rule: {body:?}"))
                    .trim_end()
                    .to_owned(),
            )
        }
        other => panic!("unexpected status {other}"),
    }
}

async fn waf_count(adc: &Adc, instance: &str, rule: &str, action: &str) -> f64 {
    adc.metric(
        "adc_policy_waf_matches_total",
        &[("policy", instance), ("rule", rule), ("action", action)],
    )
    .await
}

async fn waf_adc(instance: &str, settings: &str) -> (Adc, Backend) {
    waf_adc_budget(instance, settings, "10ms").await
}

/// A waf instance with a CPU budget per hook call other than the default.
async fn waf_adc_budget(instance: &str, settings: &str, budget: &str) -> (Adc, Backend) {
    policy("waf");
    let b = backend("app").await;
    let config = listener("web", &[instance])
        + &pool("web", "round_robin", &[&b])
        + &format!("\n[policies.{instance}]\nfile = \"waf.wasm\"\ncpu_budget = \"{budget}\"\n\n[policies.{instance}.settings]\n{settings}\n");
    (Adc::start(&config).await, b)
}

#[tokio::test]
async fn waf_blocks_sqli_and_xss_in_the_query_and_lets_prose_through() {
    let (adc, app) = waf_adc("waf-query", "").await;
    let http = client();
    let cases = [
        ("/search?q=select+a+dress+from+the+shop", None),
        ("/search?q=O%27Reilly+and+Sons", None),
        ("/search?q=x%3Cy+and+a+%3C+b", None),
        ("/item?id=1'+or+'1'='1", Some("sqli-quote-breakout")),
        (
            "/item?id=1%20UNION%20ALL%20SELECT%20password",
            Some("sqli-union-select"),
        ),
        (
            "/item?id=1;drop%20table%20users",
            Some("sqli-stacked-query"),
        ),
        // Encoded twice: decoded again and again before the rules run.
        (
            "/item?id=%2531%2527%2520or%2520%25271%2527%253D%25271",
            Some("sqli-quote-breakout"),
        ),
        (
            "/search?q=%3Cscript%3Ealert(1)%3C/script%3E",
            Some("xss-script-tag"),
        ),
        (
            "/search?q=%3Cimg%20src=x%20onerror=alert(1)%3E",
            Some("xss-event-handler"),
        ),
        (
            "/go?next=javascript:alert(document.cookie)",
            Some("xss-script-url"),
        ),
        // A rule in a query parameter's name, not only its value.
        ("/p?%3Cscript%3E=1", Some("xss-script-tag")),
    ];
    let mut passed = 0;
    for (path, rule) in cases {
        let verdict = waf_verdict(http.get(adc.url("web", path)).send().await.unwrap()).await;
        assert_eq!(verdict.as_deref(), rule, "{path}");
        passed += usize::from(rule.is_none());
    }
    assert_eq!(
        app.hits(),
        passed,
        "blocked requests never reach the backend"
    );

    // Cookies and inspected headers are values too.
    let verdict = waf_verdict(
        http.get(adc.url("web", "/"))
            .header("cookie", "theme=dark")
            .header("cookie", "pref=%3Cscript%3E")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(verdict.as_deref(), Some("xss-script-tag"));
    assert_eq!(
        waf_count(&adc, "waf-query", "sqli-quote-breakout", "block").await,
        2.0
    );
}

#[tokio::test]
async fn waf_blocks_dot_dot_traversal_however_it_is_encoded() {
    let (adc, app) = waf_adc("waf-traversal", "").await;
    let addr = adc.running.listeners["web"];
    let cases = [
        ("/public/%2e%2e/admin/x", "traversal-dot-dot"),
        ("/public/%2E%2E/%2E%2E/admin", "traversal-dot-dot"),
        ("/public/../admin/x", "traversal-dot-dot"),
        ("/public/%252e%252e/admin/x", "traversal-dot-dot"),
        ("/public/..%2fadmin/x", "traversal-dot-dot"),
        ("/public/..%5cadmin/x", "traversal-dot-dot"),
        ("/public/%c0%ae%c0%ae/admin", "traversal-overlong-utf8"),
        ("/download?file=..%2f..%2f..%2fsecret", "traversal-dot-dot"),
        ("/static/%2e%2e/%2e%2e/etc/passwd", "traversal-dot-dot"),
    ];
    let mut wrong = Vec::new();
    for (target, rule) in cases {
        let response = send_raw_target(addr, "GET", target, &[]).await;
        if response.body != format!("request blocked: {rule}\n") {
            wrong.push(format!("{target}: {} {:?}", response.status, response.body));
        }
    }
    assert!(wrong.is_empty(), "not blocked as expected: {wrong:#?}");
    assert_eq!(app.hits(), 0);
    // A dot that is not a segment of its own is a file name.
    let fine = send_raw_target(addr, "GET", "/files/report..v2.pdf", &[]).await;
    assert_eq!(fine.status, 200);
}

#[tokio::test]
async fn waf_reads_the_body_and_holds_the_method_allow_list() {
    let (adc, app) = waf_adc("waf-body", "methods = [\"GET\", \"POST\"]\n").await;
    let http = client();
    let form = |body: &'static str| {
        http.post(adc.url("web", "/comment"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let json = |body: &'static str| {
        http.post(adc.url("web", "/api/search"))
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = [
        (form("name=ann&text=select+a+dress+from+the+shop"), None),
        (
            form("name=ann&text=%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
            Some("xss-script-tag"),
        ),
        (json(r#"{"q": "union station", "page": 2}"#), None),
        (
            json(r#"{"q": "1' or '1'='1"}"#),
            Some("sqli-quote-breakout"),
        ),
        (
            json(r#"{"q": "\u003csvg onload=alert(1)\u003e"}"#),
            Some("xss-event-handler"),
        ),
        (json(r#"{"<script>": 1}"#), Some("xss-script-tag")),
        (
            http.post(adc.url("web", "/upload"))
                .header("content-type", "application/xml")
                .body("<a/>"),
            Some("content-type-not-allowed"),
        ),
        (
            http.put(adc.url("web", "/item/1")),
            Some("method-not-allowed"),
        ),
        (
            http.delete(adc.url("web", "/item/1")),
            Some("method-not-allowed"),
        ),
        (http.get(adc.url("web", "/item/1")), None),
    ];
    let mut passed = 0;
    for (i, (request, rule)) in cases.into_iter().enumerate() {
        let verdict = waf_verdict(request.send().await.unwrap()).await;
        assert_eq!(verdict.as_deref(), rule, "case {i}");
        passed += usize::from(rule.is_none());
    }
    assert_eq!(app.hits(), passed);
}

#[tokio::test]
async fn waf_in_log_mode_lets_the_request_through_and_counts_it() {
    let instance = "waf-log";
    let (adc, app) = waf_adc(
        instance,
        "[policies.waf-log.settings.sqli]\nmode = \"log\"\n[policies.waf-log.settings.xss]\nmode = \"block\"\n",
    )
    .await;
    let http = client();
    let r = http
        .get(adc.url("web", "/item?id=1'+or+'1'='1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.hits(), 1);
    let r = http
        .post(adc.url("web", "/form"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("q=1%27%20or%20%271%27%3D%271")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the body rule only logs too");
    assert_eq!(app.hits(), 2);
    let rule = "sqli-quote-breakout";
    assert_eq!(waf_count(&adc, instance, rule, "log").await, 2.0);
    assert_eq!(waf_count(&adc, instance, rule, "block").await, 0.0);
    // The other sets still block.
    let r = http
        .get(adc.url("web", "/?q=%3Cscript%3E"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.hits(), 2);
}

#[tokio::test]
async fn waf_answers_a_mebibyte_of_hostile_text_within_its_cpu_budget() {
    // Quotes and unclosed tags once made the scans quadratic: such a body
    // ran out of the CPU budget and was answered 500.
    // Budgets of 100 ms, not the default 10: about 3 ms of work fits the
    // default on a quiet machine, but a busy one (parallel tests, a shared
    // host charging stolen time to the thread) can stretch it past 10,
    // while a quadratic scan still takes minutes.
    let (adc, app) = waf_adc_budget("waf-large", "", "100ms").await;
    let (open, _) = waf_adc_budget(
        "waf-large-open",
        "disable = [\"body-over-inspection-limit\"]\n",
        "100ms",
    )
    .await;
    let body = "He said 'yes'; <a title='x' ".repeat(1024 * 1024 / 28);
    let post = |adc: &Adc| {
        client()
            .post(adc.url("web", "/notes"))
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
    };
    let r = post(&adc).await.unwrap();
    assert_eq!(
        waf_verdict(r).await.as_deref(),
        Some("body-over-inspection-limit")
    );
    assert_eq!(app.hits(), 0);
    // Without that rule, its first 64 KiB are inspected, and it goes on.
    assert_eq!(waf_verdict(post(&open).await.unwrap()).await, None);
}

// ---------------------------------------------------------------- ratelimit

async fn ratelimit_adc(instance: &str, settings: &str) -> (Adc, Backend) {
    policy("ratelimit");
    let b = backend("app").await;
    let config = listener("web", &[instance])
        + &pool("web", "round_robin", &[&b])
        + &shipped(instance, "ratelimit", settings);
    (Adc::start(&config).await, b)
}

/// Send GETs to `path` until one is refused (at most `at_most`); returns
/// how many passed and the refusal.
async fn until_limited(adc: &Adc, path: &str, at_most: usize) -> (usize, reqwest::Response) {
    let http = client();
    for passed in 0..at_most {
        let r = http.get(adc.url("web", path)).send().await.unwrap();
        match r.status().as_u16() {
            200 => {}
            429 => return (passed, r),
            other => panic!("unexpected status {other}"),
        }
    }
    panic!("{at_most} requests to {path} and none was limited");
}

async fn ratelimit_count(adc: &Adc, instance: &str, route: &str, outcome: &str) -> f64 {
    adc.metric(
        "adc_policy_ratelimit_requests_total",
        &[("policy", instance), ("route", route), ("outcome", outcome)],
    )
    .await
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn ratelimit_answers_429_with_retry_after_and_the_bucket_refills_after_it() {
    let instance = "ratelimit-bucket";
    // One token every 2 s, up to 3; /login has a bucket of its own: one a
    // minute. 10.0.0.0/8 is allowed, which is not this client.
    let (adc, app) = ratelimit_adc(
        instance,
        "rate = 1\nper = 2\nburst = 3\nallow = [\"10.0.0.0/8\", \"::1\"]\n\
         [[policies.ratelimit-bucket.settings.routes]]\nprefix = \"/login\"\nrate = 1\nper = 60\nburst = 1\n",
    )
    .await;

    let (passed, limited) = until_limited(&adc, "/", 10).await;
    // Three, or one more if a token came while they were sent.
    assert!((3..=4).contains(&passed), "{passed} passed");
    assert_eq!(
        app.hits(),
        passed,
        "a refused request never reaches the backend"
    );
    let wait = retry_after(&limited);
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    assert_eq!(limited.text().await.unwrap(), "too many requests\n");

    // The /login route takes from its own bucket, with its own limit.
    let (passed_login, limited_login) = until_limited(&adc, "/login/form", 3).await;
    assert_eq!(passed_login, 1);
    let login_wait = retry_after(&limited_login);
    assert!((55..=60).contains(&login_wait), "Retry-After: {login_wait}");
    // Dot segments do not lead out of the route's bucket.
    let r =
        adc_tests::send_raw_target(adc.running.listeners["web"], "GET", "/x/../login", &[]).await;
    assert_eq!(r.status, 429);

    // Once the stated time has passed, a token is there again.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let r = client().get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the bucket refilled after Retry-After");

    let count = |route, outcome| ratelimit_count(&adc, instance, route, outcome);
    assert_eq!(count("default", "allowed").await, passed as f64 + 1.0);
    assert_eq!(count("default", "limited").await, 1.0);
    assert_eq!(count("/login", "allowed").await, 1.0);
    assert_eq!(count("/login", "limited").await, 2.0);
}

#[tokio::test]
async fn ratelimit_never_limits_an_allow_listed_client() {
    let instance = "ratelimit-allow";
    let (adc, app) = ratelimit_adc(
        instance,
        "rate = 1\nper = 60\nburst = 1\nallow = [\"192.0.2.0/24\", \"127.0.0.0/8\"]\n",
    )
    .await;
    let http = client();
    for _ in 0..20 {
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Over HTTP/2 too.
    let h2 = h2_client();
    for _ in 0..5 {
        let r = h2.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(app.hits(), 25);
    assert_eq!(
        adc.metric("adc_policy_ratelimit_exempt_total", &[("policy", instance)])
            .await,
        25.0
    );
    assert_eq!(
        adc.metric(
            "adc_policy_ratelimit_requests_total",
            &[("policy", instance)]
        )
        .await,
        0.0
    );
}

// ---------------------------------------------------------------- rewrite

const INTERNAL: &str = "http://internal.example/";
const PUBLIC: &str = "https://www.example.com/";

/// An HTML page of exactly `len` bytes that links to the internal name.
fn page(len: usize) -> String {
    let head = format!("<a href=\"{INTERNAL}a\">a</a><a href=\"{INTERNAL}b\">b</a>");
    let mut page = head.clone();
    page.push_str(&"x".repeat(len - head.len()));
    page
}

async fn rewrite_backend() -> Backend {
    backend_with(Arc::new(|req| {
        let path = req.uri().path();
        let (status, location, content_type, body) = match path {
            "/moved" => (
                302,
                Some("http://10.0.0.5:8080/login?next=%2F"),
                "text/plain",
                String::new(),
            ),
            "/elsewhere" => (
                302,
                Some("http://other.example/x"),
                "text/plain",
                String::new(),
            ),
            "/relative" => (303, Some("/local/page"), "text/plain", String::new()),
            "/small" => (200, None, "text/html; charset=utf-8", page(200)),
            "/big" => (200, None, "text/html", page(64 * 1024)),
            "/huge" => (200, None, "text/html", page(3 * 1024 * 1024)),
            "/json" => (
                200,
                None,
                "application/json",
                format!("{{\"u\": \"{INTERNAL}\"}}"),
            ),
            _ => (404, None, "text/plain", String::new()),
        };
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        let h = response.headers_mut();
        h.insert("content-type", content_type.parse().unwrap());
        if let Some(location) = location {
            h.insert("location", location.parse().unwrap());
        }
        response
    }))
    .await
}

#[tokio::test]
async fn rewrite_maps_location_and_substitutes_bodies_of_every_size() {
    policy("rewrite");
    let b = rewrite_backend().await;
    let config = listener("web", &["rw"])
        + &pool("web", "round_robin", &[&b])
        + &shipped(
            "rw",
            "rewrite",
            &format!(
                "location = [{{ from = \"http://10.0.0.5:8080/\", to = \"{PUBLIC}\" }}]\n\
                 body = {{ content_types = [\"text/html\"], replace = [{{ from = \"{INTERNAL}\", to = \"{PUBLIC}\" }}] }}\n"
            ),
        );
    let adc = Adc::start(&config).await;
    let http = reqwest::Client::builder()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| http.get(adc.url("web", path)).send();

    // Location: the backend's own name becomes the public one.
    let r = get("/moved").await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], format!("{PUBLIC}login?next=%2F"));
    let r = get("/elsewhere").await.unwrap();
    assert_eq!(r.headers()["location"], "http://other.example/x");
    let r = get("/relative").await.unwrap();
    assert_eq!(r.headers()["location"], "/local/page");

    // Bodies of every size are substituted as they stream, well past the
    // 1 MiB that was once the cap; their length is known only at the end.
    for (path, len) in [("/small", 200), ("/big", 64 * 1024), ("/huge", 3 << 20)] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("content-length").is_none(), "{path}");
        let want = page(len).replace(INTERNAL, PUBLIC);
        assert!(r.text().await.unwrap() == want, "{path}");
    }
    // Other content types are left alone, their length with them.
    let r = get("/json").await.unwrap();
    let want = format!("{{\"u\": \"{INTERNAL}\"}}");
    assert_eq!(
        r.headers()["content-length"],
        want.len().to_string().as_str()
    );
    assert_eq!(r.text().await.unwrap(), want);
}

// ---------------------------------------------------------------- maintenance

async fn maintenance_adc(instance: &str, backends: &[&Backend], settings: &str) -> Adc {
    policy("maintenance");
    let config = listener("web", &[instance])
        + &pool("web", "round_robin", backends)
        + &shipped(instance, "maintenance", settings);
    Adc::start(&config).await
}

#[tokio::test]
async fn maintenance_redirects_plain_http_to_https_except_excluded_paths() {
    let b = backend("app").await;
    let instance = "maintenance-redirect";
    let adc = maintenance_adc(
        instance,
        &[&b],
        "[policies.maintenance-redirect.settings.redirect]\nstatus = 308\nexclude = [\"/.well-known/acme-challenge/\"]\n",
    )
    .await;
    let addr = adc.running.listeners["web"];
    let cases = [
        (
            "GET",
            "/shop?x=1&y=a%20b",
            "www.example.com",
            "https://www.example.com/shop?x=1&y=a%20b",
        ),
        (
            "POST",
            "/form",
            "Www.Example.com:8080",
            "https://www.example.com/form",
        ),
        ("GET", "/", "example.com", "https://example.com/"),
        // Dot segments cannot climb out of the exclusion.
        (
            "GET",
            "/.well-known/acme-challenge/../../admin",
            "example.com",
            "https://example.com/admin",
        ),
        (
            "GET",
            "/.well-known/acme-challenge/%2e%2e/%2e%2e/admin",
            "example.com",
            "https://example.com/admin",
        ),
    ];
    for (method, target, host, location) in cases {
        let r = send_raw_target(addr, method, target, &[("host", host)]).await;
        assert_eq!(r.status, 308, "{target}");
        assert_eq!(r.headers["location"], location, "{target}");
    }
    assert_eq!(b.hits(), 0);

    let acme = send_raw_target(
        addr,
        "GET",
        "/.well-known/acme-challenge/token-1",
        &[("host", "example.com")],
    )
    .await;
    assert_eq!(acme.status, 200);
    assert_eq!(acme.body, "app GET /.well-known/acme-challenge/token-1");
    assert_eq!(
        adc.metric(
            "adc_policy_maintenance_redirects_total",
            &[("policy", instance)]
        )
        .await,
        5.0
    );
}

#[tokio::test]
async fn maintenance_redirects_to_a_configured_host_and_port() {
    let b = backend("app").await;
    let adc = maintenance_adc(
        "maintenance-port",
        &[&b],
        "[policies.maintenance-port.settings.redirect]\nport = 8443\nhost = \"secure.example.com\"\n",
    )
    .await;
    let r = send_raw_target(
        adc.running.listeners["web"],
        "GET",
        "/a?b=c",
        &[("host", "www.example.com")],
    )
    .await;
    assert_eq!(r.status, 301, "the default status");
    assert_eq!(
        r.headers["location"],
        "https://secure.example.com:8443/a?b=c"
    );
}

const SORRY_PAGE: &str = "<h1>Back at 06:00 UTC</h1>";

fn sorry_settings(instance: &str) -> String {
    format!(
        "[policies.{instance}.settings.sorry]\npool = \"web\"\nretry_after = 300\npage = \"{SORRY_PAGE}\"\n"
    )
}

/// Assert that `r` is the sorry page.
async fn is_sorry_page(r: reqwest::Response) {
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "300");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), SORRY_PAGE);
}

async fn pages(adc: &Adc, instance: &str, reason: &str) -> f64 {
    adc.metric(
        "adc_policy_maintenance_pages_total",
        &[("policy", instance), ("reason", reason)],
    )
    .await
}

#[tokio::test]
async fn maintenance_answers_the_sorry_page_while_health_checks_find_no_member() {
    // Members that serve pages but can be made to fail their health check.
    let failing = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let (failing, served) = (failing.clone(), served.clone());
        members.push(
            backend_with(Arc::new(move |req| {
                let mut r =
                    http::Response::new(http_body_util::Full::new(bytes::Bytes::from(name)));
                if req.uri().path() == "/health" {
                    if failing.load(Ordering::Relaxed) {
                        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                } else {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                r
            }))
            .await,
        );
    }
    let instance = "maintenance-health";
    policy("maintenance");
    let config = listener("web", &[instance])
        + &pool("web", "round_robin", &[&members[0], &members[1]])
        + "[pools.web.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n"
        + &shipped(instance, "maintenance", &sorry_settings(instance));
    let adc = Adc::start(&config).await;
    let http = client();
    let get = || http.get(adc.url("web", "/shop")).send();
    assert_eq!(get().await.unwrap().status(), 200);

    failing.store(true, Ordering::Relaxed);
    eventually(
        "both members to fail their checks",
        Duration::from_secs(10),
        || async { get().await.unwrap().status() == 503 },
    )
    .await;
    let before = served.load(Ordering::Relaxed);
    for _ in 0..3 {
        is_sorry_page(get().await.unwrap()).await;
    }
    assert_eq!(
        served.load(Ordering::Relaxed),
        before,
        "no backend was asked"
    );
    assert!(pages(&adc, instance, "pool_unavailable").await >= 4.0);
    assert_eq!(pages(&adc, instance, "backend_failed").await, 0.0);

    failing.store(false, Ordering::Relaxed);
    eventually(
        "a member to pass its check again",
        Duration::from_secs(10),
        || async { get().await.unwrap().status() == 200 },
    )
    .await;
}

#[tokio::test]
async fn maintenance_answers_the_sorry_page_while_every_member_is_drained() {
    let (a, b) = (backend("a").await, backend("b").await);
    let instance = "maintenance-drain";
    let adc = maintenance_adc(instance, &[&a, &b], &sorry_settings(instance)).await;
    let http = client();
    for member in ["m0", "m1"] {
        let r = http
            .post(adc.admin(&format!("/pools/web/members/{member}/drain")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..3 {
        is_sorry_page(http.get(adc.url("web", "/")).send().await.unwrap()).await;
    }
    assert_eq!(pages(&adc, instance, "pool_unavailable").await, 3.0);
    assert_eq!(a.hits() + b.hits(), 0);

    http.post(adc.admin("/pools/web/members/m1/enable"))
        .send()
        .await
        .unwrap();
    let r = http.get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r), "b");
}

#[tokio::test]
async fn maintenance_answers_the_sorry_page_when_reaching_the_backend_fails() {
    let dead = backend("dead").await;
    dead.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let instance = "maintenance-failed";
    let adc = maintenance_adc(instance, &[&dead], &sorry_settings(instance)).await;
    is_sorry_page(client().get(adc.url("web", "/")).send().await.unwrap()).await;
    assert_eq!(pages(&adc, instance, "backend_failed").await, 1.0);
}

// ---------------------------------------------------------------- examples

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn adc_check_accepts_every_example_and_their_addresses_do_not_clash() {
    // Every crate under policies/ is a shipped policy.
    let mut shipped: Vec<String> = std::fs::read_dir(workspace().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert!(shipped.len() >= 6, "{shipped:?}");
    for name in &shipped {
        policy(name);
    }
    let dir = workspace().join("examples");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    for name in shipped {
        assert!(
            examples.contains(&dir.join(format!("{name}.toml"))),
            "examples/{name}.toml is missing"
        );
    }

    // Every address an example binds, and which example binds it.
    let mut bound: HashMap<std::net::SocketAddr, String> = HashMap::new();
    for example in &examples {
        let name = example.file_name().unwrap().to_string_lossy().into_owned();
        // What `adc check` runs: parse, validate, load every policy.
        if let Err(e) = adc::serve::check(example) {
            panic!("adc check {name}: {e:#}");
        }

        // Each example runs beside the others and the quickstart.
        let config = adc::config::Config::load(example).unwrap();
        let addresses = std::iter::once(*config.admin.listen.get_ref())
            .chain(config.listeners.iter().map(|l| l.listen))
            .chain(config.demo.iter().flat_map(|d| d.backends.iter().copied()));
        for addr in addresses {
            if let Some(other) = bound.insert(addr, name.clone()) {
                panic!("{addr} is bound by both {other} and {name}");
            }
        }
    }
}
