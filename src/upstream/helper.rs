//! Docker credential helpers: `docker-credential-<name> get` reads the registry's server
//! URL on stdin and prints `{"ServerURL": .., "Username": .., "Secret": ..}` on stdout, or
//! exits non-zero saying `credentials not found`. The program is found on `PATH`, runs
//! with a timeout, and is killed if it overruns. Its answer is cached by the caller
//! ([`super::credentials::Refreshing`]) for `credential_helper_ttl_secs`.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::Credentials;
use crate::error::UpstreamError;

/// The longest a helper may take to answer.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a helper prints when it has nothing for this registry (the protocol's wording).
const NOT_FOUND: &str = "credentials not found";

pub struct Helper {
    program: String,
    server_url: String,
    ttl: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    username: String,
    secret: String,
}

impl Helper {
    /// `name` is what follows `docker-credential-` (validated by the config).
    pub fn new(name: &str, server_url: String, ttl: Duration) -> Helper {
        Helper {
            program: format!("docker-credential-{name}"),
            server_url,
            ttl,
        }
    }

    /// Runs the helper once. "Not found" is an answer (anonymous, cached like any other).
    pub async fn fetch(&self) -> Result<(Option<Credentials>, Duration), UpstreamError> {
        let fail = |what: String| UpstreamError::Credentials(format!("{}: {what}", self.program));
        let mut child = Command::new(&self.program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run it ({e}); is it installed and on PATH?")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = format!("{}\n", self.server_url);
        let run = async {
            // A helper that exits without reading stdin is not an error here.
            let _ = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(HELPER_TIMEOUT, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(fail(format!("failed: {e}"))),
            Err(_) => return Err(fail(format!("gave no answer in {HELPER_TIMEOUT:?}"))),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            if stdout.contains(NOT_FOUND) {
                tracing::info!(helper = %self.program, server = %self.server_url, "the credential helper has no credentials; pulling anonymously");
                return Ok((None, self.ttl));
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = [stdout.trim(), stderr.trim()].join(" ");
            return Err(fail(format!("{}: {}", output.status, said.trim())));
        }
        let answer: Answer = serde_json::from_str(&stdout)
            .map_err(|e| fail(format!("printed no credentials JSON: {e}")))?;
        if answer.username == "<token>" {
            // An identity token needs an OAuth2 refresh-token exchange, which regcache
            // does not do; say so rather than send it as a password.
            return Err(fail(
                "gave an identity token, which regcache cannot use; store a username and password or access token".into(),
            ));
        }
        Ok((
            Some(Credentials {
                username: answer.username,
                password: answer.secret,
            }),
            self.ttl,
        ))
    }
}
