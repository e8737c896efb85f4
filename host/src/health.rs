//! Active health checks: probe every member of a pool that asks for it, in
//! the service's own protocol (a TCP connect, an HTTP request over the
//! pool's TLS and HTTP version, or a UDP datagram and its reply), and count
//! rises and falls.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::config::{Health, HealthKind};
use crate::pool::{Member, Pool, Upstream};

/// Start probing every member of `pool`. The probes stop when the pool is
/// dropped (a reload replaced it and no request holds it).
pub fn start(pool: &Arc<Pool>) {
    let Some(health) = pool.health.as_ref() else {
        return;
    };
    for member in &pool.members {
        let pool = Arc::downgrade(pool);
        let member = member.clone();
        let interval = health.interval;
        tokio::spawn(probe_loop(pool, member, interval));
    }
}

async fn probe_loop(pool: Weak<Pool>, member: Arc<Member>, interval: Duration) {
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let Some(health) = pool.health.as_ref() else {
            return;
        };
        let failure = match tokio::time::timeout(
            health.timeout,
            probe(health, &member, &pool.upstream),
        )
        .await
        {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(format!("no answer within {:?}", health.timeout)),
        };
        if let Some(reason) = &failure {
            tracing::debug!(pool = %pool.name, member = %member.name, %reason, "health probe failed");
        }
        let ok = failure.is_none();
        metrics::counter!("adc_health_checks_total", "pool" => pool.name.clone(), "member" => member.name.clone(), "result" => if ok { "pass" } else { "fail" }).increment(1);
        let healthy = member.healthy.load(Ordering::Relaxed);
        if ok {
            passes += 1;
            fails = 0;
            if !healthy && passes >= health.rise {
                member.healthy.store(true, Ordering::Relaxed);
                tracing::warn!(pool = %pool.name, member = %member.name, "member is up");
            }
        } else {
            fails += 1;
            passes = 0;
            if healthy && fails >= health.fall {
                let reason = failure.as_deref().unwrap_or_default();
                tracing::warn!(pool = %pool.name, member = %member.name, fails, %reason, "member is down");
                member.healthy.store(false, Ordering::Relaxed);
            }
        }
        metrics::gauge!("adc_member_healthy", "pool" => pool.name.clone(), "member" => member.name.clone())
            .set(if member.healthy.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
    }
}

/// One probe, made the way the pool reaches its members: from its source
/// address, and after a LOCAL PROXY header when it sends them.
async fn probe(health: &Health, member: &Member, upstream: &Upstream) -> Result<(), String> {
    if health.kind == HealthKind::Udp {
        return probe_udp(health, member, upstream.source).await;
    }
    let mut stream = crate::net::connect(member.address, upstream.source)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(version) = upstream.proxy_protocol {
        stream
            .write_all(&crate::proxy_protocol::encode_local(version))
            .await
            .map_err(|e| e.to_string())?;
    }
    if health.kind != HealthKind::Http {
        return Ok(());
    }
    // The pool's own protocol: TLS when it has TLS, and HTTP/2 when the
    // member agreed to it by ALPN, or over cleartext when the pool says so.
    match &upstream.tls {
        Some(tls) => {
            let (tls, h2) =
                crate::upstream::tls_connect(tls, health.host.as_deref(), stream, member.address)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
            probe_http(health, member, tls, h2, "https").await
        }
        None => probe_http(health, member, stream, upstream.http2, "http").await,
    }
}

/// Send the configured datagram and wait for a reply; a member whose port is
/// closed usually answers at once with an ICMP error, seen here as a failed
/// receive.
async fn probe_udp(health: &Health, member: &Member, source: Option<IpAddr>) -> Result<(), String> {
    let socket = crate::net::udp_connect(member.address, source)
        .await
        .map_err(|e| e.to_string())?;
    let payload = health.send.as_deref().unwrap_or_default();
    socket
        .send(payload.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_535];
    let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
    match &health.expect {
        Some(want) if !String::from_utf8_lossy(&buf[..n]).contains(want.as_str()) => {
            Err(format!("reply lacks {want:?}"))
        }
        _ => Ok(()),
    }
}

async fn probe_http<T>(
    health: &Health,
    member: &Member,
    io: T,
    h2: bool,
    scheme: &str,
) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let host = health
        .host
        .clone()
        .unwrap_or_else(|| member.address.to_string());
    let request = http::Request::builder()
        .method(health.method.as_str())
        .header(http::header::USER_AGENT, "adc-health-check");
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(io),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        // HTTP/2 carries the host as :authority.
        let request = request
            .uri(format!("{scheme}://{host}{}", health.path))
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = request
            .uri(&health.path)
            .header(http::header::HOST, host)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    if status < health.expect_status.0 || status > health.expect_status.1 {
        return Err(format!("status {status}"));
    }
    if let Some(want) = &health.expect_body {
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !String::from_utf8_lossy(&body).contains(want.as_str()) {
            return Err(format!("body lacks {want:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// A UDP server answering every datagram with `reply`.
    async fn answering(reply: &'static [u8]) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(reply, from).await;
            }
        });
        addr
    }

    fn udp_pool(member: SocketAddr) -> Pool {
        let text = format!(
            "members = [{{ address = \"{member}\" }}]\n\
             [health]\nkind = \"udp\"\nsend = \"ping\"\nexpect = \"pong\"\n"
        );
        Pool::new("p", toml::from_str(&text).unwrap()).unwrap()
    }

    async fn passes(pool: &Pool) -> bool {
        let health = pool.health.as_ref().unwrap();
        let probe = probe(health, &pool.members[0], &pool.upstream);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(()))
        )
    }

    #[tokio::test]
    async fn a_udp_probe_passes_only_on_a_reply_with_the_expected_text() {
        assert!(passes(&udp_pool(answering(b"pong!").await)).await);
        assert!(!passes(&udp_pool(answering(b"nope").await)).await);

        let closed = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert!(!passes(&udp_pool(addr)).await);
    }
}
