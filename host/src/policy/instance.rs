//! A loaded policy version and its instances: one per worker thread, built
//! on first use, dropped after a trap.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use wasmtime::component::Resource;
use wasmtime::Store;

use super::bindings::{Policy, PolicyPre};
use super::budget::Budget;
use super::engine::LoadError;
use super::exchange::Exchange;
use super::hooks_bindings::{HooksPolicy, HooksPolicyPre};
use super::state::{Limiter, Shared, StoreState};
use super::streaming_bindings::exports::adc::policy::streaming::GuestIndices as StreamingIndices;
use super::{Backend, ChunkOutput, Connection, Decision, Hook, Hooks};
use super::{PolicyOptions, Registration, Transaction};

/// Why a hook call failed. A fault is never seen by the policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("stopped after its CPU budget of {0:?}")]
    CpuBudget(std::time::Duration),
    #[error("stopped at its memory cap of {0} bytes")]
    MemoryCap(usize),
    #[error("trapped: {0}")]
    Trap(String),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::CpuBudget(_) => "cpu_budget",
            Fault::MemoryCap(_) => "memory_cap",
            Fault::Trap(_) => "trap",
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Per-hook metric handles, made once at load.
struct HookMetrics {
    calls: metrics::Counter,
    duration: metrics::Histogram,
}

impl HookMetrics {
    fn new(policy: &str, version: &str, hook: Hook) -> HookMetrics {
        let labels = [
            ("policy", policy.to_owned()),
            ("version", version.to_owned()),
            ("hook", hook.name().to_owned()),
        ];
        HookMetrics {
            calls: metrics::counter!("adc_policy_hook_calls_total", &labels),
            duration: metrics::histogram!("adc_policy_hook_duration_seconds", &labels),
        }
    }

    /// For a hook the policy does not have: records nothing, so no series.
    fn none() -> HookMetrics {
        HookMetrics {
            calls: metrics::Counter::noop(),
            duration: metrics::Histogram::noop(),
        }
    }
}

/// A component ready to instantiate, by the interface its hooks come in.
pub(super) enum Pre {
    /// `hooks`: hooks without handles (what the SDK builds).
    Hooks(HooksPolicyPre<StoreState>),
    /// `handler`, and `streaming` when the component has it: components
    /// built before `hooks` existed.
    Handler {
        pre: PolicyPre<StoreState>,
        streaming: Option<StreamingIndices>,
    },
}

impl Pre {
    /// Take the `hooks` export when the component has one, else `handler`.
    pub(super) fn new(pre: wasmtime::component::InstancePre<StoreState>) -> Result<Pre, LoadError> {
        if let Ok(hooks) = HooksPolicyPre::new(pre.clone()) {
            return Ok(Pre::Hooks(hooks));
        }
        let streaming = StreamingIndices::new(&pre).ok();
        let pre = PolicyPre::new(pre).map_err(|e| {
            LoadError::Link(format!(
                "it exports neither `adc:policy/hooks` nor `adc:policy/handler`: {e:#}"
            ))
        })?;
        Ok(Pre::Handler { pre, streaming })
    }

    fn instance_pre(&self) -> &wasmtime::component::InstancePre<StoreState> {
        match self {
            Pre::Hooks(pre) => pre.instance_pre(),
            Pre::Handler { pre, .. } => pre.instance_pre(),
        }
    }
}

/// An instance's exports, by the interface its hooks come in.
enum Bindings {
    Hooks(HooksPolicy),
    Handler(Policy),
}

