//! What one inbound connection is doing right now — how many requests it has in flight, since
//! when it has had none, whether the next HTTP/1 request head has begun to arrive — for the
//! connection's own timers and for the listener's eviction.
//!
//! hyper keeps this to itself: its HTTP/1 header-read timer also runs while a kept-alive
//! connection waits for its next request (so it could not be shorter than the idle timeout
//! without cutting pooled connections early), and it says nothing of when a connection has
//! nothing in flight. So the server counts requests at its service ([`Activity::begin_request`],
//! ended when the response body is dropped) and watches the bytes hyper reads ([`Watched`]).
//!
//! A request whose body the client stops sending is in flight but not busy: [`TimedBody`]
//! fails its read after the listener's body timeout (Envoy bounds the same wait with its
//! stream idle timeout), and while every request of a connection waits for its client's
//! bytes the connection may be evicted like an idle one, so stalled uploads cannot fill a
//! listener.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future as _;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// No request head has begun.
const NO_HEAD: u64 = u64::MAX;

/// The shared state of one connection.
#[derive(Debug)]
pub(super) struct Activity {
    /// Timestamps are nanoseconds since this instant, so they fit in atomics.
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Requests in flight whose service waits for more of the client's body.
    stalled: AtomicUsize,
    /// When the latest of those stalls began: meaningful while every request is stalled.
    stalled_since: AtomicU64,
    /// Meaningful while nothing is in flight.
    idle_since: AtomicU64,
    /// When the first byte of the next HTTP/1 request head arrived, or [`NO_HEAD`].
    head_started: AtomicU64,
    closing: AtomicBool,
    /// Asks the connection's driver to close.
    close: Notify,
}

/// Which timer runs out next on a connection with nothing in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// An HTTP/1 request head began and has not been completed in time.
    HeaderRead,
    /// No request has been in flight for the idle timeout.
    Idle,
}

impl Activity {
    /// A connection accepted now, idle until its first request. `epoch` is shared by the
    /// listener's connections so their idle times compare.
    pub(super) fn new(epoch: Instant) -> Arc<Self> {
        let activity = Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            stalled: AtomicUsize::new(0),
            stalled_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NO_HEAD),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        };
        activity
            .idle_since
            .store(activity.stamp(Instant::now()), Ordering::Relaxed);
        Arc::new(activity)
    }

    fn stamp(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(NO_HEAD - 1)
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp)
    }

    /// A request reached the service; it stays in flight until the returned guard drops.
    pub(super) fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NO_HEAD, Ordering::Release);
        InFlight(Arc::clone(self))
    }

    /// Since when nothing has been in flight; `None` while a request is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.instant(self.idle_since.load(Ordering::Acquire)))
    }

    /// Since when the connection has waited only on its client: nothing in flight, or every
    /// request in flight waiting for its body. `None` while the server is working.
    pub(super) fn quiet_since(&self) -> Option<Instant> {
        self.idle_since().or_else(|| {
            self.all_stalled()
                .then(|| self.instant(self.stalled_since.load(Ordering::Acquire)))
        })
    }

    fn all_stalled(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        in_flight > 0 && self.stalled.load(Ordering::Acquire) >= in_flight
    }

    /// When the connection's next timer runs out, and which; `None` while a request is in
    /// flight (then neither applies).
    pub(super) fn next_expiry(
        &self,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, Expiry)> {
        let idle_since = self.idle_since()?;
        // Once a head has begun only the header timer counts: closing for idleness now would
        // drop a request the client has started to send.
        match self.head_started.load(Ordering::Acquire) {
            NO_HEAD => Some((idle_since + idle_timeout, Expiry::Idle)),
            started => Some((
                self.instant(started) + header_read_timeout,
                Expiry::HeaderRead,
            )),
        }
    }

    /// How eviction ranks this connection, lowest first: idle connections without a started
    /// request head, then those with one, then those whose every request waits for its
    /// client's body; within each, the longest waiting. `None`: not evictable (the server is
    /// working on a request, or the connection is already closing).
    pub(super) fn eviction_rank(&self) -> Option<(u8, u64)> {
        if self.is_closing() {
            return None;
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let head_started = self.head_started.load(Ordering::Acquire) != NO_HEAD;
            return Some((
                u8::from(head_started),
                self.idle_since.load(Ordering::Acquire),
            ));
        }
        self.all_stalled()
            .then(|| (2, self.stalled_since.load(Ordering::Acquire)))
    }

    /// A request's service began to wait for more of its body.
    fn stall(&self) {
        self.stalled_since
            .fetch_max(self.stamp(Instant::now()), Ordering::AcqRel);
        self.stalled.fetch_add(1, Ordering::AcqRel);
    }

    fn unstall(&self) {
        self.stalled.fetch_sub(1, Ordering::AcqRel);
    }

    /// Asks the connection to close; `false` when it already was asked.
    pub(super) fn request_close(&self) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.close.notify_one();
        true
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Resolves once [`request_close`](Self::request_close) was called (also if before).
    pub(super) async fn close_requested(&self) {
        self.close.notified().await;
    }

    /// HTTP/1 bytes arrived: with nothing in flight, they begin the next request head.
    fn note_http1_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NO_HEAD
        {
            self.head_started
                .store(self.stamp(Instant::now()), Ordering::Release);
        }
    }

    /// The connection turned out to be HTTP/2, whose bytes are frames, not request heads.
    fn forget_head(&self) {
        self.head_started.store(NO_HEAD, Ordering::Release);
    }
}

