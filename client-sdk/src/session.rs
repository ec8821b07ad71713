//! Streaming sessions: send frames, receive one answer per frame as a
//! `Stream`, with credits, the overload policy, acknowledgements and
//! automatic reconnect + resume handled by a background task.
//!
//! Failover: when the gateway says it is going away (`Error{going-away}`
//! without seq, then close 1001), the task stops sending, reads the answers
//! still owed, and opens a new session on the next endpoint (round robin;
//! the same one when there is only one, e.g. a load balancer), re-sending
//! every frame that has no answer yet with its own seq. Frames the old
//! gateway refused after its notice (`Error{going-away, seq}`) are never
//! shown to the caller; they are re-sent like the others.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use framegate_protocol::{
    Ack, Bye, ClientMessage, Detections, DropReason, ErrorCode, Frame, Hello, OverloadPolicy,
    ServerMessage, PROTOCOL_VERSION,
};
use futures_util::Stream;
use tokio::sync::{mpsc, Mutex};

use crate::error::millis;
use crate::link::{self, Endpoint, LinkRx, LinkTx};
use crate::{ClientError, Image};

/// How a session behaves. Build with the setters:
///
/// ```
/// use framegate_client::{OverloadPolicy, SessionOptions};
/// let opts = SessionOptions::default()
///     .policy(OverloadPolicy::LatestOnly)
///     .model("nanodet-g");
/// ```
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub(crate) policy: OverloadPolicy,
    pub(crate) model: String,
    pub(crate) datagrams: bool,
    pub(crate) reconnect_attempts: u32,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) max_retry_wait: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) datagram_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            policy: OverloadPolicy::Block,
            model: String::new(),
            datagrams: false,
            reconnect_attempts: 5,
            reconnect_backoff: Duration::from_millis(200),
            max_retry_wait: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            datagram_timeout: Duration::from_secs(5),
        }
    }
}

impl SessionOptions {
    /// What happens when frames come faster than the gateway serves them
    /// (default `Block`: [`FrameSender::send`] waits for credit).
    pub fn policy(mut self, policy: OverloadPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The model to run (default: the gateway's default model).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// QUIC only: send frames as datagrams (lost frames are reported as
    /// [`Answer::Lost`], never retransmitted). Use with `DropOldest` or
    /// `LatestOnly`.
    pub fn datagrams(mut self, on: bool) -> Self {
        self.datagrams = on;
        self
    }

    /// Reconnect attempts after a broken connection, or to find another
    /// gateway after a going-away close, before giving up (default 5; 0
    /// disables resume and failover).
    pub fn reconnect_attempts(mut self, n: u32) -> Self {
        self.reconnect_attempts = n;
        self
    }

    /// Wait before the first reconnect attempt, doubled after each failure
    /// (default 200 ms).
    pub fn reconnect_backoff(mut self, d: Duration) -> Self {
        self.reconnect_backoff = d;
        self
    }

    /// How much of the gateway's retry hint (its `retry_after`) a reconnect
    /// attempt waits for at most (default 30 s); the wait is never shorter
    /// than the backoff. The hint is a `u32` of milliseconds on the wire:
    /// without a bound, a gateway that sent a wrong one could hold the
    /// session for weeks.
    pub fn max_retry_wait(mut self, d: Duration) -> Self {
        self.max_retry_wait = d;
        self
    }

    /// WebSocket: how often the session pings the gateway (default 5 s).
    /// A ping the gateway has not answered (with a pong or anything else)
    /// within four times this marks the connection lost, and the session
    /// resumes or moves on. (QUIC uses its own keep-alive and idle
    /// timeout.)
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every.max(Duration::from_millis(10));
        self
    }

    /// With datagrams: a frame still unanswered this long after it was
    /// sent is reported [`Answer::Lost`] and its credit comes back (default
    /// 5 s). Without it a run of lost datagrams would use up the credits
    /// and no later answer would come to reveal them. A frame that was only
    /// slow is still reported lost (its late answer is dropped, though the
    /// gateway counts it), and until that answer comes the session holds
    /// one credit more than the gateway: under `block` the next frame may
    /// be refused `no-credit`. Set it well above the gateway's latency and
    /// prefer `drop-oldest` or `latest-only` with datagrams.
    pub fn datagram_timeout(mut self, d: Duration) -> Self {
        self.datagram_timeout = d;
        self
    }
}

/// Per-frame options.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let opts = framegate_client::FrameOptions::default()
///     .deadline(SystemTime::now() + Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Default)]
pub struct FrameOptions {
    deadline: Option<SystemTime>,
    capture_ts_us: Option<u64>,
}

impl FrameOptions {
    /// Drop the frame (answered [`Answer::Dropped`]) if it cannot be
    /// answered by then.
    pub fn deadline(mut self, at: SystemTime) -> Self {
        self.deadline = Some(at);
        self
    }

