//! The HTTP request pipeline: route, run the policy chain, choose a member,
//! forward with retries, run the response hooks, answer.
//!
//! Every listener kind (cleartext HTTP/1.1 and HTTP/2 here; TLS and HTTP/3
//! when they come) hands its requests to [`handle`].

mod delivery;
mod hop;
pub(crate) mod requests;
mod stream;
mod upload;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::error::ProxyError;
use crate::policy::{Backend, BodyStream, Decision, Exchange, Hook, PolicyRef, Reply, Transaction};
use crate::pool::{HashKey, Pool};
use crate::runtime::{RouteRt, Shared};
use crate::upstream;

/// The error of a body in the pipeline. A named type rather than a boxed
/// trait object: hyper's bounds on boxed errors defeat the compiler's `Send`
/// check of the request future.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BoxError(#[from] pub Box<dyn std::error::Error + Send + Sync>);
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Where the connection came from.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    /// The client: the TCP peer, or the address a trusted PROXY header gave.
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// The verified client certificate's identity, with mutual TLS.
    pub client_certificate: Option<Arc<crate::tls::ClientIdentity>>,
    /// `Alt-Svc` to add to every response (HTTP/3 on the same port).
    pub alt_svc: Option<HeaderValue>,
    pub traffic: Traffic,
    /// The requests open on an HTTP/2 connection, for its drain.
    pub streams: Option<Arc<crate::server::Streams>>,
    /// The client address as forwarded headers spell it, written at the
    /// connection's first request (after any PROXY header set `peer`).
    pub forwarding: std::sync::OnceLock<hop::Forwarding>,
}

impl ConnInfo {
    pub fn forwarding(&self) -> &hop::Forwarding {
        self.forwarding
            .get_or_init(|| hop::Forwarding::new(self.peer.ip()))
    }
}

/// Body bytes received from and sent to clients, per listener: handles made
/// once per connection.
#[derive(Clone, Debug)]
pub struct Traffic {
    pub received: metrics::Counter,
    pub sent: metrics::Counter,
    /// `adc_request_duration_seconds` of the listener.
    pub duration: metrics::Histogram,
}

impl Traffic {
    pub fn for_listener(listener: &str) -> Traffic {
        Traffic {
            received: metrics::counter!("adc_client_received_bytes_total", "listener" => listener.to_owned()),
            sent: metrics::counter!("adc_client_sent_bytes_total", "listener" => listener.to_owned()),
            duration: metrics::histogram!("adc_request_duration_seconds", "listener" => listener.to_owned()),
        }
    }
}

