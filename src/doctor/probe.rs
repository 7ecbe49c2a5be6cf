//! `--probe IMAGE`: pulls IMAGE through each runtime that can be driven here and checks in
//! the daemon's `/metrics` that the requests arrived, so a config that looks right but is
//! not read (a runtime not restarted, a second config file winning) shows.

use std::time::Duration;

use std::path::Path;

use tokio::process::Command;

use super::containerd::which;
use super::{under, Finding, Options, Status};

/// How long one probe pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn probe(options: &Options) -> Vec<Finding> {
    let Some(image) = &options.probe else {
        return Vec::new();
    };
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            return vec![Finding::new(
                "probe",
                Status::Fail,
                format!("no HTTP client: {e}"),
            )]
        }
    };
    if requests(&http, options).await.is_none() {
        return vec![Finding::new(
            "probe",
            Status::Fail,
            format!(
                "cannot read {}metrics: is the daemon running with admin_listen?",
                options.admin
            ),
        )
        .fix("start regcache with admin_listen set, or pass --admin")];
    }
    let mut runs: Vec<(&'static str, Command)> = Vec::new();
    let socket = &options.containerd_address;
    if which("ctr") && socket.exists() {
        let dir = super::containerd::hosts_dir(options)
            .unwrap_or_else(|| under(&options.root, "/etc/containerd/certs.d"));
        let mut ctr = Command::new("ctr");
        // Fetch, not pull: the probe is the download path, and unpacking needs a
        // snapshotter the node may not let a diagnostic use.
        ctr.arg("--address")
            .arg(socket)
            .args(["content", "fetch", "--hosts-dir"]);
        ctr.arg(dir).arg(qualified(image));
        runs.push(("containerd", ctr));
    }
    // skopeo reads registries.conf as podman and CRI-O do; a copy is a pull (an inspect
    // would not use the mirrors).
    let scratch = tempfile::tempdir().ok();
    if let (true, Some(scratch)) = (which("skopeo"), &scratch) {
        let mut skopeo = Command::new("skopeo");
        // Another root's registries.conf is named; on the node, skopeo finds it itself.
        if options.root != Path::new("/") {
            let conf = under(&options.root, "/etc/containers/registries.conf");
            skopeo.arg("--registries-conf").arg(conf);
        }
        skopeo.args(["--insecure-policy", "copy", "--src-no-creds"]);
        skopeo.arg(format!("docker://{}", qualified(image)));
        skopeo.arg(format!("oci:{}:probe", scratch.path().display()));
        runs.push(("podman/cri-o", skopeo));
    }
    if which("docker") && Path::new("/var/run/docker.sock").exists() {
        let mut docker = Command::new("docker");
        docker.arg("pull").arg(image);
        runs.push(("docker", docker));
    }
    let mut found = Vec::new();
    for (runtime, mut command) in runs {
        let before = requests(&http, options).await.unwrap_or(0.0);
        command.kill_on_drop(true);
        let ran = tokio::time::timeout(PULL_TIMEOUT, command.output()).await;
        let after = requests(&http, options).await.unwrap_or(before);
        let arrived = after - before;
        let outcome = match ran {
            Ok(Ok(out)) if out.status.success() => String::from("pulled"),
            Ok(Ok(out)) => format!(
                "the pull failed ({})",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
            ),
            Ok(Err(e)) => format!("could not run it ({e})"),
            Err(_) => format!("the pull took longer than {} s", PULL_TIMEOUT.as_secs()),
        };
        found.push(match arrived > 0.0 {
            true => Finding::new(
                runtime,
                Status::Ok,
                format!("probe: {outcome} {image}; the mirror counted {arrived} request(s)"),
            ),
            false => Finding::new(
                runtime,
                Status::Fail,
                format!("probe: {outcome} {image}, and no request reached the mirror"),
            )
            .fix("see the findings above; restart the runtime after changing its config"),
        });
    }
    if found.is_empty() {
        found.push(Finding::new(
            "probe",
            Status::Absent,
            "no runtime to drive here (ctr with a containerd socket, skopeo, docker)",
        ));
    }
    found
}

/// The sum of `regcache_requests_total`, or `None` when `/metrics` does not answer.
async fn requests(http: &reqwest::Client, options: &Options) -> Option<f64> {
    let url = options.admin.join("metrics").ok()?;
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let sum = text
        .lines()
        .filter(|l| l.starts_with("regcache_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(sum)
}

/// `alpine:3` -> `docker.io/library/alpine:3`: ctr and skopeo want the full name.
fn qualified(image: &str) -> String {
    let first = image.split('/').next().unwrap_or_default();
    let has_registry =
        image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_registry, image.contains('/')) {
        (true, _) => image.to_string(),
        (false, true) => format!("docker.io/{image}"),
        (false, false) => format!("docker.io/library/{image}"),
    }
}

#[cfg(test)]
mod tests {
    use super::qualified;

    #[test]
    fn short_names_are_docker_hub_names() {
        assert_eq!(qualified("alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(qualified("team/app:v1"), "docker.io/team/app:v1");
        assert_eq!(qualified("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
    }
}
