//! What a client sends that adc must refuse, repair, or at least never
//! blame on a backend: broken and slow request bodies, headers named in
//! `Connection` that the proxy relies on, transfer codings it does not
//! know, split cookies, h2c upgrades and oversized heads.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use adc_tests::{backend, client, listener, pool, Adc};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// A listener in front of `member` alone: any failure blamed on it shows
/// in `adc_member_failures_total`.
fn one_strike(name: &str, member: SocketAddr) -> String {
    listener(name, &[])
        + &adc_tests::pool_at(name, &[member])
        + &format!("\n[pools.{name}.passive]\nconsecutive_failures = 1\ncooldown = \"60s\"\n")
}

/// A backend on a port of its own, serving each connection with `serve`.
async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Read from `stream` until a request head has arrived: every byte read,
/// or `None` when the connection ended first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    Some(seen)
}

/// A backend that reads the whole request body, then answers with its
/// length; a request to `/echo` is answered at once with the body streamed
/// back as it comes.
async fn reading_backend() -> SocketAddr {
    raw_backend(|stream| async move {
        let service =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                if req.uri().path() == "/echo" {
                    let body = req.into_body().boxed_unsync();
                    return Ok::<_, Infallible>(http::Response::new(body));
                }
                let text = match req.into_body().collect().await {
                    Ok(b) => format!("read {}", b.to_bytes().len()),
                    Err(e) => format!("body failed: {e}"),
                };
                let body = Full::new(Bytes::from(text))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                Ok(http::Response::new(body))
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// Send `first`, read the head of the answer when `between` is given and
/// send `between` after it; then read until the connection closes or the
/// answer stops. With `close`, the writing side is shut after `first`.
async fn exchange(
    addr: SocketAddr,
    first: &'static [u8],
    between: Option<&'static [u8]>,
    close: bool,
) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(first).unwrap();
        if close {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        if let Some(more) = between {
            while !all.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(more);
        }
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_clients_broken_or_slow_request_body_never_counts_against_the_member() {
    let member = reading_backend().await;
    // One failure would eject the member; a short wait for its answer, so
    // that the slow client is found out soon.
    let config = listener("uploadfaults", &[])
        + &adc_tests::pool_at("uploadfaults", &[member])
        + "\n[pools.uploadfaults.passive]\nconsecutive_failures = 1\ncooldown = \"60s\"\n"
        + "\n[limits]\nheader_timeout = \"1s\"\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];

    // An invalid chunk size.
    let answer = exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        None,
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A body cut short by the client, which then leaves: an answer, if it
    // can still read one, says the request was bad.
    let answer = exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789",
        None,
        true,
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // A client that stops sending its body, so the member cannot answer.
    let answer = exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        None,
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A member streaming its answer when the client's body breaks.
    let answer = exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        Some(b"zz\r\n"),
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The member still serves, and no failure was counted against it.
    let r = client()
        .post(adc.url("web", "/x"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "read 10");
    assert_eq!(
        adc.metric("adc_member_failures_total", &[("pool", "uploadfaults")])
            .await,
        0.0
    );
}

/// A backend that reads a request head and 10 bytes of its body, waits a
/// little over a second for more, then closes the connection: one that
/// gives up on a slow upload.
async fn impatient_backend() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    raw_backend(|mut stream| async move {
        let Some(mut seen) = read_head(&mut stream).await else {
            return;
        };
        let mut buf = [0u8; 1024];
        loop {
            let end = seen.windows(4).position(|w| w == b"\r\n\r\n");
            if end.is_some_and(|end| seen.len() - end - 4 >= 10) {
                let more = stream.read(&mut buf);
                let _ = tokio::time::timeout(Duration::from_millis(1500), more).await;
                return;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_backend_giving_up_on_a_slow_upload_is_not_failed_for_it() {
    let member = impatient_backend().await;
    let config = one_strike("impatient", member);
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    for _ in 0..2 {
        let answer = exchange(
            addr,
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
            None,
            false,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(
        adc.metric("adc_member_failures_total", &[("pool", "impatient")])
            .await,
        0.0
    );
}

/// A backend that reads a request head and closes the connection: a
/// failing one, whatever the request's body.
async fn closing_backend() -> SocketAddr {
    raw_backend(|mut stream| async move {
        let _ = read_head(&mut stream).await;
    })
    .await
}

#[tokio::test]
async fn a_backend_closing_on_a_flowing_upload_is_failed_for_it() {
    let member = closing_backend().await;
    let config = one_strike("closehead", member);
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    // 5 MB sent as fast as adc takes it: the client never stalls.
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let size = 5 * 1024 * 1024;
        let head = format!("POST /closehead HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        String::from_utf8_lossy(&all).into_owned()
    })
    .await
    .unwrap();
    // The client may have been cut off before it could read the answer;
    // an answer it read blames the backend, not the client.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 502"),
        "{answer}"
    );
    adc_tests::eventually(
        "the member's failure is counted",
        Duration::from_secs(5),
        || async {
            adc.metric("adc_member_failures_total", &[("pool", "closehead")])
                .await
                == 1.0
        },
    )
    .await;
}

/// A backend that reads the request body for at most 1.5 s (its own read
/// timeout), then answers 504 when it did not get it all; `/fail` is
/// answered 500 at once.
async fn timing_out_backend() -> SocketAddr {
    raw_backend(|stream| async move {
        let service =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let fail = req.uri().path() == "/fail";
                let read = req.into_body().collect();
                let status = match tokio::time::timeout(Duration::from_millis(1500), read).await {
                    Ok(Ok(_)) if fail => 500,
                    Ok(Ok(_)) => 200,
                    _ => 504,
                };
                let mut response = http::Response::new(Full::new(Bytes::from_static(b"done")));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(response)
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await
}

#[tokio::test]
async fn a_5xx_for_a_stalled_upload_is_passed_on_but_not_failed() {
    let member = timing_out_backend().await;
    let config = one_strike("stalled5xx", member);
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    let answer = exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
        None,
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    // The member still serves, and no failure was counted against it.
    let r = client()
        .post(adc.url("web", "/x"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        adc.metric("adc_member_failures_total", &[("pool", "stalled5xx")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_5xx_for_a_stalled_upload_does_not_count_as_a_success_either() {
    let member = timing_out_backend().await;
    let config = listener("excused5xx", &[])
        + &adc_tests::pool_at("excused5xx", &[member])
        + "\n[pools.excused5xx.passive]\nconsecutive_failures = 2\ncooldown = \"60s\"\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    let fail = || async {
        let r = client()
            .post(adc.url("web", "/fail"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        let _ = r.bytes().await;
    };
    fail().await;
    // Between two failures of the member's, a 504 for a client's stalled
    // body: it neither fails the member nor clears its failures.
    let answer = exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
        None,
        false,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    fail().await;
    adc_tests::eventually(
        "the member's two failures are counted",
        Duration::from_secs(5),
        || async {
            adc.metric("adc_member_failures_total", &[("pool", "excused5xx")])
                .await
                == 2.0
        },
    )
    .await;
    // Two in a row reach the threshold (the member, alone in its pool, is
    // kept rather than ejected, and that is logged).
    adc_tests::eventually("two failures in a row", Duration::from_secs(5), || async {
        adc_tests::logged().lines().any(|l| {
            l.contains("member failing but not ejected")
                && l.contains("pool=excused5xx")
                && l.contains("failures=2")
        })
    })
    .await;
}

/// A backend that answers with a 50 MiB body, and gives up when a write of
/// it is stuck for 1.5 s (its own send timeout).
async fn sending_backend() -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    raw_backend(|mut stream| async move {
        if read_head(&mut stream).await.is_none() {
            return;
        }
        let size = 50 * 1024 * 1024;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            let write = stream.write_all(&chunk);
            match tokio::time::timeout(Duration::from_millis(1500), write).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_backend_giving_up_on_a_client_that_stopped_reading_is_not_failed_for_it() {
    let member = sending_backend().await;
    let config = one_strike("slowreader", member);
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["web"];
    let read = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        // Not reading, long enough for the backend to give up.
        std::thread::sleep(Duration::from_secs(4));
        let mut all = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            all += n;
        }
        all
    })
    .await
    .unwrap();
    assert!(read < 50 * 1024 * 1024, "the whole body arrived");
    let aborted = |side: &'static str| {
        let adc = &adc;
        async move {
            adc.metric(
                "adc_responses_aborted_total",
                &[("pool", "slowreader"), ("side", side)],
            )
            .await
        }
    };
    adc_tests::eventually("the abort is counted", Duration::from_secs(5), || async {
        aborted("client").await == 1.0
    })
    .await;
    assert_eq!(aborted("backend").await, 0.0);
    assert_eq!(
        adc.metric("adc_member_failures_total", &[("pool", "slowreader")])
            .await,
        0.0
    );
}

/// Send a whole request (which should ask to close the connection) and
/// read the answer to the end.
async fn raw(addr: SocketAddr, request: String) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        String::from_utf8_lossy(&all).to_lowercase()
    })
    .await
    .unwrap()
}

/// A listener of its own name (metrics are process-wide) in front of `b`.
fn alone(name: &str, b: &adc_tests::Backend) -> String {
    listener("web", &[]).replace("name = \"web\"", &format!("name = \"{name}\""))
        + &pool("web", "round_robin", &[b])
}

#[tokio::test]
async fn headers_the_proxy_relies_on_survive_being_named_in_connection() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let answer = raw(
        adc.running.listeners["web"],
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, Host, X-Forwarded-For, Forwarded, \
         X-Forwarded-Proto, x-gone\r\nx-gone: 1\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("x-echo-host: x\r\n"), "{answer}");
    assert!(
        answer.contains("x-echo-x-forwarded-for: 127.0.0.1\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("x-echo-x-forwarded-proto: http\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("x-echo-forwarded: for=127.0.0.1"),
        "{answer}"
    );
    assert!(!answer.contains("x-echo-x-gone"), "{answer}");
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_gets_501_without_reaching_a_backend() {
    let b = backend("b").await;
    let adc = Adc::start(&alone("codings", &b)).await;
    let addr = adc.running.listeners["codings"];
    let refused = || adc.answered("codings", "5xx");
    let before = refused().await;
    for coding in ["gzip, chunked", "identity, chunked", "chunked, chunked"] {
        let answer = raw(
            addr,
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\
                 Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        )
        .await;
        if coding == "chunked, chunked" {
            // Chunked may be applied once only.
            assert!(answer.starts_with("http/1.1 400"), "{answer}");
        } else {
            assert!(answer.starts_with("http/1.1 501"), "{coding}: {answer}");
        }
    }
    assert_eq!(b.hits(), 0);
    assert_eq!(refused().await - before, 2.0);
    // Chunked alone is forwarded.
    let answer = raw(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
}

#[tokio::test]
async fn cookies_an_http2_client_splits_reach_an_http1_backend_joined() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let r = adc_tests::h2_client()
        .get(adc.url("web", "/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    let cookies: Vec<_> = r.headers().get_all("x-echo-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
    // One field stays as it is.
    let r = client()
        .get(adc.url("web", "/"))
        .header("cookie", "a=1; b=2")
        .send()
        .await
        .unwrap();
    let cookies: Vec<_> = r.headers().get_all("x-echo-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_dropped_and_the_request_served_as_it_is() {
    let b = backend("b").await;
    let adc = Adc::start(&(listener("web", &[]) + &pool("web", "round_robin", &[&b]))).await;
    let answer = raw(
        adc.running.listeners["web"],
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("x-echo-upgrade"), "{answer}");
    assert!(!answer.contains("x-echo-connection"), "{answer}");
    assert!(!answer.contains("x-echo-http2-settings"), "{answer}");
}

#[tokio::test]
async fn an_http1_head_over_the_default_limit_gets_431_and_is_counted() {
    let b = backend("b").await;
    let adc = Adc::start(&alone("h1-limit", &b)).await;
    let addr = adc.running.listeners["h1-limit"];
    let refused = || adc.answered("h1-limit", "4xx");
    let before = refused().await;
    let head = |value: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(value)
        )
    };
    // Over the 64 KiB default by far less than hyper's loose bound.
    let answer = raw(addr, head(70_000)).await;
    assert!(answer.starts_with("http/1.1 431"), "{answer}");
    // Just under it passes.
    let answer = raw(addr, head(65_000)).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert_eq!(b.hits(), 1);

    adc_tests::eventually("the refusal is counted", Duration::from_secs(5), || async {
        refused().await - before == 1.0
    })
    .await;

    // At most 100 header lines, as the configuration documents: 101 are
    // refused by adc itself (no pool in the labels), not by the backend.
    let lines = |n: usize| {
        let fields: String = (0..n).map(|i| format!("X-{i}: v\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{fields}\r\n")
    };
    let answer = raw(addr, lines(99)).await;
    assert!(answer.starts_with("http/1.1 431"), "{answer}");
    let refused_here = || {
        adc.metric(
            "adc_requests_total",
            &[("listener", "h1-limit"), ("pool", ""), ("class", "4xx")],
        )
    };
    adc_tests::eventually(
        "both refusals are adc's",
        Duration::from_secs(5),
        || async { refused_here().await == 2.0 },
    )
    .await;
    assert_eq!(b.hits(), 1);
}
