//! The pipeline of one model: ingress queue → inference workers, each of
//! which forms its own batches.
//!
//! Transports call [`ModelPipeline::submit`] with a frame whose header has
//! been checked ([`decode::probe`]) and its tenant's [`fair::TenantShare`].
//! The frame is admitted within its tenant's bound ([`fair::FairAdmission`])
//! and the pipeline's latency budget ([`wait`]: a frame expected to wait
//! longer than `pipeline.max_queue_wait_ms` is refused at once) and handed
//! over through the bounded, lock-free [`queue::IngressQueue`]. A free
//! inference worker (its own OS thread, its own backend session) takes the
//! batch former's lock, moves what the ingress queue holds into the
//! tenants' FIFOs, picks frames across tenants by deficit round robin
//! ([`fair::FairScheduler`]) and times its batch by the rule in
//! [`batcher`]; then, without the lock, it decodes, preprocesses into the
//! batch tensor, runs the backend, postprocesses and answers every frame
//! through its one-shot channel. A worker with nothing to run parks, and a
//! transport wakes one when it queues a frame ([`idle`]). There is no
//! batcher thread: a frame crosses two threads, the transport's and the
//! worker's. Every frame gets exactly one answer: a result or an error.
//!
//! When the backend can be widened ([`Backend::solo`]) the pipeline also
//! holds one *solo* session with every inference thread
//! (`pipeline.solo_threads`): a lone frame that finds every worker idle runs
//! on it (or, with up to `pipeline.solo_backlog` frames waiting, each in
//! turn, in fair order), and holds all workers until it is done. Light load
//! gets the latency of all cores on one frame; under load frames run side
//! by side on the workers' own one-thread sessions, which is the better
//! throughput.

pub mod batcher;
pub mod cuda;
pub mod decode;
pub mod fair;
pub mod idle;
pub mod postprocess;
pub mod preprocess;
pub mod queue;
pub mod wait;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use framegate_protocol::{Detection, StageTimings};
use tokio::sync::oneshot;

use crate::backend::spec::LoadedModel;
use crate::backend::{Backend, BackendInput, EncodedFrame};
use crate::config::{PipelineConfig, PreprocessDevice};
use crate::error::GatewayError;

use self::batcher::{BatchPolicy, Decision};
use self::cuda::CudaPreprocess;
use self::decode::{ProbedFrame, RgbImage};
use self::fair::{FairAdmission, FairScheduler, TenantShare};
use self::preprocess::Preprocessor;
use self::queue::IngressQueue;
use self::wait::{ServiceTime, WaitBudget};

/// A frame's answer.
#[derive(Debug, Clone)]
pub struct FrameResult {
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Boxes in frame pixels.
    pub detections: Vec<Detection>,
    /// Time spent in each stage.
    pub timings: StageTimings,
    /// Frames in the backend batch this frame ran in.
    pub batch_size: u32,
}

/// What a submitted frame resolves to.
pub type FrameOutcome = Result<FrameResult, GatewayError>;

/// A submitted frame's answer, to await. It holds on to the frame's bytes
/// until then, so that their memory is given back on the thread that
/// received them (the network side), not on the inference worker that is
/// done with them first: with glibc's allocator a frame freed on a worker
/// goes back to the network thread's arena under that arena's lock, which
/// the network thread takes for every frame it reads (gateway-only
/// profile: the two threads waited on each other there).
#[derive(Debug)]
pub struct Answer {
    rx: oneshot::Receiver<FrameOutcome>,
    _payload: bytes::Bytes,
}

impl std::future::Future for Answer {
    type Output = Result<FrameOutcome, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}

/// A frame on its way through the pipeline.
#[derive(Debug)]
pub struct WorkItem {
    frame: ProbedFrame,
    tenant: Arc<TenantShare>,
    received_at: Instant,
    enqueued_at: Instant,
    reply: oneshot::Sender<FrameOutcome>,
    /// Answered `Err(DeadlineExceeded)` instead of computed once past.
    deadline: Option<Instant>,
}

/// Makes one backend instance per worker.
pub type BackendFactory =
    Arc<dyn Fn(&LoadedModel) -> Result<Box<dyn Backend>, GatewayError> + Send + Sync>;

/// A batch a worker took from the former.
#[derive(Debug)]
struct Batch {
    items: Vec<WorkItem>,
    /// Run on the solo session; it holds every worker.
    solo: bool,
}

#[derive(Default)]
struct Shared {
    /// Workers free to take a batch (a solo batch holds all of them).
    /// Changed down only under the `former` lock, by the worker that takes
    /// a batch; up by a worker when its batch is done.
    idle_workers: AtomicUsize,
    /// The frames handed over and not yet in a batch, in their tenants'
    /// FIFOs. A free worker takes the lock to form its batch.
    former: Mutex<FairScheduler<WorkItem>>,
    /// Workers parked for want of work.
    sleepers: idle::Sleepers,
    /// Bumped under the `former` lock when a worker leaves frames in the
    /// former for another free worker (and when the pipeline stops). A
    /// worker about to park compares it with what it saw under the lock:
    /// frames already moved out of the ingress queue are not in the queue
    /// its wake-up condition looks at.
    handed_on: std::sync::atomic::AtomicU64,
    ready_workers: AtomicUsize,
    ready: AtomicBool,
    failure: Mutex<Option<String>>,
    backend_kind: Mutex<Option<&'static str>>,
    /// Frames run through the backend (warm-up excluded).
    frames_inferred: std::sync::atomic::AtomicU64,
    /// The solo session, once worker 0 has made and warmed it.
    solo: Mutex<Option<Box<dyn Backend>>>,
    solo_ready: AtomicBool,
    /// Frames run on the solo session.
    solo_frames: std::sync::atomic::AtomicU64,
    /// Service time per frame, recorded as batches complete.
    service: ServiceTime,
    /// `shutdown` has joined the workers: a frame that reaches the queue
    /// now (its producer passed the closed check just before the close)
    /// has nobody to take it, and is answered by whoever sees it.
    stopped: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("idle_workers", &self.idle_workers)
            .field("ready", &self.ready)
            .field("solo_ready", &self.solo_ready)
            .finish_non_exhaustive()
    }
}

