//! Connections to backend members, pooled per member and TLS name on each
//! worker thread (no lock shared between workers), so many client
//! connections ride few backend connections: HTTP/1.1 keep-alive
//! connections one request at a time, HTTP/2 connections multiplexed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;

pub use crate::proxy::Body;

/// Why reaching a backend failed; says whether a retry elsewhere may help.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS with {0} failed: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

/// A way to send requests on a backend connection.
pub enum Sender {
    Http1(http1::SendRequest<Body>),
    /// Multiplexed: clones share one connection.
    Http2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_ready(),
            Sender::Http2(s) => s.is_ready(),
        }
    }

    /// Send a request; on a connection that turned out closed, the request
    /// comes back unsent.
    pub async fn try_send(
        &mut self,
        request: http::Request<Body>,
    ) -> Result<
        http::Response<hyper::body::Incoming>,
        hyper::client::conn::TrySendError<http::Request<Body>>,
    > {
        match self {
            Sender::Http1(s) => s.try_send_request(request).await,
            Sender::Http2(s) => s.try_send_request(request).await,
        }
    }
}

/// Pool key: the member, and the TLS server name used with it, so that a
/// request for one name never rides another name's connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub address: SocketAddr,
    pub sni: Option<String>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Key, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// A connection checked out of the pool.
pub struct Conn {
    pub sender: Sender,
    pub key: Key,
    /// Taken from the pool (it may have been closed by the backend since).
    pub reused: bool,
}

/// How to connect: timeouts and the pool's way to its members.
pub struct Connect<'a> {
    pub upstream: &'a crate::pool::Upstream,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Open a new connection even when one is idle.
    pub fresh: bool,
}

/// Take an idle connection for `key`, or open one.
pub async fn checkout(key: Key, how: &Connect<'_>) -> Result<Conn, UpstreamError> {
    let idle = IDLE.with(|pool| {
        if how.fresh {
            return None;
        }
        let mut pool = pool.borrow_mut();
        let list = pool.get_mut(&key)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < how.idle_timeout && idle.sender.is_ready() {
                // An HTTP/2 connection stays in the pool for other requests.
                if let Sender::Http2(s) = &idle.sender {
                    let shared = s.clone();
                    list.push(idle);
                    return Some(Sender::Http2(shared));
                }
                return Some(idle.sender);
            }
        }
        None
    });
    if let Some(sender) = idle {
        return Ok(Conn {
            sender,
            key,
            reused: true,
        });
    }

    let address = key.address;
    let stream = tokio::time::timeout(
        how.connect_timeout,
        crate::net::connect(address, how.upstream.source),
    )
    .await
    .map_err(|_| UpstreamError::ConnectTimeout(address))?
    .map_err(|e| UpstreamError::Connect(address, e))?;
    let sender = match &how.upstream.tls {
        Some(tls) => {
            let (tls, h2) = tokio::time::timeout(
                how.connect_timeout,
                tls_connect(tls, key.sni.as_deref(), stream, address),
            )
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(address))?
            .map_err(|e| UpstreamError::Tls(address, e))?;
            handshake(TokioIo::new(tls), address, h2).await?
        }
        None => handshake(TokioIo::new(stream), address, how.upstream.http2).await?,
    };
    metrics::counter!("adc_upstream_connections_opened_total").increment(1);
    if let Sender::Http2(s) = &sender {
        let shared = Sender::Http2(s.clone());
        IDLE.with(|pool| {
            pool.borrow_mut()
                .entry(key.clone())
                .or_default()
                .push(Idle {
                    sender: shared,
                    since: Instant::now(),
                })
        });
    }
    Ok(Conn {
        sender,
        key,
        reused: false,
    })
}

/// TLS to a member over `stream`, with a pool's TLS settings (its client
/// config and configured server name): the server name sent is the
/// configured one, else `name` (a request's host, a health check's), else
/// the member's IP address. Also whether the member agreed to HTTP/2 by
/// ALPN: adc speaks what it agreed to, never more.
pub async fn tls_connect(
    (config, configured): &(std::sync::Arc<rustls::ClientConfig>, Option<String>),
    name: Option<&str>,
    stream: tokio::net::TcpStream,
    address: SocketAddr,
) -> std::io::Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, bool)> {
    let name = configured
        .as_deref()
        .or(name)
        .map_or_else(|| address.ip().to_string(), str::to_owned);
    let server_name =
        rustls::pki_types::ServerName::try_from(name).map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(server_name, stream)
        .await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok((tls, h2))
}

async fn handshake<T>(
    io: TokioIo<T>,
    address: SocketAddr,
    h2: bool,
) -> Result<Sender, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let open = metrics::gauge!("adc_upstream_connections_open", "address" => address.to_string());
    open.increment(1.0);
    if h2 {
        let (sender, connection) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake(address, e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%address, error = %e, "backend connection ended");
            }
            open.decrement(1.0);
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Handshake(address, e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%address, error = %e, "backend connection ended");
            }
            open.decrement(1.0);
        });
        Ok(Sender::Http1(sender))
    }
}

/// Whether a request failed because its connection ended before any answer
/// came: closed or reset by the backend. On a kept-alive connection that is
/// the backend closing it while idle, as the request crossed the close.
pub fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

/// Give an HTTP/1.1 connection back for reuse, up to `max_idle` per key.
pub fn checkin(conn: Conn, max_idle: usize) {
    let Sender::Http1(sender) = conn.sender else {
        return;
    };
    if !sender.is_ready() {
        return;
    }
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.entry(conn.key).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                sender: Sender::Http1(sender),
                since: Instant::now(),
            });
        }
    });
}

/// A backend's response body that returns its connection to the pool once
/// the body has been read to the end. A body dropped early closes it.
pub struct ReturnOnEnd {
    body: hyper::body::Incoming,
    conn: Option<Conn>,
    max_idle: usize,
}

impl ReturnOnEnd {
    pub fn new(body: hyper::body::Incoming, conn: Conn, max_idle: usize) -> Self {
        let mut this = ReturnOnEnd {
            body,
            conn: Some(conn),
            max_idle,
        };
        if http_body::Body::is_end_stream(&this.body) {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            match &conn.sender {
                Sender::Http2(_) => {}
                Sender::Http1(s) if s.is_ready() => checkin(conn, self.max_idle),
                Sender::Http1(_) => {
                    // The connection task has not yet seen the end of the
                    // message; wait for it off the request path.
                    let max_idle = self.max_idle;
                    let mut conn = conn;
                    tokio::spawn(async move {
                        if let Sender::Http1(s) = &mut conn.sender {
                            if s.ready().await.is_ok() {
                                checkin(conn, max_idle);
                            }
                        }
                    });
                }
            }
        }
    }
}

impl http_body::Body for ReturnOnEnd {
    type Data = bytes::Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None) => this.release(),
            std::task::Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            std::task::Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(|e| crate::proxy::BoxError(Box::new(e)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
