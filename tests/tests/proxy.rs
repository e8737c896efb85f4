//! The HTTP data path through a real adc: load balancing, the rules a proxy
//! owes HTTP, and error answers.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::io::{Read, Write};

use std::time::Duration;

use adc_tests::{backend, backend_with, client, eventually, listener, pool, Adc};

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_members() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let adc =
        Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&a, &b, &c]))).await;
    let http = client();
    for _ in 0..30 {
        assert_eq!(
            http.get(adc.url("web", "/")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10));
}

#[tokio::test]
async fn hop_by_hop_headers_and_the_ones_connection_names_are_not_forwarded() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let response = client()
        .get(adc.url("web", "/"))
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    let h = response.headers();
    assert!(h.get("x-echo-x-secret").is_none());
    assert!(h.get("x-echo-proxy-connection").is_none());
    assert!(h.get("x-echo-te").is_none());
    assert_eq!(h["x-echo-x-kept"], "yes");
    assert_eq!(h["x-echo-x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-echo-x-forwarded-proto"], "http");
}

#[tokio::test]
async fn proxy_credentials_are_not_forwarded_and_a_proxy_challenge_does_not_reach_the_client() {
    let b = backend_with(std::sync::Arc::new(|req| {
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        *response.status_mut() = http::StatusCode::PROXY_AUTHENTICATION_REQUIRED;
        let headers = response.headers_mut();
        headers.insert(
            "proxy-authenticate",
            "Basic realm=\"inner\"".parse().unwrap(),
        );
        for name in ["proxy-authorization", "authorization"] {
            if let Some(v) = req.headers().get(name) {
                headers.insert(
                    format!("x-echo-{name}")
                        .parse::<http::HeaderName>()
                        .unwrap(),
                    v.clone(),
                );
            }
        }
        response
    }))
    .await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let response = client()
        .get(adc.url("web", "/"))
        .header("proxy-authorization", "Basic c2VjcmV0OnNlY3JldA==")
        .header("authorization", "Bearer for-the-backend")
        .send()
        .await
        .unwrap();
    let h = response.headers();
    assert!(h.get("x-echo-proxy-authorization").is_none(), "{h:?}");
    assert_eq!(h["x-echo-authorization"], "Bearer for-the-backend");
    assert!(h.get("proxy-authenticate").is_none(), "{h:?}");
}

#[tokio::test]
async fn a_client_forwarded_for_is_replaced_unless_hops_are_trusted() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let response = client()
        .get(adc.url("web", "/"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-echo-x-forwarded-for"],
        "127.0.0.1",
        "a spoofed address is not trusted"
    );
    let forwarded: Vec<_> = response
        .headers()
        .get_all("x-echo-forwarded")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert!(
        forwarded[0].starts_with("for=127.0.0.1;"),
        "the client's Forwarded is dropped like its X-Forwarded-For: {forwarded:?}"
    );
}

#[tokio::test]
async fn a_member_that_refuses_connections_is_skipped_for_idempotent_requests() {
    let good = backend("good").await;
    let dead = backend("dead").await;
    dead.kill();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let adc =
        Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&dead, &good]))).await;
    let http = client();
    for _ in 0..10 {
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "a retry on the other member hides the dead one"
        );
    }
}

#[tokio::test]
async fn no_reachable_member_gives_a_502_that_says_so() {
    let dead = backend("dead").await;
    dead.kill();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&dead]))).await;
    let r = client().get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("cannot connect"));
}

