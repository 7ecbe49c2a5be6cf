//! Operator commands on the store (gc, verify, import, purge, pin, list) run where its one
//! writer is (see `store::owner`): in this process when it can take the store, because no
//! daemon runs; else in the daemon that holds it, through the admin API it announced in
//! the store's lock (with the token from `admin.token_file`). Either way the same code
//! does the work (`store::ops`, `store::catalog`, `transfer::archive::import`) on the
//! owner's `Disk`, so the index, the budget and the
//! daemon's in-memory records see every change at once. Blocks.

pub mod commands;

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use reqwest::{Body, Method};
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::admin::{Page, PrefetchJob, PrefetchRequest};
use crate::store::catalog::pins::{self, PinReport};
use crate::store::catalog::purge::{self, PurgeReport};
use crate::store::catalog::{Catalog, RepoInfo, Scope, TagInfo};
use crate::store::lifecycle::Rules;
use crate::store::ops::{self, GcReport, VerifyReport};
use crate::store::{owner, upstream_dir, Disk};
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
    Daemon(Daemon),
}

/// The daemon that owns the store, and how to reach its admin API.
struct Daemon {
    pid: u32,
    admin: SocketAddr,
    /// `Authorization` for the API, from `admin.token_file` when it is readable.
    bearer: Option<String>,
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
            Some(taken) => match Daemon::of(taken, config) {
                Some(daemon) => Ok(Writer::Daemon(daemon)),
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

/// The admin token as a bearer header, read (never created) from `admin.token_file`.
fn bearer(config: &Config) -> Option<String> {
    let path = config.admin.token_file.as_ref()?;
    let token = std::fs::read_to_string(path).ok()?;
    Some(format!("Bearer {}", token.trim()))
}

pub fn gc(config: &Config) -> anyhow::Result<(GcReport, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let report = ops::gc(&disk);
            disk.flush(true);
            Ok((report, Ran::Here))
        }
        Writer::Daemon(d) => d.call(Method::POST, "gc", &[], Body::from("")),
    }
}

pub fn verify(config: &Config) -> anyhow::Result<(VerifyReport, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let report = ops::verify(&disk)?;
            disk.flush(true);
            Ok((report, Ran::Here))
        }
        Writer::Daemon(d) => d.call(Method::POST, "verify", &[], Body::from("")),
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
        Writer::Daemon(d) => {
            let file = tokio::fs::File::from_std(opened()?);
            let body = Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let query: Vec<(&str, &str)> = upstream.map(|u| ("upstream", u)).into_iter().collect();
            d.call(Method::POST, "import", &query, body)
        }
    }
}

/// Purges `scope` (see `store::catalog::purge`).
pub fn purge(config: &Config, scope: &Scope) -> anyhow::Result<(PurgeReport, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let (report, _) = purge::purge(&disk, scope)?;
            disk.flush(true);
            Ok((report, Ran::Here))
        }
        Writer::Daemon(d) => d.call(Method::POST, "purge", &[], json(scope)),
    }
}

/// Pins `scope` (`on`) or unpins it.
pub fn pin(config: &Config, scope: &Scope, on: bool) -> anyhow::Result<(PinReport, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let scope = scope.clone();
            let report = if on {
                pins::pin(&disk, scope)?
            } else {
                pins::unpin(&disk, scope)?
            };
            Ok((report, Ran::Here))
        }
        Writer::Daemon(d) => {
            let method = if on { Method::POST } else { Method::DELETE };
            d.call(method, "pins", &[], json(scope))
        }
    }
}

