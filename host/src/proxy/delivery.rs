//! The response body on its way to the client: the bytes sent are counted,
//! and a body that ends before its end is told apart from one that was
//! delivered whole.
//!
//! A body can be cut three ways once its head has gone out, and the status
//! counted in `adc_requests_total` no longer says what happened:
//! - the backend: its connection was reset or closed mid-body. A warning
//!   names the listener, pool and member, and the member's passive checks
//!   count a failure (a backend that dies mid-body is failing; its success
//!   is recorded only once a body has gone out whole);
//! - a policy: a streaming hook faulted (its fault is counted and logged
//!   where it happened);
//! - the client: it went away (or reset its HTTP/2 stream) before the end,
//!   or it read so slowly that the backend gave up sending (a
//!   `send_timeout` of the backend's own, while adc held its bytes back for
//!   a client that was not reading). That is no failure of the member.
//!
//! hyper polls a response body only when the client's connection can take
//! more. So a poll that comes [`HELD`] or more after the previous one gave
//! a frame means the client held the body back that long. A backend error
//! met within [`HELD`] of such a hold (the time to hand over what adc and
//! the kernel buffered meanwhile) is the client's; one met while the
//! client reads promptly, or while hyper waits on the backend, is the
//! member's.
//!
//! Each is counted in `adc_responses_aborted_total` by `side`. The error
//! goes on to hyper, which ends the client's response as cut: an HTTP/1.1
//! connection is closed without the last chunk (or short of its
//! Content-Length), an HTTP/2 stream is reset.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;

use super::{Body, BoxError};
use crate::error::ProxyError;
use crate::pool::Pool;

/// Where a response came from, for the log and labels of an abort.
pub struct Origin {
    pub listener: Arc<str>,
    /// `None` for an answer that no member gave (a policy's, an error's).
    pub member: Option<Answered>,
    /// Keeps the HTTP/2 stream counted as open until the body is done.
    #[allow(dead_code, reason = "held for its drop, never read")]
    pub stream: Option<crate::server::OpenStream>,
}

/// The member whose response this is.
pub struct Answered {
    pub pool: Arc<Pool>,
    /// The member's place in the pool.
    pub index: usize,
    /// Its answer already counted as a failure (a 5xx, when counted).
    pub failed: bool,
    /// Its answer was a 5xx not held against it (the client's body failed
    /// or stalled): no success either, once delivered.
    pub excused: bool,
    /// The request body, when there was one.
    pub upload: Option<Arc<super::upload::Upload>>,
}

impl Answered {
    /// The client's request body failed: what went wrong after is not the
    /// member's fault.
    pub fn client_failed(&self) -> bool {
        super::upload::client_failed(self.upload.as_ref())
    }

    /// The client's request body has stalled (see `upload`).
    pub fn client_stalled(&self) -> bool {
        self.upload.as_ref().is_some_and(|u| u.stalled())
    }
}

/// How long the client must have held the body back (not reading) for a
/// backend that gives up soon after to be excused; also how soon after.
/// Prompt readers come back for more in microseconds; a second is a client
/// that stopped, and a backend's send timeout is seconds, not less.
const HELD: Duration = Duration::from_secs(1);

struct Delivery {
    inner: Body,
    /// When the last poll gave a frame: hyper has it, and comes back for
    /// more once the client's connection can take it. `None` when the last
    /// poll found nothing (hyper waits on the backend).
    given: Option<quanta::Instant>,
    /// When the client last ended a hold of at least [`HELD`].
    held: Option<quanta::Instant>,
    sent: metrics::Counter,
    origin: Origin,
    /// The body was delivered whole, or its end was already accounted for.
    done: bool,
}

/// The response body `body` to a `method` request answered with `status`,
/// counted into `sent` and watched for an early end.
pub fn watch(
    body: Body,
    sent: &metrics::Counter,
    method: &Method,
    status: StatusCode,
    origin: Origin,
) -> Body {
    // These responses have no body to cut: hyper sends none and drops it.
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut delivery = Delivery {
        done: false,
        given: None,
        held: None,
        inner: body,
        sent: sent.clone(),
        origin,
    };
    if bodiless || http_body::Body::is_end_stream(&delivery.inner) {
        delivery.delivered();
    }
    delivery.boxed_unsync()
}

impl Delivery {
    fn labels(&self) -> (String, String) {
        match &self.origin.member {
            Some(m) => (m.pool.name.clone(), m.pool.members[m.index].name.clone()),
            None => (String::new(), String::new()),
        }
    }

    fn count(&self, side: &'static str) {
        let (pool, member) = self.labels();
        metrics::counter!(
            "adc_responses_aborted_total",
            "listener" => self.origin.listener.to_string(),
            "pool" => pool,
            "member" => member,
            "side" => side,
        )
        .increment(1);
    }

    /// The body failed on its way: a policy's fault, or the backend's.
    fn failed(&mut self, error: &BoxError) {
        self.done = true;
        if error.0.downcast_ref::<ProxyError>().is_some() {
            self.count("policy");
            return;
        }
        if self
            .origin
            .member
            .as_ref()
            .is_some_and(|m| m.client_failed() || m.client_stalled())
        {
            // The backend's answer ended because the client's request body
            // failed or stalled: the client's abort, not the member's
            // failure.
            self.count("client");
            tracing::debug!(listener = %self.origin.listener, error = %error, "the client's request body failed or stalled while its response was sent");
            return;
        }
        if self.held.is_some_and(|at| at.elapsed() <= HELD) {
            // The backend gave up while adc held its bytes back for a
            // client that was not reading.
            self.count("client");
            tracing::debug!(listener = %self.origin.listener, error = %error, "the backend gave up sending to a client that was not reading");
            return;
        }
        self.count("backend");
        let (pool, member) = self.labels();
        tracing::warn!(
            listener = %self.origin.listener,
            %pool,
            %member,
            error = %error,
            "backend response body ended early; the client's response is cut"
        );
        if let Some(m) = &self.origin.member {
            m.pool.record_failure(m.index, error);
        }
    }

    /// The body went out whole: the member's answer was a success (unless
    /// its status already counted as a failure).
    fn delivered(&mut self) {
        self.done = true;
        if let Some(m) = self
            .origin
            .member
            .as_ref()
            .filter(|m| !m.failed && !m.excused)
        {
            m.pool.record_success(m.index);
        }
    }
}

impl http_body::Body for Delivery {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let gives = matches!(polled, Poll::Ready(Some(Ok(_))));
        // One clock read per frame given (and none for a poll that finds
        // nothing after one that found nothing).
        if gives || self.given.is_some() {
            let now = quanta::Instant::now();
            if self
                .given
                .is_some_and(|at| now.saturating_duration_since(at) >= HELD)
            {
                self.held = Some(now);
            }
            self.given = gives.then_some(now);
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent.increment(data.len() as u64);
                }
                if !self.done && self.inner.is_end_stream() {
                    self.delivered();
                }
            }
            Poll::Ready(Some(Err(e))) if !self.done => self.failed(e),
            Poll::Ready(None) if !self.done => self.delivered(),
            _ => {}
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

impl Drop for Delivery {
    /// Dropped before its end: the client is gone (hyper drops the body of
    /// a connection that closed, or of an HTTP/2 stream the client reset).
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if http_body::Body::is_end_stream(&self.inner) {
            self.delivered();
            return;
        }
        self.count("client");
        tracing::debug!(listener = %self.origin.listener, "client went away before the end of the response");
    }
}
