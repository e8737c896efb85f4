//! Listeners as configured: what each one speaks, its TLS and PROXY protocol
//! settings, built (and checked) before anything binds.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, Config, Protocol};
use crate::net::Cidr;
use crate::runtime::Shared;
use crate::server::Frontend;
use crate::tls::CertStore;

/// How often certificate files are checked for changes.
const CERT_CHECK: Duration = Duration::from_secs(2);

pub struct Spec {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    proxy_from: Arc<[Cidr]>,
    tls: Option<Arc<LiveTls>>,
}

/// A TLS listener's handshake settings, built from its configuration:
/// certificates chosen by SNI, versions, client CA, ALPN.
#[derive(Debug)]
pub struct TlsSettings {
    store: Arc<CertStore>,
    tcp: Arc<rustls::ServerConfig>,
    /// For HTTP/3, when the listener serves it.
    quic: Option<quinn::ServerConfig>,
}

/// The TLS settings a listener's new handshakes take. A reload swaps them
/// whole; connections already open keep the ones they started with.
#[derive(Debug)]
pub struct LiveTls {
    tcp: ArcSwap<rustls::ServerConfig>,
    /// Serves HTTP/3: bound at start, so a reload cannot turn it on or off.
    http3: bool,
    /// The HTTP/3 endpoint, once bound.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// The first settings, until the listener starts.
    first: Mutex<Option<TlsSettings>>,
}

impl LiveTls {
    fn new(settings: TlsSettings) -> LiveTls {
        LiveTls {
            tcp: ArcSwap::new(settings.tcp.clone()),
            http3: settings.quic.is_some(),
            endpoint: Mutex::new(None),
            first: Mutex::new(Some(settings)),
        }
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.tcp.load_full())
    }

    /// Whether `settings` can replace these without a restart: whether
    /// both serve HTTP/3 or neither does.
    pub fn can_take(&self, settings: &TlsSettings) -> bool {
        self.http3 == settings.quic.is_some()
    }

    /// New handshakes use `settings` from now on; their certificate files
    /// are watched for changes from now on. `draining`: the HTTP/3 endpoint
    /// takes no new connections, and is left so.
    pub fn apply(&self, settings: TlsSettings, draining: bool) {
        settings.store.watch(CERT_CHECK);
        self.tcp.store(settings.tcp);
        let endpoint = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(endpoint), Some(quic), false) = (endpoint.as_ref(), settings.quic, draining) {
            endpoint.set_server_config(Some(quic));
        }
    }
}

/// The TLS settings of every TLS listener, by listener name, with their
/// certificates and keys loaded and checked. A refusal names the config
/// file and the line of the entry at fault.
pub fn build_tls(config: &Config, path: &Path) -> anyhow::Result<Vec<(Arc<str>, TlsSettings)>> {
    let mut built = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            built.push((
                Arc::from(l.name.as_str()),
                tls_settings(config, path, i, l, t)?,
            ));
        }
    }
    Ok(built)
}

fn tls_settings(
    config: &Config,
    path: &Path,
    i: usize,
    l: &config::Listener,
    t: &config::Tls,
) -> anyhow::Result<TlsSettings> {
    let refused = |line: usize, e: &dyn std::fmt::Display| {
        anyhow::anyhow!("{}:{line}: listener {:?}: {e}", path.display(), l.name)
    };
    let store = CertStore::new(&l.name, &t.certificates)
        .map_err(|e| refused(config.certificate_line(i, e.index), &e))?;
    let server = |alpn: &[&[u8]]| {
        crate::tls::server_config(t, store.clone(), alpn)
            .map_err(|e| refused(config.tls_line(i, "client_ca"), &e))
    };
    let tcp = Arc::new(server(&[b"h2", b"http/1.1"])?);
    let quic = if l.http3 {
        let mut c = server(&[b"h3"])?;
        c.max_early_data_size = 0;
        Some(crate::h3::server_config(
            Arc::new(c),
            config.limits.idle_timeout,
        )?)
    } else {
        None
    };
    Ok(TlsSettings { store, tcp, quic })
}

impl Spec {
    /// Every listener, with the TLS settings of [`build_tls`].
    pub fn build_all(config: &Config, path: &Path) -> anyhow::Result<Vec<Spec>> {
        let mut tls: std::collections::HashMap<_, _> =
            build_tls(config, path)?.into_iter().collect();
        Ok(config
            .listeners
            .iter()
            .map(|l| Spec {
                name: Arc::from(l.name.as_str()),
                addr: l.listen,
                protocol: l.protocol,
                proxy_from: l
                    .proxy_protocol_from
                    .iter()
                    .filter_map(|c| Cidr::parse(c.get_ref()))
                    .collect(),
                tls: tls
                    .remove(l.name.as_str())
                    .map(|t| Arc::new(LiveTls::new(t))),
            })
            .collect())
    }

    /// The live TLS settings of a TLS listener, for reloads.
    pub fn tls(&self) -> Option<&Arc<LiveTls>> {
        self.tls.as_ref()
    }

    /// Bind and serve; returns the bound address and the tasks.
    pub async fn start(
        &self,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
        let what = || format!("listener {:?} on {}", self.name, self.addr);
        let mut tasks = Vec::new();
        let bound = match self.protocol {
            Protocol::Http | Protocol::Https => {
                let listener = crate::server::bind(self.addr).with_context(what)?;
                let bound = listener.local_addr()?;
                let mut alt_svc = None;
                let first = self
                    .tls
                    .as_ref()
                    .and_then(|t| t.first.lock().unwrap_or_else(|p| p.into_inner()).take());
                if let Some(quic) = first.as_ref().and_then(|f| f.quic.clone()) {
                    let endpoint = crate::h3::bind(bound, quic).with_context(what)?;
                    if let Some(t) = &self.tls {
                        *t.endpoint.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(endpoint.clone());
                    }
                    alt_svc =
                        HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", bound.port())).ok();
                    tasks.push(tokio::spawn(crate::h3::serve(
                        shared.clone(),
                        self.name.clone(),
                        endpoint,
                        shutdown.clone(),
                    )));
                    tracing::info!(listener = %self.name, address = %bound, "HTTP/3 listening (UDP)");
                }
                if let Some(first) = &first {
                    first.store.watch(CERT_CHECK);
                }
                let frontend = Frontend {
                    name: self.name.clone(),
                    tls: self.tls.clone(),
                    proxy_from: self.proxy_from.clone(),
                    alt_svc,
                };
                tasks.push(tokio::spawn(crate::server::serve_http(
                    shared, frontend, listener, shutdown,
                )));
                bound
            }
            Protocol::Tcp => {
                let listener = crate::server::bind(self.addr).with_context(what)?;
                let bound = listener.local_addr()?;
                tasks.push(tokio::spawn(crate::l4::serve_tcp(
                    shared,
                    self.name.clone(),
                    listener,
                    self.proxy_from.clone(),
                    shutdown,
                )));
                bound
            }
            Protocol::Udp => {
                let socket = tokio::net::UdpSocket::bind(self.addr)
                    .await
                    .with_context(what)?;
                let bound = socket.local_addr()?;
                tasks.push(tokio::spawn(crate::l4::serve_udp(
                    shared,
                    self.name.clone(),
                    socket,
                    shutdown,
                )));
                bound
            }
        };
        tracing::info!(listener = %self.name, address = %bound, protocol = ?self.protocol, "listening");
        Ok((bound, tasks))
    }
}
