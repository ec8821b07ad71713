//! Runs sessions for real: one task per session drives its [`SessionCore`]
//! with the pipeline, the clock and whichever connection is attached, and
//! the [`SessionRegistry`] finds a session again by its resume token.
//!
//! A transport (WebSocket, QUIC) only reads Hello, authenticates, and then
//! calls [`SessionRegistry::open`] with a bounded channel of [`Outbound`]
//! messages that its writer turns into bytes; every later client message
//! goes through [`Connection::deliver`]. The session task outlives the
//! connection: when the writer's channel closes the session is detached and
//! goes on computing for `session.resume_grace_secs`, waiting for a Hello
//! with its resume token on any transport.
//!
//! Bounded everywhere: a session's inbound channel holds
//! [`INBOUND_CAPACITY`] messages and the task stops taking from it while the core is full (the
//! transport's flow control then pushes back on the client); the outbound
//! channel per connection holds [`OUTBOUND_CAPACITY`] messages; the number
//! of sessions is capped by `session.max_sessions`.

use crate::metering::{Reservation, SessionMeter};
use crate::metrics::{self, Transport};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framegate_protocol::{ClientMessage, DropReason, Hello, ServerMessage, SessionLimits, Welcome};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use super::core::{CoreConfig, Outcome, SessionCore};
use super::{Clock, SystemClock};
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::pipeline::decode::{probe, ProbedFrame};
use crate::pipeline::{FrameOutcome, ModelPipeline};
use crate::ratelimit::{SessionSlot, Subject};

/// Client messages buffered between a connection's reader and its session.
/// Small on purpose: frames wait in the session core (where the overload
/// policy can drop them), not here.
pub const INBOUND_CAPACITY: usize = 4;

/// Most frames decided by one rate-limit call.
pub const MAX_FRAMES_PER_DECISION: usize = INBOUND_CAPACITY + 1;

/// Messages buffered per connection between a session and its writer.
pub const OUTBOUND_CAPACITY: usize = 64;

/// What a connection's writer sends, in order.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message (shared with the session's resume buffer).
    Message(Arc<ServerMessage>),
    /// Send this error (without seq) and close with its code.
    Close(GatewayError),
    /// The session ended normally (after Bye): close normally.
    Finish,
    /// The gateway is going away and the session has sent every answer it
    /// owes: close with 1001 and [`crate::error::GOING_AWAY_REASON`] (the
    /// `going-away` notice was sent before, as a message).
    GoneAway,
}

/// Where a gateway's shutdown stands, as sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Departure {
    /// Serving.
    Staying,
    /// Draining: sessions got the `going-away` notice, answer what they
    /// admitted, refuse later frames, then close with 1001.
    Leaving,
    /// The shutdown deadline passed: close now, answered or not.
    Gone,
}

type ConnId = u64;

#[derive(Debug)]
enum Inbound {
    Message {
        conn: ConnId,
        msg: ClientMessage,
        datagram: bool,
    },
    Fatal {
        conn: ConnId,
        error: GatewayError,
    },
}

#[derive(Debug)]
struct Attach {
    conn: ConnId,
    out: mpsc::Sender<Outbound>,
    last_received: u64,
    reply: oneshot::Sender<Result<(), GatewayError>>,
}

/// A session as the registry knows it.
#[derive(Debug)]
struct SessionHandle {
    tenant: String,
    inbound: mpsc::Sender<Inbound>,
    control: mpsc::Sender<Attach>,
    /// The last connection its client ended on purpose (0: none), see
    /// [`Connection::quit`].
    quit: tokio::sync::watch::Sender<ConnId>,
}

/// Live sessions by resume token, and the usage counters they feed.
#[derive(Debug)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<String, Arc<SessionHandle>>>,
    billed: Mutex<HashMap<String, u64>>,
    next_conn: AtomicU64,
    clock: Arc<dyn Clock>,
    departure: tokio::sync::watch::Sender<Departure>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

/// One connection's link to its session.
#[derive(Debug)]
pub struct Connection {
    handle: Arc<SessionHandle>,
    conn: ConnId,
}

