//! HTTP/3 over QUIC (quinn and h3) on the UDP side of a TLS listener's port,
//! into the same pipeline and policies as HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::ProxyError;
use crate::policy::ListenerKind;
use crate::proxy::{self, BoxError, ConnInfo};
use crate::runtime::Shared;
use crate::runtime::Tally;
use crate::server::{admit, connection_record, unless_draining, Admission};
use crate::workers::Drain;

/// Receive and send buffer sizes asked for on the QUIC socket. With the
/// system default (`net.core.rmem_default`, 208 KiB on Debian) a burst of
/// 64 new connections overflowed the receive buffer while the worker was
/// busy with handshakes: the lost Initial packets cost their clients a
/// retransmission timeout of about one second each. The kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// The QUIC settings of an HTTP/3 endpoint whose handshakes use `tls`;
/// a connection that carries nothing for `idle` is closed, as kept-alive
/// TCP connections are (`limits.idle_timeout`).
pub fn server_config(
    tls: Arc<rustls::ServerConfig>,
    idle: Duration,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Past QUIC's bound (2^62 ms) an idle connection is simply never
    // closed for it.
    transport
        .max_concurrent_bidi_streams(256u32.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("HTTP/3 needs a tokio runtime"))?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        quic_socket(addr)?,
        runtime,
    )?)
}

/// A UDP socket bound to `addr` with the larger buffers (best effort: a
/// refused size keeps the system's).
fn quic_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Serve HTTP/3 until `shutdown` turns true; then refuse new connections,
/// let each open one finish its requests after a GOAWAY, and close.
pub async fn serve(
    shared: Arc<Shared>,
    name: Arc<str>,
    endpoint: quinn::Endpoint,
    shutdown: watch::Receiver<bool>,
) {
    let local = endpoint
        .local_addr()
        .expect("a bound endpoint has an address");
    let mut drain = Drain::new(shutdown.clone());
    let mut draining = false;
    // Aborted with this task, should the drain time out.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept(), if !draining => match incoming {
                Some(incoming) => {
                    connections.spawn(connection(
                        shared.clone(),
                        name.clone(),
                        incoming,
                        local,
                        Drain::new(shutdown.clone()),
                    ));
                }
                None => break,
            },
            Some(_) = connections.join_next() => {}
            () = drain.begun(), if !draining => {
                draining = true;
                endpoint.set_server_config(None);
            }
        }
        if draining && connections.is_empty() {
            break;
        }
    }
    endpoint.close(0u32.into(), b"shutting down");
}

