//! The request body on its way to a backend, watched so that a fault of the
//! client's is never blamed on the member.
//!
//! A body that fails (malformed chunks, cut short, the client gone) fails
//! the backend request with it, and a client that sends its body slowly
//! keeps the backend from answering in time. Neither says anything of the
//! member, so neither may count towards its passive ejection: else any
//! client could take a healthy member out of service. The body tells which
//! side it last waited on; only a request with a body is watched.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;

use super::{Body, BoxError};

/// Where the body stands; shared by the body (inside hyper) and the
/// pipeline.
#[derive(Debug, Default)]
pub struct Upload(AtomicU8);

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
    /// Watch `body`, unless it is empty (nothing can go wrong with it).
    pub fn watch(body: Body) -> (Body, Option<Arc<Upload>>) {
        if http_body::Body::is_end_stream(&body) {
            return (body, None);
        }
        let upload = Arc::new(Upload::default());
        let watched = Watched {
            inner: body,
            upload: upload.clone(),
        };
        (watched.boxed_unsync(), Some(upload))
    }

    /// The client's body failed: whatever the backend request did next is
    /// the client's doing.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == FAILED
    }

    /// The backend is waiting for body bytes the client has not sent.
    pub fn waiting_for_client(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WITH_CLIENT
    }
}

/// Whether the request whose body is `upload` (if any) failed by the
/// client's fault.
pub fn client_failed(upload: Option<&Arc<Upload>>) -> bool {
    upload.is_some_and(|u| u.failed())
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
        // A failure stays: nothing after it makes the body whole.
        if self.upload.0.load(Ordering::Relaxed) != FAILED {
            self.upload.0.store(state, Ordering::Relaxed);
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
