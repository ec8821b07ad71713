//! The assembled gateway: configuration, authentication and one pipeline per
//! model, shared by every transport.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::backend::onnx::{OnnxBackend, OnnxThreads};
use crate::backend::spec::LoadedModel;
use crate::config::Config;
use crate::error::GatewayError;
use crate::pipeline::decode::FrameLimits;
use crate::pipeline::{BackendFactory, ModelPipeline, Readiness};

/// Everything a transport needs.
#[derive(Debug)]
pub struct Gateway {
    /// The validated configuration.
    pub config: Config,
    /// Credential checks.
    pub auth: Authenticator,
    models: BTreeMap<String, Arc<ModelPipeline>>,
    default_model: String,
    /// Limits applied before decoding.
    pub frame_limits: FrameLimits,
    /// Streaming sessions, by resume token.
    pub sessions: Arc<crate::session::SessionRegistry>,
    /// Usage metering and budgets (set with [`Gateway::with_metering`]).
    pub metering: Option<Arc<crate::metering::Metering>>,
    /// Rate limits (`[ratelimit]`, limits from `[plans]`).
    pub ratelimit: Arc<crate::ratelimit::RateLimiter>,
    /// The WebTransport endpoint browsers are told about (set with
    /// [`Gateway::with_webtransport`]); `None` while it is off.
    pub webtransport: Option<crate::transport::webtransport::WebTransportInfo>,
    /// The request-body bytes open HTTP requests may hold together
    /// (`http.max_body_bytes_in_flight`), shared by the HTTP and HTTPS
    /// listeners.
    pub body_budget: crate::transport::BodyBudget,
}

/// The ONNX Runtime CPU backend factory.
pub fn onnx_factory(threads: OnnxThreads) -> BackendFactory {
    Arc::new(move |model: &LoadedModel| {
        OnnxBackend::with_threads(model, threads)
            .map(|b| Box::new(b) as Box<dyn crate::backend::Backend>)
    })
}

/// The remote Triton / KServe v2 backend factory: every worker shares
/// `pool`'s connections; each checks the server's model metadata first.
pub fn triton_factory(
    pool: Arc<crate::backend::triton::pool::TritonPool>,
    config: &crate::config::TritonConfig,
    max_batch: usize,
) -> BackendFactory {
    let (name, version) = (config.model_name.clone(), config.model_version.clone());
    Arc::new(move |model: &LoadedModel| {
        crate::backend::triton::TritonBackend::new(
            pool.clone(),
            model,
            name.as_deref(),
            &version,
            max_batch,
        )
        .map(|b| Box::new(b) as Box<dyn crate::backend::Backend>)
        .map_err(GatewayError::from)
    })
}

/// The synthetic backend factory (`backend = "synthetic"`).
pub fn synthetic_factory(config: crate::backend::synthetic::SyntheticConfig) -> BackendFactory {
    Arc::new(move |model: &LoadedModel| {
        Ok(Box::new(crate::backend::synthetic::SyntheticBackend::new(
            config.clone(),
            model.labels.len(),
        )) as Box<dyn crate::backend::Backend>)
    })
}

impl Gateway {
    /// Loads the models and starts their pipelines (they warm up in the
    /// background; see [`Gateway::readiness`]). `config` as the binary
    /// runs it has been through [`Config::resolve_defaults`] (after the
    /// file and the command line); left unset, `pipeline.max_batch` is 8
    /// whatever the backend.
    pub fn start(
        config: Config,
        auth: Authenticator,
        factory: BackendFactory,
    ) -> Result<Arc<Self>, GatewayError> {
        let ratelimit = Arc::new(crate::ratelimit::RateLimiter::from_config(
            &config.ratelimit,
            &config.metering.redis_url,
            Arc::new(crate::session::SystemClock),
        )?);
        let mut loaded = Vec::new();
        if config.models.is_empty() {
            loaded.push((
                None,
                LoadedModel::bundled().map_err(|e| GatewayError::Internal(e.to_string()))?,
            ));
        }
        for m in &config.models {
            let model = LoadedModel::from_spec_file(&m.spec)
                .map_err(|e| GatewayError::NotReady(e.to_string()))?;
            loaded.push((m.name.clone(), model));
        }
        let mut models = BTreeMap::new();
        for (name, mut model) in loaded {
            if let Some(name) = name {
                model.spec.name = name;
            }
            let name = model.spec.name.clone();
            if models.contains_key(&name) {
                return Err(GatewayError::Internal(format!(
                    "model {name:?} is configured twice"
                )));
            }
            let pipeline = ModelPipeline::start(model, &config.pipeline, factory.clone());
            models.insert(name, pipeline);
        }
        let default_model = match &config.default_model {
            Some(d) if models.contains_key(d) => d.clone(),
            Some(d) => return Err(GatewayError::UnknownModel(d.clone())),
            None => models.keys().next().cloned().expect("at least one model"),
        };
        crate::metrics::get().init_models(models.keys().map(String::as_str));
        let frame_limits = FrameLimits {
            max_pixels: config.limits.max_frame_pixels,
            max_side: config.limits.max_frame_side,
        };
        let body_budget = crate::transport::BodyBudget::new(config.http.body_bytes_in_flight());
        Ok(Arc::new(Self {
            config,
            auth,
            models,
            default_model,
            frame_limits,
            sessions: Arc::default(),
            metering: None,
            ratelimit,
            webtransport: None,
            body_budget,
        }))
    }

