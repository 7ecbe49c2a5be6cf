//! Reading a blob's bytes for a response: from a stored file (pinned against eviction), or
//! from a fill as far as it got (its temp file, or its in-memory relay after a disk fault).
//!
//! A reader of a fill never sends the last byte of its response before the fill is verified:
//! if the digest turns out wrong, the client's response ends as an error, never as a clean,
//! complete body.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream};
use tokio::sync::watch;

use super::fill::{At, Fill, Phase, Progress};
use crate::store::unix_millis;
use crate::store::Pin;

/// Bytes read per step on an HTTP/1.1 connection. Each open response holds about one step
/// in hyper's write queue, so this times the number of streams is most of the memory of a
/// busy mirror (256 KiB x 32 streams = 8 MiB); a 512 MiB blob is still only 2048 reads.
pub const CHUNK: u64 = 256 << 10;

/// Bytes read per step on an h2 stream. h2 takes a whole step into its buffer as soon as
/// the stream's window has room for one byte, so a client that never opens its window pins
/// one step per stream, times the streams of every connection: keep it small.
pub const H2_CHUNK: u64 = 32 << 10;

/// Where the bytes of one response come from.
pub struct BlobReader {
    source: Feed,
    /// Next offset to send, and one past the last (exclusive).
    offset: u64,
    end: u64,
    /// Set while the file is still being filled.
    fill: Option<watch::Receiver<Progress>>,
    /// Keeps a stored object from eviction until the response is done.
    _pin: Option<Pin>,
    /// Whether the file's pages are likely in the page cache (see [`Piece::File`]).
    cached: bool,
    /// Where file pieces are read into, reused once the last one sent is dropped. A fresh
    /// zeroed buffer per piece made the allocator hand out pages the kernel had to fault
    /// in and clear: a fifth of a TLS stream's CPU.
    scratch: BytesMut,
}

/// A stored object used this recently is taken to be in the page cache. Past it, reads
/// may wait for the disk.
const WARM_MS: u64 = 60_000;

enum Feed {
    File(Arc<File>),
    Fill(Arc<Fill>),
}

impl BlobReader {
    /// Reads `start..end` of a complete, verified file.
    pub fn stored(file: Arc<File>, start: u64, end: u64) -> BlobReader {
        BlobReader {
            source: Feed::File(file),
            offset: start,
            end,
            fill: None,
            _pin: None,
            cached: false,
            scratch: BytesMut::new(),
        }
    }

    /// Holds `pin` for as long as the response streams.
    pub fn holding(mut self, pin: Pin) -> BlobReader {
        self.cached = pin.used_within(unix_millis(), WARM_MS);
        self._pin = Some(pin);
        self
    }

    /// Reads `start..end` of what a fill is receiving. `end` may be `u64::MAX` when
    /// upstream sent no length: the stream then ends where the fill does.
    pub fn filling(
        fill: Arc<Fill>,
        progress: watch::Receiver<Progress>,
        start: u64,
        end: u64,
    ) -> BlobReader {
        BlobReader {
            source: Feed::Fill(fill),
            offset: start,
            end,
            fill: Some(progress),
            _pin: None,
            // Bytes a fill is writing now are in the page cache.
            cached: true,
            scratch: BytesMut::new(),
        }
    }

