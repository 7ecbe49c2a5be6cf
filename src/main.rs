//! The `regcache` command: parses flags, loads the config and runs the daemon or one of
//! the operator commands (which live in `regcache::store::ops`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use bytesize::ByteSize;
use regcache::app::{self, Listeners};
use regcache::config::{admin_exposure_warning, Config, Overrides};
use regcache::operator;
use regcache::store::ops;
use regcache::transfer::{archive, prefetch, ImageRef, Platform, Progress};

#[derive(Parser)]
#[command(
    version,
    about = "A pull-through caching proxy for container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (the default when no command is given).
    Serve(ServeArgs),
    /// Check a config file; print every problem and exit non-zero if there is one.
    CheckConfig { file: PathBuf },
    /// Apply the lifecycle rules and the disk budget now, and prune membership records of
    /// content no longer cached (safe while the daemon runs).
    Gc(CacheArgs),
    /// Re-hash every cached object and remove those that do not match (safe while running).
    Verify(CacheArgs),
    /// Print sizes, object counts, access times and the largest repositories.
    Stats {
        #[command(flatten)]
        cache: CacheArgs,
        /// How many repositories to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Fill the cache with images: every platform of an index unless --platform is given.
    ///
    /// IMAGE is [REGISTRY/]REPO[:TAG|@DIGEST]; a REGISTRY (a first component with a `.` or
    /// `:`, or `localhost`) selects the upstream as containerd's `ns=` does, else the name
    /// is routed as a client's path is (an upstream's name as prefix, else the default).
    Prefetch(PrefetchArgs),
    /// Write cached images as an OCI image layout archive (a tar other tools read).
    Export {
        /// Images, as for prefetch; each is named in the archive as written here.
        #[arg(required = true)]
        images: Vec<String>,
        /// The archive to write.
        #[arg(long, short)]
        output: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Load an OCI image layout archive into the cache, verifying every blob.
    Import {
        /// The archive (as `export` writes it, or `skopeo copy ... oci-archive:FILE:REF`).
        file: PathBuf,
        /// Record the archive's tags under this upstream (default: the one each name routes to).
        #[arg(long)]
        upstream: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

#[derive(Args)]
struct PrefetchArgs {
    /// Images to fetch.
    images: Vec<String>,
    /// A file of images, one per line (`#` starts a comment).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Only these platforms of an index, os/arch[/variant]; repeatable.
    #[arg(long = "platform")]
    platforms: Vec<Platform>,
    /// Blob downloads at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Go through a running regcache, e.g. http://127.0.0.1:5000 (else the cache directory
    /// is filled in-process; a daemon serving it meanwhile counts what was added within
    /// its `index_flush_secs`).
    #[arg(long)]
    via: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct CacheArgs {
    /// TOML config file (for the cache directory and the budget); default: the embedded one.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Directory of the cache; wins over the config's.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    fn load(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            cache_dir: self.cache_dir,
            ..Overrides::default()
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

#[derive(Args, Default)]
struct ServeArgs {
    /// TOML config file; without it the embedded default (Docker Hub on 127.0.0.1:5000) runs.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address for the registry API, e.g. 127.0.0.1:5000.
    #[arg(long)]
    listen: Option<String>,
    /// URL of the (default) upstream registry, e.g. https://registry-1.docker.io.
    #[arg(long)]
    upstream: Option<String>,
    /// Directory of the cache.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Address for /metrics and /healthz.
    #[arg(long)]
    admin_listen: Option<String>,
}

/// See Cargo.toml for why not the system allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Without it, freed pages go back only when the allocator is next busy: an idle daemon
    // would keep the memory of a burst that has ended.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("regcache: jemalloc background purging unavailable: {e}");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Gc(args)) => gc(args),
        Some(Command::Verify(args)) => verify(args),
        Some(Command::Stats { cache, top }) => stats(cache, top),
        Some(Command::Prefetch(args)) => prefetch(args),
        Some(Command::Export {
            images,
            output,
            cache,
        }) => export(images, &output, cache),
        Some(Command::Import {
            file,
            upstream,
            cache,
        }) => import(&file, upstream.as_deref(), cache),
        None => serve(ServeArgs::default()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("regcache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load(Some(file), &Overrides::default()) {
        Ok(config) => {
            let auth = &config.server.auth;
            if let Err(e) = regcache::server::auth::Secrets::read(auth) {
                println!("problem(s) in the credential files of {}:", file.display());
                for problem in &e.0 {
                    println!("  - {problem}");
                }
                return Ok(ExitCode::FAILURE);
            }
            // The daemon would refuse to start on a pair that does not load; say so now.
            if let Some(files) = &config.server.tls {
                if let Err(e) = regcache::server::tls::Tls::load(files) {
                    println!("problem in server.tls_cert_file / server.tls_key_file: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            if let Some(warning) = auth.exposure_warning(config.listen, config.server.tls.is_some())
            {
                println!("warning: {warning}");
            }
            if let Some(warning) = config.admin_listen.and_then(admin_exposure_warning) {
                println!("warning: {warning}");
            }
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    regcache::telemetry::init();
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        upstream: args.upstream,
        cache_dir: args.cache_dir,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    // Before the runtime's threads start: this edits the environment.
    let activated = regcache::systemd::take_listeners().context("socket activation")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listeners = match activated {
            Some(sockets) => {
                tracing::info!("using the sockets passed by systemd; `listen` is ignored");
                Listeners::from_activated(sockets, &config).await?
            }
            None => Listeners::bind(&config).await?,
        };
        app::run(listeners, &config, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn gc(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let dir = config.cache.dir.display().to_string();
    let (r, ran) = operator::gc(&config).with_context(|| format!("collecting {dir}"))?;
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
    Ok(ExitCode::SUCCESS)
}

fn verify(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let dir = config.cache.dir.display().to_string();
    let (r, ran) = operator::verify(&config).with_context(|| format!("verifying {dir}"))?;
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
    Ok(ExitCode::SUCCESS)
}

/// Says when a command's work was done by the daemon that owns the store.
fn say_where(ran: operator::Ran) {
    if let operator::Ran::Daemon { pid } = ran {
        eprintln!("the daemon that owns the cache (process {pid}) ran this through its admin API");
    }
}

fn stats(args: CacheArgs, top: usize) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let dir = config.cache.dir.display().to_string();
    let s = ops::stats(&config.cache.dir, top).with_context(|| format!("reading {dir}"))?;
    println!("cache: {dir}");
    println!("blobs: {} ({})", s.blobs.0, ByteSize(s.blobs.1));
    println!("manifests: {} ({})", s.manifests.0, ByteSize(s.manifests.1));
    let age = |ms: Option<u64>| match ms {
        Some(ms) => format!(
            "{}s ago",
            regcache::store::unix_millis().saturating_sub(ms) / 1000
        ),
        None => "-".into(),
    };
    println!("oldest access: {}", age(s.oldest_access));
    println!("newest access: {}", age(s.newest_access));
    for (upstream, n) in &s.tags {
        println!("tags of {upstream}: {n}");
    }
    for (repo, bytes) in &s.top_repositories {
        println!("repository {repo}: {}", ByteSize(*bytes));
    }
    Ok(ExitCode::SUCCESS)
}

fn image_list(
    mut names: Vec<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<ImageRef>> {
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

fn prefetch(args: PrefetchArgs) -> anyhow::Result<ExitCode> {
    regcache::telemetry::init_with("warn");
    let images = image_list(args.images, args.file.as_deref())?;
    let options = prefetch::Options {
        jobs: args.jobs.max(1),
        platforms: args.platforms,
    };
    let config = match &args.via {
        Some(_) => None,
        None => Some(args.cache.load()?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let source = match (&args.via, &config) {
            (Some(base), _) => prefetch::Fetcher::Daemon {
                client: reqwest::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .build()?,
                base: base.clone(),
            },
            (None, Some(config)) => {
                let (cache, upstreams) = regcache::app::owned(config).map_err(|e| {
                    anyhow::anyhow!(
                        "{e}; while a daemon owns the cache, prefetch through it with \
                         --via <its registry URL>"
                    )
                })?;
                prefetch::Fetcher::Local {
                    cache: Box::new(cache),
                    upstreams,
                }
            }
            (None, None) => unreachable!("a config is loaded without --via"),
        };
        let progress = Progress::for_stderr();
        anyhow::Ok(prefetch::prefetch(source.into(), &images, &options, &progress).await?)
    })?;
    // Waits for the manifest and tag writes still in flight.
    drop(runtime);
    println!(
        "prefetched {} image(s): {} manifest(s), {} blob(s) ({})",
        report.images,
        report.manifests,
        report.blobs,
        ByteSize(report.bytes)
    );
    Ok(ExitCode::SUCCESS)
}

fn export(
    images: Vec<String>,
    output: &std::path::Path,
    cache: CacheArgs,
) -> anyhow::Result<ExitCode> {
    let images = image_list(images, None)?;
    let config = cache.load()?;
    let r = archive::export(&config, &images, output)
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
    Ok(ExitCode::SUCCESS)
}

fn import(
    file: &std::path::Path,
    upstream: Option<&str>,
    cache: CacheArgs,
) -> anyhow::Result<ExitCode> {
    let config = cache.load()?;
    let (r, ran) = operator::import(&config, file, upstream)
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
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
