//! HTTP listeners: accept client connections (after a PROXY header from a
//! trusted source, and TLS when configured), run the connection hooks, and
//! serve HTTP/1.1 and HTTP/2 on them, handing every request to the pipeline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::net::Cidr;
use crate::policy::{Connection, Decision, ListenerKind, PolicyRef};
use crate::proxy::{self, ConnInfo};
use crate::runtime::{Shared, Tally};
use crate::workers::Drain;

/// How long a new connection may take to send its PROXY header, finish the
/// TLS handshake, or send its first byte.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener does with each connection before HTTP.
#[derive(Clone)]
pub struct Frontend {
    pub name: Arc<str>,
    /// A TLS listener's settings, as the last reload left them.
    pub tls: Option<Arc<crate::listeners::LiveTls>>,
    /// Sources that must start with a PROXY protocol header.
    pub proxy_from: Arc<[Cidr]>,
    pub alt_svc: Option<HeaderValue>,
}

/// What the connection hooks decided.
pub enum Admission {
    Accept,
    /// An L4 listener's connection goes to this pool.
    Route(String),
    Reject,
}

/// Run the `on-connect` hooks of a listener's policies.
pub fn admit(shared: &Shared, listener: &str, conn: &Connection) -> Admission {
    let chain: Vec<PolicyRef> = {
        let rt = shared.runtime.load();
        let Some(l) = rt.listener(listener) else {
            return Admission::Reject;
        };
        let policies = shared.policies.load();
        l.policies
            .iter()
            .filter_map(|n| policies.get(n).cloned())
            .collect()
    };
    let mut outcome = Admission::Accept;
    for policy in chain
        .iter()
        .filter(|p| p.implements(crate::policy::Hook::Connect))
    {
        match policy.on_connect(conn) {
            Ok(Decision::Continue) => {}
            Ok(Decision::Reject) => return Admission::Reject,
            Ok(Decision::Route(r)) if conn.kind != ListenerKind::Http => {
                outcome = Admission::Route(r.pool)
            }
            Ok(_) => {
                metrics::counter!("adc_policy_misplaced_decisions_total", "policy" => policy.name().to_owned(), "hook" => "connect")
                    .increment(1);
            }
            Err(_) if policy.fail_open() => {}
            Err(_) => return Admission::Reject,
        }
    }
    outcome
}

pub fn connection_record(
    listener: &str,
    kind: ListenerKind,
    peer: SocketAddr,
    local: SocketAddr,
    sni: Option<String>,
    alpn: Option<String>,
    client_certificate: Option<String>,
) -> Connection {
    Connection {
        listener: listener.to_owned(),
        kind,
        client_ip: peer.ip().to_string(),
        client_port: peer.port(),
        local_ip: local.ip().to_string(),
        local_port: local.port(),
        sni,
        alpn,
        client_certificate,
    }
}

/// Read a PROXY header when the peer is a trusted source; the addresses to
/// treat as the client's and the one it connected to (the connection's
/// own without a header, or with a LOCAL one). `None`: drop the
/// connection.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    trusted: &[Cidr],
) -> Option<(SocketAddr, SocketAddr)> {
    if !trusted.iter().any(|c| c.contains(peer.ip())) {
        return Some((peer, local));
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::proxy_protocol::read(stream)).await {
        Ok(Ok(carried)) => Some(carried.map_or((peer, local), |c| (c.client, c.destination))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "PROXY protocol header refused");
            None
        }
        Err(_) => None,
    }
}

/// How client connections speak HTTP: each is served by the HTTP/1.1 or
/// the HTTP/2 side, chosen before hyper sees a byte (ALPN over TLS, the
/// connection preface in cleartext). hyper_util's automatic choice read
/// the first bytes itself and handed them back to HTTP/1.1 separately,
/// which made every connection's read buffer grow from 8 to 16 KiB.
struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

