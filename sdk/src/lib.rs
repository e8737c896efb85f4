//! Write [adc](https://example.invalid/adc) policies in Rust.
//!
//! A policy is a type that implements [`Policy`]. The host creates it once
//! per instance from the policy's settings ([`Policy::init`]), then calls the
//! hooks the type implements, in the order of an HTTP transaction:
//! `on_connect`, `on_request_headers`, `on_request_body`,
//! `on_backend_selected`, `on_backend_failed`, `on_response_headers`,
//! `on_response_body`, `on_end`. Each hook that is not written keeps its
//! default, which does nothing, and the [`policy`] attribute tells the host
//! never to call it. A response body can also be transformed as it streams,
//! without being buffered: ask with [`Response::stream_body`] in
//! `on_response_headers`, and [`Policy::on_response_chunk`] gets its pieces.
//!
//! ```
//! use adc_sdk::{policy, Config, Decision, Error, Policy, Request, Response};
//!
//! struct AddHeader {
//!     value: String,
//! }
//!
//! #[policy]
//! impl Policy for AddHeader {
//!     fn init(config: Config) -> Result<Self, Error> {
//!         Ok(Self { value: config.get_str("value").unwrap_or("adc").to_owned() })
//!     }
//!
//!     fn on_response_headers(&self, _req: &Request, resp: &Response) -> Decision {
//!         let _ = resp.set_header("x-served-by", &self.value);
//!         Decision::Continue
//!     }
//! }
//! ```
//!
//! Build it into a component with the project's `scripts/build-policies`, or
//! test it natively with plain `cargo test` through [`testing`].
//!
//! An instance serves one request at a time and is reused for many: state in
//! `self` (behind a `Cell` or `RefCell`) is per instance, and the host runs
//! one instance per worker thread. State every worker must see belongs in
//! the shared table, [`kv`].
//!
//! A panic fails the request it happened in; its message and source location
//! reach the host's log, and the host replaces the instance.
#![deny(missing_docs)]

mod decision;
mod http;
mod sys;

pub mod clock;
pub mod crypto;
pub mod headers;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod pools;
pub mod text;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use adc_sdk_macros::policy;
pub use decision::{Backend, Connection, Decision, ListenerKind, Reply, Transaction};
pub use http::{EditError, Request, Response};

/// The hooks a policy implements, as the [`policy`] attribute finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Hooks(u32);

impl Hooks {
    /// `on_connect`.
    pub const CONNECT: Hooks = Hooks(1 << 0);
    /// `on_request_headers`.
    pub const REQUEST_HEADERS: Hooks = Hooks(1 << 1);
    /// `on_request_body`.
    pub const REQUEST_BODY: Hooks = Hooks(1 << 2);
    /// `on_backend_selected`.
    pub const BACKEND_SELECTED: Hooks = Hooks(1 << 3);
    /// `on_backend_failed`.
    pub const BACKEND_FAILED: Hooks = Hooks(1 << 4);
    /// `on_response_headers`.
    pub const RESPONSE_HEADERS: Hooks = Hooks(1 << 5);
    /// `on_response_body`.
    pub const RESPONSE_BODY: Hooks = Hooks(1 << 6);
    /// `on_end`.
    pub const END: Hooks = Hooks(1 << 7);
    /// Every hook.
    pub const ALL: Hooks = Hooks(0xff);
    /// No hook.
    pub const NONE: Hooks = Hooks(0);

    /// Both sets together.
    pub const fn union(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Whether every hook of `other` is in this set.
    pub const fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }

    /// The set as bits, in the order of the WIT `hooks` flags.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

/// How much body the host buffers for the body hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BodyLimits {
    /// Largest request body for `on_request_body`; a larger one gets 413.
    pub request: u32,
    /// Largest response body for `on_response_body`; a larger one passes
    /// through unchanged and the hook is skipped for it.
    pub response: u32,
}

