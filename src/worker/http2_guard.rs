//! The bounds corral sets on an HTTP/2 client where h2 sets none: floods of
//! control frames (PING, SETTINGS, PRIORITY, frames of unknown types),
//! which h2 answers or skips one by one without limit, and streams reset by
//! the hundred after they were accepted (rapid reset, CVE-2023-44487) or
//! made to be reset by corral (MadeYouReset, CVE-2025-8671), each of which
//! started an upstream request for nothing.
//!
//! [`Guarded`] sits between hyper and the client's socket and reads the
//! 9-byte frame headers as the bytes pass, both ways, never copying a
//! payload. A client over its budget, or one that [`Guard::trip`] names
//! (see `http2_stalls`), gets GOAWAY(ENHANCE_YOUR_CALM) once the frames
//! corral is writing are out, and its connection ends there, its streams
//! and their upstream requests with it.
//!
//! What h2 bounds itself (CONTINUATION floods, resets of streams not yet
//! accepted, the header list, small DATA frames, streams beyond
//! SETTINGS_MAX_CONCURRENT_STREAMS) is configured in `http2`, not here.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Control frames a client may send beyond what it earns: a well-behaved
/// one sends a few SETTINGS and PINGs per connection. It earns one back for
/// each request it opens (some clients send PRIORITY or PRIORITY_UPDATE
/// frames per stream) and for each DATA frame corral sends (gRPC's
/// bandwidth probe sends a PING per burst of data it receives), and ten a
/// second whatever it does (keep-alive PINGs).
const CONTROL_BURST: u32 = 1_000;
const CONTROL_PER_SECOND: u32 = 10;

/// A PING acknowledgement costs as much as this many PINGs: corral sends
/// no PING but the one that confirms a graceful shutdown, so any other ack
/// is noise, and h2 logs a warning for each.
const PING_ACK_COST: u32 = 50;

/// Stream resets, the client's and corral's (a stream the client made
/// corral reset, or one refused over the concurrency limit), a client may
/// cause beyond what it earns: four times the streams it may have open, so
/// a browser leaving a busy page can cancel everything it had in flight.
/// It earns one back for each response that ends normally, and ten a
/// second.
const RESET_BURST: u32 = 400;
const RESET_PER_SECOND: u32 = 10;

/// How long the GOAWAY may take to leave, behind whatever frame corral is
/// writing, before the connection is closed without it: a client that
/// reads nothing would otherwise hold it open.
const CALM_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2's connection preface, which the client sends before its frames.
const PREFACE_LEN: usize = 24;
const HEAD_LEN: usize = 9;

// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// One SETTINGS parameter: identifier and value.
const SETTING_LEN: u32 = 6;

/// Why a connection was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    /// The control budget ran dry.
    ControlFlood = 1,
    /// The reset budget ran dry.
    ResetFlood = 2,
    /// Responses waited on the client's flow control for too long.
    Stalled = 3,
}

impl Abuse {
    /// For the log line and the GOAWAY's debug data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ControlFlood => "control frame flood",
            Self::ResetFlood => "stream reset flood",
            Self::Stalled => "responses stalled by flow control",
        }
    }

    fn from_u8(code: u8) -> Option<Self> {
        [Self::ControlFlood, Self::ResetFlood, Self::Stalled]
            .into_iter()
            .find(|a| *a as u8 == code)
    }
}

/// A connection's verdict, shared by its [`Guarded`] socket and whoever
/// else may find it abusive.
#[derive(Debug, Default)]
pub struct Guard {
    /// An [`Abuse`] as its code, or 0.
    verdict: AtomicU8,
}

