//! The wasmtime engine, the linker of host functions, and compilation with a
//! cache keyed by the content hash of each file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::Policy;
use super::instance::{Fault, LoadedPolicy, Pre};
use super::kv::Table;
use super::state::{Shared, StoreState};
use super::{PolicyOptions, PoolDirectory};

/// How often the epoch advances: the grain of every CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Where compiled artifacts are kept across restarts; none keeps them
    /// in memory only. The folder must be writable by adc alone: its files
    /// are loaded as trusted machine code.
    pub cache_dir: Option<PathBuf>,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (it does not start with the Wasm magic bytes)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build it with scripts/build-policies")]
    CoreModule,
    #[error("invalid or truncated component: {0}")]
    Compile(String),
    #[error("component does not fit the adc:policy@0.1.0 contract: {0}")]
    Link(String),
    #[error("start-up (init) refused the settings: {0}")]
    Init(String),
    #[error("start-up (init) failed: {0}")]
    Trap(Fault),
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("cannot start the thread that times policy calls: {0}")]
    Ticker(std::io::Error),
}

/// The wasmtime engine shared by every policy.
pub struct Engine {
    engine: wasmtime::Engine,
    linker: Linker<StoreState>,
    compiled: Mutex<HashMap<String, Component>>,
    options: EngineOptions,
    tables: Mutex<HashMap<String, Arc<Table>>>,
    /// Whether the epoch ticker runs: it starts with the first policy load,
    /// so that a proxy without policies has no thread waking every tick.
    ticking: Mutex<bool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(options: EngineOptions) -> anyhow::Result<Arc<Engine>> {
        let wt = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config).map_err(wt)?;

        let mut linker = Linker::new(&engine);
        Policy::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s).map_err(wt)?;

        Ok(Arc::new(Engine {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            options,
            tables: Mutex::new(HashMap::new()),
            ticking: Mutex::new(false),
        }))
    }

    /// Start the epoch ticker, once: one thread for the whole process. It
    /// holds only a weak handle, so it ends with the engine.
    fn start_ticking(&self) -> Result<(), LoadError> {
        let mut ticking = self.ticking.lock().unwrap_or_else(|p| p.into_inner());
        if *ticking {
            return Ok(());
        }
        let weak = self.engine.weak();
        std::thread::Builder::new()
            .name("adc-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(LoadError::Ticker)?;
        *ticking = true;
        Ok(())
    }

    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Compile `wasm`, or take it from the cache.
    fn compile(&self, wasm: &[u8], hash: &str) -> Result<Component, LoadError> {
        if wasm.len() < 8 || wasm[..4] != *b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        if wasm[4..8] == [1, 0, 0, 0] {
            return Err(LoadError::CoreModule);
        }
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(c.clone());
        }

        let cached = self.options.cache_dir.as_ref().map(|dir| {
            let engine_hash = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                self.engine.precompile_compatibility_hash().hash(&mut h);
                h.finish()
            };
            dir.join(format!("{hash}-{engine_hash:016x}.cwasm"))
        });
        let component = match cached.as_ref().filter(|p| p.exists()) {
            Some(path) => match self.deserialize(path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled artifact");
                    self.compile_and_store(wasm, cached.as_ref())?
                }
            },
            None => self.compile_and_store(wasm, cached.as_ref())?,
        };
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_owned(), component.clone());
        Ok(component)
    }

    fn compile_and_store(
        &self,
        wasm: &[u8],
        cache: Option<&PathBuf>,
    ) -> Result<Component, LoadError> {
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        if let Some(path) = cache {
            let written = component
                .serialize()
                .map_err(std::io::Error::other)
                .and_then(|bytes| {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, path)
                });
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot write compiled artifact");
            }
        }
        Ok(component)
    }

    #[allow(
        unsafe_code,
        reason = "loads machine code that this process compiled and wrote itself"
    )]
    fn deserialize(&self, path: &std::path::Path) -> wasmtime::Result<Component> {
        // SAFETY: the file was produced by `Component::serialize` of this
        // engine (the name carries the engine's compatibility hash) into the
        // operator's cache folder, which adc alone writes.
        unsafe { Component::deserialize_file(&self.engine, path) }
    }

    /// The shared table of a policy, kept across reloads of that policy,
    /// bounded by the latest `entries`.
    fn table(&self, policy: &str, entries: usize) -> Arc<Table> {
        let table = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(policy.to_owned())
            .or_insert_with(|| Arc::new(Table::new(entries)))
            .clone();
        table.resize(entries);
        table
    }

    /// Sweep expired entries of every shared table.
    pub fn sweep_tables(&self) {
        let tables: Vec<_> = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for t in tables {
            t.sweep();
        }
    }

    /// Load a policy: compile (or find in the cache), link against the host
    /// functions, and run `init` once to check the settings. The result is
    /// ready to serve on every worker.
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        wasm: &[u8],
        options: PolicyOptions,
        pools: Arc<dyn PoolDirectory>,
    ) -> Result<Arc<LoadedPolicy>, LoadError> {
        // Budgets need the ticker before the first call, `init` included.
        self.start_ticking()?;
        let version = super::version_of(wasm);
        let full_hash = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(wasm);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let component = self.compile(wasm, &full_hash)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = Pre::new(pre)?;
        let shared = Arc::new(Shared {
            name: Arc::from(name),
            table: self.table(name, options.kv_entries),
            pools,
            series: Mutex::new(Default::default()),
            series_limit: options.metric_series,
            hasher: Default::default(),
        });
        LoadedPolicy::start(name, version, pre, shared, options)
    }

    /// Load a policy file from disk.
    pub fn load_file(
        self: &Arc<Self>,
        name: &str,
        path: &std::path::Path,
        options: PolicyOptions,
        pools: Arc<dyn PoolDirectory>,
    ) -> Result<Arc<LoadedPolicy>, LoadError> {
        let wasm = std::fs::read(path).map_err(|error| LoadError::Io {
            path: path.display().to_string(),
            error,
        })?;
        self.load(name, &wasm, options, pools)
    }
}