/// A body that counts the data bytes passing through it.
struct Counted {
    inner: Body,
    counter: metrics::Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.increment(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn counted(body: Body, counter: &metrics::Counter) -> Body {
    Counted {
        inner: body,
        counter: counter.clone(),
    }
    .boxed_unsync()
}

/// The client connection is closed without an answer (a policy's `reject`).
#[derive(Debug, thiserror::Error)]
#[error("rejected by policy")]
pub struct Rejected;

fn box_error(e: hyper::Error) -> BoxError {
    BoxError(Box::new(e))
}

/// A request as hyper's servers hand it over, with the pipeline's body.
pub fn from_hyper(req: Request<Incoming>) -> Request<Body> {
    req.map(|b| b.map_err(box_error).boxed_unsync())
}

/// The future of one request, boxed so that its `Send` bound is checked here
/// rather than through hyper's generic service bounds.
pub type HandleFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Rejected>> + Send>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// What the chain decided for the request.
enum Flow {
    Continue,
    Answer(Response<Body>),
    Reject,
}

/// A policy's own answer. What HTTP cannot carry is left out, and each
/// such part counted and logged: a header the host manages or that is not
/// valid, a body on a status that has none. A status that is not a final
/// one (1xx, or outside 100-999) gives 500 instead.
fn reply_response(policy: &PolicyRef, hook: Hook, reply: Reply) -> Response<Body> {
    let status = match StatusCode::from_u16(reply.status) {
        Ok(s) if !s.is_informational() => s,
        _ => {
            invalid_answer(policy, hook, &format_args!("status {}", reply.status));
            return ProxyError::Policy(
                policy.name().to_owned(),
                format!(
                    "answered with status {}, which is not a final status",
                    reply.status
                ),
            )
            .into_response();
        }
    };
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    if bodiless && !reply.body.is_empty() {
        invalid_answer(policy, hook, &format_args!("a body with status {status}"));
    }
    let body = if bodiless { Vec::new() } else { reply.body };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    for h in reply.headers {
        if adc_sdk::text::is_managed_header(&h.name) {
            invalid_answer(
                policy,
                hook,
                &format_args!("header {:?}, which adc manages", h.name),
            );
            continue;
        }
        match (
            header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => invalid_answer(
                policy,
                hook,
                &format_args!("header {:?}, not valid", h.name),
            ),
        }
    }
    response
}

/// A policy's redirect; one whose target cannot be a Location value gives
/// 500, counted and logged.
fn redirect_response(
    policy: &PolicyRef,
    hook: Hook,
    status: u16,
    location: &str,
) -> Response<Body> {
    let Ok(value) = HeaderValue::from_str(location) else {
        invalid_answer(policy, hook, &format_args!("redirect target {location:?}"));
        return ProxyError::Policy(
            policy.name().to_owned(),
            "redirected to a target that is not a valid Location".into(),
        )
        .into_response();
    };
    let status = match status {
        301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
        _ => StatusCode::FOUND,
    };
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, value);
    response
}

/// Count and log a part of a policy's answer that HTTP cannot carry.
fn invalid_answer(policy: &PolicyRef, hook: Hook, what: &dyn std::fmt::Display) {
    metrics::counter!("adc_policy_invalid_answers_total", "policy" => policy.name().to_owned(), "hook" => hook.name())
        .increment(1);
    tracing::warn!(
        policy = policy.name(),
        hook = hook.name(),
        "answer left out {what}"
    );
}

/// Count a decision a hook may not return; it is taken as `continue`.
fn misplaced(policy: &PolicyRef, hook: Hook) {
    metrics::counter!("adc_policy_misplaced_decisions_total", "policy" => policy.name().to_owned(), "hook" => hook.name())
        .increment(1);
    tracing::warn!(
        policy = policy.name(),
        hook = hook.name(),
        "decision not allowed in this hook; continuing"
    );
}

/// State of one transaction as it moves through the pipeline.
struct Txn {
    chain: Vec<PolicyRef>,
    pool: String,
    member: Option<String>,
    ex: Box<Exchange>,
    started: quanta::Instant,
    /// Where in the chain the policies are that asked to stream the
    /// response body.
    streams: Vec<usize>,
    /// The pool and the place in it of the member tried last.
    attempted: Option<(Arc<Pool>, usize)>,
    /// How long the member that answered took to send its head.
    upstream_ns: Option<u64>,
    /// What went wrong last, for the end hooks.
    error: Option<String>,
}

impl Txn {
    /// Run one hook across the chain; a terminal decision stops the chain.
    fn run(
        &mut self,
        hook: Hook,
        backend: Option<&Backend>,
        reason: &str,
    ) -> Result<Flow, ProxyError> {
        for i in 0..self.chain.len() {
            let policy = self.chain[i].clone();
            if !policy.implements(hook) {
                continue;
            }
            if hook == Hook::ResponseHeaders {
                self.ex.body_stream = stream::may_stream(&self.ex);
            }
            let ex = std::mem::replace(&mut self.ex, placeholder());
            let (ex, result) = match (hook, backend) {
                (Hook::RequestHeaders, _) => policy.on_request_headers(ex),
                (Hook::RequestBody, _) => policy.on_request_body(ex),
                (Hook::BackendSelected, Some(b)) => policy.on_backend_selected(ex, b),
                (Hook::BackendFailed, Some(b)) => policy.on_backend_failed(ex, b, reason),
                (Hook::ResponseHeaders, _) => policy.on_response_headers(ex),
                (Hook::ResponseBody, _) => policy.on_response_body(ex),
                _ => (ex, Ok(Decision::Continue)),
            };
            self.ex = ex;
            if std::mem::take(&mut self.ex.body_stream) == BodyStream::Asked {
                self.streams.push(i);
            }
            let decision = match result {
                Ok(d) => d,
                Err(_) if policy.fail_open() => continue,
                Err(fault) => {
                    return Err(ProxyError::Policy(
                        policy.name().to_owned(),
                        fault.to_string(),
                    ))
                }
            };
            let response_phase = matches!(hook, Hook::ResponseHeaders | Hook::ResponseBody);
            match decision {
                Decision::Continue => {}
                Decision::Respond(reply) => {
                    return Ok(Flow::Answer(reply_response(&policy, hook, reply)))
                }
                Decision::Redirect(r) if !response_phase => {
                    return Ok(Flow::Answer(redirect_response(
                        &policy,
                        hook,
                        r.status,
                        &r.location,
                    )))
                }
                Decision::Route(r) if !response_phase => {
                    self.pool = r.pool;
                    self.member = r.member;
                }
                Decision::Reject if matches!(hook, Hook::RequestHeaders) => {
                    return Ok(Flow::Reject)
                }
                _ => misplaced(&policy, hook),
            }
        }
        Ok(Flow::Continue)
    }