impl Connection {
    /// Hands a client message (after Hello) to the session, waiting while
    /// the session is full. False once the session has ended.
    pub async fn deliver(&self, msg: ClientMessage, datagram: bool) -> bool {
        self.handle
            .inbound
            .send(Inbound::Message {
                conn: self.conn,
                msg,
                datagram,
            })
            .await
            .is_ok()
    }

    /// The client ended this connection on purpose: a WebSocket close
    /// frame (or, once the gateway's close went out, the connection's
    /// clean end), a QUIC application close, or its acknowledgement of the
    /// stream's end after the gateway's last answer. Once the session has
    /// read `Bye` (before this or after: the order does not matter) it ends
    /// without waiting for a resume; a session that never said `Bye` takes
    /// it for a lost connection. Never waits.
    pub fn quit(&self) {
        // Connection ids only grow: a replaced connection's late quit does
        // not hide the newer one's.
        self.handle.quit.send_if_modified(|last| {
            let newer = self.conn > *last;
            if newer {
                *last = self.conn;
            }
            newer
        });
    }

    /// The connection broke a protocol rule: the session answers what it
    /// has admitted, then closes with `error`.
    pub async fn fatal(&self, error: GatewayError) {
        let _ = self
            .handle
            .inbound
            .send(Inbound::Fatal {
                conn: self.conn,
                error,
            })
            .await;
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl SessionRegistry {
    /// A registry reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            billed: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            clock,
            departure: tokio::sync::watch::Sender::new(Departure::Staying),
        }
    }

    /// Starts the drain (SIGTERM): every session gets the `going-away`
    /// notice, answers the frames it already admitted, refuses later ones
    /// and closes with 1001; new sessions and resumes are refused.
    pub fn go_away(&self) {
        self.depart(Departure::Leaving);
    }

    /// The shutdown deadline passed: every session closes now with 1001,
    /// whatever it still owes.
    pub fn close_all(&self) {
        self.depart(Departure::Gone);
    }

    fn depart(&self, to: Departure) {
        self.departure.send_if_modified(|d| {
            let changed = *d < to;
            if changed {
                *d = to;
            }
            changed
        });
    }

    /// Whether the gateway is draining ([`Self::go_away`] was called).
    pub fn is_going_away(&self) -> bool {
        *self.departure.borrow() != Departure::Staying
    }

    /// Sessions alive (attached or waiting for a resume).
    pub fn len(&self) -> usize {
        self.sessions.lock().expect("registry lock").len()
    }

    /// Whether no session is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames of `model` billed on sessions since start.
    pub fn frames_billed(&self, model: &str) -> u64 {
        self.billed
            .lock()
            .expect("billed lock")
            .get(model)
            .copied()
            .unwrap_or(0)
    }

    /// **The metering hook**: called exactly once per Detections delivered
    /// on a session (when first handed to a connection; never again when
    /// re-sent after a resume). Usage metering (per tenant, model, window)
    /// plugs in here.
    fn record_delivered(&self, tenant: &str, model: &str, pixels: u64) {
        let _ = (tenant, pixels);
        let mut billed = self.billed.lock().expect("billed lock");
        // The model's entry exists after its first frame: no key to build.
        match billed.get_mut(model) {
            Some(n) => *n += 1,
            None => {
                billed.insert(model.to_string(), 1);
            }
        }
    }

