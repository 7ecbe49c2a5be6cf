//! `regcache serve` under systemd's protocols, driven by `systemd-socket-activate`: it
//! adopts the passed API and admin sockets (named through LISTEN_FDNAMES), sends READY=1
//! on NOTIFY_SOCKET once serving, and STOPPING=1 then a clean exit on SIGTERM.
//!
//! Skipped (saying so; a failure under `tests/run.sh`) where `systemd-socket-activate` is
//! not installed.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::registry::{free_port, http_status};

fn wait_for_datagram(socket: &UnixDatagram, wanted: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).contains(wanted) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Kills and reaps the child however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn socket_activation_and_readiness() {
    let activate = "/usr/bin/systemd-socket-activate";
    if !std::path::Path::new(activate).exists() {
        let reason = format!("{activate} is not installed (apt-get install systemd)");
        return crate::support::skip(&reason);
    }
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (api, admin) = (free_port(), free_port());
    let mut child = Reaped(
        Command::new(activate)
            .args(["-l", &format!("127.0.0.1:{api}")])
            .args(["-l", &format!("127.0.0.1:{admin}")])
            .arg("--fdname=api:admin")
            .arg(format!("-ENOTIFY_SOCKET={}", notify_path.display()))
            .arg(env!("CARGO_BIN_EXE_regcache"))
            .args(["serve", "--upstream", "http://127.0.0.1:9", "--cache-dir"])
            .arg(dir.path().join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // The first connection makes systemd-socket-activate exec regcache with the fds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = None;
    while Instant::now() < deadline && status != Some(200) {
        status = http_status(&format!("127.0.0.1:{api}"), "/v2/");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = wait_for_datagram(&notify, "READY=1");
    let health = http_status(&format!("127.0.0.1:{admin}"), "/healthz");

    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let stopping = wait_for_datagram(&notify, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut exit = None;
    while exit.is_none() && Instant::now() < deadline {
        exit = child.0.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(status, Some(200), "the API answers on the passed socket");
    assert!(ready, "READY=1 was sent");
    assert_eq!(health, Some(200), "the socket named admin serves /healthz");
    assert!(term.success());
    assert!(stopping, "STOPPING=1 was sent on SIGTERM");
    assert!(
        exit.is_some_and(|s| s.success()),
        "clean exit on SIGTERM: {exit:?}"
    );
}
