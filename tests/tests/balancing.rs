//! How adc shares requests among the members of a pool, and how it keeps a
//! request alive when a member or a kept-alive connection goes away: real
//! backends on 127.0.0.1:0, a real adc, real clients.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use adc_tests::{backend, backend_with, client, listener, Adc};

/// The listener block and a pool named `name` whose members are given as
/// (member name, address, weight), plus `extra` lines for the pool.
fn config(name: &str, method: &str, members: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = members
        .iter()
        .map(|(n, a, w)| format!("{{ name = \"{n}\", address = \"{a}\", weight = {w} }}"))
        .collect();
    listener(name, &[])
        + &format!(
            "\n[pools.{name}]\nmethod = \"{method}\"\nmembers = [{}]\n{extra}",
            list.join(", ")
        )
}

/// The member that answered: the `x-backend` header of the harness backends.
fn answered_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The status document's entry for `member` of `pool`.
async fn member_status(adc: &Adc, pool: &str, member: &str) -> serde_json::Value {
    let text = client()
        .get(adc.admin("/status"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    status["pools"][pool]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == member)
        .unwrap_or_else(|| panic!("no member {member} in pool {pool}: {status}"))
        .clone()
}

async fn healthy(adc: &Adc, pool: &str, member: &str) -> bool {
    member_status(adc, pool, member).await["healthy"]
        .as_bool()
        .unwrap()
}

/// A backend whose requests are served by an async handler; it counts the
/// connections it accepted and the requests it served, and stops (with its
/// connections) when dropped.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let (accepted2, hits2) = (accepted.clone(), hits.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    continue;
                };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let hits = hits2.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let answer = handler(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            accepted,
            hits,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn named(name: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(name)));
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r
}

/// A backend that holds every request until `release` turns true (or a
/// minute passes, so that nothing hangs forever).
async fn holding(name: &'static str, release: &tokio::sync::watch::Sender<bool>) -> Server {
    let release = release.subscribe();
    Server::start(move |_req| {
        let mut release = release.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(60), release.wait_for(|r| *r)).await;
            named(name)
        }
    })
    .await
}

/// A backend that answers at once.
async fn quick(name: &'static str) -> Server {
    Server::start(move |_req| async move { named(name) }).await
}

/// Send GETs one at a time, each from its own task, until `slow` holds one
/// (it never answers until released); the others must answer 200.
async fn until_held(url: &str, slow: &Server) -> Vec<tokio::task::JoinHandle<u16>> {
    let http = client();
    let mut held = Vec::new();
    for _ in 0..200 {
        let before = slow.hits();
        let request = http.get(url).send();
        let task = tokio::spawn(async move { request.await.unwrap().status().as_u16() });
        // Either it is answered, or it reached the holding member.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !task.is_finished() && slow.hits() == before {
            assert!(Instant::now() < deadline, "a request got no answer");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if slow.hits() > before {
            held.push(task);
            return held;
        }
        assert_eq!(task.await.unwrap(), 200);
    }
    panic!("the holding member was never chosen");
}