/// A request in flight on its connection, until dropped.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // fetch_max: with HTTP/2 streams ending on several threads, a late writer must not
            // move the idle start back.
            activity
                .idle_since
                .fetch_max(activity.stamp(Instant::now()), Ordering::AcqRel);
        }
    }
}

/// A response body that keeps its request in flight until hyper has sent it all (or dropped
/// it because the client went away).
#[derive(Debug)]
pub(super) struct InFlightBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> InFlightBody<B> {
    pub(super) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B> Body for InFlightBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose client sent nothing for the listener's body timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyReadTimeout(pub Duration);

/// A request body that fails when its client sends nothing for `timeout`, and tells the
/// connection's [`Activity`] while it waits for the client. The timer is made only when a
/// read has to wait, so a body that arrives with its head costs nothing.
#[derive(Debug)]
pub(super) struct TimedBody<B> {
    inner: B,
    activity: Arc<Activity>,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    timed_out: bool,
}

impl<B> TimedBody<B> {
    pub(super) fn new(inner: B, activity: Arc<Activity>, timeout: Duration) -> Self {
        Self {
            inner,
            activity,
            timeout,
            deadline: None,
            stalled: false,
            timed_out: false,
        }
    }

    fn set_stalled(&mut self, stalled: bool) {
        if stalled != self.stalled {
            self.stalled = stalled;
            if stalled {
                self.activity.stall();
            } else {
                self.activity.unstall();
            }
        }
    }
}

impl<B> Drop for TimedBody<B> {
    fn drop(&mut self) {
        self.set_stalled(false);
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.set_stalled(false);
                if let Some(deadline) = &mut this.deadline {
                    deadline.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_pending() {
                    this.set_stalled(true);
                    return Poll::Pending;
                }
                this.timed_out = true;
                this.set_stalled(false);
                // The rest of the request cannot be read in order: the connection goes too.
                this.activity.request_close();
                Poll::Ready(Some(Err(BodyReadTimeout(timeout).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTP/2 connection preface, which hyper-util's auto-detection also looks for.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol the connection's first bytes spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniff {
    /// This many bytes of the HTTP/2 preface matched so far.
    Undecided(usize),
    Http1,
    Http2,
}

impl Sniff {
    fn feed(self, bytes: &[u8]) -> Self {
        let Sniff::Undecided(seen) = self else {
            return self;
        };
        let want = &H2_PREFACE[seen..];
        let n = want.len().min(bytes.len());
        if want[..n] != bytes[..n] {
            Sniff::Http1
        } else if seen + n == H2_PREFACE.len() {
            Sniff::Http2
        } else {
            Sniff::Undecided(seen + n)
        }
    }
}

/// A connection's byte stream, telling its [`Activity`] when an HTTP/1 request head begins.
#[derive(Debug)]
pub(super) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    sniff: Sniff,
}

impl<T> Watched<T> {
    pub(super) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            sniff: Sniff::Undecided(0),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        let before = self.sniff;
        self.sniff = before.feed(bytes);
        match self.sniff {
            // Until the preface is complete it may be a slow HTTP/1 client: the header timer
            // runs, as for one.
            Sniff::Undecided(_) | Sniff::Http1 => self.activity.note_http1_bytes(),
            Sniff::Http2 if before != Sniff::Http2 => self.activity.forget_head(),
            Sniff::Http2 => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.saw(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const HEADER: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn idle_runs_from_accept_then_from_the_last_response() {
        let accepted = Instant::now();
        let activity = Activity::new(accepted);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE),
            Some((accepted + IDLE, Expiry::Idle))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let request = activity.begin_request();
        assert_eq!(activity.next_expiry(HEADER, IDLE), None);
        assert_eq!(activity.eviction_rank(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(request);
        let ended = Instant::now();
        assert_eq!(
            activity.next_expiry(HEADER, IDLE),
            Some((ended + IDLE, Expiry::Idle))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http1_bytes_while_idle_start_the_header_timer() {
        let activity = Activity::new(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut io = Watched::new(&b"GET / HTTP/1.1\r\n"[..], Arc::clone(&activity));
        let arrived = Instant::now();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE),
            Some((arrived + HEADER, Expiry::HeaderRead))
        );
        // The head completed: the request is in flight, the header timer is done with.
        let request = activity.begin_request();
        assert_eq!(activity.next_expiry(HEADER, IDLE), None);
        drop(request);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE).map(|(_, e)| e),
            Some(Expiry::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_during_a_request_are_not_a_new_head() {
        let activity = Activity::new(Instant::now());
        let request = activity.begin_request();
        let mut io = Watched::new(&b"a request body"[..], Arc::clone(&activity));
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        drop(request);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE).map(|(_, e)| e),
            Some(Expiry::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_never_run_the_header_timer() {
        let activity = Activity::new(Instant::now());
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        // Split reads: the preface is recognised across them.
        let mut io = Watched::new((&bytes[..5]).chain(&bytes[5..]), Arc::clone(&activity));
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 5);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE).map(|(_, e)| e),
            Some(Expiry::HeaderRead),
            "an unfinished preface may still be a slow HTTP/1 head"
        );
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE).map(|(_, e)| e),
            Some(Expiry::Idle)
        );
        assert!(io.read(&mut buf).await.unwrap() == 0);
        assert_eq!(
            activity.next_expiry(HEADER, IDLE).map(|(_, e)| e),
            Some(Expiry::Idle)
        );
    }

    #[test]
    fn sniff_tells_http2_from_http1() {
        assert_eq!(Sniff::Undecided(0).feed(b"GET /"), Sniff::Http1);
        assert_eq!(Sniff::Undecided(0).feed(b"PRI * HT"), Sniff::Undecided(8));
        assert_eq!(Sniff::Undecided(8).feed(b"TP/1.1"), Sniff::Http1);
        assert_eq!(Sniff::Undecided(0).feed(H2_PREFACE), Sniff::Http2);
        assert_eq!(Sniff::Http2.feed(b"GET"), Sniff::Http2);
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_prefers_the_longest_idle_without_a_head() {
        let epoch = Instant::now();
        let old = Activity::new(epoch);
        tokio::time::advance(Duration::from_secs(1)).await;
        let newer = Activity::new(epoch);
        assert!(old.eviction_rank() < newer.eviction_rank());
        old.note_http1_bytes();
        assert!(newer.eviction_rank() < old.eviction_rank());
        assert!(newer.request_close());
        assert!(!newer.request_close());
        assert_eq!(newer.eviction_rank(), None);
        // The request arrived before anyone waited: it is not lost.
        tokio::time::timeout(Duration::from_secs(1), newer.close_requested())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_only_for_its_body_is_evictable_after_idle_connections() {
        let epoch = Instant::now();
        let uploading = Activity::new(epoch);
        let idle = Activity::new(epoch);
        let request = uploading.begin_request();
        assert_eq!(uploading.eviction_rank(), None, "the server is working");
        uploading.stall();
        assert!(idle.eviction_rank() < uploading.eviction_rank());
        assert_eq!(uploading.quiet_since(), Some(Instant::now()));
        // A second request the server works on makes the connection busy again.
        let second = uploading.begin_request();
        assert_eq!(uploading.eviction_rank(), None);
        drop(second);
        uploading.unstall();
        assert_eq!(uploading.eviction_rank(), None);
        drop(request);
        assert!(uploading.eviction_rank().is_some());
    }
}
