//! Test a policy natively with `cargo test`, against a mock host: a shared
//! table and clock you control, captured log lines and metrics, and requests
//! and responses you build.
//!
//! ```
//! use adc_sdk::testing::{MockRequest, TestHost};
//! use adc_sdk::{policy, Config, Decision, Error, Policy, Request};
//!
//! struct DenyAdmin;
//!
//! #[policy]
//! impl Policy for DenyAdmin {
//!     fn init(_: Config) -> Result<Self, Error> {
//!         Ok(DenyAdmin)
//!     }
//!
//!     fn on_request_headers(&self, req: &Request) -> Decision {
//!         if req.path().starts_with("/admin") {
//!             return Decision::respond(403, "forbidden");
//!         }
//!         Decision::Continue
//!     }
//! }
//!
//! let host = TestHost::new();
//! let policy: DenyAdmin = host.init("{}").unwrap();
//! let req = MockRequest::get("/%61dmin/users");
//! assert!(matches!(policy.on_request_headers(&req.as_request()), Decision::Respond(r) if r.status == 403));
//! ```

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::log::Level;
use crate::pools::Member;
use crate::sys::{State, STATE};
use crate::text;
use crate::{Chunk, Config, EditError, Error, Policy, Request, Response};

/// The mock host of the current test thread. Creating one resets it: an
/// empty table, the clock at a fixed instant, no log lines, no metrics.
#[derive(Debug)]
pub struct TestHost(());

impl TestHost {
    /// A fresh mock host for this thread.
    #[allow(
        clippy::new_without_default,
        reason = "creating one resets state: keep it explicit"
    )]
    pub fn new() -> TestHost {
        STATE.with(|s| *s.borrow_mut() = State::fresh());
        TestHost(())
    }

    /// Run `P::init` with settings given as JSON, as the host does.
    ///
    /// # Errors
    ///
    /// What `P::init` returns, or an error for text that is not JSON.
    pub fn init<P: Policy>(&self, settings: &str) -> Result<P, Error> {
        P::init(Config::from_json(settings)?)
    }

    /// Move both clocks forward.
    pub fn advance(&self, by: Duration) {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.now_ms += u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            s.mono_ns += u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        });
    }

    /// The log lines written so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        STATE.with(|s| s.borrow().logs.clone())
    }

    /// A counter's value; `series` is `name` or `name{label="value",...}`
    /// with labels in the order the policy gave them.
    pub fn counter(&self, series: &str) -> u64 {
        STATE.with(|s| s.borrow().counters.get(series).copied().unwrap_or(0))
    }

    /// A gauge's value.
    pub fn gauge(&self, series: &str) -> Option<f64> {
        STATE.with(|s| s.borrow().gauges.get(series).copied())
    }

    /// The values recorded in a histogram.
    pub fn histogram(&self, series: &str) -> Vec<f64> {
        STATE.with(|s| {
            s.borrow()
                .histograms
                .get(series)
                .cloned()
                .unwrap_or_default()
        })
    }

    /// Declare a pool and its members for [`crate::pools`].
    pub fn set_pool(&self, pool: &str, members: Vec<Member>) {
        STATE.with(|s| s.borrow_mut().pools.insert(pool.to_owned(), members));
    }

    /// Send a response body through `policy` as the host does once it
    /// asked to stream it ([`Response::stream_body`] in
    /// `on_response_headers`, which the test runs first): `pieces` arrive
    /// one by one, cut to [`Chunk::MAX_PIECE`], each behind what the
    /// previous call held, then a last call. Returns what the client
    /// receives. A response that did not ask passes unchanged, without a
    /// call; a hold over its bounds is sent on and logged at warn, as the
    /// host counts it.
    pub fn stream_body<P: Policy>(
        &self,
        policy: &P,
        req: &MockRequest,
        resp: &MockResponse,
        pieces: &[&[u8]],
    ) -> Vec<u8> {
        if resp.stream.get() == Stream::No {
            return pieces.concat();
        }
        resp.stream.set(Stream::Sent);
        let mut sent = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        let mut call = |new: &[u8], last: bool| {
            let mut input = std::mem::take(&mut held);
            input.extend_from_slice(new);
            let out =
                policy.on_response_chunk(&req.as_request(), &resp.as_response(), &input, last);
            let hold = if last {
                0
            } else {
                out.hold.min(input.len()).min(Chunk::MAX_HOLD)
            };
            if !last && hold < out.hold {
                crate::sys::log_write(
                    Level::Warn,
                    &format!("hold of {} bytes over its bounds", out.hold),
                );
            }
            let asked = out.hold.min(input.len());
            sent.extend_from_slice(&out.data);
            sent.extend_from_slice(&input[input.len() - asked..input.len() - hold]);
            held = input[input.len() - hold..].to_vec();
        };
        for piece in pieces {
            for part in piece.chunks(Chunk::MAX_PIECE) {
                call(part, false);
            }
        }
        call(&[], true);
        sent
    }
}

