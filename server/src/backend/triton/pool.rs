//! The connections to the inference servers, shared by every inference
//! worker: one gRPC client per connection, a background readiness check per
//! endpoint, and calls with deadlines and retries on `UNAVAILABLE`.
//!
//! Inference workers are plain OS threads with no async runtime, so the pool
//! owns a small dedicated multi-thread tokio runtime (`runtime_threads`,
//! default 2, threads named `framegate-triton`). A worker blocks on it for the
//! length of one call; connections, the health task and protobuf work live
//! on it, away from the gateway's own HTTP/WebSocket runtime, so a slow
//! inference tier cannot stall the transports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use super::proto::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ServerReadyRequest,
};
use super::select::{EndpointHealth, EndpointState};
use super::TritonError;
use crate::config::TritonConfig;

type Client = GrpcInferenceServiceClient<Channel>;

/// What the gateway needs of a served model's metadata: the problems with
/// `meta`, one line each (none: it fits). [`super::metadata::check`] bound
/// to a model's `model.toml`.
pub type MetadataCheck = Arc<dyn Fn(&ModelMetadataResponse) -> Vec<String> + Send + Sync>;

/// A model the readiness checks include.
#[derive(Clone)]
struct Watched {
    name: String,
    version: String,
    /// Judges the metadata of an endpoint that was not ready (or not yet
    /// checked against this model): one serving another model under the
    /// same name is a misfit, out of rotation.
    fits: MetadataCheck,
}

/// The models the readiness checks include, and how far each endpoint's
/// metadata was checked.
struct Watchlist {
    models: Vec<Watched>,
    /// Goes up with each model added.
    generation: u64,
    /// Per endpoint: the generation of the list whose metadata it last
    /// passed. Behind `generation`, its metadata is checked again.
    verified: Vec<u64>,
}

/// One configured server.
struct Server {
    url: String,
    /// `connections_per_endpoint` clients, each its own HTTP/2 connection.
    clients: Vec<Client>,
}

/// Connections to every configured endpoint, with their health.
pub struct TritonPool {
    config: TritonConfig,
    servers: Arc<Vec<Server>>,
    health: Arc<Mutex<EndpointHealth>>,
    /// Models whose readiness (and metadata) the health check includes.
    watched: Arc<Mutex<Watchlist>>,
    turn: AtomicUsize,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for TritonPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.servers.iter().map(|s| s.url.as_str()).collect();
        f.debug_struct("TritonPool")
            .field("endpoints", &urls)
            .finish()
    }
}

impl Drop for TritonPool {
    fn drop(&mut self) {
        // The pool may be dropped on an async thread (the gateway's own
        // runtime): a blocking shutdown would panic there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    let msg = s.message();
    if msg.is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {msg}", s.code())
    }
}

/// Whether an `UNAVAILABLE` came from the connection (refused, reset, a
/// keep-alive ping unanswered: the endpoint cannot be reached, tonic keeps
/// the transport error as the status's source) rather than from the server,
/// which answers `UNAVAILABLE` itself when its queue is full ("Exceeds
/// maximum queue size"): a busy server is not a dead one, and taking it out
/// of rotation would pile its load onto the others.
fn connection_failed(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// Why a readiness check failed.
enum CheckFailed {
    /// Not reachable, not ready, or no answer in time.
    Down(String),
    /// Ready, with a model that does not fit `model.toml`.
    Misfit(String),
}

impl From<String> for CheckFailed {
    fn from(reason: String) -> Self {
        Self::Down(reason)
    }
}

/// One call's answer within `deadline`, or why not.
async fn within<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(s)) => Err(status_text(&s)),
        Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
    }
}

