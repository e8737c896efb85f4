//! Connections to backend members: HTTP/1.1 keep-alive connections pooled per
//! member on each worker thread (no lock shared between workers), so many
//! client connections ride few backend connections.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub use crate::proxy::Body;

/// Why reaching a backend failed; says whether a retry elsewhere may help.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// A connection checked out of the pool.
pub struct Conn {
    pub sender: SendRequest<Body>,
    pub address: SocketAddr,
    /// Taken from the pool (it may have been closed by the backend since).
    pub reused: bool,
}

/// Take an idle connection to `address`, or open one.
pub async fn checkout(
    address: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Result<Conn, UpstreamError> {
    let idle = IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.get_mut(&address)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < idle_timeout && idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
        None
    });
    if let Some(sender) = idle {
        return Ok(Conn {
            sender,
            address,
            reused: true,
        });
    }

    let stream = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(address))?
        .map_err(|e| UpstreamError::Connect(address, e))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Handshake(address, e))?;
    metrics::counter!("adc_upstream_connections_opened_total").increment(1);
    let open = metrics::gauge!("adc_upstream_connections_open", "address" => address.to_string());
    open.increment(1.0);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%address, error = %e, "backend connection ended");
        }
        open.decrement(1.0);
    });
    Ok(Conn {
        sender,
        address,
        reused: false,
    })
}

/// Give a connection back for reuse, up to `max_idle` per member.
pub fn checkin(conn: Conn, max_idle: usize) {
    if !conn.sender.is_ready() {
        return;
    }
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.entry(conn.address).or_default();
        if list.len() < max_idle {
            list.push(Idle {
                sender: conn.sender,
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
            if conn.sender.is_ready() {
                checkin(conn, self.max_idle);
            } else {
                // The connection task has not yet seen the end of the
                // message; wait for it off the request path.
                let max_idle = self.max_idle;
                let mut conn = conn;
                tokio::spawn(async move {
                    if conn.sender.ready().await.is_ok() {
                        checkin(conn, max_idle);
                    }
                });
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
