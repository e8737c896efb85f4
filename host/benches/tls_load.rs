//! A small, bounded load client over TLS for `bench/compare`, for what
//! `wrk` cannot do: full TLS handshakes (wrk resumes the session on every
//! reconnection), and HTTP/3 (neither wrk nor the installed oha, which
//! speaks it only when built with its `http3` feature).
//!
//! Runs CONNECTIONS clients on one thread (as `wrk -t1`) for SECONDS, each
//! sending `GET /` and reading the whole answer, one request at a time:
//!
//! - `--protocol h1` (default): HTTP/1.1 over TLS over TCP;
//! - `--protocol h3`: HTTP/3 over QUIC;
//! - keep-alive (default): each client keeps its connection for all its
//!   requests;
//! - `--handshakes`: every request on a new connection, closed after the
//!   answer. Session resumption is off, so each is a full TLS 1.3
//!   handshake with a certificate.
//!
//! Prints one JSON object: requests, errors, seconds, requests/s, p50 and
//! p99 in milliseconds. Only loopback addresses are accepted; the run stops
//! by itself after SECONDS, and gives up SECONDS + 15 s after its start.
//!
//! Build: `cargo bench -p adc --bench tls_load --no-run`, then run the
//! executable it names:
//!
//!     tls_load ADDR SERVER_NAME CA_PEM [--protocol h1|h3] [--connections 64]
//!              [--seconds 10] [--handshakes]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Buf;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for one request (its connection included) before it counts
/// as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    H1,
    H3,
}

struct Args {
    addr: SocketAddr,
    name: String,
    ca: PathBuf,
    protocol: Protocol,
    connections: usize,
    seconds: u64,
    handshakes: bool,
}

const USAGE: &str = "usage: tls_load ADDR SERVER_NAME CA_PEM [--protocol h1|h3] \
                     [--connections N] [--seconds S] [--handshakes]";

fn args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let (mut connections, mut seconds, mut handshakes) = (64, 10, false);
    let mut protocol = Protocol::H1;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--connections" => connections = it.next().context(USAGE)?.parse()?,
            "--seconds" => seconds = it.next().context(USAGE)?.parse()?,
            "--handshakes" => handshakes = true,
            "--protocol" => {
                protocol = match it.next().as_deref() {
                    Some("h1") => Protocol::H1,
                    Some("h3") => Protocol::H3,
                    _ => bail!(USAGE),
                }
            }
            // cargo bench adds this flag to every bench target.
            "--bench" => {}
            _ => positional.push(arg),
        }
    }
    let [addr, name, ca] =
        <[String; 3]>::try_from(positional).map_err(|_| anyhow::anyhow!(USAGE))?;
    let addr: SocketAddr = addr.parse().context("ADDR is ip:port")?;
    if !addr.ip().is_loopback() {
        bail!("{addr}: this load client only sends to loopback addresses");
    }
    if connections == 0 || seconds == 0 || seconds > 600 {
        bail!("use 1 or more connections and 1 to 600 seconds");
    }
    Ok(Args {
        addr,
        name,
        ca: PathBuf::from(ca),
        protocol,
        connections,
        seconds,
        handshakes,
    })
}

fn tls_config(ca: &PathBuf, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| ca.display().to_string())? {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    // A full handshake for every new connection: no resumption, no 0-RTT.
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(tls)
}

type H3Sender = h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>;
type H1Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A client's open connection.
enum Conn {
    H1(Box<H1Stream>),
    H3 {
        conn: quinn::Connection,
        sender: H3Sender,
        drive: tokio::task::JoinHandle<()>,
    },
}

impl Conn {
    fn close(self) {
        if let Conn::H3 {
            conn,
            sender,
            drive,
        } = self
        {
            drop(sender);
            conn.close(0u32.into(), b"done");
            drive.abort();
        }
    }
}

/// What every client shares: where to connect and how.
struct Target {
    args: Args,
    tls: Arc<rustls::ClientConfig>,
    endpoint: Option<quinn::Endpoint>,
    /// The request, for HTTP/1.1.
    request: Vec<u8>,
}

