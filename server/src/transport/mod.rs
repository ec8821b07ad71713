//! Transports: thin adapters from sockets to the gateway.
//!
//! `http` carries one-shot detection and health endpoints and hosts the
//! router; `ws` is the WebSocket streaming session; `quic` the QUIC one,
//! with its certificates from `tls`; `webtransport` the same session for
//! browsers over HTTP/3.

pub mod http;
pub mod https;
pub mod quic;
pub mod tls;
pub mod webtransport;
pub mod ws;
pub mod wsframe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;

/// How long a stream connection whose client said Bye (or broke the
/// protocol) waits for its writer to send the answers still owed and the
/// close. Frames in flight are answered well within it; a client that
/// stopped reading (a zero receive window) would otherwise keep the
/// connection, its session and its slot for ever.
pub(crate) const WRITER_DRAIN_MAX: Duration = Duration::from_secs(30);

/// Largest first message (Hello: a key or a token, a model name, a resume
/// token) a stream transport reads before the client is authenticated, so
/// an unauthenticated client cannot make the gateway buffer a large one
/// (never above the configured `max_message_bytes`).
pub(crate) fn hello_max_bytes(max_message_bytes: usize) -> usize {
    (64usize << 10).min(max_message_bytes)
}

/// The refusal of a first message over [`hello_max_bytes`].
pub(crate) fn hello_too_large(size: usize, max: usize) -> crate::error::GatewayError {
    crate::error::GatewayError::Protocol(format!(
        "expected Hello first (at most {max} bytes), got a message of {size} bytes"
    ))
}

