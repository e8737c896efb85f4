//! Start-up, reload and shutdown: `adc run` and `adc check`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::policy::{Engine, EngineOptions};
use crate::runtime::{self, Directory, Pools, Shared};

/// Validate a configuration and load its policies, without serving.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    let engine = Engine::new(EngineOptions {
        cache_dir: config.cache_dir(path),
    })?;
    // The certificates and keys, loaded and checked as `adc run` does.
    crate::listeners::build_tls(&config, path)?;
    let pools = runtime::build_pools(&mut config)?;
    runtime::load_policies(&engine, &config, path, Arc::new(Pools(pools)))
        .map_err(|refused| policy_refused(&config, path, refused))?;
    Ok(())
}

/// A policy that did not load, with the line of its `file` key.
fn policy_refused(
    config: &Config,
    path: &Path,
    (name, file, e): (String, PathBuf, crate::policy::LoadError),
) -> anyhow::Error {
    let line = config
        .policies
        .get(&name)
        .map_or(0, |p| config.line_of(&p.file));
    anyhow::anyhow!(
        "{}:{line}: policy {name:?} ({}): {e}",
        path.display(),
        file.display()
    )
}

/// A running adc, for `adc run` and for tests. Dropping it without
/// [`Running::shutdown`] ends its connections at once.
pub struct Running {
    pub shared: Arc<Shared>,
    /// Bound listener addresses by name.
    pub listeners: HashMap<String, std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop accepting and drain: each HTTP/1.1 connection finishes the
    /// request it is serving (its response says `Connection: close`) and
    /// closes, idle ones at once; HTTP/2 and HTTP/3 connections get GOAWAY
    /// and close when their streams are done (an HTTP/2 connection without
    /// a stream within a second, whether or not its client answers). Returns when no request or
    /// connection is left, or at the drain timeout, whichever comes first.
    /// From the start of the drain `/readyz` answers 503, so that a load
    /// balancer in front stops sending.
    pub async fn shutdown(mut self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        self.shared.workers.drain();
        let drain = self.shared.runtime.load().limits.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        let busy = |s: &Shared| {
            s.inflight.load(Ordering::Relaxed) > 0 || s.connections.load(Ordering::Relaxed) > 0
        };
        while busy(&self.shared) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
        }
        // Dropping the watch handle stops its task. A reload in progress
        // holds it (and may be loading policies for a while): not waited
        // for, its watch ends with it.
        if let Ok(mut watching) = self.shared.watcher.try_lock() {
            watching.take();
        }
        self.shared.workers.stop();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.workers.stop();
    }
}

/// Start everything a config describes, with the configuration's number of
/// worker threads. Listener and admin addresses with port 0 get a free port
/// (see [`Running::listeners`]).
pub async fn start(path: &Path) -> anyhow::Result<Running> {
    start_with(path, None).await
}

/// [`start`], with `workers` threads serving connections instead of the
/// configuration's `workers` (0 there means one per core).
pub async fn start_with(path: &Path, workers: Option<usize>) -> anyhow::Result<Running> {
    // Every path the configuration names is resolved against its folder:
    // made absolute once, they match the paths the folder watch reports,
    // and a reload finds the same file whatever the working directory.
    let absolute =
        std::path::absolute(path).with_context(|| format!("config path {}", path.display()))?;
    let path = absolute.as_path();
    let metrics_handle = crate::telemetry::prometheus();
    let mut config = Config::load(path)?;
    let workers = workers
        .or((config.workers > 0).then_some(config.workers))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers = crate::workers::Workers::start(workers).context("worker threads")?;
    let engine = Engine::new(EngineOptions {
        cache_dir: config.cache_dir(path),
    })?;

    // Stopped with the rest at shutdown.
    let mut demos = Vec::new();
    if let Some(demo) = &config.demo {
        for (i, addr) in demo.backends.iter().enumerate() {
            let name = format!("demo-{}", i + 1);
            let (bound, task) = crate::demo::start(name.clone(), *addr)
                .await
                .with_context(|| format!("demo backend {addr}"))?;
            tracing::info!(%bound, %name, "demo backend started");
            demos.push(task);
        }
    }

    let listener_specs = crate::listeners::Spec::build_all(&config, path)?;
    let admin_addr = *config.admin.listen.get_ref();
    let admin_token = config.admin.token.clone();

    let shared = Arc::new_cyclic(|weak| Shared {
        runtime: ArcSwap::from_pointee(
            runtime::build_runtime(
                Config::parse("", "").expect("empty config is valid"),
                path,
                HashMap::new(),
            )
            .expect("an empty config has nothing to fail"),
        ),
        policies: ArcSwap::from_pointee(HashMap::new()),
        engine: engine.clone(),
        inflight: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        config_path: path.to_path_buf(),
        policy_errors: Default::default(),
        last_reload: Default::default(),
        directory: Arc::new(Directory(weak.clone())),
        tls: listener_specs
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.tls()?.clone())))
            .collect(),
        watcher: Default::default(),
        workers,
    });
    let pools = runtime::build_pools(&mut config)?;
    let directory = Arc::new(Pools(pools.clone()));
    let policies = runtime::load_policies(&engine, &config, path, directory)
        .map_err(|refused| policy_refused(&config, path, refused))?;
    let watched = watched_dir(&config, path);
    let rt = runtime::build_runtime(config, path, pools)?;
    for pool in rt.pools.values() {
        crate::health::start(pool);
    }
    shared.policies.store(Arc::new(policies));
    shared.runtime.store(Arc::new(rt));

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = demos;
    let mut listeners = HashMap::new();
    for spec in listener_specs {
        let (bound, mut started) = spec.start(shared.clone(), shutdown_rx.clone()).await?;
        listeners.insert(spec.name.to_string(), bound);
        tasks.append(&mut started);
    }

    let admin_listener =
        crate::server::bind(admin_addr).with_context(|| format!("admin address {admin_addr}"))?;
    let admin = admin_listener.local_addr()?;
    tracing::info!(address = %admin, "admin interface listening");
    tasks.push(tokio::spawn(crate::admin::serve(
        shared.clone(),
        admin_listener,
        admin_token,
        metrics_handle.clone(),
    )));

    *shared.watcher.lock().await = crate::watch::follow(&shared, None, watched);

    // Histogram samples are kept until drained: drain them even when
    // nothing scrapes /metrics, so memory does not grow with traffic.
    let upkeep = metrics_handle.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    }));

    let sweeper = engine.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweeper.sweep_tables();
        }
    }));

    Ok(Running {
        shared,
        listeners,
        admin,
        shutdown,
        tasks,
    })
}

