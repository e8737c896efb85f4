//! TLS termination: certificates chosen by SNI and reloaded when their files
//! change, ALPN, optional client certificates; and TLS towards backends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// A certificate entry of a listener that did not load: which entry (its
/// place in `certificates`), and why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CertificateError {
    pub index: usize,
    pub error: TlsError,
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        // An encrypted key is no key to the PEM reader: say what it is.
        let text = std::fs::read(path).unwrap_or_default();
        let encrypted = [&b"ENCRYPTED PRIVATE KEY"[..], b"Proc-Type: 4,ENCRYPTED"]
            .iter()
            .any(|mark| text.windows(mark.len()).any(|w| w == *mark));
        if encrypted {
            file_error(
                path,
                "the private key is encrypted; adc reads unencrypted keys (decrypt it with `openssl pkey -in KEY -out NEW`, kept readable by adc alone)",
            )
        } else {
            file_error(path, format!("no usable private key: {e}"))
        }
    })
}

/// DNS names a certificate is for: its subjectAltName entries, else its
/// common name.
fn names_in(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// Who a verified client certificate names, as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject, such as `CN=client one, O=Example`.
    pub subject: String,
    /// Subject alternative names in the certificate's order, each with its
    /// kind: `DNS:name`, `URI:spiffe://...`, `email:a@b`, `IP:192.0.2.7`.
    pub sans: Vec<String>,
}

/// The identity in a client certificate (the first of the chain the
/// handshake verified). Read once per connection.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                    GeneralName::URI(u) => Some(format!("URI:{u}")),
                    GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
                    GeneralName::IPAddress(bytes) => ip_text(bytes).map(|ip| format!("IP:{ip}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ClientIdentity {
        subject: parsed.subject().to_string(),
        sans,
    })
}

fn ip_text(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

#[derive(Debug)]
struct Resolved {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// A listener's certificates, chosen by SNI, reloaded when a file changes.
#[derive(Debug)]
pub struct CertStore {
    listener: String,
    specs: Vec<(PathBuf, PathBuf, Option<Vec<String>>)>,
    current: ArcSwap<Resolved>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertStore {
    pub fn new(
        listener: &str,
        certs: &[config::Certificate],
    ) -> Result<Arc<CertStore>, CertificateError> {
        let specs: Vec<_> = certs
            .iter()
            .map(|c| (c.cert.clone(), c.key.clone(), c.names.clone()))
            .collect();
        let resolved = Self::build(&specs)?;
        let stamps = Self::stamps_of(&specs);
        Ok(Arc::new(CertStore {
            listener: listener.to_owned(),
            specs,
            current: ArcSwap::from_pointee(resolved),
            stamps: Mutex::new(stamps),
        }))
    }

    fn stamps_of(specs: &[(PathBuf, PathBuf, Option<Vec<String>>)]) -> Vec<Option<SystemTime>> {
        specs
            .iter()
            .flat_map(|(c, k, _)| [modified(c), modified(k)])
            .collect()
    }

    fn build(
        specs: &[(PathBuf, PathBuf, Option<Vec<String>>)],
    ) -> Result<Resolved, CertificateError> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, (cert_path, key_path, names)) in specs.iter().enumerate() {
            let at = |error| CertificateError { index, error };
            let (chain, certified) = certified_key(cert_path, key_path).map_err(at)?;
            let names = names.clone().unwrap_or_else(|| names_in(&chain[0]));
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard
                        .entry(suffix.to_owned())
                        .or_insert_with(|| certified.clone()),
                    None => exact.entry(name).or_insert_with(|| certified.clone()),
                };
            }
            default.get_or_insert(certified);
        }
        let default = default.ok_or_else(|| CertificateError {
            index: 0,
            error: TlsError::Verifier("no certificate configured".into()),
        })?;
        Ok(Resolved {
            default,
            exact,
            wildcard,
        })
    }

    /// Reload when any file changed since the last look; a failed reload
    /// keeps the certificates in use.
    pub fn reload_if_changed(&self) {
        let now = Self::stamps_of(&self.specs);
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *stamps == now {
            return;
        }
        match Self::build(&self.specs) {
            Ok(resolved) => {
                self.current.store(Arc::new(resolved));
                *stamps = now;
                metrics::counter!("adc_tls_reloads_total", "listener" => self.listener.clone(), "outcome" => "ok").increment(1);
                tracing::info!(listener = %self.listener, "certificates reloaded");
            }
            Err(e) => {
                // Try again at the next change (or a completed write).
                *stamps = now;
                metrics::counter!("adc_tls_reloads_total", "listener" => self.listener.clone(), "outcome" => "refused").increment(1);
                tracing::warn!(listener = %self.listener, error = %e, "certificate reload refused; the previous certificates stay");
            }
        }
    }

    /// Watch the files: look for changes every `every`, while the store lives.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                store.reload_if_changed();
            }
        });
    }
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Arc<CertifiedKey>), TlsError> {
    let chain = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let signer = provider::sign::any_supported_type(&key).map_err(|e| file_error(key_path, e))?;
    let certified = Arc::new(CertifiedKey::new(chain.clone(), signer));
    certified.keys_match().map_err(|e| {
        file_error(
            key_path,
            format!("key does not match {}: {e}", cert_path.display()),
        )
    })?;
    Ok((chain, certified))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        let Some(name) = hello.server_name() else {
            return Some(current.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = current.exact.get(&name) {
            return Some(c.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = current.wildcard.get(parent) {
                return Some(c.clone());
            }
        }
        Some(current.default.clone())
    }
}

pub fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

/// The server configuration of a TLS listener, offering `alpn`.
pub fn server_config(
    tls: &config::Tls,
    store: Arc<CertStore>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.min_version.get_ref() == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(provider::default_provider());
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from(ca)?), provider);
            let required = tls
                .client_auth_required
                .as_ref()
                .is_none_or(|r| *r.get_ref());
            let verifier = if required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The client configuration for TLS to a pool's members.
pub fn client_config(
    tls: &config::UpstreamTls,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if tls.verify {
        let roots = match &tls.ca {
            Some(ca) => roots_from(ca)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// `verify = false`: the operator chose to trust the network to the members.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encrypted key is named as such, not as a file without a key
    /// (a review found "no items found" for it).
    #[test]
    fn an_encrypted_key_is_refused_as_encrypted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pkcs8 = dir.path().join("pkcs8.key");
        std::fs::write(
            &pkcs8,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let legacy = dir.path().join("legacy.key");
        std::fs::write(
            &legacy,
            "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIBAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .expect("write");
        for path in [&pkcs8, &legacy] {
            let e = load_key(path).expect_err("refused").to_string();
            assert!(e.contains("encrypted"), "{e}");
        }
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "").expect("write");
        let e = load_key(&empty).expect_err("refused").to_string();
        assert!(e.contains("no usable private key"), "{e}");
    }
}
