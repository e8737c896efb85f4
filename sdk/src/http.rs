//! Handles on the request and response the host holds.

use std::cell::RefCell;

use crate::{headers, sys};

/// Why the host refused an edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditError {
    /// Not a valid header name.
    InvalidName,
    /// Not a valid header value (control characters, line breaks).
    InvalidValue,
    /// A hop-by-hop or framing header, which the host manages.
    ForbiddenHeader,
    /// Not a valid method, URI or path.
    InvalidTarget,
    /// Not a final status (200 to 999).
    InvalidStatus,
    /// The body is not buffered in this hook.
    BodyUnavailable,
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EditError::InvalidName => "invalid header name",
            EditError::InvalidValue => "invalid header value",
            EditError::ForbiddenHeader => "header is managed by the host",
            EditError::InvalidTarget => "invalid method or target",
            EditError::InvalidStatus => "invalid status",
            EditError::BodyUnavailable => "body is not buffered in this hook",
        })
    }
}

impl std::error::Error for EditError {}

/// The client's request, held by the host. Reading a value copies only that
/// value into the policy, except headers: the first header read in a hook
/// copies every field line at once (one host call, see [`crate::headers`])
/// and later reads in the hook use that copy until the request is edited.
/// Header names match without regard to case.
pub struct Request<'a>(&'a sys::Request, Block);

impl<'a> Request<'a> {
    #[doc(hidden)]
    pub fn __from_sys(inner: &'a sys::Request) -> Self {
        Request(inner, Block::default())
    }

    /// The method, such as `GET`.
    pub fn method(&self) -> String {
        self.0.method()
    }

    /// Replace the method.
    ///
    /// # Errors
    ///
    /// [`EditError::InvalidTarget`] when `method` is not a method token.
    pub fn set_method(&self, method: &str) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_method(method).map_err(sys::edit_error)
    }

    /// Path and query, as they will be forwarded.
    pub fn uri(&self) -> String {
        self.0.uri()
    }

    /// Path and query as the client sent them: before the host normalised
    /// the path and before any policy's [`Request::set_uri`]. For inspection
    /// (`%2e%2e` and `..` are still there); [`Request::uri`] is what is
    /// forwarded, and what routing decisions should read.
    ///
    /// Added to `adc:policy@0.1.0` after its first release: a policy that
    /// calls it needs a host that has it.
    pub fn original_uri(&self) -> String {
        self.0.original_uri()
    }

    /// Replace path and query with an origin-form target (`/path?query`).
    ///
    /// # Errors
    ///
    /// [`EditError::InvalidTarget`] when `uri` does not start with `/` or
    /// is not a valid target.
    pub fn set_uri(&self, uri: &str) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_uri(uri).map_err(sys::edit_error)
    }

    /// The normalised path: unreserved characters percent-decoded, dot
    /// segments removed (see [`crate::text::normalize_path`]).
    pub fn path(&self) -> String {
        self.0.path()
    }

    /// The raw query, without `?`.
    pub fn query(&self) -> Option<String> {
        self.0.query()
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.0.query_param(name)
    }

    /// The host the client asked for, lowercased, without port.
    pub fn host(&self) -> Option<String> {
        self.0.host()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> String {
        self.0.scheme()
    }

    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    pub fn version(&self) -> String {
        self.0.version()
    }

    /// The client's address.
    pub fn client_ip(&self) -> String {
        self.0.client_ip()
    }

    /// The subject of the client certificate the TLS handshake verified
    /// (mutual TLS), such as `CN=client one, O=Example`; `None` without one.
    pub fn client_certificate(&self) -> Option<String> {
        self.0.client_certificate()
    }

    /// The subject alternative names of the verified client certificate, in
    /// its order, each with its kind: `DNS:api.example`,
    /// `URI:spiffe://example/api`, `email:ops@example.com`, `IP:192.0.2.7`.
    /// Empty without a certificate.
    pub fn client_certificate_sans(&self) -> Vec<String> {
        self.0.client_certificate_sans()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.1
            .read(|| self.0.header_block(), |b| headers::first(b, name))
    }

    /// Every value of a header, one per field line, in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.1
            .read(|| self.0.header_block(), |b| headers::values(b, name))
    }

    /// The names of the headers present, lowercased, each once.
    pub fn header_names(&self) -> Vec<String> {
        self.1.read(|| self.0.header_block(), headers::names)
    }

    /// Replace every value of a header with `value`.
    ///
    /// # Errors
    ///
    /// [`EditError::InvalidName`], [`EditError::InvalidValue`], or
    /// [`EditError::ForbiddenHeader`] for headers the host manages.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_header(name, value).map_err(sys::edit_error)
    }

    /// Add a field line, keeping the values present.
    ///
    /// # Errors
    ///
    /// As [`Request::set_header`].
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.1.clear();
        self.0.append_header(name, value).map_err(sys::edit_error)
    }

    /// Remove every value of a header; true when one was present.
    pub fn remove_header(&self, name: &str) -> bool {
        self.1.clear();
        self.0.remove_header(name)
    }

    /// A cookie's value, looked up across every `Cookie` field, quotes
    /// removed.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.0.cookie(name)
    }

    /// Every cookie as `(name, value)`, in order.
    pub fn cookies(&self) -> Vec<(String, String)> {
        self.0.cookies()
    }

    /// The buffered body, in `on_request_body`.
    pub fn body(&self) -> Option<Vec<u8>> {
        self.0.body()
    }

    /// Replace the body, in `on_request_body`.
    ///
    /// # Errors
    ///
    /// [`EditError::BodyUnavailable`] in any other hook.
    pub fn set_body(&self, body: &[u8]) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_body(body).map_err(sys::edit_error)
    }

    /// A transaction variable set earlier in this transaction, by this
    /// policy or another of the chain. An instance serves many transactions
    /// in turn, so what one transaction must remember between hooks (the
    /// member chosen, a decision taken) goes here, not in `self`.
    pub fn var(&self, name: &str) -> Option<String> {
        self.0.var(name)
    }

    /// Set a transaction variable until the transaction ends.
    pub fn set_var(&self, name: &str, value: &str) {
        self.0.set_var(name, value)
    }
}

