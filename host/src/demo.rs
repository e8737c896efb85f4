//! Demo backends for the quickstart: small HTTP servers that answer with
//! their own name, so round robin and routing are visible with curl.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Start a demo backend on `addr`, named `name`. It answers every path with
/// a line naming itself, the method and the path; `/health` answers "ok".
/// Returns the bound address and the task serving it, which ends the
/// backend (its connections too) when aborted.
pub async fn start(
    name: String,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = crate::server::bind(addr)?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Closed connections are let go of as new ones come.
            while connections.try_join_next().is_some() {}
            let name = name.clone();
            connections.spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let name = name.clone();
                    async move {
                        let body = if req.uri().path() == "/health" {
                            "ok\n".to_owned()
                        } else {
                            format!("{name}: {} {}\n", req.method(), req.uri())
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        response
                            .headers_mut()
                            .insert("x-backend", name.parse().expect("demo names are ASCII"));
                        response
                            .headers_mut()
                            .insert("content-type", "text/plain".parse().expect("static"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, task))
}