    /// Opens a new session, or resumes one when `hello.resume_token` is
    /// set, and attaches a connection to it. The session sends `Welcome`
    /// (and re-sent answers) on `out` before this returns `Ok`; on `Err` the
    /// caller closes the connection with the error.
    pub async fn open(
        self: &Arc<Self>,
        gw: &Arc<Gateway>,
        principal: &Principal,
        hello: &Hello,
        transport: &'static str,
        out: mpsc::Sender<Outbound>,
    ) -> Result<Connection, GatewayError> {
        if self.is_going_away() {
            return Err(GatewayError::GoingAway);
        }
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let handle = if hello.resume_token.is_empty() {
            // The session's place under its tenant's (and key's)
            // max_sessions, held for the session's life (resumes included).
            let rate = gw.rate_subject(principal).await;
            let slot = gw
                .ratelimit
                .open_session(&rate, transport_label(transport))
                .await?;
            self.start(gw, principal, hello, transport, rate, slot)?
        } else {
            let found = self
                .sessions
                .lock()
                .expect("registry lock")
                .get(&hello.resume_token)
                .cloned();
            match found {
                // Another tenant's token is as unknown as a wrong one.
                Some(h) if h.tenant == principal.tenant => h,
                _ => {
                    return Err(GatewayError::ResumeRefused(
                        "unknown or expired resume token".into(),
                    ))
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let attach = Attach {
            conn,
            out,
            last_received: hello.last_received_seq,
            reply,
        };
        let gone = || GatewayError::ResumeRefused("the session has ended".into());
        handle.control.send(attach).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())??;
        Ok(Connection { handle, conn })
    }

    fn start(
        self: &Arc<Self>,
        gw: &Arc<Gateway>,
        principal: &Principal,
        hello: &Hello,
        transport: &'static str,
        rate: Subject,
        slot: SessionSlot,
    ) -> Result<Arc<SessionHandle>, GatewayError> {
        let pipeline = gw.model(&hello.model)?.clone();
        let meter = SessionMeter::new(gw, principal, &pipeline.model().spec.name);
        meter.admit_session()?;
        let cfg = &gw.config.session;
        let window = cfg.credits;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let (control_tx, control_rx) = mpsc::channel(4);
        let token = random_hex(16);
        let (quit_tx, quit_rx) = tokio::sync::watch::channel(0);
        let handle = Arc::new(SessionHandle {
            tenant: principal.tenant.clone(),
            inbound: inbound_tx,
            control: control_tx,
            quit: quit_tx,
        });
        {
            let mut sessions = self.sessions.lock().expect("registry lock");
            if sessions.len() >= cfg.max_sessions {
                return Err(GatewayError::Overloaded(format!(
                    "the gateway holds its maximum of {} sessions",
                    cfg.max_sessions
                )));
            }
            sessions.insert(token.clone(), handle.clone());
        }
        let core = SessionCore::new(
            CoreConfig {
                window,
                policy: hello.overload_policy,
                max_in_pipeline: cfg.max_in_pipeline,
                resume_buffer: cfg.resume_buffer,
                grace_us: cfg.resume_grace_secs.saturating_mul(1_000_000),
            },
            self.clock.now_us(),
        );
        let session_id = random_hex(8);
        let span =
            tracing::info_span!("session", id = %session_id, tenant = %principal.tenant, transport);
        let pipeline_model_name = pipeline.model().spec.name.clone();
        let task = SessionTask {
            registry: self.clone(),
            gw: gw.clone(),
            model: pipeline.model().spec.name.clone(),
            share: pipeline.tenant(&principal.tenant, principal.limits.effective_weight()),
            pipeline,
            core,
            token,
            session_id,
            tenant: principal.tenant.clone(),
            current: None,
            last_conn: None,
            closing: None,
            quit: quit_rx,
            departure: self.departure.subscribe(),
            leaving: false,
            inbound: inbound_rx,
            control: control_rx,
            completions: FuturesUnordered::new(),
            meter,
            reservations: HashMap::new(),
            transport: transport_label(transport),
            answered: metrics::answered_counter(transport_label(transport), &pipeline_model_name),
            _open: metrics::session_opened(transport_label(transport)),
            rate,
            _slot: slot,
            stash: None,
        };
        tokio::spawn(tracing::Instrument::instrument(task.run(), span));
        Ok(handle)
    }
}

/// A waiting frame.
#[derive(Debug)]
struct Pending {
    frame: ProbedFrame,
    received_at: Instant,
    capture_ts_us: u64,
}

type Completion = Pin<Box<dyn Future<Output = (u64, u64, Option<FrameOutcome>)> + Send>>;

struct SessionTask {
    registry: Arc<SessionRegistry>,
    gw: Arc<Gateway>,
    pipeline: Arc<ModelPipeline>,
    model: String,
    /// The tenant's standing in the pipeline (fair share, DRR weight).
    share: Arc<crate::pipeline::fair::TenantShare>,
    core: SessionCore<Pending>,
    token: String,
    session_id: String,
    tenant: String,
    current: Option<(ConnId, mpsc::Sender<Outbound>)>,
    /// The connection attached last, kept after it is lost: what it read
    /// before, and its [`Connection::quit`], still count.
    last_conn: Option<ConnId>,
    /// `Some(None)`: Bye received; `Some(Some(e))`: ending with `e`.
    closing: Option<Option<GatewayError>>,
    /// The last connection its client ended on purpose: after Bye, if it
    /// is `last_conn`, the session ends.
    quit: tokio::sync::watch::Receiver<ConnId>,
    /// The gateway's shutdown, watched.
    departure: tokio::sync::watch::Receiver<Departure>,
    /// The `going-away` notice was given: frames received from now on are
    /// refused, and the session closes with 1001 once it owes nothing.
    leaving: bool,
    inbound: mpsc::Receiver<Inbound>,
    control: mpsc::Receiver<Attach>,
    completions: FuturesUnordered<Completion>,
    /// Usage metering and the tenant's budget.
    meter: SessionMeter,
    /// Budget held by each frame sent to the pipeline, until its answer is
    /// delivered (then it counts) or it fails (then it goes back).
    reservations: HashMap<u64, Reservation>,
    /// The transport the session was opened on (metrics label).
    transport: Transport,
    /// `frames_answered` of this transport and model, looked up once.
    answered: metrics::AnsweredCounter,
    /// Keeps `framegate_sessions_open` right for the session's lifetime.
    _open: metrics::SessionGuard,
    /// The caller's rate-limit buckets.
    rate: Subject,
    /// The session's place under `max_sessions`, freed when the task ends.
    _slot: SessionSlot,
    /// A message read while collecting frames for one rate decision; it is
    /// handled next.
    stash: Option<Inbound>,
}

impl SessionTask {
    fn now_us(&self) -> u64 {
        self.registry.clock.now_us()
    }

    async fn run(mut self) {
        tracing::debug!("session started");
        let mut watching = true;
        loop {
            if watching {
                let departure = *self.departure.borrow_and_update();
                match departure {
                    Departure::Staying => {}
                    Departure::Leaving => self.leave().await,
                    Departure::Gone => {
                        self.leave().await;
                        if let Some((_, out)) = self.current.take() {
                            let _ = out.send(Outbound::GoneAway).await;
                        }
                        break;
                    }
                }
            }
            if let Some(ev) = self.stash.take() {
                self.on_inbound(ev).await;
            }
            self.dispatch();
            self.transmit().await;
            if let Some(reason) = &self.closing {
                if reason.is_none() && Some(*self.quit.borrow_and_update()) == self.last_conn {
                    tracing::debug!("the client ended the connection after Bye");
                    break;
                }
                if self.current.is_none() {
                    // Broke a rule, or the gateway is going away: no
                    // resume. Said Bye and lost the connection before the
                    // client confirmed the end: it may resume (within the
                    // window) for the answers it missed, rather than start
                    // afresh and send, and be billed for, those frames
                    // again.
                    if reason.is_some() || self.leaving {
                        break;
                    }
                } else if self.core.is_drained() {
                    let finish = reason.is_none() && !self.leaving;
                    let last = match reason {
                        None => Outbound::Finish,
                        Some(GatewayError::GoingAway) => Outbound::GoneAway,
                        Some(e) => Outbound::Close(e.clone()),
                    };
                    if let Some((_, out)) = self.current.take() {
                        let _ = out.send(last).await;
                    }
                    if !finish {
                        break;
                    }
                    // Every answer is on the wire; the session waits for
                    // the client's side of the end (`Connection::quit`), or
                    // for a resume from a client the end did not reach,
                    // until the resume window passes.
                    let now = self.now_us();
                    self.core.detach(now);
                    continue;
                }
            }
            let now = self.now_us();
            let expiry = match self.core.expires_at() {
                Some(at) if self.current.is_none() => {
                    if now >= at {
                        tracing::debug!("resume window passed");
                        break;
                    }
                    Some(Duration::from_micros(at - now))
                }
                _ => None,
            };
            let out = self.current.as_ref().map(|c| c.1.clone());
            // While leaving, frames are still read (and refused at once) so
            // the client learns which ones to send elsewhere.
            // After Bye what still comes (a resumed connection's Bye or
            // Acks) is read, full session or not.
            let said_bye = matches!(self.closing, Some(None)) && !self.leaving;
            let reading =
                said_bye || ((self.closing.is_none() || self.leaving) && self.core.can_accept());
            tokio::select! {
                changed = self.departure.changed(), if watching => {
                    // The registry outlives its sessions; if it is gone
                    // anyway, stop watching rather than spin.
                    watching = changed.is_ok();
                }
                Some(attach) = self.control.recv() => self.attach(attach).await,
                // Looked at on the next turn (it may come before Bye is read).
                Ok(()) = self.quit.changed(), if said_bye => {}
                Some((seq, cts, outcome)) = self.completions.next(), if !self.completions.is_empty() => {
                    self.on_outcome(seq, cts, outcome);
                }
                ev = self.inbound.recv(), if reading => match ev {
                    Some(ev) => self.on_inbound(ev).await,
                    None => break,
                },
                () = closed(out.as_ref()), if out.is_some() => self.detach(),
                () = tokio::time::sleep(expiry.unwrap_or_default()), if expiry.is_some() => {}
            }
        }
        self.registry
            .sessions
            .lock()
            .expect("registry lock")
            .remove(&self.token);
        tracing::debug!(usage_frames = self.core.usage().frames, "session ended");
    }

    /// Gives the `going-away` notice (once): from now on frames are refused
    /// and the session ends with 1001 when it owes no answer. A detached
    /// session ends at once: it cannot be resumed here any more.
    async fn leave(&mut self) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        if self.closing.is_none() {
            self.closing = Some(Some(GatewayError::GoingAway));
        }
        if let Some((_, out)) = &self.current {
            let notice = ServerMessage::Error(GatewayError::GoingAway.to_message(None));
            if out.send(Outbound::Message(Arc::new(notice))).await.is_err() {
                self.detach();
            }
        }
        tracing::debug!(owed = self.core.pending(), "going away");
    }

    fn detach(&mut self) {
        if self.current.take().is_some() {
            let now = self.now_us();
            self.core.detach(now);
            tracing::debug!("connection lost; waiting for a resume");
        }
    }

    async fn attach(&mut self, a: Attach) {
        // After Bye (`Some(None)`) a resume still gets the answers owed and
        // the close.
        if matches!(self.closing, Some(Some(_))) || self.leaving {
            let _ = a.reply.send(Err(GatewayError::ResumeRefused(
                "the session is ending".into(),
            )));
            return;
        }
        // The Welcome's slot first: a new connection already gone is
        // refused before anything changes (the attached one, if any, goes
        // on as it was; attaching resets what is to be re-sent).
        let Ok(slot) = a.out.reserve().await else {
            let _ = a
                .reply
                .send(Err(GatewayError::ResumeRefused("connection closed".into())));
            return;
        };
        let attached = match self.core.attach(a.last_received) {
            Ok(x) => x,
            Err(r) => {
                drop(slot);
                let _ = a
                    .reply
                    .send(Err(GatewayError::ResumeRefused(r.to_string())));
                return;
            }
        };
        // A newer connection replaces an older one that has not noticed it
        // is dead yet; dropping its sender ends its writer.
        self.current = None;
        let limits = &self.gw.config.limits;
        let welcome = ServerMessage::Welcome(Welcome {
            session_id: self.session_id.clone(),
            resume_token: self.token.clone(),
            credits: attached.credits,
            limits: SessionLimits {
                max_message_bytes: limits.max_message_bytes.min(u32::MAX as usize) as u32,
                max_frame_pixels: limits.max_frame_pixels,
                max_in_flight: self.core.config().window,
            },
            model: self.model.clone(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            received_seq: attached.received_seq,
        });
        slot.send(Outbound::Message(Arc::new(welcome)));
        if attached.resent > 0 {
            tracing::debug!(resent = attached.resent, "resumed");
        }
        self.current = Some((a.conn, a.out));
        self.last_conn = Some(a.conn);
        let _ = a.reply.send(Ok(()));
    }

    async fn on_inbound(&mut self, ev: Inbound) {
        let current = self.current.as_ref().map(|c| c.0);
        // What a lost connection read before it was lost still counts
        // (its frames are in the next Welcome's received_seq); a replaced
        // connection's leftovers do not.
        let live = current.or(self.last_conn);
        let said_bye = matches!(self.closing, Some(None));
        match ev {
            // Leftovers of a replaced connection: the client re-sends what
            // the new Welcome's received_seq says is missing.
            Inbound::Message { conn, .. } | Inbound::Fatal { conn, .. } if Some(conn) != live => {}
            // Nothing may follow Bye but the resumed connection's own Bye
            // (every frame before Bye reached the gateway, as Bye did).
            Inbound::Message {
                msg: ClientMessage::Frame(_),
                ..
            } if said_bye && !self.leaving => {
                self.closing = Some(Some(GatewayError::Protocol("Frame after Bye".into())));
            }
            Inbound::Fatal { error, .. } => self.end(error),
            Inbound::Message {
                msg: ClientMessage::Frame(f),
                datagram,
                ..
            } if self.rate.limits_frames() && !self.leaving => {
                self.admit_frames(f, datagram, current).await
            }
            Inbound::Message { msg, datagram, .. } => match msg {
                ClientMessage::Frame(f) if self.leaving => {
                    metrics::frame_received(self.transport);
                    let now = self.now_us();
                    if let Err(e) = self
                        .core
                        .refuse(now, f.seq, GatewayError::GoingAway, datagram)
                    {
                        self.end(e);
                    }
                }
                ClientMessage::Frame(f) => self.on_frame(f, datagram),
                ClientMessage::Ack(a) => self.core.on_ack(a.seq),
                // While leaving, the going-away close stands: the client
                // reconnects elsewhere if anything is still unanswered.
                ClientMessage::Bye(_) if self.leaving => {}
                ClientMessage::Bye(_) => self.closing = Some(None),
                ClientMessage::Hello(_) => {
                    self.end(GatewayError::Protocol("Hello sent twice".into()))
                }
            },
        }
    }

    /// The rate-limit admission point of streams. The frames already waiting
    /// behind `first` (up to the session's room) are decided with it in one
    /// call (one Redis round trip for the lot); the admitted prefix goes on
    /// to the core, the rest are answered `Dropped{rate-limited}` and never
    /// reach the pipeline or the meter.
    async fn admit_frames(
        &mut self,
        first: framegate_protocol::Frame,
        datagram: bool,
        current: Option<ConnId>,
    ) {
        let mut frames = vec![(first, datagram)];
        let room = self.core.room().clamp(1, MAX_FRAMES_PER_DECISION);
        while frames.len() < room {
            match self.inbound.try_recv() {
                Ok(Inbound::Message {
                    conn,
                    msg: ClientMessage::Frame(f),
                    datagram,
                }) if Some(conn) == current => frames.push((f, datagram)),
                Ok(other) => {
                    self.stash = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let n = frames.len() as u32;
        let d = self.gw.ratelimit.frames(&self.rate, n).await;
        if d.admitted < n {
            metrics::rate_limited(
                self.transport,
                metrics::LimitKind::Frames,
                u64::from(n - d.admitted),
            );
        }
        for (i, (f, datagram)) in frames.into_iter().enumerate() {
            if (i as u32) < d.admitted {
                self.on_frame(f, datagram);
                continue;
            }
            metrics::frame_received(self.transport);
            let after_ms = crate::error::millis_rounded_up(Duration::from_micros(d.retry_after_us));
            let message = format!(
                "over {}; the next frame is admitted in {after_ms} ms",
                self.rate.describe_frames(),
            );
            if let Err(e) = self.core.on_frame_refused(
                f.seq,
                datagram,
                DropReason::RateLimited,
                message,
                Some(after_ms),
            ) {
                self.end(e);
                return;
            }
        }
    }

    fn on_frame(&mut self, f: framegate_protocol::Frame, datagram: bool) {
        metrics::frame_received(self.transport);
        let probed = probe(
            Some(f.codec),
            f.width,
            f.height,
            f.payload,
            &self.gw.frame_limits,
        )
        .map(|frame| Pending {
            frame,
            received_at: Instant::now(),
            capture_ts_us: f.capture_ts_us,
        });
        let now = self.now_us();
        if let Err(e) = self
            .core
            .on_frame(now, f.seq, f.deadline_us, probed, datagram)
        {
            self.end(e);
        }
    }

    fn end(&mut self, e: GatewayError) {
        if self.closing.is_none() {
            self.closing = Some(Some(e));
        }
    }

    fn dispatch(&mut self) {
        loop {
            let now = self.now_us();
            let Some(d) = self.core.poll_dispatch(now) else {
                return;
            };
            let deadline = (d.deadline_us != 0)
                .then(|| Instant::now() + Duration::from_micros(d.deadline_us.saturating_sub(now)));
            let (seq, cts) = (d.seq, d.frame.capture_ts_us);
            // Budget is reserved before inference, so usage can never pass
            // a tenant's cap even with many frames in flight.
            match self.meter.reserve() {
                Ok(r) => {
                    self.reservations.insert(seq, r);
                }
                Err(e) => {
                    self.core.on_outcome(now, seq, Outcome::Failed(e));
                    continue;
                }
            }
            // Time spent waiting here behind the session's earlier frames
            // counts against the pipeline's latency budget.
            let waited = d.frame.received_at.elapsed();
            match self.pipeline.submit_with_deadline(
                &self.share,
                d.frame.frame,
                d.frame.received_at,
                deadline,
                waited,
            ) {
                Ok(rx) => self
                    .completions
                    .push(Box::pin(async move { (seq, cts, rx.await.ok()) })),
                Err(e) => {
                    if let Some(r) = self.reservations.remove(&seq) {
                        r.release();
                    }
                    let outcome = match e {
                        e @ GatewayError::QueueFull => Outcome::Dropped(
                            DropReason::QueueFull,
                            "the ingress queue is full".into(),
                            e.retry_after_ms(),
                        ),
                        e @ GatewayError::QueueWait { .. } => Outcome::Dropped(
                            DropReason::Overloaded,
                            e.to_string(),
                            e.retry_after_ms(),
                        ),
                        e => Outcome::Failed(e),
                    };
                    self.core.on_outcome(now, seq, outcome);
                }
            }
        }
    }

    fn on_outcome(&mut self, seq: u64, capture_ts_us: u64, outcome: Option<FrameOutcome>) {
        let outcome = match outcome {
            Some(Ok(r)) => Outcome::Detections(framegate_protocol::Detections {
                seq,
                capture_ts_us,
                width: r.width,
                height: r.height,
                model: self.model.clone(),
                detections: r.detections,
                timings: r.timings,
                usage: Default::default(),
            }),
            Some(Err(GatewayError::DeadlineExceeded)) => Outcome::Dropped(
                DropReason::DeadlineExceeded,
                "its deadline passed while it was queued".into(),
                None,
            ),
            Some(Err(e)) => Outcome::Failed(e),
            None => Outcome::Failed(GatewayError::Internal(
                "the pipeline dropped the frame".into(),
            )),
        };
        if !matches!(outcome, Outcome::Detections(_)) {
            if let Some(r) = self.reservations.remove(&seq) {
                r.release();
            }
        }
        let now = self.now_us();
        self.core.on_outcome(now, seq, outcome);
    }

    /// Writes what is ready. A new connection attaching preempts a write
    /// stuck on the old one (the message is re-sent after the attach).
    async fn transmit(&mut self) {
        loop {
            let Some((conn, out)) = &self.current else {
                return;
            };
            if out.is_closed() {
                self.detach();
                return;
            }
            let (conn, out) = (*conn, out.clone());
            let Some(t) = self.core.poll_transmit() else {
                return;
            };
            if let Some(pixels) = t.billed {
                self.registry
                    .record_delivered(&self.tenant, &self.model, pixels);
                if let ServerMessage::Detections(d) = &*t.message {
                    let r = self
                        .reservations
                        .remove(&d.seq)
                        .unwrap_or_else(Reservation::unlimited);
                    self.meter.delivered(r, pixels);
                }
            }
            self.count(&t);
            let permit = tokio::select! {
                p = out.reserve() => Some(p),
                Some(a) = self.control.recv() => {
                    self.attach(a).await;
                    None
                }
            };
            let sent = match permit {
                Some(Ok(p)) => {
                    p.send(Outbound::Message(t.message));
                    true
                }
                Some(Err(_)) => false,
                // A new connection took over: it gets the message re-sent.
                None if self.current.as_ref().map(|c| c.0) != Some(conn) => continue,
                // The attach was refused: this connection still needs it.
                None => out.send(Outbound::Message(t.message)).await.is_ok(),
            };
            if !sent {
                self.detach();
                return;
            }
        }
    }
}

impl SessionTask {
    /// Metrics for one outgoing answer. Detections count once (when
    /// billed); drops and errors as they are sent.
    fn count(&self, t: &crate::session::core::Transmit) {
        match &*t.message {
            ServerMessage::Detections(d) if t.billed.is_some() => {
                self.answered.answered(&d.timings)
            }
            ServerMessage::Dropped(d) => {
                for _ in &d.seqs {
                    metrics::frame_dropped(self.transport, d.reason.as_str());
                }
            }
            ServerMessage::Error(e) if e.seq.is_some() => {
                metrics::frame_failed(self.transport, e.code.as_str())
            }
            _ => {}
        }
    }
}

async fn closed(out: Option<&mpsc::Sender<Outbound>>) {
    match out {
        Some(o) => o.closed().await,
        None => std::future::pending().await,
    }
}

/// The metrics label of the adapter named `transport` in
/// `SessionRegistry::open`.
fn transport_label(transport: &str) -> Transport {
    match transport {
        "quic" => Transport::Quic,
        "webtransport" => Transport::WebTransport,
        _ => Transport::Ws,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::backend::synthetic::SyntheticConfig;
    use crate::config::Config;
    use crate::gateway::synthetic_factory;
    use crate::pipeline::Readiness;
    use framegate_protocol::{Codec, Frame};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_on_a_connection_already_gone_leaves_the_attached_one_alone() {
        let config = Config::default();
        let (auth, _) = Authenticator::from_config(&config, None, Some("k1".into()));
        let gw =
            Gateway::start(config, auth, synthetic_factory(SyntheticConfig::default())).unwrap();
        while gw.readiness() == Readiness::Loading {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let principal = gw.authenticate("k1").await.unwrap();
        let (out_a, mut rx_a) = mpsc::channel(16);
        let conn_a = gw
            .sessions
            .open(&gw, &principal, &Hello::new("k1"), "ws", out_a)
            .await
            .unwrap();
        let token = match rx_a.recv().await {
            Some(Outbound::Message(m)) => match &*m {
                ServerMessage::Welcome(w) => w.resume_token.clone(),
                other => panic!("expected Welcome, got {other:?}"),
            },
            other => panic!("expected Welcome, got {other:?}"),
        };
        // A resume whose connection is gone before its Welcome goes out.
        let (out_b, rx_b) = mpsc::channel(16);
        drop(rx_b);
        let resume = Hello {
            resume_token: token,
            ..Hello::new("k1")
        };
        let refused = gw
            .sessions
            .open(&gw, &principal, &resume, "ws", out_b)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, GatewayError::ResumeRefused(_)),
            "{refused:?}"
        );
        // The attached connection goes on: it still gets its answers.
        let frame = ClientMessage::Frame(Frame {
            seq: 1,
            capture_ts_us: 0,
            codec: Codec::Jpeg,
            width: 0,
            height: 0,
            deadline_us: 0,
            payload: bytes::Bytes::from_static(include_bytes!("../../tests/data/dog.jpg")),
        });
        assert!(conn_a.deliver(frame, false).await);
        let answer = tokio::time::timeout(Duration::from_secs(10), rx_a.recv()).await;
        assert!(
            matches!(
                answer,
                Ok(Some(Outbound::Message(ref m)))
                    if matches!(&**m, ServerMessage::Detections(d) if d.seq == 1)
            ),
            "the attached connection lost its session: {answer:?}"
        );
    }
}
