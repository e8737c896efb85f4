//! What hooks decide, and what the host tells them about connections,
//! backends and finished transactions.

/// What a hook decides. See each hook of [`crate::Policy`] for the cases it
/// may return; another case is counted by the host and taken as `Continue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on: the next policy of the chain, then the next phase.
    Continue,
    /// Answer the client with this response; the backend is not contacted.
    Respond(Reply),
    /// Answer with a redirect (`status` 301, 302, 303, 307 or 308).
    Redirect {
        /// The redirect status.
        status: u16,
        /// The `Location` to send the client to.
        location: String,
    },
    /// Send the request to this pool, and to this member of it when one is
    /// named and available (persistence).
    Route {
        /// Name of a configured pool.
        pool: String,
        /// Name of a member of that pool.
        member: Option<String>,
    },
    /// Close the client connection without an answer.
    Reject,
}

impl Decision {
    /// Answer with `status` and a plain-text body.
    pub fn respond(status: u16, body: impl Into<String>) -> Decision {
        Decision::Respond(
            Reply::new(status)
                .header("content-type", "text/plain; charset=utf-8")
                .body(body.into()),
        )
    }

    /// Redirect the client to `location`.
    pub fn redirect(status: u16, location: impl Into<String>) -> Decision {
        Decision::Redirect {
            status,
            location: location.into(),
        }
    }

    /// Send the request to `pool`.
    pub fn route(pool: impl Into<String>) -> Decision {
        Decision::Route {
            pool: pool.into(),
            member: None,
        }
    }

    /// Send the request to `member` of `pool`, or to another member of the
    /// pool when that one is down or drained.
    pub fn route_to_member(pool: impl Into<String>, member: impl Into<String>) -> Decision {
        Decision::Route {
            pool: pool.into(),
            member: Some(member.into()),
        }
    }
}

/// A response a policy answers with itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// An empty answer with this status.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Add a header line.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = body.into();
        self
    }
}

impl From<Reply> for Decision {
    fn from(reply: Reply) -> Decision {
        Decision::Respond(reply)
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// HTTP/1.1, HTTP/2 or HTTP/3.
    Http,
    /// L4 TCP.
    Tcp,
    /// L4 UDP.
    Udp,
}

/// A client connection as accepted by a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Name of the listener.
    pub listener: String,
    /// What the listener speaks.
    pub kind: ListenerKind,
    /// Client address.
    pub client_ip: String,
    /// Client port.
    pub client_port: u16,
    /// Local address the client reached.
    pub local_ip: String,
    /// Local port the client reached.
    pub local_port: u16,
    /// TLS server name, if any.
    pub sni: Option<String>,
    /// ALPN protocol, if any.
    pub alpn: Option<String>,
    /// Subject of the verified client certificate, with mutual TLS.
    pub client_certificate: Option<String>,
}

/// The member a request goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Pool name.
    pub pool: String,
    /// Member name.
    pub member: String,
    /// Member address, `ip:port`.
    pub address: String,
}

/// A finished transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Status sent to the client; 0 when none was.
    pub status: u16,
    /// Whole duration in nanoseconds.
    pub duration_ns: u64,
    /// Time the backend took to send its headers, in nanoseconds.
    pub upstream_ns: Option<u64>,
    /// The member used, if any.
    pub backend: Option<Backend>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}