#[tokio::test]
async fn a_header_block_over_the_limit_gets_431_without_reaching_a_backend() {
    let b = backend("b").await;
    let adc = Adc::start(
        &(listener("web", &[])
            + &pool("web", "round_robin", &[&b])
            + "\n[limits]\nmax_header_bytes = 16384\n"),
    )
    .await;
    let addr = adc.running.listeners["web"];
    let status = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let big = "a".repeat(40_000);
        let _ = write!(s, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn requests_the_http_parser_refuses_are_counted_as_4xx() {
    let b = backend("b").await;
    // A listener name of its own: metrics are process-wide.
    let config = listener("web", &[]).replace("name = \"web\"", "name = \"refusals\"")
        + &pool("web", "round_robin", &[&b])
        + "\n[limits]\nmax_header_bytes = 16384\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["refusals"];
    let refused = || adc.answered("refusals", "4xx");
    let before = refused().await;

    let too_large = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(addr, too_large).await.starts_with("HTTP/1.1 431"));
    let malformed = "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_owned();
    assert!(raw(addr, malformed).await.starts_with("HTTP/1.1 400"));
    assert_eq!(b.hits(), 0);
    // hyper writes its refusal before the connection task sees the error
    // that is counted, so the count may trail the answer a little.
    eventually(
        "both refusals are counted",
        Duration::from_secs(5),
        || async { refused().await - before == 2.0 },
    )
    .await;
    assert_eq!(refused().await - before, 2.0);
}

#[tokio::test]
async fn a_host_with_port_routes_like_the_bare_host_case_insensitively() {
    let (a, b) = (backend("a").await, backend("b").await);
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\nhost = \"api.example.com\"\npool = \"api\"\n[[listener.route]]\npool = \"web\"\n".to_owned()
        + &pool("api", "round_robin", &[&a])
        + &pool("web", "round_robin", &[&b]);
    let adc = Adc::start(&config).await;
    let http = client();
    for host in [
        "api.example.com",
        "API.Example.com:80",
        "api.example.com:8080",
        "api.example.com.",
        "api.example.com.:80",
    ] {
        let r = http
            .get(adc.url("web", "/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-backend"], "a", "host {host}");
    }
    let r = http
        .get(adc.url("web", "/"))
        .header("host", "www.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-backend"], "b");
}

#[tokio::test]
async fn a_drained_member_takes_no_new_requests() {
    let (a, b) = (backend("a").await, backend("b").await);
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&a, &b]))).await;
    let http = client();
    let drained = http
        .post(adc.admin("/pools/web/members/m0/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    for _ in 0..6 {
        http.get(adc.url("web", "/")).send().await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (0, 6));
}