/// One version of a policy, ready to run on any worker.
pub struct LoadedPolicy {
    id: u64,
    name: Arc<str>,
    version: String,
    pre: Pre,
    shared: Arc<Shared>,
    options: PolicyOptions,
    registration: Registration,
    loaded_at: SystemTime,
    hook_metrics: Vec<HookMetrics>,
    /// `response_chunk` runs only for responses a policy chose to stream
    /// (every SDK-built policy exports it), so its series start at its
    /// first call.
    chunk_metrics: OnceLock<HookMetrics>,
    labels: [(&'static str, String); 2],
}

impl std::fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

struct Instance {
    policy_id: u64,
    name: Arc<str>,
    store: Store<StoreState>,
    bindings: Bindings,
}

thread_local! {
    /// This worker's instances, a few at most: a Vec beats a map.
    static INSTANCES: RefCell<Vec<Instance>> = const { RefCell::new(Vec::new()) };
}

impl LoadedPolicy {
    pub(super) fn start(
        name: &str,
        version: String,
        pre: Pre,
        shared: Arc<Shared>,
        options: PolicyOptions,
    ) -> Result<Arc<LoadedPolicy>, LoadError> {
        let labels = [("policy", name.to_owned()), ("version", version.clone())];
        // Series for init now; for the other hooks once the registration
        // says which the policy has (the host calls no other).
        let hook_metrics = Hook::ALL
            .iter()
            .map(|&h| match h {
                Hook::Init => HookMetrics::new(name, &version, h),
                _ => HookMetrics::none(),
            })
            .collect();
        let mut policy = LoadedPolicy {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            version,
            pre,
            shared,
            options,
            registration: Registration {
                hooks: Hooks::empty(),
                request_body_limit: 0,
                response_body_limit: 0,
            },
            loaded_at: SystemTime::now(),
            hook_metrics,
            chunk_metrics: OnceLock::new(),
            labels,
        };
        // A first instance proves that start-up works; the worker that loads
        // the policy keeps it.
        let instance = policy.instantiate()?;
        policy.registration = instance.1;
        for (&hook, metrics) in Hook::ALL.iter().zip(&mut policy.hook_metrics) {
            let called = match hook {
                Hook::Init | Hook::ResponseChunk => false,
                _ => policy.registration.hooks.contains(hook.flag()),
            };
            if called {
                *metrics = HookMetrics::new(name, &policy.version, hook);
            }
        }
        let policy = Arc::new(policy);
        let mut instance = instance.0;
        instance.policy_id = policy.id;
        INSTANCES.with(|cell| cell.borrow_mut().push(instance));
        Ok(policy)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    pub fn hooks(&self) -> Hooks {
        self.registration.hooks
    }

    pub fn implements(&self, hook: Hook) -> bool {
        self.registration.hooks.contains(hook.flag())
    }

    pub fn registration(&self) -> Registration {
        self.registration
    }

    pub fn fail_open(&self) -> bool {
        self.options.fail_open
    }

    /// Whether the component has a hook for response bodies piece by
    /// piece (in `hooks`, or the `streaming` export), so that it may ask
    /// for them.
    pub fn streams(&self) -> bool {
        match &self.pre {
            Pre::Hooks(_) => true,
            Pre::Handler { streaming, .. } => streaming.is_some(),
        }
    }

    fn new_store(&self) -> Store<StoreState> {
        let state = StoreState {
            shared: self.shared.clone(),
            exchange: None,
            limiter: Limiter {
                memory_cap: self.options.memory_cap,
                memory_denied: false,
            },
            budget: Budget::new(self.options.cpu_budget),
            started: Instant::now(),
            streaming: None,
            streams: self.streams(),
        };
        let mut store = Store::new(self.pre.instance_pre().engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().budget.on_deadline()));
        store
    }

    /// Give the store's next call its CPU budget.
    fn arm(store: &mut Store<StoreState>) {
        let ticks = store.data_mut().budget.start();
        store.set_epoch_deadline(ticks);
    }

    fn fault(&self, store: &Store<StoreState>, error: &wasmtime::Error) -> Fault {
        if store.data().limiter.memory_denied {
            Fault::MemoryCap(self.options.memory_cap)
        } else if matches!(
            error.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        ) {
            Fault::CpuBudget(self.options.cpu_budget)
        } else {
            Fault::Trap(format!("{error:#}"))
        }
    }

    fn instantiate(&self) -> Result<(Instance, Registration), LoadError> {
        let mut store = self.new_store();
        Self::arm(&mut store);
        let instance = match self.pre.instance_pre().instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(LoadError::Trap(self.fault(&store, &e))),
        };
        let link = |e: wasmtime::Error| LoadError::Link(format!("{e:#}"));
        let bindings = match &self.pre {
            Pre::Hooks(_) => {
                Bindings::Hooks(HooksPolicy::new(&mut store, &instance).map_err(link)?)
            }
            Pre::Handler { streaming, .. } => {
                if let Some(indices) = streaming {
                    let guest = indices.load(&mut store, &instance).map_err(link)?;
                    store.data_mut().streaming = Some(guest);
                }
                Bindings::Handler(Policy::new(&mut store, &instance).map_err(link)?)
            }
        };
        Self::arm(&mut store);
        let metrics = &self.hook_metrics[Hook::Init as usize];
        metrics.calls.increment(1);
        let started = quanta::Instant::now();
        let settings = &self.options.settings_json;
        let init = match &bindings {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_init(&mut store, settings),
            Bindings::Handler(b) => b.adc_policy_handler().call_init(&mut store, settings),
        };
        metrics.duration.record(started.elapsed().as_secs_f64());
        let registration = match init {
            Ok(Ok(r)) => r,
            Ok(Err(message)) => return Err(LoadError::Init(message)),
            Err(e) => return Err(LoadError::Trap(self.fault(&store, &e))),
        };
        let instance = Instance {
            policy_id: self.id,
            name: self.name.clone(),
            store,
            bindings,
        };
        Ok((instance, registration))
    }

    /// Run `f` on this worker's instance, building it if needed, with the
    /// exchange lent to the store for the call.
    fn call<R>(
        &self,
        hook: Hook,
        exchange: Option<Box<Exchange>>,
        f: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> (Option<Box<Exchange>>, Result<R, Fault>) {
        INSTANCES.with(|cell| {
            let mut instances = cell.borrow_mut();
            let index = match instances.iter().position(|i| i.policy_id == self.id) {
                Some(index) => index,
                None => {
                    // A newer version replaces an older one on this worker.
                    instances.retain(|i| i.name != self.name);
                    match self.instantiate() {
                        Ok((instance, _)) => {
                            instances.push(instance);
                            instances.len() - 1
                        }
                        Err(LoadError::Trap(fault)) => {
                            return (exchange, Err(self.count_fault(hook, fault)))
                        }
                        Err(e) => {
                            let fault = Fault::Trap(e.to_string());
                            return (exchange, Err(self.count_fault(hook, fault)));
                        }
                    }
                }
            };

            let metrics = match hook {
                Hook::ResponseChunk => self.chunk_metrics.get_or_init(|| {
                    HookMetrics::new(&self.name, &self.version, Hook::ResponseChunk)
                }),
                _ => &self.hook_metrics[hook as usize],
            };
            metrics.calls.increment(1);
            // The CPU's cycle counter, not the system clock: two clock
            // reads were a tenth of an empty hook call.
            let started = quanta::Instant::now();
            let instance = &mut instances[index];
            instance.store.data_mut().exchange = exchange;
            Self::arm(&mut instance.store);
            let result = f(&instance.bindings, &mut instance.store);
            let exchange = instance.store.data_mut().exchange.take();
            metrics.duration.record(started.elapsed().as_secs_f64());

            match result {
                Ok(r) => (exchange, Ok(r)),
                Err(e) => {
                    let fault = self.fault(&instance.store, &e);
                    instances.swap_remove(index);
                    (exchange, Err(self.count_fault(hook, fault)))
                }
            }
        })
    }

    fn count_fault(&self, hook: Hook, fault: Fault) -> Fault {
        metrics::counter!(
            "adc_policy_faults_total",
            &[
                ("policy", self.name.to_string()),
                ("version", self.version.clone()),
                ("kind", fault.kind().to_owned()),
            ]
        )
        .increment(1);
        tracing::warn!(policy = %self.name, version = %self.version, hook = hook.name(), "policy {fault}; its instance is replaced");
        fault
    }

    pub fn on_connect(&self, conn: &Connection) -> Result<Decision, Fault> {
        self.call(Hook::Connect, None, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_connect(s, conn),
            Bindings::Handler(b) => b.adc_policy_handler().call_on_connect(s, conn),
        })
        .1
    }

    pub fn on_request_headers(
        &self,
        ex: Box<Exchange>,
    ) -> (Box<Exchange>, Result<Decision, Fault>) {
        self.call_exchange(Hook::RequestHeaders, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_request_headers(s),
            Bindings::Handler(b) => b.adc_policy_handler().call_on_request_headers(s, request()),
        })
    }

