//! The running configuration: listeners with their routes, pools, and the
//! current version of every policy. A reload builds a new one and swaps it
//! in; requests in flight keep the one they started with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{self, Config};
use crate::policy::{Engine, LoadError, MemberStatus, PolicyOptions, PolicyRef, PoolDirectory};
use crate::pool::Pool;

#[derive(Debug)]
pub struct RouteRt {
    /// The configured name, else host and prefix (`*/api/`): the `route`
    /// label of request metrics.
    pub name: Arc<str>,
    pub host: Option<String>,
    pub prefix: String,
    pub pool: String,
    pub policies: Vec<String>,
}

impl RouteRt {
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        // `name.` is the fully qualified spelling of `name`.
        let host = host.map(|h| h.strip_suffix('.').unwrap_or(h));
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(have)) => match want.strip_prefix("*.") {
                Some(suffix) => {
                    have.len() > suffix.len() + 1
                        && have.ends_with(suffix)
                        && have.as_bytes()[have.len() - suffix.len() - 1] == b'.'
                }
                None => want == have,
            },
            (Some(_), None) => false,
        };
        host_ok && path.starts_with(&self.prefix)
    }
}

#[derive(Debug)]
pub struct ListenerRt {
    pub name: Arc<str>,
    pub routes: Vec<RouteRt>,
    /// Policies whose `on-connect` hook runs for each connection.
    pub policies: Vec<String>,
    /// The pool of an L4 listener.
    pub pool: Option<String>,
    /// As configured (bound at start; a reload cannot move it).
    pub listen: std::net::SocketAddr,
    pub protocol: config::Protocol,
}

/// Where a policy's file is and how it runs, as the running configuration
/// says: what a file changed in the watched folder is loaded with.
#[derive(Debug)]
pub struct PolicyFile {
    pub path: PathBuf,
    pub options: PolicyOptions,
}

#[derive(Debug)]
pub struct Runtime {
    pub listeners: Vec<ListenerRt>,
    pub pools: HashMap<String, Arc<Pool>>,
    pub policies: HashMap<String, PolicyFile>,
    pub limits: config::Limits,
}

impl Runtime {
    pub fn listener(&self, name: &str) -> Option<&ListenerRt> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub policies: ArcSwap<HashMap<String, PolicyRef>>,
    pub engine: Arc<Engine>,
    /// Requests between arrival and response headers.
    pub inflight: AtomicUsize,
    /// HTTP client connections open (HTTP/1.1, HTTP/2 and HTTP/3): a
    /// shutdown waits for them and for `inflight` to reach zero.
    pub connections: AtomicUsize,
    /// Shutdown has begun: listeners stop accepting, `/readyz` answers 503.
    pub draining: AtomicBool,
    pub config_path: PathBuf,
    /// Per policy: the last load error, for the status document.
    pub policy_errors: std::sync::Mutex<HashMap<String, String>>,
    /// How the last reload (admin or SIGHUP) ended, for the status
    /// document; `None` until one is asked for.
    pub last_reload: std::sync::Mutex<Option<ReloadOutcome>>,
    /// The pools as policies see them.
    pub directory: Arc<dyn PoolDirectory>,
    /// The threads client connections are served on.
    pub workers: crate::workers::Workers,
    /// The TLS settings of each TLS listener, by name, which a reload
    /// replaces.
    pub tls: HashMap<Arc<str>, Arc<crate::listeners::LiveTls>>,
    /// One reload at a time; holds the folder being watched, if any.
    pub watcher: tokio::sync::Mutex<Option<crate::watch::Watching>>,
}

/// How a reload ended.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: std::time::SystemTime,
    /// Why it was refused (the running configuration stayed); `None` when
    /// it was applied.
    pub error: Option<String>,
}

/// One unit of a count a shutdown waits for (a request in flight, an open
/// connection), given back on drop: a future dropped midway, such as a
/// request whose client went away, is not counted forever.
pub struct Tally<'a>(&'a AtomicUsize);

