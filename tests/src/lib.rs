//! The test environment: real backends on 127.0.0.1:0, a real adc started
//! from a config written for the test, and the policies built by
//! `scripts/build-policies`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Where `scripts/build-policies` puts components.
pub fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies")
}

/// The path of a built policy; panics with the fix when it is missing.
pub fn policy(name: &str) -> PathBuf {
    let path = policy_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-policies first",
        path.display()
    );
    path
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("ADC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(|| KeptLog)
        .with_ansi(false)
        .try_init();
}

/// What adc logged in this test process (at the level `ADC_LOG` lets
/// through, `warn` by default), for tests that check a log line. Tests run
/// side by side, so look for text only your test causes.
pub fn logged() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Keeps the log for [`logged`] (up to 16 MiB) and prints it where the test
/// harness captures it.
struct KeptLog;

impl std::io::Write for KeptLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() + buf.len() <= 16 << 20 {
            log.extend_from_slice(buf);
        }
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A backend that answers with its name; counts the requests it served.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stop accepting; open connections are closed with the task.
    pub fn kill(&self) {
        self.task.abort();
    }
}

/// A function from request to response for [`backend_with`].
pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Start a backend answering `"<name> <method> <uri>"` and echoing request
/// headers it was sent as `x-echo-<name>` response headers.
pub async fn backend(name: &str) -> Backend {
    let name = name.to_owned();
    backend_with(Arc::new(move |req| {
        let mut response = Response::new(Full::new(Bytes::from(format!(
            "{name} {} {}",
            req.method(),
            req.uri()
        ))));
        response
            .headers_mut()
            .insert("x-backend", name.parse().expect("ASCII name"));
        for (k, v) in req.headers() {
            if let Ok(n) = http::HeaderName::from_bytes(format!("x-echo-{k}").as_bytes()) {
                response.headers_mut().append(n, v.clone());
            }
        }
        response
    }))
    .await
}

pub async fn backend_with(handler: Handler) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("bound");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            conns.spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let response = handler(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, hits, task }
}

/// A running adc and the folder holding its config.
pub struct Adc {
    pub running: adc::serve::Running,
    pub dir: tempfile::TempDir,
}

impl Adc {
    /// Start adc from config text. `{policies}` in the text stands for the
    /// built policies folder.
    pub async fn start(config: &str) -> Adc {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let text = config.replace("{policies}", &policy_dir().display().to_string());
        let path = dir.path().join("adc.toml");
        std::fs::write(&path, text).expect("write config");
        let running = adc::serve::start(&path).await.expect("adc starts");
        Adc { running, dir }
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.running.listeners[listener])
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin)
    }

    /// The text of the metrics endpoint.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// Requests a listener answered with a status of `class` ("4xx"), as
    /// `adc_requests_total` counts them.
    pub async fn answered(&self, listener: &str, class: &str) -> f64 {
        self.metric(
            "adc_requests_total",
            &[("listener", listener), ("class", class)],
        )
        .await
    }

    /// The sum of the series of metric `name` that carry all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// An HTTP/1.1 client with keep-alive.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
}

/// An HTTP/2 client speaking cleartext with prior knowledge (h2c).
pub fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

/// A listener and admin block on free ports, and a route to `pool` with
/// `policies`.
pub fn listener(pool: &str, policies: &[&str]) -> String {
    let list: Vec<String> = policies.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\npolicy_dir = \"{{policies}}\"\nwatch = false\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[listener.route]]\npool = \"{pool}\"\npolicies = [{}]\n",
        list.join(", ")
    )
}

/// A pool section with these members.
pub fn pool(name: &str, method: &str, members: &[&Backend]) -> String {
    let list: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ name = \"m{i}\", address = \"{}\" }}", b.addr))
        .collect();
    format!(
        "\n[pools.{name}]\nmethod = \"{method}\"\nmembers = [{}]\n",
        list.join(", ")
    )
}

/// A backend that holds every request to `/slow` until the test releases
/// one, and answers any other path at once with its name.
pub struct Gate {
    pub addr: SocketAddr,
    arrived: Arc<tokio::sync::Semaphore>,
    release: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(name: &'static str) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a gate backend");
        let addr = listener.local_addr().expect("bound");
        let arrived = Arc::new(tokio::sync::Semaphore::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (arrived2, release2) = (arrived.clone(), release.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (arrived, release) = (arrived2.clone(), release2.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (arrived, release) = (arrived.clone(), release.clone());
                        async move {
                            if req.uri().path() == "/slow" {
                                arrived.add_permits(1);
                                release.acquire().await.expect("never closed").forget();
                            }
                            let mut response = http::Response::new(Full::new(Bytes::from(
                                format!("{name} {}", req.uri().path()),
                            )));
                            response
                                .headers_mut()
                                .insert("x-backend", http::HeaderValue::from_static(name));
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gate {
            addr,
            arrived,
            release,
            task,
        }
    }

    /// Wait until a request to `/slow` is held here.
    pub async fn held(&self) {
        let held = tokio::time::timeout(std::time::Duration::from_secs(5), self.arrived.acquire())
            .await
            .expect("the slow request reaches the backend within 5s");
        held.expect("never closed").forget();
    }

    /// Let one held request answer.
    pub fn open(&self) {
        self.release.add_permits(1);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pool section whose members are at these addresses, named m0, m1, ...
pub fn pool_at(name: &str, addrs: &[SocketAddr]) -> String {
    let members: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ name = \"m{i}\", address = \"{a}\" }}"))
        .collect();
    format!(
        "\n[pools.{name}]\nmethod = \"round_robin\"\nmembers = [{}]\n",
        members.join(", ")
    )
}

/// An answer read by [`send_raw_target`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Send one HTTP/1.1 request to `addr` with `target` on the request line
/// exactly as written. reqwest cannot do this: its URL parser folds
/// `%2e%2e` and `..` segments before anything is sent, so the evasions a
/// proxy must see through never leave the client. A `host` header is added
/// unless `headers` has one.
pub async fn send_raw_target(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to adc");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    if !request.headers().contains_key(http::header::HOST) {
        request.headers_mut().insert(
            http::header::HOST,
            addr.to_string().parse().expect("an address is a host"),
        );
    }
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    RawResponse {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Poll `check` every 50 ms until it holds; panics naming `what` after
/// `within`.
pub async fn eventually<F, Fut>(what: &str, within: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