/// Found by a fresh-user review: a pool with every member drained said
/// "no healthy backend", sending the operator to the health checks.
#[tokio::test]
async fn a_pool_with_every_member_drained_says_so() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let http = client();
    let drained = http
        .post(adc.admin("/pools/web/members/m0/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let r = http.get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("drained"));
    assert_eq!(b.hits(), 0);
}

/// An HTTP/2 pool gets the client's Host as :authority with its port, as
/// an HTTP/1.1 pool gets it in Host (it lost the port; found by a
/// fresh-user review).
#[tokio::test]
async fn an_http2_pool_gets_the_host_with_its_port_as_authority() {
    let b = backend_with(std::sync::Arc::new(|req| {
        let seen = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(seen)));
        *r.version_mut() = req.version();
        r
    }))
    .await;
    let config = listener("web", &[])
        + &pool("web", "round_robin", &[&b])
            .replace("[pools.web]\n", "[pools.web]\nhttp2 = true\n");
    let adc = Adc::start(&config).await;
    for host in ["example.com:8443", "example.com"] {
        let r = client()
            .get(adc.url("web", "/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), host);
    }
}

/// CONNECT asks for a tunnel, which a reverse proxy does not open: 501,
/// not the 400 its target used to get. `OPTIONS *` goes where a request
/// for "/" goes (it used to find no route).
#[tokio::test]
async fn connect_is_not_implemented_and_options_asterisk_is_forwarded() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let addr = adc.running.listeners["web"];
    let connect = raw(
        addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 501"), "{connect}");
    assert_eq!(b.hits(), 0);
    let options = raw(addr, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(options.starts_with("HTTP/1.1 200"), "{options}");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn an_admin_path_asked_with_the_wrong_method_gets_405_with_allow() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let http = client();
    let cases = [
        (http::Method::GET, "/reload", "POST"),
        (http::Method::GET, "/pools/web/members/m0/drain", "POST"),
        (http::Method::POST, "/status", "GET, HEAD"),
        (http::Method::DELETE, "/metrics", "GET, HEAD"),
        (http::Method::POST, "/healthz", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = http
            .request(method.clone(), adc.admin(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }
    let head = http.head(adc.admin("/status")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    for path in [
        "/nothing",
        "/pools/web/members/m0/remove",
        "/pools/web/members/m0/drain/",
        "//reload",
    ] {
        let r = http.post(adc.admin(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    for path in ["/metrics/", "//status"] {
        let r = http.get(adc.admin(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(b.hits(), 0);
}

#[test]
fn adc_check_names_the_line_of_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]\nconect_timeout = \"1s\"\n",
    )
    .unwrap();
    let e = adc::config::Config::load(&path).unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(e.to_string().contains("conect_timeout"), "{e}");
    assert!(e.to_string().contains("bad.toml:5"), "{e}");
}

#[test]
fn adc_check_names_the_line_of_a_refusal_that_involves_two_sections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.toml");
    let base = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[listener.route]]\npool = \"app\"\n\n\
                [pools.app]\nmembers = [{ address = \"127.0.0.1:9001\" }]\n";
    let cases = [
        // A second listener on the first one's address.
        (
            format!("{base}\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:8080\"\n[[listener.route]]\npool = \"app\"\n"),
            "two.toml:12: listener \"b\": address 127.0.0.1:8080 is used by another listener",
        ),
        // A listener on the admin address it did not write (the default).
        (
            base.replace("8080", "9900"),
            "two.toml:3: admin address 127.0.0.1:9900 overlaps listener \"web\"",
        ),
        // An admin address on every interface, at a listener's port: `adc
        // check` passed it, and `adc run` then failed to bind.
        (
            format!("[admin]\nlisten = \"0.0.0.0:8080\"\n{base}"),
            "two.toml:2: admin address 0.0.0.0:8080 overlaps listener \"web\" at 127.0.0.1:8080",
        ),
        // A policy named by a route whose file does not load.
        (
            base.replace("pool = \"app\"\n", "pool = \"app\"\npolicies = [\"p\"]\n")
                + "\n[policies.p]\nfile = \"missing.wasm\"\n",
            "two.toml:12: policy \"p\"",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&path, &text).unwrap();
        let e = format!("{:#}", adc::serve::check(&path).unwrap_err());
        assert!(e.contains(want), "{e}\nfor:\n{text}");
    }
}

#[tokio::test]
async fn an_http2_preface_sent_in_two_pieces_is_still_served_as_http2() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let mut s = tokio::net::TcpStream::connect(adc.running.listeners["web"])
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    s.write_all(&preface[..10]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.write_all(&preface[10..]).await.unwrap();
    // An empty SETTINGS frame: the client's half of the connection preface.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        !head.starts_with(b"HTTP/1"),
        "answered as HTTP/1.1: {head:?}"
    );
    assert_eq!(head[3], 4, "the server's SETTINGS frame: {head:?}");
}

/// Send raw bytes and return the status line of the answer.
async fn raw(addr: std::net::SocketAddr, request: impl AsRef<[u8]> + Send + 'static) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(request.as_ref()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_invalid_or_missing_host_gets_400_and_an_absolute_target_wins_over_host() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let addr = adc.running.listeners["web"];
    assert!(raw(addr, "GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n")
        .await
        .contains(" 400 "));
    assert!(raw(addr, "GET / HTTP/1.1\r\nHost: user@evil:80\r\n\r\n")
        .await
        .contains(" 400 "));
    for bad_port in ["a:99999", "a:xx", "a:-1", "[::1]:x"] {
        let request = format!("GET / HTTP/1.1\r\nHost: {bad_port}\r\n\r\n").leak();
        assert!(raw(addr, request).await.contains(" 400 "), "{bad_port}");
    }
    assert!(raw(addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .contains(" 400 "));
    assert_eq!(b.hits(), 0, "none of them reached the backend");

    let response = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET http://right.example/abs HTTP/1.1\r\nHost: wrong.example\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(
        response
            .to_lowercase()
            .contains("x-echo-host: right.example"),
        "{response}"
    );
}

#[tokio::test]
async fn duplicate_slashes_cannot_dodge_a_route() {
    let (api, web) = (backend("api").await, backend("web").await);
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npath_prefix = \"/api/\"\npool = \"api\"\n[[listener.route]]\npool = \"web\"\n".to_owned()
        + &pool("api", "round_robin", &[&api])
        + &pool("web", "round_robin", &[&web]);
    let adc = Adc::start(&config).await;
    let r = client()
        .get(adc.url("web", "//api//users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-backend"], "api");
    assert_eq!(
        r.text().await.unwrap(),
        "api GET /api/users",
        "the backend gets the path that was routed"
    );
}

#[tokio::test]
async fn a_route_prefix_is_normalised_like_the_paths_it_is_compared_with() {
    let (home, web) = (backend("home").await, backend("web").await);
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npath_prefix = \"/%7Euser//pages/\"\npool = \"home\"\n[[listener.route]]\npool = \"web\"\n".to_owned()
        + &pool("home", "round_robin", &[&home])
        + &pool("web", "round_robin", &[&web]);
    let adc = Adc::start(&config).await;
    for path in ["/~user/pages/a", "/%7euser/pages/a"] {
        let r = client().get(adc.url("web", path)).send().await.unwrap();
        assert_eq!(r.headers()["x-backend"], "home", "{path}");
    }
    // Paths are case-sensitive, in routes as in the policies' prefixes.
    let r = client()
        .get(adc.url("web", "/~USER/pages/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-backend"], "web");
}

#[tokio::test]
async fn a_reload_keeps_a_drained_member_drained_and_refuses_listener_changes() {
    let (a, b) = (backend("a").await, backend("b").await);
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&a, &b]))).await;
    let http = client();
    http.post(adc.admin("/pools/web/members/m0/drain"))
        .send()
        .await
        .unwrap();
    let reloaded = http.post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(reloaded.status(), 200);
    for _ in 0..4 {
        http.get(adc.url("web", "/")).send().await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (0, 4));

    let path = adc.dir.path().join("adc.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text + "\n[[listener]]\nname = \"more\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npool = \"web\"\n").unwrap();
    let refused = http.post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("restart adc"));
}

#[test]
fn adc_check_refuses_what_adc_run_could_not_serve() {
    let base = "[admin]\nlisten = \"127.0.0.1:9999\"\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:8081\"\n[[listener.route]]\npool = \"p\"\n[pools.p]\nmembers = [{ address = \"127.0.0.1:9001\" }]\n";
    let cases = [
        (format!("{base}[pools.p.health]\nkind = \"tcp\"\ninterval = \"0s\"\n"), "at least 10ms"),
        (format!("{base}[pools.p.health]\nkind = \"tcp\"\ninterval = \"0.0001ms\"\n"), "at least 10ms"),
        (format!("{base}[pools.p.health]\nkind = \"tcp\"\ntimeout = \"0.0001ms\"\n"), "at least 10ms"),
        (format!("{base}[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:8081\"\n[[listener.route]]\npool = \"p\"\n"), "used by another listener"),
        (base.replace("listen = \"127.0.0.1:9999\"", "listen = \"127.0.0.1:9999\"\ntoken = \"\""), "token is empty"),
    ];
    for (text, want) in cases {
        let e = adc::config::Config::parse(&text, "t.toml").unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[tokio::test]
async fn body_bytes_in_and_out_are_counted_per_listener() {
    let b = backend("b").await;
    // Metrics are process-wide and the other tests' listeners are all
    // called "web": this one has a name of its own, or their bytes count.
    let config = listener("web", &[]).replace("name = \"web\"", "name = \"bytes\"")
        + &pool("web", "round_robin", &[&b]);
    let adc = Adc::start(&config).await;
    let http = client();
    let counted = |name: &'static str| adc.metric(name, &[("listener", "bytes")]);
    let (received0, sent0) = (
        counted("adc_client_received_bytes_total").await,
        counted("adc_client_sent_bytes_total").await,
    );
    let r = http
        .post(adc.url("bytes", "/upload"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    let answer = r.bytes().await.unwrap().len() as f64;
    let received = counted("adc_client_received_bytes_total").await - received0;
    let sent = counted("adc_client_sent_bytes_total").await - sent0;
    assert_eq!(received, 5000.0);
    assert_eq!(sent, answer);
}

#[test]
fn an_http_route_to_a_pool_that_sends_proxy_headers_is_refused() {
    let text = "[admin]\nlisten = \"127.0.0.1:9999\"\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:8081\"\n[[listener.route]]\npool = \"p\"\n[pools.p]\nproxy_protocol = \"v2\"\nmembers = [{ address = \"127.0.0.1:9001\" }]\n";
    let e = adc::config::Config::parse(text, "t.toml").unwrap_err();
    assert_eq!(e.line, 7, "{e}");
    assert!(e.to_string().contains("only TCP listeners"), "{e}");
}

#[tokio::test]
async fn an_upgrade_becomes_a_two_way_tunnel() {
    // A backend that accepts the upgrade and then echoes bytes.
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = socket.accept().await.unwrap();
        let service = hyper::service::service_fn(
            |mut req: http::Request<hyper::body::Incoming>| async move {
                tokio::spawn(async move {
                    let upgraded = hyper::upgrade::on(&mut req).await.unwrap();
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut r = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut()
                    .insert("upgrade", "websocket".parse().unwrap());
                r.headers_mut()
                    .insert("connection", "upgrade".parse().unwrap());
                Ok::<_, std::convert::Infallible>(r)
            },
        );
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    });
    let config = listener("web", &[])
        + &format!("\n[pools.web]\nmembers = [{{ address = \"{member}\" }}]\n");
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        (head, back)
    })
    .await
    .unwrap();
    assert!(echoed.0.starts_with("HTTP/1.1 101"), "{}", echoed.0);
    assert_eq!(&echoed.1, b"ping");
}

/// A backend that answers every request with the head of a chunked
/// response and one chunk, then closes its connection mid-body.
async fn cutting_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    )
                    .await;
                // Let adc read what was sent before the close.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_dying_mid_body_cuts_the_clients_response_and_is_counted_logged_and_failed() {
    let member = cutting_backend().await;
    let config = listener("cutpool", &[])
        + &adc_tests::pool_at("cutpool", &[member])
        + "\n[pools.cutpool.passive]\nconsecutive_failures = 3\ncooldown = \"60s\"\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];

    // HTTP/1.1: the connection closes without the last chunk.
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello"), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "ended as complete: {answer}"
    );

    // Clients see an error, not a short "complete" body: HTTP/1.1, and
    // HTTP/2 (the stream is reset).
    let r = client().get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "HTTP/1.1 body read as complete");
    let r = adc_tests::h2_client()
        .get(adc.url("web", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "HTTP/2 body read as complete");

    let aborted = || {
        adc.metric(
            "adc_responses_aborted_total",
            &[("pool", "cutpool"), ("side", "backend")],
        )
    };
    eventually(
        "three backend aborts are counted",
        Duration::from_secs(5),
        || async { aborted().await == 3.0 },
    )
    .await;
    // Three failures of the member, though each head was a 200.
    assert_eq!(
        adc.metric("adc_member_failures_total", &[("pool", "cutpool")])
            .await,
        3.0
    );
    let warned = adc_tests::logged();
    assert!(
        warned
            .lines()
            .any(|l| l.contains("backend response body ended early")
                && l.contains("pool=cutpool")
                && l.contains("member=m0")
                && l.contains("listener=web")),
        "no warning naming the pool and member"
    );
}

