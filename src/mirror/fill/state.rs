//! A fill's shared state: its progress (on a watch channel) and where its bytes are, in
//! the temp file or, after a disk write failed, in a bounded in-memory relay.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::Error;
use crate::oci::Digest;
use crate::store::Pin;

#[derive(Clone, Debug)]
pub enum Phase {
    /// Waiting for upstream's headers.
    Connecting,
    Streaming,
    /// Every byte arrived and hashed to the digest; the store is publishing it. Readers
    /// may end their responses now: the fsync and rename of the temp file (a large part
    /// of a cold fill's wall time) need not delay the client's last byte.
    Verified,
    /// Verified (and published in the store, unless a disk write failed on the way).
    Done,
    Failed(Arc<Error>),
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Bytes received so far; readers may read up to here.
    pub written: u64,
    /// Upstream's Content-Length, once its headers arrived.
    pub total: Option<u64>,
    pub phase: Phase,
    /// The bytes come from the shared bucket, not upstream (set with `total`).
    pub from_bucket: bool,
}

/// A fill in progress, shared by its task and every reader.
pub struct Fill {
    pub digest: Digest,
    /// `None` when no temp file could be made: then every byte goes through the relay.
    pub(super) file: Option<Arc<File>>,
    relay: Mutex<Relay>,
    progress: watch::Sender<Progress>,
    /// Keeps the published object from eviction while late readers still stream it.
    pub(super) held: Mutex<Option<Pin>>,
}

/// Where the bytes from a disk write failure on live: a bounded window in memory, so the
/// clients attached to the fill still get the blob while nothing is cached.
#[derive(Default)]
struct Relay {
    /// Bytes before this offset are in the file; `None` while every write succeeds.
    file_end: Option<u64>,
    /// Offset of the first byte of `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    len: u64,
}

/// How far behind the newest byte a reader of a relayed fill may fall before it is cut.
const RELAY_BYTES: u64 = 64 << 20;

/// Where a reader finds the bytes at an offset of a fill.
pub enum At {
    /// In the fill's file, up to `end` (exclusive).
    File {
        file: Arc<File>,
        end: u64,
    },
    Memory(Bytes),
    /// The relay window has moved past the offset: the reader was too slow.
    Behind,
}

impl Fill {
    pub fn new(digest: Digest, file: Option<File>) -> Fill {
        let (progress, _) = watch::channel(Progress {
            written: 0,
            total: None,
            phase: Phase::Connecting,
            from_bucket: false,
        });
        let relay = Relay {
            file_end: file.is_none().then_some(0),
            ..Relay::default()
        };
        Fill {
            digest,
            file: file.map(Arc::new),
            relay: Mutex::new(relay),
            progress,
            held: Mutex::new(None),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn update(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }

    /// Where the bytes at `offset` (up to `limit`, exclusive) are.
    pub fn at(&self, offset: u64, limit: u64) -> At {
        let relay = self.relay.lock().expect("relay lock");
        match (relay.file_end, &self.file) {
            (None, Some(file)) => At::File {
                file: file.clone(),
                end: limit,
            },
            (Some(end), Some(file)) if offset < end => At::File {
                file: file.clone(),
                end: limit.min(end),
            },
            _ if offset < relay.start => At::Behind,
            _ => {
                let mut chunk_start = relay.start;
                for chunk in &relay.chunks {
                    let chunk_end = chunk_start + chunk.len() as u64;
                    if offset < chunk_end {
                        let from = (offset - chunk_start) as usize;
                        let to = (limit.min(chunk_end) - chunk_start) as usize;
                        return At::Memory(chunk.slice(from..to));
                    }
                    chunk_start = chunk_end;
                }
                At::Memory(Bytes::new())
            }
        }
    }

    /// From now on (offset `written`), bytes live in memory only.
    pub(super) fn start_relay(&self, written: u64) {
        let mut relay = self.relay.lock().expect("relay lock");
        relay.file_end.get_or_insert(written);
        relay.start = written;
    }

    pub(super) fn push_relay(&self, chunk: Bytes) {
        let mut relay = self.relay.lock().expect("relay lock");
        relay.len += chunk.len() as u64;
        relay.chunks.push_back(chunk);
        while relay.len > RELAY_BYTES && relay.chunks.len() > 1 {
            let old = relay.chunks.pop_front().expect("more than one chunk");
            relay.len -= old.len() as u64;
            relay.start += old.len() as u64;
        }
    }

    /// The blob's size as upstream announced it, else the bytes seen so far.
    pub(super) fn size_hint(&self) -> u64 {
        let progress = self.progress.borrow();
        progress.total.unwrap_or(progress.written)
    }

    pub(super) fn relaying(&self) -> bool {
        self.relay.lock().expect("relay lock").file_end.is_some()
    }
}
