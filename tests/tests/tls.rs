//! TLS offload, HTTP/2 over TLS, HTTP/3, and TLS to backends, with real
//! clients (curl, quinn and h3) and certificates made by the test.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adc_tests::{backend, client, policy, pool, pool_at, Adc, Gate};
use bytes::Buf;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf for `names`, written as `<stem>.pem` and `<stem>.key` in `dir`.
    fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        // Write the key first and rename into place, as certificate tooling
        // does, so a reader never sees a half-written pair.
        std::fs::write(dir.join("tmp.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("tmp.pem"), cert.pem()).unwrap();
        std::fs::rename(dir.join("tmp.key"), &key_path).unwrap();
        std::fs::rename(dir.join("tmp.pem"), &cert_path).unwrap();
        (cert_path, key_path)
    }

    fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// curl to `https://<name>:<port><path>` resolved to adc, trusting `ca`;
/// returns "<status> <http version>" or curl's failure.
async fn curl(adc_port: u16, name: &str, ca: &Path, extra: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{adc_port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://{name}:{adc_port}/"));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("curl runs"))
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn tls_listener(certs: &[(PathBuf, PathBuf)], extra: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = {:?}, key = {:?} }}",
                c.display().to_string(),
                k.display().to_string()
            )
        })
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[engine]\npolicy_dir = \"{{policies}}\"\nwatch = false\n\n\
         [[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"https\"\n{extra}\n\
         [listener.tls]\ncertificates = [{}]\n\
         [[listener.route]]\npool = \"web\"\npolicies = [\"rw\"]\n\n\
         [policies.rw]\nfile = \"rewrite.wasm\"\n[policies.rw.settings]\nresponse_headers = {{ set = [[\"x-served-by\", \"adc\"]] }}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn sni_chooses_between_two_certificates_over_http1_and_http2() {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("ca one"), Ca::new("ca two"));
    let a = ca1.leaf(dir.path(), "a", &["a.test"]);
    let b = ca2.leaf(dir.path(), "b", &["b.test"]);
    let (ca1_pem, ca2_pem) = (ca1.write(dir.path(), "ca1"), ca2.write(dir.path(), "ca2"));
    let web = backend("web").await;
    let adc = Adc::start(&(tls_listener(&[a, b], "") + &pool("web", "round_robin", &[&web]))).await;
    let port = adc.running.listeners["tls"].port();

    assert_eq!(
        curl(port, "a.test", &ca1_pem, &["--http1.1"])
            .await
            .unwrap(),
        "200 1.1"
    );
    assert_eq!(
        curl(port, "a.test", &ca1_pem, &["--http2"]).await.unwrap(),
        "200 2"
    );
    assert_eq!(
        curl(port, "b.test", &ca2_pem, &["--http2"]).await.unwrap(),
        "200 2"
    );
    // b.test is served b's certificate, which ca one did not sign.
    assert!(curl(port, "b.test", &ca1_pem, &[]).await.is_err());
    // An unknown name gets the default (first) certificate.
    let err = curl(port, "c.test", &ca1_pem, &[]).await.unwrap_err();
    assert!(
        err.contains("c.test") || err.contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_to_new_connections() {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("ca one"), Ca::new("ca two"));
    let a = ca1.leaf(dir.path(), "a", &["a.test"]);
    let (ca1_pem, ca2_pem) = (ca1.write(dir.path(), "ca1"), ca2.write(dir.path(), "ca2"));
    let web = backend("web").await;
    let adc = Adc::start(&(tls_listener(&[a], "") + &pool("web", "round_robin", &[&web]))).await;
    let port = adc.running.listeners["tls"].port();
    assert_eq!(
        curl(port, "a.test", &ca1_pem, &["--http1.1"])
            .await
            .unwrap(),
        "200 1.1"
    );

    ca2.leaf(dir.path(), "a", &["a.test"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if curl(port, "a.test", &ca2_pem, &[]).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        curl(port, "a.test", &ca1_pem, &[]).await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test]
async fn a_reload_applies_changed_certificate_names_and_minimum_version_to_new_handshakes() {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("ca one"), Ca::new("ca two"));
    let a = ca1.leaf(dir.path(), "a", &["a.test"]);
    // The certificate holds both names; the configuration says which it
    // answers for.
    let b = ca2.leaf(dir.path(), "b", &["*.b.test", "*.c.test"]);
    let ca2_pem = ca2.write(dir.path(), "ca2");
    let web = backend("web").await;
    let config = |names: &str, tls: &str| {
        (tls_listener(&[a.clone(), b.clone()], "") + &pool("web", "round_robin", &[&web]))
            .replace("b.key\" }", &format!("b.key\", names = [\"{names}\"] }}"))
            .replace("[listener.tls]\n", &format!("[listener.tls]\n{tls}"))
    };
    let adc = Adc::start(&config("*.b.test", "")).await;
    let port = adc.running.listeners["tls"].port();
    let tls12 = ["--tlsv1.2", "--tls-max", "1.2"];
    assert!(curl(port, "x.b.test", &ca2_pem, &tls12)
        .await
        .unwrap()
        .starts_with("200"));
    assert!(curl(port, "x.c.test", &ca2_pem, &[]).await.is_err());

    let text = config("*.c.test", "min_version = \"1.3\"\n")
        .replace("{policies}", &adc_tests::policy_dir().display().to_string());
    std::fs::write(adc.dir.path().join("adc.toml"), text).unwrap();
    let answer = client().post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());

    assert!(curl(port, "x.c.test", &ca2_pem, &[])
        .await
        .unwrap()
        .starts_with("200"));
    assert!(
        curl(port, "x.b.test", &ca2_pem, &[]).await.is_err(),
        "x.b.test gets the default certificate now"
    );
    let refused = curl(port, "x.c.test", &ca2_pem, &tls12).await.unwrap_err();
    assert!(!refused.is_empty());
}

