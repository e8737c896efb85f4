//! L4 listeners: TCP connections and UDP flows balanced over a pool's
//! members with the pool's method, health and drain, bytes relayed as they
//! are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::net::Cidr;
use crate::policy::ListenerKind;
use crate::pool::Pool;
use crate::runtime::Shared;
use crate::server::{admit, client_address, connection_record, Admission};

/// The pool for a connection: the one a connection hook routed to, else the
/// listener's.
fn pool_for(shared: &Shared, listener: &str, admission: &Admission) -> Option<Arc<Pool>> {
    let rt = shared.runtime.load();
    let name = match admission {
        Admission::Route(pool) => pool.clone(),
        _ => rt.listener(listener)?.pool.clone()?,
    };
    rt.pools.get(&name).cloned()
}

/// Keeps a member's count of active connections.
struct Active(Arc<crate::pool::Member>);

impl Active {
    fn new(member: &Arc<crate::pool::Member>) -> Active {
        member.active.fetch_add(1, Ordering::Relaxed);
        Active(member.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn serve_tcp(
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: TcpListener,
    proxy_from: Arc<[Cidr]>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
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
        // The address the client reached: not the wildcard a listener on
        // 0.0.0.0 or [::] is bound to.
        let reached = stream.local_addr().unwrap_or(local);
        let worker_shared = shared.clone();
        let name = name.clone();
        let proxy_from = proxy_from.clone();
        shared
            .workers
            .serve(stream, move |stream, _drain| async move {
                if let Err(reason) =
                    tcp_connection(&worker_shared, &name, stream, peer, reached, &proxy_from).await
                {
                    tracing::debug!(listener = %name, %peer, %reason, "TCP connection not relayed");
                }
            });
    }
}

async fn tcp_connection(
    shared: &Arc<Shared>,
    name: &str,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    proxy_from: &[Cidr],
) -> Result<(), String> {
    let (client_addr, local) = client_address(&mut client, peer, local, proxy_from)
        .await
        .ok_or("bad PROXY header")?;
    let record = connection_record(
        name,
        ListenerKind::Tcp,
        client_addr,
        local,
        None,
        None,
        None,
    );
    let admission = admit(shared, name, &record);
    if matches!(admission, Admission::Reject) {
        return Err("rejected by policy".into());
    }
    let pool = pool_for(shared, name, &admission).ok_or("no pool")?;
    let (connect_timeout, idle_timeout, retries) = {
        let rt = shared.runtime.load();
        (
            rt.limits.connect_timeout,
            rt.limits.idle_timeout,
            rt.limits.retries,
        )
    };

    let key = client_addr.ip().to_string();
    let mut tried = Vec::new();
    for _ in 0..=retries {
        let Some(index) = pool.select(Some(key.as_bytes()), &tried) else {
            break;
        };
        tried.push(index);
        let member = pool.members[index].clone();
        let _active = Active::new(&member);
        let connected = tokio::time::timeout(
            connect_timeout,
            crate::net::connect(member.address, pool.upstream.source),
        )
        .await;
        let mut backend = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                pool.record_failure(index, &e);
                continue;
            }
            Err(_) => {
                pool.record_failure(index, &"connect timed out");
                continue;
            }
        };
        pool.record_success(index);
        if let Some(version) = pool.upstream.proxy_protocol {
            let header = crate::proxy_protocol::encode(version, client_addr, local);
            backend
                .write_all(&header)
                .await
                .map_err(|e| e.to_string())?;
        }
        metrics::counter!("adc_l4_connections_total", "listener" => name.to_owned(), "pool" => pool.name.clone(), "member" => member.name.clone()).increment(1);
        relay(client, backend, idle_timeout).await;
        return Ok(());
    }
    Err(format!(
        "no member of pool {:?} could be reached",
        pool.name
    ))
}

/// Copy bytes both ways until both sides have finished, or until nothing
/// moved in either direction for `idle`. A side that ends its sending
/// (half-close) has that end passed on; the other direction goes on. An
/// error either way (a reset) ends both, closing the other side too.
pub async fn relay(a: TcpStream, b: TcpStream, idle: Duration) {
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let both = async {
        let _ = tokio::try_join!(
            pump(&mut ar, &mut bw, &last, started),
            pump(&mut br, &mut aw, &last, started)
        );
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle.min(Duration::from_secs(1))).await;
            let quiet = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    tokio::select! {
        _ = both => {}
        _ = watchdog => {}
    }
}

async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    last: &AtomicU64,
    started: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        last.store(
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

struct Flow {
    upstream: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

/// Why a datagram from a client without a flow started none (the `reason`
/// label of `adc_l4_flows_refused_total`).
#[derive(Clone, Copy)]
enum Refused {
    /// The listener already has `limits.max_udp_flows` flows.
    Limit,
    /// A connection hook rejected the client.
    Policy,
    /// No pool, or no member of it up.
    NoMember,
    /// No socket towards the member (for example the open-file limit).
    Socket,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Limit => "limit",
            Refused::Policy => "policy",
            Refused::NoMember => "no_member",
            Refused::Socket => "socket",
        }
    }
}