/// What [`Policy::on_response_chunk`] sends on, and how much of its input
/// it wants to see again.
///
/// The input of a call is what the previous call held back followed by the
/// new bytes. `data` replaces all of it but its last `hold` bytes, which the
/// host keeps and puts in front of the next piece: a match that a chunk
/// boundary cuts is then seen whole, with no state kept in the policy.
///
/// ```
/// use adc_sdk::testing::{MockRequest, MockResponse, TestHost};
/// use adc_sdk::{policy, Chunk, Config, Decision, Error, Policy, Request, Response};
///
/// /// "cat" becomes "dog" in text bodies, however they are cut.
/// struct Dogs;
///
/// #[policy]
/// impl Policy for Dogs {
///     fn init(_: Config) -> Result<Self, Error> {
///         Ok(Dogs)
///     }
///
///     fn on_response_headers(&self, _: &Request, resp: &Response) -> Decision {
///         if resp.header("content-type").is_some_and(|t| t.starts_with("text/")) {
///             let _ = resp.stream_body();
///         }
///         Decision::Continue
///     }
///
///     fn on_response_chunk(&self, _: &Request, _: &Response, chunk: &[u8], last: bool) -> Chunk {
///         // The last two bytes may start a "cat" that the next piece ends.
///         let settled = if last { chunk.len() } else { chunk.len().saturating_sub(2) };
///         let (mut out, mut i) = (Vec::new(), 0);
///         while i < settled {
///             if chunk[i..].starts_with(b"cat") {
///                 out.extend_from_slice(b"dog");
///                 i += 3;
///             } else {
///                 out.push(chunk[i]);
///                 i += 1;
///             }
///         }
///         Chunk::hold(out, chunk.len() - i)
///     }
/// }
///
/// let host = TestHost::new();
/// let policy: Dogs = host.init("{}").unwrap();
/// let req = MockRequest::get("/");
/// let resp = MockResponse::new(200).with_header("content-type", "text/plain");
/// policy.on_response_headers(&req.as_request(), &resp.as_response());
/// let pieces: [&[u8]; 3] = [b"a c", b"at and a ca", b"t"];
/// assert_eq!(host.stream_body(&policy, &req, &resp, &pieces), b"a dog and a dog");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Sent to the client in place of the input but for its last `hold`
    /// bytes.
    pub data: Vec<u8>,
    /// How many bytes at the end of the input to see again next call: at
    /// most [`Chunk::MAX_HOLD`] and the input's length. Bytes held beyond
    /// either, or on the last call, are sent unchanged after `data`.
    pub hold: usize,
}

impl Chunk {
    /// The most bytes a call may hold back: 64 KiB.
    pub const MAX_HOLD: usize = 64 * 1024;
    /// The most new bytes one call receives after the held ones: 64 KiB.
    pub const MAX_PIECE: usize = 64 * 1024;

    /// Send `data` in place of the whole input.
    pub fn send(data: impl Into<Vec<u8>>) -> Chunk {
        Chunk {
            data: data.into(),
            hold: 0,
        }
    }

    /// Send `data` in place of the input but its last `hold` bytes, and see
    /// those again, in front of the next piece.
    pub fn hold(data: impl Into<Vec<u8>>, hold: usize) -> Chunk {
        Chunk {
            data: data.into(),
            hold,
        }
    }
}

/// An error a policy reports from [`Policy::init`]: the host refuses the
/// policy and logs the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_owned())
    }
}

/// The policy's settings: its section of the adc configuration, as JSON.
#[derive(Clone, Debug, Default)]
pub struct Config(serde_json::Value);

impl Config {
    /// Settings from a JSON text (what the host passes to `init`).
    ///
    /// # Errors
    ///
    /// When the text is not JSON.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Ok(Config(serde_json::Value::Object(Default::default())));
        }
        serde_json::from_str(text)
            .map(Config)
            .map_err(|e| Error::new(format!("policy settings are not valid JSON: {e}")))
    }

    /// Deserialize the settings into a type of the policy's own; serde's
    /// `deny_unknown_fields` on that type makes a misspelt setting an error.
    ///
    /// # Errors
    ///
    /// When the settings do not fit `T`; the message names the setting.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.0).map_err(|e| Error::new(format!("invalid settings: {e}")))
    }

    /// A string setting.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_str())
    }

    /// The settings as a JSON value.
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }
}