/// The running pipeline of one model.
pub struct ModelPipeline {
    model: Arc<LoadedModel>,
    queue: Arc<IngressQueue<WorkItem>>,
    admission: Arc<FairAdmission>,
    budget: WaitBudget,
    shared: Arc<Shared>,
    workers: usize,
    max_batch: usize,
    queue_capacity: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ModelPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelPipeline")
            .field("model", &self.model.spec.name)
            .field("workers", &self.workers)
            .finish()
    }
}

/// Readiness of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Still loading or warming up.
    Loading,
    /// Serving.
    Ready,
    /// Failed to load; the reason.
    Failed(String),
}

impl ModelPipeline {
    /// Starts `config.worker_count()` workers. Workers load and warm up
    /// their backend in the background; see [`Self::readiness`].
    pub fn start(
        model: LoadedModel,
        config: &PipelineConfig,
        factory: BackendFactory,
    ) -> Arc<Self> {
        let model = Arc::new(model);
        let workers = config.worker_count();
        let admission = Arc::new(FairAdmission::new(
            config.queue_capacity,
            config.tenant_queue_floor,
            config.headroom(),
        ));
        // Admission bounds what is queued; the hand-off can hold all of it,
        // so a push after admission never fails for want of room.
        let queue = Arc::new(IngressQueue::new(admission.hard_limit()));
        let shared = Arc::new(Shared::default());
        let policy = BatchPolicy {
            max_batch: config.max_batch(),
            max_delay: config.max_delay(),
            solo: false,
            solo_backlog: config.solo_backlog,
        };
        let mut threads = Vec::new();
        for i in 0..workers {
            let ctx = WorkerContext {
                model: model.clone(),
                shared: shared.clone(),
                queue: queue.clone(),
                admission: admission.clone(),
                policy,
                factory: factory.clone(),
                workers,
                preprocess: config.preprocess,
                cuda_device: config.cuda_device,
                // Worker 0 makes the solo session (one for the pipeline).
                solo_threads: if i == 0 && workers > 1 {
                    config.solo_thread_count()
                } else {
                    None
                },
            };
            let handle = std::thread::Builder::new()
                .name(format!("infer-{}-{i}", model.spec.name))
                .spawn(move || run_worker(ctx))
                .expect("spawn inference thread");
            threads.push(handle);
        }
        Arc::new(Self {
            model,
            queue,
            admission,
            budget: WaitBudget::new(config.max_queue_wait(), workers, config.max_batch()),
            shared,
            workers,
            max_batch: config.max_batch(),
            queue_capacity: config.queue_capacity,
            threads: Mutex::new(threads),
        })
    }

    /// The model.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Inference workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Largest batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Frames admitted and not yet handed to a worker (in the ingress
    /// queue or a tenant's FIFO).
    pub fn queue_depth(&self) -> usize {
        self.admission.queued()
    }

    /// Capacity of the queue (`pipeline.queue_capacity`; tenants below
    /// their share may use `pipeline.queue_headroom` more).
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Expected wait of a frame queued now (zero before the first batch
    /// is timed) and the service time per frame behind it (see [`wait`]).
    pub fn queue_wait(&self) -> (Duration, Duration) {
        let per_frame = self.shared.service.per_frame().unwrap_or_default();
        (
            self.budget.expected_wait(self.queue_depth(), per_frame),
            per_frame,
        )
    }

    /// Tenants with frames queued now.
    pub fn active_tenants(&self) -> usize {
        self.admission.active_tenants()
    }

    /// The share of `tenant` (weight `weight`, see
    /// [`crate::config::PlanLimits::effective_weight`]) in this pipeline: hold
    /// it for a session's life and pass it with every frame.
    pub fn tenant(&self, tenant: &str, weight: u32) -> Arc<TenantShare> {
        self.admission.tenant(tenant, weight)
    }

    /// The backend kind, once a worker has loaded it.
    pub fn backend_kind(&self) -> Option<&'static str> {
        *self.shared.backend_kind.lock().expect("lock")
    }

    /// Loading, ready or failed.
    pub fn readiness(&self) -> Readiness {
        if let Some(f) = self.shared.failure.lock().expect("lock").clone() {
            return Readiness::Failed(f);
        }
        if self.shared.ready.load(Ordering::Acquire) {
            Readiness::Ready
        } else {
            Readiness::Loading
        }
    }