/// `clients` concurrent loops of GETs, until `total` have been sent and
/// each is answered or held by `slow` (held ones finish only on release);
/// gives up after 20 s and returns the statuses of the answers.
async fn load(url: &str, clients: usize, total: usize, slow: &Server) -> Vec<u16> {
    let held_before = slow.hits();
    let sent = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (url, sent, statuses) = (url.to_owned(), sent.clone(), statuses.clone());
        tasks.spawn(async move {
            let http = client();
            while sent.fetch_add(1, Ordering::SeqCst) < total {
                let status = match http.get(&url).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                statuses.lock().unwrap().push(status);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let answered = statuses.lock().unwrap().len();
        if answered + (slow.hits() - held_before) >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = statuses.lock().unwrap().clone();
    seen
}

#[tokio::test]
async fn weighted_round_robin_gives_each_member_its_weighted_share() {
    let (a, b) = (backend("a").await, backend("b").await);
    let adc = Adc::start(&config(
        "weighted",
        "weighted",
        &[("a", a.addr, 3), ("b", b.addr, 1)],
        "",
    ))
    .await;
    let http = client();
    for _ in 0..400 {
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (a, b) = (a.hits(), b.hits());
    assert_eq!(a + b, 400);
    // Round robin would give 200/200; the weights ask for 300/100.
    assert!((285..=315).contains(&a), "weights 3:1 gave {a}:{b}");
}

/// Pool `web` by `method` of member `a` (weight 1) and member `b` (weight
/// 0), with the router sending requests with `x-pin: b` to `b` by name.
fn weight_zero_config(method: &str, a: SocketAddr, b: SocketAddr) -> String {
    // hash_on is for consistent_hash only.
    let hash_on = if method == "consistent_hash" {
        "hash_on = \"header:x-key\"\n"
    } else {
        ""
    };
    listener("web", &["router"])
        + &format!(
            "\n[pools.web]\nmethod = \"{method}\"\n{hash_on}\
             members = [{{ name = \"a\", address = \"{a}\" }}, \
             {{ name = \"b\", address = \"{b}\", weight = 0 }}]\n\n\
             [policies.router]\nfile = \"router.wasm\"\n[policies.router.settings]\n\
             [[policies.router.settings.rules]]\nname = \"pinned\"\npool = \"web\"\n\
             member = \"b\"\nheaders = [{{ name = \"x-pin\", equals = \"b\" }}]\n"
        )
}

#[tokio::test]
async fn a_member_of_weight_zero_gets_no_load_balanced_request_but_one_a_policy_sends_it_by_name() {
    adc_tests::policy("router");
    for method in [
        "round_robin",
        "weighted",
        "least_connections",
        "consistent_hash",
        "power_of_two",
    ] {
        let (a, b) = (backend("a").await, backend("b").await);
        let adc = Adc::start(&weight_zero_config(method, a.addr, b.addr)).await;
        let http = client();
        for k in 0..40 {
            let r = http
                .get(adc.url("web", "/"))
                .header("x-key", format!("client-{k}"))
                .send()
                .await
                .unwrap();
            assert_eq!(answered_by(&r), "a", "{method}");
        }
        let pinned = http
            .get(adc.url("web", "/"))
            .header("x-pin", "b")
            .send()
            .await
            .unwrap();
        assert_eq!(answered_by(&pinned), "b", "{method}: the policy's choice");
        assert_eq!((a.hits(), b.hits()), (40, 1), "{method}");

        // With the only member of weight 1 drained, nothing is left to
        // balance to: the member of weight 0 does not stand in.
        http.post(adc.admin("/pools/web/members/a/drain"))
            .send()
            .await
            .unwrap();
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{method}");
        // The answer says what is true: a member is up, of weight 0.
        let said = r.text().await.unwrap();
        assert!(said.contains("weight 0"), "{method}: {said}");
        assert_eq!(b.hits(), 1, "{method}");
    }
}

#[tokio::test]
async fn least_connections_sends_new_requests_away_from_a_member_holding_requests() {
    let (release, _) = tokio::sync::watch::channel(false);
    let slow = holding("slow", &release).await;
    let fast = quick("fast").await;
    let adc = Adc::start(&config(
        "lc",
        "least_connections",
        &[("slow", slow.addr, 1), ("fast", fast.addr, 1)],
        "",
    ))
    .await;
    let url = adc.url("web", "/");
    let held = until_held(&url, &slow).await;
    assert_eq!(slow.hits(), 1);

    // One client at a time: the idle member always has fewer in flight.
    let statuses = load(&url, 1, 100, &slow).await;
    assert_eq!(statuses.len(), 100, "every request was answered");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(slow.hits(), 1, "no request joined the held one");

    // Four at a time: a client stuck on the slow member adds to its count,
    // so it can take at most as many as the fast one has in flight, which
    // is fewer than the clients left free. Round robin would send it half.
    let statuses = load(&url, 4, 200, &slow).await;
    assert!(
        slow.hits() <= 3,
        "the busy member got {} requests",
        slow.hits()
    );
    assert!(statuses.len() >= 198, "{} answered", statuses.len());
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    release.send(true).unwrap();
    for task in held {
        assert_eq!(task.await.unwrap(), 200, "the held request completes");
    }
}

#[tokio::test]
async fn power_of_two_choices_avoids_a_member_with_requests_outstanding() {
    let (release, _) = tokio::sync::watch::channel(false);
    let slow = holding("slow", &release).await;
    let (b, c) = (quick("b").await, quick("c").await);
    let adc = Adc::start(&config(
        "p2c",
        "power_of_two",
        &[("slow", slow.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)],
        "",
    ))
    .await;
    let url = adc.url("web", "/");
    let held = until_held(&url, &slow).await;
    let (b0, c0) = (b.hits(), c.hits());

    // Of any two members drawn, one is idle: the busy one is never taken.
    let statuses = load(&url, 1, 150, &slow).await;
    assert_eq!(statuses.len(), 150, "every request was answered");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(slow.hits(), 1, "no request joined the held one");
    let (b, c) = (b.hits() - b0, c.hits() - c0);
    assert_eq!(b + c, 150);
    assert!(b >= 30 && c >= 30, "the idle members share: {b}/{c}");

    release.send(true).unwrap();
    for task in held {
        assert_eq!(task.await.unwrap(), 200);
    }
}

/// The member each key is sent to, by the request `key` makes of a key.
async fn placement(
    keys: &[String],
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> HashMap<String, String> {
    let mut placed = HashMap::new();
    for key in keys {
        let r = request(key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        placed.insert(key.clone(), answered_by(&r));
    }
    placed
}

/// Keys that stayed, and keys that moved, from `before` to `after`; keys
/// that were on `gone` must move and every other key must stay.
fn assert_only_keys_of_the_removed_member_move(
    before: &HashMap<String, String>,
    after: &HashMap<String, String>,
    gone: &str,
) {
    let on_gone = before.values().filter(|m| *m == gone).count();
    assert!(on_gone > 0, "some keys were on {gone}");
    let mut moved = 0;
    for (key, was) in before {
        let now = &after[key];
        assert_ne!(now, gone, "key {key} still goes to the removed member");
        if was == gone {
            moved += 1;
        } else {
            assert_eq!(now, was, "key {key} moved from {was} to {now}");
        }
    }
    assert_eq!(moved, on_gone);
}

fn spread(placed: &HashMap<String, String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in placed.values() {
        *counts.entry(m.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn consistent_hash_by_header_is_stable_and_a_drained_member_moves_only_its_keys() {
    let members = [
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("d").await,
    ];
    let list: Vec<(&str, SocketAddr, u32)> = ["a", "b", "c", "d"]
        .iter()
        .zip(&members)
        .map(|(n, b)| (*n, b.addr, 1))
        .collect();
    let adc = Adc::start(&config(
        "hashed",
        "consistent_hash",
        &list,
        "hash_on = \"header:x-user\"\n",
    ))
    .await;
    let http = client();
    let url = adc.url("web", "/");
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let request = |k: &str| http.get(&url).header("x-user", k);

    let before = placement(&keys, request).await;
    for _ in 0..2 {
        assert_eq!(
            placement(&keys, request).await,
            before,
            "same key, same member"
        );
    }
    let counts = spread(&before);
    assert_eq!(counts.len(), 4, "every member has keys: {counts:?}");
    assert!(counts.values().all(|&n| n >= 20), "{counts:?}");

    let drained = http
        .post(adc.admin("/pools/hashed/members/c/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let after = placement(&keys, request).await;
    assert_only_keys_of_the_removed_member_move(&before, &after, "c");

    // Back in, it gets its own keys back.
    http.post(adc.admin("/pools/hashed/members/c/enable"))
        .send()
        .await
        .unwrap();
    assert_eq!(placement(&keys, request).await, before);
}

#[tokio::test]
async fn consistent_hash_by_cookie_moves_only_the_keys_of_a_member_removed_by_reload() {
    let members = [
        backend("a").await,
        backend("b").await,
        backend("c").await,
        backend("d").await,
    ];
    let list: Vec<(&str, SocketAddr, u32)> = ["a", "b", "c", "d"]
        .iter()
        .zip(&members)
        .map(|(n, b)| (*n, b.addr, 1))
        .collect();
    let extra = "hash_on = \"cookie:session\"\n";
    let adc = Adc::start(&config("cookies", "consistent_hash", &list, extra)).await;
    let http = client();
    let url = adc.url("web", "/");
    let keys: Vec<String> = (0..200).map(|i| format!("s{i:04x}")).collect();
    let request = |k: &str| {
        http.get(&url)
            .header("cookie", format!("theme=dark; session={k}; lang=en"))
    };

    let before = placement(&keys, request).await;
    assert_eq!(placement(&keys, request).await, before);
    assert_eq!(spread(&before).len(), 4, "{:?}", spread(&before));

    let path = adc.dir.path().join("adc.toml");
    let without_d = config("cookies", "consistent_hash", &list[..3], extra);
    std::fs::write(
        &path,
        without_d.replace("{policies}", &adc_tests::policy_dir().display().to_string()),
    )
    .unwrap();
    let reloaded = http.post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(reloaded.status(), 200, "{}", reloaded.text().await.unwrap());
    let after = placement(&keys, request).await;
    assert_only_keys_of_the_removed_member_move(&before, &after, "d");
}

#[tokio::test]
async fn consistent_hash_by_client_address_keeps_each_client_on_one_member() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let adc = Adc::start(&config(
        "byip",
        "consistent_hash",
        &[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)],
        "hash_on = \"client_ip\"\n",
    ))
    .await;
    let url = adc.url("web", "/");
    // Clients from 48 loopback addresses, each its own connection pool.
    let mut placed: HashMap<IpAddr, String> = HashMap::new();
    for i in 0..48u8 {
        let source = IpAddr::from([127, 0, 1, i + 1]);
        let http = reqwest::Client::builder()
            .http1_only()
            .local_address(source)
            .build()
            .unwrap();
        for round in 0..3 {
            let r = http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let member = answered_by(&r);
            match placed.get(&source) {
                Some(first) => assert_eq!(*first, member, "client {source}, round {round}"),
                None => {
                    placed.insert(source, member);
                }
            }
        }
    }
    let used: std::collections::HashSet<&String> = placed.values().collect();
    assert!(used.len() >= 2, "clients spread over members: {placed:?}");
}

#[tokio::test]
async fn a_member_killed_under_load_is_ejected_and_no_idempotent_request_fails() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let adc = Adc::start(&config(
        "killed",
        "round_robin",
        &[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)],
        "[pools.killed.passive]\nconsecutive_failures = 3\ncooldown = \"60s\"\n",
    ))
    .await;
    let url = adc.url("web", "/");
    let started = Instant::now();
    let end = started + Duration::from_millis(2500);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, failures, answered) = (url.clone(), failures.clone(), answered.clone());
        clients.spawn(async move {
            let http = client();
            while Instant::now() < end {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{status} {text}"));
                    }
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(b.hits() > 0, "b took requests before it died");
    b.kill();
    let (a_at_kill, c_at_kill) = (a.hits(), c.hits());
    while clients.join_next().await.is_some() {}

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        a.hits() > a_at_kill && c.hits() > c_at_kill,
        "the others served after the kill"
    );
    assert!(answered.load(Ordering::SeqCst) > 100);
    let status = member_status(&adc, "killed", "b").await;
    assert!(status["ejected_for_ms"].is_u64(), "b is ejected: {status}");
    // The warning says what the last failure was (it gave only a count).
    let log = adc_tests::logged();
    assert!(
        log.lines().any(|l| l.contains("member ejected")
            && l.contains("pool=killed")
            && l.contains("member=b")
            && l.contains("last=")
            && !l.contains("last= ")),
        "{log}"
    );
    for m in ["a", "c"] {
        let status = member_status(&adc, "killed", m).await;
        assert!(status["ejected_for_ms"].is_null(), "{m} is not: {status}");
    }
}

#[tokio::test]
async fn health_rise_and_fall_counts_are_honoured() {
    // "a" fails one probe in five: never two in a row.
    let probes_a = Arc::new(AtomicUsize::new(0));
    let counter = probes_a.clone();
    let a = backend_with(Arc::new(move |req| {
        if req.uri().path() == "/health" {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let mut r = Response::new(Full::new(Bytes::new()));
            if n.is_multiple_of(5) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            return r;
        }
        named("a")
    }))
    .await;
    // "b" passes or fails as the test says, and counts each kind.
    let failing = Arc::new(AtomicBool::new(false));
    let (passes_b, fails_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (f, p, x) = (failing.clone(), passes_b.clone(), fails_b.clone());
    let b = backend_with(Arc::new(move |req| {
        if req.uri().path() == "/health" {
            let mut r = Response::new(Full::new(Bytes::new()));
            if f.load(Ordering::SeqCst) {
                x.fetch_add(1, Ordering::SeqCst);
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            } else {
                p.fetch_add(1, Ordering::SeqCst);
            }
            return r;
        }
        named("b")
    }))
    .await;
    let (rise, fall) = (3, 2);
    let adc = Adc::start(&config(
        "checked",
        "round_robin",
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        &format!(
            "[pools.checked.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = {rise}\nfall = {fall}\n"
        ),
    ))
    .await;
    let poll = Duration::from_millis(10);
    let deadline = || Instant::now() + Duration::from_secs(10);

    // Probe 11 of "a" is only sent once probe 10 (its second failure) has
    // been counted.
    let until = deadline();
    while probes_a.load(Ordering::SeqCst) < 11 {
        assert!(Instant::now() < until, "a is probed");
        assert!(healthy(&adc, "checked", "a").await, "a stays in");
        tokio::time::sleep(poll).await;
    }

    // "b" fails: it is in until `fall` failures in a row, then out.
    fails_b.store(0, Ordering::SeqCst);
    failing.store(true, Ordering::SeqCst);
    let until = deadline();
    loop {
        assert!(Instant::now() < until, "b never went down");
        let seen_before = fails_b.load(Ordering::SeqCst);
        let up = healthy(&adc, "checked", "b").await;
        let seen_after = fails_b.load(Ordering::SeqCst);
        if up {
            // Failure fall + 1 is sent only after failure `fall` counted.
            assert!(
                seen_before <= fall,
                "b still up after {seen_before} failures"
            );
        } else {
            assert!(seen_after >= fall, "b down after {seen_after} failures");
            break;
        }
        assert!(healthy(&adc, "checked", "a").await, "a stays in");
        tokio::time::sleep(poll).await;
    }
    // The warning, logged before the member is marked down, says why (it
    // said only "member is down").
    let log = adc_tests::logged();
    assert!(
        log.lines().any(|l| l.contains("member is down")
            && l.contains("pool=checked")
            && l.contains("member=b")
            && l.contains("status 500")),
        "{log}"
    );
    let http = client();
    for _ in 0..10 {
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(answered_by(&r), "a", "a member that is down takes nothing");
    }

    // "b" recovers: it is out until `rise` passes in a row, then in.
    passes_b.store(0, Ordering::SeqCst);
    failing.store(false, Ordering::SeqCst);
    let until = deadline();
    loop {
        assert!(Instant::now() < until, "b never came back");
        let seen_before = passes_b.load(Ordering::SeqCst);
        let up = healthy(&adc, "checked", "b").await;
        let seen_after = passes_b.load(Ordering::SeqCst);
        if up {
            assert!(seen_after >= rise, "b up after {seen_after} passes");
            break;
        }
        assert!(
            seen_before <= rise,
            "b still down after {seen_before} passes"
        );
        assert!(healthy(&adc, "checked", "a").await, "a stays in");
        tokio::time::sleep(poll).await;
    }
    let mut served = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        served.insert(answered_by(&r));
    }
    assert_eq!(served.len(), 2, "b takes requests again: {served:?}");
    let failed_probes = adc
        .metric(
            "adc_health_checks_total",
            &[("pool", "checked"), ("member", "a"), ("result", "fail")],
        )
        .await;
    assert!(failed_probes >= 2.0, "a failed probes: {failed_probes}");
}

/// Read an HTTP/1.1 response head (through the blank line).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("a response head within 10s")
            .unwrap();
        assert_eq!(n, 1, "connection closed inside a head: {:?}", head);
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A raw HTTP/1.1 backend: each connection answers one request, keeping the
/// connection alive by its headers, then closes it: after `linger` when
/// given, or else the moment the next request arrives, unread (the close
/// crosses the request on the wire). Counts connections.
async fn one_shot_backend(linger: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = socket.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                match linger {
                    Some(d) => tokio::time::sleep(d).await,
                    None => {
                        let _ = stream.readable().await;
                    }
                }
                drop(stream);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_the_backend_closed_gets_200_not_502() {
    for linger in [None, Some(Duration::from_millis(5))] {
        let (member, accepted) = one_shot_backend(linger).await;
        let adc = Adc::start(&config("stale", "round_robin", &[("only", member, 1)], "")).await;
        let http = client();
        for i in 0..20 {
            if linger.is_some() {
                // The next request comes after the backend has closed.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let r = http.get(adc.url("web", "/")).send().await.unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "request {i} (linger {linger:?}): {body}");
            assert_eq!(body, "ok");
        }
        assert!(
            accepted.load(Ordering::SeqCst) >= 20,
            "each request needed a fresh connection"
        );
        let status = member_status(&adc, "stale", "only").await;
        assert!(
            status["ejected_for_ms"].is_null(),
            "closing idle connections is no failure: {status}"
        );
    }
}

#[tokio::test]
async fn a_head_answer_keeps_the_backend_content_length_and_carries_no_body() {
    let page = Bytes::from(vec![b'x'; 1234]);
    let b = backend_with(Arc::new(move |_req| Response::new(Full::new(page.clone())))).await;
    let adc = Adc::start(&config("head", "round_robin", &[("b", b.addr, 1)], "")).await;

    for (target, via) in [(b.addr, "backend"), (adc.running.listeners["web"], "adc")] {
        let mut s = TcpStream::connect(target).await.unwrap();
        s.write_all(b"HEAD /page HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{via}: {head}");
        assert_eq!(
            header(&head, "content-length"),
            Some("1234"),
            "{via}: {head}"
        );
        assert_eq!(header(&head, "transfer-encoding"), None, "{via}: {head}");
        // No body follows: the next bytes on the connection are the answer
        // to the next request.
        s.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let next = read_head(&mut s).await;
        assert!(next.starts_with("HTTP/1.1 200"), "{via}: {next}");
        assert_eq!(header(&next, "content-length"), Some("1234"), "{via}");
        let mut body = vec![0u8; 1234];
        s.read_exact(&mut body).await.unwrap();
        assert!(body.iter().all(|&c| c == b'x'));
    }
}

#[tokio::test]
async fn a_client_closing_its_connection_leaves_the_backend_connection_pooled() {
    let b = quick("b").await;
    // Each worker thread pools its own backend connections: one worker, so
    // that one pooled connection serves every client connection.
    let config = config("closing", "round_robin", &[("b", b.addr, 1)], "");
    let adc = Adc::start(&format!("workers = 1\n{config}")).await;
    let addr = adc.running.listeners["web"];
    let requests: [&[u8]; 3] = [
        b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /three HTTP/1.0\r\nHost: x\r\n\r\n",
    ];
    for request in requests {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("adc closes the client connection as asked")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1."), "{answer}");
        assert!(answer.contains(" 200 "), "{answer}");
        assert!(answer.ends_with("b"), "{answer}");
    }
    assert_eq!(b.hits(), 3);
    assert_eq!(
        b.accepted(),
        1,
        "the client's Connection: close is not passed on"
    );
}