    /// Capture timestamp echoed in the Detections (default: now, µs since
    /// the Unix epoch).
    pub fn capture_ts_us(mut self, ts: u64) -> Self {
        self.capture_ts_us = Some(ts);
        self
    }
}

/// The answer to one frame. Every frame sent gets exactly one.
///
/// ```
/// use framegate_client::{Answer, DropReason};
/// let a = Answer::Dropped {
///     seq: 7,
///     reason: DropReason::Superseded,
///     message: String::new(),
///     retry_after: None,
/// };
/// assert_eq!(a.seq(), 7);
/// ```
#[derive(Debug, Clone)]
pub enum Answer {
    /// The frame was computed (and billed).
    Detections(Detections),
    /// The frame was not computed (not billed).
    Dropped {
        /// The frame.
        seq: u64,
        /// Why.
        reason: DropReason,
        /// The gateway's explanation.
        message: String,
        /// For the reasons that pass (`queue-full`, `overloaded`,
        /// `rate-limited`), about how long to wait before sending again,
        /// when the gateway gave an estimate.
        retry_after: Option<std::time::Duration>,
    },
    /// The frame was refused or failed (not billed); the session goes on.
    Error {
        /// The frame.
        seq: u64,
        /// What went wrong.
        code: ErrorCode,
        /// The gateway's explanation.
        message: String,
        /// For a refusal that may succeed later (`overloaded`,
        /// `rate-limited`, …), about how long to wait before sending again,
        /// when the gateway gave an estimate.
        retry_after: Option<std::time::Duration>,
    },
    /// A datagram frame that never arrived (a later frame was answered).
    Lost {
        /// The frame.
        seq: u64,
    },
}

impl Answer {
    /// The frame this answers.
    pub fn seq(&self) -> u64 {
        match self {
            Answer::Detections(d) => d.seq,
            Answer::Dropped { seq, .. } | Answer::Error { seq, .. } | Answer::Lost { seq } => *seq,
        }
    }
}

enum Cmd {
    Frame(Frame),
    Bye,
}

/// Counters of a session, for monitoring.
#[derive(Debug, Default)]
struct Shared {
    credits: AtomicU64,
    resumes: AtomicU64,
    failovers: AtomicU64,
    resent: AtomicU64,
    endpoint: std::sync::Mutex<String>,
    kill: tokio::sync::Notify,
}

/// Sends frames into a session. Cheap to clone; all clones share the
/// session's sequence numbers.
///
/// ```no_run
/// # async fn demo(session: framegate_client::Session) -> Result<(), framegate_client::ClientError> {
/// let sender = session.sender();
/// let camera = tokio::spawn(async move {
///     let img = framegate_client::Image::from_file("frame.jpg")?;
///     sender.send(img).await // waits for credit under `block`
/// });
/// let seq = camera.await.unwrap()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FrameSender {
    tx: mpsc::Sender<Cmd>,
    /// The next frame's seq, and whether Bye was queued: both change only
    /// under this lock, with the command queued, so a frame is either
    /// queued before Bye (and sent) or refused.
    state: Arc<Mutex<SendState>>,
}

struct SendState {
    next_seq: u64,
    finished: bool,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Sends a frame and returns its seq. Under `Block` this waits until
    /// the session has credit; under the dropping policies it returns at
    /// once (the gateway drops stale frames and says so).
    ///
    /// Read the answers as they come (another task, or `select!`): the
    /// session holds at most `2 × credits + 16` unread answers, and while
    /// that is full it takes no more frames, so a caller that sends
    /// everything before reading waits here for ever.
    pub async fn send(&self, image: Image) -> Result<u64, ClientError> {
        self.send_with(image, FrameOptions::default()).await
    }