    /// Waits until ready, failed, or `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Readiness {
        let end = Instant::now() + timeout;
        loop {
            let r = self.readiness();
            if r != Readiness::Loading || Instant::now() >= end {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Frames run through the backend so far (each frame once, whatever
    /// its batch; warm-up excluded).
    pub fn frames_inferred(&self) -> u64 {
        self.shared.frames_inferred.load(Ordering::Relaxed)
    }

    /// Frames run on the solo session so far (see the module docs).
    pub fn solo_frames(&self) -> u64 {
        self.shared.solo_frames.load(Ordering::Relaxed)
    }

    /// Whether the pipeline has a warmed solo session.
    pub fn has_solo(&self) -> bool {
        self.shared.solo_ready.load(Ordering::Acquire)
    }

    /// Queues a frame of `tenant`. Fails at once (never waits) when the
    /// pipeline is not ready, the queue is full, the tenant holds its share
    /// of the queue while others wait (see [`fair`]), or the frame would
    /// wait longer than the latency budget (see [`wait`]).
    pub fn submit(
        &self,
        tenant: &Arc<TenantShare>,
        frame: ProbedFrame,
        received_at: Instant,
    ) -> Result<Answer, GatewayError> {
        self.submit_with_deadline(tenant, frame, received_at, None, Duration::ZERO)
    }

    /// [`Self::submit`] with a deadline: a frame still queued when it passes
    /// is answered `Err(DeadlineExceeded)` without being decoded or computed.
    /// `waited`: how long the frame already waited in the gateway for its
    /// turn (a stream's frame behind the session's earlier ones); it counts
    /// against the latency budget.
    pub fn submit_with_deadline(
        &self,
        tenant: &Arc<TenantShare>,
        frame: ProbedFrame,
        received_at: Instant,
        deadline: Option<Instant>,
        waited: Duration,
    ) -> Result<Answer, GatewayError> {
        match self.readiness() {
            Readiness::Ready => {}
            Readiness::Loading => {
                return Err(GatewayError::NotReady(format!(
                    "model {} is still loading",
                    self.model.spec.name
                )))
            }
            Readiness::Failed(f) => return Err(GatewayError::NotReady(f)),
        }
        if self.queue.is_closed() {
            return Err(GatewayError::NotReady(
                "the gateway is shutting down".into(),
            ));
        }
        self.admit(tenant, waited)?;
        let (tx, rx) = oneshot::channel();
        let payload = frame.payload.clone();
        let item = WorkItem {
            frame,
            tenant: tenant.clone(),
            received_at,
            enqueued_at: Instant::now(),
            reply: tx,
            deadline,
        };
        match self.queue.push(item) {
            Ok(()) => {
                self.after_push();
                Ok(Answer {
                    rx,
                    _payload: payload,
                })
            }
            Err(item) => {
                self.admission.release(&item.tenant);
                if self.queue.is_closed() {
                    Err(GatewayError::NotReady(
                        "the gateway is shutting down".into(),
                    ))
                } else {
                    Err(GatewayError::QueueFull)
                }
            }
        }
    }

    /// The admission decision: the latency budget ([`wait`]), then the
    /// tenant's share ([`fair`]) of a queue no longer than the budget allows.
    fn admit(&self, tenant: &TenantShare, waited: Duration) -> Result<(), GatewayError> {
        use crate::metrics::{admission_refused, AdmissionRefusal};
        let per_frame = self.shared.service.per_frame();
        let refused = |reason| {
            admission_refused(&self.model.spec.name, reason);
            match reason {
                AdmissionRefusal::QueueWait => {
                    self.budget.check_batch(&self.model.spec.name, per_frame);
                    let ahead = self.admission.queued();
                    // Before anything is timed, say at least the budget.
                    let expected = per_frame.map_or(self.budget.budget(), |s| {
                        self.budget.expected_wait(ahead, s)
                    }) + waited;
                    Err(GatewayError::QueueWait {
                        expected_ms: expected.as_millis() as u64,
                        budget_ms: self.budget.budget().as_millis() as u64,
                    })
                }
                _ => Err(GatewayError::QueueFull),
            }
        };
        if !waited.is_zero() {
            if let Some(limit) = self.budget.frames(waited, per_frame) {
                if self.admission.queued() >= limit {
                    return refused(AdmissionRefusal::QueueWait);
                }
            }
        }
        match self
            .admission
            .try_admit_within(tenant, self.budget.frames(Duration::ZERO, per_frame))
        {
            Ok(()) => Ok(()),
            Err(fair::Refusal::OverBudget) => refused(AdmissionRefusal::QueueWait),
            Err(fair::Refusal::Full) => refused(AdmissionRefusal::QueueFull),
            Err(fair::Refusal::OverShare) => refused(AdmissionRefusal::TenantShare),
        }
    }

    /// Stops accepting frames, answers every queued frame, and joins the
    /// threads.
    pub fn shutdown(&self) {
        self.queue.close();
        self.shared.sleepers.wake_all();
        let threads = std::mem::take(&mut *self.threads.lock().expect("lock"));
        for t in threads {
            let _ = t.join();
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Pairs with the producers' fence after their push (see
        // `after_push`): this store is ordered before the drain's pops
        // without relying on the queue's own fences.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.answer_leftovers();
    }

    /// After a frame was pushed into the ingress queue.
    fn after_push(&self) {
        // Wake a parked worker only when one is free: with every worker
        // busy it could not take the frame, and the worker that frees up
        // drains the queue before it parks. The fence pairs with the
        // workers' SeqCst `fetch_add` on `idle_workers` (store-load
        // ordering): either this load sees the freed worker, or that worker
        // looks at the queue after the push and finds the frame. Among free
        // workers, the parked-list protocol in [`idle`] loses no wake-up.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.shared.idle_workers.load(Ordering::SeqCst) > 0 {
            self.wake_a_worker();
        }
        // The same fence orders the push before this load against
        // `shutdown`'s store and drain: either the drain finds the frame or
        // this sees the workers gone and answers it.
        if self.shared.stopped.load(Ordering::SeqCst) {
            self.answer_leftovers();
        }
    }

    /// Wakes a parked worker for the frame just queued. At once with
    /// batches of one, with a full batch admitted and not yet taken, or
    /// outside a Tokio runtime. Otherwise the wake-up waits until the
    /// runtime thread that queued the frame has run the tasks that were
    /// ready: a task awaits Tokio's `yield_now`, which resumes it once the
    /// thread runs out of ready tasks or next looks at its sockets and
    /// timers (every 61 scheduler ticks while it has work). One wake-up
    /// then hands a worker every frame the thread's sessions queued
    /// meanwhile, instead of one thread switch per frame. A frame that
    /// meets an idle gateway loses only the time that task takes to run.
    ///
    /// What is put off is per runtime thread (see [`PUT_OFF`]): a runtime
    /// that is not being driven holds back only the frames queued from its
    /// own thread, not those of other threads.
    ///
    /// No wake-up is lost: the put-off one is done by the task's
    /// [`PutOffWake`], when the task ends or is dropped unpolled (a runtime
    /// shutting down). A frame this thread queues while one is pending is
    /// covered by it: the task clears the flag with a read-modify-write,
    /// which reads the latest value, after that frame's push.
    fn wake_a_worker(&self) {
        let at_once = self.max_batch <= 1 || self.admission.queued() >= self.max_batch;
        let runtime = if at_once {
            None
        } else {
            tokio::runtime::Handle::try_current().ok()
        };
        let put_off = runtime.and_then(|rt| {
            PUT_OFF
                .try_with(|p| put_off_here(&mut p.borrow_mut(), &self.shared))
                .ok()
                .map(|flag| (rt, flag))
        });
        let Some((runtime, flag)) = put_off else {
            self.shared.sleepers.wake_one_after_publish();
            return;
        };
        // Already put off on this thread: that task covers this frame.
        let Some(flag) = flag else { return };
        let wake = PutOffWake {
            shared: self.shared.clone(),
            flag,
        };
        runtime.spawn(async move {
            tokio::task::yield_now().await;
            drop(wake);
        });
    }

    /// Answers what is still in the ingress queue once the workers are
    /// gone: "shutting down" (each item is popped once, so answered once).
    fn answer_leftovers(&self) {
        while let Some(item) = self.queue.pop() {
            self.admission.release(&item.tenant);
            let _ = item.reply.send(Err(GatewayError::NotReady(
                "the gateway is shutting down".into(),
            )));
        }
    }
}

impl Drop for ModelPipeline {
    fn drop(&mut self) {
        self.queue.close();
        self.shared.sleepers.wake_all();
    }
}

thread_local! {
    /// The pipelines this thread has put a worker's wake-up off for, each
    /// with its flag: set while the wake-up is pending. The `Weak` keeps
    /// the pipeline's allocation, so its address is not reused while the
    /// entry lasts; entries of pipelines gone are dropped as others come.
    static PUT_OFF: std::cell::RefCell<Vec<(std::sync::Weak<Shared>, Arc<AtomicBool>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Sets this thread's put-off flag for `shared`: the flag, when it was not
/// set (the caller spawns the task that does the wake-up); `None` when a
/// wake-up is pending already.
fn put_off_here(
    entries: &mut Vec<(std::sync::Weak<Shared>, Arc<AtomicBool>)>,
    shared: &Arc<Shared>,
) -> Option<Arc<AtomicBool>> {
    let found = entries
        .iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(shared)))
        .map(|(_, f)| f.clone());
    let flag = found.unwrap_or_else(|| {
        entries.retain(|(w, _)| w.strong_count() > 0);
        let f = Arc::new(AtomicBool::new(false));
        entries.push((Arc::downgrade(shared), f.clone()));
        f
    });
    (!flag.swap(true, Ordering::SeqCst)).then_some(flag)
}

/// A worker's wake-up put off by [`ModelPipeline::wake_a_worker`]: done
/// when this is dropped, by the task that holds it or with it.
struct PutOffWake {
    shared: Arc<Shared>,
    flag: Arc<AtomicBool>,
}

impl Drop for PutOffWake {
    fn drop(&mut self) {
        if self.flag.swap(false, Ordering::SeqCst) {
            self.shared.sleepers.wake_one_after_publish();
        }
    }
}

/// Yields a free worker tries before parking when the queue is empty, with
/// batches of one. Under load the next frame follows within microseconds,
/// and parking costs two context switches (a park and the producer's
/// wake-up). Gateway-only A/B with the batcher thread (synthetic backend,
/// WebSocket, 2 cores, two rounds): 4 yields 28.3–28.4 µs of gateway CPU
/// per frame, 32 yields 33.0–34.5, none 32.7–33.2. With larger batches a
/// worker parks at once: its wake-up is put off until the runtime thread
/// has queued what it had ready ([`ModelPipeline::wake_a_worker`]), and a
/// yielding worker would take the frames one at a time before that.
const IDLE_YIELDS: usize = 4;

/// Longest a free worker parks before it looks at the queue again. Nothing
/// relies on it ([`idle`] loses no wake-up, nor does a put-off one while
/// its runtime is driven or dropped); it bounds the cost of a bug, or of a
/// runtime that queued a frame and then is neither driven nor dropped.
/// (A minute in unit tests, so a lost wake-up fails the tests' limits.)
const IDLE_PARK: Duration = if cfg!(test) {
    Duration::from_secs(60)
} else {
    Duration::from_millis(100)
};

/// Forms the calling worker's next batch: moves what the ingress queue holds
/// into the tenants' FIFOs (the scheduler must see every tenant waiting to
/// be fair among them), decides by the batch policy, and parks while there
/// is nothing to run. `None` once the queue is closed and every frame has
/// been taken.
fn next_batch(ctx: &WorkerContext) -> Option<Batch> {
    let shared = &*ctx.shared;
    let queue = &*ctx.queue;
    loop {
        // Nothing under this lock panics; should something, the scheduler's
        // state is still whole (a FIFO per tenant), so carry on with it.
        let mut pending = shared
            .former
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(item) = queue.pop() {
            let (key, weight, at) = (item.tenant.key(), item.tenant.weight(), item.enqueued_at);
            pending.push(key, weight, at, item);
        }
        let closed = queue.is_closed();
        if closed && pending.is_empty() && queue.is_empty() {
            shared.handed_on.fetch_add(1, Ordering::SeqCst);
            drop(pending);
            // The others may be parked; they stop too.
            shared.sleepers.wake_all();
            return None;
        }
        let seen = shared.handed_on.load(Ordering::SeqCst);
        let handed_on = || shared.handed_on.load(Ordering::SeqCst) != seen;
        let now = Instant::now();
        let idle = shared.idle_workers.load(Ordering::Acquire);
        let policy = BatchPolicy {
            solo: shared.solo_ready.load(Ordering::Acquire),
            ..ctx.policy
        };
        let decision = policy.decide(now, pending.len(), pending.oldest(), idle, ctx.workers);
        let (n, solo) = match decision {
            Decision::Dispatch(n) => (n, false),
            Decision::Solo => (1, true),
            // Stopping: no batch-mates will come.
            Decision::WaitUntil(_) if closed => (pending.len().min(ctx.policy.max_batch), false),
            Decision::WaitUntil(t) => {
                drop(pending);
                // Batch-mates may come; a producer wakes us (see
                // `ModelPipeline::wake_a_worker`).
                shared.sleepers.wait(Some(t), || {
                    !queue.is_empty() || queue.is_closed() || handed_on()
                });
                continue;
            }
            Decision::Idle => {
                let nothing_pending = pending.is_empty();
                drop(pending);
                if idle > 0 && nothing_pending && ctx.policy.max_batch <= 1 {
                    for _ in 0..IDLE_YIELDS {
                        if !queue.is_empty() || queue.is_closed() {
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
                // With frames pending and no worker free (a solo batch holds
                // them all), the worker that frees up forms the next batch
                // and, if it leaves frames behind, bumps `handed_on` and
                // wakes one of us.
                shared.sleepers.wait(Some(now + IDLE_PARK), || {
                    (nothing_pending && (!queue.is_empty() || queue.is_closed())) || handed_on()
                });
                continue;
            }
        };
        // A solo batch holds every worker (workers are taken only under
        // this lock, so `idle == workers` here means all are free).
        let held = if solo { ctx.workers } else { 1 };
        let left_idle = shared.idle_workers.fetch_sub(held, Ordering::AcqRel) - held;
        let mut items: Vec<WorkItem> = Vec::with_capacity(n);
        pending.pop_batch(n, &mut items);
        // Frames left for another free worker: tell the ones on their way
        // to park (under the lock, before the wake-up below takes the
        // parked list: either a worker registered before that and is woken,
        // or it looks at `handed_on` after this and does not park).
        let wake = left_idle > 0 && (!pending.is_empty() || !queue.is_empty());
        if wake {
            shared.handed_on.fetch_add(1, Ordering::SeqCst);
        }
        drop(pending);
        // DRR hands out runs of one tenant's frames: release per run.
        let mut run: Option<(&Arc<TenantShare>, usize)> = None;
        for item in &items {
            match &mut run {
                Some((t, n)) if Arc::ptr_eq(t, &item.tenant) => *n += 1,
                _ => {
                    if let Some((t, n)) = run {
                        ctx.admission.release_n(t, n);
                    }
                    run = Some((&item.tenant, 1));
                }
            }
        }
        if let Some((t, n)) = run {
            ctx.admission.release_n(t, n);
        }
        if wake {
            shared.sleepers.wake_one();
        }
        return Some(Batch { items, solo });
    }
}

struct WorkerContext {
    model: Arc<LoadedModel>,
    shared: Arc<Shared>,
    queue: Arc<IngressQueue<WorkItem>>,
    admission: Arc<FairAdmission>,
    policy: BatchPolicy,
    factory: BackendFactory,
    workers: usize,
    preprocess: PreprocessDevice,
    cuda_device: usize,
    /// Make the solo session with this many threads (worker 0 only).
    solo_threads: Option<usize>,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

fn run_worker(ctx: WorkerContext) {
    let spec = &ctx.model.spec;
    let chw = 3 * spec.input.width as usize * spec.input.height as usize;
    let mut backend = match (ctx.factory)(&ctx.model) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(model = %spec.name, error = %e, "cannot load backend");
            *ctx.shared.failure.lock().expect("lock") = Some(e.to_string());
            return;
        }
    };
    *ctx.shared.backend_kind.lock().expect("lock") = Some(backend.kind());
    let max_batch = ctx.policy.max_batch;
    let mut pre = match ctx.preprocess {
        PreprocessDevice::Cpu => Pre::Cpu(Preprocessor::default(), RgbImage::default()),
        PreprocessDevice::Cuda => {
            // A panic in the driver bindings (a missing symbol in an old
            // driver) is a failure to start, not a worker that never reports.
            let made = std::panic::catch_unwind(|| {
                CudaPreprocess::new(&spec.input, max_batch, ctx.cuda_device)
            })
            .unwrap_or_else(|_| {
                Err(GatewayError::NotReady(cuda::unavailable_message(
                    &"the CUDA driver bindings panicked (see the log)",
                )))
            });
            match made {
                Ok(c) => {
                    tracing::info!(model = %spec.name, device = c.device_name(), arch = %c.arch(), "CUDA preprocessing ready");
                    Pre::Cuda(Box::new(c))
                }
                Err(e) => {
                    tracing::error!(model = %spec.name, error = %e, "cannot start CUDA preprocessing");
                    *ctx.shared.failure.lock().expect("lock") = Some(e.to_string());
                    return;
                }
            }
        }
    };
    let mut input = vec![0f32; chw * max_batch];
    // Warm up at batch 1 and the largest batch so the first real frames do
    // not pay for lazy allocation inside the runtime. The largest batch's
    // time is the first service-time estimate for admission, so a burst
    // right after start is admitted by what a batch costs, not by a guess.
    for batch in [1, max_batch] {
        let t0 = Instant::now();
        if let Err(e) = backend.infer(&input[..chw * batch], batch, &mut |_| Ok(())) {
            tracing::error!(model = %spec.name, error = %e, "warm-up failed");
            *ctx.shared.failure.lock().expect("lock") = Some(format!("warm-up failed: {e}"));
            return;
        }
        if batch == max_batch {
            ctx.shared.service.record(batch, max_batch, t0.elapsed());
        }
    }
    if let Some(threads) = ctx.solo_threads {
        make_solo(&ctx, backend.as_ref(), threads, &input[..chw]);
    }
    ctx.shared.idle_workers.fetch_add(1, Ordering::SeqCst);
    if ctx.shared.ready_workers.fetch_add(1, Ordering::AcqRel) + 1 == ctx.workers {
        ctx.shared.ready.store(true, Ordering::Release);
        tracing::info!(model = %spec.name, workers = ctx.workers, backend = backend.kind(), "model ready");
    }

    while let Some(batch) = next_batch(&ctx) {
        let solo = batch.solo;
        // A panic in a backend must not take the worker (and, for a solo
        // batch, every worker's slot) with it: the batch's frames are
        // answered `internal` (their one-shot senders drop), and the worker
        // goes on with the next batch.
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut solo_guard;
            let runs_on: &mut dyn Backend = if solo {
                solo_guard = ctx
                    .shared
                    .solo
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                solo_guard
                    .as_mut()
                    .expect("solo batches only once it is ready")
                    .as_mut()
            } else {
                backend.as_mut()
            };
            process_batch(&ctx, runs_on, batch, &mut input, chw, &mut pre);
        }));
        if ran.is_err() {
            tracing::error!(model = %spec.name, solo, "a batch panicked; its frames were answered with an internal error and the worker goes on");
        }
        let held = if solo { ctx.workers } else { 1 };
        // SeqCst: pairs with the fence in `submit_with_deadline`.
        ctx.shared.idle_workers.fetch_add(held, Ordering::SeqCst);
    }
}

/// Makes and warms the pipeline's solo session from `backend`, if it can be
/// widened. A failure only costs the solo path: the workers serve as before.
fn make_solo(ctx: &WorkerContext, backend: &dyn Backend, threads: usize, input: &[f32]) {
    let spec = &ctx.model.spec;
    let made = match backend.solo(&ctx.model, threads) {
        None => return,
        Some(made) => made,
    };
    let warmed = made.and_then(|mut solo| {
        solo.infer(input, 1, &mut |_| Ok(()))?;
        Ok(solo)
    });
    match warmed {
        Ok(solo) => {
            *ctx.shared.solo.lock().expect("lock") = Some(solo);
            ctx.shared.solo_ready.store(true, Ordering::Release);
            tracing::info!(model = %spec.name, threads, "solo session ready");
        }
        Err(e) => {
            tracing::warn!(model = %spec.name, error = %e, "no solo session; lone frames run on a worker's session")
        }
    }
}

struct Prepared {
    item: WorkItem,
    place: preprocess::Placement,
    queue_us: u32,
    decode_us: u32,
    preprocess_us: u32,
}

/// A worker's preprocessing (`pipeline.preprocess`). One per worker thread,
/// on its stack: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Pre {
    /// Frame by frame on this thread, through one decode buffer.
    Cpu(Preprocessor, RgbImage),
    /// One GPU launch per batch.
    Cuda(Box<CudaPreprocess>),
}

/// Decodes `frame` into `rgb`; a decoder panic is the frame's error, not the
/// worker's.
fn decode_frame(frame: &ProbedFrame, rgb: &mut RgbImage) -> Result<(), GatewayError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| decode::decode_rgb(frame, rgb))).unwrap_or_else(
        |_| {
            Err(GatewayError::InvalidImage(
                "the decoder failed on this image".into(),
            ))
        },
    )
}