impl<'a> Tally<'a> {
    pub fn enter(count: &'a AtomicUsize) -> Tally<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Tally(count)
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pools as policies see them, read from the current runtime.
#[derive(Debug)]
pub struct Directory(pub std::sync::Weak<Shared>);

impl PoolDirectory for Directory {
    fn names(&self) -> Vec<String> {
        self.0
            .upgrade()
            .map(|s| s.runtime.load().pools.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn members(&self, pool: &str) -> Option<Vec<MemberStatus>> {
        let shared = self.0.upgrade()?;
        let rt = shared.runtime.load();
        Some(member_status(rt.pools.get(pool)?))
    }

    fn available(&self, pool: &str) -> bool {
        self.0.upgrade().is_some_and(|s| {
            s.runtime
                .load()
                .pools
                .get(pool)
                .is_some_and(|p| p.any_available())
        })
    }
}

/// The pools of a configuration being loaded, as its policies see them
/// from `init` on: a policy checks its settings against the pools it will
/// serve with (the router refuses a rule naming a pool that is not there),
/// in `adc check` as in a start or a reload. They are the pools the
/// configuration then serves with, so what a policy reads later is live.
#[derive(Debug)]
pub struct Pools(pub HashMap<String, Arc<Pool>>);

impl PoolDirectory for Pools {
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    fn members(&self, pool: &str) -> Option<Vec<MemberStatus>> {
        Some(member_status(self.0.get(pool)?))
    }

    fn available(&self, pool: &str) -> bool {
        self.0.get(pool).is_some_and(|p| p.any_available())
    }
}

fn member_status(pool: &Pool) -> Vec<MemberStatus> {
    pool.members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberStatus {
            name: m.name.clone(),
            address: m.address.to_string(),
            weight: m.weight,
            healthy: m.healthy.load(Ordering::Relaxed) && !pool.ejected(i),
            enabled: m.enabled.load(Ordering::Relaxed),
            active: m.active.load(Ordering::Relaxed),
        })
        .collect()
}

/// The pools of a configuration, taken out of it.
pub fn build_pools(config: &mut Config) -> anyhow::Result<HashMap<String, Arc<Pool>>> {
    std::mem::take(&mut config.pools)
        .into_iter()
        .map(|(name, p)| Ok((name.clone(), Arc::new(Pool::new(&name, p)?))))
        .collect()
}

/// The running form of a configuration read from `config_path`, with its
/// pools from [`build_pools`].
pub fn build_runtime(
    config: Config,
    config_path: &Path,
    pools: HashMap<String, Arc<Pool>>,
) -> anyhow::Result<Runtime> {
    let listeners = config
        .listeners
        .iter()
        .map(|l| ListenerRt {
            name: Arc::from(l.name.as_str()),
            policies: l.policies.iter().map(|p| p.get_ref().clone()).collect(),
            pool: l.pool.as_ref().map(|p| p.get_ref().clone()),
            listen: l.listen,
            protocol: l.protocol,
            routes: l
                .routes
                .iter()
                .map(|r| RouteRt {
                    name: Arc::from(r.name.clone().unwrap_or_else(|| {
                        format!("{}{}", r.host.as_deref().unwrap_or("*"), r.path_prefix)
                    })),
                    host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    // Written as a path, compared with normalised ones:
                    // normalised alike (`/%7Eu//` is `/~u/`), as the router
                    // and ratelimit policies do with theirs.
                    prefix: adc_sdk::text::normalize_path(&r.path_prefix),
                    pool: r.pool.get_ref().clone(),
                    policies: r.policies.iter().map(|p| p.get_ref().clone()).collect(),
                })
                .collect(),
        })
        .collect();
    let dir = config.policy_dir(config_path);
    let policies = config
        .policies
        .iter()
        .map(|(name, section)| {
            let file = PolicyFile {
                path: dir.join(section.file.get_ref()),
                options: policy_options(section),
            };
            (name.clone(), file)
        })
        .collect();
    Ok(Runtime {
        listeners,
        pools,
        policies,
        limits: config.limits,
    })
}

/// The options of a policy from its config section.
pub fn policy_options(section: &config::PolicySection) -> PolicyOptions {
    PolicyOptions {
        cpu_budget: section.cpu_budget,
        memory_cap: section.memory_cap,
        fail_open: section.fail_open,
        kv_entries: section.table_entries,
        settings_json: serde_json::to_string(&section.settings).unwrap_or_else(|_| "{}".to_owned()),
        ..PolicyOptions::default()
    }
}

/// Load every policy a config names.
pub fn load_policies(
    engine: &Arc<Engine>,
    config: &Config,
    config_path: &Path,
    pools: Arc<dyn PoolDirectory>,
) -> Result<HashMap<String, PolicyRef>, (String, PathBuf, LoadError)> {
    let dir = config.policy_dir(config_path);
    let mut out = HashMap::new();
    for (name, section) in &config.policies {
        let path = dir.join(section.file.get_ref());
        let policy = engine
            .load_file(name, &path, policy_options(section), pools.clone())
            .map_err(|e| (name.clone(), path.clone(), e))?;
        tracing::info!(policy = %name, version = policy.version(), file = %path.display(), "policy loaded");
        out.insert(name.clone(), policy);
    }
    Ok(out)
}
