//! HTTP listeners: accept client connections (after a PROXY header from a
//! trusted source, and TLS when configured), run the connection hooks, and
//! serve HTTP/1.1 and HTTP/2 on them, handing every request to the pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

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
    pub tls: Option<TlsAcceptor>,
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

/// Read a PROXY header when the peer is a trusted source; the address to
/// treat as the client. `None`: drop the connection.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[Cidr],
) -> Option<SocketAddr> {
    if !trusted.iter().any(|c| c.contains(peer.ip())) {
        return Some(peer);
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::proxy_protocol::read(stream)).await {
        Ok(Ok(carried)) => Some(carried.unwrap_or(peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "PROXY protocol header refused");
            None
        }
        Err(_) => None,
    }
}

fn http_builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let (max_header_bytes, idle_timeout) = {
        let rt = shared.runtime.load();
        (rt.limits.max_header_bytes, rt.limits.idle_timeout)
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_buf_size(max_header_bytes.max(8192))
        .header_read_timeout(Some(idle_timeout))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        // Stream abuse: a bounded number of concurrent streams, and a cap on
        // streams reset by the client before hyper stops the connection.
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
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
/// connection just closes.
pub async fn unless_draining<F: std::future::IntoFuture>(
    drain: &mut Drain,
    phase: F,
) -> Option<F::Output> {
    tokio::select! {
        out = phase => Some(out),
        () = drain.begun() => None,
    }
}

async fn connection(
    shared: Arc<Shared>,
    frontend: Frontend,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mut drain: Drain,
) {
    let _open = Tally::enter(&shared.connections);
    let Some(Some(client)) = unless_draining(
        &mut drain,
        client_address(&mut stream, peer, &frontend.proxy_from),
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
    };

    match &frontend.tls {
        Some(acceptor) => {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
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
            if !matches!(admit(&shared, &listener, &record), Admission::Reject) {
                serve_stream(&shared, &builder, tls, conn, drain).await;
            }
        }
        None => {
            // A connection that sends nothing is closed, not held forever.
            let first_byte = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.readable());
            if !matches!(
                unless_draining(&mut drain, first_byte).await,
                Some(Ok(Ok(())))
            ) {
                gauge.decrement(1.0);
                return;
            }
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
                serve_stream(&shared, &builder, stream, conn, drain).await;
            }
        }
    }
    gauge.decrement(1.0);
}

async fn serve_stream<S>(
    shared: &Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    conn: ConnInfo,
    mut drain: Drain,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = shared.clone();
    let listener = conn.listener.clone();
    let service = service_fn(move |req| -> proxy::HandleFuture {
        Box::pin(proxy::handle(
            shared.clone(),
            conn.clone(),
            proxy::from_hyper(req),
        ))
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(served);
    // On a drain, HTTP/1.1 stops keeping the connection alive (an idle one
    // closes at once, a busy one after its response) and HTTP/2 sends
    // GOAWAY and closes once its streams are done.
    let outcome = tokio::select! {
        outcome = served.as_mut() => outcome,
        () = drain.begun() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = outcome {
        if let Some(status) = e.downcast_ref::<hyper::Error>().and_then(refusal_status) {
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