/// Readiness of one server: `ServerReady`, then `ModelReady` for each
/// model and, when `verify` (the endpoint was not ready, so it may have
/// come back with another model, or was not checked against every model
/// yet), its metadata against what the gateway sends and reads.
async fn check_ready(
    mut client: Client,
    models: Vec<Watched>,
    verify: bool,
    deadlines: CheckDeadlines,
) -> Result<(), CheckFailed> {
    let ready = within(deadlines.ready, client.server_ready(ServerReadyRequest {}))
        .await?
        .ready;
    if !ready {
        return Err(CheckFailed::Down("server not ready".into()));
    }
    for Watched {
        name,
        version,
        fits,
    } in models
    {
        let request = ModelReadyRequest {
            name: name.clone(),
            version: version.clone(),
        };
        let ready = within(deadlines.ready, client.model_ready(request))
            .await
            .map_err(|e| format!("model {name:?}: {e}"))?
            .ready;
        if !ready {
            return Err(CheckFailed::Down(format!("model {name:?} not ready")));
        }
        if !verify {
            continue;
        }
        let request = ModelMetadataRequest {
            name: name.clone(),
            version,
        };
        let meta = within(deadlines.verify, client.model_metadata(request))
            .await
            .map_err(|e| format!("model {name:?} metadata: {e}"))?;
        let problems = fits(&meta);
        if !problems.is_empty() {
            return Err(CheckFailed::Misfit(format!(
                "model {name:?} does not fit its model.toml: {}",
                problems.join("; ")
            )));
        }
    }
    Ok(())
}

/// Deadlines of a readiness check's calls: `ready` for `ServerReady` and
/// `ModelReady` (small answers), `verify` for `ModelMetadata` (a server
/// busy with batches may answer that late).
#[derive(Clone, Copy)]
struct CheckDeadlines {
    ready: Duration,
    verify: Duration,
}

/// One round of readiness checks on every server, concurrently. An endpoint
/// that was not ready, or not checked against every watched model yet, has
/// its models' metadata checked.
async fn check_all(
    servers: &[Server],
    health: &Mutex<EndpointHealth>,
    watched: &Mutex<Watchlist>,
    deadlines: CheckDeadlines,
) {
    let (models, generation, verify, failures) = {
        let w = watched.lock().expect("lock");
        let h = health.lock().expect("lock");
        let verify: Vec<bool> = (0..servers.len())
            .map(|i| *h.state(i) != EndpointState::Ready || w.verified[i] < w.generation)
            .collect();
        let failures: Vec<u64> = (0..servers.len()).map(|i| h.failures(i)).collect();
        (w.models.clone(), w.generation, verify, failures)
    };
    let checks = servers
        .iter()
        .zip(&verify)
        .map(|(s, &v)| check_ready(s.clients[0].clone(), models.clone(), v, deadlines));
    let results = futures_util::future::join_all(checks).await;
    let mut w = watched.lock().expect("lock");
    let mut h = health.lock().expect("lock");
    for (i, r) in results.into_iter().enumerate() {
        let url = &servers[i].url;
        let changed = match r {
            // A pass counts only if nothing overtook the round: no failure
            // reported meanwhile (a call failing as the server restarts,
            // perhaps with another model) and no model added since.
            Ok(()) if verify[i] && w.generation == generation && h.failures(i) == failures[i] => {
                w.verified[i] = generation;
                h.report(i, Ok(()))
            }
            // A pass without the metadata changes nothing: the endpoint was
            // ready, and if a call failed meanwhile it stays down until a
            // round checks its metadata. An overtaken pass neither: the
            // next round checks again.
            Ok(()) => false,
            Err(CheckFailed::Down(reason)) => h.report(i, Err(reason)),
            Err(CheckFailed::Misfit(reason)) => h.report_misfit(i, reason),
        };
        if changed {
            match h.state(i) {
                EndpointState::Ready => {
                    tracing::info!(endpoint = %url, "inference endpoint ready again")
                }
                EndpointState::Down { reason } => {
                    tracing::warn!(endpoint = %url, %reason, "inference endpoint not ready; skipped until it recovers")
                }
                EndpointState::Misfit { reason } => {
                    tracing::warn!(endpoint = %url, %reason, "inference endpoint serves a model that does not fit; skipped until it does")
                }
            }
        }
    }
}