    fn wants(&self, hook: Hook) -> bool {
        self.chain.iter().any(|p| p.implements(hook))
    }

    /// Run the end hooks of the chain.
    fn end(&mut self, status: u16) {
        if !self.wants(Hook::End) {
            return;
        }
        let summary = Transaction {
            status,
            duration_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            upstream_ns: self.upstream_ns,
            backend: self.attempted.as_ref().map(|(pool, i)| Backend {
                pool: pool.name.clone(),
                member: pool.members[*i].name.clone(),
                address: pool.members[*i].address.to_string(),
            }),
            error: self.error.clone(),
        };
        for policy in self.chain.clone() {
            if policy.implements(Hook::End) {
                let ex = std::mem::replace(&mut self.ex, placeholder());
                let (ex, _) = policy.on_end(ex, &summary);
                self.ex = ex;
            }
        }
    }
}

impl Txn {
    /// End the transaction with the answer to `error`: end hooks see why.
    fn fail(mut self, error: ProxyError) -> Response<Body> {
        self.error = Some(error.to_string());
        let response = error.into_response();
        self.end(response.status().as_u16());
        response
    }
}

/// An empty exchange that stands in while the real one is lent to a policy.
fn placeholder() -> Box<Exchange> {
    let (parts, ()) = Request::new(()).into_parts();
    Box::new(Exchange::new(parts, IpAddr::from([0, 0, 0, 0]), false))
}

fn route_for<'a>(routes: &'a [RouteRt], host: Option<&str>, path: &str) -> Option<&'a RouteRt> {
    routes.iter().find(|r| r.matches(host, path))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn hash_value(pool: &Pool, ex: &Exchange) -> Option<Vec<u8>> {
    match pool.hash_key.as_ref()? {
        HashKey::ClientIp => Some(ex.client_ip.to_string().into_bytes()),
        HashKey::Header(name) => ex.request.headers.get(name).map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => {
            crate::policy::cookie(&ex.request.headers, name).map(String::into_bytes)
        }
    }
}

/// Where a request went, for the labels of its metrics: empty until known
/// (no route matched, or a policy answered before a member was chosen).
#[derive(Default)]
struct Served {
    route: Option<Arc<str>>,
    /// The pool and the place in it of the member tried last.
    attempted: Option<(Arc<Pool>, usize)>,
    /// The member that answered.
    chosen: Option<delivery::Answered>,
}