/// UDP: each client address is a flow, kept on one member while datagrams
/// keep coming (flow affinity) and forgotten after the idle timeout. At most
/// `limits.max_udp_flows` flows at once: a datagram that would start one
/// more is dropped and counted. Each flow's task belongs to the listener:
/// when the listener stops (shutdown), every flow ends with it.
pub async fn serve_udp(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: UdpSocket,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().expect("a bound socket has an address");
    let flows: Flows = Arc::default();
    // Dropped when this function returns or its task is aborted, which
    // aborts every flow task still running.
    let mut tasks = tokio::task::JoinSet::new();
    let open = metrics::gauge!("adc_l4_flows_open", "listener" => name.to_string());
    let started = Instant::now();
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, client) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(listener = %name, error = %e, "UDP receive failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // Forget the tasks of flows that ended.
        while tasks.try_join_next().is_some() {}
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (existing, count) = {
            let flows = flows.lock().unwrap_or_else(|p| p.into_inner());
            let existing = flows.get(&client).map(|f| {
                f.last.store(now, Ordering::Relaxed);
                f.upstream.clone()
            });
            (existing, flows.len())
        };
        let upstream = match existing {
            Some(u) => u,
            None => {
                let started_flow = if count >= shared.runtime.load().limits.max_udp_flows {
                    Err(Refused::Limit)
                } else {
                    let place = FlowPlace {
                        shared: &shared,
                        name: &name,
                        socket: &socket,
                        local,
                        flows: &flows,
                        open: &open,
                        started,
                    };
                    new_flow(&place, client, &mut tasks).await
                };
                match started_flow {
                    Ok(u) => u,
                    Err(reason) => {
                        metrics::counter!("adc_l4_flows_refused_total", "listener" => name.to_string(), "reason" => reason.label())
                            .increment(1);
                        tracing::debug!(listener = %name, %client, reason = reason.label(), "datagram dropped: no flow started");
                        continue;
                    }
                }
            }
        };
        if let Err(e) = upstream.send(&buf[..n]).await {
            tracing::debug!(listener = %name, %client, error = %e, "UDP send to member failed");
        }
    }
}

/// What a new flow needs of its listener.
struct FlowPlace<'a> {
    shared: &'a Arc<Shared>,
    name: &'a str,
    socket: &'a Arc<UdpSocket>,
    local: SocketAddr,
    flows: &'a Flows,
    open: &'a metrics::Gauge,
    started: Instant,
}

/// Takes a flow out of its listener's table and count when its task ends,
/// by itself (idle) or aborted with the listener.
struct FlowEntry {
    flows: Flows,
    client: SocketAddr,
    open: metrics::Gauge,
}

impl Drop for FlowEntry {
    fn drop(&mut self) {
        self.flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.client);
        self.open.decrement(1.0);
    }
}

async fn new_flow(
    place: &FlowPlace<'_>,
    client: SocketAddr,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Arc<UdpSocket>, Refused> {
    let FlowPlace {
        shared,
        name,
        socket,
        local,
        flows,
        open,
        started,
    } = place;
    let record = connection_record(name, ListenerKind::Udp, client, *local, None, None, None);
    let admission = admit(shared, name, &record);
    if matches!(admission, Admission::Reject) {
        return Err(Refused::Policy);
    }
    let pool = pool_for(shared, name, &admission).ok_or(Refused::NoMember)?;
    let idle = shared.runtime.load().limits.idle_timeout;
    let index = pool
        .select(Some(client.ip().to_string().as_bytes()), &[])
        .ok_or(Refused::NoMember)?;
    let member = pool.members[index].clone();
    let upstream = Arc::new(
        crate::net::udp_connect(member.address, pool.upstream.source)
            .await
            .map_err(|_| Refused::Socket)?,
    );
    let started = *started;
    let last = Arc::new(AtomicU64::new(
        u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
    ));
    flows.lock().unwrap_or_else(|p| p.into_inner()).insert(
        client,
        Flow {
            upstream: upstream.clone(),
            last: last.clone(),
        },
    );
    open.increment(1.0);
    let entry = FlowEntry {
        flows: (*flows).clone(),
        client,
        open: (*open).clone(),
    };
    metrics::counter!("adc_l4_flows_total", "listener" => name.to_string(), "pool" => pool.name.clone(), "member" => member.name.clone()).increment(1);

    // Replies go back to the client until the flow has been idle.
    let socket = (*socket).clone();
    let reply_from = upstream.clone();
    tasks.spawn(async move {
        let _entry = entry;
        let _active = Active::new(&member);
        let mut buf = vec![0u8; 65_535];
        loop {
            match tokio::time::timeout(
                Duration::from_millis(250).min(idle),
                reply_from.recv(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => {
                    last.store(
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    let _ = socket.send_to(&buf[..n], client).await;
                }
                Ok(Err(e)) => pool.record_failure(index, &e),
                Err(_) => {}
            }
            let quiet = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    });
    Ok(upstream)
}
