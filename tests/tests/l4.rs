//! L4 balancing through a real adc: TCP connections and UDP flows over echo
//! members, health checks taking members out, idle timeouts, and the PROXY
//! protocol in both directions.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adc_tests::{backend, pool, Adc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// How long any single exchange with adc may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// A TCP echo server; counts the connections that carried data (health
/// probes connect and send nothing).
struct TcpEcho {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpEcho {
    async fn start() -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(echo_stream(stream, counter.clone()));
            }
        });
        TcpEcho { addr, served, task }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Close the listener and every open connection; returns once the port
    /// refuses connections.
    async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// Echo until the client ends its sending, then end ours.
async fn echo_stream(mut stream: TcpStream, served: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = true;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first {
            served.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// A UDP echo server that remembers every datagram it received.
struct UdpEcho {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    async fn start() -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                log.lock().unwrap().push(buf[..n].to_vec());
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        UdpEcho { addr, seen, task }
    }

    fn saw(&self, payload: &[u8]) -> bool {
        self.seen.lock().unwrap().iter().any(|d| d == payload)
    }

    /// Close the socket; returns once it is closed.
    async fn kill(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A config with one L4 listener `l4` speaking `protocol` to pool `echo`,
/// whose members are `members`; `extra` is appended (pool keys first).
fn l4_config(protocol: &str, members: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ name = \"m{i}\", address = \"{a}\" }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\nwatch = false\n\n\
         [[listener]]\nname = \"l4\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\npool = \"echo\"\n\n\
         [pools.echo]\nmethod = \"round_robin\"\nmembers = [{}]\n{extra}",
        list.join(", ")
    )
}

fn healthy(adc: &Adc, member: &str) -> bool {
    adc.running.shared.runtime.load().pools["echo"]
        .member(member)
        .unwrap()
        .healthy
        .load(Ordering::Relaxed)
}

/// Connections relayed to a member of pool `echo` now.
fn active(adc: &Adc, member: &str) -> u32 {
    adc.running.shared.runtime.load().pools["echo"]
        .member(member)
        .unwrap()
        .active
        .load(Ordering::Relaxed)
}

/// Poll `check` every 20 ms, at most 250 times (5 s); panic naming `what`
/// when it never holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 5 s");
}

/// Send `payload` over a new connection, end our sending, and return all
/// that comes back before the end of the stream.
async fn tcp_exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    timeout(PATIENCE, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(payload).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        back
    })
    .await
    .expect("the exchange ends in time")
}

/// Which member served the next connection: counts before and after.
async fn tcp_served_by(addr: SocketAddr, members: &[&TcpEcho], payload: &[u8]) -> usize {
    let before: Vec<usize> = members.iter().map(|m| m.served()).collect();
    assert_eq!(tcp_exchange(addr, payload).await, payload);
    let changed: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].served() != before[i])
        .collect();
    assert_eq!(changed.len(), 1, "one member served the connection");
    changed[0]
}

/// Send a datagram and wait for the answer; sent again, up to three times,
/// when none comes.
async fn udp_exchange(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_535];
    for _ in 0..3 {
        socket.send_to(payload, to).await.unwrap();
        if let Ok(Ok((n, from))) =
            timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
        {
            assert_eq!(from, to, "the answer comes from the listener");
            return Some(buf[..n].to_vec());
        }
    }
    None
}

async fn udp_client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Which UDP member saw `payload`; exactly one must have.
fn udp_seen_by(members: &[&UdpEcho], payload: &[u8]) -> usize {
    let saw: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].saw(payload))
        .collect();
    assert_eq!(saw.len(), 1, "{payload:?} reached one member: {saw:?}");
    saw[0]
}

#[tokio::test]
async fn tcp_connections_alternate_between_members_and_bytes_flow_both_ways() {
    let (a, b) = (TcpEcho::start().await, TcpEcho::start().await);
    let adc = Adc::start(&l4_config("tcp", &[a.addr, b.addr], "")).await;
    let addr = adc.running.listeners["l4"];

    let mut picks = Vec::new();
    for i in 0..6 {
        picks.push(tcp_served_by(addr, &[&a, &b], format!("hello {i}").as_bytes()).await);
    }
    assert!(
        picks.windows(2).all(|w| w[0] != w[1]),
        "round robin alternates: {picks:?}"
    );

    // A megabyte each way at once: neither direction waits for the other.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    timeout(PATIENCE, r.read_to_end(&mut back))
        .await
        .expect("the echo ends in time")
        .unwrap();
    writer.await.unwrap();
    assert!(back == big, "{} bytes came back intact", back.len());
}