/// A policy: settings in, decisions out.
///
/// Every hook has a default that returns [`Decision::Continue`]. Put
/// [`policy`] on the `impl` block so that the host calls only the hooks
/// written there.
pub trait Policy: Sized + 'static {
    /// The hooks the host calls. The [`policy`] attribute sets it to the
    /// hooks the `impl` block writes; without the attribute every hook is
    /// called.
    const HOOKS: Hooks = Hooks::ALL;

    /// Build the policy from its settings. Runs once per instance, before
    /// any hook (the iRules `RULE_INIT`).
    ///
    /// # Errors
    ///
    /// An error refuses the policy at load time; the host logs the message
    /// and keeps the version it had.
    fn init(config: Config) -> Result<Self, Error>;

    /// How much body to buffer for `on_request_body` and `on_response_body`.
    fn body_limits(&self) -> BodyLimits {
        BodyLimits::default()
    }

    /// A client connection was accepted. May return `Continue`, `Reject`,
    /// and on TCP and UDP listeners `Route`.
    fn on_connect(&self, conn: &Connection) -> Decision {
        let _ = conn;
        Decision::Continue
    }

    /// The request's headers arrived. May return any decision.
    fn on_request_headers(&self, req: &Request) -> Decision {
        let _ = req;
        Decision::Continue
    }

    /// The request body arrived, buffered up to [`BodyLimits::request`].
    /// May return any decision but `Reject`.
    fn on_request_body(&self, req: &Request) -> Decision {
        let _ = req;
        Decision::Continue
    }

    /// A member was chosen. May return `Continue`, `Respond`, `Redirect` or
    /// `Route` (choose again).
    fn on_backend_selected(&self, req: &Request, backend: &Backend) -> Decision {
        let _ = (req, backend);
        Decision::Continue
    }

    /// Reaching the member failed (the iRules `LB_FAILED`). May return
    /// `Continue`, `Respond`, `Redirect` or `Route` (try there).
    fn on_backend_failed(&self, req: &Request, backend: &Backend, reason: &str) -> Decision {
        let _ = (req, backend, reason);
        Decision::Continue
    }

    /// The response's headers arrived. May return `Continue` or `Respond`.
    fn on_response_headers(&self, req: &Request, resp: &Response) -> Decision {
        let _ = (req, resp);
        Decision::Continue
    }

    /// The response body arrived, buffered up to [`BodyLimits::response`].
    /// May return `Continue` or `Respond`.
    fn on_response_body(&self, req: &Request, resp: &Response) -> Decision {
        let _ = (req, resp);
        Decision::Continue
    }

    /// A piece of the body of a response this policy asked to stream
    /// ([`Response::stream_body`] in `on_response_headers`), on its way to
    /// the client. `chunk` is what the previous call held back followed by
    /// at most [`Chunk::MAX_PIECE`] new bytes; `last` is true on the final
    /// call, once the body has ended, when `chunk` holds only what was held
    /// back. Return what to send in its place.
    ///
    /// Keep nothing in `self` between calls: an instance serves many
    /// responses in turn, and their pieces interleave. What a piece leaves
    /// undecided (the start of a match that the boundary cut) goes back to
    /// the host with [`Chunk::hold`]. The response's head is already sent:
    /// header edits are refused. The default sends the chunk unchanged.
    fn on_response_chunk(&self, req: &Request, resp: &Response, chunk: &[u8], last: bool) -> Chunk {
        let _ = (req, resp, last);
        Chunk::send(chunk)
    }

    /// The transaction ended: log it or count it.
    fn on_end(&self, req: &Request, summary: &Transaction) {
        let _ = (req, summary);
    }
}