/// The policy folder to watch, if the configuration wants one watched.
fn watched_dir(config: &Config, path: &Path) -> Option<PathBuf> {
    config
        .engine
        .watch
        .unwrap_or(true)
        .then(|| config.policy_dir(path))
}

/// Re-read the config file (see [`reload_blocking`]) off the async workers,
/// since compiling policies takes a while, one reload at a time; then watch
/// the policy folder the new configuration names.
pub async fn reload(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let mut watching = shared.watcher.lock().await;
    let worker = shared.clone();
    let watched = tokio::task::spawn_blocking(move || reload_blocking(&worker))
        .await
        .context("reload task")??;
    *watching = crate::watch::follow(shared, watching.take(), watched);
    Ok(())
}

/// Re-read the config file: parse and load it in full first; only then swap
/// it in. Listener addresses are bound at start and do not change; a TLS
/// listener's certificates, names, versions and client CA do, for new
/// handshakes. Returns
/// the policy folder the new configuration wants watched.
fn reload_blocking(shared: &Arc<Shared>) -> anyhow::Result<Option<PathBuf>> {
    let path: PathBuf = shared.config_path.clone();
    let result = (|| {
        let mut config = Config::load(&path)?;
        check_listeners_unchanged(&shared.runtime.load(), &config)?;
        let tls = crate::listeners::build_tls(&config, &path)?;
        for (name, settings) in &tls {
            if shared
                .tls
                .get(name)
                .is_some_and(|live| !live.can_take(settings))
            {
                anyhow::bail!(
                    "listener {name:?}: http3 changed: restart adc to apply listener changes"
                );
            }
        }
        let pools = runtime::build_pools(&mut config)?;
        let directory = Arc::new(Pools(pools.clone()));
        let policies = runtime::load_policies(&shared.engine, &config, &path, directory).map_err(
            |refused| {
                // The policy keeps its running version; its status says
                // why the new one did not start.
                let name = refused.0.clone();
                let error = policy_refused(&config, &path, refused);
                policy_errors(shared).insert(name, format!("{error:#}"));
                error
            },
        )?;
        let watched = watched_dir(&config, &path);
        let rt = runtime::build_runtime(config, &path, pools)?;
        keep_operator_state(&shared.runtime.load(), &rt);
        // Every policy the configuration names has just started.
        policy_errors(shared).clear();
        for pool in rt.pools.values() {
            crate::health::start(pool);
        }
        shared.policies.store(Arc::new(policies));
        shared.runtime.store(Arc::new(rt));
        let draining = shared.draining.load(Ordering::Relaxed);
        for (name, settings) in tls {
            if let Some(live) = shared.tls.get(&name) {
                live.apply(settings, draining);
            }
        }
        anyhow::Ok(watched)
    })();
    *shared.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(runtime::ReloadOutcome {
        at: std::time::SystemTime::now(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
    });
    let outcome = if result.is_ok() { "ok" } else { "refused" };
    metrics::counter!("adc_config_reloads_total", "outcome" => outcome).increment(1);
    match &result {
        Ok(_) => tracing::info!(config = %path.display(), "configuration reloaded"),
        Err(e) => {
            tracing::warn!(config = %path.display(), error = %e, "configuration reload refused; the running one stays")
        }
    }
    result
}

fn policy_errors(shared: &Shared) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
    shared
        .policy_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Listeners are bound at start: a reload that adds, removes or moves one
/// is refused, with what changed, rather than half applied.
fn check_listeners_unchanged(running: &runtime::Runtime, config: &Config) -> anyhow::Result<()> {
    let now: Vec<_> = running
        .listeners
        .iter()
        .map(|l| (l.name.to_string(), l.listen, l.protocol))
        .collect();
    let new: Vec<_> = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.listen, l.protocol))
        .collect();
    if now != new {
        let show = |v: &[(String, std::net::SocketAddr, crate::config::Protocol)]| {
            v.iter()
                .map(|(n, a, p)| format!("{n} {a} {p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        anyhow::bail!(
            "listeners changed (running: [{}]; new: [{}]): restart adc to apply listener changes",
            show(&now),
            show(&new)
        );
    }
    Ok(())
}

/// What is known at run time survives a reload: drains, failed health
/// checks and ejections (see `Pool::carry_over`), matched by pool and
/// member name.
fn keep_operator_state(old: &runtime::Runtime, new: &runtime::Runtime) {
    for (name, pool) in &new.pools {
        if let Some(before) = old.pools.get(name) {
            pool.carry_over(before);
        }
    }
}