/// A healthy, enabled member with weight 1, for [`TestHost::set_pool`].
pub fn member(name: &str, address: &str) -> Member {
    Member {
        name: name.to_owned(),
        address: address.to_owned(),
        weight: 1,
        healthy: true,
        enabled: true,
        active: 0,
    }
}

#[derive(Clone, Debug)]
struct Message {
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Message {
    fn get(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn block(&self) -> Vec<u8> {
        let mut block = Vec::new();
        for (n, v) in &self.headers {
            crate::headers::push_line(&mut block, &n.to_ascii_lowercase(), v.as_bytes());
        }
        block
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        crate::http::check_edit(name, value)?;
        self.remove(name);
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        Ok(())
    }

    fn append(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        crate::http::check_edit(name, value)?;
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> bool {
        let before = self.headers.len();
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before != self.headers.len()
    }

    fn set_body(&mut self, body: &[u8]) -> Result<(), EditError> {
        match &mut self.body {
            Some(b) => {
                *b = body.to_vec();
                Ok(())
            }
            None => Err(EditError::BodyUnavailable),
        }
    }
}

/// A request for tests, built like the host would hold it.
#[derive(Debug)]
pub struct MockRequest {
    method: RefCell<String>,
    uri: RefCell<String>,
    original_uri: String,
    scheme: String,
    version: String,
    client_ip: String,
    client_certificate: Option<(String, Vec<String>)>,
    message: RefCell<Message>,
    vars: RefCell<Vec<(String, String)>>,
}

impl MockRequest {
    /// A request with this method and target (`/path?query`), as the host
    /// holds it: `uri()` has the path normalised (see
    /// [`text::normalize_path`]), `original_uri()` keeps `uri` as given.
    pub fn new(method: &str, uri: &str) -> MockRequest {
        let forwarded = match uri.split_once('?') {
            _ if uri == "*" || !uri.starts_with('/') => uri.to_owned(),
            Some((path, query)) => format!("{}?{query}", text::normalize_path(path)),
            None => text::normalize_path(uri),
        };
        MockRequest {
            method: RefCell::new(method.to_owned()),
            uri: RefCell::new(forwarded),
            original_uri: uri.to_owned(),
            scheme: "http".to_owned(),
            version: "HTTP/1.1".to_owned(),
            client_ip: "127.0.0.1".to_owned(),
            client_certificate: None,
            message: RefCell::new(Message {
                headers: Vec::new(),
                body: None,
            }),
            vars: RefCell::new(Vec::new()),
        }
    }

    /// A GET request.
    pub fn get(uri: &str) -> MockRequest {
        MockRequest::new("GET", uri)
    }

    /// Add a header line (any name, as a client may send it).
    pub fn with_header(self, name: &str, value: &str) -> MockRequest {
        self.message
            .borrow_mut()
            .headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Buffer a body, as the host does before `on_request_body`.
    pub fn with_body(self, body: &[u8]) -> MockRequest {
        self.message.borrow_mut().body = Some(body.to_vec());
        self
    }

    /// Set the client address.
    pub fn with_client_ip(mut self, ip: &str) -> MockRequest {
        self.client_ip = ip.to_owned();
        self
    }

    /// Give the request a verified client certificate (mutual TLS): its
    /// subject and its subject alternative names (`DNS:...`, `URI:...`).
    pub fn with_client_certificate(mut self, subject: &str, sans: &[&str]) -> MockRequest {
        self.client_certificate = Some((
            subject.to_owned(),
            sans.iter().map(|s| (*s).to_owned()).collect(),
        ));
        self
    }

    /// Set the scheme (`https` for a TLS listener).
    pub fn with_scheme(mut self, scheme: &str) -> MockRequest {
        self.scheme = scheme.to_owned();
        self
    }

    /// Set the protocol version string (`HTTP/2` for an h2 client).
    pub fn with_version(mut self, version: &str) -> MockRequest {
        self.version = version.to_owned();
        self
    }

    /// The handle a hook receives.
    pub fn as_request(&self) -> Request<'_> {
        Request::__from_sys(self)
    }

    /// Every header line now, in order, names lowercased.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.message.borrow().headers.clone()
    }

    pub(crate) fn method(&self) -> String {
        self.method.borrow().clone()
    }

    pub(crate) fn set_method(&self, method: &str) -> Result<(), EditError> {
        if method.is_empty() || !text::valid_header_name(method) {
            return Err(EditError::InvalidTarget);
        }
        *self.method.borrow_mut() = method.to_owned();
        Ok(())
    }

    pub(crate) fn uri(&self) -> String {
        self.uri.borrow().clone()
    }

    pub(crate) fn original_uri(&self) -> String {
        self.original_uri.clone()
    }

    pub(crate) fn set_uri(&self, uri: &str) -> Result<(), EditError> {
        if !uri.starts_with('/') || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(EditError::InvalidTarget);
        }
        *self.uri.borrow_mut() = uri.to_owned();
        Ok(())
    }

    pub(crate) fn path(&self) -> String {
        let uri = self.uri.borrow();
        text::normalize_path(uri.split_once('?').map_or(uri.as_str(), |(p, _)| p))
    }

    pub(crate) fn query(&self) -> Option<String> {
        self.uri.borrow().split_once('?').map(|(_, q)| q.to_owned())
    }

    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query().and_then(|q| text::query_param(&q, name))
    }