/// The backend's response (or a policy's own answer), held by the host.
pub struct Response<'a>(&'a sys::Response, Block);

impl<'a> Response<'a> {
    #[doc(hidden)]
    pub fn __from_sys(inner: &'a sys::Response) -> Self {
        Response(inner, Block::default())
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    /// Replace the status.
    ///
    /// # Errors
    ///
    /// [`EditError::InvalidStatus`] outside 100-999.
    pub fn set_status(&self, status: u16) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_status(status).map_err(sys::edit_error)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.1
            .read(|| self.0.header_block(), |b| headers::first(b, name))
    }

    /// Every value of a header, one per field line: two `Set-Cookie` lines
    /// are two values.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.1
            .read(|| self.0.header_block(), |b| headers::values(b, name))
    }

    /// The names of the headers present, lowercased, each once.
    pub fn header_names(&self) -> Vec<String> {
        self.1.read(|| self.0.header_block(), headers::names)
    }

    /// Replace every value of a header with `value`.
    ///
    /// # Errors
    ///
    /// As [`Request::set_header`].
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_header(name, value).map_err(sys::edit_error)
    }

    /// Add a field line, keeping the values present: an added `Set-Cookie`
    /// reaches the client as its own line.
    ///
    /// # Errors
    ///
    /// As [`Request::set_header`].
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.1.clear();
        self.0.append_header(name, value).map_err(sys::edit_error)
    }

    /// Remove every value of a header; true when one was present.
    pub fn remove_header(&self, name: &str) -> bool {
        self.1.clear();
        self.0.remove_header(name)
    }

    /// The buffered body, in `on_response_body`.
    pub fn body(&self) -> Option<Vec<u8>> {
        self.0.body()
    }

    /// Replace the body, in `on_response_body`.
    ///
    /// # Errors
    ///
    /// [`EditError::BodyUnavailable`] in any other hook.
    pub fn set_body(&self, body: &[u8]) -> Result<(), EditError> {
        self.1.clear();
        self.0.set_body(body).map_err(sys::edit_error)
    }

    /// Pass this response's body through
    /// [`Policy::on_response_chunk`](crate::Policy::on_response_chunk)
    /// piece by piece as it arrives, whatever its length; nothing is
    /// buffered whole. Call it in `on_response_headers`, deciding per
    /// response from its headers (a compressed body's bytes are not its
    /// text). The host drops `Content-Length`, known only at the end.
    ///
    /// Added to `adc:policy@0.1.0` after its first release: a policy that
    /// calls it needs a host that has it.
    ///
    /// # Errors
    ///
    /// [`EditError::BodyUnavailable`] outside `on_response_headers`, and
    /// for a response without a body (to `HEAD`; 1xx, 204, 304).
    pub fn stream_body(&self) -> Result<(), EditError> {
        self.1.clear();
        self.0.stream_body().map_err(sys::edit_error)
    }
}