/// An HTTP/3 connection to adc, trusting `ca`.
struct H3Client {
    endpoint: quinn::Endpoint,
    sender: h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    /// The task driving the connection; it ends with how the connection
    /// was closed.
    closed: tokio::task::JoinHandle<h3::error::ConnectionError>,
}

impl H3Client {
    async fn connect(addr: std::net::SocketAddr, name: &str, ca: &Ca) -> H3Client {
        let endpoint = quic_endpoint(client_tls(ca).with_no_client_auth());
        let conn = endpoint.connect(addr, name).unwrap().await.unwrap();
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        let closed =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        H3Client {
            endpoint,
            sender,
            closed,
        }
    }
}

/// A client TLS configuration trusting `ca`, before client authentication
/// is chosen.
fn client_tls(
    ca: &Ca,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
}

/// A QUIC client endpoint on loopback whose connections speak HTTP/3 with
/// `tls`.
fn quic_endpoint(mut tls: rustls::ClientConfig) -> quinn::Endpoint {
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// Whether a QUIC handshake with `name`, trusting `ca`, succeeds.
async fn quic_handshake(addr: std::net::SocketAddr, name: &str, ca: &Ca) -> Result<(), String> {
    let endpoint = quic_endpoint(client_tls(ca).with_no_client_auth());
    let connecting = endpoint.connect(addr, name).map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "no answer".to_owned())?;
    let outcome = result.map(|c| c.close(0u32.into(), b"done"));
    endpoint.close(0u32.into(), b"done");
    outcome.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_reload_gives_http3_handshakes_the_new_certificate_names_and_cannot_turn_http3_off() {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("ca one"), Ca::new("ca two"));
    let a = ca1.leaf(dir.path(), "a", &["a.test"]);
    let b = ca2.leaf(dir.path(), "b", &["*.b.test", "*.c.test"]);
    let web = backend("web").await;
    let config = |names: &str, http3: &str| {
        (tls_listener(&[a.clone(), b.clone()], http3) + &pool("web", "round_robin", &[&web]))
            .replace("b.key\" }", &format!("b.key\", names = [\"{names}\"] }}"))
            .replace("{policies}", &adc_tests::policy_dir().display().to_string())
    };
    let adc = Adc::start(&config("*.b.test", "http3 = true")).await;
    let addr = adc.running.listeners["tls"];
    quic_handshake(addr, "x.b.test", &ca2).await.unwrap();
    assert!(quic_handshake(addr, "x.c.test", &ca2).await.is_err());

    let path = adc.dir.path().join("adc.toml");
    std::fs::write(&path, config("*.c.test", "http3 = true")).unwrap();
    let answer = client().post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    quic_handshake(addr, "x.c.test", &ca2).await.unwrap();
    assert!(quic_handshake(addr, "x.b.test", &ca2).await.is_err());

    // The HTTP/3 endpoint is bound at start: turning it off needs a restart.
    std::fs::write(&path, config("*.c.test", "")).unwrap();
    let answer = client().post(adc.admin("/reload")).send().await.unwrap();
    assert_eq!(answer.status(), 422);
    let said = answer.text().await.unwrap();
    assert!(
        said.contains("http3") && said.contains("restart adc"),
        "{said}"
    );
    quic_handshake(addr, "x.c.test", &ca2).await.unwrap();
}

