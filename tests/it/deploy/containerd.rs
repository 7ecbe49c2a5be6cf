//! `regcache doctor --probe` driving a real containerd (a private one, as a child process
//! with its own root, state and socket under a temp dir): with the shipped hosts.toml the
//! probe's requests reach regcache and are counted; with a hosts.toml that skips the
//! mirror the doctor says so. The upstream is the real docker-registry; nothing leaves
//! 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::images::push_oci_image;
use crate::support::regcache::Regcache;
use crate::support::registry::Registry;

use super::{put, shipped};

const MIB: usize = 1 << 20;

/// A private containerd; killed on drop.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Option<Containerd> {
        let Ok(out) = Command::new("containerd").arg("--version").output() else {
            crate::support::skip("containerd is not installed; tests/run.sh installs it");
            return None;
        };
        assert!(out.status.success());
        let socket = dir.join("containerd.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{ttrpc}\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                ttrpc = dir.join("ttrpc.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Containerd { child, socket })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `regcache doctor --probe` against the node files under `root`.
fn probe(root: &Path, containerd: &Containerd, proxy: &Regcache) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["doctor", "--probe", "docker.io/library/probe:v1"])
        .arg("--root")
        .arg(root)
        .arg("--containerd-address")
        .arg(&containerd.socket)
        .arg("--mirror")
        .arg(proxy.url())
        .arg("--admin")
        .arg(format!("http://{}", proxy.admin_addr()))
        .output()
        .expect("run regcache doctor");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_pulls_through_a_real_containerd_and_the_mirror_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some(containerd) = Containerd::start(dir.path()) else {
        return;
    };
    let registry = Registry::start();
    push_oci_image(&registry.url(), "library/probe", "v1", &[MIB], 3).await;
    // regcache answers for docker.io (containerd's ns=) from the local registry.
    let config = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nlibrary_prefix = true\n",
        registry.url()
    );
    let proxy = Regcache::start_with_config(&config, &dir.path().join("cache"));
    let port = proxy.url().rsplit(':').next().unwrap().to_string();
    let mirror = |text: String| text.replace("127.0.0.1:5000", &format!("127.0.0.1:{port}"));

    // A node set up with the shipped files, pointed at this regcache's port.
    let good = dir.path().join("good");
    let v2 = shipped("config/clients/containerd/config-v2.toml");
    put(&good, "etc/containerd/config.toml", &v2);
    put(
        &good,
        "etc/containerd/certs.d/docker.io/hosts.toml",
        &mirror(shipped(
            "config/clients/containerd/certs.d/docker.io/hosts.toml",
        )),
    );
    put(
        &good,
        "etc/containers/registries.conf",
        &mirror(shipped("config/clients/registries.conf")),
    );
    let (ok, out) = probe(&good, &containerd, &proxy);
    eprintln!("doctor on the good node:\n{out}");
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("probe: pulled docker.io/library/probe:v1"))
        .unwrap_or_else(|| panic!("no successful probe line:\n{out}"));
    assert!(
        line.contains("[ok  ]") && line.contains("request(s)"),
        "{line}"
    );
    assert!(
        registry.blob_gets() >= 1,
        "the pull went through regcache to its upstream"
    );

    // A node whose hosts.toml skips the mirror (its fallback a dead local port, so nothing
    // leaves the machine): the probe finds no request arrived.
    let broken = dir.path().join("broken");
    put(&broken, "etc/containerd/config.toml", &v2);
    put(
        &broken,
        "etc/containerd/certs.d/docker.io/hosts.toml",
        "server = \"http://127.0.0.1:9\"\n[host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"1s\"\n",
    );
    put(
        &broken,
        "etc/containers/registries.conf",
        &mirror(shipped("config/clients/registries.conf")),
    );
    let (ok, out) = probe(&broken, &containerd, &proxy);
    eprintln!("doctor on the broken node:\n{out}");
    assert!(!ok, "{out}");
    assert!(out.contains("does not list the mirror"), "{out}");
    let containerd_probe = out
        .lines()
        .find(|l| l.contains("probe:") && l.contains("no request reached the mirror"))
        .unwrap_or_else(|| panic!("the containerd probe did not fail:\n{out}"));
    assert!(containerd_probe.contains("[FAIL]"), "{containerd_probe}");
}