/// Serve one client request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Body>,
) -> Result<Response<Body>, Rejected> {
    // The cycle counter: cheaper than the system clock for a duration.
    let started = quanta::Instant::now();
    let http1 = req.version() <= Version::HTTP_11;
    let method = req.method().clone();
    let inflight = crate::runtime::Tally::enter(&shared.inflight);
    let stream = conn.streams.as_ref().map(crate::server::Streams::open);
    let mut served = Served::default();
    let req = req.map(|b| counted(b, &conn.traffic.received));
    let result = pipeline(&shared, &conn, req, started, &mut served).await;
    drop(inflight);
    let mut response = match result {
        Ok(r) => r,
        Err(Pipeline::Reject) => return Err(Rejected),
        Err(Pipeline::Answer(r)) => *r,
        Err(Pipeline::Error(e)) => e.into_response(),
    };
    if let Some(alt_svc) = &conn.alt_svc {
        response
            .headers_mut()
            .insert(header::ALT_SVC, alt_svc.clone());
    }
    // Once shutdown has begun, an HTTP/1 answer is its connection's last
    // (see `serve::Running::shutdown`): the client learns it before the close.
    if http1
        && shared.draining.load(Ordering::Relaxed)
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(
        response.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) && !response.body().is_end_stream()
    {
        // A policy set a status that has no body: the backend's goes.
        *response.body_mut() = empty();
        if response.status() == StatusCode::NO_CONTENT {
            response.headers_mut().remove(header::CONTENT_LENGTH);
        }
    }
    let status = response.status();
    let origin = delivery::Origin {
        listener: conn.listener.clone(),
        member: served.chosen.take(),
        stream,
    };
    let response =
        response.map(|b| delivery::watch(b, &conn.traffic.sent, &method, status, origin));
    let (pool, member) = served.attempted.as_ref().map_or(("", ""), |(p, i)| {
        (p.name.as_str(), p.members[*i].name.as_str())
    });
    requests::count(
        &conn.listener,
        served.route.as_deref().unwrap_or_default(),
        pool,
        member,
        response.status().as_u16(),
    );
    conn.traffic
        .duration
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

enum Pipeline {
    Reject,
    /// A policy answered from a backend hook.
    Answer(Box<Response<Body>>),
    Error(ProxyError),
}

impl From<ProxyError> for Pipeline {
    fn from(e: ProxyError) -> Self {
        Pipeline::Error(e)
    }
}

async fn pipeline(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<Body>,
    started: quanta::Instant,
    served: &mut Served,
) -> Result<Response<Body>, Pipeline> {
    let rt = shared.runtime.load_full();
    let listener = rt
        .listener(&conn.listener)
        .ok_or_else(|| ProxyError::BadRequest("listener gone".into()))?;

    let (mut parts, body) = req.into_parts();
    // HTTP/1.1 heads far over the limit are refused by hyper's parser (and
    // counted by `server`), but its bound is loose: the rest are refused
    // here. An HTTP/2 one over hyper's limit is refused by the h2 crate,
    // which tells no one. That limit is set above this one (see
    // `server::http_builder`), so that most refusals are made, and counted,
    // here.
    let size = if parts.version >= Version::HTTP_2 {
        hop::header_list_size(&parts)
    } else {
        hop::head_size(&parts)
    };
    if size > rt.limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(size, rt.limits.max_header_bytes).into());
    }
    hop::check_transfer_coding(&parts.headers)?;
    if parts.method == http::Method::CONNECT {
        // A reverse proxy opens no tunnel on a client's request.
        return Err(ProxyError::MethodNotImplemented(parts.method).into());
    }
    hop::check_host(&mut parts, conn).map_err(|e| ProxyError::BadRequest(e.into()))?;
    let upgrade = hop::upgrade_requested(&parts);
    let client_ip = hop::prepare_request(&mut parts, conn, rt.limits.trusted_hops);
    let mut ex = Box::new(Exchange::new(parts, client_ip, conn.tls));
    ex.client_certificate = conn.client_certificate.clone();

    // The forwarded path is the normalised one: policies match what the
    // backend receives. Most paths are normal already, and cost nothing.
    let raw = ex.request.uri.path();
    // `OPTIONS *` asks about the server itself: its target is not a path.
    let asterisk = raw == "*";
    if !asterisk && !adc_sdk::text::path_is_normal(raw) {
        let path = adc_sdk::text::normalize_path(raw);
        if path != raw {
            let target = match ex.request.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            ex.set_uri(&target)
                .map_err(|_| ProxyError::BadRequest("invalid path".into()))?;
        }
    }
    let host = ex.host_lowercase();
    // `OPTIONS *` goes where a request for "/" goes.
    let path = if asterisk { "/" } else { ex.request.uri.path() };
    let route =
        route_for(&listener.routes, host.as_deref(), path).ok_or_else(|| ProxyError::NoRoute {
            host: host.as_deref().unwrap_or_default().to_owned(),
            path: ex.request.uri.path().to_owned(),
        })?;
    served.route = Some(route.name.clone());

    let chain: Vec<PolicyRef> = {
        let policies = shared.policies.load();
        route
            .policies
            .iter()
            .filter_map(|n| policies.get(n).cloned())
            .collect()
    };
    let mut txn = Txn {
        chain,
        pool: route.pool.clone(),
        member: None,
        ex,
        started,
        streams: Vec::new(),
        attempted: None,
        upstream_ns: None,
        error: None,
    };
    // From here on a failure still runs the end hooks (`Txn::fail`).
    macro_rules! or_fail {
        ($result:expr) => {
            match $result {
                Ok(v) => v,
                Err(e) => return Ok(txn.fail(e)),
            }
        };
    }

    match or_fail!(txn.run(Hook::RequestHeaders, None, "")) {
        Flow::Continue => {}
        Flow::Answer(r) => return Ok(finish(txn, r)),
        Flow::Reject => return Err(Pipeline::Reject),
    }

    // The request body: buffered only when a policy asks for it.
    let mut body: Option<Body> = Some(body);
    if txn.wants(Hook::RequestBody) {
        let limit = txn
            .chain
            .iter()
            .map(|p| p.registration().request_body_limit as usize)
            .max()
            .unwrap_or(0);
        let incoming = body.take().expect("body is present before buffering");
        // A request without a body (most GETs) is sent on without one
        // unless a policy gave it one.
        let bodiless = incoming.is_end_stream();
        let bytes = or_fail!(collect_limited(incoming, limit).await);
        txn.ex.request_body = Some(bytes);
        let flow = or_fail!(txn.run(Hook::RequestBody, None, ""));
        let bytes = txn.ex.request_body.take().unwrap_or_default();
        if !(bodiless && bytes.is_empty()) {
            hop::set_content_length(&mut txn.ex.request.headers, bytes.len());
        }
        body = Some(full(bytes));
        match flow {
            Flow::Continue => {}
            Flow::Answer(r) => return Ok(finish(txn, r)),
            Flow::Reject => return Err(Pipeline::Reject),
        }
    }

    let body = body.unwrap_or_else(empty);
    let response = match forward(&rt, &mut txn, body, upgrade, served).await {
        Ok(r) => r,
        Err(Pipeline::Answer(r)) => return Ok(finish(txn, *r)),
        Err(Pipeline::Error(e)) => return Ok(txn.fail(e)),
        Err(e) => return Err(e),
    };
    let (mut parts, upstream_body) = response.into_parts();
    hop::strip_response(
        &mut parts.headers,
        parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    txn.ex.response = Some(parts);

    match or_fail!(txn.run(Hook::ResponseHeaders, None, "")) {
        Flow::Answer(r) => return Ok(finish(txn, r)),
        Flow::Continue | Flow::Reject => {}
    }

    let mut body = upstream_body;
    // A response to HEAD, or with a status that has no body, has nothing
    // to buffer, and its Content-Length stays the backend's.
    let bodiless = txn.ex.request.method == Method::HEAD
        || txn.ex.response.as_ref().is_some_and(|p| {
            p.status.is_informational()
                || matches!(p.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        });
    if txn.wants(Hook::ResponseBody) && !bodiless {
        let limit = txn
            .chain
            .iter()
            .map(|p| p.registration().response_body_limit as usize)
            .max()
            .unwrap_or(0);
        let known = body
            .size_hint()
            .exact()
            .and_then(|n| usize::try_from(n).ok());
        if known.is_some_and(|n| n <= limit) {
            let bytes = or_fail!(body.collect().await.map_err(|e| {
                // Cut before the client saw a byte: it gets a 502, and
                // the member's checks a failure, unless the client's
                // own body failure cut it.
                match served.chosen.take() {
                    Some(m) if m.client_failed() => ProxyError::RequestBody(e.to_string()),
                    Some(m) if m.client_stalled() => ProxyError::RequestBodyTimeout(e.to_string()),
                    Some(m) => {
                        m.pool.record_failure(m.index, &e);
                        ProxyError::Upstream("response body".into(), e.to_string())
                    }
                    None => ProxyError::Upstream("response body".into(), e.to_string()),
                }
            }))
            .to_bytes();
            txn.ex.response_body = Some(bytes);
            let flow = or_fail!(txn.run(Hook::ResponseBody, None, ""));
            let bytes = txn.ex.response_body.take().unwrap_or_default();
            if let Some(parts) = txn.ex.response.as_mut() {
                hop::set_content_length(&mut parts.headers, bytes.len());
            }
            body = full(bytes);
            if let Flow::Answer(r) = flow {
                return Ok(finish(txn, r));
            }
        }
    }
    if !txn.streams.is_empty() {
        return Ok(stream::respond(txn, body));
    }

    let parts = txn
        .ex
        .response
        .take()
        .expect("response parts are in the exchange until sent");
    let response = Response::from_parts(parts, body);
    Ok(finish(txn, response))
}

/// Run end hooks (when a policy has one) and hand the response over.
fn finish(mut txn: Txn, response: Response<Body>) -> Response<Body> {
    txn.end(response.status().as_u16());
    response
}

async fn collect_limited(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.is::<http_body_util::LengthLimitError>()
                || e.downcast_ref::<BoxError>()
                    .is_some_and(|b| b.0.is::<http_body_util::LengthLimitError>()) =>
        {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(e) => Err(ProxyError::BadRequest(format!("reading request body: {e}"))),
    }
}

/// Choose a member and send the request, retrying on another member when
/// that is safe: the request was never sent (connect failure, a pooled
/// connection found closed), or it is idempotent with no body.
async fn forward(
    rt: &crate::runtime::Runtime,
    txn: &mut Txn,
    body: Body,
    upgrade: bool,
    served: &mut Served,
) -> Result<Response<Body>, Pipeline> {
    let limits = &rt.limits;
    let body_is_empty = body.is_end_stream();
    // Watched, so that the client's faults are told from the member's.
    let stall = upload::stall_threshold(limits.header_timeout);
    let (body, mut upload) = upload::Upload::watch(body, stall);
    let mut body = Some(body);
    // The members tried for this request: a few, held in place.
    let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
    let mut reroutes = 0;
    let mut fresh = false;
    let mut attempts = 0;
    let max_attempts = limits.retries + 1;
    let mut last_error: Option<ProxyError> = None;

    while attempts < max_attempts {
        let pool = rt
            .pools
            .get(&txn.pool)
            .ok_or_else(|| ProxyError::UnknownPool(txn.pool.clone()))?
            .clone();
        let hash = hash_value(&pool, &txn.ex);
        let now = pool.now_ms();
        let wanted = txn
            .member
            .as_deref()
            .and_then(|m| pool.members.iter().position(|x| x.name == m))
            .filter(|&i| pool.members[i].available(now) && !tried.contains(&i));
        let Some(index) = wanted.or_else(|| pool.select(hash.as_deref(), &tried)) else {
            return Err(last_error.unwrap_or_else(|| nothing_to_pick(&pool)).into());
        };
        let member = pool.members[index].clone();
        tried.push(index);
        attempts += 1;
        // What policies are told of the member; made only for them.
        let backend = || Backend {
            pool: pool.name.clone(),
            member: member.name.clone(),
            address: member.address.to_string(),
        };

        if txn.wants(Hook::BackendSelected) {
            let before = (txn.pool.clone(), txn.member.clone());
            match txn.run(Hook::BackendSelected, Some(&backend()), "")? {
                Flow::Answer(r) => return Err(Pipeline::Answer(Box::new(r))),
                Flow::Reject => return Err(Pipeline::Reject),
                Flow::Continue => {}
            }
            if (txn.pool.clone(), txn.member.clone()) != before {
                // A policy may choose again, a few times: one that re-routes
                // on every choice must not hold the worker forever.
                if reroutes < MAX_REROUTES {
                    reroutes += 1;
                    tried.clear();
                    attempts -= 1;
                    continue;
                }
                let (pool_name, member_name) = before;
                txn.pool = pool_name;
                txn.member = member_name;
                metrics::counter!("adc_policy_reroutes_refused_total", "pool" => pool.name.clone())
                    .increment(1);
                tracing::warn!(pool = %pool.name, "policies re-routed more than {MAX_REROUTES} times; sending to the member chosen last");
            }
        }

        served.attempted = Some((pool.clone(), index));
        txn.attempted = Some((pool.clone(), index));
        member.active.fetch_add(1, Ordering::Relaxed);
        let _active = ActiveGuard(member.clone());
        let attempt_started = quanta::Instant::now();
        let key = upstream::Key {
            address: member.address,
            sni: pool
                .upstream
                .tls
                .as_ref()
                .map(|_| txn.ex.host().unwrap_or_default()),
        };
        let how = upstream::Connect {
            upstream: &pool.upstream,
            connect_timeout: limits.connect_timeout,
            idle_timeout: limits.idle_timeout,
            fresh: std::mem::take(&mut fresh),
        };
        let mut conn = match upstream::checkout(key, &how).await {
            Ok(c) => c,
            Err(e) => {
                pool.record_failure(index, &e);
                last_error = Some(ProxyError::Connect(e.to_string()));
                if let Some(end) = backend_failed(txn, backend, &e.to_string()) {
                    return Err(end);
                }
                continue;
            }
        };

        let mut request = upstream_request(&txn.ex, body.take().unwrap_or_else(empty), upgrade);
        if let upstream::Sender::Http2(_) = conn.sender {
            // HTTP/2 carries the target as :scheme and :authority.
            let scheme = if pool.upstream.tls.is_some() {
                "https"
            } else {
                "http"
            };
            // :authority carries what Host did, port included.
            let authority = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map_or_else(|| member.address.to_string(), str::to_owned);
            let target = request
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            if let Ok(uri) = format!("{scheme}://{authority}{target}").parse() {
                *request.uri_mut() = uri;
            }
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
        }
        let sent = tokio::time::timeout(limits.header_timeout, conn.sender.try_send(request)).await;
        match sent {
            Ok(Ok(mut response)) => {
                let took = attempt_started.elapsed();
                pool.upstream_duration.record(took.as_secs_f64());
                txn.upstream_ns = Some(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                // A success is recorded once the body has been delivered
                // whole (see `delivery`): a member that dies mid-body is
                // failing, however good its heads. A 5xx given up on a
                // client's body that failed or stalled (a backend's own
                // read timeout) says nothing of the member; the client
                // still gets it.
                let counted = response.status().is_server_error() && pool.counts_5xx();
                let excused = counted && upload::client_at_fault(upload.as_ref());
                let failed = counted && !excused;
                if failed {
                    pool.record_failure(index, &format_args!("status {}", response.status()));
                }
                served.chosen = Some(delivery::Answered {
                    pool: pool.clone(),
                    index,
                    failed,
                    excused,
                    upload: upload.take(),
                });
                if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return Ok(hop::tunnel(&mut txn.ex, &mut response).map(|_| empty()));
                }
                let max_idle = limits.max_idle_per_member;
                return Ok(
                    response.map(|b| upstream::ReturnOnEnd::new(b, conn, max_idle).boxed_unsync())
                );
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let reason = e.error().to_string();
                if let Some(req) = unsent {
                    // Never sent: the pooled connection was closed. Safe to
                    // try again, for any method.
                    body = Some(req.into_body());
                    tried.pop();
                    attempts -= usize::from(conn.reused);
                    last_error = Some(ProxyError::Upstream(member.address.to_string(), reason));
                    continue;
                }
                if upload::client_failed(upload.as_ref()) {
                    // The client's body failed, and the request with it:
                    // no fault of the member's, nor one to retry.
                    return Err(ProxyError::RequestBody(reason).into());
                }
                if upload.as_ref().is_some_and(|u| u.stalled()) {
                    // The backend gave up waiting for the rest of a body
                    // the client stopped sending. One that fails while the
                    // body flows fails by itself (below).
                    return Err(ProxyError::RequestBodyTimeout(reason).into());
                }
                let retryable = is_idempotent(&txn.ex.request.method) && body_is_empty;
                if conn.reused && retryable && upstream::closed_unanswered(e.error()) {
                    // The backend closed a kept-alive connection as the
                    // request crossed the close: no fault of the member's.
                    // Once more, on a new connection.
                    tracing::debug!(member = %member.address, %reason, "pooled connection closed under a request; sending again");
                    body = Some(empty());
                    tried.pop();
                    attempts -= 1;
                    fresh = true;
                    last_error = Some(ProxyError::Upstream(member.address.to_string(), reason));
                    continue;
                }
                pool.record_failure(index, &reason);
                last_error = Some(ProxyError::Upstream(
                    member.address.to_string(),
                    reason.clone(),
                ));
                if let Some(end) = backend_failed(txn, backend, &reason) {
                    return Err(end);
                }
                if !retryable {
                    break;
                }
                body = Some(empty());
            }
            Err(_) => {
                if let Some(u) = &upload {
                    // The backend was kept waiting by the client's body.
                    if u.failed() {
                        return Err(ProxyError::RequestBody("timed out".into()).into());
                    }
                    if u.stalled() {
                        let waited = format!("no answer within {:?}", limits.header_timeout);
                        return Err(ProxyError::RequestBodyTimeout(waited).into());
                    }
                }
                pool.record_failure(
                    index,
                    &format_args!("no answer within {:?}", limits.header_timeout),
                );
                let e =
                    ProxyError::UpstreamTimeout(member.address.to_string(), limits.header_timeout);
                if let Some(end) = backend_failed(txn, backend, &e.to_string()) {
                    return Err(end);
                }
                return Err(e.into());
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| ProxyError::NoHealthyMember(txn.pool.clone()))
        .into())
}

/// Why the method found no member in `pool` to try first.
fn nothing_to_pick(pool: &Pool) -> ProxyError {
    if pool.only_weight_zero_available() {
        ProxyError::OnlyWeightZero(pool.name.clone())
    } else if pool.all_drained() {
        ProxyError::AllDrained(pool.name.clone())
    } else {
        ProxyError::NoHealthyMember(pool.name.clone())
    }
}

/// Run the backend-failed hooks; `Some` when a policy answered, rejected or
/// failed, which ends the transaction.
fn backend_failed(
    txn: &mut Txn,
    backend: impl FnOnce() -> Backend,
    reason: &str,
) -> Option<Pipeline> {
    txn.error = Some(reason.to_owned());
    if !txn.wants(Hook::BackendFailed) {
        return None;
    }
    match txn.run(Hook::BackendFailed, Some(&backend()), reason) {
        Ok(Flow::Answer(r)) => Some(Pipeline::Answer(Box::new(r))),
        Ok(Flow::Reject) => Some(Pipeline::Reject),
        Ok(Flow::Continue) => None,
        Err(e) => Some(Pipeline::Error(e)),
    }
}

/// How many times backend-selected hooks may send a request elsewhere.
const MAX_REROUTES: usize = 4;

/// Keeps a member's in-flight count while a request is with it.
struct ActiveGuard(Arc<crate::pool::Member>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request as sent to a backend: origin-form target, HTTP/1.1.
fn upstream_request(ex: &Exchange, body: Body, upgrade: bool) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = ex.request.method.clone();
    // The origin form, without parsing the target again.
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = ex.request.uri.path_and_query().cloned();
    *request.uri_mut() = http::Uri::from_parts(uri).unwrap_or_else(|_| http::Uri::from_static("/"));
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    headers.reserve(ex.request.headers.len() + 1);
    for (name, value) in &ex.request.headers {
        headers.append(name, value.clone());
    }
    hop::join_cookies(headers);
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = ex.request.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    request
}
