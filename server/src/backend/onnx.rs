//! ONNX Runtime on the CPU: the embedded default backend.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`), never
//! downloaded: the library comes from the PyPI `onnxruntime` wheel, installed
//! by `scripts/install-onnxruntime.sh`. One process has one ONNX Runtime
//! environment; each worker has its own session.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::{Backend, TensorView};
use crate::backend::spec::LoadedModel;
use crate::error::GatewayError;

/// The ONNX Runtime version the gateway is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// File name of the library inside the wheel.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// Where `scripts/install-onnxruntime.sh` puts the library:
/// `$XDG_CACHE_HOME/framegate/onnxruntime-1.31.1/` (or `~/.cache/...`).
pub fn default_install_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("framegate")
            .join(format!("onnxruntime-{ORT_VERSION}")),
    )
}

/// Where to look for the library, in order: the configured path,
/// `ORT_DYLIB_PATH`, the install location.
pub fn candidate_paths(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = default_install_dir() {
        out.push(dir.join(ORT_LIB_NAME));
    }
    out
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn missing_library_message(tried: &[PathBuf]) -> String {
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    format!(
        "ONNX Runtime {ORT_VERSION} library not found (looked in: {}). Install it with \
         `scripts/install-onnxruntime.sh` (fetches the onnxruntime=={ORT_VERSION} wheel from PyPI \
         and unpacks {ORT_LIB_NAME}), or point `onnxruntime.dylib` in framegate.toml or the \
         ORT_DYLIB_PATH environment variable at an existing {ORT_LIB_NAME}",
        if tried.is_empty() {
            "nowhere".to_string()
        } else {
            tried.join(", ")
        }
    )
}

/// ONNX Runtime allocates and frees megabytes of intermediate tensors on
/// every run. glibc hands such blocks straight back to the kernel (mmap
/// threshold, heap trimming), so the next run faults them in again and the
/// kernel zeroes every page: profiled under load, hundreds of page faults per
/// frame and a few percent of the CPU in `clear_page`. A fixed 32 MiB mmap
/// threshold and a 256 MiB trim threshold keep that memory in the process.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is thread-safe and only changes allocator tuning
    // parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Loads ONNX Runtime once per process.
pub fn init_runtime(configured: Option<&Path>) -> Result<(), GatewayError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let candidates = candidate_paths(configured);
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(missing_library_message(&candidates));
        };
        let builder = ort::init_from(path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("framegate")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        keep_freed_memory();
        Ok(env)
    });
    result
        .as_ref()
        .map(|_| ())
        .map_err(|e| GatewayError::NotReady(e.clone()))
}

fn environment() -> Result<&'static ort::environment::Environment, GatewayError> {
    match ENVIRONMENT.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(e)) => Err(GatewayError::NotReady(e.clone())),
        None => Err(GatewayError::Internal(
            "ONNX Runtime used before init_runtime".into(),
        )),
    }
}

/// The intra-op threads of an ONNX Runtime session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnnxThreads {
    /// Intra-op threads (the calling thread and `threads - 1` pool threads).
    pub threads: usize,
    /// Whether the pool threads keep spin-waiting for the next run after a
    /// run returns (`pipeline.spin_after_run`). Off, ONNX Runtime stops them
    /// as the run ends (`session.force_spinning_stop`); they still spin
    /// while a run goes on (without that the two-thread solo session was
    /// about 40 % slower, docs/benchmarks.md).
    pub spin_after_run: bool,
}

impl OnnxThreads {
    /// `threads` intra-op threads that spin after a run (the default).
    pub fn new(threads: usize) -> Self {
        Self {
            threads,
            spin_after_run: true,
        }
    }
}

/// A model loaded into one ONNX Runtime session.
pub struct OnnxBackend {
    session: Session,
    spin_after_run: bool,
    input_name: String,
    input_dims: [usize; 3],
    output_names: Vec<String>,
}

impl std::fmt::Debug for OnnxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxBackend")
            .field("input", &self.input_name)
            .field("outputs", &self.output_names)
            .finish()
    }
}

impl OnnxBackend {
    /// Creates a session for `model` with `threads` intra-op threads that
    /// spin after a run (the default).
    pub fn new(model: &LoadedModel, threads: usize) -> Result<Self, GatewayError> {
        Self::with_threads(model, OnnxThreads::new(threads))
    }

    /// Creates a session for `model` with these intra-op threads.
    pub fn with_threads(model: &LoadedModel, threads: OnnxThreads) -> Result<Self, GatewayError> {
        let OnnxThreads {
            threads,
            spin_after_run,
        } = threads;
        let env = environment()?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            GatewayError::NotReady(format!("{what} for model {}: {e}", model.spec.name))
        };
        let mut builder = Session::builder(env)
            .map_err(|e| fail("cannot create session", &e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail("cannot set optimisation level", &e))?
            .with_intra_threads(threads)
            .map_err(|e| fail("cannot set threads", &e))?
            .with_inter_threads(1)
            .map_err(|e| fail("cannot set threads", &e))?;
        if !spin_after_run {
            builder = builder
                .with_config_entry("session.force_spinning_stop", "1")
                .map_err(|e| fail("cannot set thread options", &e))?;
        }
        let session = builder
            .commit_from_memory(&model.onnx)
            .map_err(|e| fail("cannot load ONNX graph", &e))?;
        let input_name = model.spec.input.name.clone();
        if !session.inputs().iter().any(|i| i.name() == input_name) {
            return Err(GatewayError::NotReady(format!(
                "model {} has no input named {input_name:?}",
                model.spec.name
            )));
        }
        let output_names = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Ok(Self {
            session,
            spin_after_run,
            input_name,
            input_dims: [
                3,
                model.spec.input.height as usize,
                model.spec.input.width as usize,
            ],
            output_names,
        })
    }
}

impl Backend for OnnxBackend {
    fn kind(&self) -> &'static str {
        "onnx"
    }

    fn solo(
        &self,
        model: &LoadedModel,
        threads: usize,
    ) -> Option<Result<Box<dyn Backend>, GatewayError>> {
        let threads = OnnxThreads {
            threads,
            spin_after_run: self.spin_after_run,
        };
        Some(OnnxBackend::with_threads(model, threads).map(|b| Box::new(b) as Box<dyn Backend>))
    }

    fn infer(
        &mut self,
        input: &[f32],
        batch: usize,
        sink: &mut dyn FnMut(&[TensorView<'_>]) -> Result<(), GatewayError>,
    ) -> Result<(), GatewayError> {
        let [c, h, w] = self.input_dims;
        let len = batch * c * h * w;
        if input.len() < len {
            return Err(GatewayError::Internal(format!(
                "input holds {} floats, batch of {batch} needs {len}",
                input.len()
            )));
        }
        let tensor = TensorRef::from_array_view(([batch, c, h, w], &input[..len]))
            .map_err(|e| GatewayError::Backend(format!("cannot wrap input: {e}")))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| GatewayError::Backend(e.to_string()))?;
        let mut views = Vec::with_capacity(self.output_names.len());
        for name in &self.output_names {
            let value = outputs
                .get(name)
                .ok_or_else(|| GatewayError::Backend(format!("output {name:?} missing")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| GatewayError::Backend(format!("output {name:?}: {e}")))?;
            views.push(TensorView {
                name: name.clone(),
                shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                data,
            });
        }
        sink(&views)
    }
}
