//! Per-connection guards against clients that hold resources without using them: an I/O
//! wrapper that notes when bytes last moved and aborts a write (or a sendfile) that stalls
//! past the send timeout, the in-flight count that tells an idle connection from a busy
//! one, and per-response clocks that tell when an h2 client keeps a stream's window shut
//! (its socket is fine, so the I/O wrapper sees nothing).
//!
//! Only clocks and counters here; what to do when a guard trips is `conn`'s business.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// What one connection is doing, shared by its I/O wrapper, its requests and its task.
pub struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` when bytes last moved or a request ended.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    send_timed_out: AtomicBool,
    /// The clocks of the responses in flight (see [`RequestGuard::handed`]).
    clocks: Mutex<Vec<Weak<AtomicU64>>>,
}

/// A response clock that is not waiting to be asked for its next frame.
const NOT_WAITING: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            send_timed_out: AtomicBool::new(false),
            clocks: Mutex::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// True once a stalled write aborted the connection.
    pub fn send_timed_out(&self) -> bool {
        self.send_timed_out.load(Ordering::Relaxed)
    }

    /// True when the connection served a request and has none in flight now.
    pub fn between_requests(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0 && self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Resolves once no request is in flight and no bytes moved for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            let now = Instant::now();
            if now >= deadline && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            // A request in flight may be waiting on upstream: look again later.
            tokio::time::sleep_until(deadline.max(now + limit)).await;
        }
    }

    /// Resolves once a response has waited `limit` to be asked for its next frame after
    /// handing one over: hyper asks only when the stream can send, so its client has kept
    /// the stream's window shut (or stopped reading) all that time.
    pub async fn stalled(&self, limit: Duration) {
        let every = (limit / 4).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let now = self.now_ms();
            let limit = limit.as_millis() as u64;
            let mut clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
            clocks.retain(|c| c.strong_count() > 0);
            let stalled = clocks.iter().filter_map(Weak::upgrade).any(|c| {
                let handed = c.load(Ordering::Relaxed);
                handed != NOT_WAITING && now.saturating_sub(handed) >= limit
            });
            if stalled {
                return;
            }
        }
    }

    /// Marks a request as started; the returned guard ends it when dropped.
    pub fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let clock = Arc::new(AtomicU64::new(NOT_WAITING));
        let mut clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
        clocks.push(Arc::downgrade(&clock));
        RequestGuard {
            activity: self.clone(),
            clock,
        }
    }
}

/// One request in flight; its response body reports to it when hyper takes a frame and
/// when hyper asks for the next.
pub struct RequestGuard {
    activity: Arc<Activity>,
    /// When the body last handed over a frame and was not asked for another since.
    clock: Arc<AtomicU64>,
}

impl RequestGuard {
    /// hyper asked the body for a frame.
    pub fn polled(&self) {
        self.clock.store(NOT_WAITING, Ordering::Relaxed);
    }

    /// The body handed hyper a frame.
    pub fn handed(&self) {
        self.clock.store(self.activity.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client stream whose reads and writes mark activity, and whose writes fail with
/// `TimedOut` when they make no progress for `send_timeout`, which makes hyper abort the
/// connection (a client reading one byte a minute does not hold it forever).
pub struct Guarded<S> {
    inner: S,
    activity: Arc<Activity>,
    send_timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, activity: Arc<Activity>, send_timeout: Duration) -> Guarded<S> {
        activity.touch();
        Guarded {
            inner,
            activity,
            send_timeout,
            stall: None,
        }
    }

    /// Passes a write-side poll through, arming the stall timer while it is pending.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall = None;
            self.activity.touch();
            return polled;
        }
        let timeout = self.send_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(cx));
        Poll::Ready(Err(self.timed_out()))
    }
}

impl<S> Guarded<S> {
    fn timed_out(&self) -> io::Error {
        self.activity.send_timed_out.store(true, Ordering::Relaxed);
        io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not read the response within the send timeout",
        )
    }
}

impl Guarded<TcpStream> {
    /// Sends `len` bytes of `file` from `offset` with sendfile(2): the kernel moves them
    /// from the page cache to the socket, never through our memory. Pages not in memory
    /// make the call wait for the disk, so unless the caller knows them `cached` it runs
    /// on the blocking pool, with `socket`: a duplicate of this stream's descriptor that
    /// such a call can own, made the first time one is needed.
    pub async fn send_file(
        &mut self,
        socket: &mut Option<Arc<OwnedFd>>,
        file: &Arc<File>,
        mut offset: u64,
        len: u64,
        cached: bool,
    ) -> io::Result<()> {
        let end = offset + len;
        while offset < end {
            match tokio::time::timeout(self.send_timeout, self.inner.writable()).await {
                Ok(ready) => ready?,
                Err(_) => return Err(self.timed_out()),
            }
            let count = (end - offset).min(SENDFILE_MAX) as usize;
            let sent = if cached {
                let out = self.inner.as_fd();
                self.inner
                    .try_io(Interest::WRITABLE, || sendfile(out, file, offset, count))
            } else {
                let socket = match socket {
                    Some(socket) => socket,
                    None => socket.insert(Arc::new(rustix::io::dup(&self.inner)?)),
                };
                let (out, from) = (socket.clone(), file.clone());
                let sent =
                    tokio::task::spawn_blocking(move || sendfile(&out, &from, offset, count))
                        .await
                        .map_err(io::Error::other)?;
                if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                    self.still_full(socket);
                }
                sent
            };
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cached blob is shorter than expected",
                    ))
                }
                Ok(n) => {
                    offset += n as u64;
                    self.activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After a send that found the socket full, clears tokio's write readiness unless
    /// the socket has room again by now; checking inside `try_io` makes a wakeup that
    /// arrived in between count, instead of being lost.
    fn still_full(&self, socket: &Arc<OwnedFd>) {
        let _ = self.inner.try_io(Interest::WRITABLE, || {
            let mut fds = [rustix::event::PollFd::new(
                &**socket,
                rustix::event::PollFlags::OUT,
            )];
            match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
                Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                _ => Ok(()),
            }
        });
    }
}

/// At most this much per sendfile call, so one call never holds a thread long.
const SENDFILE_MAX: u64 = 16 << 20;

fn sendfile(socket: impl AsFd, file: &File, offset: u64, count: usize) -> io::Result<usize> {
    let mut at = offset;
    rustix::fs::sendfile(socket, file, Some(&mut at), count).map_err(io::Error::from)
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_times_out() {
        let (client, _server_side_kept_open) = tokio::io::duplex(16);
        let activity = Activity::new();
        let mut guarded = Guarded::new(client, activity.clone(), Duration::from_secs(5));
        let err = guarded.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(activity.send_timed_out());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_requests_in_flight() {
        let activity = Activity::new();
        let guard = activity.start_request();
        let idle = tokio::time::timeout(
            Duration::from_secs(30),
            activity.idle_for(Duration::from_secs(5)),
        );
        assert!(idle.await.is_err(), "a request in flight is not idle");
        drop(guard);
        assert!(activity.between_requests());
        let idle = tokio::time::timeout(
            Duration::from_secs(6),
            activity.idle_for(Duration::from_secs(5)),
        );
        assert!(idle.await.is_ok());
    }
}