#[tokio::test]
async fn an_http3_client_reaches_an_http1_backend_through_a_policy() {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let a = ca.leaf(dir.path(), "a", &["a.test"]);
    let ca_pem = ca.write(dir.path(), "ca");
    let web = backend("web").await;
    let adc =
        Adc::start(&(tls_listener(&[a], "http3 = true") + &pool("web", "round_robin", &[&web])))
            .await;
    let addr = adc.running.listeners["tls"];

    // The TLS listener advertises HTTP/3 on the same port.
    let out = tokio::task::spawn_blocking({
        let ca_pem = ca_pem.clone();
        move || {
            Command::new("curl")
                .args([
                    "-sS",
                    "-D",
                    "-",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "10",
                    "--resolve",
                ])
                .arg(format!("a.test:{}:127.0.0.1", addr.port()))
                .arg("--cacert")
                .arg(&ca_pem)
                .arg(format!("https://a.test:{}/", addr.port()))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        headers.contains(&format!("alt-svc: h3=\":{}\"", addr.port())),
        "{headers}"
    );

    let H3Client {
        endpoint,
        mut sender,
        closed: drive,
    } = H3Client::connect(addr, "a.test", &ca).await;

    let request = http::Request::get("https://a.test/over/h3")
        .body(())
        .unwrap();
    let mut stream = sender.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "adc", "the policy ran");
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(String::from_utf8_lossy(&body), "web GET /over/h3");
    drop(sender);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_request_in_flight_at_shutdown_is_answered_and_the_connection_then_closes_without_error(
) {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let a = ca.leaf(dir.path(), "a", &["a.test"]);
    let gate = Gate::start("gated").await;
    let adc = Adc::start(
        &("[limits]\ndrain_timeout = \"120s\"\n".to_owned()
            + &tls_listener(&[a], "http3 = true")
            + &pool_at("web", &[gate.addr])),
    )
    .await;
    let addr = adc.running.listeners["tls"];
    let shared = adc.running.shared.clone();

    let H3Client {
        endpoint,
        mut sender,
        closed,
    } = H3Client::connect(addr, "a.test", &ca).await;
    let request = http::Request::get("https://a.test/slow").body(()).unwrap();
    let mut stream = sender.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    gate.held().await;

    let Adc { running, dir: _dir } = adc;
    let shutdown = tokio::spawn(running.shutdown());
    adc_tests::eventually("the drain begins", Duration::from_secs(10), || async {
        shared.draining.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    gate.open();
    let response = stream.recv_response().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(String::from_utf8_lossy(&body), "gated /slow");

    let closed = tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("adc closes the connection once its request is answered")
        .unwrap();
    assert!(closed.is_h3_no_error(), "{closed}");
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("adc stops once no connection is left, not at the drain timeout")
        .unwrap();
    endpoint.close(0u32.into(), b"done");
}

/// A TLS backend with one certificate for two names; it answers with the
/// server name the client sent, over HTTP/1.1 only.
async fn tls_backend(ca: &Ca, dir: &Path) -> std::net::SocketAddr {
    let (cert, key) = ca.leaf(dir, "backend", &["one.test", "two.test"]);
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("none").to_owned();
                let service = hyper::service::service_fn(move |_req| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(sni)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn a_tls_backend_receives_the_request_host_as_sni_and_a_wrong_certificate_gives_502() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("backend ca"), Ca::new("another ca"));
    let member = tls_backend(&ca, dir.path()).await;
    let (ca_pem, other_pem) = (ca.write(dir.path(), "ca"), other.write(dir.path(), "other"));
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener.route]]\nhost = \"bad.test\"\npool = \"untrusted\"\n\
         [[listener.route]]\npool = \"secure\"\n\n\
         [pools.secure]\nhttp2 = true\nmembers = [{{ address = \"{member}\" }}]\n[pools.secure.tls]\nca = {:?}\n\n\
         [pools.untrusted]\nmembers = [{{ address = \"{member}\" }}]\n[pools.untrusted.tls]\nca = {:?}\nsni = \"one.test\"\n",
        ca_pem.display().to_string(),
        other_pem.display().to_string()
    );
    let adc = Adc::start(&config).await;
    let http = client();
    for name in ["one.test", "two.test", "one.test"] {
        let r = http
            .get(adc.url("web", "/"))
            .header("host", name)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(
            r.text().await.unwrap(),
            name,
            "the member saw the request's host as SNI"
        );
    }
    let r = http
        .get(adc.url("web", "/"))
        .header("host", "bad.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "a certificate from an untrusted CA is refused"
    );
}

/// A client certificate signed by `ca`, with subject `CN=<cn>` and the
/// subject alternative names `sans`; written as `<stem>.pem` and
/// `<stem>.key` in `dir`.
fn client_cert(
    ca: &Ca,
    dir: &Path,
    stem: &str,
    cn: &str,
    sans: Vec<rcgen::SanType>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    (cert_path, key_path)
}

fn ia5(text: &str) -> rcgen::Ia5String {
    text.try_into().unwrap()
}

/// A TLS listener (with HTTP/3) that verifies client certificates against
/// `client_ca`, and the `fixture-client-cert` policy both as the listener's
/// connection policy (with `connect_requires`, when given) and on its route.
fn mtls_config(
    server: &(PathBuf, PathBuf),
    client_ca: &Path,
    required: bool,
    connect_requires: Option<&str>,
    web: &adc_tests::Backend,
) -> String {
    let settings = match connect_requires {
        Some(want) => format!("[policies.cc.settings]\nconnect_requires = {want:?}\n"),
        None => String::new(),
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[engine]\npolicy_dir = \"{{policies}}\"\nwatch = false\n\n\
         [[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"https\"\nhttp3 = true\n\
         policies = [\"cc\"]\n\
         [listener.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\nclient_ca = {:?}\n\
         client_auth_required = {required}\n\
         [[listener.route]]\npool = \"web\"\npolicies = [\"cc\"]\n\n\
         [policies.cc]\nfile = \"fixture-client-cert.wasm\"\n{settings}{}",
        server.0.display().to_string(),
        server.1.display().to_string(),
        client_ca.display().to_string(),
        pool("web", "round_robin", &[web])
    )
}

/// The response headers curl received from `https://<name>:<port>/`, names
/// lowercased, or curl's failure.
async fn curl_headers(
    adc_port: u16,
    name: &str,
    ca: &Path,
    extra: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{adc_port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca)
        .args(["-o", "/dev/null", "-D", "-"])
        .args(extra)
        .arg(format!("https://{name}:{adc_port}/"));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("curl runs"))
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_lowercase())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// GET `/` over HTTP/3, presenting `client` (certificate and key files)
/// when given; the response's status and headers.
async fn h3_get(
    addr: std::net::SocketAddr,
    name: &str,
    server_ca: &Ca,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<http::Response<()>, String> {
    let builder = client_tls(server_ca);
    let tls = match client {
        Some((cert, key)) => {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let endpoint = quic_endpoint(tls);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let conn = endpoint
            .connect(addr, name)
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| e.to_string())?;
        let drive =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let request = http::Request::get(format!("https://{name}/"))
            .body(())
            .unwrap();
        let result = async {
            let mut stream = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            stream.finish().await.map_err(|e| e.to_string())?;
            stream.recv_response().await.map_err(|e| e.to_string())
        }
        .await;
        drop(sender);
        drive.abort();
        result
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    endpoint.close(0u32.into(), b"done");
    outcome
}

#[tokio::test]
async fn a_client_certificate_from_the_trusted_ca_gets_through_and_policies_see_its_subject_and_names(
) {
    policy("fixture-client-cert");
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("clients ca"));
    let server = server_ca.leaf(dir.path(), "server", &["a.test"]);
    let server_pem = server_ca.write(dir.path(), "server-ca");
    let client_ca_pem = client_ca.write(dir.path(), "clients-ca");
    let one = client_cert(
        &client_ca,
        dir.path(),
        "one",
        "client one",
        vec![
            rcgen::SanType::DnsName(ia5("one.clients.test")),
            rcgen::SanType::URI(ia5("spiffe://adc.test/one")),
            rcgen::SanType::Rfc822Name(ia5("one@clients.test")),
            rcgen::SanType::IpAddress("192.0.2.7".parse().unwrap()),
        ],
    );
    let web = backend("web").await;
    let adc = Adc::start(&mtls_config(
        &server,
        &client_ca_pem,
        true,
        Some("client one"),
        &web,
    ))
    .await;
    let addr = adc.running.listeners["tls"];
    let want_sans =
        "dns:one.clients.test, uri:spiffe://adc.test/one, email:one@clients.test, ip:192.0.2.7";

    let (cert, key) = (one.0.to_str().unwrap(), one.1.to_str().unwrap());
    for version in ["--http1.1", "--http2"] {
        let headers = curl_headers(
            addr.port(),
            "a.test",
            &server_pem,
            &[version, "--cert", cert, "--key", key],
        )
        .await
        .unwrap();
        assert!(headers.starts_with("http/"), "{headers}");
        assert!(headers.contains(" 200"), "{version}: {headers}");
        assert!(
            headers.contains("x-client-subject: cn=client one\r\n"),
            "{version}: {headers}"
        );
        assert!(
            headers.contains(&format!("x-client-sans: {want_sans}\r\n")),
            "{version}: {headers}"
        );
    }

    let response = h3_get(addr, "a.test", &server_ca, Some(&one))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-client-subject"], "CN=client one");
    assert_eq!(
        response.headers()["x-client-sans"],
        "DNS:one.clients.test, URI:spiffe://adc.test/one, email:one@clients.test, IP:192.0.2.7"
    );
    assert_eq!(web.hits(), 3);
}

#[tokio::test]
async fn a_client_without_a_certificate_or_with_one_from_another_ca_is_refused_at_the_handshake() {
    policy("fixture-client-cert");
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, stranger_ca) = (
        Ca::new("server ca"),
        Ca::new("clients ca"),
        Ca::new("stranger ca"),
    );
    let server = server_ca.leaf(dir.path(), "server", &["a.test"]);
    let server_pem = server_ca.write(dir.path(), "server-ca");
    let client_ca_pem = client_ca.write(dir.path(), "clients-ca");
    let trusted = client_cert(&client_ca, dir.path(), "trusted", "client one", vec![]);
    let stranger = client_cert(&stranger_ca, dir.path(), "stranger", "client one", vec![]);
    let web = backend("web").await;
    // Metrics are process-wide: a listener name of its own, so that other
    // tests' handshake failures are not counted here.
    let config = mtls_config(&server, &client_ca_pem, true, None, &web)
        .replace("name = \"tls\"", "name = \"tls-refusals\"");
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["tls-refusals"];
    let failures = || {
        adc.metric(
            "adc_tls_handshake_failures_total",
            &[("listener", "tls-refusals")],
        )
    };
    let before = failures().await;

    let err = curl(addr.port(), "a.test", &server_pem, &[])
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    let (cert, key) = (stranger.0.to_str().unwrap(), stranger.1.to_str().unwrap());
    let err = curl(
        addr.port(),
        "a.test",
        &server_pem,
        &["--cert", cert, "--key", key],
    )
    .await
    .unwrap_err();
    assert!(!err.is_empty());
    assert!(h3_get(addr, "a.test", &server_ca, None).await.is_err());
    assert!(h3_get(addr, "a.test", &server_ca, Some(&stranger))
        .await
        .is_err());
    assert_eq!(web.hits(), 0, "no refused client reached the backend");
    // The refusal reaches curl as the server counts it: wait for the count.
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures().await - before < 2.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        failures().await - before,
        2.0,
        "both TCP refusals were TLS handshake failures"
    );

    // The same listener takes a certificate its CA signed, so the refusals
    // above were about the certificates.
    let (cert, key) = (trusted.0.to_str().unwrap(), trusted.1.to_str().unwrap());
    assert_eq!(
        curl(
            addr.port(),
            "a.test",
            &server_pem,
            &["--cert", cert, "--key", key]
        )
        .await
        .unwrap(),
        "200 2"
    );
    assert!(h3_get(addr, "a.test", &server_ca, Some(&trusted))
        .await
        .is_ok());
}