    /// [`Self::send`] with a deadline or capture timestamp.
    ///
    /// ```no_run
    /// # async fn demo(sender: framegate_client::FrameSender, img: framegate_client::Image) -> Result<(), framegate_client::ClientError> {
    /// use std::time::{Duration, SystemTime};
    /// use framegate_client::FrameOptions;
    /// let deadline = SystemTime::now() + Duration::from_millis(100);
    /// sender.send_with(img, FrameOptions::default().deadline(deadline)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_with(&self, image: Image, opts: FrameOptions) -> Result<u64, ClientError> {
        let mut state = self.state.lock().await;
        if state.finished {
            // Bye is queued: the session sends nothing after it.
            return Err(ClientError::SessionClosed);
        }
        let seq = state.next_seq;
        let frame = Frame {
            seq,
            capture_ts_us: opts.capture_ts_us.unwrap_or_else(now_us),
            codec: image.codec,
            width: image.width,
            height: image.height,
            deadline_us: opts.deadline.map_or(0, |d| {
                d.duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_micros() as u64)
            }),
            payload: image.payload,
        };
        self.tx
            .send(Cmd::Frame(frame))
            .await
            .map_err(|_| ClientError::SessionClosed)?;
        state.next_seq += 1;
        Ok(seq)
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A streaming session. Send with [`Session::send`] (or a
/// [`Session::sender`] from another task); read answers as a `Stream`.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use framegate_client::{Answer, Client, Image, SessionOptions};
///
/// # async fn demo() -> Result<(), framegate_client::ClientError> {
/// let client = Client::connect("ws://127.0.0.1:8080", "fg_dev_key").await?;
/// let mut session = client.session(SessionOptions::default()).await?;
/// session.send(Image::from_file("dog.jpg")?).await?;
/// session.finish().await?;
/// while let Some(answer) = session.next().await {
///     if let Answer::Detections(d) = answer? {
///         println!("frame {}: {} objects", d.seq, d.detections.len());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Session {
    sender: FrameSender,
    answers: mpsc::Receiver<Result<Answer, ClientError>>,
    shared: Arc<Shared>,
    session_id: String,
    model: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) async fn open(
        targets: Arc<Vec<Endpoint>>,
        key: &str,
        opts: SessionOptions,
    ) -> Result<Session, ClientError> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            credential: key.to_string(),
            model: opts.model.clone(),
            overload_policy: opts.policy,
            datagrams: opts.datagrams,
            client_name: concat!("framegate-client-rs/", env!("CARGO_PKG_VERSION")).into(),
            ..Hello::default()
        };
        // The first endpoint that answers; the next on a retryable failure.
        let mut opened = None;
        let mut last_err = None;
        for (i, t) in targets.iter().enumerate() {
            match link::open(&t.target, &hello, opts.connect_timeout, opts.keepalive * 4).await {
                Ok(x) => {
                    opened = Some((i, x));
                    break;
                }
                Err(e) if e.is_retryable() => {
                    tracing::debug!(endpoint = %t.url, error = %e, "gateway unavailable; trying the next");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Some((current, (tx, rx, welcome))) = opened else {
            return Err(last_err.unwrap_or(ClientError::SessionClosed));
        };
        let window = welcome.limits.max_in_flight.max(welcome.credits).max(1);
        let (cmd_tx, cmd_rx) = mpsc::channel(1);
        let (ans_tx, ans_rx) = mpsc::channel(window as usize * 2 + 16);
        let shared = Arc::new(Shared::default());
        shared
            .credits
            .store(u64::from(welcome.credits), Ordering::Relaxed);
        *shared.endpoint.lock().expect("endpoint lock") = targets[current].url.clone();
        let driver = Driver {
            targets,
            current,
            going_away: false,
            session_received: 0,
            hello: Hello {
                resume_token: welcome.resume_token.clone(),
                ..hello
            },
            opts,
            cmds: cmd_rx,
            answers: ans_tx,
            shared: shared.clone(),
            unanswered: VecDeque::new(),
            resend_queue: VecDeque::new(),
            sent_at: VecDeque::new(),
            credits: i64::from(welcome.credits),
            window,
            last_received: 0,
            since_ack: 0,
            closing: false,
        };
        tokio::spawn(driver.run(tx, rx));
        Ok(Session {
            sender: FrameSender {
                tx: cmd_tx,
                state: Arc::new(Mutex::new(SendState {
                    next_seq: 1,
                    finished: false,
                })),
            },
            answers: ans_rx,
            shared,
            session_id: welcome.session_id,
            model: welcome.model,
        })
    }

    /// A sender for this session, e.g. for a capture task.
    pub fn sender(&self) -> FrameSender {
        self.sender.clone()
    }

    /// Sends a frame; see [`FrameSender::send`].
    pub async fn send(&self, image: Image) -> Result<u64, ClientError> {
        self.sender.send(image).await
    }

    /// Sends a frame with options; see [`FrameSender::send_with`].
    pub async fn send_with(&self, image: Image, opts: FrameOptions) -> Result<u64, ClientError> {
        self.sender.send_with(image, opts).await
    }

    /// Says Bye: no more frames. The stream still yields the answers of
    /// every frame sent, then ends; a frame sent after this (from any
    /// [`FrameSender`]) is refused with [`ClientError::SessionClosed`].
    pub async fn finish(&self) -> Result<(), ClientError> {
        let mut state = self.sender.state.lock().await;
        if state.finished {
            return Ok(());
        }
        // Marked once Bye is queued (or the session is gone): a finish()
        // cancelled while it waits leaves the session open, as before it.
        let sent = self.sender.tx.send(Cmd::Bye).await;
        state.finished = true;
        sent.map_err(|_| ClientError::SessionClosed)
    }

    /// The gateway's session id (for logs and support).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The model serving this session.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Credits the session holds now (may be negative under the dropping
    /// policies, shown as 0).
    pub fn credits(&self) -> u64 {
        self.shared.credits.load(Ordering::Relaxed)
    }

    /// How many times the session was resumed after a broken connection.
    pub fn resumes(&self) -> u64 {
        self.shared.resumes.load(Ordering::Relaxed)
    }

    /// How many times the session moved to another gateway with a new
    /// session (after a `going-away` close, or a resume that could not
    /// succeed); see [`crate::ClientOptions::endpoints`].
    pub fn failovers(&self) -> u64 {
        self.shared.failovers.load(Ordering::Relaxed)
    }

    /// Frames sent again after a failover because they had no answer yet.
    pub fn frames_resent(&self) -> u64 {
        self.shared.resent.load(Ordering::Relaxed)
    }

    /// The gateway URL the session is on now.
    pub fn endpoint(&self) -> String {
        self.shared.endpoint.lock().expect("endpoint lock").clone()
    }

    /// Breaks the connection abruptly, as a network failure would; the
    /// session then reconnects and resumes. For tests of resume.
    #[doc(hidden)]
    pub async fn break_connection_for_test(&self) {
        self.shared.kill.notify_one();
    }
}

impl Stream for Session {
    type Item = Result<Answer, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.answers.poll_recv(cx)
    }
}

