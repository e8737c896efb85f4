//! The threads that serve client connections: each runs a single-threaded
//! tokio runtime, and a connection lives on one of them from accept to
//! close.
//!
//! A connection's tasks (the client side, its requests, the pooled backend
//! connections they use) then never move between threads or wake another
//! thread, and the per-thread parts (policy instances, backend connection
//! pools, metric handles) are used without locks. Listeners accept on the
//! runtime that started adc and hand each connection to the next worker in
//! turn.
//!
//! Each worker has a drain signal of its own, so that the connections
//! waiting on it only ever touch their own thread's copy.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;

pub struct Workers {
    handles: Vec<Handle>,
    /// Per worker: true once its connections are to finish and close.
    drains: Vec<watch::Sender<bool>>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
}

/// A connection's view of shutdown: once it has begun, a connection
/// finishes the requests it was asked and closes.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    /// Follows `signal`, which turns true when the drain begins.
    pub fn new(signal: watch::Receiver<bool>) -> Drain {
        Drain(signal)
    }

    /// Resolves once the drain has begun (at once if it already has, or if
    /// nothing can signal it any more).
    pub async fn begun(&mut self) {
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Start `count` worker threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(false);
        let mut handles = Vec::new();
        let mut drains = Vec::new();
        for i in 0..count.max(1) {
            drains.push(watch::channel(false).0);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stop.subscribe();
            std::thread::Builder::new()
                .name(format!("adc-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    // Dropping the runtime ends the tasks still on it.
                })?;
        }
        Ok(Workers {
            handles,
            drains,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Serve an accepted connection on the next worker: `serve` runs there,
    /// with the stream registered with that worker's I/O driver and the
    /// worker's drain signal.
    pub fn serve<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream, Drain) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        let drain = Drain(self.drains[i].subscribe());
        self.handles[i].spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream, drain).await,
                Err(e) => tracing::warn!(error = %e, "cannot take over an accepted connection"),
            }
        });
    }

    /// Tell every connection to finish its requests and close.
    pub fn drain(&self) {
        for d in &self.drains {
            d.send_replace(true);
        }
    }

    /// End every worker thread and the connections on it.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}
