//! Operator commands that write the store (gc, verify, import) run where its one writer is
//! (see `store::owner`): in this process when it can take the store, because no daemon
//! runs; else in the daemon that holds it, through the admin API it announced in the
//! store's lock. Either way the same code does the work (`store::ops`,
//! `transfer::archive::import`) on the owner's `Disk`, so the index, the budget and the
//! daemon's in-memory records see every change at once. Blocks.

pub mod commands;

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::lifecycle::Rules;
use crate::store::ops::{self, GcReport, VerifyReport};
use crate::store::{owner, Disk};
use crate::transfer::archive::{self, ImportReport};

/// Who did the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// This process, which owned the store for the command.
    Here,
    /// The daemon that owns the store.
    Daemon { pid: u32 },
}

/// The store's writer for one command.
enum Writer {
    Here(Box<Disk>),
    Daemon { pid: u32, admin: SocketAddr },
}

/// Takes the store, or finds the daemon that has it.
fn writer(config: &Config) -> anyhow::Result<Writer> {
    let dir = config.cache.dir.display();
    let rules = Rules::new(&config.upstreams);
    match Disk::open(&config.cache, rules, Metrics::new()) {
        Ok(disk) => {
            disk.load();
            Ok(Writer::Here(Box::new(disk)))
        }
        Err(e) => match owner::taken(&e) {
            Some(taken) => match taken.owner.admin {
                Some(admin) => Ok(Writer::Daemon {
                    pid: taken.owner.pid,
                    admin,
                }),
                None => anyhow::bail!(
                    "a regcache daemon (process {}) owns {dir} and has no admin listener to \
                     take this command; set admin_listen in its config and restart it, or stop it",
                    taken.owner.pid
                ),
            },
            None => Err(e).with_context(|| format!("opening the cache {dir}")),
        },
    }
}

pub fn gc(config: &Config) -> anyhow::Result<(GcReport, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let report = ops::gc(&disk);
            disk.flush(true);
            Ok((report, Ran::Here))
        }
        Writer::Daemon { pid, admin } => Ok((
            ask(admin, "gc", None, reqwest::Body::from(""))?,
            Ran::Daemon { pid },
        )),
    }
}

pub fn verify(config: &Config) -> anyhow::Result<(VerifyReport, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let report = ops::verify(&disk)?;
            disk.flush(true);
            Ok((report, Ran::Here))
        }
        Writer::Daemon { pid, admin } => Ok((
            ask(admin, "verify", None, reqwest::Body::from(""))?,
            Ran::Daemon { pid },
        )),
    }
}

/// Loads the archive at `file`; the daemon gets it streamed as the request body.
pub fn import(
    config: &Config,
    file: &Path,
    upstream: Option<&str>,
) -> anyhow::Result<(ImportReport, Ran)> {
    let opened = || File::open(file).with_context(|| format!("opening {}", file.display()));
    match writer(config)? {
        Writer::Here(disk) => {
            let report = archive::import(&disk, &config.upstreams, opened()?, upstream)?;
            disk.flush(true);
            Ok((report, Ran::Here))
        }
        Writer::Daemon { pid, admin } => {
            let file = tokio::fs::File::from_std(opened()?);
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let report = ask(admin, "import", upstream, body)?;
            Ok((report, Ran::Daemon { pid }))
        }
    }
}

/// `POST /store/<what>` on the daemon's admin listener; its JSON report, or its error.
fn ask<T: DeserializeOwned>(
    admin: SocketAddr,
    what: &str,
    upstream: Option<&str>,
    body: reqwest::Body,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = format!("http://{admin}/store/{what}");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        let mut request = client.post(&url).body(body);
        if let Some(upstream) = upstream {
            request = request.query(&[("upstream", upstream)]);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("asking the daemon that owns the cache ({url})"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let error = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| Some(v.get("error")?.as_str()?.to_string()))
                .unwrap_or(text);
            anyhow::bail!("the daemon that owns the cache answered {status}: {error}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("reading the daemon's report from {url}"))
    })
}