fn http_builder(shared: &Shared) -> Http {
    let (max_header_bytes, idle_timeout) = {
        let rt = shared.runtime.load();
        (rt.limits.max_header_bytes, rt.limits.idle_timeout)
    };
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .max_buf_size(max_header_bytes.max(8192))
        .header_read_timeout(Some(idle_timeout))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // Twice the limit: the h2 crate answers 431 itself to a header
        // list over this, with no hook to count it, so the limit proper is
        // checked (and refusals counted) by the pipeline. Only what is over
        // twice the limit is refused uncounted, by h2.
        .max_header_list_size(u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
        // Stream abuse: a bounded number of concurrent streams, and a cap on
        // streams reset by the client before hyper stops the connection.
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    Http { h1, h2 }
}

/// The first bytes of an HTTP/2 connection (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext client opens with the HTTP/2 preface (prior
/// knowledge), looked at without taking it from the socket. Waits for the
/// client's first bytes.
async fn opens_with_h2_preface(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far (rare): the socket stays readable
        // while those bytes wait, so give the rest a moment to come.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serve one listener until `shutdown` turns true; then stop accepting.
/// Open connections are drained by their workers (see
/// [`crate::workers::Workers::drain`]).
pub async fn serve_http(
    shared: Arc<Shared>,
    frontend: Frontend,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    let builder = Arc::new(http_builder(&shared));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %frontend.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        // On a wildcard address, the address this client actually reached.
        let local = stream.local_addr().unwrap_or(local);
        let (worker_shared, frontend, builder) =
            (shared.clone(), frontend.clone(), builder.clone());
        shared.workers.serve(stream, move |stream, drain| {
            connection(worker_shared, frontend, builder, stream, peer, local, drain)
        });
    }
}

/// `phase` of a connection before its first request, unless the drain
/// begins first (`None`): there is nothing to finish yet, so the
/// connection just closes. The phase is boxed: a connection's task is as
/// large as its largest state, and these (a TLS handshake above all) are
/// done with once the connection sits idle between requests.
pub async fn unless_draining<F: std::future::IntoFuture>(
    drain: &mut Drain,
    phase: F,
) -> Option<F::Output> {
    let phase = Box::pin(phase.into_future());
    tokio::select! {
        out = phase => Some(out),
        () = drain.begun() => None,
    }
}

async fn connection(
    shared: Arc<Shared>,
    frontend: Frontend,
    builder: Arc<Http>,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mut drain: Drain,
) {
    let _open = Tally::enter(&shared.connections);
    let Some(Some((client, local))) = unless_draining(
        &mut drain,
        client_address(&mut stream, peer, local, &frontend.proxy_from),
    )
    .await
    else {
        return;
    };
    let listener = frontend.name.to_string();
    let gauge = metrics::gauge!("adc_client_connections", "listener" => listener.clone());
    gauge.increment(1.0);
    let mut conn = ConnInfo {
        listener: frontend.name.clone(),
        peer: client,
        local,
        tls: frontend.tls.is_some(),
        client_certificate: None,
        alt_svc: frontend.alt_svc.clone(),
        traffic: proxy::Traffic::for_listener(&listener),
        streams: None,
        forwarding: std::sync::OnceLock::new(),
    };

    match &frontend.tls {
        Some(live) => {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, live.acceptor().accept(stream));
            let tls = match unless_draining(&mut drain, handshake).await {
                Some(Ok(Ok(tls))) => tls,
                Some(Ok(Err(e))) => {
                    metrics::counter!("adc_tls_handshake_failures_total", "listener" => listener)
                        .increment(1);
                    tracing::debug!(%client, error = %e, "TLS handshake failed");
                    gauge.decrement(1.0);
                    return;
                }
                None | Some(Err(_)) => {
                    gauge.decrement(1.0);
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            conn.client_certificate = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(crate::tls::identity_of)
                .map(Arc::new);
            let record = connection_record(
                &listener,
                ListenerKind::Http,
                client,
                local,
                session.server_name().map(str::to_owned),
                session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                conn.client_certificate.as_ref().map(|c| c.subject.clone()),
            );
            let h2 = session.alpn_protocol() == Some(b"h2");
            if !matches!(admit(&shared, &listener, &record), Admission::Reject) {
                serve_stream(&shared, &builder, tls, h2, conn, drain).await;
            }
        }
        None => {
            // A connection that sends nothing is closed, not held forever.
            let first_bytes =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, opens_with_h2_preface(&stream));
            let Some(Ok(Ok(h2))) = unless_draining(&mut drain, first_bytes).await else {
                gauge.decrement(1.0);
                return;
            };
            let record = connection_record(
                &listener,
                ListenerKind::Http,
                client,
                local,
                None,
                None,
                None,
            );
            if !matches!(admit(&shared, &listener, &record), Admission::Reject) {
                serve_stream(&shared, &builder, stream, h2, conn, drain).await;
            }
        }
    }
    gauge.decrement(1.0);
}

/// The future that serves HTTP on a connection until it closes, boxed
/// with the HTTP/1.1 or HTTP/2 state it drives. It is built here, outside
/// any `async fn`, so that the stream moves straight into it: an async
/// function keeps its arguments for its whole life, and the task of every
/// connection, plain or not, held room for a TLS stream and the larger
/// kind of connection state (6.8 KB).
fn serve_stream<S>(
    shared: &Arc<Shared>,
    builder: &Http,
    stream: S,
    h2: bool,
    conn: ConnInfo,
    drain: Drain,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = shared.clone();
    let listener = conn.listener.clone();
    let mut conn = conn;
    let streams = h2.then(|| Arc::new(Streams::default()));
    conn.streams.clone_from(&streams);
    // One allocation for the connection, shared by its requests.
    let conn = Arc::new(conn);
    let service = service_fn(move |req| -> proxy::HandleFuture {
        Box::pin(proxy::handle(
            shared.clone(),
            conn.clone(),
            proxy::from_hyper(req),
        ))
    });
    let io = TokioIo::new(stream);
    // On a drain, HTTP/1.1 stops keeping the connection alive (an idle one
    // closes at once, a busy one after its response) and HTTP/2 sends
    // GOAWAY and closes once its streams are done.
    if let Some(streams) = streams {
        let served = builder.h2.serve_connection(io, service);
        Box::pin(until_drained(served, drain, listener, Some(streams), |c| {
            c.graceful_shutdown()
        }))
    } else {
        let served = builder.h1.serve_connection(io, service).with_upgrades();
        Box::pin(until_drained(served, drain, listener, None, |c| {
            c.graceful_shutdown()
        }))
    }
}

/// How long a drained HTTP/2 connection may sit without a stream before it
/// is closed: after GOAWAY, hyper waits for the client to answer a PING,
/// and a client that never does would hold adc for the whole drain
/// timeout. A request already on its way when GOAWAY went out arrives
/// well within this.
const IDLE_AFTER_GOAWAY: Duration = Duration::from_secs(1);

/// The requests open on one HTTP/2 connection, from arrival to the end of
/// the response body.
#[derive(Debug, Default)]
pub struct Streams {
    open: AtomicUsize,
    /// Every request ever opened: tells a quiet spell from a busy one.
    started: AtomicUsize,
}

/// One request open on an HTTP/2 connection, counted until dropped.
pub struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Streams {
    pub fn open(this: &Arc<Streams>) -> OpenStream {
        this.started.fetch_add(1, Ordering::Relaxed);
        this.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(this.clone())
    }

    /// Resolves once no stream has been open for `quiet`.
    async fn idle_for(&self, quiet: Duration) {
        loop {
            let seen = self.started.load(Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(quiet).await;
                if self.open.load(Ordering::Relaxed) == 0
                    && self.started.load(Ordering::Relaxed) == seen
                {
                    return;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Drive a connection; once the drain begins, ask it to finish
/// (`graceful`) and drive it to the end. An HTTP/2 connection (`streams`)
/// is closed once it has had no stream for [`IDLE_AFTER_GOAWAY`], whether
/// or not the client acknowledged the GOAWAY.
async fn until_drained<C>(
    served: C,
    mut drain: Drain,
    listener: Arc<str>,
    streams: Option<Arc<Streams>>,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = hyper::Result<()>>,
{
    tokio::pin!(served);
    let outcome = tokio::select! {
        outcome = served.as_mut() => outcome,
        () = drain.begun() => {
            graceful(served.as_mut());
            match streams {
                Some(streams) => tokio::select! {
                    outcome = served.as_mut() => outcome,
                    () = streams.idle_for(IDLE_AFTER_GOAWAY) => {
                        tracing::debug!(%listener, "closing an idle HTTP/2 connection whose client did not finish after GOAWAY");
                        Ok(())
                    }
                },
                None => served.await,
            }
        }
    };
    if let Err(e) = outcome {
        if let Some(status) = refusal_status(&e) {
            proxy::requests::count(&listener, "", "", "", status);
        }
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// The status hyper answered a request it refused with, before the pipeline
/// saw it: a request head it could not parse (400), or one over the limit
/// (431, or 414 for the target alone; both are 4xx, the class counted).
/// `None` for the errors hyper answers nothing to.
fn refusal_status(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
        return None;
    }
    Some(if e.is_parse_too_large() { 431 } else { 400 })
}

/// Bind a listening socket with address reuse.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
