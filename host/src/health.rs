//! Active health checks: probe every member of a pool that asks for it, in
//! the service's own protocol, and count rises and falls.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::config::{Health, HealthKind};
use crate::pool::{Member, Pool};

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
        let ok = match tokio::time::timeout(health.timeout, probe(health, &member)).await {
            Ok(Ok(())) => true,
            Ok(Err(reason)) => {
                tracing::debug!(pool = %pool.name, member = %member.name, %reason, "health probe failed");
                false
            }
            Err(_) => false,
        };
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
                member.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(pool = %pool.name, member = %member.name, "member is down");
            }
        }
        metrics::gauge!("adc_member_healthy", "pool" => pool.name.clone(), "member" => member.name.clone())
            .set(if member.healthy.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
    }
}

async fn probe(health: &Health, member: &Member) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(member.address)
        .await
        .map_err(|e| e.to_string())?;
    if health.kind == HealthKind::Tcp {
        return Ok(());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let host = health
        .host
        .clone()
        .unwrap_or_else(|| member.address.to_string());
    let request = http::Request::builder()
        .method(health.method.as_str())
        .uri(&health.path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "adc-health-check")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
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
