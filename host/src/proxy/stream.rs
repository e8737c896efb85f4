//! Response bodies that policies transform as they stream: each piece goes
//! through the `on-response-chunk` hook of every policy that asked for the
//! body in `on-response-headers`, in chain order.
//!
//! A policy keeps no state between pieces (one instance serves many
//! responses in turn). What it needs again, the start of a match that a
//! chunk boundary cuts, it hands back as a count of trailing bytes to hold;
//! the host keeps those here and puts them in front of the next piece. The
//! hold is bounded, and so is a piece, so a streamed response holds at most
//! a few hundred KiB however long its body.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;

use super::{misplaced, Body, BoxError, Txn};
use crate::error::ProxyError;
use crate::policy::{BodyStream, Exchange, Hook, PolicyRef};

/// Most bytes a policy may hold back between pieces.
pub const MAX_HOLD: usize = 64 * 1024;

/// Most new bytes handed to a policy in one call: a larger frame is cut,
/// so that each call's work (and its copy into the instance) stays small.
pub const MAX_PIECE: usize = 64 * 1024;

/// Whether a policy in `on-response-headers` may ask to stream the body:
/// not when the response has none.
pub fn may_stream(ex: &Exchange) -> BodyStream {
    let bodiless = |status: StatusCode| {
        status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
    };
    match &ex.response {
        Some(r) if ex.request.method != Method::HEAD && !bodiless(r.status) => BodyStream::Open,
        _ => BodyStream::Closed,
    }
}

/// Hand the response over with its body passing through the policies at
/// `txn.streams`. The length is unknown until the end, so Content-Length
/// goes; end hooks run now, when the head is handed over, as for any
/// response.
pub(super) fn respond(mut txn: Txn, body: Body) -> Response<Body> {
    let mut parts = txn
        .ex
        .response
        .take()
        .expect("response parts are in the exchange until sent");
    parts.headers.remove(header::CONTENT_LENGTH);
    // The chunk hooks read the head as it was sent.
    txn.ex.response = Some(parts.clone());
    txn.ex.body_stream = BodyStream::Streaming;
    txn.end(parts.status.as_u16());
    let stages = txn
        .streams
        .iter()
        .map(|&i| Stage {
            policy: txn.chain[i].clone(),
            held: BytesMut::new(),
            off: false,
            warned: false,
        })
        .collect();
    let body = Transform {
        inner: body,
        stages,
        ex: Some(txn.ex),
        trailers: None,
        ended: false,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// One policy's place in the stream.
struct Stage {
    policy: PolicyRef,
    /// What the policy asked to see again, in front of the next piece.
    held: BytesMut,
    /// Past a fault with fail-open: the rest passes unchanged.
    off: bool,
    /// A hold over the bounds was reported for this response.
    warned: bool,
}

struct Transform {
    inner: Body,
    stages: Vec<Stage>,
    /// Lent to each call; gone after a fault ends the body.
    ex: Option<Box<Exchange>>,
    /// Trailers of the backend's body, sent after the last piece.
    trailers: Option<Frame<Bytes>>,
    ended: bool,
}

impl Transform {
    /// Pass new bytes (and, with `last`, the end) through every stage.
    fn pass(&mut self, data: Bytes, last: bool) -> Result<Bytes, BoxError> {
        let mut data = data;
        for i in 0..self.stages.len() {
            data = self.stage(i, data, last)?;
        }
        Ok(data)
    }

    /// One stage: the bytes in pieces of at most [`MAX_PIECE`], each behind
    /// what the stage held.
    fn stage(&mut self, i: usize, data: Bytes, last: bool) -> Result<Bytes, BoxError> {
        if self.stages[i].off {
            return Ok(data);
        }
        let mut out = BytesMut::new();
        let mut rest = data;
        loop {
            let piece = rest.split_to(rest.len().min(MAX_PIECE));
            let final_piece = rest.is_empty();
            let sent = self.call(i, piece, last && final_piece)?;
            if final_piece && out.is_empty() {
                return Ok(sent);
            }
            out.extend_from_slice(&sent);
            if final_piece {
                return Ok(out.freeze());
            }
        }
    }

    /// One call of a stage's hook, and what it sends on.
    fn call(&mut self, i: usize, piece: Bytes, last: bool) -> Result<Bytes, BoxError> {
        let stage = &mut self.stages[i];
        let input = if stage.held.is_empty() {
            piece
        } else {
            stage.held.extend_from_slice(&piece);
            stage.held.split().freeze()
        };
        let ex = self.ex.take().ok_or_else(|| ended(&stage.policy))?;
        let (ex, result) = stage.policy.on_response_chunk(ex, &input, last);
        self.ex = Some(ex);
        let output = match result {
            Ok(output) => output,
            Err(_) if stage.policy.fail_open() => {
                // The fault is counted and logged; the rest passes as it is.
                stage.off = true;
                return Ok(input);
            }
            Err(fault) => {
                self.ex = None;
                let error = ProxyError::Policy(stage.policy.name().to_owned(), fault.to_string());
                return Err(BoxError(Box::new(error)));
            }
        };

        let asked = output.hold as usize;
        let hold = if last {
            0
        } else {
            asked.min(input.len()).min(MAX_HOLD)
        };
        if !last && hold < asked && !stage.warned {
            stage.warned = true;
            misplaced(&stage.policy, Hook::ResponseChunk);
        }
        // What the policy asked to hold but cannot be held goes on as it is.
        let unchanged = input.slice(input.len() - asked.min(input.len())..input.len() - hold);
        stage.held.extend_from_slice(&input[input.len() - hold..]);
        if unchanged.is_empty() {
            return Ok(Bytes::from(output.data));
        }
        let mut sent = BytesMut::from(&output.data[..]);
        sent.extend_from_slice(&unchanged);
        Ok(sent.freeze())
    }

    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        self.trailers = None;
        Poll::Ready(Some(Err(error)))
    }
}

fn ended(policy: &PolicyRef) -> BoxError {
    BoxError(Box::new(ProxyError::Policy(
        policy.name().to_owned(),
        "the response already failed".to_owned(),
    )))
}

impl http_body::Body for Transform {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            let (data, last) = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data, false),
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        (Bytes::new(), true)
                    }
                },
                Some(Err(e)) => return this.fail(e),
                None => (Bytes::new(), true),
            };
            this.ended = last;
            match this.pass(data, last) {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.trailers.is_none()
    }
}