impl Guard {
    /// Ends the connection for `why` (the first reason given stands).
    pub fn trip(&self, why: Abuse) {
        let _first =
            self.verdict
                .compare_exchange(0, why as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn tripped(&self) -> Option<Abuse> {
        Abuse::from_u8(self.verdict.load(Ordering::Relaxed))
    }
}

/// A client connection's socket under hyper's HTTP/2 server, counting the
/// client's frames against its budgets; see the module docs.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
    incoming: Frames,
    outgoing: Frames,
    budgets: Budgets,
    /// Once tripped: the GOAWAY on its way out.
    calm: Option<Box<Calm>>,
}

#[derive(Debug)]
struct Budgets {
    control: Budget,
    resets: Budget,
    /// The highest stream the client opened: the GOAWAY's last stream.
    last_stream: u32,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, guard: Arc<Guard>) -> Self {
        Self {
            inner,
            guard,
            incoming: Frames::skipping(PREFACE_LEN),
            outgoing: Frames::skipping(0),
            budgets: Budgets {
                control: Budget::new(CONTROL_BURST, CONTROL_PER_SECOND),
                resets: Budget::new(RESET_BURST, RESET_PER_SECOND),
                last_stream: 0,
            },
            calm: None,
        }
    }
}

impl Budgets {
    /// Counts a frame from the client; what it abuses, if it is over budget.
    fn admit(&mut self, head: Head) -> Result<(), Abuse> {
        let spent = match head.kind {
            HEADERS => {
                self.last_stream = self.last_stream.max(head.stream);
                self.control.earn(1);
                return Ok(());
            }
            RST_STREAM => return self.resets.spend(1).then_some(()).ok_or(Abuse::ResetFlood),
            SETTINGS => self.control.spend(1 + head.len / SETTING_LEN),
            PING if head.flags & ACK != 0 => self.control.spend(PING_ACK_COST),
            PING | PRIORITY => self.control.spend(1),
            kind if kind > CONTINUATION => self.control.spend(1),
            _ => true,
        };
        spent.then_some(()).ok_or(Abuse::ControlFlood)
    }

    /// Counts a frame corral sent.
    fn sent(&mut self, head: Head) -> Result<(), Abuse> {
        if matches!(head.kind, DATA | HEADERS) && head.flags & END_STREAM != 0 {
            self.resets.earn(1);
        }
        match head.kind {
            DATA => self.control.earn(1),
            RST_STREAM if !self.resets.spend(1) => return Err(Abuse::ResetFlood),
            _ => {}
        }
        Ok(())
    }
}

/// A token bucket, refilled by time and by work.
#[derive(Debug)]
struct Budget {
    left: u32,
    cap: u32,
    per_second: u32,
    /// Since when it has been refilling; `None` while full, so that a
    /// client that spends nothing costs no clock reading.
    since: Option<Instant>,
}

impl Budget {
    fn new(cap: u32, per_second: u32) -> Self {
        Self {
            left: cap,
            cap,
            per_second,
            since: None,
        }
    }

    /// Takes `cost` if that much is left; false if not.
    fn spend(&mut self, cost: u32) -> bool {
        if self.left < cost {
            self.refill(Instant::now());
            if self.left < cost {
                return false;
            }
        }
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.left -= cost;
        true
    }

