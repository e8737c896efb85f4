//! The watched policy folder: a changed file that a policy names is loaded
//! in the background and, once it starts, swapped in; new requests use it,
//! requests in flight finish on the version they started with.
//!
//! The rules:
//! - a file is read only after its size has stopped changing (a slow copy);
//! - a file that does not load or start is refused: the previous version
//!   keeps serving, the error goes to the log, the status document and the
//!   `adc_policy_loads_total{outcome="refused"}` counter;
//! - a file holding the running version (copied back after a refused one)
//!   loads nothing and clears the refusal from the status document;
//! - a deleted file changes nothing: the loaded version keeps serving until
//!   a new file appears or the configuration drops the policy;
//! - a file is loaded with the settings of the running configuration, not
//!   of the configuration file on disk, which a reload has yet to accept;
//! - a reload that names another folder (or turns watching off) moves the
//!   watch with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::policy::PolicyOptions;
use crate::runtime::Shared;

/// A watched folder; dropping it stops the watch.
#[derive(Debug)]
pub struct Watching {
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch `wanted` (or nothing), keeping the current watch when it is the
/// same folder. A folder that cannot be watched is logged and left unwatched.
pub fn follow(
    shared: &Arc<Shared>,
    current: Option<Watching>,
    wanted: Option<PathBuf>,
) -> Option<Watching> {
    let wanted = wanted?;
    if let Some(current) = current {
        if current.dir == wanted {
            return Some(current);
        }
    }
    match start(shared.clone(), wanted.clone()) {
        Ok(task) => Some(Watching { dir: wanted, task }),
        Err(e) => {
            tracing::warn!(dir = %wanted.display(), error = %e, "cannot watch the policy folder");
            None
        }
    }
}

fn start(shared: Arc<Shared>, dir: PathBuf) -> notify::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(
                event.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            ) {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the policy folder");

    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        while let Some(first) = rx.recv().await {
            // Gather a burst of events, then handle each file once.
            let mut changed = vec![first];
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Ok(p) = rx.try_recv() {
                changed.push(p);
            }
            changed.sort();
            changed.dedup();
            for path in changed {
                reload_file(&shared, &path).await;
            }
        }
    }))
}

/// Wait until the file's size and modification time hold still.
async fn settled(path: &Path) -> Option<Vec<u8>> {
    let mut last = None;
    for _ in 0..100 {
        let meta = tokio::fs::metadata(path).await.ok()?;
        let now = (meta.len(), meta.modified().ok());
        if last == Some(now) {
            return tokio::fs::read(path).await.ok();
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::fs::read(path).await.ok()
}

/// Load a changed file for every policy the running configuration names it
/// for, with that policy's running options. The configuration file on disk
/// is not read: an edit there waits for a reload, and a bad one (refused by
/// the reload) does not stop policy files from being swapped.
async fn reload_file(shared: &Arc<Shared>, path: &Path) {
    // The same file may be spelt two ways (`a/../b`, a symbolic link):
    // compare where the names lead.
    let Ok(target) = std::fs::canonicalize(path) else {
        // Gone (or renamed away): what is loaded keeps serving, but a
        // reload or a restart will find nothing there.
        let runtime = shared.runtime.load();
        for (name, _) in runtime.policies.iter().filter(|(_, p)| p.path == path) {
            tracing::warn!(policy = %name, file = %path.display(), "policy file removed; the loaded version keeps serving, but a reload or restart needs the file back");
        }
        return;
    };
    let named: Vec<(String, PolicyOptions)> = shared
        .runtime
        .load()
        .policies
        .iter()
        .filter(|(_, p)| {
            p.path == path || std::fs::canonicalize(&p.path).is_ok_and(|c| c == target)
        })
        .map(|(name, p)| (name.clone(), p.options.clone()))
        .collect();
    if named.is_empty() {
        return;
    }
    let Some(wasm) = settled(path).await else {
        return;
    };
    let version = crate::policy::version_of(&wasm);
    for (name, options) in named {
        let current = shared
            .policies
            .load()
            .get(&name)
            .map(|p| p.version().to_owned());
        if current.as_deref() == Some(version.as_str()) {
            // The running version's own file, back after a refused one:
            // nothing to load, and the refusal no longer stands.
            shared
                .policy_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            continue;
        }

        let engine = shared.engine.clone();
        let pools = shared.directory.clone();
        let (name2, wasm2) = (name.clone(), wasm.clone());
        let loaded =
            tokio::task::spawn_blocking(move || engine.load(&name2, &wasm2, options, pools)).await;

        let mut errors = shared
            .policy_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok(Ok(policy)) => {
                tracing::info!(policy = %name, version = policy.version(), previous = ?current, file = %path.display(), "policy swapped in");
                // A read-copy-update: a reload storing its own map meanwhile
                // is not overwritten with a stale copy.
                shared.policies.rcu(|map| {
                    let mut map = HashMap::clone(map);
                    map.insert(name.clone(), policy.clone());
                    map
                });
                errors.remove(&name);
                metrics::counter!("adc_policy_loads_total", "policy" => name.clone(), "outcome" => "loaded").increment(1);
            }
            Ok(Err(e)) => {
                tracing::warn!(policy = %name, file = %path.display(), error = %e, "policy file refused; the previous version keeps serving");
                errors.insert(name.clone(), format!("{}: {e}", path.display()));
                metrics::counter!("adc_policy_loads_total", "policy" => name.clone(), "outcome" => "refused").increment(1);
            }
            Err(e) => tracing::warn!(policy = %name, error = %e, "policy load task failed"),
        }
    }
}
