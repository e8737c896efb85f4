//! The one error type of the request path, and the one place it becomes an
//! HTTP answer.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::proxy::Body;

/// Where a request failed, and so what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("pool {0:?} is not defined")]
    UnknownPool(String),
    #[error("pool {0:?} has no healthy member")]
    NoHealthyMember(String),
    #[error("pool {0:?} has members up, but all of weight 0: they take no load-balanced requests, only those a policy sends them by name")]
    OnlyWeightZero(String),
    #[error("cannot connect to backend: {0}")]
    Connect(String),
    #[error("backend {0} did not answer within {1:?}")]
    UpstreamTimeout(String, std::time::Duration),
    #[error("backend {0} failed: {1}")]
    Upstream(String, String),
    #[error("policy {0:?} failed: {1}")]
    Policy(String, String),
    #[error("request body over the {0}-byte limit")]
    BodyTooLarge(usize),
    #[error("request header list of {0} bytes over the {1}-byte limit")]
    HeadersTooLarge(usize, usize),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's request body failed on its way to the backend.
    #[error("request body failed: {0}")]
    RequestBody(String),
    /// The backend waited for request body bytes the client did not send,
    /// until adc or the backend gave up.
    #[error("the request body did not arrive in time: {0}")]
    RequestBodyTimeout(String),
    #[error("transfer coding {0:?} is not implemented")]
    TransferCoding(String),
    /// adc is a reverse proxy: it opens no tunnels on request (CONNECT).
    #[error("method {0} is not implemented")]
    MethodNotImplemented(http::Method),
    #[error("pool {0:?} has every member drained")]
    AllDrained(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::UnknownPool(_) | ProxyError::Policy(..) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ProxyError::NoHealthyMember(_)
            | ProxyError::OnlyWeightZero(_)
            | ProxyError::AllDrained(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(_) | ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(_) | ProxyError::RequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::TransferCoding(_) | ProxyError::MethodNotImplemented(_) => {
                StatusCode::NOT_IMPLEMENTED
            }
        }
    }

    /// A short reason for the client: which kind of failure, never internal
    /// addresses beyond what the status already says.
    fn public_reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no route for this request",
            ProxyError::UnknownPool(_) => "route names an unknown pool",
            ProxyError::NoHealthyMember(_) => "no healthy backend available",
            ProxyError::OnlyWeightZero(_) => {
                "no backend takes load-balanced requests: the ones up all have weight 0"
            }
            ProxyError::Connect(_) => "bad gateway: cannot connect to a backend",
            ProxyError::UpstreamTimeout(..) => {
                "gateway timeout: the backend did not answer in time"
            }
            ProxyError::Upstream(..) => "bad gateway: the backend connection failed",
            ProxyError::Policy(..) => "a policy failed while handling this request",
            ProxyError::BodyTooLarge(_) => "request body too large",
            ProxyError::HeadersTooLarge(..) => "request header fields too large",
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::RequestBody(_) => {
                "bad request: the request body was malformed or cut short"
            }
            ProxyError::RequestBodyTimeout(_) => {
                "request timeout: the request body did not arrive in time"
            }
            ProxyError::TransferCoding(_) => "transfer coding not implemented",
            ProxyError::MethodNotImplemented(_) => "method not implemented",
            ProxyError::AllDrained(_) => "no backend available: every one is drained",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        tracing::debug!(%status, error = %self, "answering with an error");
        let mut response = Response::new(
            Full::new(Bytes::from(format!("{}\n", self.public_reason())))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
            .headers_mut()
            .insert("x-adc-error", header::HeaderValue::from_static("1"));
        response
    }
}
