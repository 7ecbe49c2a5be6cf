//! The `regcache` command: parses flags, loads the config and runs the daemon or one of
//! the operator commands (which live in `regcache::operator::commands`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use regcache::app::{self, Listeners};
use regcache::config::{admin_exposure_warning, Config, Overrides};
use regcache::operator::commands;
use regcache::store::catalog::Scope;
use regcache::transfer::{prefetch, Platform};

#[derive(Parser)]
#[command(
    version,
    about = "A pull-through caching proxy for container registries",
    args_conflicts_with_subcommands = true,
    after_help = "`regcache help <COMMAND>` (or `regcache <COMMAND> --help`) describes each \
                  command and its flags. With no command, the serve flags apply."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, `regcache [serve flags]` runs the mirror as `regcache serve` does.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror (the default when no command is given).
    Serve(ServeArgs),
    /// Check a config file; print every problem and exit non-zero if there is one.
    CheckConfig { file: PathBuf },
    /// Check that the container runtimes on this node pull through the mirror: print a
    /// checklist with the fix for each problem, and with --probe pull through each runtime
    /// that can be driven and confirm in the mirror's counters that the requests arrived.
    /// Exits non-zero when a runtime bypasses the mirror.
    Doctor(DoctorArgs),
    /// Apply the lifecycle rules and the disk budget now, and prune membership records of
    /// content no longer cached (run by the daemon, through its admin listener, while one
    /// owns the cache).
    Gc(CacheArgs),
    /// Re-hash every cached object and remove those that do not match (run by the daemon
    /// while one owns the cache).
    Verify(CacheArgs),
    /// Remove cached content: a whole upstream, a repository, or one image, written
    /// UPSTREAM[/REPO[:TAG|@DIGEST]] (the upstream's `name` in the config). What another
    /// repository still references, or a pin keeps, stays; the report says what was freed
    /// and what was kept, and why (run by the daemon while one owns the cache).
    Purge {
        /// What to purge, e.g. `docker.io/library/alpine:3.19`.
        scope: Scope,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Keep cached content out of the reach of the budget and the lifecycle rules, across
    /// restarts: UPSTREAM[/REPO[:TAG|@DIGEST]] as for purge (a pinned tag keeps the image
    /// it points at, also after it moves).
    Pin {
        /// What to pin; it must be cached (prefetch it first).
        scope: Scope,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Remove a pin: its content is the budget's to evict again.
    Unpin {
        /// The pin, exactly as it was given.
        scope: Scope,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// List the cached repositories with sizes, last pull and pins; with UPSTREAM/REPO,
    /// that repository's tags.
    Ls {
        /// A repository, UPSTREAM/REPO, to list the tags of.
        repository: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
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
    /// is filled in-process, which a daemon owning it refuses).
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
    /// The admin token, for the daemon that owns the cache; wins over the config's
    /// admin.token_file.
    #[arg(long, env = "REGCACHE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

impl CacheArgs {
    fn load(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            cache_dir: self.cache_dir,
            admin_token_file: self.admin_token_file,
            ..Overrides::default()
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

#[derive(Args)]
struct DoctorArgs {
    /// The mirror's registry API as the runtimes on this node reach it.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    mirror: url::Url,
    /// The mirror's admin listener, whose /metrics confirms that probes arrived.
    #[arg(long, default_value = "http://127.0.0.1:5001")]
    admin: url::Url,
    /// Pull this image through each runtime that can be driven here (ctr, skopeo, docker).
    #[arg(long, value_name = "IMAGE")]
    probe: Option<String>,
    /// containerd's socket, for the probe.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_address: PathBuf,
    /// Read the runtimes' files under this directory instead of / (a node's root
    /// mounted elsewhere, or test fixtures).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Args, Default)]
struct ServeArgs {
    /// TOML config file; without it the embedded default (Docker Hub on 127.0.0.1:5000) runs.
    #[arg(long, short, env = "REGCACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the registry API, e.g. 127.0.0.1:5000.
    #[arg(long, env = "REGCACHE_LISTEN")]
    listen: Option<String>,
    /// URL of the (default) upstream registry, e.g. https://registry-1.docker.io.
    #[arg(long, env = "REGCACHE_UPSTREAM")]
    upstream: Option<String>,
    /// Directory of the cache.
    #[arg(long, env = "REGCACHE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Address for /metrics, /healthz, the admin API and the status page.
    #[arg(long, env = "REGCACHE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// File with the admin API's token (created with a random one when missing).
    #[arg(long, env = "REGCACHE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
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
        Some(Command::Doctor(args)) => doctor(args),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Gc(args)) => gc(args),
        Some(Command::Verify(args)) => verify(args),
        Some(Command::Stats { cache, top }) => stats(cache, top),
        Some(Command::Purge { scope, cache }) => with_cache(cache, |c| commands::purge(c, &scope)),
        Some(Command::Pin { scope, cache }) => {
            with_cache(cache, |c| commands::pin(c, &scope, true))
        }
        Some(Command::Unpin { scope, cache }) => {
            with_cache(cache, |c| commands::pin(c, &scope, false))
        }
        Some(Command::Ls { repository, cache }) => {
            with_cache(cache, |c| commands::list(c, repository.as_deref()))
        }
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
        None => serve(cli.serve),
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
            // The daemon would refuse to start without a usable cluster secret.
            if let Some(cluster) = &config.cluster {
                let metrics = regcache::metrics::Metrics::new();
                if let Err(e) = regcache::cluster::Cluster::new(cluster, &metrics) {
                    println!("problem in {e}");
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

fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let options = regcache::doctor::Options {
        root: args.root,
        mirror: args.mirror,
        admin: args.admin,
        probe: args.probe,
        containerd_address: args.containerd_address,
    };
    let mut findings = regcache::doctor::inspect(&options);
    if options.probe.is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        findings.extend(runtime.block_on(regcache::doctor::probe(&options)));
    }
    print!("{}", regcache::doctor::render(&findings));
    let failed = findings
        .iter()
        .any(|f| f.status == regcache::doctor::Status::Fail);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        admin_token_file: args.admin_token_file,
        upstream: args.upstream,
        cache_dir: args.cache_dir,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    regcache::telemetry::init(config.log_format);
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

/// Runs an operator command on the cache `args` name.
fn with_cache(
    args: CacheArgs,
    command: impl FnOnce(&Config) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    command(&args.load()?)?;
    Ok(ExitCode::SUCCESS)
}

fn gc(args: CacheArgs) -> anyhow::Result<ExitCode> {
    commands::gc(&args.load()?)?;
    Ok(ExitCode::SUCCESS)
}

fn verify(args: CacheArgs) -> anyhow::Result<ExitCode> {
    commands::verify(&args.load()?)?;
    Ok(ExitCode::SUCCESS)
}

fn stats(args: CacheArgs, top: usize) -> anyhow::Result<ExitCode> {
    commands::stats(&args.load()?, top)?;
    Ok(ExitCode::SUCCESS)
}

fn prefetch(args: PrefetchArgs) -> anyhow::Result<ExitCode> {
    regcache::telemetry::init_with("warn", Default::default());
    let images = commands::image_list(args.images, args.file.as_deref())?;
    let options = prefetch::Options {
        jobs: args.jobs.max(1),
        platforms: args.platforms,
    };
    let into = match args.via {
        Some(base) => commands::Where::Daemon(base),
        None => commands::Where::Cache(Box::new(args.cache.load()?)),
    };
    commands::prefetch(into, &images, &options)?;
    Ok(ExitCode::SUCCESS)
}

fn export(images: Vec<String>, output: &Path, cache: CacheArgs) -> anyhow::Result<ExitCode> {
    let images = commands::image_list(images, None)?;
    commands::export(&cache.load()?, &images, output)?;
    Ok(ExitCode::SUCCESS)
}

fn import(file: &Path, upstream: Option<&str>, cache: CacheArgs) -> anyhow::Result<ExitCode> {
    commands::import(&cache.load()?, file, upstream)?;
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