/// The background task owning the connection.
struct Driver {
    /// Gateways to use, in order; `current` is the one in use.
    targets: Arc<Vec<Endpoint>>,
    current: usize,
    /// The gateway sent its `going-away` notice: send nothing more there;
    /// after the close, continue elsewhere.
    going_away: bool,
    /// Highest seq answered on the current gateway's session (what a resume
    /// there acknowledges); 0 after a failover.
    session_received: u64,
    hello: Hello,
    opts: SessionOptions,
    cmds: mpsc::Receiver<Cmd>,
    answers: mpsc::Sender<Result<Answer, ClientError>>,
    shared: Arc<Shared>,
    /// Frames sent and not answered, in seq order (kept for re-sending).
    unanswered: VecDeque<Frame>,
    /// With datagrams: when each frame was (last) sent, in seq order; a
    /// frame unanswered `datagram_timeout` after it is lost.
    sent_at: VecDeque<(u64, tokio::time::Instant)>,
    credits: i64,
    /// Under `block`, frames of `unanswered` still to be re-sent on this
    /// link: a new gateway may give fewer credits than were in use on the
    /// old one, and each waits for a credit as a new frame would.
    resend_queue: VecDeque<Frame>,
    window: u32,
    last_received: u64,
    since_ack: u32,
    closing: bool,
}

