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
        let shared = shared.clone();
        let name = name.clone();
        let proxy_from = proxy_from.clone();
        tokio::spawn(async move {
            if let Err(reason) =
                tcp_connection(&shared, &name, stream, peer, reached, &proxy_from).await
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
    let client_addr = client_address(&mut client, peer, proxy_from)
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
            _ => {
                pool.record_failure(index);
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

/// UDP: each client address is a flow, kept on one member while datagrams
/// keep coming (flow affinity) and forgotten after the idle timeout.
pub async fn serve_udp(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: UdpSocket,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().expect("a bound socket has an address");
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::default();
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
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let existing = {
            let flows = flows.lock().unwrap_or_else(|p| p.into_inner());
            flows.get(&client).map(|f| {
                f.last.store(now, Ordering::Relaxed);
                f.upstream.clone()
            })
        };
        let upstream = match existing {
            Some(u) => u,
            None => match new_flow(&shared, &name, &socket, client, local, &flows, started).await {
                Some(u) => u,
                None => continue,
            },
        };
        if let Err(e) = upstream.send(&buf[..n]).await {
            tracing::debug!(listener = %name, %client, error = %e, "UDP send to member failed");
        }
    }
}

async fn new_flow(
    shared: &Arc<Shared>,
    name: &str,
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    local: SocketAddr,
    flows: &Arc<Mutex<HashMap<SocketAddr, Flow>>>,
    started: Instant,
) -> Option<Arc<UdpSocket>> {
    let record = connection_record(name, ListenerKind::Udp, client, local, None, None, None);
    let admission = admit(shared, name, &record);
    if matches!(admission, Admission::Reject) {
        return None;
    }
    let pool = pool_for(shared, name, &admission)?;
    let idle = shared.runtime.load().limits.idle_timeout;
    let index = pool.select(Some(client.ip().to_string().as_bytes()), &[])?;
    let member = pool.members[index].clone();
    let upstream = Arc::new(
        crate::net::udp_connect(member.address, pool.upstream.source)
            .await
            .ok()?,
    );
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
    metrics::counter!("adc_l4_flows_total", "listener" => name.to_owned(), "pool" => pool.name.clone(), "member" => member.name.clone()).increment(1);

    // Replies go back to the client until the flow has been idle.
    let socket = socket.clone();
    let flows = flows.clone();
    let reply_from = upstream.clone();
    tokio::spawn(async move {
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
                Ok(Err(_)) => pool.record_failure(index),
                Err(_) => {}
            }
            let quiet = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                flows
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&client);
                return;
            }
        }
    });
    Some(upstream)
}