/// What is cached: every repository, or with `repo` (`upstream`, repository) its tags.
pub fn list(config: &Config, repo: Option<(&str, &str)>) -> anyhow::Result<(Listing, Ran)> {
    match writer(config)? {
        Writer::Here(disk) => {
            let catalog = Catalog::read(&disk.store)?;
            let listing = match repo {
                None => Listing::Repositories(catalog.repositories(
                    &disk.store,
                    &disk.index,
                    &disk.pins,
                )),
                Some((upstream, repo)) => {
                    let id = (upstream_dir(upstream), repo.to_string());
                    Listing::Tags(catalog.tags(&disk.store, &disk.index, &disk.pins, &id))
                }
            };
            Ok((listing, Ran::Here))
        }
        Writer::Daemon(d) => {
            let listing = match repo {
                None => {
                    let (page, ran): (Page<RepoInfo>, _) =
                        d.get("repositories", &[("limit", "1000")])?;
                    (Listing::Repositories(page.items), ran)
                }
                Some((upstream, repo)) => {
                    let query = [
                        ("upstream", upstream),
                        ("repository", repo),
                        ("limit", "1000"),
                    ];
                    let (page, ran): (Page<TagInfo>, _) = d.get("tags", &query)?;
                    (Listing::Tags(page.items), ran)
                }
            };
            Ok(listing)
        }
    }
}

/// Runs a prefetch in the daemon that owns the cache, if `error` (from opening the cache)
/// says one does, and follows it to its end; None when no daemon owns it.
pub fn prefetch_in_daemon(
    error: &crate::app::AppError,
    config: &Config,
    request: &PrefetchRequest,
) -> anyhow::Result<Option<PrefetchJob>> {
    let crate::app::AppError::Cache { source, .. } = error else {
        return Ok(None);
    };
    let Some(daemon) = owner::taken(source).and_then(|t| Daemon::of(t, config)) else {
        return Ok(None);
    };
    let (job, _): (PrefetchJob, _) = daemon.call(Method::POST, "prefetch", &[], json(request))?;
    eprintln!(
        "the daemon that owns the cache (process {}) runs this prefetch as job {}",
        daemon.pid, job.id
    );
    let mut last = None;
    loop {
        let (view, _): (PrefetchJob, _) = daemon.get(&format!("prefetch/{}", job.id), &[])?;
        if last != Some(view.progress) {
            let p = view.progress;
            eprintln!(
                "{}/{} blobs, {}/{} bytes",
                p.blobs, p.of_blobs, p.bytes, p.of_bytes
            );
            last = Some(p);
        }
        match view.state.as_str() {
            "running" => std::thread::sleep(std::time::Duration::from_millis(500)),
            "done" => return Ok(Some(view)),
            _ => anyhow::bail!(
                "the daemon's prefetch failed: {}",
                view.error.unwrap_or_default()
            ),
        }
    }
}

/// What `list` found.
pub enum Listing {
    Repositories(Vec<RepoInfo>),
    Tags(Vec<TagInfo>),
}

fn json(value: &impl serde::Serialize) -> Body {
    Body::from(serde_json::to_vec(value).expect("serializes"))
}

impl Daemon {
    /// The daemon that holds the store, if it announced an admin listener.
    fn of(taken: &owner::Taken, config: &Config) -> Option<Daemon> {
        Some(Daemon {
            pid: taken.owner.pid,
            admin: taken.owner.admin?,
            bearer: bearer(config),
        })
    }

    /// `GET /api/v1/<what>?query`: its JSON.
    fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<(T, Ran)> {
        self.call(Method::GET, what, query, Body::from(""))
    }

    /// `<method> /api/v1/<what>` on the daemon's admin listener: its JSON report, or its
    /// error.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        what: &str,
        query: &[(&str, &str)],
        body: Body,
    ) -> anyhow::Result<(T, Ran)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let url = format!("http://{}/api/v1/{what}", self.admin);
        let report = runtime.block_on(async {
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?;
            let mut request = client.request(method, &url).query(query).body(body);
            if let Some(bearer) = &self.bearer {
                request = request.header(reqwest::header::AUTHORIZATION, bearer);
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
        })?;
        Ok((report, Ran::Daemon { pid: self.pid }))
    }
}
