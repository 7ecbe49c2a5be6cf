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

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
