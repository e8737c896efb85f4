//! Live operations through a real adc: policy files replaced under load,
//! requests in flight across a swap, a drain and a shutdown, a refused
//! reload, and the metrics endpoint as promtool and a real Prometheus see it.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adc_tests::{backend, client, listener, policy, pool, pool_at, Adc, Backend, Gate};

/// The response header the stamp fixtures set: "v1" or "v2".
const STAMP: &str = "x-policy-version";

/// Poll `check` every few milliseconds until it holds; panic naming `what`
/// when it has not within `limit`. Returns how long it took.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    let step = Duration::from_millis(5);
    let tries = limit.as_millis() / step.as_millis() + 1;
    for _ in 0..tries {
        if check().await {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(step).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// A watched policy folder holding `stamp.wasm` (first the v1 build), and
/// an adc whose one route runs it as policy `name` in front of `members`.
struct Watched {
    adc: Adc,
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Watched {
    async fn start(name: &'static str, members: &[SocketAddr]) -> Watched {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stamp.wasm"), stamp(1)).unwrap();
        let config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\npolicy_dir = \"{}\"\nwatch = true\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\n\
             pool = \"web\"\npolicies = [\"{name}\"]\n\n[policies.{name}]\nfile = \"stamp.wasm\"\n",
            dir.path().display()
        ) + &pool_at("web", members);
        let adc = Adc::start(&config).await;
        Watched { adc, dir, name }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("stamp.wasm")
    }

    /// Replace the policy file in place, as `cp` over it would.
    fn write(&self, bytes: &[u8]) -> Instant {
        let written = Instant::now();
        std::fs::write(self.file(), bytes).unwrap();
        written
    }

    /// The stamp a new request gets; panics unless it is answered 200.
    async fn stamp_now(&self, http: &reqwest::Client) -> String {
        let r = http.get(self.adc.url("web", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        stamp_of(&r)
    }

    /// Wait until new requests get `want`; how long that took.
    async fn until_stamp(&self, http: &reqwest::Client, want: &str) -> Duration {
        eventually(
            &format!("new requests answered by {want}"),
            Duration::from_secs(10),
            || async { self.stamp_now(http).await == want },
        )
        .await
    }

    async fn refusals(&self) -> f64 {
        self.adc
            .metric(
                "adc_policy_loads_total",
                &[("policy", self.name), ("outcome", "refused")],
            )
            .await
    }

    async fn policy_status(&self) -> serde_json::Value {
        status(&self.adc).await["policies"][self.name].clone()
    }
}

/// The bytes of the stamp fixture that answers `v1` or `v2`.
fn stamp(version: u8) -> Vec<u8> {
    std::fs::read(policy(&format!("fixture-stamp-v{version}"))).unwrap()
}

fn stamp_of(r: &reqwest::Response) -> String {
    r.headers()
        .get(STAMP)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn status(adc: &Adc) -> serde_json::Value {
    json(client().get(adc.admin("/status")).send().await.unwrap()).await
}

/// A JSON body (reqwest is built without its `json` feature).
async fn json(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// What a load task saw.
#[derive(Debug, Default)]
struct Load {
    sent: usize,
    /// Answers that were not 200, or errors, with when they happened.
    failures: Vec<String>,
    /// Distinct stamps seen, in the order first seen.
    stamps: Vec<String>,
}

/// Requests one after another from a task until `stop` is set, at most
/// `MAX` of them and for at most two minutes.
fn steady_load(
    url: String,
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Load> {
    const MAX: usize = 200_000;
    tokio::spawn(async move {
        let started = Instant::now();
        let mut load = Load::default();
        for _ in 0..MAX {
            if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(120) {
                break;
            }
            load.sent += 1;
            let at = started.elapsed();
            match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    let s = stamp_of(&r);
                    if !load.stamps.contains(&s) {
                        load.stamps.push(s);
                    }
                    let _ = r.bytes().await;
                }
                Ok(r) => load.failures.push(format!("{at:?}: status {}", r.status())),
                Err(e) => load.failures.push(format!("{at:?}: {e}")),
            }
        }
        load
    })
}

fn http_with_timeout() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_policy_file_twenty_times_under_load_loses_no_request_and_refuses_broken_files()
{
    let b = backend("b").await;
    let w = Watched::start("stamp-live", &[b.addr]).await;
    let probe = http_with_timeout();
    assert_eq!(w.stamp_now(&probe).await, "v1");
    let (v1, v2) = (stamp(1), stamp(2));

    // A file never seen before is compiled, which takes a debug build on a
    // busy machine up to a second or two; the compiled form is kept by
    // content. Time that once, apart from the rounds below.
    let written = w.write(&v2);
    w.until_stamp(&probe, "v2").await;
    let first = written.elapsed();
    w.write(&v1);
    w.until_stamp(&probe, "v1").await;

    let stop = Arc::new(AtomicBool::new(false));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let loads = [
        steady_load(w.adc.url("web", "/"), http_with_timeout(), stop.clone()),
        steady_load(w.adc.url("web", "/"), h2, stop.clone()),
    ];

    let mut swaps = Vec::new();
    let mut current = "v1";
    for i in 0..20 {
        // A broken file first: garbage on even rounds, a half-copied
        // component on odd ones. It is refused and the current version
        // keeps serving.
        let refused = w.refusals().await;
        let (broken, reason) = if i % 2 == 0 {
            (
                b"\x7fELF not a policy at all".to_vec(),
                "not a WebAssembly file",
            )
        } else {
            (
                v1[..v1.len() / 2].to_vec(),
                "invalid or truncated component",
            )
        };
        w.write(&broken);
        eventually(
            "the broken file is refused",
            Duration::from_secs(5),
            || async { w.refusals().await > refused },
        )
        .await;
        let policy = w.policy_status().await;
        let error = policy["last_error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(reason), "round {i}: last_error {error:?}");
        assert_eq!(
            w.stamp_now(&probe).await,
            current,
            "round {i}: the previous version serves"
        );

        // Then the other version, which answers within a second.
        let (next, bytes) = if current == "v1" {
            ("v2", &v2)
        } else {
            ("v1", &v1)
        };
        let written = w.write(bytes);
        w.until_stamp(&probe, next).await;
        let took = written.elapsed();
        swaps.push(took);
        assert!(
            took < Duration::from_secs(1),
            "round {i}: {next} took {took:?}"
        );
        assert!(
            w.policy_status().await["last_error"].is_null(),
            "a good file clears the error"
        );
        current = next;
    }

    stop.store(true, Ordering::Relaxed);
    for load in loads {
        let load = load.await.unwrap();
        assert!(
            load.failures.is_empty(),
            "{} of {} failed: {:?}",
            load.failures.len(),
            load.sent,
            load.failures
        );
        assert!(load.sent > 100, "the load kept going: {load:?}");
        assert_eq!(load.stamps, ["v1", "v2"], "every answer carries a stamp");
    }
    eprintln!(
        "first load of v2: {first:?}; 20 swaps under load, file written to first answer: {swaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_version_copied_back_after_a_refused_file_or_a_good_reload_clears_the_error() {
    let b = backend("b").await;
    let w = Watched::start("stamp-clear", &[b.addr]).await;
    let v1 = stamp(1);
    let refuse_truncated = || async {
        let refused = w.refusals().await;
        w.write(&v1[..v1.len() / 2]);
        eventually(
            "the truncated file is refused",
            Duration::from_secs(10),
            || async { w.refusals().await > refused },
        )
        .await;
        let error = w.policy_status().await["last_error"].clone();
        assert!(
            error.as_str().unwrap_or_default().contains("truncated"),
            "{error}"
        );
    };

    // The file the running version came from, copied back.
    refuse_truncated().await;
    w.write(&v1);
    eventually("the error is cleared", Duration::from_secs(10), || async {
        w.policy_status().await["last_error"].is_null()
    })
    .await;

    // A reload that loads every policy (the file is good again) leaves no
    // error of the file refused before it.
    refuse_truncated().await;
    let written = std::fs::read(w.dir.path().join("stamp.wasm")).unwrap();
    assert_ne!(written, v1);
    std::fs::write(w.dir.path().join("stamp.wasm"), &v1).unwrap();
    let answer = client().post(w.adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    eventually(
        "the reload clears the error",
        Duration::from_secs(10),
        || async { w.policy_status().await["last_error"].is_null() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_across_a_swap_finishes_on_the_version_it_started_with() {
    let gate = Gate::start("slow").await;
    let w = Watched::start("stamp-inflight", &[gate.addr]).await;
    let http = http_with_timeout();
    assert_eq!(w.stamp_now(&http).await, "v1");

    let slow = tokio::spawn(http.get(w.adc.url("web", "/slow")).send());
    gate.held().await;
    w.write(&stamp(2));
    w.until_stamp(&http, "v2").await;

    gate.open();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(
        stamp_of(&slow),
        "v1",
        "its response hooks ran on the version it started with"
    );
    assert_eq!(w.stamp_now(&http).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_member_takes_no_new_requests_and_its_request_in_flight_finishes() {
    let gate = Gate::start("gated").await;
    let other = backend("other").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool_at("web", &[gate.addr, other.addr]))).await;
    let http = http_with_timeout();

    // Round robin sends the first request to m0, the gated member.
    let slow = tokio::spawn(http.get(adc.url("web", "/slow")).send());
    gate.held().await;
    let drained = http
        .post(adc.admin("/pools/web/members/m0/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);

    for _ in 0..10 {
        let r = http.get(adc.url("web", "/new")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-backend"], "other");
    }
    let m0 = &status(&adc).await["pools"]["web"]["members"][0];
    assert_eq!(m0["enabled"], false);
    assert_eq!(m0["active"], 1, "the drained member still has its request");

    gate.open();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.text().await.unwrap(), "gated /slow");
    assert_eq!(other.hits(), 10);
    assert_eq!(
        status(&adc).await["pools"]["web"]["members"][0]["active"],
        0
    );
}

/// Append a misspelt key to the config file; the line it stands on.
fn break_config(path: &Path) -> usize {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str("\n[limits]\nconect_timeout = \"1s\"\n");
    std::fs::write(path, &text).unwrap();
    text.lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_on_reload_is_refused_with_its_file_and_line_and_traffic_carries_on() {
    let (a, b) = (backend("a").await, backend("b").await);
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&a, &b]))).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(adc.url("web", "/"), http_with_timeout(), stop.clone());
    let http = http_with_timeout();
    let refused = adc
        .metric("adc_config_reloads_total", &[("outcome", "refused")])
        .await;

    let path = adc.dir.path().join("adc.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let line = break_config(&path);
    let answer = http.post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 422);
    let answer = json(answer).await;
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains(&format!("adc.toml:{line}")), "{error}");
    assert!(error.contains("conect_timeout"), "{error}");
    assert!(
        adc.metric("adc_config_reloads_total", &[("outcome", "refused")])
            .await
            > refused
    );

    // The running configuration serves on: both members, every answer 200.
    let before = a.hits() + b.hits();
    for _ in 0..10 {
        assert_eq!(
            http.get(adc.url("web", "/")).send().await.unwrap().status(),
            200
        );
    }
    assert!(a.hits() + b.hits() >= before + 10);

    // Once the file is mended, a reload is accepted.
    std::fs::write(&path, good).unwrap();
    let answer = http.post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();
    assert!(load.failures.is_empty(), "{load:?}");
    assert!(load.sent > 10, "{load:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_replaced_while_a_refused_config_is_on_disk_still_swaps_in() {
    let b = backend("b").await;
    let w = Watched::start("stamp-badconfig", &[b.addr]).await;
    let http = http_with_timeout();
    assert_eq!(w.stamp_now(&http).await, "v1");

    let path = w.adc.dir.path().join("adc.toml");
    break_config(&path);
    let answer = http.post(w.adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 422);

    w.write(&stamp(2));
    w.until_stamp(&http, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_503_once_shutdown_begins_while_requests_in_flight_finish() {
    let gate = Gate::start("gated").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool_at("web", &[gate.addr]))).await;
    let http = http_with_timeout();
    let (readyz, healthz) = (adc.admin("/readyz"), adc.admin("/healthz"));
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);

    let slow = tokio::spawn(http.get(adc.url("web", "/slow")).send());
    gate.held().await;
    let Adc { running, dir: _dir } = adc;
    let shutdown = tokio::spawn(running.shutdown());

    eventually("readyz answers 503", Duration::from_secs(5), || async {
        http.get(&readyz).send().await.unwrap().status() == 503
    })
    .await;
    assert_eq!(
        http.get(&healthz).send().await.unwrap().status(),
        200,
        "a draining adc is alive"
    );

    gate.open();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown ends once nothing is in flight")
        .unwrap();
}

/// An adc with a stamp policy, a 404 route, and traffic through both, so
/// that most metric families have a series.
async fn adc_with_traffic() -> (Adc, Backend) {
    let b = backend("b").await;
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\npolicy_dir = \"{policies}\"\n\
                  watch = false\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
                  [[listener.route]]\nname = \"app\"\npath_prefix = \"/app/\"\npool = \"web\"\n\
                  policies = [\"stamp\"]\n\n[policies.stamp]\nfile = \"fixture-stamp-v1.wasm\"\n"
        .to_owned()
        + &pool("web", "round_robin", &[&b]);
    let adc = Adc::start(&config).await;
    let http = client();
    for path in ["/app/a", "/app/b", "/elsewhere"] {
        http.get(adc.url("web", path)).send().await.unwrap();
    }
    (adc, b)
}

#[tokio::test]
async fn the_metrics_endpoint_passes_promtool_check_metrics() {
    let (adc, b) = adc_with_traffic().await;
    let text = client()
        .get(adc.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("adc_requests_total{listener=\"web\",route=\"app\",pool=\"web\",member=\"m0\",class=\"2xx\"}"),
        "{text}"
    );
    assert!(
        text.contains("adc_upstream_duration_seconds_bucket{pool=\"web\""),
        "{text}"
    );

    let open = adc
        .metric(
            "adc_upstream_connections_open",
            &[("address", &b.addr.to_string())],
        )
        .await;
    assert!(
        open >= 1.0,
        "a kept-alive backend connection is counted open"
    );

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test installs Debian's prometheus package)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server on a free loopback port, scraping one target every
/// second; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: adc\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port: bound and let go just before Prometheus binds it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (scripts/test installs Debian's prometheus package)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn query(&mut self, http: &reqwest::Client, promql: &str) -> serde_json::Value {
        if let Some(exit) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({exit}): {}", self.log());
        }
        match http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
        {
            // Not yet ready, Prometheus answers in plain text.
            Ok(r) => serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_adc_and_answers_a_query_for_its_requests() {
    let (adc, _b) = adc_with_traffic().await;
    let mut prometheus = Prometheus::start(adc.running.admin);
    let http = client();

    let mut answer = serde_json::Value::Null;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..300 {
            answer = prometheus
                .query(&http, "adc_requests_total{route=\"app\"}")
                .await;
            if answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let up = prometheus.query(&http, "up{job=\"adc\"}").await;
    assert!(
        found.is_ok()
            && answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
        "no adc_requests_total in Prometheus: {answer}\nup: {up}\nlog: {}",
        prometheus.log()
    );
    let series = &answer["data"]["result"][0];
    assert_eq!(series["metric"]["listener"], "web");
    assert_eq!(series["metric"]["pool"], "web");
    assert_eq!(
        up["data"]["result"][0]["value"][1], "1",
        "the scrape is healthy: {up}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_names_another_policy_folder_moves_the_watch_there() {
    let b = backend("b").await;
    let w = Watched::start("stamp-moved", &[b.addr]).await;
    let http = http_with_timeout();
    assert_eq!(w.stamp_now(&http).await, "v1");

    // The new folder starts with v1 too; the config now names it.
    let moved = tempfile::tempdir().unwrap();
    std::fs::write(moved.path().join("stamp.wasm"), stamp(1)).unwrap();
    let path = w.adc.dir.path().join("adc.toml");
    let config = std::fs::read_to_string(&path).unwrap().replace(
        &w.dir.path().display().to_string(),
        &moved.path().display().to_string(),
    );
    std::fs::write(&path, config).unwrap();
    let answer = http.post(w.adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    // A file written to the old folder is no longer loaded...
    w.write(&stamp(2));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.stamp_now(&http).await, "v1");

    // ...and one written to the new folder is.
    std::fs::write(moved.path().join("stamp.wasm"), stamp(2)).unwrap();
    w.until_stamp(&http, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_asked_for_with_www_authenticate_and_its_scheme_is_case_insensitive() {
    let config = listener("web", &[]).replacen(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
        1,
    );
    assert!(
        config.contains("token"),
        "the admin section takes the token"
    );
    let b = backend("b").await;
    let adc = Adc::start(&(config + &pool("web", "round_robin", &[&b]))).await;
    let http = http_with_timeout();
    let status = adc.admin("/status");

    let refused = http.get(&status).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers().get("www-authenticate").unwrap();
    assert!(challenge.to_str().unwrap().starts_with("Bearer"));

    for (header, want) in [
        ("Bearer s3cret", 200),
        ("bearer s3cret", 200),
        ("BEARER  s3cret", 200),
        ("Bearer s3cre", 401),
        ("Bearer s3crett", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
    ] {
        let r = http
            .get(&status)
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{header:?}");
    }
    assert_eq!(
        http.get(adc.admin("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "liveness needs no token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_went_away_is_not_counted_in_flight_and_does_not_hold_up_shutdown() {
    let gate = Gate::start("gated").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool_at("web", &[gate.addr]))).await;
    let inflight = || async { status(&adc).await["inflight"].as_u64().unwrap() };

    // The client gives up while the backend holds its request.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let slow = tokio::spawn(impatient.get(adc.url("web", "/slow")).send());
    gate.held().await;
    assert_eq!(inflight().await, 1);
    assert!(slow.await.unwrap().is_err(), "the client timed out");

    eventually(
        "the abandoned request leaves the in-flight count",
        Duration::from_secs(5),
        || async { inflight().await == 0 },
    )
    .await;
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_swaps_in_when_adc_was_started_with_a_relative_config_path() {
    let b = backend("b").await;
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("conf")).unwrap();
    std::fs::create_dir(root.path().join("pol")).unwrap();
    std::fs::write(root.path().join("pol/stamp.wasm"), stamp(1)).unwrap();
    let config = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\npolicy_dir = \"../pol\"\n\
                  watch = true\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
                  [[listener.route]]\npool = \"web\"\npolicies = [\"stamp-relative\"]\n\n\
                  [policies.stamp-relative]\nfile = \"stamp.wasm\"\n"
        .to_owned()
        + &pool_at("web", &[b.addr]);
    std::fs::write(root.path().join("conf/adc.toml"), config).unwrap();

    // The config path as `adc run some/dir/adc.toml` gives it: relative to
    // the working directory.
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let absolute = root.path().join("conf/adc.toml");
    let relative = PathBuf::from(up).join(absolute.strip_prefix("/").unwrap());
    assert!(relative.is_relative() && relative.exists());
    let running = adc::serve::start(&relative).await.unwrap();
    let url = format!("http://{}/", running.listeners["web"]);
    let http = http_with_timeout();
    let stamp_now = || async {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        stamp_of(&r)
    };
    assert_eq!(stamp_now().await, "v1");

    std::fs::write(root.path().join("pol/stamp.wasm"), stamp(2)).unwrap();
    eventually("the new file answers", Duration::from_secs(10), || async {
        stamp_now().await == "v2"
    })
    .await;
    running.shutdown().await;
}

/// Found by a fresh-user review: deleting a watched policy file said
/// nothing, though the next reload or restart will fail without it.
#[tokio::test]
async fn removing_a_watched_policy_file_is_logged_and_the_loaded_version_keeps_serving() {
    let b = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stamp.wasm");
    std::fs::write(&file, stamp(1)).unwrap();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\npolicy_dir = \"{}\"\nwatch = true\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npool = \"web\"\n\
         policies = [\"stamp-removed\"]\n\n[policies.stamp-removed]\nfile = \"stamp.wasm\"\n",
        dir.path().display()
    ) + &pool_at("web", &[b.addr]);
    let adc = Adc::start(&config).await;
    let http = http_with_timeout();
    let url = adc.url("web", "/");
    assert_eq!(stamp_of(&http.get(&url).send().await.unwrap()), "v1");
    std::fs::remove_file(&file).unwrap();
    eventually("the removal is logged", Duration::from_secs(10), || async {
        adc_tests::logged().contains("policy file removed")
            && adc_tests::logged().contains("stamp-removed")
    })
    .await;
    assert_eq!(stamp_of(&http.get(&url).send().await.unwrap()), "v1");
}