    pub(crate) fn host(&self) -> Option<String> {
        let host = self.message.borrow().get("host")?;
        Some(text::host_without_port(&host).to_ascii_lowercase())
    }

    pub(crate) fn scheme(&self) -> String {
        self.scheme.clone()
    }

    pub(crate) fn version(&self) -> String {
        self.version.clone()
    }

    pub(crate) fn client_ip(&self) -> String {
        self.client_ip.clone()
    }

    pub(crate) fn client_certificate(&self) -> Option<String> {
        self.client_certificate.as_ref().map(|(s, _)| s.clone())
    }

    pub(crate) fn client_certificate_sans(&self) -> Vec<String> {
        self.client_certificate
            .as_ref()
            .map(|(_, sans)| sans.clone())
            .unwrap_or_default()
    }

    pub(crate) fn header_values(&self, name: &str) -> Vec<String> {
        self.message.borrow().values(name)
    }

    pub(crate) fn header_block(&self) -> Vec<u8> {
        self.message.borrow().block()
    }

    pub(crate) fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.message.borrow_mut().set(name, value)
    }

    pub(crate) fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.message.borrow_mut().append(name, value)
    }

    pub(crate) fn remove_header(&self, name: &str) -> bool {
        self.message.borrow_mut().remove(name)
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<String> {
        self.cookies()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    pub(crate) fn cookies(&self) -> Vec<(String, String)> {
        self.header_values("cookie")
            .iter()
            .flat_map(|v| text::parse_cookies(v))
            .collect()
    }

    pub(crate) fn body(&self) -> Option<Vec<u8>> {
        self.message.borrow().body.clone()
    }

    pub(crate) fn set_body(&self, body: &[u8]) -> Result<(), EditError> {
        self.message.borrow_mut().set_body(body)
    }

    pub(crate) fn var(&self, name: &str) -> Option<String> {
        self.vars
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn set_var(&self, name: &str, value: &str) {
        let mut vars = self.vars.borrow_mut();
        vars.retain(|(n, _)| n != name);
        vars.push((name.to_owned(), value.to_owned()));
    }
}

/// Whether a mock response's body streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    No,
    Asked,
    /// Streaming: the head is sent.
    Sent,
}

/// A response for tests.
#[derive(Debug)]
pub struct MockResponse {
    status: RefCell<u16>,
    message: RefCell<Message>,
    stream: Cell<Stream>,
}

impl MockResponse {
    /// A response with this status.
    pub fn new(status: u16) -> MockResponse {
        MockResponse {
            status: RefCell::new(status),
            message: RefCell::new(Message {
                headers: Vec::new(),
                body: None,
            }),
            stream: Cell::new(Stream::No),
        }
    }

    /// Add a header line.
    pub fn with_header(self, name: &str, value: &str) -> MockResponse {
        self.message
            .borrow_mut()
            .headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Buffer a body, as the host does before `on_response_body`.
    pub fn with_body(self, body: &[u8]) -> MockResponse {
        self.message.borrow_mut().body = Some(body.to_vec());
        self
    }

    /// The handle a hook receives.
    pub fn as_response(&self) -> Response<'_> {
        Response::__from_sys(self)
    }

    /// Every header line now, in order, names lowercased.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.message.borrow().headers.clone()
    }

    /// Whether a hook asked to stream the body ([`Response::stream_body`]).
    pub fn streams(&self) -> bool {
        self.stream.get() != Stream::No
    }

    pub(crate) fn status(&self) -> u16 {
        *self.status.borrow()
    }

    pub(crate) fn set_status(&self, status: u16) -> Result<(), EditError> {
        if !(200..=999).contains(&status) || self.stream.get() == Stream::Sent {
            return Err(EditError::InvalidStatus);
        }
        *self.status.borrow_mut() = status;
        Ok(())
    }

    pub(crate) fn header_block(&self) -> Vec<u8> {
        self.message.borrow().block()
    }

    pub(crate) fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.head_unsent()?;
        self.message.borrow_mut().set(name, value)
    }

    pub(crate) fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.head_unsent()?;
        self.message.borrow_mut().append(name, value)
    }

    pub(crate) fn remove_header(&self, name: &str) -> bool {
        self.head_unsent().is_ok() && self.message.borrow_mut().remove(name)
    }

    pub(crate) fn body(&self) -> Option<Vec<u8>> {
        self.message.borrow().body.clone()
    }

    pub(crate) fn set_body(&self, body: &[u8]) -> Result<(), EditError> {
        self.message.borrow_mut().set_body(body)
    }

    /// The host refuses header edits once a streamed body's head is sent.
    fn head_unsent(&self) -> Result<(), EditError> {
        match self.stream.get() {
            Stream::Sent => Err(EditError::ForbiddenHeader),
            _ => Ok(()),
        }
    }

    /// As the host, as far as a response alone tells: refused without a
    /// body (1xx, 204, 304), once streaming, and with a buffered body (the
    /// `on_response_body` of a test). The mock does not know the request's
    /// method, so a test of `HEAD` must not expect a refusal.
    pub(crate) fn stream_body(&self) -> Result<(), EditError> {
        let status = self.status();
        let bodiless = status < 200 || status == 204 || status == 304;
        if bodiless || self.stream.get() == Stream::Sent || self.message.borrow().body.is_some() {
            return Err(EditError::BodyUnavailable);
        }
        self.stream.set(Stream::Asked);
        Ok(())
    }
}