#[tokio::test]
async fn status_spells_methods_as_the_config_does_and_says_why_every_kind_of_reload_was_refused() {
    let b = backend("b").await;
    let good = listener("web", &["router"])
        + &pool("web", "least_connections", &[&b])
        + "\n[policies.router]\nfile = \"router.wasm\"\n[policies.router.settings]\ndefault = \"web\"\n";
    let adc = Adc::start(&good).await;
    let http = client();
    let status = || async {
        let r = http.get(adc.admin("/status")).send().await.unwrap();
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()
    };
    let first = status().await;
    assert_eq!(first["pools"]["web"]["method"], "least_connections");
    assert!(first["last_reload"].is_null(), "no reload asked yet");

    let path = adc.dir.path().join("adc.toml");
    let reload_with = |text: String| {
        let dir = adc_tests::policy_dir().display().to_string();
        std::fs::write(&path, text.replace("{policies}", &dir)).unwrap();
        http.post(adc.admin("/reload")).send()
    };

    // A policy whose init refuses its settings: a default pool that is
    // not there.
    let refused = reload_with(good.replace("default = \"web\"", "default = \"nowhere\"")).await;
    assert_eq!(refused.unwrap().status(), 422);
    let s = status().await;
    assert_eq!(s["last_reload"]["outcome"], "refused");
    let error = s["last_reload"]["last_error"].as_str().unwrap();
    assert!(error.contains("nowhere"), "{error}");
    let policy_error = s["policies"]["router"]["last_error"].as_str().unwrap();
    assert!(policy_error.contains("nowhere"), "{policy_error}");

    // A policy file that does not compile.
    let junk = adc.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0 not a component").unwrap();
    let refused = reload_with(good.replace(
        "file = \"router.wasm\"",
        &format!("file = {:?}", junk.display().to_string()),
    ))
    .await;
    assert_eq!(refused.unwrap().status(), 422);
    let error = status().await["last_reload"]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("junk.wasm"), "{error}");

    // A configuration that does not parse.
    let refused = reload_with(good.replace("[pools.web]", "[pools.web")).await;
    assert_eq!(refused.unwrap().status(), 422);
    let error = status().await["last_reload"]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("adc.toml"), "{error}");

    // A good one clears both.
    assert_eq!(reload_with(good.clone()).await.unwrap().status(), 200);
    let s = status().await;
    assert_eq!(s["last_reload"]["outcome"], "ok");
    assert!(s["last_reload"]["last_error"].is_null());
    assert!(s["policies"]["router"]["last_error"].is_null());
}