impl TritonPool {
    /// Opens the connections, starts the health checks, and waits up to
    /// `startup_timeout_ms` for at least one endpoint to be ready.
    pub fn connect(config: &TritonConfig) -> Result<Arc<Self>, TritonError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.runtime_threads)
            .thread_name("framegate-triton")
            .enable_all()
            .build()
            .map_err(TritonError::Runtime)?;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let mut servers = Vec::new();
        {
            // Lazy channels spawn their connection task on the current runtime.
            let _enter = runtime.enter();
            for url in &config.endpoints {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| TritonError::Endpoint {
                        endpoint: url.clone(),
                        message: e.to_string(),
                    })?
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    // Batches are megabytes: HTTP/2's default 64 KiB windows
                    // would cost a round trip per 64 KiB.
                    .initial_stream_window_size(Some(16 << 20))
                    .initial_connection_window_size(Some(64 << 20));
                let clients = (0..config.connections_per_endpoint)
                    .map(|_| {
                        GrpcInferenceServiceClient::new(endpoint.connect_lazy())
                            .max_decoding_message_size(config.max_message_bytes)
                            .max_encoding_message_size(config.max_message_bytes)
                    })
                    .collect();
                servers.push(Server {
                    url: url.clone(),
                    clients,
                });
            }
        }
        let pool = Arc::new(Self {
            config: config.clone(),
            servers: Arc::new(servers),
            health: Arc::new(Mutex::new(EndpointHealth::new(config.endpoints.len()))),
            watched: Arc::new(Mutex::new(Watchlist {
                models: Vec::new(),
                generation: 0,
                verified: vec![0; config.endpoints.len()],
            })),
            turn: AtomicUsize::new(0),
            runtime: Some(runtime),
        });
        let started = Instant::now();
        let startup = Duration::from_millis(config.startup_timeout_ms);
        loop {
            pool.block_on(check_all(
                &pool.servers,
                &pool.health,
                &pool.watched,
                pool.check_deadlines(),
            ));
            if pool.health.lock().expect("lock").any_ready() {
                break;
            }
            if started.elapsed() >= startup {
                return Err(TritonError::NoReadyEndpoint {
                    waited_ms: config.startup_timeout_ms,
                    endpoints: pool.describe_health(),
                });
            }
            std::thread::sleep(Duration::from_millis(200).min(startup));
        }
        pool.spawn_health_task();
        Ok(pool)
    }

    fn runtime(&self) -> &Runtime {
        self.runtime
            .as_ref()
            .expect("runtime lives as long as the pool")
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime().block_on(f)
    }

    fn spawn_health_task(self: &Arc<Self>) {
        let (servers, health, watched) = (
            self.servers.clone(),
            self.health.clone(),
            self.watched.clone(),
        );
        let interval = Duration::from_millis(self.config.health_interval_ms);
        let deadlines = self.check_deadlines();
        self.runtime().spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                check_all(&servers, &health, &watched, deadlines).await;
            }
        });
    }

    /// Readiness within `connect_timeout_ms`; metadata, which a server busy
    /// with other clients' batches may answer late, as long as an inference
    /// call (`timeout_ms`) if that is longer.
    fn check_deadlines(&self) -> CheckDeadlines {
        let ready = Duration::from_millis(self.config.connect_timeout_ms);
        CheckDeadlines {
            ready,
            verify: ready.max(Duration::from_millis(self.config.timeout_ms)),
        }
    }

    /// Every endpoint with its state, one per line, for error messages.
    pub fn describe_health(&self) -> String {
        let h = self.health.lock().expect("lock");
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| match h.state(i) {
                EndpointState::Ready => format!("{}: ready", s.url),
                EndpointState::Down { reason } | EndpointState::Misfit { reason } => {
                    format!("{}: {reason}", s.url)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The configured endpoints that are ready now.
    pub fn ready_endpoints(&self) -> Vec<String> {
        let h = self.health.lock().expect("lock");
        self.servers
            .iter()
            .enumerate()
            .filter(|(i, _)| *h.state(*i) == EndpointState::Ready)
            .map(|(_, s)| s.url.clone())
            .collect()
    }

    /// Adds a model to the readiness checks, with `fits` judging its
    /// metadata whenever an endpoint comes back (one serving something else
    /// under the name is a misfit, never called, with the problems as its
    /// reason), and returns its metadata from every ready endpoint (URL,
    /// metadata), for validation now. Every endpoint is checked against
    /// the grown list by the next round.
    pub fn watch_model(
        &self,
        name: &str,
        version: &str,
        fits: MetadataCheck,
    ) -> Result<Vec<(String, ModelMetadataResponse)>, TritonError> {
        {
            // Once per model: every inference worker binds its own backend
            // (same model.toml, same check).
            let mut w = self.watched.lock().expect("lock");
            if !w
                .models
                .iter()
                .any(|m| m.name == name && m.version == version)
            {
                w.models.push(Watched {
                    name: name.to_string(),
                    version: version.to_string(),
                    fits,
                });
                w.generation += 1;
            }
        }
        let deadline = self.check_deadlines().verify;
        let mut out = Vec::new();
        for url in self.ready_endpoints() {
            let server = self
                .servers
                .iter()
                .find(|s| s.url == url)
                .expect("ready endpoint is configured");
            let mut client = server.clients[0].clone();
            let call = async {
                let ready = client
                    .model_ready(ModelReadyRequest {
                        name: name.into(),
                        version: version.into(),
                    })
                    .await?
                    .into_inner()
                    .ready;
                if !ready {
                    return Ok(None);
                }
                let meta = client
                    .model_metadata(ModelMetadataRequest {
                        name: name.into(),
                        version: version.into(),
                    })
                    .await?
                    .into_inner();
                Ok::<_, tonic::Status>(Some(meta))
            };
            let result = self
                .block_on(async { tokio::time::timeout(deadline, call).await })
                .map_err(|_| TritonError::Call {
                    endpoint: url.clone(),
                    message: format!("no metadata within {} ms", deadline.as_millis()),
                })?;
            match result {
                Ok(Some(meta)) => out.push((url, meta)),
                Ok(None) => {
                    return Err(TritonError::ModelNotReady {
                        endpoint: url,
                        model: name.into(),
                    })
                }
                Err(s) => {
                    return Err(TritonError::Call {
                        endpoint: url,
                        message: format!("model {name:?}: {}", status_text(&s)),
                    })
                }
            }
        }
        if out.is_empty() {
            // Every endpoint went down since start-up: nothing to check against.
            return Err(TritonError::NoEndpointForModel {
                model: name.into(),
                endpoints: self.describe_health(),
            });
        }
        Ok(out)
    }

    /// One inference call: to a ready endpoint, in turn; on `UNAVAILABLE` the
    /// call is retried on another (up to `retries` more attempts), and the
    /// endpoint is marked down when its connection failed (not when the
    /// server itself said it is too busy).
    pub fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, TritonError> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut tried: Vec<usize> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        for attempt in 0..=self.config.retries {
            let picked = self.health.lock().expect("lock").pick(turn, &tried);
            let i = match picked {
                Some(i) => i,
                None => {
                    // Every endpoint failed once: start over, after a pause.
                    tried.clear();
                    std::thread::sleep(backoff);
                    backoff *= 2;
                    match self.health.lock().expect("lock").pick(turn, &tried) {
                        Some(i) => i,
                        None => break,
                    }
                }
            };
            tried.push(i);
            let server = &self.servers[i];
            let mut client =
                server.clients[(turn / self.servers.len().max(1)) % server.clients.len()].clone();
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(timeout);
            let outcome = self
                .block_on(async { tokio::time::timeout(timeout, client.model_infer(req)).await });
            match outcome {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if s.code() == Code::Unavailable => {
                    let text = status_text(&s);
                    if connection_failed(&s) {
                        tracing::warn!(endpoint = %server.url, attempt, error = %text, "inference endpoint unreachable; marked down, retrying elsewhere");
                        self.health
                            .lock()
                            .expect("lock")
                            .report(i, Err(text.clone()));
                    } else {
                        tracing::warn!(endpoint = %server.url, attempt, error = %text, "inference server busy; retrying elsewhere");
                    }
                    failures.push(format!("{}: {text}", server.url));
                }
                Ok(Err(s)) => {
                    return Err(TritonError::Call {
                        endpoint: server.url.clone(),
                        message: status_text(&s),
                    })
                }
                Err(_) => {
                    return Err(TritonError::Call {
                        endpoint: server.url.clone(),
                        message: format!(
                            "DeadlineExceeded: no answer within {} ms (backend.triton.timeout_ms)",
                            timeout.as_millis()
                        ),
                    })
                }
            }
        }
        Err(TritonError::Unavailable {
            attempts: failures.len(),
            failures: failures.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_server_is_not_a_dead_one() {
        // What Triton answers when its queue is full: the server's own
        // status, sent in the trailers.
        assert!(!connection_failed(&tonic::Status::unavailable(
            "Exceeds maximum queue size"
        )));
        // A connection that cannot be made: nothing listens on port 1.
        let channel = Endpoint::from_static("http://127.0.0.1:1")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let err = Client::new(channel)
            .model_infer(ModelInferRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(connection_failed(&err), "{err:?}");
    }
}