enum Step {
    Continue,
    Reconnect(ClientError),
    Done(Option<ClientError>),
}

impl Driver {
    fn can_send(&self) -> bool {
        if self.closing || self.going_away || !self.resend_queue.is_empty() {
            return false;
        }
        match self.opts.policy {
            OverloadPolicy::Block => self.credits > 0,
            // The gateway drops stale frames; keep the local copy bounded.
            _ => self.unanswered.len() < self.window as usize * 4,
        }
    }

    async fn run(mut self, mut tx: LinkTx, mut rx: LinkRx) {
        let every = |d: Duration| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        let mut keepalive = every(self.opts.keepalive);
        let mut lost_check = every((self.opts.datagram_timeout / 4).max(Duration::from_millis(10)));
        loop {
            let step = tokio::select! {
                m = rx.recv() => match m {
                    Ok(m) => self.on_message(m, &mut tx).await,
                    // A message that does not decode would be sent again
                    // after a resume, for ever: the session ends on it.
                    Err(e @ ClientError::Protocol(_)) => Step::Done(Some(e)),
                    Err(e) => Step::Reconnect(e),
                },
                // One ping at a time: the deadline runs from the first
                // one left unanswered.
                _ = keepalive.tick(), if !rx.ping_outstanding() => match tx.keepalive().await {
                    Ok(sent) => {
                        if sent {
                            rx.ping_sent();
                        }
                        Step::Continue
                    }
                    Err(e) => Step::Reconnect(e),
                },
                _ = lost_check.tick(), if !self.sent_at.is_empty() => {
                    self.expire_lost_datagrams().await
                }
                // Re-sends owed on this link go before new frames (none to
                // a gateway going away: the next one gets them).
                () = std::future::ready(()), if self.credits > 0
                    && !self.going_away
                    && !self.resend_queue.is_empty() => {
                    let sent = self.send_queued(&mut tx).await;
                    self.publish_credits();
                    match sent {
                        Ok(()) => Step::Continue,
                        Err(e) => Step::Reconnect(e),
                    }
                }
                c = self.cmds.recv(), if self.can_send() => match c {
                    Some(Cmd::Frame(f)) => {
                        let msg = ClientMessage::Frame(f.clone());
                        let seq = f.seq;
                        self.unanswered.push_back(f);
                        self.credits -= 1;
                        self.publish_credits();
                        match tx.send_reporting_datagram(&msg).await {
                            Ok(datagram) => {
                                if datagram {
                                    self.sent_at.push_back((seq, tokio::time::Instant::now()));
                                }
                                Step::Continue
                            }
                            Err(e) => Step::Reconnect(e),
                        }
                    }
                    Some(Cmd::Bye) | None => {
                        self.closing = true;
                        match tx.send(&ClientMessage::Bye(Bye { reason: "done".into() })).await {
                            Ok(()) => Step::Continue,
                            Err(e) => Step::Reconnect(e),
                        }
                    }
                },
                () = self.shared.kill.notified() => {
                    tx.kill();
                    Step::Reconnect(ClientError::ConnectionLost("broken on purpose".into()))
                }
            };
            match step {
                Step::Continue => {}
                Step::Done(err) => {
                    if let Some(e) = err {
                        let _ = self.answers.send(Err(e)).await;
                    }
                    let ended = self.closing && self.unanswered.is_empty();
                    // The answers end here, the close below is ours.
                    drop(self);
                    if ended {
                        rx.answer_close().await;
                    }
                    return;
                }
                Step::Reconnect(e) => {
                    if self.closing && self.unanswered.is_empty() {
                        // The gateway closed after the last answer.
                        drop(self);
                        rx.answer_close().await;
                        return;
                    }
                    if self.going_away || matches!(e, ClientError::GoingAway(_)) {
                        match self.failover(e).await {
                            Ok((t, r)) => {
                                tx = t;
                                rx = r;
                            }
                            Err(e) => {
                                let _ = self.answers.send(Err(e)).await;
                                return;
                            }
                        }
                        continue;
                    }
                    if self.closing && self.hello.datagrams {
                        // Bye overtook datagram frames: they are lost.
                        while let Some(f) = self.unanswered.pop_front() {
                            let _ = self.answers.send(Ok(Answer::Lost { seq: f.seq })).await;
                        }
                        return;
                    }
                    match self.resume(e).await {
                        Ok((t, r)) => {
                            tx = t;
                            rx = r;
                        }
                        Err(e) => {
                            let _ = self.answers.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Datagram frames unanswered `datagram_timeout` after they were sent
    /// are lost (the gateway never answers a lost datagram, and with the
    /// credits used up no later answer would reveal them): each is answered
    /// [`Answer::Lost`], in order, and gives its credit back. An answer
    /// that still comes for one is dropped (one answer per frame). A frame
    /// sent on the stream is never timed out: its answer will come, and
    /// the datagram frames after it wait for it (answers stay in order).
    async fn expire_lost_datagrams(&mut self) -> Step {
        let now = tokio::time::Instant::now();
        let mut expired_any = false;
        while let Some(&(seq, at)) = self.sent_at.front() {
            if now < at + self.opts.datagram_timeout {
                break;
            }
            match self.unanswered.front().map(|f| f.seq) {
                Some(front) if front == seq => {
                    self.unanswered.pop_front();
                    self.sent_at.pop_front();
                    self.credits += 1;
                    self.last_received = self.last_received.max(seq);
                    expired_any = true;
                    if self.answers.send(Ok(Answer::Lost { seq })).await.is_err() {
                        return Step::Done(None);
                    }
                }
                // An earlier frame, sent on the stream, is still to be
                // answered.
                Some(front) if front < seq => break,
                // Answered already.
                _ => {
                    self.sent_at.pop_front();
                }
            }
        }
        if expired_any {
            self.publish_credits();
            if self.closing && self.unanswered.is_empty() {
                return Step::Done(None);
            }
        }
        Step::Continue
    }

    fn publish_credits(&self) {
        self.shared
            .credits
            .store(self.credits.max(0) as u64, Ordering::Relaxed);
    }

    async fn on_message(&mut self, m: ServerMessage, tx: &mut LinkTx) -> Step {
        let answers: Vec<Answer> = match m {
            ServerMessage::Credit(c) => {
                self.credits += i64::from(c.credits);
                self.window = self.window.saturating_add(c.credits);
                self.publish_credits();
                return Step::Continue;
            }
            ServerMessage::Welcome(_) => {
                return Step::Done(Some(ClientError::Protocol("a second Welcome".into())))
            }
            // The notice: answers still owed follow, then the close.
            ServerMessage::Error(e) if e.seq.is_none() && e.code == ErrorCode::GoingAway => {
                tracing::info!(endpoint = %self.targets[self.current].url, "gateway going away; will continue on another");
                self.going_away = true;
                return Step::Continue;
            }
            // Refused after the notice: sent again on the next gateway.
            ServerMessage::Error(e) if e.code == ErrorCode::GoingAway => {
                self.going_away = true;
                return Step::Continue;
            }
            ServerMessage::Error(e) if e.seq.is_none() => {
                let err = ClientError::Gateway {
                    code: e.code,
                    message: e.message,
                    retryable: e.retryable,
                    retry_after: e.retry_after_ms.map(millis),
                };
                return if e.retryable && !self.closing {
                    Step::Reconnect(err)
                } else {
                    Step::Done(Some(err))
                };
            }
            ServerMessage::Error(e) => vec![Answer::Error {
                seq: e.seq.unwrap_or_default(),
                code: e.code,
                message: e.message,
                retry_after: e.retry_after_ms.map(millis),
            }],
            ServerMessage::Dropped(d) => d
                .seqs
                .iter()
                .map(|&seq| Answer::Dropped {
                    seq,
                    reason: d.reason,
                    message: d.message.clone(),
                    retry_after: d.retry_after_ms.map(millis),
                })
                .collect(),
            ServerMessage::Detections(d) => vec![Answer::Detections(d)],
        };
        for a in answers {
            let seq = a.seq();
            if seq <= self.last_received {
                continue; // already delivered (cannot happen with a correct gateway)
            }
            // Earlier frames without an answer were lost datagrams.
            while let Some(f) = self.unanswered.front() {
                if f.seq >= seq {
                    break;
                }
                let lost = self.unanswered.pop_front().expect("front").seq;
                self.credits += 1;
                if self
                    .answers
                    .send(Ok(Answer::Lost { seq: lost }))
                    .await
                    .is_err()
                {
                    return Step::Done(None);
                }
            }
            if self.unanswered.front().is_some_and(|f| f.seq == seq) {
                self.unanswered.pop_front();
                self.credits += 1;
            }
            while self.sent_at.front().is_some_and(|&(s, _)| s <= seq) {
                self.sent_at.pop_front();
            }
            self.last_received = seq;
            self.session_received = seq;
            self.since_ack += 1;
            if self.answers.send(Ok(a)).await.is_err() {
                return Step::Done(None);
            }
        }
        self.publish_credits();
        if self.since_ack * 2 >= self.window {
            self.since_ack = 0;
            let ack = ClientMessage::Ack(Ack {
                seq: self.last_received,
            });
            if let Err(e) = tx.send(&ack).await {
                return Step::Reconnect(e);
            }
        }
        if self.closing && self.unanswered.is_empty() {
            return Step::Done(None);
        }
        Step::Continue
    }

    /// On a new link: sends `frames` again (each takes a credit; under
    /// `block`, those beyond the link's credits wait for one in
    /// `resend_queue`), then Bye when the caller has already closed and
    /// nothing waits, and publishes the credits.
    async fn replay(&mut self, tx: &mut LinkTx, frames: Vec<Frame>) -> Result<(), ClientError> {
        self.sent_at.clear();
        self.resend_queue = frames.into();
        if self.resend_queue.is_empty() && self.closing {
            tx.send(&ClientMessage::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        }
        let block = matches!(self.opts.policy, OverloadPolicy::Block);
        while !self.resend_queue.is_empty() && (self.credits > 0 || !block) {
            self.send_queued(tx).await?;
        }
        self.publish_credits();
        Ok(())
    }

    /// Sends the next frame of `resend_queue` (it takes a credit), and Bye
    /// after the last one when the caller has already closed.
    async fn send_queued(&mut self, tx: &mut LinkTx) -> Result<(), ClientError> {
        // A frame answered since it was queued is not sent again (the
        // gateway answers in order; it cannot happen while it keeps to that).
        while self
            .resend_queue
            .front()
            .is_some_and(|f| f.seq <= self.last_received)
        {
            self.resend_queue.pop_front();
        }
        if let Some(f) = self.resend_queue.pop_front() {
            self.credits -= 1;
            let seq = f.seq;
            if tx.send_reporting_datagram(&ClientMessage::Frame(f)).await? {
                self.sent_at.push_back((seq, tokio::time::Instant::now()));
            }
        }
        if self.closing && self.resend_queue.is_empty() {
            tx.send(&ClientMessage::Bye(Bye {
                reason: "done".into(),
            }))
            .await?;
        }
        Ok(())
    }

    /// The wait before a reconnect attempt: the backoff, or at least as
    /// long as the gateway asked (a rate limit, a queue to drain), up to
    /// `max_retry_wait`.
    fn retry_wait(&self, backoff: Duration, last: &ClientError) -> Duration {
        let asked = last.retry_after().unwrap_or_default();
        backoff.max(asked.min(self.opts.max_retry_wait))
    }

    /// Reconnects with the resume token and re-sends what never arrived.
    async fn resume(&mut self, cause: ClientError) -> Result<(LinkTx, LinkRx), ClientError> {
        let mut backoff = self.opts.reconnect_backoff;
        let mut last = cause;
        // With other gateways to go to, do not insist on this one.
        let attempts = if self.targets.len() > 1 {
            self.opts.reconnect_attempts.min(2)
        } else {
            self.opts.reconnect_attempts
        };
        for _ in 0..attempts {
            tokio::time::sleep(self.retry_wait(backoff, &last)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let hello = Hello {
                last_received_seq: self.session_received,
                ..self.hello.clone()
            };
            match link::open(
                &self.targets[self.current].target,
                &hello,
                self.opts.connect_timeout,
                self.opts.keepalive * 4,
            )
            .await
            {
                Ok((mut tx, rx, welcome)) => {
                    self.hello.resume_token = welcome.resume_token;
                    self.credits = i64::from(welcome.credits);
                    let resend: Vec<Frame> = self
                        .unanswered
                        .iter()
                        .filter(|f| f.seq > welcome.received_seq)
                        .cloned()
                        .collect();
                    // The connection may break again while re-sending: one
                    // failed attempt, not the end of the session.
                    if let Err(e) = self.replay(&mut tx, resend).await {
                        tracing::debug!(error = %e, "connection lost while re-sending; resuming again");
                        last = e;
                        continue;
                    }
                    self.shared.resumes.fetch_add(1, Ordering::Relaxed);
                    return Ok((tx, rx));
                }
                Err(e @ ClientError::GoingAway(_)) => return self.failover(e).await,
                Err(ClientError::Gateway {
                    code: ErrorCode::GoingAway,
                    message,
                    ..
                }) => return self.failover(ClientError::GoingAway(message)).await,
                // Unknown token (a restarted gateway, or a load balancer
                // that sent the resume to another node): afresh, elsewhere
                // or on the same address.
                Err(
                    e @ ClientError::Gateway {
                        code: ErrorCode::NotFound,
                        ..
                    },
                ) => return self.failover(e).await,
                Err(e @ ClientError::Gateway { .. })
                    if !e.is_retryable() && self.targets.len() > 1 =>
                {
                    return self.failover(e).await
                }
                Err(e @ ClientError::Gateway { .. }) if !e.is_retryable() => return Err(e),
                Err(e) => last = e,
            }
        }
        if self.targets.len() > 1 {
            return self.failover(last).await;
        }
        Err(ClientError::ConnectionLost(format!(
            "gave up after {} reconnect attempts: {last}",
            self.opts.reconnect_attempts
        )))
    }
    /// Continues on another gateway with a new session: the next endpoint
    /// in order (the same one when it is the only one), then the ones after
    /// it. Every frame without an answer is sent again with its seq.
    async fn failover(&mut self, cause: ClientError) -> Result<(LinkTx, LinkRx), ClientError> {
        let n = self.targets.len();
        if self.opts.reconnect_attempts == 0 {
            return Err(cause);
        }
        let mut backoff = self.opts.reconnect_backoff;
        let mut last = cause;
        let attempts = self.opts.reconnect_attempts.max(n as u32);
        for attempt in 0..attempts {
            let idx = (self.current + 1 + attempt as usize) % n;
            // Straight to another gateway; wait before trying the same
            // address again (a load balancer needs a moment to notice).
            if n == 1 || attempt as usize >= n - 1 {
                tokio::time::sleep(self.retry_wait(backoff, &last)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let hello = Hello {
                resume_token: String::new(),
                last_received_seq: 0,
                ..self.hello.clone()
            };
            let target = &self.targets[idx];
            match link::open(
                &target.target,
                &hello,
                self.opts.connect_timeout,
                self.opts.keepalive * 4,
            )
            .await
            {
                Ok((mut tx, rx, welcome)) => {
                    tracing::info!(
                        from = %self.targets[self.current].url,
                        to = %target.url,
                        resend = self.unanswered.len(),
                        "session moved to another gateway"
                    );
                    self.current = idx;
                    self.going_away = false;
                    self.session_received = 0;
                    self.since_ack = 0;
                    self.hello.resume_token = welcome.resume_token;
                    self.window = welcome.limits.max_in_flight.max(welcome.credits).max(1);
                    self.credits = i64::from(welcome.credits);
                    *self.shared.endpoint.lock().expect("endpoint lock") = target.url.clone();
                    let resend: Vec<Frame> = self.unanswered.iter().cloned().collect();
                    self.shared
                        .resent
                        .fetch_add(resend.len() as u64, Ordering::Relaxed);
                    if let Err(e) = self.replay(&mut tx, resend).await {
                        tracing::debug!(error = %e, "connection lost while re-sending after a failover");
                        last = e;
                        continue;
                    }
                    self.shared.failovers.fetch_add(1, Ordering::Relaxed);
                    return Ok((tx, rx));
                }
                Err(e @ ClientError::Gateway { .. }) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::debug!(endpoint = %target.url, error = %e, "failover target unavailable");
                    last = e;
                }
            }
        }
        Err(ClientError::ConnectionLost(format!(
            "no gateway took the session after {attempts} attempts: {last}"
        )))
    }
}
