#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

//! Response bodies that policies transform as they stream
//! (`on-response-chunk`), through a real adc, over HTTP/1.1 and HTTP/2:
//! the rewrite policy's substitution across chunk boundaries and in bodies
//! of any size, and hostile streaming policies that trap or hold back
//! everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use adc_tests::{backend, client, h2_client, listener, policy, pool, Adc, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const INTERNAL: &str = "http://internal.example/";
const PUBLIC: &str = "https://www.example.com/";

/// How a scripted backend frames its body.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Chunked,
    Length,
}

/// One write of a scripted backend: after a permit of the gate, when
/// `gated`, so that a test decides when it leaves.
#[derive(Clone)]
struct Piece {
    bytes: Vec<u8>,
    gated: bool,
}

fn piece(bytes: impl Into<Vec<u8>>) -> Piece {
    Piece {
        bytes: bytes.into(),
        gated: false,
    }
}

fn gated(bytes: impl Into<Vec<u8>>) -> Piece {
    Piece {
        bytes: bytes.into(),
        gated: true,
    }
}

/// A backend that answers every request with `pieces`, each written and
/// flushed on its own (one chunk each, when chunked), the gated ones only
/// once the test adds a permit to the returned gate.
async fn scripted_backend(
    content_type: &'static str,
    framing: Framing,
    pieces: Vec<Piece>,
) -> (SocketAddr, Arc<Semaphore>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let permits = gate.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let pieces = pieces.clone();
            let gate = permits.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let framing_header = match framing {
                    Framing::Chunked => "transfer-encoding: chunked".to_owned(),
                    Framing::Length => format!(
                        "content-length: {}",
                        pieces.iter().map(|p| p.bytes.len()).sum::<usize>()
                    ),
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{framing_header}\r\nconnection: close\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for p in pieces {
                    if p.gated {
                        gate.acquire().await.unwrap().forget();
                    }
                    let mut out = Vec::new();
                    match framing {
                        Framing::Chunked => {
                            out.extend_from_slice(format!("{:x}\r\n", p.bytes.len()).as_bytes());
                            out.extend_from_slice(&p.bytes);
                            out.extend_from_slice(b"\r\n");
                        }
                        Framing::Length => out.extend_from_slice(&p.bytes),
                    }
                    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                }
                if let Framing::Chunked = framing {
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, gate)
}

/// A pool section naming one member by address.
fn pool_at(addr: SocketAddr) -> String {
    format!("\n[pools.web]\nmembers = [{{ name = \"m0\", address = \"{addr}\" }}]\n")
}

fn rewrite_section(name: &str, extra: &str) -> String {
    format!(
        "\n[policies.{name}]\nfile = \"rewrite.wasm\"\n{extra}\n\n[policies.{name}.settings]\n\
         body = {{ content_types = [\"text/html\"], replace = [{{ from = \"{INTERNAL}\", to = \"{PUBLIC}\" }}] }}\n"
    )
}

fn fixture_section(name: &str, extra: &str) -> String {
    format!("\n[policies.{name}]\nfile = \"fixture-chunky.wasm\"\n{extra}\n")
}

/// adc with the policy `name` (its `section`) in front of a backend that
/// sends `first`, then `second` once the test opens the gate.
async fn gated_adc(
    content_type: &'static str,
    (first, second): (&str, &str),
    name: &str,
    section: &str,
) -> (Adc, Arc<Semaphore>) {
    let pieces = vec![piece(first), gated(second)];
    let (addr, gate) = scripted_backend(content_type, Framing::Chunked, pieces).await;
    let config = listener("web", &[name]) + &pool_at(addr) + section;
    (Adc::start(&config).await, gate)
}

fn clients() -> [(&'static str, reqwest::Client); 2] {
    [("HTTP/1.1", client()), ("HTTP/2", h2_client())]
}

/// Read at least `at_least` bytes of the body, then open the gate and read
/// the rest: what came first, and the rest or the error that ended it.
async fn read_across(
    response: &mut reqwest::Response,
    at_least: usize,
    gate: &Semaphore,
) -> (Vec<u8>, Result<Vec<u8>, reqwest::Error>) {
    let first = read_until(response, at_least).await;
    gate.add_permits(1);
    (first, read_rest(response).await)
}

/// Read the body until at least `at_least` bytes have come.
async fn read_until(response: &mut reqwest::Response, at_least: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < at_least {
        let chunk = response.chunk().await.unwrap().expect("more body");
        got.extend_from_slice(&chunk);
    }
    got
}

/// Read the rest of the body: its bytes, or the error that ended it. A
/// body that neither ends nor fails within a generous bound is a hang.
async fn read_rest(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let rest = async {
        let mut got = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            got.extend_from_slice(&chunk);
        }
        Ok(got)
    };
    tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .expect("the body ends or fails; it does not hang")
}

#[tokio::test]
async fn a_match_straddling_two_chunks_is_replaced_and_the_start_is_sent_before_the_end_arrives() {
    policy("rewrite");
    let start = format!("{}<a href=\"http://inter", "A".repeat(200));
    let end = format!("nal.example/a\">a</a>{}", "B".repeat(10));
    let section = rewrite_section("rw-straddle", "");
    let (adc, gate) = gated_adc("text/html", (&start, &end), "rw-straddle", &section).await;
    let want = format!("{start}{end}").replace(INTERNAL, PUBLIC);

    for (version, client) in clients() {
        let mut response = client.get(adc.url("web", "/page")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{version}");
        assert!(
            response.headers().get("content-length").is_none(),
            "{version}"
        );
        // The end is sent only once the start has reached the client: adc
        // saw the two halves of the match in two calls.
        let (mut got, rest) = read_across(&mut response, 100, &gate).await;
        got.extend(rest.unwrap());
        assert_eq!(String::from_utf8(got).unwrap(), want, "{version}");
    }
}

#[tokio::test]
async fn a_body_larger_than_the_old_cap_and_the_memory_cap_is_substituted_whole() {
    policy("rewrite");
    // 6 MiB in pieces of an odd size, so that many matches straddle chunk
    // boundaries; the policy's memory cap is half of it, so the body can
    // never be whole inside the policy.
    let unit = format!(
        "<p>{}<a href=\"{INTERNAL}page\">link</a></p>\n",
        "t".repeat(61)
    );
    let body = unit.repeat(6 * 1024 * 1024 / unit.len());
    let pieces: Vec<Piece> = body.as_bytes().chunks(10_007).map(piece).collect();
    let want = body.replace(INTERNAL, PUBLIC);

    for (framing, (version, client)) in [Framing::Length, Framing::Chunked]
        .into_iter()
        .zip(clients())
    {
        let (addr, _) = scripted_backend("text/html", framing, pieces.clone()).await;
        let config = listener("web", &["rw-large"])
            + &pool_at(addr)
            + &rewrite_section("rw-large", "memory_cap = \"3MiB\"");
        let adc = Adc::start(&config).await;
        let response = client.get(adc.url("web", "/big")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("content-length").is_none());
        let got = response.bytes().await.unwrap();
        assert!(
            got == want.as_bytes(),
            "{version}, {framing:?}: {} bytes, want {}",
            got.len(),
            want.len()
        );
    }
}

#[tokio::test]
async fn a_trap_mid_stream_cuts_that_body_short_and_the_next_request_is_served() {
    policy("fixture-chunky");
    let section = fixture_section("chunky-trap", "");
    let halves = ("hello ", "boom and more");
    let (adc, gate) = gated_adc("text/plain", halves, "chunky-trap", &section).await;
    let faults = || adc.metric("adc_policy_faults_total", &[("policy", "chunky-trap")]);

    for (version, client) in clients() {
        let before = faults().await;
        let mut response = client.get(adc.url("web", "/boom")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{version}");
        assert_eq!(response.headers()["x-chunky"], "streams", "{version}");
        let (first, rest) = read_across(&mut response, 6, &gate).await;
        assert_eq!(first, b"HELLO ", "{version}");
        assert!(rest.is_err(), "{version}");
        assert_eq!(faults().await, before + 1.0, "{version}");

        // The next request, through a fresh instance, is served whole.
        gate.add_permits(1);
        let response = client.get(adc.url("web", "/fine")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "HELLO BOOM AND MORE");
    }
}

#[tokio::test]
async fn with_fail_open_a_trap_mid_stream_lets_the_rest_pass_unchanged() {
    policy("fixture-chunky");
    let section = fixture_section("chunky-open", "fail_open = true");
    let halves = ("hello ", "boom and more");
    let (adc, gate) = gated_adc("text/plain", halves, "chunky-open", &section).await;
    let mut response = client().get(adc.url("web", "/boom")).send().await.unwrap();
    let (mut got, rest) = read_across(&mut response, 6, &gate).await;
    got.extend(rest.unwrap());
    assert_eq!(got, b"HELLO boom and more");
    assert_eq!(
        adc.metric("adc_policy_faults_total", &[("policy", "chunky-open")])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_policy_that_holds_back_everything_cannot_make_adc_buffer_the_body() {
    policy("fixture-chunky");
    let first = "x".repeat(200 * 1024);
    let second = "y".repeat(100 * 1024);
    let section = fixture_section("chunky-hoard", "");
    let (adc, gate) = gated_adc("text/plain", (&first, &second), "chunky-hoard", &section).await;

    for (version, client) in clients() {
        let mut response = client.get(adc.url("web", "/hoard")).send().await.unwrap();
        // Past 64 KiB the held bytes go on, unchanged, before the body ends.
        let (mut got, rest) = read_across(&mut response, 1, &gate).await;
        got.extend(rest.unwrap());
        assert!(got == format!("{first}{second}").as_bytes(), "{version}");
    }
    let misplaced = adc
        .metric(
            "adc_policy_misplaced_decisions_total",
            &[("policy", "chunky-hoard"), ("hook", "response_chunk")],
        )
        .await;
    assert_eq!(misplaced, 2.0, "once per response");
}

#[tokio::test]
async fn a_response_without_a_body_is_not_streamed_and_keeps_its_length() {
    policy("fixture-chunky");
    let b = backend("plain").await;
    let config = listener("web", &["chunky-head"])
        + &pool("web", "round_robin", &[&b])
        + &fixture_section("chunky-head", "");
    let adc = Adc::start(&config).await;
    let head = client().head(adc.url("web", "/x")).send().await.unwrap();
    assert_eq!(head.headers()["x-chunky"], "refused");
    assert!(head.headers().contains_key("content-length"));
    let get = client().get(adc.url("web", "/x")).send().await.unwrap();
    assert_eq!(get.headers()["x-chunky"], "streams");
    assert!(get.headers().get("content-length").is_none());
    assert_eq!(get.text().await.unwrap(), "PLAIN GET /X");
}

/// A component of the plain `policy` world exports no streaming hook: it
/// stands for every policy built before the hook existed.
#[tokio::test]
async fn a_policy_built_before_streaming_loads_and_is_refused_a_stream() {
    policy("fixture-plain-world");
    let b: Backend = backend("plain").await;
    let config = listener("web", &["plain"])
        + &pool("web", "round_robin", &[&b])
        + "\n[policies.plain]\nfile = \"fixture-plain-world.wasm\"\n";
    let adc = Adc::start(&config).await;
    let response = client().get(adc.url("web", "/x")).send().await.unwrap();
    assert_eq!(response.headers()["x-plain"], "yes");
    assert_eq!(response.headers()["x-plain-stream"], "refused");
    assert_eq!(response.headers()["content-length"], "12");
    assert_eq!(response.text().await.unwrap(), "plain GET /x");
}

/// A component exporting `handler` and `streaming`, whose hooks receive
/// borrowed handles, as the SDK built them before the `hooks` interface:
/// the host runs every hook of it as before, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn a_policy_of_the_handler_and_streaming_exports_runs_as_before() {
    policy("fixture-handler-streaming");
    let b: Backend = backend("plain").await;
    let config = listener("web", &["legacy"])
        + &pool("web", "round_robin", &[&b])
        + "\n[policies.legacy]\nfile = \"fixture-handler-streaming.wasm\"\n";
    let adc = Adc::start(&config).await;
    for (version, client) in clients() {
        let response = client
            .get(adc.url("web", "/x"))
            .header("x-in", "forty-two")
            .send()
            .await
            .unwrap();
        let headers = response.headers();
        assert_eq!(headers["x-handler"], "yes", "{version}");
        assert_eq!(headers["x-method"], "GET", "{version}");
        assert_eq!(headers["x-echo-x-copied"], "forty-two", "{version}");
        assert!(headers.get("content-length").is_none(), "{version}");
        assert_eq!(response.text().await.unwrap(), "PLAIN GET /X", "{version}");
    }
}