#[tokio::test]
async fn the_connect_hook_sees_the_certificate_subject_and_optional_verification_lets_clients_without_one_in(
) {
    policy("fixture-client-cert");
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("clients ca"));
    let server = server_ca.leaf(dir.path(), "server", &["a.test"]);
    let server_pem = server_ca.write(dir.path(), "server-ca");
    let client_ca_pem = client_ca.write(dir.path(), "clients-ca");
    let one = client_cert(&client_ca, dir.path(), "one", "client one", vec![]);
    let two = client_cert(&client_ca, dir.path(), "two", "client two", vec![]);
    let web = backend("web").await;

    // The connect hook lets only "client one" in.
    let strict = Adc::start(&mtls_config(
        &server,
        &client_ca_pem,
        true,
        Some("client one"),
        &web,
    ))
    .await;
    let port = strict.running.listeners["tls"].port();
    let args = |c: &(PathBuf, PathBuf)| {
        vec![
            "--cert".to_owned(),
            c.0.display().to_string(),
            "--key".to_owned(),
            c.1.display().to_string(),
        ]
    };
    let one_args = args(&one);
    let one_args: Vec<&str> = one_args.iter().map(String::as_str).collect();
    let two_args = args(&two);
    let two_args: Vec<&str> = two_args.iter().map(String::as_str).collect();
    assert_eq!(
        curl(port, "a.test", &server_pem, &one_args).await.unwrap(),
        "200 2"
    );
    assert!(
        curl(port, "a.test", &server_pem, &two_args).await.is_err(),
        "client two's connection was rejected by the connect hook"
    );
    assert_eq!(web.hits(), 1);

    // Verification without requirement: a client without a certificate is
    // served, and policies see that it has none.
    let optional = Adc::start(&mtls_config(&server, &client_ca_pem, false, None, &web)).await;
    let port = optional.running.listeners["tls"].port();
    let headers = curl_headers(port, "a.test", &server_pem, &[])
        .await
        .unwrap();
    assert!(headers.contains("x-client-subject: none\r\n"), "{headers}");
    assert!(headers.contains("x-client-sans: none\r\n"), "{headers}");
    let headers = curl_headers(port, "a.test", &server_pem, &two_args)
        .await
        .unwrap();
    assert!(
        headers.contains("x-client-subject: cn=client two\r\n"),
        "{headers}"
    );
}

