//! The `regcache` command: parses flags, loads the config and runs the daemon or one of
//! the operator commands (which live in `regcache::cache::ops`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use bytesize::ByteSize;
use regcache::app::{self, Listeners};
use regcache::cache::ops;
use regcache::config::{Config, Overrides};

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
    /// Apply the disk budget now (safe while the daemon runs).
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Gc(args)) => gc(args),
        Some(Command::Verify(args)) => verify(args),
        Some(Command::Stats { cache, top }) => stats(cache, top),
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
            if let Some(warning) = auth.exposure_warning(config.listen, config.server.tls.is_some())
            {
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
    let r = ops::gc(&config).with_context(|| format!("collecting {dir}"))?;
    println!(
        "{dir}: lifecycle rules removed {} objects ({}) and {} tag records",
        r.swept.objects,
        ByteSize(r.swept.bytes),
        r.swept.tags
    );
    println!(
        "{dir}: {} objects, {} of a {} budget; removed {} objects ({}), {} with a damaged size",
        r.objects_before,
        ByteSize(r.bytes_before),
        ByteSize(r.budget),
        r.removed,
        ByteSize(r.freed),
        r.corrupt,
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let dir = config.cache.dir.display().to_string();
    let r = ops::verify(&config.cache.dir).with_context(|| format!("verifying {dir}"))?;
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
            regcache::cache::unix_millis().saturating_sub(ms) / 1000
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

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
