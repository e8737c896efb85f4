//! Listeners as configured: what each one speaks, its TLS and PROXY protocol
//! settings, built (and checked) before anything binds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::HeaderValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Protocol};
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
    tls: Option<(Arc<CertStore>, Arc<rustls::ServerConfig>)>,
    http3: Option<Arc<rustls::ServerConfig>>,
}

impl Spec {
    pub fn build_all(config: &Config) -> anyhow::Result<Vec<Spec>> {
        config
            .listeners
            .iter()
            .map(|l| {
                let proxy_from: Arc<[Cidr]> = l
                    .proxy_protocol_from
                    .iter()
                    .filter_map(|c| Cidr::parse(c.get_ref()))
                    .collect();
                let (tls, http3) = match &l.tls {
                    Some(t) => {
                        let store = CertStore::new(&l.name, &t.certificates)
                            .with_context(|| format!("listener {:?}", l.name))?;
                        let tcp =
                            crate::tls::server_config(t, store.clone(), &[b"h2", b"http/1.1"])?;
                        let quic = l
                            .http3
                            .then(|| crate::tls::server_config(t, store.clone(), &[b"h3"]))
                            .transpose()?
                            .map(|mut c| {
                                c.max_early_data_size = 0;
                                Arc::new(c)
                            });
                        (Some((store, Arc::new(tcp))), quic)
                    }
                    None => (None, None),
                };
                Ok(Spec {
                    name: Arc::from(l.name.as_str()),
                    addr: l.listen,
                    protocol: l.protocol,
                    proxy_from,
                    tls,
                    http3,
                })
            })
            .collect()
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
                if let Some(quic) = &self.http3 {
                    let endpoint = crate::h3::bind(bound, quic.clone()).with_context(what)?;
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
                if let Some((store, _)) = &self.tls {
                    store.watch(CERT_CHECK);
                }
                let frontend = Frontend {
                    name: self.name.clone(),
                    tls: self
                        .tls
                        .as_ref()
                        .map(|(_, c)| tokio_rustls::TlsAcceptor::from(c.clone())),
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