#[tokio::test]
async fn an_http2_header_list_over_the_limit_gets_431_and_is_counted() {
    let b = backend("b").await;
    // A listener name of its own: metrics are process-wide.
    let config = listener("web", &[]).replace("name = \"web\"", "name = \"h2-refusals\"")
        + &pool("web", "round_robin", &[&b])
        + "\n[limits]\nmax_header_bytes = 16384\n";
    let adc = Adc::start(&config).await;
    let url = format!("http://{}/", adc.running.listeners["h2-refusals"]);
    let refused = || adc.answered("h2-refusals", "4xx");
    let before = refused().await;

    let h2 = adc_tests::h2_client();
    let r = h2
        .get(&url)
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 431);
    // Just under the limit passes.
    let r = h2
        .get(&url)
        .header("x-big", "a".repeat(15_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.hits(), 1);
    assert_eq!(refused().await - before, 1.0);
}

#[tokio::test]
async fn a_client_leaving_mid_body_is_counted_as_its_abort_and_whole_answers_are_not() {
    let big = backend_with(std::sync::Arc::new(|req| {
        let body = if req.uri().path() == "/big" {
            vec![b'x'; 16 << 20]
        } else {
            b"small".to_vec()
        };
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)))
    }))
    .await;
    let adc =
        Adc::start(&(listener("leftpool", &[]) + &pool("leftpool", "round_robin", &[&big]))).await;
    let aborted = |side: &'static str| {
        let adc = &adc;
        async move {
            adc.metric(
                "adc_responses_aborted_total",
                &[("pool", "leftpool"), ("side", side)],
            )
            .await
        }
    };

    // Whole answers, with and without a body, are no aborts.
    let http = client();
    let r = http.get(adc.url("web", "/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "small");
    let r = http.head(adc.url("web", "/big")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = adc_tests::h2_client()
        .get(adc.url("web", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "small");

    // A client that reads the head of a large answer and hangs up.
    let addr = adc.running.listeners["web"];
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 1024];
        let n = s.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    })
    .await
    .unwrap();
    eventually(
        "the client's abort is counted",
        Duration::from_secs(10),
        || async { aborted("client").await == 1.0 },
    )
    .await;
    assert_eq!(aborted("backend").await, 0.0);
}