async fn connection(
    shared: Arc<Shared>,
    name: Arc<str>,
    incoming: quinn::Incoming,
    local: SocketAddr,
    mut drain: Drain,
) {
    let _open = Tally::enter(&shared.connections);
    let conn = match unless_draining(&mut drain, incoming).await {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return;
        }
        None => return,
    };
    let peer = conn.remote_address();
    let sni = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name);
    let client_certificate = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(crate::tls::identity_of))
        .map(Arc::new);
    let record = connection_record(
        &name,
        ListenerKind::Http,
        peer,
        local,
        sni,
        Some("h3".into()),
        client_certificate.as_ref().map(|c| c.subject.clone()),
    );
    if matches!(admit(&shared, &name, &record), Admission::Reject) {
        conn.close(0u32.into(), b"rejected");
        return;
    }
    let info = Arc::new(ConnInfo {
        listener: name.clone(),
        peer,
        local,
        tls: true,
        client_certificate,
        alt_svc: None,
        traffic: crate::proxy::Traffic::for_listener(&name),
        streams: None,
        forwarding: std::sync::OnceLock::new(),
    });
    let quic = conn.clone();
    let mut h3 = match h3::server::Connection::new(h3_quinn::Connection::new(conn)).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let mut requests = JoinSet::new();
    let mut closing = false;
    loop {
        tokio::select! {
            // Not once closing: on a client's GOAWAY, h3's accept sends one
            // more GOAWAY that names the last accepted stream as refused,
            // and the client drops the request adc is still answering.
            accepted = h3.accept(), if !closing => match accepted {
                Ok(Some(resolver)) => {
                    let (shared, info) = (shared.clone(), info.clone());
                    requests.spawn(async move {
                        if let Err(e) = request(shared, info, resolver).await {
                            tracing::debug!(error = %e, "HTTP/3 request ended with an error");
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/3 connection ended");
                    break;
                }
            },
            Some(_) = requests.join_next() => {}
            // GOAWAY: the requests accepted so far are answered, later
            // ones refused; the connection closes when they are done. The
            // frame names the first stream not served (RFC 9114 section
            // 5.2), one past the last accepted: `shutdown(1)`.
            () = drain.begun(), if !closing => {
                closing = true;
                if let Err(e) = h3.shutdown(1).await {
                    tracing::debug!(error = %e, "HTTP/3 GOAWAY not sent");
                    break;
                }
            }
        }
        if closing && requests.is_empty() {
            break;
        }
    }
    while requests.join_next().await.is_some() {}
    if closing {
        // The answers are sent, not yet acknowledged, and a QUIC close
        // drops what is still unacknowledged: give the client a few round
        // trips to read them (or to close first).
        let grace = quic.rtt() * 4 + Duration::from_millis(100);
        let _ = tokio::time::timeout(grace, quic.closed()).await;
    }
    // Dropping the connection closes it with H3_NO_ERROR.
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

async fn request(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    resolver: Resolver,
) -> Result<(), BoxError> {
    let boxed = |e: h3::error::StreamError| BoxError(Box::new(e));
    let (head, stream) = resolver.resolve_request().await.map_err(boxed)?;
    let (mut send, mut recv) = stream.split();
    let (mut parts, ()) = head.into_parts();

    // A content-length that is no length is malformed (RFC 9114 section
    // 4.1.2): refused here, as hyper refuses it over HTTP/1.1, and never
    // forwarded.
    let Ok(declared) = declared_length(&parts.headers) else {
        recv.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
        let refused = ProxyError::BadRequest("invalid content-length".into());
        return refuse(&mut send, &info, refused).await.map_err(boxed);
    };
    // Nor does it read the body of a zero length: whether there is none is
    // known before the request goes on.
    let mut data_done = false;
    if declared == Some(0) {
        let wait = shared.runtime.load().limits.header_timeout;
        match tokio::time::timeout(wait, first_data(&mut recv)).await {
            Ok(Ok(None)) => data_done = true,
            Ok(Ok(Some(()))) => {
                recv.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
                let refused = ProxyError::BadRequest("a body after content-length: 0".into());
                return refuse(&mut send, &info, refused).await.map_err(boxed);
            }
            Ok(Err(e)) => return Err(boxed(e)),
            Err(_) => {
                recv.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
                let refused = ProxyError::RequestBodyTimeout(format!(
                    "the request stream did not end within {wait:?}"
                ));
                return refuse(&mut send, &info, refused).await.map_err(boxed);
            }
        }
    }
    if let Some(n) = declared {
        // One value, however many times the client repeated it.
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }

    // The request body streams from QUIC into the pipeline, checked against
    // its declared length: a body longer or shorter is malformed, and ends
    // the body with an error, which is the client's (see `proxy::upload`).
    // Left to the backend's HTTP/1.1 client, a short body failed the
    // request as the member's fault, and a long one was cut to the length
    // and served. (h3 0.0.8 says a body ends at an empty DATA frame, which
    // is legal: a body with a length and such a frame inside is refused as
    // short; one without a length is forwarded cut there.)
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
    tokio::spawn(async move {
        let mut received: u64 = 0;
        // The chunk that completes the declared length waits for the end
        // of the body: the backend's client stops reading once it has the
        // length, and a byte more would go unseen.
        let mut last: Option<Bytes> = None;
        while !data_done {
            match recv.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    if bytes.is_empty() {
                        continue;
                    }
                    received = received.saturating_add(bytes.len() as u64);
                    let Some(n) = declared else {
                        if tx.send_data(bytes).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    if received > n {
                        tracing::debug!(declared = n, "HTTP/3 request body longer than declared");
                        recv.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
                        tx.abort(Malformed::longer(n));
                        return;
                    }
                    if received == n {
                        last = Some(bytes);
                    } else if tx.send_data(bytes).await.is_err() {
                        return;
                    }
                }
                Ok(None) => data_done = true,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/3 request body failed");
                    tx.abort(BoxError(Box::new(e)));
                    return;
                }
            }
        }
        if let Some(n) = declared.filter(|&n| received < n) {
            tracing::debug!(
                declared = n,
                received,
                "HTTP/3 request body shorter than declared"
            );
            tx.abort(Malformed::shorter(n, received));
            return;
        }
        if let Some(bytes) = last {
            if tx.send_data(bytes).await.is_err() {
                return;
            }
        }
        if let Ok(Some(trailers)) = recv.recv_trailers().await {
            let _ = tx.send_trailers(trailers).await;
        }
    });
    let req = Request::from_parts(parts, body.boxed_unsync());

    let Ok(response) = proxy::handle(shared, info, req).await else {
        send.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
        return Ok(());
    };
    let (parts, mut body) = response.into_parts();
    send.send_response(http::Response::from_parts(parts, ()))
        .await
        .map_err(boxed)?;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => send.send_data(data).await.map_err(boxed)?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await.map_err(boxed)?;
                }
            }
        }
    }
    send.finish().await.map_err(boxed)?;
    Ok(())
}

