//! The request body on its way to a backend, watched so that a fault of the
//! client's is never blamed on the member.
//!
//! A body that fails (malformed chunks, cut short, the client gone) fails
//! the backend request with it, and a client that sends its body slowly
//! keeps the backend from answering in time. Neither says anything of the
//! member, so neither may count towards its passive ejection: else any
//! client could take a healthy member out of service. The body tells which
//! side it last waited on, and since when; only a request with a body is
//! watched.
//!
//! Waiting on the client says little by itself: a large upload in flight
//! waits on the client between any two of its frames, a few microseconds
//! each. The client is blamed only once it has *stalled*: the backend's
//! side asked for more, and nothing came for at least [`stall_threshold`].
//! A backend that fails, or answers 5xx, while the body is flowing is
//! failing by itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;

use super::{Body, BoxError};

/// How long a request body must have made no progress, the backend's side
/// waiting for it, before the client is held to have stalled: a second, or
/// half of `header_timeout` when that is shorter.
///
/// A client whose upload flows delivers a frame every few milliseconds (a
/// single TCP segment makes one); even a link of a few kilobytes a second
/// makes a frame well within a second. A whole second with nothing is no
/// jitter but a client that stopped. Half of `header_timeout` at most, so
/// that a client who stalled is found out before adc's own wait for the
/// answer runs out (that wait starts before the body's first frame, so the
/// stall seen then is always shorter than `header_timeout`).
pub fn stall_threshold(header_timeout: Duration) -> Duration {
    (header_timeout / 2).min(Duration::from_secs(1))
}

/// Where the body stands; shared by the body (inside hyper) and the
/// pipeline.
#[derive(Debug)]
pub struct Upload {
    state: AtomicU8,
    /// When the body began to be watched: the times below count from it.
    base: quanta::Instant,
    /// Since when (nanoseconds after `base`) the backend's side has waited
    /// on the client, while the state is `WITH_CLIENT`.
    waiting_since: AtomicU64,
    /// See [`stall_threshold`].
    threshold: Duration,
}

/// Handed to the backend's side as far as the client has sent it: the
/// backend side has yet to ask for more.
const WITH_BACKEND: u8 = 0;
/// The backend side asked for more, and the client has not sent it yet.
const WITH_CLIENT: u8 = 1;
/// Read from the client to its end.
const DONE: u8 = 2;
/// The client's body failed.
const FAILED: u8 = 3;

impl Upload {
    /// Watch `body`, unless it is empty (nothing can go wrong with it); the
    /// client has stalled once it has kept the backend's side waiting for
    /// `threshold`.
    pub fn watch(body: Body, threshold: Duration) -> (Body, Option<Arc<Upload>>) {
        if http_body::Body::is_end_stream(&body) {
            return (body, None);
        }
        let upload = Arc::new(Upload {
            state: AtomicU8::new(WITH_BACKEND),
            base: quanta::Instant::now(),
            waiting_since: AtomicU64::new(0),
            threshold,
        });
        let watched = Watched {
            inner: body,
            upload: upload.clone(),
        };
        (watched.boxed_unsync(), Some(upload))
    }

    /// The client's body failed: whatever the backend request did next is
    /// the client's doing.
    pub fn failed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == FAILED
    }

    /// The backend's side is waiting for body bytes the client has not
    /// sent, and has been for at least the stall threshold: the client
    /// stalled, and whatever the backend does about it is the client's
    /// doing.
    pub fn stalled(&self) -> bool {
        if self.state.load(Ordering::Acquire) != WITH_CLIENT {
            return false;
        }
        let since = Duration::from_nanos(self.waiting_since.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(since) >= self.threshold
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Whether the request whose body is `upload` (if any) failed by the
/// client's fault.
pub fn client_failed(upload: Option<&Arc<Upload>>) -> bool {
    upload.is_some_and(|u| u.failed())
}

/// Whether the client's body failed, or stalled: either way, what the
/// backend did meanwhile is not held against the member.
pub fn client_at_fault(upload: Option<&Arc<Upload>>) -> bool {
    upload.is_some_and(|u| u.failed() || u.stalled())
}

struct Watched {
    inner: Body,
    upload: Arc<Upload>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let state = match &polled {
            Poll::Pending => WITH_CLIENT,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => DONE,
            Poll::Ready(Some(Ok(_))) => WITH_BACKEND,
            Poll::Ready(Some(Err(_))) => FAILED,
            Poll::Ready(None) => DONE,
        };
        let was = self.upload.state.load(Ordering::Relaxed);
        // A failure stays: nothing after it makes the body whole.
        if was != FAILED && was != state {
            if state == WITH_CLIENT {
                // The wait begins: one clock read per wait, about one per
                // frame (a poll that finds nothing again reads none).
                let now = self.upload.nanos();
                self.upload.waiting_since.store(now, Ordering::Relaxed);
            }
            // Released after the time, so that a reader who sees the wait
            // sees when it began.
            self.upload.state.store(state, Ordering::Release);
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