    fn earn(&mut self, n: u32) {
        self.left = self.left.saturating_add(n).min(self.cap);
        if self.left == self.cap {
            self.since = None;
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some(since) = self.since else { return };
        let ms = now.saturating_duration_since(since).as_millis();
        let earned = ms * u128::from(self.per_second) / 1000;
        if earned > 0 {
            self.since = Some(now);
            self.earn(u32::try_from(earned).unwrap_or(u32::MAX));
        }
    }
}

/// One frame header.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Head {
    fn parse(b: &[u8; HEAD_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Where one direction's stream of frames stands: inside a frame header
/// (how much of it has passed), or inside a payload (how much is left).
#[derive(Debug)]
struct Frames {
    head: [u8; HEAD_LEN],
    have: usize,
    skip: usize,
}

impl Frames {
    /// Frames start after `skip` bytes.
    fn skipping(skip: usize) -> Self {
        Self {
            head: [0; HEAD_LEN],
            have: 0,
            skip,
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Passes over `bytes`, handing each frame header completed in them to
    /// `on_head`; stops at the first it refuses, and returns the offset in
    /// `bytes` where that frame began (0 when it began in earlier bytes).
    fn scan<E>(
        &mut self,
        bytes: &[u8],
        mut on_head: impl FnMut(Head) -> Result<(), E>,
    ) -> Option<(usize, E)> {
        let mut at = 0;
        while at < bytes.len() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() - at);
                self.skip -= n;
                at += n;
                continue;
            }
            let began = if self.have == 0 { at } else { 0 };
            let n = (HEAD_LEN - self.have).min(bytes.len() - at);
            self.head[self.have..self.have + n].copy_from_slice(&bytes[at..at + n]);
            self.have += n;
            at += n;
            if self.have == HEAD_LEN {
                self.have = 0;
                let head = Head::parse(&self.head);
                self.skip = head.len as usize;
                if let Err(e) = on_head(head) {
                    return Some((began, e));
                }
            }
        }
        None
    }

    /// How many of `next` bytes belong to the frame now passing.
    fn rest_of_frame(&self, next: &[u8]) -> usize {
        if self.have == 0 {
            return self.skip.min(next.len());
        }
        let need = HEAD_LEN - self.have;
        if next.len() < need {
            return next.len();
        }
        let mut head = self.head;
        head[self.have..].copy_from_slice(&next[..need]);
        (need + Head::parse(&head).len as usize).min(next.len())
    }
}

/// The GOAWAY corral sends a tripped connection, and how far it got.
#[derive(Debug)]
struct Calm {
    frame: Vec<u8>,
    written: usize,
    /// Written, flushed and the socket shut: nothing more goes either way.
    done: bool,
    grace: Pin<Box<Sleep>>,
}

impl Calm {
    fn new(last_stream: u32, why: Abuse) -> Self {
        let debug = why.as_str().as_bytes();
        let len = u32::try_from(8 + debug.len()).unwrap_or(8);
        let mut frame = Vec::with_capacity(HEAD_LEN + 8 + debug.len());
        frame.extend_from_slice(&len.to_be_bytes()[1..]);
        frame.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&last_stream.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend_from_slice(debug);
        Self {
            frame,
            written: 0,
            done: false,
            grace: Box::pin(tokio::time::sleep(CALM_GRACE)),
        }
    }
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection ended by corral's HTTP/2 guard",
    )
}

/// Where a connection's writes stand.
enum Writing {
    Open,
    /// Tripped: its GOAWAY is under way.
    Calming,
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// Once the connection is tripped, the GOAWAY under way; an error once
    /// it is over (sent, or its grace ran out).
    fn writing(&mut self, cx: &mut Context<'_>) -> io::Result<Writing> {
        let Some(why) = self.guard.tripped() else {
            return Ok(Writing::Open);
        };
        let last_stream = self.budgets.last_stream;
        let calm = self
            .calm
            .get_or_insert_with(|| Box::new(Calm::new(last_stream, why)));
        if calm.done || calm.grace.as_mut().poll(cx).is_ready() {
            return Err(ended());
        }
        Ok(Writing::Calming)
    }

    /// Sends the GOAWAY and shuts the socket, once what corral is writing
    /// has reached a frame boundary; the error the connection then ends
    /// with.
    fn poll_calm(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.writing(cx) {
            Ok(Writing::Calming) => {}
            Ok(Writing::Open) => return Poll::Ready(ended()),
            Err(e) => return Poll::Ready(e),
        }
        if !self.outgoing.at_boundary() {
            // hyper is still writing a frame; its next writes finish it.
            return Poll::Pending;
        }
        let (Some(calm), inner) = (self.calm.as_deref_mut(), &mut self.inner) else {
            return Poll::Ready(ended());
        };
        match ready!(calm.poll_send(inner, cx)) {
            Ok(()) => Poll::Ready(ended()),
            Err(e) => Poll::Ready(e),
        }
    }