/// The body length a request's `content-length` fields declare: `None`
/// without one; `Err` when one is not a length, or two differ.
fn declared_length(headers: &http::HeaderMap) -> Result<Option<u64>, ()> {
    let mut declared = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let digits = item.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or(())?;
            if declared.is_some_and(|d| d != n) {
                return Err(());
            }
            declared = Some(n);
        }
    }
    Ok(declared)
}

/// Whether the request stream carries a body: `Some` at its first byte,
/// `None` at its end.
async fn first_data(
    recv: &mut h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
) -> Result<Option<()>, h3::error::StreamError> {
    while let Some(chunk) = recv.recv_data().await? {
        if chunk.has_remaining() {
            return Ok(Some(()));
        }
    }
    Ok(None)
}

/// Answer a request the pipeline is not to see, as hyper answers the
/// HTTP/1.1 requests it cannot parse, and count the answer (with no route
/// nor pool, as `server` counts hyper's).
async fn refuse(
    send: &mut h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    info: &ConnInfo,
    refused: ProxyError,
) -> Result<(), h3::error::StreamError> {
    tracing::debug!(error = %refused, "HTTP/3 request refused");
    let response = refused.into_response();
    proxy::requests::count(&info.listener, "", "", "", response.status().as_u16());
    let (parts, mut body) = response.into_parts();
    send.send_response(http::Response::from_parts(parts, ()))
        .await?;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            send.send_data(data).await?;
        }
    }
    send.finish().await
}

/// A request body that does not match its declared length.
#[derive(Debug, thiserror::Error)]
#[error("malformed request: {0}")]
struct Malformed(String);

impl Malformed {
    fn longer(declared: u64) -> BoxError {
        BoxError(Box::new(Malformed(format!(
            "body longer than its content-length of {declared}"
        ))))
    }

    fn shorter(declared: u64, received: u64) -> BoxError {
        BoxError(Box::new(Malformed(format!(
            "body of {received} bytes ended before its content-length of {declared}"
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quic_socket_asks_for_a_larger_receive_buffer_than_the_system_default() {
        let socket = quic_socket(SocketAddr::from(([127, 0, 0, 1], 0))).expect("binds");
        let got = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .expect("readable");
        // Linux doubles the size asked for and caps it at rmem_max.
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
        };
        if let (Some(default), Some(max)) = (
            read("/proc/sys/net/core/rmem_default"),
            read("/proc/sys/net/core/rmem_max"),
        ) {
            let want = (2 * SOCKET_BUFFER_BYTES).min(2 * max).max(default);
            assert!(
                got >= want,
                "receive buffer {got} bytes, expected at least {want}"
            );
        }
    }
}
