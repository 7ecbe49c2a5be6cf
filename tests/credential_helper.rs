//! Docker credential helpers: each test writes a small shell-script
//! `docker-credential-<name>` into a directory this binary puts first on `PATH` (which is
//! process-wide, hence a binary of its own), and checks what regcache asked it and sent
//! upstream (the in-process fake registry requiring Basic).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::fake::FakeRegistry;
use support::proxy::Proxy;

/// The directory on `PATH` where the helpers are written.
fn helper_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.path().to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
        dir
    })
    .path()
}

/// A helper named `name` that logs each server URL it is asked for to `<state>/calls` and
/// answers `user`/`secret` from the files there, or "not found" while `<state>/none` exists.
struct TestHelper {
    state: tempfile::TempDir,
}

impl TestHelper {
    fn install(name: &str, user: &str, secret: &str) -> TestHelper {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().display();
        let script = format!(
            r#"#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "{dir}/calls"
if [ -e "{dir}/none" ]; then
    echo "credentials not found in native keychain"
    exit 1
fi
if [ -e "{dir}/broken" ]; then
    echo "the keyring is locked" >&2
    exit 3
fi
printf '{{"ServerURL":"%s","Username":"%s","Secret":"%s"}}\n' "$server" "$(cat "{dir}/user")" "$(cat "{dir}/secret")"
"#
        );
        let helper = TestHelper { state };
        helper.set(user, secret);
        let path = helper_dir().join(format!("docker-credential-{name}"));
        // Write under another name and rename, so no exec sees a half-written file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        helper
    }

    fn file(&self, name: &str) -> PathBuf {
        self.state.path().join(name)
    }

    fn set(&self, user: &str, secret: &str) {
        std::fs::write(self.file("user"), user).unwrap();
        std::fs::write(self.file("secret"), secret).unwrap();
    }

    fn flag(&self, name: &str) {
        std::fs::write(self.file(name), "").unwrap();
    }

    /// The server URLs the helper was asked for, one per run.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.file("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

async fn status(proxy: &Proxy, blob: &str) -> u16 {
    let url = proxy.url(&format!("/v2/team/app/blobs/{blob}"));
    reqwest::get(url).await.unwrap().status().as_u16()
}

fn host(registry: &FakeRegistry) -> String {
    registry.url().trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_is_asked_once_per_ttl_for_the_registry_host() {
    let helper = TestHelper::install("ttl", "robot", "s3cret");
    let registry = FakeRegistry::start().await;
    registry.require_basic("robot", "s3cret");
    let blobs: Vec<String> = (0..3u8).map(|i| registry.add_blob(vec![i; 100])).collect();
    let extra = "credential_helper = \"ttl\"\ncredential_helper_ttl_secs = 1";
    let proxy = Proxy::start_with(&registry.url(), extra, None).await;
    assert_eq!(status(&proxy, &blobs[0]).await, 200);
    assert_eq!(status(&proxy, &blobs[1]).await, 200);
    assert_eq!(
        helper.calls(),
        [host(&registry)],
        "asked once, with host:port"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&proxy, &blobs[2]).await, 200);
    assert_eq!(helper.calls().len(), 2, "asked again after the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_asked_for_again_at_once() {
    let helper = TestHelper::install("rotate", "robot", "old");
    let registry = FakeRegistry::start().await;
    registry.require_basic("robot", "old");
    let a = registry.add_blob(b"a".to_vec());
    let b = registry.add_blob(b"b".to_vec());
    let proxy = Proxy::start_with(&registry.url(), "credential_helper = \"rotate\"", None).await;
    assert_eq!(status(&proxy, &a).await, 200);
    registry.require_basic("robot", "new");
    helper.set("robot", "new");
    assert_eq!(
        status(&proxy, &b).await,
        200,
        "the 401 made regcache ask again"
    );
    assert_eq!(helper.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_means_anonymous_and_a_failing_helper_is_a_502() {
    let helper = TestHelper::install("none", "", "");
    helper.flag("none");
    let registry = FakeRegistry::start().await;
    let public = registry.add_blob(b"public".to_vec());
    let proxy = Proxy::start_with(&registry.url(), "credential_helper = \"none\"", None).await;
    assert_eq!(status(&proxy, &public).await, 200, "anonymous is fine here");

    let broken = TestHelper::install("broken", "", "");
    broken.flag("broken");
    registry.require_basic("robot", "s3cret");
    let private = registry.add_blob(b"private".to_vec());
    let proxy = Proxy::start_with(&registry.url(), "credential_helper = \"broken\"", None).await;
    let response = reqwest::get(proxy.url(&format!("/v2/team/app/blobs/{private}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 502);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("docker-credential-broken") && body.contains("the keyring is locked"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cred_helpers_in_the_docker_config_name_the_helper() {
    let helper = TestHelper::install("fromfile", "robot", "s3cret");
    let registry = FakeRegistry::start().await;
    registry.require_basic("robot", "s3cret");
    let blob = registry.add_blob(b"layer".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"credHelpers":{{"{}":"fromfile"}},"credsStore":"absent"}}"#,
            host(&registry)
        ),
    )
    .unwrap();
    let extra = format!("docker_config_file = \"{}\"", file.display());
    let proxy = Proxy::start_with(&registry.url(), &extra, None).await;
    assert_eq!(status(&proxy, &blob).await, 200);
    assert_eq!(helper.calls(), [host(&registry)]);
}