/// A backend that reads each request body whole and answers with its
/// length; counts the request heads it got.
async fn body_reading_backend() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::BodyExt;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let heads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = heads.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        async move {
                            let text = match req.into_body().collect().await {
                                Ok(b) => format!("read {}", b.to_bytes().len()),
                                Err(e) => format!("body failed: {e}"),
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(text)),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, heads)
}

/// POST `body` over HTTP/3 with these `content-length` values, in one
/// DATA frame, then FIN; the status and body of the answer.
async fn h3_post(
    sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    lengths: &[&str],
    body: &'static [u8],
) -> (u16, String) {
    h3_post_frames(sender, lengths, &[body]).await
}

/// [`h3_post`] with the body in these DATA frames.
async fn h3_post_frames(
    sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    lengths: &[&str],
    frames: &[&'static [u8]],
) -> (u16, String) {
    let mut request = http::Request::post("https://a.test/upload");
    for length in lengths {
        request = request.header("content-length", *length);
    }
    let exchange = async {
        let mut stream = sender.send_request(request.body(()).unwrap()).await?;
        // Refused early, adc may stop the upload: the answer still comes.
        for frame in frames {
            let _ = stream.send_data(bytes::Bytes::from_static(frame)).await;
        }
        let _ = stream.finish().await;
        let response = stream.recv_response().await?;
        let mut text = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            text.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok::<_, h3::error::StreamError>((
            response.status().as_u16(),
            String::from_utf8_lossy(&text).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("adc answers")
        .unwrap()
}

#[tokio::test]
async fn an_http3_body_that_does_not_match_its_content_length_is_the_clients_fault_not_the_members()
{
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let a = ca.leaf(dir.path(), "a", &["a.test"]);
    let (member, heads) = body_reading_backend().await;
    // One failure would eject the only member.
    let config = tls_listener(&[a], "http3 = true")
        .replace("name = \"tls\"", "name = \"h3lengths\"")
        .replace("pool = \"web\"", "pool = \"h3lengths\"")
        + &pool_at("h3lengths", &[member])
        + "\n[pools.h3lengths.passive]\nconsecutive_failures = 1\ncooldown = \"60s\"\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["h3lengths"];
    let H3Client {
        endpoint,
        mut sender,
        closed: drive,
    } = H3Client::connect(addr, "a.test", &ca).await;

    // Shorter than declared: malformed (RFC 9114 section 4.1.2).
    for _ in 0..3 {
        let (status, text) = h3_post(&mut sender, &["1000"], b"0123456789").await;
        assert_eq!(status, 400, "{text}");
    }
    // Longer than declared.
    let (status, text) = h3_post(&mut sender, &["5"], b"0123456789").await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = h3_post(&mut sender, &["0"], b"0123456789").await;
    assert_eq!(status, 400, "{text}");
    // The declared length whole in one frame, and more in the next: the
    // backend's client has what it was told of by then.
    let (status, text) = h3_post_frames(&mut sender, &["5"], &[b"01234", b"56789"]).await;
    assert_eq!(status, 400, "{text}");
    let before = heads.load(std::sync::atomic::Ordering::Relaxed);
    // Not a length at all, or two that disagree: never forwarded.
    for lengths in [
        &["abc"][..],
        &["-10"],
        &["+10"],
        &[""],
        &["10", "11"],
        &["10, 11"],
    ] {
        let (status, text) = h3_post(&mut sender, lengths, b"0123456789").await;
        assert_eq!(status, 400, "{lengths:?}: {text}");
    }
    assert_eq!(heads.load(std::sync::atomic::Ordering::Relaxed), before);

    // The member was never failed: it serves, and matching lengths (one
    // value repeated too) pass.
    for lengths in [&["10"][..], &["10", "10"], &["10, 10"], &[]] {
        let (status, text) = h3_post(&mut sender, lengths, b"0123456789").await;
        assert_eq!((status, text.as_str()), (200, "read 10"), "{lengths:?}");
    }
    let (status, text) = h3_post_frames(&mut sender, &["10"], &[b"01234", b"56789"]).await;
    assert_eq!((status, text.as_str()), (200, "read 10"));
    let (status, text) = h3_post_frames(&mut sender, &["0"], &[]).await;
    assert_eq!((status, text.as_str()), (200, "read 0"));
    assert_eq!(
        adc.metric("adc_member_failures_total", &[("pool", "h3lengths")])
            .await,
        0.0
    );
    assert_eq!(
        adc.answered("h3lengths", "4xx").await,
        12.0,
        "every refusal is counted"
    );
    drop(sender);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
}

/// `limits.idle_timeout` closes an idle HTTP/3 connection as it does a
/// kept-alive TCP one (QUIC's idle timeout was fixed at 60 s).
#[tokio::test]
async fn an_idle_http3_connection_is_closed_after_the_idle_timeout() {
    policy("rewrite");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ca");
    let a = ca.leaf(dir.path(), "a", &["a.test"]);
    let web = backend("web").await;
    let config = tls_listener(&[a], "http3 = true")
        + &pool("web", "round_robin", &[&web])
        + "\n[limits]\nidle_timeout = \"1s\"\n";
    let adc = Adc::start(&config).await;
    let addr = adc.running.listeners["tls"];
    let H3Client {
        endpoint,
        mut sender,
        closed,
    } = H3Client::connect(addr, "a.test", &ca).await;
    let request = http::Request::get("https://a.test/").body(()).unwrap();
    let mut stream = sender.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    drop(stream);
    // The client's own idle timeout is quinn's default, 30 s: only adc's
    // can close the connection this soon.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
    drop(sender);
    endpoint.close(0u32.into(), b"done");
}

/// HTTP health checks of a pool with TLS speak TLS, verifying the member
/// as requests do (they spoke plain HTTP, so every such pool was down).
#[tokio::test]
async fn http_health_checks_of_a_tls_pool_speak_tls_and_verify_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("backend ca"), Ca::new("another ca"));
    let member = tls_backend(&ca, dir.path()).await;
    let (ca_pem, other_pem) = (ca.write(dir.path(), "ca"), other.write(dir.path(), "other"));
    let health = "kind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nfall = 1\nrise = 1\n";
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener.route]]\nhost = \"bad.test\"\npool = \"untrusted\"\n\
         [[listener.route]]\npool = \"secure\"\n\n\
         [pools.secure]\nmembers = [{{ address = \"{member}\" }}]\n[pools.secure.tls]\nca = {:?}\nsni = \"one.test\"\n\
         [pools.secure.health]\n{health}\n\
         [pools.untrusted]\nmembers = [{{ address = \"{member}\" }}]\n[pools.untrusted.tls]\nca = {:?}\nsni = \"one.test\"\n\
         [pools.untrusted.health]\n{health}\n",
        ca_pem.display().to_string(),
        other_pem.display().to_string()
    );
    let adc = Adc::start(&config).await;
    let http = client();
    // Several probe intervals: a member whose probes failed is down by now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        let r = http.get(adc.url("web", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "one.test");
    }
    // The probes verify the certificate: from a CA the pool does not
    // trust, the member is down.
    let r = http
        .get(adc.url("web", "/"))
        .header("host", "bad.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}
