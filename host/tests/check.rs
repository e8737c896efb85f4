//! `adc check` refuses what `adc run` refuses: certificate files are loaded
//! and checked by both, with the same message, naming the config file and
//! the line of the certificate entry.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A TLS listener with two certificate entries: `a` on line 9, `b` on
/// line 10.
const CONFIG: &str = r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "tls"
listen = "127.0.0.1:0"
protocol = "https"
[listener.tls]
certificates = [
  { cert = "a.pem", key = "a.key" },
  { cert = "b.pem", key = "b.key" },
]
[[listener.route]]
pool = "web"
[pools.web]
members = [{ address = "127.0.0.1:9" }]
"#;

/// A self-signed certificate for `name`, written as `<stem>.pem` and
/// `<stem>.key` in `dir`.
fn leaf(dir: &Path, stem: &str, name: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

/// `adc <command> adc.toml` in `dir`; a run that starts serving is stopped
/// after a few seconds.
fn adc(dir: &Path, command: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_adc"))
        .args([command, dir.join("adc.toml").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn check_refuses_the_certificate_files_run_refuses_with_the_same_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("adc.toml"), CONFIG).unwrap();
    leaf(dir, "a", "a.test");
    leaf(dir, "b", "b.test");
    leaf(dir, "other", "b.test");
    let ok = adc(dir, "check");
    assert!(ok.status.success(), "{ok:?}");

    let swap = |from: &str, to: &str| {
        let path = dir.join("adc.toml");
        std::fs::write(&path, CONFIG.replace(from, to)).unwrap();
    };
    let config = dir.join("adc.toml").display().to_string();
    let cases = [
        // A missing file.
        ("\"b.pem\"", "\"missing.pem\"", "missing.pem"),
        // A file that holds no PEM certificate.
        ("\"b.pem\"", "\"junk.pem\"", "junk.pem"),
        // A key that belongs to another certificate.
        (
            "\"b.key\"",
            "\"other.key\"",
            "other.key: key does not match",
        ),
        // The certificate and the key swapped.
        (
            "cert = \"b.pem\", key = \"b.key\"",
            "cert = \"b.key\", key = \"b.pem\"",
            "b.key",
        ),
    ];
    std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
    for (from, to, reason) in cases {
        swap(from, to);
        let check = adc(dir, "check");
        let said = String::from_utf8_lossy(&check.stderr).into_owned();
        assert_eq!(check.status.code(), Some(2), "{to}: {said}");
        let at = format!("{config}:10: listener \"tls\": ");
        assert!(said.contains(&at) && said.contains(reason), "{to}: {said}");

        let run = adc(dir, "run");
        assert_eq!(run.status.code(), Some(2), "{to}: {run:?}");
        assert_eq!(String::from_utf8_lossy(&run.stderr), said, "{to}");
    }
}
