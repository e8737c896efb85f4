//! The policy engine: Wasm components behind the `adc:policy` contract,
//! compiled once per content hash, run in instances that live on each worker
//! thread and serve one hook call at a time.
//!
//! A hook call gets a CPU budget (an epoch deadline) and the instance a memory
//! cap. A trap (a panic, the budget or the cap) fails that one call: it is
//! counted, the instance is dropped, and the next call on that worker builds
//! a fresh one.

mod budget;
mod engine;
mod exchange;
mod instance;
pub mod kv;
mod state;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use engine::{Engine, EngineOptions, LoadError};
pub use exchange::{BodyStream, Exchange};
pub use instance::{Fault, LoadedPolicy};

pub mod bindings {
    //! The host side of the `adc:policy` world.
    wasmtime::component::bindgen!({
        path: "../wit/adc-policy@0.1.0",
        world: "policy",
        with: {
            "adc:policy/http.request": super::RequestRef,
            "adc:policy/http.response": super::ResponseRef,
        },
    });
}

/// Bind another world of the package whose imports are those of the
/// `policy` world: their host functions are implemented once, for
/// [`bindings`]. Extra `with` entries follow the world's name.
macro_rules! bind_beside_policy {
    ($world:literal $(, $name:literal: $path:path)*) => {
        wasmtime::component::bindgen!({
            path: "../wit/adc-policy@0.1.0",
            world: $world,
            with: {
                "adc:policy/types": super::bindings::adc::policy::types,
                "adc:policy/http": super::bindings::adc::policy::http,
                "adc:policy/log": super::bindings::adc::policy::log,
                "adc:policy/kv": super::bindings::adc::policy::kv,
                "adc:policy/metrics": super::bindings::adc::policy::metrics,
                "adc:policy/clock": super::bindings::adc::policy::clock,
                "adc:policy/random": super::bindings::adc::policy::random,
                "adc:policy/crypto": super::bindings::adc::policy::crypto,
                "adc:policy/pools": super::bindings::adc::policy::pools,
                $($name: $path,)*
            },
        });
    };
}

pub mod streaming_bindings {
    //! The `streaming` export, bound apart from the `policy` world: a
    //! component built before it has no such export and must still load.
    bind_beside_policy!(
        "streaming-policy",
        "adc:policy/handler": super::bindings::exports::adc::policy::handler
    );
}

pub mod hooks_bindings {
    //! The `hooks` export (world `hooks-policy`), whose hooks take no
    //! handles.
    bind_beside_policy!("hooks-policy");
}

pub use bindings::adc::policy::pools::MemberStatus;
pub use bindings::adc::policy::types::{
    Backend, ChunkOutput, Connection, Decision, Header, Hooks, ListenerKind, Registration, Reply,
    Transaction,
};

/// The request handle a hook receives: it always stands for the exchange in
/// the store during that call.
pub struct RequestRef;
/// The response handle a hook receives.
pub struct ResponseRef;

/// The pools as policies may see them (read-only).
pub trait PoolDirectory: Send + Sync + fmt::Debug {
    fn names(&self) -> Vec<String>;
    fn members(&self, pool: &str) -> Option<Vec<MemberStatus>>;
    fn available(&self, pool: &str) -> bool;
}

/// A directory with no pools, for tools that load policies without serving.
#[derive(Debug, Default)]
pub struct NoPools;

impl PoolDirectory for NoPools {
    fn names(&self) -> Vec<String> {
        Vec::new()
    }

    fn members(&self, _: &str) -> Option<Vec<MemberStatus>> {
        None
    }

    fn available(&self, _: &str) -> bool {
        false
    }
}

/// How one policy runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyOptions {
    /// Longest a hook call may run before it is stopped.
    pub cpu_budget: Duration,
    /// Largest linear memory of an instance, in bytes.
    pub memory_cap: usize,
    /// On a trap, skip the policy (true) instead of failing the request.
    pub fail_open: bool,
    /// Settings passed to `init`, as JSON.
    pub settings_json: String,
    /// Largest number of entries in the policy's shared table.
    pub kv_entries: usize,
    /// Largest number of distinct metric series the policy may create.
    pub metric_series: usize,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            cpu_budget: Duration::from_millis(10),
            memory_cap: 16 << 20,
            fail_open: false,
            settings_json: "{}".to_owned(),
            kv_entries: 100_000,
            metric_series: 1_000,
        }
    }
}

/// Which hook a call is for (metric labels and messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Init,
    Connect,
    RequestHeaders,
    RequestBody,
    BackendSelected,
    BackendFailed,
    ResponseHeaders,
    ResponseBody,
    ResponseChunk,
    End,
}

impl Hook {
    pub const ALL: [Hook; 10] = [
        Hook::Init,
        Hook::Connect,
        Hook::RequestHeaders,
        Hook::RequestBody,
        Hook::BackendSelected,
        Hook::BackendFailed,
        Hook::ResponseHeaders,
        Hook::ResponseBody,
        Hook::ResponseChunk,
        Hook::End,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Init => "init",
            Hook::Connect => "connect",
            Hook::RequestHeaders => "request_headers",
            Hook::RequestBody => "request_body",
            Hook::BackendSelected => "backend_selected",
            Hook::BackendFailed => "backend_failed",
            Hook::ResponseHeaders => "response_headers",
            Hook::ResponseBody => "response_body",
            Hook::ResponseChunk => "response_chunk",
            Hook::End => "end",
        }
    }

    /// The registration flag that enables this hook. `init` has none (it
    /// always runs), nor has `response_chunk`: it runs for the responses a
    /// policy asked to stream (see [`LoadedPolicy::streams`]).
    pub fn flag(self) -> Hooks {
        match self {
            Hook::Init | Hook::ResponseChunk => Hooks::empty(),
            Hook::Connect => Hooks::CONNECT,
            Hook::RequestHeaders => Hooks::REQUEST_HEADERS,
            Hook::RequestBody => Hooks::REQUEST_BODY,
            Hook::BackendSelected => Hooks::BACKEND_SELECTED,
            Hook::BackendFailed => Hooks::BACKEND_FAILED,
            Hook::ResponseHeaders => Hooks::RESPONSE_HEADERS,
            Hook::ResponseBody => Hooks::RESPONSE_BODY,
            Hook::End => Hooks::END,
        }
    }
}

/// A policy version's identity: the first 12 hex digits of the SHA-256 of
/// its file.
pub fn version_of(wasm: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(wasm);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

pub type PolicyRef = Arc<LoadedPolicy>;

/// The value of a cookie in a request's `Cookie` fields, quotes removed.
pub fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    exchange::cookies(headers)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}