fn process_batch(
    ctx: &WorkerContext,
    backend: &mut dyn Backend,
    Batch { items: batch, solo }: Batch,
    input: &mut [f32],
    chw: usize,
    pre: &mut Pre,
) {
    let spec = &ctx.model.spec;
    let started = Instant::now();
    let mode = backend.input();
    let pixels = matches!(
        mode,
        BackendInput::Tensor | BackendInput::Encoded { decode: true }
    );
    let mut ready: Vec<Prepared> = Vec::with_capacity(batch.len());
    for item in batch {
        if item.reply.is_closed() {
            // The caller went away; nobody would read the answer.
            continue;
        }
        if item.deadline.is_some_and(|d| started >= d) {
            let _ = item.reply.send(Err(GatewayError::DeadlineExceeded));
            continue;
        }
        let queue_us = micros(started.saturating_duration_since(item.enqueued_at));
        let k = ready.len();
        let t0 = Instant::now();
        // Where the frame lands, and the time its decode and (on the CPU)
        // preprocessing took.
        let prepared = match pre {
            _ if !pixels => Ok((
                preprocess::placement(&spec.input, item.frame.width, item.frame.height).0,
                0,
                0,
            )),
            Pre::Cpu(cpu, rgb) => decode_frame(&item.frame, rgb).map(|()| {
                let t1 = Instant::now();
                let place = cpu.run(rgb, &spec.input, &mut input[k * chw..(k + 1) * chw]);
                (place, micros(t1 - t0), micros(t1.elapsed()))
            }),
            // Preprocessed with the rest of the batch, below.
            Pre::Cuda(gpu) => gpu
                .stage(k, &item.frame, decode_frame)
                .map(|_| (gpu.placement(&item.frame), micros(t0.elapsed()), 0)),
        };
        if let Pre::Cpu(_, rgb) = pre {
            rgb.release_if_large();
        }
        match prepared {
            Ok((place, decode_us, preprocess_us)) => ready.push(Prepared {
                item,
                place,
                queue_us,
                decode_us,
                preprocess_us,
            }),
            Err(e) => {
                let _ = item.reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    if let (true, Pre::Cuda(gpu)) = (pixels, &mut *pre) {
        // One launch for the batch; each frame's preprocess time is the
        // batch's (upload, kernel, copy back), which it waited for.
        let t0 = Instant::now();
        let frames: Vec<&ProbedFrame> = ready.iter().map(|p| &p.item.frame).collect();
        let n = frames.len();
        if let Err(e) = gpu.run(&frames, &mut input[..n * chw]) {
            // The frames are staged: the CPU preprocesses them instead, so
            // a GPU fault costs time, not answers.
            tracing::error!(model = %spec.name, error = %e, frames = n, "CUDA preprocessing failed; this batch is preprocessed on the CPU");
            crate::metrics::cuda_fallback(&spec.name);
            for (k, p) in ready.iter_mut().enumerate() {
                p.place = gpu.run_on_cpu(
                    k,
                    &p.item.frame,
                    &spec.input,
                    &mut input[k * chw..(k + 1) * chw],
                );
            }
        }
        let us = micros(t0.elapsed());
        for p in &mut ready {
            p.preprocess_us = us;
        }
    }
    if let Pre::Cuda(gpu) = pre {
        gpu.release_large_buffers();
    }
    let n = ready.len();
    ctx.shared
        .frames_inferred
        .fetch_add(n as u64, Ordering::Relaxed);
    if solo {
        ctx.shared
            .solo_frames
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    let t_infer = Instant::now();
    let mut infer_us = 0;
    let mut answers: Vec<Option<FrameOutcome>> = (0..n).map(|_| None).collect();
    let run = if mode == BackendInput::Tensor {
        backend.infer(&input[..n * chw], n, &mut |views| {
            infer_us = micros(t_infer.elapsed());
            for (i, p) in ready.iter().enumerate() {
                let t0 = Instant::now();
                let boxes = postprocess::decode(
                    &spec.decoder,
                    (spec.input.width, spec.input.height),
                    views,
                    i,
                    &p.place,
                );
                let post_us = micros(t0.elapsed());
                answers[i] =
                    Some(boxes.map(|boxes| frame_result(ctx, p, boxes, infer_us, post_us, n)));
            }
            Ok(())
        })
    } else {
        let frames: Vec<EncodedFrame<'_>> = ready
            .iter()
            .map(|p| EncodedFrame {
                payload: &p.item.frame.payload,
                width: p.item.frame.width,
                height: p.item.frame.height,
            })
            .collect();
        let mut boxes = Vec::with_capacity(n);
        let run = backend.detect_encoded(&frames, &mut boxes);
        infer_us = micros(t_infer.elapsed());
        if run.is_ok() {
            for ((answer, p), b) in answers.iter_mut().zip(&ready).zip(boxes) {
                *answer = Some(Ok(frame_result(ctx, p, b, infer_us, 0, n)));
            }
        }
        run
    };
    // Counted before any answer leaves: whoever has an answer sees its
    // batch in the metrics.
    crate::metrics::batch_ran(&spec.name, n, started.elapsed(), solo);
    // A solo batch held every worker and ran faster than a worker's session
    // would: it says nothing about the service time under load, which is
    // what admission estimates waits from. Nor does a batch that failed (a
    // backend error or timeout).
    if !solo && run.is_ok() {
        ctx.shared
            .service
            .record(n, ctx.policy.max_batch, started.elapsed());
    }
    for (p, answer) in ready.into_iter().zip(answers) {
        let outcome = match (&run, answer) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(Ok(mut r))) => {
                r.timings.total_us = micros(p.item.received_at.elapsed());
                Ok(r)
            }
            (Ok(()), Some(Err(e))) => Err(e),
            (Ok(()), None) => Err(GatewayError::Internal("backend produced no output".into())),
        };
        // The frame's bytes go first: the submitter's [`Answer`] then holds
        // the last reference and frees them on its own thread.
        let WorkItem { frame, reply, .. } = p.item;
        drop(frame);
        let _ = reply.send(outcome);
    }
}

fn frame_result(
    ctx: &WorkerContext,
    p: &Prepared,
    boxes: Vec<postprocess::RawDetection>,
    infer_us: u32,
    postprocess_us: u32,
    batch: usize,
) -> FrameResult {
    FrameResult {
        width: p.item.frame.width,
        height: p.item.frame.height,
        detections: boxes
            .into_iter()
            .map(|d| Detection {
                class_id: d.class_id,
                label: ctx.model.label(d.class_id),
                score: d.score,
                x1: d.xyxy[0],
                y1: d.xyxy[1],
                x2: d.xyxy[2],
                y2: d.xyxy[3],
            })
            .collect(),
        timings: StageTimings {
            queue_us: p.queue_us,
            decode_us: p.decode_us,
            preprocess_us: p.preprocess_us,
            infer_us,
            postprocess_us,
            total_us: 0,
        },
        batch_size: batch as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::spec::LoadedModel;
    use crate::pipeline::decode::FrameLimits;
    use crate::pipeline::postprocess::RawDetection;

    /// Takes encoded frames; panics on the frames whose payload ends in
    /// `PANIC`, answers the others with no boxes, and records the size of
    /// every batch it gets.
    #[derive(Default)]
    struct Panicky(Arc<Mutex<Vec<usize>>>);

    impl Backend for Panicky {
        fn kind(&self) -> &'static str {
            "panicky"
        }
        fn infer(
            &mut self,
            _: &[f32],
            _: usize,
            _: &mut dyn FnMut(&[crate::backend::TensorView<'_>]) -> Result<(), GatewayError>,
        ) -> Result<(), GatewayError> {
            Ok(())
        }
        fn input(&self) -> BackendInput {
            BackendInput::Encoded { decode: false }
        }
        fn detect_encoded(
            &mut self,
            frames: &[EncodedFrame<'_>],
            out: &mut Vec<Vec<RawDetection>>,
        ) -> Result<(), GatewayError> {
            self.0.lock().unwrap().push(frames.len());
            for f in frames {
                assert!(!f.payload.ends_with(b"PANIC"), "the test's panic");
                out.push(Vec::new());
            }
            Ok(())
        }
    }

    const LIMITS: FrameLimits = FrameLimits {
        max_pixels: 40_000_000,
        max_side: 16_384,
    };

    /// A ready one-worker pipeline over [`Panicky`].
    fn panicky_pipeline(max_batch: usize) -> Arc<ModelPipeline> {
        let config = PipelineConfig {
            workers: Some(1),
            max_batch: Some(max_batch),
            ..PipelineConfig::default()
        };
        let factory: BackendFactory =
            Arc::new(|_| Ok(Box::new(Panicky::default()) as Box<dyn Backend>));
        let pipeline = ModelPipeline::start(LoadedModel::bundled().unwrap(), &config, factory);
        assert_eq!(
            pipeline.wait_ready(Duration::from_secs(30)),
            Readiness::Ready
        );
        pipeline
    }

    #[test]
    fn a_backend_panic_answers_its_batch_and_the_worker_goes_on() {
        let pipeline = panicky_pipeline(1);
        let tenant = pipeline.tenant("t", 1);
        let limits = LIMITS;
        let dog = include_bytes!("../../tests/data/dog.jpg");
        let frame = |suffix: &[u8]| {
            let mut payload = dog.to_vec();
            payload.extend_from_slice(suffix);
            decode::probe(None, 0, 0, payload.into(), &limits).unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // A minute: far beyond any batch here; a dead worker never answers.
        let answer =
            |rx| rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), rx).await });
        for round in 0..3 {
            let bad = pipeline
                .submit(&tenant, frame(b"PANIC"), Instant::now())
                .unwrap();
            assert!(
                answer(bad).expect("answered").is_err(),
                "round {round}: the panicked frame is answered (its sender dropped)"
            );
            let good = pipeline
                .submit(&tenant, frame(b""), Instant::now())
                .unwrap();
            let result = answer(good)
                .unwrap_or_else(|_| panic!("round {round}: no answer in a minute, the worker died"))
                .expect("answered");
            assert_eq!(result.unwrap().width, 768, "round {round}");
        }
        assert_eq!(pipeline.frames_inferred(), 6);
        pipeline.shutdown();
    }

    /// A frame's bytes are freed by whoever awaited its answer (the
    /// network thread), not by the worker that ran it: see [`Answer`].
    #[test]
    fn a_frame_is_freed_on_the_thread_that_awaited_its_answer() {
        struct Owner(Vec<u8>, Arc<Mutex<Option<std::thread::ThreadId>>>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                *self.1.lock().unwrap() = Some(std::thread::current().id());
            }
        }
        let pipeline = panicky_pipeline(4);
        let tenant = pipeline.tenant("t", 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for round in 0..20 {
            let freed_by = Arc::new(Mutex::new(None));
            let dog = include_bytes!("../../tests/data/dog.jpg").to_vec();
            let payload = bytes::Bytes::from_owner(Owner(dog, freed_by.clone()));
            let frame = decode::probe(None, 0, 0, payload, &LIMITS).unwrap();
            let answer = pipeline.submit(&tenant, frame, Instant::now()).unwrap();
            let result =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), answer).await });
            assert!(matches!(result, Ok(Ok(Ok(_)))), "round {round}: {result:?}");
            assert_eq!(
                *freed_by.lock().unwrap(),
                Some(std::thread::current().id()),
                "round {round}: the frame was freed on another thread (the worker)"
            );
        }
        pipeline.shutdown();
    }

    /// With batches of more than one, a frame queued by a runtime's task
    /// wakes a worker once the runtime thread has run what it had ready,
    /// so the frames it queued meanwhile go as one batch (one thread switch
    /// for the lot). What is put off on one thread does not hold back
    /// another's frames, and is not lost when its runtime goes away before
    /// it runs. (A lost wake-up would leave the worker parked for
    /// [`IDLE_PARK`], a minute here: the answers' 10 s limits fail first.)
    #[test]
    fn frames_queued_in_one_go_wake_a_worker_once_for_the_lot() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let config = PipelineConfig {
            workers: Some(1),
            max_batch: Some(8),
            ..PipelineConfig::default()
        };
        let recorded = batches.clone();
        let factory: BackendFactory =
            Arc::new(move |_| Ok(Box::new(Panicky(recorded.clone())) as Box<dyn Backend>));
        let pipeline = ModelPipeline::start(LoadedModel::bundled().unwrap(), &config, factory);
        assert_eq!(
            pipeline.wait_ready(Duration::from_secs(30)),
            Readiness::Ready
        );
        let tenant = pipeline.tenant("t", 1);
        let dog = bytes::Bytes::from_static(include_bytes!("../../tests/data/dog.jpg"));
        let frame = || decode::probe(None, 0, 0, dog.clone(), &LIMITS).unwrap();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let answered = |rt: &tokio::runtime::Runtime, answer: Answer| {
            let r =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), answer).await });
            matches!(r, Ok(Ok(Ok(_))))
        };
        // Each step starts with the worker parked.
        let parked = || {
            let t0 = Instant::now();
            while pipeline.shared.sleepers.parked() == 0 {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "the worker never parked"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let rt = runtime();
        parked();
        let answers = rt.block_on(async {
            let mut answers = Vec::new();
            for _ in 0..5 {
                answers.push(pipeline.submit(&tenant, frame(), Instant::now()).unwrap());
                // Far longer than a wake-up takes: a worker woken at once
                // would take this frame alone.
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(
                pipeline.frames_inferred(),
                0,
                "a worker ran a frame before the task let the runtime go on"
            );
            answers
        });
        for a in answers {
            assert!(answered(&rt, a), "one of the five was not answered");
        }
        assert_eq!(*batches.lock().unwrap(), vec![5], "one batch for the lot");

        // A runtime not driven after queuing a frame holds back only its
        // own thread's wake-up: a frame queued on another thread wakes the
        // worker, which takes both.
        parked();
        let stuck = runtime();
        let held = stuck
            .block_on(async { pipeline.submit(&tenant, frame(), Instant::now()) })
            .unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let other = runtime();
                    let answer = other
                        .block_on(async { pipeline.submit(&tenant, frame(), Instant::now()) })
                        .unwrap();
                    assert!(
                        answered(&other, answer),
                        "another thread's put-off wake-up held this one back"
                    );
                })
                .join()
                .unwrap();
        });
        assert!(answered(&rt, held));
        drop(stuck);
        assert_eq!(*batches.lock().unwrap(), vec![5, 2]);

        // The runtime ends before the task that does the put-off wake-up
        // runs: dropping that task wakes the worker.
        parked();
        let gone = runtime();
        let answer = gone
            .block_on(async { pipeline.submit(&tenant, frame(), Instant::now()) })
            .unwrap();
        drop(gone);
        assert!(answered(&rt, answer), "the put-off wake-up was lost");
        // Outside a runtime there is nothing to put it off to: at once.
        parked();
        let answer = pipeline.submit(&tenant, frame(), Instant::now()).unwrap();
        assert!(answered(&rt, answer));
        assert_eq!(*batches.lock().unwrap(), vec![5, 2, 1, 1]);
        pipeline.shutdown();
    }

    #[test]
    fn a_frame_pushed_as_the_pipeline_shuts_down_is_answered() {
        // The race: a producer passes the "closed" check, the pipeline
        // closes its queue and its workers stop, then the push lands. The
        // queue's own check is bypassed here to land it at each point.
        let pipeline = panicky_pipeline(4);
        let tenant = pipeline.tenant("t", 1);
        let limits = LIMITS;
        let dog = bytes::Bytes::from_static(include_bytes!("../../tests/data/dog.jpg"));
        let item = || {
            let (tx, rx) = oneshot::channel();
            let item = WorkItem {
                frame: decode::probe(None, 0, 0, dog.clone(), &limits).unwrap(),
                tenant: tenant.clone(),
                received_at: Instant::now(),
                enqueued_at: Instant::now(),
                reply: tx,
                deadline: None,
            };
            (item, rx)
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let answer = |rx: oneshot::Receiver<FrameOutcome>| {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), rx).await })
        };
        // Landed after the close, while the worker may still run: the
        // worker or the shutdown's drain answers it.
        pipeline.queue.close();
        let (a, rx_a) = item();
        assert!(pipeline.queue.push_ignoring_close(a));
        pipeline.after_push();
        pipeline.shutdown();
        assert!(matches!(answer(rx_a), Ok(Ok(_))), "never answered");
        // Landed after the workers stopped and the drain ran: the producer
        // sees it and answers "shutting down".
        let (b, rx_b) = item();
        assert!(pipeline.queue.push_ignoring_close(b));
        pipeline.after_push();
        match answer(rx_b) {
            Ok(Ok(Err(GatewayError::NotReady(m)))) => assert!(m.contains("shutting down"), "{m}"),
            other => panic!("expected 'shutting down', got {other:?}"),
        }
        assert!(pipeline.queue.is_empty());
    }
}
