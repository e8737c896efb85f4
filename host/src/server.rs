//! Listeners: accept client connections and serve HTTP/1.1 and HTTP/2
//! (prior knowledge) on them, handing every request to the pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::{self, ConnInfo};
use crate::runtime::Shared;

/// Serve one listener until `shutdown` turns true; then stop accepting and
/// let open connections finish their requests.
pub async fn serve_http(
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
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
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            listener: name.clone(),
            peer,
            local,
            tls: false,
        };
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            metrics::gauge!("adc_client_connections", "listener" => conn.listener.to_string())
                .increment(1.0);
            let listener_name = conn.listener.clone();
            let service = service_fn(move |req| -> proxy::HandleFuture {
                Box::pin(proxy::handle(shared.clone(), conn.clone(), req))
            });
            // On shutdown the accept loop stops; open connections finish
            // their requests while the runtime drains in-flight work.
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            metrics::gauge!("adc_client_connections", "listener" => listener_name.to_string())
                .decrement(1.0);
        });
    }
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