/// Waits for `writer` at most [`WRITER_DRAIN_MAX`], then aborts it; what
/// it returned, if it ended in time.
pub(crate) async fn drain_writer<T>(writer: &mut tokio::task::JoinHandle<T>) -> Option<T> {
    match tokio::time::timeout(WRITER_DRAIN_MAX, &mut *writer).await {
        Ok(ended) => ended.ok(),
        Err(_) => {
            tracing::debug!("the client did not take its last answers in time; connection dropped");
            writer.abort();
            None
        }
    }
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` resolves, then
/// stops accepting and lets open requests finish.
///
/// Sockets are `TCP_NODELAY` (axum leaves Nagle on): answers are small
/// writes, already coalesced per batch by the writers, and Nagle would hold
/// one back until the client's delayed ACK.
pub async fn serve_http(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let deadlines = HttpDeadlines::of(&gw.config.http);
    let budget = gw.body_budget.clone();
    let app = http::router(gw);
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    serve_router(listener, app, deadlines, budget, shutdown).await;
    Ok(())
}

/// How long an HTTP connection may take: to send its first bytes, and to
/// send each request's headers (or wait idle for the next request).
#[derive(Debug, Clone, Copy)]
pub struct HttpDeadlines {
    /// From accept to the first bytes (`http.handshake_timeout_secs`).
    pub first_bytes: Duration,
    /// For each request's headers, the wait for them included
    /// (`http.keepalive_timeout_secs`); HTTP/2's keep-alive ping interval,
    /// and how long any connection may have no request open.
    pub headers: Duration,
    /// The longest wait for a request body's next bytes while a handler
    /// reads it (`http.body_timeout_secs`); see [`BodyStalled`].
    pub body_gap: Duration,
}

impl HttpDeadlines {
    /// The deadlines `[http]` configures.
    pub fn of(http: &crate::config::HttpConfig) -> Self {
        Self {
            first_bytes: Duration::from_secs(http.handshake_timeout_secs),
            headers: Duration::from_secs(http.keepalive_timeout_secs),
            body_gap: Duration::from_secs(http.body_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1 with upgrades, and HTTP/2) until
/// `shutdown` resolves, then stops accepting, asks open connections to
/// finish their requests and waits for them.
///
/// What `axum::serve` does, plus deadlines, so a client that opens
/// connections and sends slowly, or nothing at all, cannot hold them for
/// ever (axum's server has no timer, and hyper's own deadlines need one): a
/// connection's first bytes, up to where HTTP/1 and HTTP/2 part ways, must
/// come within `deadlines.first_bytes`; an HTTP/1 request's headers, the
/// wait for them included, within `deadlines.headers`; an HTTP/2 connection
/// is pinged every `deadlines.headers` and closed when a ping goes
/// unanswered. Any connection with no request open (its answer not yet
/// sent, or a WebSocket it carries) for `deadlines.headers` is asked to
/// close (HTTP/2: `GOAWAY`), so an HTTP/2 client that answers pings but
/// sends nothing cannot hold a connection for ever either. Request bodies
/// take their bytes from `budget` as they arrive (see [`BodyBudget`]).
pub async fn serve_router<L>(
    mut listener: L,
    app: axum::Router,
    deadlines: HttpDeadlines,
    budget: BodyBudget,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.headers);
    // WebSocket over HTTP/2 (RFC 8441) needs the CONNECT protocol.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(deadlines.headers)
        .keep_alive_timeout(deadlines.first_bytes)
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    // Connections watch `stop` (asked to finish) and hold `open` (the
    // server waits until every clone is gone).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut shutdown => break,
        };
        let (streams_tx, mut streams_rx) = tokio::sync::watch::channel(0usize);
        let service = Tracked {
            inner: TowerToHyperService::new(app.clone()),
            streams: streams_tx,
            body_gap: deadlines.body_gap,
            budget: budget.clone(),
        };
        let (builder, stop_tx, open_rx) = (builder.clone(), stop_tx.clone(), open_rx.clone());
        // Before hyper's own deadline can run, the server reads the first
        // bytes to tell HTTP/1 from HTTP/2: a client that sends nothing is
        // bounded here.
        let io = FirstByteWithin::new(io, deadlines.first_bytes);
        tokio::spawn(async move {
            let mut conn =
                std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop_tx.closed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = idle_for(&mut streams_rx, deadlines.headers) => {
                    tracing::trace!("closing an HTTP connection idle for http.keepalive_timeout_secs");
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
            drop(open_rx);
        });
    }
    drop(listener);
    drop(stop_rx);
    drop(open_rx);
    open_tx.closed().await;
}

/// Resolves once no request has been open on a connection (`open` counts
/// them) for `after`; never if the count's senders are gone. Any change of
/// the count restarts the wait: a request that opened and finished between
/// two looks (an HTTP/1 request is served within one poll of the
/// connection, this watcher's own task) still counts as activity.
async fn idle_for(open: &mut tokio::sync::watch::Receiver<usize>, after: Duration) {
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        match tokio::time::timeout(after, open.changed()).await {
            Err(_) => return,
            Ok(Err(_)) => return std::future::pending().await,
            Ok(Ok(())) => continue,
        }
    }
}

/// Held while a request is open on its connection: until its answer's body
/// has been sent (or dropped), and, for a WebSocket upgrade, until the
/// WebSocket connection ends ([`ws::upgrade`] takes it from the request's
/// extensions). The connection's idle deadline waits while any is held.
#[derive(Debug, Clone)]
pub struct StreamGuard {
    _open: Arc<OpenStream>,
}

#[derive(Debug)]
struct OpenStream(tokio::sync::watch::Sender<usize>);

impl StreamGuard {
    fn enter(open: &tokio::sync::watch::Sender<usize>) -> Self {
        open.send_modify(|n| *n += 1);
        Self {
            _open: Arc::new(OpenStream(open.clone())),
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection's service: `inner`, with each request counted in `streams`
/// while it is open (see [`StreamGuard`]), its body read under `body_gap`
/// (see [`BodyStalled`]) and its bytes charged to `budget` until its answer
/// is sent (see [`BodyBudget`]).
struct Tracked<S> {
    inner: S,
    streams: tokio::sync::watch::Sender<usize>,
    body_gap: Duration,
    budget: BodyBudget,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<
        hyper::Request<Budgeted<StallLimited<B>>>,
        Response = axum::response::Response,
    >,
    S::Future: Send + 'static,
{
    type Response = hyper::Response<Guarded<axum::body::Body>>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn call(&self, req: hyper::Request<B>) -> Self::Future {
        let guard = StreamGuard::enter(&self.streams);
        let charge = Arc::new(Charge::new(self.budget.clone()));
        let mut req = req.map(|body| Budgeted {
            body: StallLimited::new(body, self.body_gap),
            charge: charge.clone(),
            checked: false,
        });
        req.extensions_mut().insert(guard.clone());
        req.extensions_mut().insert(BodyCharge(charge));
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A request body read while [`StallLimited`] waited longer than
/// `http.body_timeout_secs` for its next bytes (answered 408).
#[derive(Debug, thiserror::Error)]
#[error("no bytes of the request body arrived for {} s (http.body_timeout_secs)", .0.as_secs())]
pub struct BodyStalled(pub Duration);

/// A request body whose next bytes must come within `gap` of the reader
/// starting to wait for them: the clock runs only while a handler reads
/// and the client sends nothing, so a handler that reads later, or never,
/// is not hurried. A reader is expected to poll until the body ends, as
/// `http::read_body` does (one that stops polling while waiting and
/// comes back later finds the clock still running from its first wait).
pub struct StallLimited<B> {
    body: B,
    gap: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<B> StallLimited<B> {
    fn new(body: B, gap: Duration) -> Self {
        Self {
            body,
            gap,
            timer: None,
            waiting: false,
        }
    }
}

impl<B> hyper::body::Body for StallLimited<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let me = &mut *self;
        match std::pin::Pin::new(&mut me.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                me.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !me.waiting {
                    // The reader starts to wait: the clock starts now.
                    let until = tokio::time::Instant::now() + me.gap;
                    match &mut me.timer {
                        Some(timer) => timer.as_mut().reset(until),
                        None => me.timer = Some(Box::pin(tokio::time::sleep_until(until))),
                    }
                    me.waiting = true;
                }
                let timer = me.timer.as_mut().expect("armed when the wait began");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(me.gap).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The request-body bytes open HTTP requests together may hold
/// (`http.max_body_bytes_in_flight`), shared by a gateway's public
/// listeners (the admin listener has its own). Each request's body takes its
/// bytes as they arrive and gives them back when they are gone: when its
/// handler has finished, or, for bytes a handler keeps beyond that (an
/// image still queued for inference after its client went away), when the
/// last of them is dropped ([`BodyCharge::hold`]). The answer's own sending
/// holds nothing, so a client that does not read its answers cannot pin the
/// budget. Without it, N clients each uploading the largest body at once
/// would make the gateway hold N × `http.max_body_bytes`, for any N.
///
/// A body that would take the total over the limit ends with
/// [`BodyOverBudget`] (answered 429 `overloaded`, retryable): at its first
/// read when its declared length does not fit what is free now (nothing is
/// read), else when the bytes that do not fit arrive. A declared length is
/// only checked, never reserved: a client that declares much and sends
/// little holds only what it sent.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    held: std::sync::atomic::AtomicUsize,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(BudgetInner {
            limit,
            held: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes held by open requests now.
    pub fn held(&self) -> usize {
        self.0.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `n` more bytes would fit now.
    fn fits(&self, n: usize) -> bool {
        self.held().saturating_add(n) <= self.0.limit
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let taken = self
            .0
            .held
            .fetch_update(Relaxed, Relaxed, |held| {
                held.checked_add(n).filter(|&total| total <= self.0.limit)
            })
            .is_ok();
        if taken {
            crate::metrics::body_bytes_held(n as i64);
        }
        taken
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.0
                .held
                .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::body_bytes_held(-(n as i64));
        }
    }
}

/// The bytes one request's body took from its [`BodyBudget`], given back
/// when the body, the request and every [`BodyCharge::hold`] of its bytes
/// are gone.
#[derive(Debug)]
struct Charge {
    budget: BodyBudget,
    bytes: std::sync::atomic::AtomicUsize,
    /// The rest of the body is read only to be discarded: not charged.
    discarding: std::sync::atomic::AtomicBool,
}

impl Charge {
    fn new(budget: BodyBudget) -> Self {
        Self {
            budget,
            bytes: std::sync::atomic::AtomicUsize::new(0),
            discarding: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(*self.bytes.get_mut());
    }
}

/// A request's body charge, in its extensions: a handler that keeps the
/// body's bytes beyond the request ties the charge to them with
/// [`BodyCharge::hold`].
#[derive(Debug, Clone)]
pub struct BodyCharge(Arc<Charge>);

impl BodyCharge {
    /// The rest of the body is read only to be discarded (a refused
    /// request's, see `http::linger`): its bytes are not charged, and its
    /// declared length is not checked against the budget. What was read
    /// before the refusal (dropped with it, never held) is given back now,
    /// not when the discarding ends.
    pub fn discard(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.discarding.store(true, Relaxed);
        self.0.budget.give(self.0.bytes.swap(0, Relaxed));
    }

    /// `bytes` (the body, or part of it), holding the body's charge until
    /// they and every slice of them are dropped. No copy.
    pub fn hold(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        if bytes.is_empty() {
            return bytes;
        }
        bytes::Bytes::from_owner(HeldBytes {
            bytes,
            _charge: self.0.clone(),
        })
    }
}

/// Bytes that hold a body's [`Charge`].
struct HeldBytes {
    bytes: bytes::Bytes,
    _charge: Arc<Charge>,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A request body refused by the [`BodyBudget`] (answered 429
/// `overloaded`).
#[derive(Debug, thiserror::Error)]
#[error(
    "the gateway holds as many request-body bytes as it may (http.max_body_bytes_in_flight, {limit} bytes); a body of {size} bytes does not fit now, retry shortly"
)]
pub struct BodyOverBudget {
    /// The request's body size: declared, or read so far plus the bytes that
    /// did not fit.
    pub size: usize,
    /// The budget's limit.
    pub limit: usize,
}

/// A request body whose bytes are charged to a [`BodyBudget`] as they
/// arrive; its declared length (the size hint's lower bound, from
/// `Content-Length`) is checked against what is free at the first read.
pub struct Budgeted<B> {
    body: B,
    charge: Arc<Charge>,
    checked: bool,
}

impl<B> hyper::body::Body for Budgeted<B>
where
    B: hyper::body::Body<Error = axum::BoxError> + Unpin,
    B::Data: bytes::Buf,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use bytes::Buf;
        use std::sync::atomic::Ordering::Relaxed;
        use std::task::Poll;
        let me = &mut *self;
        if me.charge.discarding.load(Relaxed) {
            return std::pin::Pin::new(&mut me.body).poll_frame(cx);
        }
        let budget = &me.charge.budget;
        if !me.checked {
            me.checked = true;
            let declared = usize::try_from(me.body.size_hint().lower()).unwrap_or(usize::MAX);
            if !budget.fits(declared) {
                crate::metrics::body_budget_refused();
                return Poll::Ready(Some(Err(BodyOverBudget {
                    size: declared,
                    limit: budget.limit(),
                }
                .into())));
            }
        }
        let frame = std::task::ready!(std::pin::Pin::new(&mut me.body).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref())) {
            let n = data.map_or(0, Buf::remaining);
            if n > 0 {
                if !budget.take(n) {
                    crate::metrics::body_budget_refused();
                    return Poll::Ready(Some(Err(BodyOverBudget {
                        size: me.charge.bytes.load(Relaxed).saturating_add(n),
                        limit: budget.limit(),
                    }
                    .into())));
                }
                me.charge.bytes.fetch_add(n, Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body that holds its request's [`StreamGuard`] until hyper
/// has sent it (or dropped it).
struct Guarded<B> {
    body: B,
    _guard: StreamGuard,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 connection preface: the server reads a connection's first
/// bytes for as long as they match it before it picks HTTP/1 or HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection whose first bytes must arrive within a deadline: reading
/// fails with `TimedOut` once it has passed before the server could tell
/// HTTP/1 (a byte off the HTTP/2 preface) from HTTP/2 (the whole preface).
/// From then on it is the connection itself, and hyper's deadlines apply.
struct FirstByteWithin<I> {
    io: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Bytes of the HTTP/2 preface matched so far.
    preface: usize,
}

impl<I> FirstByteWithin<I> {
    fn new(io: I, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            preface: 0,
        }
    }

    /// Follows the sniff over newly read `bytes`; true once it is decided.
    fn decided(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if H2_PREFACE.get(self.preface) != Some(&b) {
                return true;
            }
            self.preface += 1;
        }
        self.preface == H2_PREFACE.len()
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteWithin<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let me = &mut *self;
        let r = std::pin::Pin::new(&mut me.io).poll_read(cx, buf);
        if me.deadline.is_none() {
            return r;
        }
        match &r {
            Poll::Ready(Ok(()))
                if buf.filled().len() > before && me.decided(&buf.filled()[before..]) =>
            {
                me.deadline = None;
            }
            Poll::Pending
                if me
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready()) =>
            {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "nothing received within http.handshake_timeout_secs",
                )));
            }
            _ => {}
        }
        r
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteWithin<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The longest start of `text` of at most `max` bytes that ends at a
/// character boundary (close reasons are short and may quote client input).
pub(crate) fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn budgeted(
        bytes: usize,
        charge: &Arc<Charge>,
    ) -> impl hyper::body::Body<Data = bytes::Bytes, Error = axum::BoxError> {
        let body = http_body_util::Full::new(bytes::Bytes::from(vec![7u8; bytes]))
            .map_err(|e| -> axum::BoxError { match e {} });
        Budgeted {
            body,
            charge: charge.clone(),
            checked: false,
        }
    }

    /// A body's bytes stay charged while any slice of them is kept, and are
    /// given back, once, when the last one goes.
    #[tokio::test]
    async fn held_bytes_keep_their_charge_until_the_last_slice_is_dropped() {
        let budget = BodyBudget::new(1000);
        let charge = Arc::new(Charge::new(budget.clone()));
        let body = budgeted(600, &charge).collect().await.unwrap().to_bytes();
        assert_eq!(budget.held(), 600);
        // 600 more declared do not fit the 400 left: refused at once.
        let other = Arc::new(Charge::new(budget.clone()));
        let err = budgeted(600, &other).collect().await.unwrap_err();
        let over = err
            .downcast_ref::<BodyOverBudget>()
            .expect("BodyOverBudget");
        assert_eq!((over.size, over.limit), (600, 1000));
        drop(other);
        assert_eq!(budget.held(), 600);
        // The handler keeps a slice of the body (a multipart image) and is
        // done with the rest.
        let image = BodyCharge(charge).hold(body).slice(100..200);
        assert_eq!(budget.held(), 600);
        drop(image);
        assert_eq!(budget.held(), 0);
    }
}
