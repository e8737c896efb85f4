//! The HTTP transaction as policies see it: the host's request and response,
//! lent to a policy instance for the length of one hook call.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};

use super::bindings::adc::policy::types::EditError;

/// One HTTP transaction: what the client sent (as it will be forwarded),
/// what the backend answered, and the transaction's variables.
#[derive(Debug)]
pub struct Exchange {
    pub request: http::request::Parts,
    pub client_ip: IpAddr,
    pub tls: bool,
    /// Path and query as the client sent them, before the host normalised
    /// the path and before any policy's `set-uri`.
    pub original_uri: String,
    /// The verified client certificate's identity, with mutual TLS.
    pub client_certificate: Option<std::sync::Arc<crate::tls::ClientIdentity>>,
    /// The buffered request body, only while `on-request-body` runs.
    pub request_body: Option<Bytes>,
    pub response: Option<http::response::Parts>,
    /// The buffered response body, only while `on-response-body` runs.
    pub response_body: Option<Bytes>,
    /// Transaction variables, shared by the chain (few: a Vec beats a map).
    pub vars: Vec<(String, String)>,
    /// Whether a policy may ask, or has asked, to stream the response body.
    pub body_stream: BodyStream,
}

/// Where the response body stands for `response.stream-body`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyStream {
    /// Outside `on-response-headers`, or a response without a body.
    #[default]
    Closed,
    /// In `on-response-headers` of a response with a body: a policy may ask.
    Open,
    /// The policy running now asked for it.
    Asked,
    /// The body is streaming: the head is sent and can no longer change.
    Streaming,
}

impl Exchange {
    pub fn new(request: http::request::Parts, client_ip: IpAddr, tls: bool) -> Self {
        let original_uri = request
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
        Exchange {
            original_uri,
            request,
            client_ip,
            tls,
            client_certificate: None,
            request_body: None,
            response: None,
            response_body: None,
            vars: Vec::new(),
            body_stream: BodyStream::Closed,
        }
    }

    pub fn host(&self) -> Option<String> {
        self.host_lowercase().map(std::borrow::Cow::into_owned)
    }

    /// As [`Self::host`], copied only when it has capitals to lower.
    pub fn host_lowercase(&self) -> Option<std::borrow::Cow<'_, str>> {
        let host = self
            .request
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.request.uri.authority().map(|a| a.as_str()))?;
        let host = adc_sdk::text::host_without_port(host);
        Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        })
    }

    pub fn set_uri(&mut self, uri: &str) -> Result<(), EditError> {
        if !uri.starts_with('/') {
            return Err(EditError::InvalidTarget);
        }
        let mut parts = self.request.uri.clone().into_parts();
        parts.path_and_query = Some(uri.parse().map_err(|_| EditError::InvalidTarget)?);
        self.request.uri = Uri::from_parts(parts).map_err(|_| EditError::InvalidTarget)?;
        Ok(())
    }

    pub fn set_method(&mut self, method: &str) -> Result<(), EditError> {
        self.request.method =
            Method::from_bytes(method.as_bytes()).map_err(|_| EditError::InvalidTarget)?;
        Ok(())
    }

    pub fn var(&self, name: &str) -> Option<String> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set_var(&mut self, name: String, value: String) {
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }
}

/// Header reads and edits shared by requests and responses.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(value_text)
}

pub fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(value_text).collect()
}

pub fn header_names(headers: &HeaderMap) -> Vec<String> {
    headers.keys().map(|k| k.as_str().to_owned()).collect()
}

/// Every field line in one buffer (the WIT's `header-block`), laid out as
/// `adc_sdk::headers` reads it.
pub fn header_block(headers: &HeaderMap) -> Vec<u8> {
    let size: usize = headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut block = Vec::with_capacity(size);
    for (name, value) in headers {
        adc_sdk::headers::push_line(&mut block, name.as_str(), value.as_bytes());
    }
    block
}

/// Header values are bytes; a policy sees them as text, invalid UTF-8
/// replaced.
fn value_text(value: &HeaderValue) -> String {
    match value.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}

fn checked(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), EditError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| EditError::InvalidName)?;
    if adc_sdk::text::is_managed_header(name.as_str()) {
        return Err(EditError::ForbiddenHeader);
    }
    if !adc_sdk::text::valid_header_value(value) {
        return Err(EditError::InvalidValue);
    }
    let value = HeaderValue::from_str(value).map_err(|_| EditError::InvalidValue)?;
    Ok((name, value))
}

pub fn set_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), EditError> {
    let (name, value) = checked(name, value)?;
    headers.insert(name, value);
    Ok(())
}

pub fn append_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), EditError> {
    let (name, value) = checked(name, value)?;
    headers.append(name, value);
    Ok(())
}

pub fn remove_header(headers: &mut HeaderMap, name: &str) -> bool {
    if adc_sdk::text::is_managed_header(name) {
        return false;
    }
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => {
            let present = headers.contains_key(&name);
            headers.remove(&name);
            present
        }
        Err(_) => false,
    }
}

pub fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(adc_sdk::text::parse_cookies)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK reads headers from the block: it must give what `header`
    /// and `header-values` give, repeated lines and raw bytes included.
    #[test]
    fn the_header_block_reads_as_the_single_header_calls_do() {
        let mut m = HeaderMap::new();
        m.append("set-cookie", HeaderValue::from_static("a=1; Path=/"));
        m.append("Accept", HeaderValue::from_static("*/*"));
        m.append("set-cookie", HeaderValue::from_static("b=2"));
        m.append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        m.append("x-empty", HeaderValue::from_static(""));
        let block = header_block(&m);
        for name in ["set-cookie", "ACCEPT", "x-raw", "x-empty", "x-missing"] {
            assert_eq!(
                adc_sdk::headers::first(&block, name),
                header(&m, name),
                "{name}"
            );
            assert_eq!(
                adc_sdk::headers::values(&block, name),
                header_values(&m, name),
                "{name}"
            );
        }
        assert_eq!(adc_sdk::headers::names(&block), header_names(&m));
    }
}
