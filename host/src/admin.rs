//! The management interface, on its own address: metrics, liveness and
//! readiness, a status document, member drain, reload.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::runtime::Shared;

pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    token: Option<String>,
    metrics: PrometheusHandle,
) {
    let token = token.map(Arc::<str>::from);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let token = token.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (shared, token, metrics) = (shared.clone(), token.clone(), metrics.clone());
                async move {
                    let response = route(&shared, token.as_deref(), &metrics, &req).await;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        content_type.parse().expect("static content types parse"),
    );
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    answer(status, "application/json", format!("{value:#}\n"))
}

/// Whether an `Authorization` value carries `token` as a bearer token. The
/// scheme is case-insensitive (RFC 9110); the token is compared in constant
/// time.
fn bearer_matches(given: Option<&http::HeaderValue>, token: &str) -> bool {
    let Some((scheme, value)) = given
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
    else {
        return false;
    };
    let value = value.trim_start().as_bytes();
    scheme.eq_ignore_ascii_case("bearer")
        && value.len() == token.len()
        && value
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn route(
    shared: &Arc<Shared>,
    token: Option<&str>,
    metrics: &PrometheusHandle,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = token.filter(|_| path != "/healthz") {
        if !bearer_matches(req.headers().get(http::header::AUTHORIZATION), token) {
            let mut refused = answer(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "a bearer token is required\n",
            );
            refused.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"adc\""),
            );
            return refused;
        }
    }
    // Exactly the documented paths: `/metrics/`, `//status` or a drain
    // with a trailing slash are other paths (404), not aliases.
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let Some(allowed) = methods_of(&segments) else {
        return answer(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    if !allowed.takes(req.method()) {
        let mut refused = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            format!("{} is not allowed here\n", req.method()),
        );
        refused
            .headers_mut()
            .insert(http::header::ALLOW, allowed.header());
        return refused;
    }
    match segments.as_slice() {
        ["healthz"] => answer(StatusCode::OK, "text/plain", "ok\n"),
        ["metrics"] => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        ["readyz"] if shared.draining.load(Ordering::Relaxed) => {
            answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        ["readyz"] => answer(StatusCode::OK, "text/plain", "ready\n"),
        ["status"] => json(StatusCode::OK, status(shared)),
        ["reload"] => match crate::serve::reload(shared).await {
            Ok(()) => json(StatusCode::OK, json!({"reloaded": true})),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"reloaded": false, "error": format!("{e:#}")}),
            ),
        },
        ["pools", pool, "members", member, action] => {
            let rt = shared.runtime.load();
            let Some(m) = rt.pools.get(*pool).and_then(|p| p.member(member)) else {
                return json(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no member {member:?} in pool {pool:?}")}),
                );
            };
            m.enabled.store(*action == "enable", Ordering::Relaxed);
            tracing::warn!(%pool, %member, action, "member changed by operator");
            json(
                StatusCode::OK,
                json!({"pool": pool, "member": member, "enabled": *action == "enable"}),
            )
        }
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// What an admin path is asked with: reads by GET (and HEAD, which hyper
/// answers without the body), changes by POST.
#[derive(Clone, Copy)]
enum Allowed {
    Get,
    Post,
}

impl Allowed {
    fn takes(self, method: &Method) -> bool {
        match self {
            Allowed::Get => method == Method::GET || method == Method::HEAD,
            Allowed::Post => method == Method::POST,
        }
    }

    /// The `Allow` header of a 405 answer.
    fn header(self) -> http::HeaderValue {
        http::HeaderValue::from_static(match self {
            Allowed::Get => "GET, HEAD",
            Allowed::Post => "POST",
        })
    }
}

/// What a path of the admin interface is asked with; `None` for a path
/// that is not one.
fn methods_of(segments: &[&str]) -> Option<Allowed> {
    match segments {
        ["healthz" | "readyz" | "metrics" | "status"] => Some(Allowed::Get),
        ["reload"] | ["pools", _, "members", _, "drain" | "enable"] => Some(Allowed::Post),
        _ => None,
    }
}

fn status(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    let pools: serde_json::Map<String, serde_json::Value> = rt
        .pools
        .iter()
        .map(|(name, pool)| {
            let members: Vec<_> = pool
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "name": m.name,
                        "address": m.address.to_string(),
                        "weight": m.weight,
                        "enabled": m.enabled.load(Ordering::Relaxed),
                        "healthy": m.healthy.load(Ordering::Relaxed),
                        "ejected_for_ms": pool.ejection_left(i).map(|d| d.as_millis() as u64),
                        "active": m.active.load(Ordering::Relaxed),
                    })
                })
                .collect();
            (
                name.clone(),
                json!({"method": pool.method.name(), "members": members}),
            )
        })
        .collect();
    let errors = shared
        .policy_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let policies: serde_json::Map<String, serde_json::Value> = shared
        .policies
        .load()
        .iter()
        .map(|(name, p)| {
            let loaded = p.loaded_at().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            (name.clone(), json!({"version": p.version(), "loaded_at_unix": loaded, "last_error": errors.get(name)}))
        })
        .collect();
    let listeners: Vec<_> = rt
        .listeners
        .iter()
        .map(|l| json!({"name": &*l.name, "routes": l.routes.len()}))
        .collect();
    let reload = shared
        .last_reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .map(|r| {
            let at =
                r.at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
            json!({
                "outcome": if r.error.is_some() { "refused" } else { "ok" },
                "at_unix": at,
                "last_error": r.error,
            })
        });
    json!({
        "listeners": listeners,
        "last_reload": reload,
        "pools": pools,
        "policies": policies,
        "inflight": shared.inflight.load(Ordering::Relaxed),
        "draining": shared.draining.load(Ordering::Relaxed),
    })
}
