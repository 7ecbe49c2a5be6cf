//! The operator commands as the CLI runs them: each does its work (in this process, or
//! in the daemon that owns the store: see the parent module) and prints what happened.
//! Blocks.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytesize::ByteSize;

use super::Ran;
use crate::config::Config;
use crate::store::catalog::Scope;
use crate::store::ops;
use crate::transfer::{archive, prefetch, ImageRef, Progress};

pub fn gc(config: &Config) -> anyhow::Result<()> {
    let dir = config.cache.dir.display().to_string();
    let (r, ran) = super::gc(config).with_context(|| format!("collecting {dir}"))?;
    say_where(ran);
    println!(
        "{dir}: lifecycle rules removed {} objects ({}) and {} tag records",
        r.swept.objects,
        ByteSize(r.swept.bytes),
        r.swept.tags
    );
    println!(
        "{dir}: {} objects, {} of a {} budget; removed {} objects ({})",
        r.objects_before,
        ByteSize(r.bytes_before),
        ByteSize(r.budget),
        r.removed,
        ByteSize(r.freed),
    );
    println!(
        "{dir}: pruned {} membership records of content no longer cached ({} repository files emptied)",
        r.members_pruned, r.member_files_removed
    );
    Ok(())
}

pub fn verify(config: &Config) -> anyhow::Result<()> {
    let dir = config.cache.dir.display().to_string();
    let (r, ran) = super::verify(config).with_context(|| format!("verifying {dir}"))?;
    say_where(ran);
    for key in &r.removed {
        println!(
            "removed {:?} {}: does not match its digest",
            key.kind, key.digest
        );
    }
    println!(
        "{dir}: checked {} objects ({}), removed {}",
        r.checked,
        ByteSize(r.bytes),
        r.removed.len()
    );
    Ok(())
}

pub fn import(config: &Config, file: &Path, upstream: Option<&str>) -> anyhow::Result<()> {
    let (r, ran) = super::import(config, file, upstream)
        .with_context(|| format!("importing {}", file.display()))?;
    say_where(ran);
    for tag in &r.tags {
        println!("tagged {tag}");
    }
    for name in &r.untagged {
        eprintln!("warning: {name:?} names no repo:tag; imported, reachable by digest only");
    }
    println!(
        "{}: {} manifest(s), {} blob(s) written ({}), {} already cached",
        file.display(),
        r.manifests,
        r.blobs,
        ByteSize(r.bytes),
        r.already
    );
    Ok(())
}

pub fn purge(config: &Config, scope: &Scope) -> anyhow::Result<()> {
    let (r, ran) = super::purge(config, scope).with_context(|| format!("purging {scope}"))?;
    say_where(ran);
    for kept in &r.kept {
        println!(
            "kept {} ({}): {}",
            kept.digest,
            ByteSize(kept.bytes),
            kept.reason
        );
    }
    if r.objects_kept > r.kept.len() as u64 {
        println!("... and {} more kept", r.objects_kept - r.kept.len() as u64);
    }
    println!(
        "{scope}: removed {} tag(s) and {} object(s), freeing {}; kept {} object(s) ({}) and {} pinned tag(s)",
        r.tags_removed,
        r.objects_removed,
        ByteSize(r.bytes_freed),
        r.objects_kept,
        ByteSize(r.bytes_kept),
        r.tags_kept,
    );
    Ok(())
}

pub fn pin(config: &Config, scope: &Scope, on: bool) -> anyhow::Result<()> {
    let (r, ran) = super::pin(config, scope, on).with_context(|| format!("pinning {scope}"))?;
    say_where(ran);
    let what = match (on, r.added) {
        (true, true) => "pinned",
        (true, false) => "was pinned already",
        (false, true) => "unpinned",
        (false, false) => "was not pinned",
    };
    println!(
        "{scope}: {what}; every pin keeps {} object(s) ({})",
        r.objects,
        ByteSize(r.bytes)
    );
    Ok(())
}

/// `ls` or `ls UPSTREAM/REPO`.
pub fn list(config: &Config, repository: Option<&str>) -> anyhow::Result<()> {
    let repo = match repository {
        None => None,
        Some(text) => Some(text.split_once('/').with_context(|| {
            format!("{text}: name a repository as UPSTREAM/REPO, e.g. docker.io/library/alpine")
        })?),
    };
    let (listing, ran) = super::list(config, repo)?;
    say_where(ran);
    let when = |ms| ago(ms, "never");
    let pin = |p: bool| if p { " pinned" } else { "" };
    match listing {
        super::Listing::Repositories(repos) => {
            for r in &repos {
                println!(
                    "{}/{}\t{} tag(s)\t{} manifest(s)\t{}\tlast pull {}{}",
                    r.upstream,
                    r.repository,
                    r.tags,
                    r.manifests,
                    ByteSize(r.bytes),
                    when(r.last_pull),
                    pin(r.pinned)
                );
            }
            println!("{} repositories", repos.len());
        }
        super::Listing::Tags(tags) => {
            for t in &tags {
                println!(
                    "{}\t{}\t{}\tlast pull {}{}",
                    t.tag,
                    t.digest,
                    ByteSize(t.bytes),
                    when(t.last_pull),
                    pin(t.pinned)
                );
            }
            println!("{} tags", tags.len());
        }
    }
    Ok(())
}

