//! Shutdown through a real adc and real clients: requests in flight are
//! answered, kept-alive connections are closed cleanly (HTTP/1.1 after a
//! `Connection: close` answer or at once when idle, HTTP/2 after GOAWAY,
//! and without waiting for a client that does not answer it),
//! and adc stops as soon as no connection is left rather than at the drain
//! timeout.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use adc_tests::{eventually, listener, pool_at, Adc, Gate};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// Far longer than any of these tests may take: a shutdown that ends
/// within [`SOON`] did not wait it out.
const DRAIN_TIMEOUT: &str = "120s";
const SOON: Duration = Duration::from_secs(30);

/// An adc in front of the gate, with the long drain timeout.
async fn adc_before(gate: &Gate) -> Adc {
    let config = format!("[limits]\ndrain_timeout = \"{DRAIN_TIMEOUT}\"\n")
        + &listener("web", &[])
        + &pool_at("web", &[gate.addr]);
    Adc::start(&config).await
}

fn get(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .unwrap()
}

/// An HTTP/1.1 connection, and the task driving it: the task's result is
/// how the connection ended (`Ok` for a clean close).
async fn h1_client(
    addr: SocketAddr,
) -> (
    http1::SendRequest<Empty<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(conn))
}

/// An HTTP/2 (h2c) connection, and the task driving it.
async fn h2_client(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

/// Wait for a client connection to end; `Ok` when it was closed cleanly.
async fn ended(what: &str, conn: JoinHandle<hyper::Result<()>>) -> hyper::Result<()> {
    tokio::time::timeout(SOON, conn)
        .await
        .unwrap_or_else(|_| panic!("{what} is still open"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_idle_connections_close_at_once_and_a_request_in_flight_is_answered_with_connection_close(
) {
    let gate = Gate::start("gated").await;
    let adc = adc_before(&gate).await;
    let addr = adc.running.listeners["web"];
    let shared = adc.running.shared.clone();

    // One HTTP/1.1 client waits for its answer; others sit idle: two
    // kept alive after an answer (HTTP/1.1 and HTTP/2) and one that has
    // sent nothing yet.
    let (mut busy, busy_conn) = h1_client(addr).await;
    let slow = tokio::spawn(busy.send_request(get(addr, "/slow")));
    gate.held().await;
    let (mut idle_h1, idle_h1_conn) = h1_client(addr).await;
    assert_eq!(
        idle_h1.send_request(get(addr, "/")).await.unwrap().status(),
        200
    );
    let (mut idle_h2, idle_h2_conn) = h2_client(addr).await;
    assert_eq!(
        idle_h2.send_request(get(addr, "/")).await.unwrap().status(),
        200
    );
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    eventually("adc counts the four connections", SOON, || async {
        shared.connections.load(Ordering::Relaxed) == 4
    })
    .await;

    let Adc { running, dir: _dir } = adc;
    let shutdown = tokio::spawn(running.shutdown());

    // While the request is still held, the idle connections are closed,
    // each cleanly: no reset, and HTTP/2 says GOAWAY first.
    ended("the idle HTTP/1.1 connection", idle_h1_conn)
        .await
        .expect("closed cleanly");
    ended("the idle HTTP/2 connection", idle_h2_conn)
        .await
        .expect("closed cleanly after GOAWAY");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(SOON, silent.read(&mut buf))
        .await
        .expect("the silent connection is closed");
    assert_eq!(read.unwrap(), 0, "closed, not reset");
    assert!(!shutdown.is_finished(), "a request is still in flight");

    gate.open();
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()[http::header::CONNECTION], "close");
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"gated /slow");
    ended("the connection of the answered request", busy_conn)
        .await
        .expect("closed cleanly");
    tokio::time::timeout(SOON, shutdown)
        .await
        .expect("adc stops once no connection is left, not at the drain timeout")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_in_flight_at_shutdown_is_answered_and_then_the_connection_closes() {
    let gate = Gate::start("gated").await;
    let adc = adc_before(&gate).await;
    let addr = adc.running.listeners["web"];
    let shared = adc.running.shared.clone();

    let (mut h2, conn) = h2_client(addr).await;
    let slow = tokio::spawn(h2.send_request(get(addr, "/slow")));
    gate.held().await;
    let Adc { running, dir: _dir } = adc;
    let shutdown = tokio::spawn(running.shutdown());
    eventually("the drain begins", SOON, || async {
        shared.draining.load(Ordering::Relaxed)
    })
    .await;
    assert!(!conn.is_finished(), "the stream in flight keeps it open");

    gate.open();
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"gated /slow");
    ended("the HTTP/2 connection", conn)
        .await
        .expect("closed cleanly after GOAWAY");
    tokio::time::timeout(SOON, shutdown)
        .await
        .expect("adc stops once no connection is left, not at the drain timeout")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_that_never_answers_the_goaway_does_not_hold_the_shutdown() {
    use tokio::io::AsyncWriteExt;
    let gate = Gate::start("gated").await;
    let adc = adc_before(&gate).await;
    let addr = adc.running.listeners["web"];
    let shared = adc.running.shared.clone();

    // The preface and an empty SETTINGS frame, then silence: the client
    // reads nothing and acknowledges nothing (no SETTINGS ack, no PING
    // answer), as a stuck or careless client would.
    let mut mute = tokio::net::TcpStream::connect(addr).await.unwrap();
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    eventually("adc counts the connection", SOON, || async {
        shared.connections.load(Ordering::Relaxed) == 1
    })
    .await;

    let Adc { running, dir: _dir } = adc;
    tokio::time::timeout(SOON, running.shutdown())
        .await
        .expect("adc stops well before the drain timeout: the connection has no stream");
    drop(mute);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_the_demo_backends_it_started() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let demo = free.local_addr().unwrap();
    drop(free);
    let config = format!("[limits]\ndrain_timeout = \"{DRAIN_TIMEOUT}\"\n")
        + &format!("[demo]\nbackends = [\"{demo}\"]\n")
        + &listener("web", &[])
        + &pool_at("web", &[demo])
        + "\n[pools.web.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    let (mut h1, _conn) = h1_client(addr).await;
    let answer = h1.send_request(get(addr, "/")).await.unwrap();
    assert_eq!(answer.status(), 200);

    let Adc { running, dir: _dir } = adc;
    tokio::time::timeout(SOON, running.shutdown())
        .await
        .expect("adc stops well before the drain timeout");
    eventually("the demo backend stops listening", SOON, || async {
        tokio::net::TcpStream::connect(demo).await.is_err()
    })
    .await;
}