    /// Attaches metering; call before sharing the gateway.
    pub fn with_metering(
        mut self: Arc<Self>,
        metering: Arc<crate::metering::Metering>,
    ) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("with_metering before the gateway is shared")
            .metering = Some(metering);
        self
    }

    /// Authenticates a credential (see [`Authenticator::authenticate`]) and
    /// applies the tenant's plan budget to the budget caps.
    pub async fn authenticate(
        &self,
        credential: &str,
    ) -> Result<crate::auth::Principal, GatewayError> {
        let p = self.auth.authenticate(credential).await?;
        self.apply_budget(&p).await;
        Ok(p)
    }

    /// [`Gateway::authenticate`] for an `Authorization` header value.
    pub async fn authenticate_header(
        &self,
        header: Option<&str>,
    ) -> Result<crate::auth::Principal, GatewayError> {
        let p = self.auth.authenticate_header(header).await?;
        self.apply_budget(&p).await;
        Ok(p)
    }

    async fn apply_budget(&self, p: &crate::auth::Principal) {
        if let Some(m) = &self.metering {
            m.ensure_budget(&p.tenant, p.limits.budget_frames).await;
        }
    }

    /// Whether `principal` may open a stream on `model` (empty: the
    /// default; `None`: a resume, scope only): the `stream` scope and the
    /// plan's model list.
    pub fn authorize_stream(
        &self,
        principal: &crate::auth::Principal,
        model: Option<&str>,
    ) -> Result<(), GatewayError> {
        crate::auth::require_scope(principal, crate::auth::Scope::Stream)?;
        let Some(model) = model else { return Ok(()) };
        let name = if model.is_empty() {
            self.default_model.as_str()
        } else {
            model
        };
        crate::auth::require_model(principal, name)
    }

    /// Publishes the WebTransport endpoint at `GET /v1/webtransport`.
    pub fn with_webtransport(
        mut self: Arc<Self>,
        info: crate::transport::webtransport::WebTransportInfo,
    ) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("with_webtransport before the gateway is shared")
            .webtransport = Some(info);
        self
    }

    /// The pipeline for `name` (empty: the default model).
    pub fn model(&self, name: &str) -> Result<&Arc<ModelPipeline>, GatewayError> {
        let name = if name.is_empty() {
            &self.default_model
        } else {
            name
        };
        self.models
            .get(name)
            .ok_or_else(|| GatewayError::UnknownModel(name.to_string()))
    }

    /// Every model's pipeline, by name.
    pub fn models(&self) -> impl Iterator<Item = (&String, &Arc<ModelPipeline>)> {
        self.models.iter()
    }

    /// The default model's name.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// A caller's rate-limit buckets (its tenant's limits from the
    /// authenticator — configuration and key store — its key's from the
    /// principal).
    pub async fn rate_subject(
        &self,
        principal: &crate::auth::Principal,
    ) -> crate::ratelimit::Subject {
        // The tenant's own limits as the authenticator sees them (tenants and
        // plans set through the admin API included); the configuration's
        // when the key store cannot answer.
        let tenant = match self.auth.tenant_limits(&principal.tenant).await {
            Ok(l) => l,
            Err(_) => self.config.tenant_limits(&principal.tenant),
        };
        crate::ratelimit::Subject::new(&tenant, principal)
    }

    /// Ready when every model is ready; otherwise the first reason.
    pub fn readiness(&self) -> Readiness {
        for p in self.models.values() {
            match p.readiness() {
                Readiness::Ready => {}
                other => return other,
            }
        }
        Readiness::Ready
    }

    /// Stops every pipeline after answering the frames already queued.
    pub fn shutdown(&self) {
        for p in self.models.values() {
            p.shutdown();
        }
    }
}