/// `12s ago` for a time in unix milliseconds, `none` without one.
fn ago(ms: Option<u64>, none: &str) -> String {
    match ms {
        Some(ms) => format!(
            "{}s ago",
            crate::store::unix_millis().saturating_sub(ms) / 1000
        ),
        None => none.into(),
    }
}

/// Says when a command's work was done by the daemon that owns the store.
fn say_where(ran: Ran) {
    if let Ran::Daemon { pid } = ran {
        eprintln!("the daemon that owns the cache (process {pid}) ran this through its admin API");
    }
}

/// Only reads: runs whoever owns the store.
pub fn stats(config: &Config, top: usize) -> anyhow::Result<()> {
    let dir = config.cache.dir.display().to_string();
    let s = ops::stats(&config.cache.dir, top).with_context(|| format!("reading {dir}"))?;
    println!("cache: {dir}");
    println!("blobs: {} ({})", s.blobs.0, ByteSize(s.blobs.1));
    println!("manifests: {} ({})", s.manifests.0, ByteSize(s.manifests.1));
    let age = |ms| ago(ms, "-");
    println!("oldest access: {}", age(s.oldest_access));
    println!("newest access: {}", age(s.newest_access));
    for (upstream, n) in &s.tags {
        println!("tags of {upstream}: {n}");
    }
    for (repo, bytes) in &s.top_repositories {
        println!("repository {repo}: {}", ByteSize(*bytes));
    }
    Ok(())
}

/// Only reads: runs whoever owns the store.
pub fn export(config: &Config, images: &[ImageRef], output: &Path) -> anyhow::Result<()> {
    let r = archive::export(config, images, output)
        .with_context(|| format!("exporting to {}", output.display()))?;
    for skipped in &r.skipped {
        eprintln!("warning: not cached, left out of the index: {skipped}");
    }
    println!(
        "{}: {} image(s), {} manifest(s), {} blob(s) ({})",
        output.display(),
        r.images,
        r.manifests,
        r.blobs,
        ByteSize(r.bytes)
    );
    Ok(())
}

/// Where a prefetch puts what it fetches.
pub enum Where {
    /// Through the registry API of a running regcache at this base URL.
    Daemon(String),
    /// Into the cache of this config, which this process owns for the run.
    Cache(Box<Config>),
}

pub fn prefetch(
    into: Where,
    images: &[ImageRef],
    options: &prefetch::Options,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        let fetcher = match &into {
            Where::Daemon(base) => prefetch::Fetcher::Daemon {
                client: reqwest::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .build()?,
                base: base.clone(),
            },
            Where::Cache(config) => match crate::app::owned(config) {
                Ok((cache, upstreams)) => prefetch::Fetcher::Local {
                    cache: Arc::new(cache),
                    upstreams: Arc::new(upstreams),
                },
                // Perhaps a daemon owns it: asked below, outside this runtime.
                Err(e) => return anyhow::Ok(Err(e)),
            },
        };
        let progress = Progress::for_stderr();
        let report = prefetch::prefetch(fetcher.into(), images, options, &progress).await?;
        anyhow::Ok(Ok(report))
    })?;
    // Waits for the manifest and tag writes still in flight.
    drop(runtime);
    let report = match (outcome, into) {
        (Ok(report), _) => report,
        (Err(e), Where::Cache(config)) => {
            let request = crate::server::admin::PrefetchRequest {
                images: images.iter().map(|i| i.text.clone()).collect(),
                platforms: options.platforms.iter().map(ToString::to_string).collect(),
                jobs: Some(options.jobs),
            };
            match super::prefetch_in_daemon(&e, &config, &request)? {
                Some(job) => {
                    let p = job.progress;
                    println!(
                        "prefetched {} image(s) in the daemon: {} blob(s) ({})",
                        job.images.len(),
                        p.blobs,
                        ByteSize(p.bytes)
                    );
                    return Ok(());
                }
                None => anyhow::bail!(
                    "{e}; while a daemon owns the cache, prefetch through it with --via <its \
                     registry URL>, or give it an admin_listen"
                ),
            }
        }
        (Err(e), Where::Daemon(_)) => return Err(e.into()),
    };
    println!(
        "prefetched {} image(s): {} manifest(s), {} blob(s) ({})",
        report.images,
        report.manifests,
        report.blobs,
        ByteSize(report.bytes)
    );
    Ok(())
}

/// The images named on the command line and in `file` (one a line, `#` comments).
pub fn image_list(mut names: Vec<String>, file: Option<&Path>) -> anyhow::Result<Vec<ImageRef>> {
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if !line.is_empty() {
                names.push(line.to_string());
            }
        }
    }
    anyhow::ensure!(
        !names.is_empty(),
        "no image given (name some, or use --file)"
    );
    names
        .iter()
        .map(|n| n.parse().map_err(anyhow::Error::from))
        .collect()
}