    pub fn on_request_body(&self, ex: Box<Exchange>) -> (Box<Exchange>, Result<Decision, Fault>) {
        self.call_exchange(Hook::RequestBody, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_request_body(s),
            Bindings::Handler(b) => b.adc_policy_handler().call_on_request_body(s, request()),
        })
    }

    pub fn on_backend_selected(
        &self,
        ex: Box<Exchange>,
        backend: &Backend,
    ) -> (Box<Exchange>, Result<Decision, Fault>) {
        self.call_exchange(Hook::BackendSelected, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_backend_selected(s, backend),
            Bindings::Handler(b) => {
                b.adc_policy_handler()
                    .call_on_backend_selected(s, request(), backend)
            }
        })
    }

    pub fn on_backend_failed(
        &self,
        ex: Box<Exchange>,
        backend: &Backend,
        reason: &str,
    ) -> (Box<Exchange>, Result<Decision, Fault>) {
        self.call_exchange(Hook::BackendFailed, ex, |b, s| match b {
            Bindings::Hooks(b) => b
                .adc_policy_hooks()
                .call_on_backend_failed(s, backend, reason),
            Bindings::Handler(b) => {
                b.adc_policy_handler()
                    .call_on_backend_failed(s, request(), backend, reason)
            }
        })
    }

    pub fn on_response_headers(
        &self,
        ex: Box<Exchange>,
    ) -> (Box<Exchange>, Result<Decision, Fault>) {
        self.call_exchange(Hook::ResponseHeaders, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_response_headers(s),
            Bindings::Handler(b) => {
                b.adc_policy_handler()
                    .call_on_response_headers(s, request(), response())
            }
        })
    }

    pub fn on_response_body(&self, ex: Box<Exchange>) -> (Box<Exchange>, Result<Decision, Fault>) {
        self.call_exchange(Hook::ResponseBody, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_response_body(s),
            Bindings::Handler(b) => {
                b.adc_policy_handler()
                    .call_on_response_body(s, request(), response())
            }
        })
    }

    /// A piece of a streamed response body; see `on-response-chunk` in the
    /// WIT. Only for a policy that [`streams`](Self::streams).
    pub fn on_response_chunk(
        &self,
        ex: Box<Exchange>,
        chunk: &[u8],
        last: bool,
    ) -> (Box<Exchange>, Result<ChunkOutput, Fault>) {
        self.call_exchange(Hook::ResponseChunk, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_response_chunk(s, chunk, last),
            Bindings::Handler(_) => {
                let guest = s.data().streaming.clone().ok_or_else(|| {
                    wasmtime::Error::msg("the component exports no streaming hook")
                })?;
                let out = guest.call_on_response_chunk(s, request(), response(), chunk, last)?;
                Ok(ChunkOutput {
                    data: out.data,
                    hold: out.hold,
                })
            }
        })
    }

    pub fn on_end(
        &self,
        ex: Box<Exchange>,
        summary: &Transaction,
    ) -> (Box<Exchange>, Result<(), Fault>) {
        self.call_exchange(Hook::End, ex, |b, s| match b {
            Bindings::Hooks(b) => b.adc_policy_hooks().call_on_end(s, summary),
            Bindings::Handler(b) => b.adc_policy_handler().call_on_end(s, request(), summary),
        })
    }

    fn call_exchange<R>(
        &self,
        hook: Hook,
        ex: Box<Exchange>,
        f: impl FnOnce(&Bindings, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> (Box<Exchange>, Result<R, Fault>) {
        let (ex, result) = self.call(hook, Some(ex), f);
        (
            ex.expect("the store hands the exchange back after every call"),
            result,
        )
    }

    /// Labels naming this policy version, for metrics of callers.
    pub fn labels(&self) -> &[(&'static str, String); 2] {
        &self.labels
    }
}

fn request() -> Resource<super::RequestRef> {
    Resource::new_borrow(0)
}

fn response() -> Resource<super::ResponseRef> {
    Resource::new_borrow(1)
}