/// The header block read in this hook, kept until the message changes: a
/// policy reading several headers calls the host once
/// (see [`crate::headers`]).
#[derive(Default)]
struct Block(RefCell<Option<Vec<u8>>>);

impl Block {
    fn read<R>(&self, fetch: impl FnOnce() -> Vec<u8>, f: impl FnOnce(&[u8]) -> R) -> R {
        let mut slot = self.0.borrow_mut();
        f(slot.get_or_insert_with(fetch))
    }

    fn clear(&self) {
        self.0.borrow_mut().take();
    }
}

/// Whether the host accepts a header set or append, and if not why, in the
/// order the host checks: the name, then whether it manages that header,
/// then the value. The mock host of `crate::testing` answers with it (a
/// Wasm build has the real host instead).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn check_edit(name: &str, value: &str) -> Result<(), EditError> {
    use crate::text;
    if !text::valid_header_name(name) {
        Err(EditError::InvalidName)
    } else if text::is_managed_header(name) {
        Err(EditError::ForbiddenHeader)
    } else if !text::valid_header_value(value) {
        Err(EditError::InvalidValue)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::EditError;
    use crate::testing::MockRequest;

    /// The mock refuses an edit with the reason the host gives: it checks
    /// the name, then whether the host manages the header, then the value
    /// (it once checked the value before the managed list, so a test saw
    /// `InvalidValue` where the host says `ForbiddenHeader`).
    #[test]
    fn the_mock_refuses_edits_for_the_reason_the_host_gives() {
        let mock = MockRequest::get("/");
        let req = mock.as_request();
        let cases = [
            ("bad name", "a\nb", EditError::InvalidName),
            ("connection", "a\nb", EditError::ForbiddenHeader),
            ("x-a", "a\r\nb", EditError::InvalidValue),
        ];
        for (name, value, why) in cases {
            assert_eq!(req.set_header(name, value), Err(why), "{name}");
            assert_eq!(req.append_header(name, value), Err(why), "{name}");
        }
        assert!(req.header("x-a").is_none());
    }

    /// Like the host, the mock takes only a final status: an interim one
    /// (1xx) would need another response after it.
    #[test]
    fn the_mock_takes_only_a_final_status() {
        let mock = crate::testing::MockResponse::new(200);
        let resp = mock.as_response();
        for status in [0, 99, 100, 101, 199, 1000] {
            assert_eq!(
                resp.set_status(status),
                Err(EditError::InvalidStatus),
                "{status}"
            );
        }
        for status in [200, 204, 304, 999] {
            assert_eq!(resp.set_status(status), Ok(()), "{status}");
            assert_eq!(resp.status(), status);
        }
    }
}
