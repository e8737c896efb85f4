//! The `adc` process: what its signals do, seen from outside.
#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first unexpected error"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Far longer than the test waits: an exit within [`SOON`] did not wait
/// for the drain timeout, nor for anything else slow.
const DRAIN_TIMEOUT: &str = "120s";
const SOON: Duration = Duration::from_secs(10);

fn config(policy: Option<&str>) -> String {
    let mut text = format!(
        "[limits]\ndrain_timeout = \"{DRAIN_TIMEOUT}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [engine]\npolicy_dir = \".\"\nwatch = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener.route]]\npool = \"web\"\npolicies = [{}]\n\n\
         [pools.web]\nmembers = [{{ address = \"127.0.0.1:9\" }}]\n",
        policy.map(|p| format!("{p:?}")).unwrap_or_default()
    );
    if let Some(p) = policy {
        text += &format!("\n[policies.{p}]\nfile = \"{p}.wasm\"\n");
    }
    text
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name}");
}

/// Wait until a line of the log contains `text`.
fn logged(lines: &mpsc::Receiver<String>, text: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return,
            Ok(_) => {}
            Err(_) => panic!("no log line with {text:?} within {SOON:?}"),
        }
    }
}

/// Whether a reader waits on the FIFO at `path` (opening its write end
/// without blocking fails until one does). The write end is kept open, so
/// that the reader then waits for data that never comes.
fn reader_waits(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .ok()
}

/// A folder of this test's own, removed at the end.
struct Folder(std::path::PathBuf);

impl Folder {
    fn new() -> Folder {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("adc-exit-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[cfg(target_os = "linux")]
fn sigterm_during_a_reload_that_is_still_loading_a_policy_exits_at_once() {
    let dir = Folder::new();
    let path = dir.0.join("adc.toml");
    std::fs::write(&path, config(None)).unwrap();
    // A policy file that never finishes reading stands in for a slow
    // load (a large policy compiling): the reload is busy until killed.
    let fifo = dir.0.join("stuck.wasm");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());

    let mut adc = Command::new(env!("CARGO_BIN_EXE_adc"))
        .args(["run", path.to_str().unwrap()])
        .env("ADC_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = adc.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    logged(&lines, "admin interface listening");

    std::fs::write(&path, config(Some("stuck"))).unwrap();
    signal(&adc, "HUP");
    let deadline = Instant::now() + SOON;
    let held = loop {
        if let Some(writer) = reader_waits(&fifo) {
            break writer;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never read the policy"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    signal(&adc, "TERM");
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = adc.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = adc.kill();
            let _ = adc.wait();
            panic!("adc did not exit within {SOON:?} of SIGTERM: it waited for the reload");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    drop(held);
}