    /// Writes `buf` as far as what corral sends may still go, and counts
    /// the frames written.
    fn poll_write_counted(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let buf = match self.writing(cx)? {
            Writing::Open => buf,
            Writing::Calming if self.outgoing.at_boundary() => {
                return self.poll_calm(cx).map(Err);
            }
            // The frame under way is finished, and nothing after it.
            Writing::Calming => &buf[..self.outgoing.rest_of_frame(buf)],
        };
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.count_sent(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    /// Counts the frames in `bytes`, just written: all of them, so that
    /// the count knows where the next frame begins.
    fn count_sent(&mut self, bytes: &[u8]) {
        let (budgets, guard) = (&mut self.budgets, &self.guard);
        let _never = self.outgoing.scan(bytes, |head| {
            if let Err(why) = budgets.sent(head) {
                guard.trip(why);
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }
}

impl Calm {
    /// Writes the GOAWAY, flushes and shuts `inner`'s sending side.
    fn poll_send<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.frame.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.frame[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        ready!(Pin::new(&mut *inner).poll_flush(cx))?;
        ready!(Pin::new(&mut *inner).poll_shutdown(cx))?;
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.guard.tripped().is_some() {
            return this.poll_calm(cx).map(Err);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let budgets = &mut this.budgets;
        let Some((cut, why)) = this
            .incoming
            .scan(&buf.filled()[before..], |head| budgets.admit(head))
        else {
            return Poll::Ready(Ok(()));
        };
        this.guard.trip(why);
        // hyper gets the frames before the one over budget, and nothing
        // after: no answer goes to what the client sent past its budget.
        if cut > 0 {
            buf.set_filled(before + cut);
            return Poll::Ready(Ok(()));
        }
        buf.set_filled(before);
        this.poll_calm(cx).map(Err)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_counted(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.guard.tripped().is_some() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return this.poll_write_counted(cx, first);
        }
        let mut n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let written = n;
        for b in bufs {
            let part = n.min(b.len());
            this.count_sent(&b[..part]);
            n -= part;
            if n == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.guard.tripped().is_some() && this.outgoing.at_boundary() {
            return this.poll_calm(cx).map(Err);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.guard.tripped().is_some() && this.outgoing.at_boundary() {
            return this.poll_calm(cx).map(Err);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn preface() -> Vec<u8> {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        bytes
    }

    /// The client's end, and corral's end under the guard.
    fn guarded() -> (DuplexStream, Guarded<DuplexStream>, Arc<Guard>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let guard = Arc::new(Guard::default());
        (client, Guarded::new(server, guard.clone()), guard)
    }

    /// Reads what corral sent until its end closes; the GOAWAY's last
    /// stream and error code, if there was one.
    async fn goaway(client: &mut DuplexStream) -> Option<(u32, u32)> {
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        let mut at = 0;
        let mut found = None;
        while at + HEAD_LEN <= bytes.len() {
            let head = Head::parse(bytes[at..at + HEAD_LEN].try_into().unwrap());
            let payload = &bytes[at + HEAD_LEN..at + HEAD_LEN + head.len as usize];
            if head.kind == GOAWAY {
                let word = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap());
                found = Some((word(0), word(4)));
            }
            at += HEAD_LEN + head.len as usize;
        }
        found
    }

    #[test]
    fn frame_heads_are_found_however_the_bytes_are_split() {
        let mut bytes = preface();
        bytes.extend(frame(HEADERS, 0x4, 1, &[0x82; 40]));
        bytes.extend(frame(DATA, END_STREAM, 1, &[7; 300]));
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        for split in 1..bytes.len() {
            let mut frames = Frames::skipping(PREFACE_LEN);
            let mut seen = Vec::new();
            for piece in bytes.chunks(split) {
                let found = frames.scan(piece, |h| {
                    seen.push((h.kind, h.len, h.stream));
                    Ok::<_, ()>(())
                });
                assert!(found.is_none());
            }
            let expected = [
                (SETTINGS, 0, 0),
                (HEADERS, 40, 1),
                (DATA, 300, 1),
                (PING, 8, 0),
            ];
            assert_eq!(seen, expected, "split every {split} bytes");
            assert!(frames.at_boundary());
        }
    }

    #[test]
    fn the_rest_of_a_frame_is_known_from_a_partial_head() {
        let bytes = frame(DATA, 0, 1, &[1; 100]);
        let mut frames = Frames::skipping(0);
        assert!(frames.scan(&bytes[..4], |_| Ok::<_, ()>(())).is_none());
        let mut next = bytes[4..].to_vec();
        next.extend(frame(PING, 0, 0, &[0; 8]));
        assert_eq!(frames.rest_of_frame(&next), bytes.len() - 4);
    }

    #[tokio::test]
    async fn a_ping_flood_gets_goaway_and_nothing_past_the_budget() {
        let (mut client, mut server, guard) = guarded();
        let mut flood = preface();
        flood.extend(frame(HEADERS, 0x4 | END_STREAM, 3, &[0x82]));
        for _ in 0..CONTROL_BURST + 10 {
            flood.extend(frame(PING, 0, 0, &[0; 8]));
        }
        client.write_all(&flood).await.unwrap();
        let mut passed = Vec::new();
        let error = loop {
            let mut buf = [0; 4096];
            match server.read(&mut buf).await {
                Ok(n) => passed.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(guard.tripped(), Some(Abuse::ControlFlood));
        // The preface, SETTINGS and HEADERS, then as many PINGs as the
        // budget held after SETTINGS took one and HEADERS earned it back.
        let pings = (passed.len() - PREFACE_LEN - HEAD_LEN - (HEAD_LEN + 1)) / (HEAD_LEN + 8);
        assert_eq!(pings, CONTROL_BURST as usize);
        drop(server);
        assert_eq!(goaway(&mut client).await, Some((3, ENHANCE_YOUR_CALM)));
    }

    #[tokio::test]
    async fn a_tripped_connection_finishes_the_frame_it_is_writing_first() {
        let (mut client, mut server, guard) = guarded();
        let data = frame(DATA, 0, 1, &[9; 1000]);
        server.write_all(&data[..500]).await.unwrap();
        guard.trip(Abuse::ResetFlood);
        let mut rest = data[500..].to_vec();
        rest.extend(frame(DATA, 0, 1, &[9; 1000]));
        // The rest of the frame goes; the next one does not.
        let n = server.write(&rest).await.unwrap();
        assert_eq!(n, data.len() - 500);
        let e = server.write(&rest[n..]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        drop(server);
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(&bytes[..data.len()], &data[..]);
        assert_eq!(bytes[data.len() + 3], GOAWAY);
    }

    #[tokio::test]
    async fn corral_resets_count_and_finished_responses_earn_them_back() {
        let (_client, mut server, guard) = guarded();
        for stream in 0..RESET_BURST * 3 {
            let stream = 2 * stream + 1;
            server
                .write_all(&frame(DATA, END_STREAM, stream, b"ok"))
                .await
                .unwrap();
            server
                .write_all(&frame(RST_STREAM, 0, stream, &[0, 0, 0, 8]))
                .await
                .unwrap();
        }
        assert_eq!(guard.tripped(), None);
        for stream in 0..=RESET_BURST {
            let _ = server
                .write_all(&frame(RST_STREAM, 0, 2 * stream + 1, &[0, 0, 0, 8]))
                .await;
        }
        assert_eq!(guard.tripped(), Some(Abuse::ResetFlood));
    }

    #[tokio::test(start_paused = true)]
    async fn the_control_budget_refills_with_time() {
        let mut budget = Budget::new(10, 10);
        assert!((0..10).all(|_| budget.spend(1)));
        assert!(!budget.spend(1));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!((0..3).all(|_| budget.spend(1)));
        assert!(!budget.spend(1));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!((0..10).all(|_| budget.spend(1)), "full again, no more");
        assert!(!budget.spend(1));
    }
}