async fn open(target: &Target) -> anyhow::Result<Conn> {
    match target.args.protocol {
        Protocol::H1 => {
            let tcp = tokio::net::TcpStream::connect(target.args.addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(target.args.name.clone())?;
            let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
                .connect(name, tcp)
                .await?;
            Ok(Conn::H1(Box::new(tls)))
        }
        Protocol::H3 => {
            let endpoint = target.endpoint.as_ref().context("a QUIC endpoint")?;
            let conn = endpoint
                .connect(target.args.addr, &target.args.name)?
                .await?;
            let (mut driver, sender) =
                h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
            let drive = tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            Ok(Conn::H3 {
                conn,
                sender,
                drive,
            })
        }
    }
}

/// One `GET /` and its whole answer; fails on a status other than 200.
async fn get(conn: &mut Conn, target: &Target, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    match conn {
        Conn::H1(stream) => {
            stream.write_all(&target.request).await?;
            read_h1_response(stream, buf).await
        }
        Conn::H3 { sender, .. } => {
            let request = http::Request::get(format!("https://{}/", target.args.name)).body(())?;
            let mut stream = sender.send_request(request).await?;
            stream.finish().await?;
            let response = stream.recv_response().await?;
            while let Some(mut chunk) = stream.recv_data().await? {
                chunk.advance(chunk.remaining());
            }
            if response.status() != 200 {
                bail!("status {}", response.status());
            }
            Ok(())
        }
    }
}

/// Read one HTTP/1.1 response with a Content-Length body.
async fn read_h1_response(stream: &mut H1Stream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("a Content-Length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("closed in the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    /// Microseconds per successful request.
    latencies: Vec<u32>,
    errors: u64,
}

async fn client(target: Arc<Target>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut kept: Option<Conn> = None;
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        let started = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let conn = match &mut kept {
                Some(c) => c,
                None => kept.insert(open(&target).await?),
            };
            get(conn, &target, &mut buf).await
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
        let failed = match outcome {
            Ok(()) => {
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                tally.latencies.push(micros);
                false
            }
            Err(_) => {
                tally.errors += 1;
                true
            }
        };
        // A new connection for the next request after a handshake-mode
        // request or any error.
        if target.args.handshakes || failed {
            if let Some(c) = kept.take() {
                c.close();
            }
        }
    }
    if let Some(c) = kept {
        c.close();
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

async fn run(args: Args) -> anyhow::Result<(Vec<Tally>, Duration)> {
    let connections = args.connections;
    let seconds = args.seconds;
    let (tls, endpoint) = match args.protocol {
        Protocol::H1 => (tls_config(&args.ca, b"http/1.1")?, None),
        Protocol::H3 => {
            let tls = tls_config(&args.ca, b"h3")?;
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls.clone())?;
            // One socket for every client: with the default receive buffer
            // a burst of handshake replies to 64 clients overflows it.
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = socket.set_recv_buffer_size(4 << 20);
            let _ = socket.set_send_buffer_size(4 << 20);
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            let mut endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket.into(),
                quinn::default_runtime().context("a tokio runtime")?,
            )?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
            (tls, Some(endpoint))
        }
    };
    let connection = if args.handshakes {
        "close"
    } else {
        "keep-alive"
    };
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\n\r\n",
        args.name
    )
    .into_bytes();
    let target = Arc::new(Target {
        args,
        tls: Arc::new(tls),
        endpoint,
        request,
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(client(target.clone(), deadline));
    }
    let mut tallies = Vec::new();
    while let Some(t) = tasks.join_next().await {
        tallies.push(t?);
    }
    let elapsed = started.elapsed();
    if let Some(endpoint) = &target.endpoint {
        endpoint.close(0u32.into(), b"done");
    }
    Ok((tallies, elapsed))
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let give_up = Duration::from_secs(args.seconds + 15);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tallies, elapsed) = runtime.block_on(async {
        tokio::time::timeout(give_up, run(args))
            .await
            .map_err(|_| anyhow::anyhow!("the run did not end within {give_up:?}"))?
    })?;

    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let seconds = elapsed.as_secs_f64();
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"seconds\": {seconds:.3}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        latencies.len(),
        latencies.len() as f64 / seconds,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
    );
    Ok(())
}
