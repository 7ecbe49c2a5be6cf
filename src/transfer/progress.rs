//! Progress of a long transfer: a bar on a terminal, plain lines otherwise (CI logs).
//! Both go to stderr, so stdout keeps only the final summary.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressStyle};

use crate::oci::Digest;

#[derive(Clone, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    done: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    blobs: AtomicUsize,
    of: AtomicUsize,
    bytes: AtomicU64,
    total: AtomicU64,
}

/// How far a transfer got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Done {
    pub blobs: usize,
    pub of_blobs: usize,
    pub bytes: u64,
    pub of_bytes: u64,
}

impl Progress {
    /// A bar when stderr is a terminal, else lines.
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::hidden();
            Progress {
                bar: Some(bar),
                ..Progress::default()
            }
        } else {
            Progress::default()
        }
    }

    /// Reports nothing (for tests and library callers).
    pub fn quiet() -> Progress {
        Progress {
            quiet: true,
            ..Progress::default()
        }
    }

    /// The downloads begin: `bytes` in `blobs` objects.
    pub fn start(&self, bytes: u64, blobs: usize) {
        self.done.of.store(blobs, Ordering::Relaxed);
        self.done.total.store(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_message(format!("0/{blobs} blobs"));
        } else {
            self.line(&format!("downloading {blobs} blobs ({})", ByteSize(bytes)));
        }
    }

    pub fn advance(&self, bytes: u64) {
        self.done.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    pub fn blob_done(&self, digest: &Digest, len: u64) {
        let n = self.done.blobs.fetch_add(1, Ordering::Relaxed) + 1;
        let of = self.done.of.load(Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.set_message(format!("{n}/{of} blobs")),
            None => self.line(&format!("blob {n}/{of} {digest} ({})", ByteSize(len))),
        }
    }

    /// A message above the bar, or a line.
    pub fn line(&self, message: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(message),
            _ if self.quiet => {}
            _ => eprintln!("{message}"),
        }
    }

    /// The counts so far (for the admin API's prefetch jobs).
    pub fn done(&self) -> Done {
        let d = &self.done;
        Done {
            blobs: d.blobs.load(Ordering::Relaxed),
            of_blobs: d.of.load(Ordering::Relaxed),
            bytes: d.bytes.load(Ordering::Relaxed),
            of_bytes: d.total.load(Ordering::Relaxed),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