#[tokio::test]
async fn a_tcp_client_that_ends_its_sending_still_gets_the_echo_and_then_the_end() {
    let a = TcpEcho::start().await;
    let adc = Adc::start(&l4_config("tcp", &[a.addr], "")).await;
    let addr = adc.running.listeners["l4"];

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"first part, ").await.unwrap();
    let mut part = [0u8; 12];
    timeout(PATIENCE, s.read_exact(&mut part))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&part, b"first part, ");
    s.write_all(b"then the rest").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .expect("the end of the stream arrives")
        .unwrap();
    assert_eq!(rest, b"then the rest");
}

#[tokio::test]
async fn a_client_that_resets_its_connection_frees_the_member_connection_at_once() {
    let a = TcpEcho::start().await;
    let adc = Adc::start(&l4_config("tcp", &[a.addr], "")).await;
    let mut s = TcpStream::connect(adc.running.listeners["l4"])
        .await
        .unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active(&adc, "m0"), 1);

    // Closing with a zero linger sends a reset, not an orderly end.
    s.set_zero_linger().unwrap();
    drop(s);
    eventually("the member connection is closed", || {
        active(&adc, "m0") == 0
    })
    .await;
}

#[tokio::test]
async fn a_tcp_member_found_down_by_health_checks_takes_no_new_connections() {
    let (a, mut b) = (TcpEcho::start().await, TcpEcho::start().await);
    let health = "[pools.echo.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 2\n";
    let adc = Adc::start(&l4_config("tcp", &[a.addr, b.addr], health)).await;
    let addr = adc.running.listeners["l4"];
    for i in 0..4 {
        tcp_served_by(addr, &[&a, &b], format!("warm {i}").as_bytes()).await;
    }
    assert!(a.served() > 0 && b.served() > 0);

    // From the moment the member dies, no client sees a failure: the
    // connection is retried on the other member until the checks agree.
    b.kill().await;
    let served_before = a.served();
    let mut sent = 0;
    while healthy(&adc, "m1") {
        assert!(sent < 200, "the health checks never took m1 down");
        assert_eq!(tcp_exchange(addr, b"meanwhile").await, b"meanwhile");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..6 {
        let payload = format!("after {i}");
        assert_eq!(
            tcp_exchange(addr, payload.as_bytes()).await,
            payload.as_bytes()
        );
    }
    assert_eq!(a.served() - served_before, sent + 6);
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed_after_the_idle_timeout() {
    let a = TcpEcho::start().await;
    let adc = Adc::start(&l4_config(
        "tcp",
        &[a.addr],
        "\n[limits]\nidle_timeout = \"300ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(adc.running.listeners["l4"])
        .await
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    let started = Instant::now();
    let mut back = Vec::new();
    let _ = timeout(PATIENCE, s.read_to_end(&mut back))
        .await
        .expect("adc closes the idle connection");
    assert_eq!(back, b"ping");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn udp_datagrams_of_one_client_stay_on_one_member_and_clients_spread() {
    let (a, b) = (UdpEcho::start().await, UdpEcho::start().await);
    let adc = Adc::start(&l4_config("udp", &[a.addr, b.addr], "")).await;
    let addr = adc.running.listeners["l4"];

    let clients = [udp_client().await, udp_client().await];
    let mut homes = Vec::new();
    for (c, socket) in clients.iter().enumerate() {
        let mut members = Vec::new();
        for k in 0..5 {
            let payload = format!("client {c} datagram {k}");
            let back = udp_exchange(socket, addr, payload.as_bytes()).await;
            assert_eq!(back.as_deref(), Some(payload.as_bytes()));
            members.push(udp_seen_by(&[&a, &b], payload.as_bytes()));
        }
        assert!(
            members.iter().all(|&m| m == members[0]),
            "client {c} stays on one member: {members:?}"
        );
        homes.push(members[0]);
    }
    assert_ne!(homes[0], homes[1], "the two clients use both members");
}

#[tokio::test]
async fn a_udp_flow_ends_after_the_idle_timeout_and_the_next_datagram_starts_a_new_one() {
    let (a, b) = (UdpEcho::start().await, UdpEcho::start().await);
    let adc = Adc::start(&l4_config(
        "udp",
        &[a.addr, b.addr],
        "\n[limits]\nidle_timeout = \"300ms\"\n",
    ))
    .await;
    let addr = adc.running.listeners["l4"];
    let socket = udp_client().await;

    assert!(udp_exchange(&socket, addr, b"first").await.is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(udp_exchange(&socket, addr, b"soon after").await.is_some());
    let home = udp_seen_by(&[&a, &b], b"first");
    assert_eq!(udp_seen_by(&[&a, &b], b"soon after"), home);

    // Quiet for well past the timeout: the flow is forgotten, and round
    // robin gives the new one the other member.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(udp_exchange(&socket, addr, b"much later").await.is_some());
    assert_ne!(udp_seen_by(&[&a, &b], b"much later"), home);
}

#[tokio::test]
async fn a_udp_member_found_down_by_health_checks_gets_no_new_flows() {
    let (a, mut b) = (UdpEcho::start().await, UdpEcho::start().await);
    let health = "[pools.echo.health]\nkind = \"udp\"\nsend = \"are you there\"\n\
                  expect = \"there\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nfall = 2\n";
    let adc = Adc::start(&l4_config("udp", &[a.addr, b.addr], health)).await;
    let addr = adc.running.listeners["l4"];
    eventually("both members are probed", || {
        a.saw(b"are you there") && b.saw(b"are you there")
    })
    .await;
    assert!(healthy(&adc, "m0") && healthy(&adc, "m1"));

    b.kill().await;
    eventually("the health checks take m1 down", || !healthy(&adc, "m1")).await;
    assert!(healthy(&adc, "m0"), "the live member stays up");
    for k in 0..6 {
        let payload = format!("new flow {k}");
        let back = udp_exchange(&udp_client().await, addr, payload.as_bytes()).await;
        assert_eq!(back.as_deref(), Some(payload.as_bytes()));
        assert!(a.saw(payload.as_bytes()));
    }
}

/// A TCP backend that reads a PROXY header and answers with the addresses
/// it carried, "client -> destination", then closes.
async fn proxy_reader() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            conns.spawn(async move {
                let answer = match adc::proxy_protocol::read(&mut stream).await {
                    Ok(Some(c)) => format!("{} -> {}", c.client, c.destination),
                    Ok(None) => "no address".to_owned(),
                    Err(e) => format!("error: {e}"),
                };
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An HTTP backend behind a PROXY header: it answers 200 after a header
/// and closes without a word otherwise; counts LOCAL headers (health
/// probes).
async fn proxy_http_backend() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let locals = Arc::new(AtomicUsize::new(0));
    let counter = locals.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            conns.spawn(async move {
                match adc::proxy_protocol::read(&mut stream).await {
                    Ok(None) => counter.fetch_add(1, Ordering::Relaxed),
                    Ok(Some(_)) => 0,
                    Err(_) => return,
                };
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, locals, task)
}

#[tokio::test]
async fn health_probes_to_a_pool_that_wants_proxy_headers_start_with_a_local_header() {
    for version in ["v1", "v2"] {
        let (backend, locals, task) = proxy_http_backend().await;
        let extra = format!(
            "proxy_protocol = \"{version}\"\n[pools.echo.health]\nkind = \"http\"\n\
             interval = \"100ms\"\nfall = 2\n"
        );
        let adc = Adc::start(&l4_config("tcp", &[backend], &extra)).await;
        eventually("three probes arrive", || {
            locals.load(Ordering::Relaxed) >= 3
        })
        .await;
        assert!(healthy(&adc, "m0"), "PROXY {version}");
        task.abort();
    }
}

/// Connect, send `first` (if any), and read what comes back until the end.
async fn tcp_read_all(addr: SocketAddr, first: &[u8]) -> (SocketAddr, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(first).await.unwrap();
    let mut back = Vec::new();
    timeout(PATIENCE, s.read_to_end(&mut back))
        .await
        .expect("the backend answers and closes")
        .unwrap();
    (local, String::from_utf8(back).unwrap())
}

#[tokio::test]
async fn a_pool_with_proxy_protocol_tells_its_backend_the_real_client_address() {
    let (backend, task) = proxy_reader().await;
    for version in ["v1", "v2"] {
        let extra = format!("proxy_protocol = \"{version}\"\n");
        let adc = Adc::start(&l4_config("tcp", &[backend], &extra)).await;
        let listener = adc.running.listeners["l4"];
        let (local, answer) = tcp_read_all(listener, b"").await;
        assert_eq!(answer, format!("{local} -> {listener}"), "PROXY {version}");
    }
    task.abort();
}

#[tokio::test]
async fn a_tcp_listener_passes_on_the_client_a_trusted_source_names() {
    let (backend, task) = proxy_reader().await;
    let config = l4_config("tcp", &[backend], "proxy_protocol = \"v2\"\n").replace(
        "pool = \"echo\"\n",
        "pool = \"echo\"\nproxy_protocol_from = [\"127.0.0.0/8\"]\n",
    );
    let adc = Adc::start(&config).await;
    let (_, answer) = tcp_read_all(
        adc.running.listeners["l4"],
        b"PROXY TCP4 203.0.113.9 198.51.100.1 40000 80\r\n",
    )
    .await;
    // Both addresses go on as they came: the destination is the one the
    // client reached, not adc's (it used to be adc's listener).
    assert_eq!(answer, "203.0.113.9:40000 -> 198.51.100.1:80");
    task.abort();
}

fn trusting_http_config(backend: &adc_tests::Backend) -> String {
    "[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\nwatch = false\n\n\
     [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nproxy_protocol_from = [\"127.0.0.1\"]\n\
     [[listener.route]]\npool = \"web\"\n"
        .to_owned()
        + &pool("web", "round_robin", &[backend])
}

#[tokio::test]
async fn an_http_listener_takes_the_client_address_from_a_trusted_proxy_header() {
    let b = backend("b").await;
    let adc = Adc::start(&trusting_http_config(&b)).await;
    let (_, answer) = tcp_read_all(
        adc.running.listeners["web"],
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n\
          GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("\r\nx-echo-x-forwarded-for: 203.0.113.9\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_trusted_source_that_sends_no_proxy_header_is_dropped() {
    let b = backend("b").await;
    let adc = Adc::start(&trusting_http_config(&b)).await;
    let mut s = TcpStream::connect(adc.running.listeners["web"])
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut back = Vec::new();
    // A reset is as good as an orderly close here.
    let _ = timeout(PATIENCE, s.read_to_end(&mut back))
        .await
        .expect("adc closes the connection");
    assert!(back.is_empty(), "{}", String::from_utf8_lossy(&back));
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn an_l4_connection_to_a_pool_with_every_member_down_is_closed_promptly() {
    let mut a = TcpEcho::start().await;
    let health = "[pools.echo.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 2\n";
    let adc = Adc::start(&l4_config("tcp", &[a.addr], health)).await;
    let addr = adc.running.listeners["l4"];
    a.kill().await;
    eventually("the health checks take m0 down", || !healthy(&adc, "m0")).await;

    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"anyone?").await;
    let mut back = Vec::new();
    let _ = timeout(Duration::from_secs(2), s.read_to_end(&mut back))
        .await
        .expect("closed, not left hanging");
    assert!(back.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn an_l4_connection_whose_members_all_refuse_is_closed_promptly() {
    let mut a = TcpEcho::start().await;
    let dead = a.addr;
    a.kill().await;
    let adc = Adc::start(&l4_config("tcp", &[dead], "")).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(adc.running.listeners["l4"])
        .await
        .unwrap();
    let mut back = Vec::new();
    let _ = timeout(Duration::from_secs(2), s.read_to_end(&mut back))
        .await
        .expect("closed, not left hanging");
    assert!(back.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn l4_connections_and_flows_are_counted_in_described_metrics() {
    let (tcp, udp) = (TcpEcho::start().await, UdpEcho::start().await);
    let config = l4_config("tcp", &[tcp.addr], "")
        + &format!(
            "\n[[listener]]\nname = \"u4\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
             pool = \"uecho\"\n\n[pools.uecho]\nmembers = [{{ address = \"{}\" }}]\n",
            udp.addr
        );
    let adc = Adc::start(&config).await;
    assert_eq!(tcp_exchange(adc.running.listeners["l4"], b"x").await, b"x");
    let back = udp_exchange(&udp_client().await, adc.running.listeners["u4"], b"y").await;
    assert_eq!(back.as_deref(), Some(&b"y"[..]));

    let metrics = adc.metrics_text().await;
    for name in ["adc_l4_connections_total", "adc_l4_flows_total"] {
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name}");
        assert!(metrics.contains(&format!("{name}{{listener=\"")), "{name}");
    }
}

/// Poll the metric `name` with `labels` every 20 ms until it equals `want`,
/// for at most 10 s; panic naming the last value otherwise.
async fn metric_reaches(adc: &Adc, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = adc.metric(name, labels).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {labels:?} is {now}, not {want}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flood_of_new_udp_clients_gets_no_flows_past_the_cap_and_each_dropped_datagram_is_counted(
) {
    let echo = UdpEcho::start().await;
    let config = l4_config(
        "udp",
        &[echo.addr],
        "\n[limits]\nmax_udp_flows = 3\nidle_timeout = \"2s\"\n",
    )
    .replace("name = \"l4\"", "name = \"capped\"");
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["capped"];
    let open = [("listener", "capped")];
    let refused = [("listener", "capped"), ("reason", "limit")];

    let mut first = Vec::new();
    for i in 0..3 {
        let client = udp_client().await;
        let payload = format!("first {i}");
        let back = udp_exchange(&client, addr, payload.as_bytes()).await;
        assert_eq!(back.as_deref(), Some(payload.as_bytes()));
        first.push(client);
    }
    metric_reaches(&adc, "adc_l4_flows_open", &open, 3.0).await;

    // Twenty more source addresses, one datagram each: no flow for any.
    let mut flood = Vec::new();
    for i in 0..20 {
        let client = udp_client().await;
        client
            .send_to(format!("flood {i}").as_bytes(), addr)
            .await
            .unwrap();
        flood.push(client);
    }
    metric_reaches(&adc, "adc_l4_flows_refused_total", &refused, 20.0).await;
    for i in 0..20 {
        assert!(
            !echo.saw(format!("flood {i}").as_bytes()),
            "flood {i} reached the member"
        );
    }
    assert_eq!(adc.metric("adc_l4_flows_open", &open).await, 3.0);
    assert_eq!(
        adc.metric("adc_l4_flows_total", &[("listener", "capped")])
            .await,
        3.0
    );
    // Clients that have a flow keep it.
    let back = udp_exchange(&first[0], addr, b"still here").await;
    assert_eq!(back.as_deref(), Some(&b"still here"[..]));

    // Once the flows have been idle for the timeout, there is room again.
    metric_reaches(&adc, "adc_l4_flows_open", &open, 0.0).await;
    let back = udp_exchange(&flood[0], addr, b"my turn").await;
    assert_eq!(back.as_deref(), Some(&b"my turn"[..]));
    assert_eq!(
        adc.metric("adc_l4_flows_refused_total", &refused).await,
        20.0
    );
    let metrics = adc.metrics_text().await;
    for name in ["adc_l4_flows_refused_total", "adc_l4_flows_open"] {
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name}");
    }
}

#[tokio::test]
async fn udp_flows_end_with_their_listener_when_adc_shuts_down() {
    // A member that answers by hand, to reach the flow's own socket.
    let member = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let adc = Adc::start(&l4_config(
        "udp",
        &[member.local_addr().unwrap()],
        "\n[limits]\nidle_timeout = \"60s\"\n",
    ))
    .await;
    let addr = adc.running.listeners["l4"];
    let client = udp_client().await;
    let mut buf = vec![0u8; 65_535];

    client.send_to(b"hello", addr).await.unwrap();
    let (n, flow) = timeout(PATIENCE, member.recv_from(&mut buf))
        .await
        .expect("the datagram reaches the member")
        .unwrap();
    assert_eq!(&buf[..n], b"hello");
    member.connect(flow).await.unwrap();
    member.send(b"before").await.unwrap();
    let (n, from) = timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .expect("the flow relays the member's reply")
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"before"[..], addr));

    let Adc { running, dir: _dir } = adc;
    running.shutdown().await;

    // The flow's socket closes: the member's datagrams to it are refused
    // (ICMP port unreachable), instead of relayed for the idle minute.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let refused = match member.send(b"after").await {
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Ok(_) => matches!(
                timeout(Duration::from_millis(200), member.recv(&mut buf)).await,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
            ),
        };
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flow's socket was still open after shutdown"
        );
    }
}