    /// The bytes as a stream of pieces of at most `chunk` bytes.
    pub fn into_stream(self, chunk: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        stream::unfold(Some(self), move |state| async move {
            let mut reader = state?;
            match reader.next_chunk(chunk).await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
                Ok(None) => None,
                // An error item ends the body abnormally; nothing may follow it.
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// The next bytes to send, at most `max` of them, or `None` at the end. A file piece
    /// is the caller's to copy (read into memory, or sent with `sendfile`); the reader has
    /// already moved past it.
    pub async fn next_piece(&mut self, max: u64) -> io::Result<Option<Piece>> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let limit = match &mut self.fill {
            None => self.end,
            Some(progress) => match readable(progress, self.offset, self.end).await? {
                Some(limit) => limit,
                None => return Ok(None),
            },
        };
        let limit = limit.min(self.offset.saturating_add(max.max(1)));
        let piece = match &self.source {
            Feed::File(file) => Piece::File {
                file: file.clone(),
                offset: self.offset,
                len: limit - self.offset,
                cached: self.cached,
            },
            Feed::Fill(fill) => match fill.at(self.offset, limit) {
                At::File { file, end } => Piece::File {
                    file,
                    offset: self.offset,
                    len: end - self.offset,
                    cached: self.cached,
                },
                At::Memory(bytes) if !bytes.is_empty() => Piece::Bytes(bytes),
                At::Memory(_) | At::Behind => {
                    return Err(io::Error::other(
                        "the client fell behind a download the disk could not cache",
                    ))
                }
            },
        };
        self.offset += piece.len();
        Ok(Some(piece))
    }

    async fn next_chunk(&mut self, chunk: u64) -> io::Result<Option<Bytes>> {
        match self.next_piece(chunk).await? {
            None => Ok(None),
            Some(Piece::Bytes(bytes)) => Ok(Some(bytes)),
            Some(Piece::File {
                file, offset, len, ..
            }) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                let (scratch, read) = tokio::task::spawn_blocking(move || {
                    let read = read_at(&file, offset, len, &mut scratch);
                    (scratch, read)
                })
                .await
                .map_err(io::Error::other)?;
                self.scratch = scratch;
                read.map(Some)
            }
        }
    }
}

/// A stretch of a blob ready to go out: part of a file, or bytes already in memory.
pub enum Piece {
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
        /// Likely in the page cache, so reading it will not wait for the disk.
        cached: bool,
    },
    Bytes(Bytes),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::File { len, .. } => *len,
            Piece::Bytes(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Waits until a fill has bytes past `offset` that may be sent, and returns the limit
/// (exclusive). `None`: the fill ended exactly at `offset`.
async fn readable(
    progress: &mut watch::Receiver<Progress>,
    offset: u64,
    end: u64,
) -> io::Result<Option<u64>> {
    loop {
        {
            let p = progress.borrow_and_update();
            match &p.phase {
                Phase::Failed(e) => return Err(io::Error::other(format!("blob fill failed: {e}"))),
                Phase::Verified | Phase::Done if p.written <= offset => return Ok(None),
                Phase::Verified | Phase::Done => return Ok(Some(p.written.min(end))),
                Phase::Connecting | Phase::Streaming => {
                    // Hold back the response's last byte until the digest is checked.
                    let safe = p.written.min(end.saturating_sub(1));
                    if safe > offset {
                        return Ok(Some(safe));
                    }
                }
            }
        }
        if progress.changed().await.is_err() {
            return Err(io::Error::other("blob fill ended without a result"));
        }
    }
}

/// Reads `len` bytes at `offset` into `buf`'s storage (reclaimed when no piece read
/// before still uses it, else new) and hands them out.
fn read_at(file: &File, offset: u64, len: u64, buf: &mut BytesMut) -> io::Result<Bytes> {
    buf.clear();
    buf.reserve(len as usize);
    buf.resize(len as usize, 0);
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => {
                // The file is shorter than its index says: damaged or truncated on disk.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached blob is shorter than expected",
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.split().freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;

    async fn collect(reader: BlobReader) -> (Vec<u8>, Option<io::Error>) {
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(reader.into_stream(CHUNK));
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn file_with(data: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        Arc::new(f)
    }

    #[tokio::test]
    async fn stored_ranges_read_exactly() {
        let data: Vec<u8> = (0..2_000_000u32).map(|i| i as u8).collect();
        let file = file_with(&data);
        let (got, err) = collect(BlobReader::stored(file.clone(), 0, data.len() as u64)).await;
        assert!(err.is_none());
        assert_eq!(got, data);
        let (got, _) = collect(BlobReader::stored(file, 10, 20)).await;
        assert_eq!(got, &data[10..20]);
    }

    fn fill_with(data: &[u8]) -> Arc<Fill> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        let digest = crate::oci::Digest::of(crate::oci::Algorithm::Sha256, data);
        Arc::new(Fill::new(digest, Some(f)))
    }

    #[tokio::test]
    async fn a_fill_reader_holds_the_last_byte_until_done_and_fails_on_failure() {
        let fill = fill_with(b"abcdef");
        fill.update(|p| {
            p.written = 6;
            p.total = Some(6);
            p.phase = Phase::Streaming;
        });
        let rx = fill.subscribe();
        let mut stream =
            Box::pin(BlobReader::filling(fill.clone(), rx.clone(), 0, 6).into_stream(CHUNK));
        assert_eq!(&stream.next().await.unwrap().unwrap()[..], b"abcde");
        let error = crate::error::Error::local("test", io::Error::other("bad digest"));
        fill.update(|p| p.phase = Phase::Failed(Arc::new(error)));
        assert!(stream.next().await.unwrap().is_err());
        assert!(stream.next().await.is_none());

        fill.update(|p| p.phase = Phase::Done);
        let (got, err) = collect(BlobReader::filling(fill, rx, 2, 6)).await;
        assert!(err.is_none());
        assert_eq!(got, b"cdef");
    }
}
