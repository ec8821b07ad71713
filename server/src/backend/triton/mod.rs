//! `triton`: a remote Triton / KServe v2 inference tier over gRPC.
//!
//! Each batch becomes one `ModelInfer` call carrying the input tensor as
//! `raw_input_contents` (little-endian FP32) and asking for the outputs the
//! decoder reads, which come back as `raw_output_contents`. Preprocessing and
//! postprocessing stay in the gateway, so a GPU fleet running Triton with
//! TensorRT engines only runs the network.
//!
//! The pieces: [`pool`] holds the connections, the readiness checks and the
//! retries; [`select`] decides which endpoint gets a call; [`metadata`]
//! checks that the server's model is the one `model.toml` describes (at
//! start-up, where a misfit is a start-up error, and whenever an endpoint
//! comes back, where a misfit keeps it out of rotation). The protocol
//! (`proto/grpc_predict_v2.proto`) is compiled by `build.rs` with the
//! pure-Rust `protox`, so no `protoc` is needed.

pub mod metadata;
pub mod pool;
pub mod select;

/// The KServe v2 gRPC messages and client, generated from
/// `server/proto/grpc_predict_v2.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use std::sync::Arc;

use bytes::Bytes;

use self::pool::TritonPool;
use self::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use self::proto::{ModelInferRequest, ModelInferResponse};
use super::{Backend, TensorView};
use crate::backend::spec::LoadedModel;
use crate::error::GatewayError;

/// Values in a tensor of `shape`; `None` when the product overflows.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Why the remote backend could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum TritonError {
    /// The gRPC runtime could not be started.
    #[error("cannot start the gRPC runtime: {0}")]
    Runtime(std::io::Error),
    /// An endpoint address is not usable.
    #[error("Triton endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The configured address.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// No endpoint passed its readiness check in time.
    #[error("no Triton / KServe v2 endpoint became ready within {waited_ms} ms ({endpoints}); check backend.triton.endpoints and that the servers are up")]
    NoReadyEndpoint {
        /// How long start-up waited.
        waited_ms: u64,
        /// Each endpoint with its last error.
        endpoints: String,
    },
    /// Every endpoint went down between start-up and a model's check.
    #[error("no Triton endpoint is ready to check model {model:?} against ({endpoints})")]
    NoEndpointForModel {
        /// The model name asked for.
        model: String,
        /// Each endpoint with its last error.
        endpoints: String,
    },
    /// The server is up but does not have the model ready.
    #[error("model {model:?} is not ready on {endpoint}: check backend.triton.model_name / model_version and the server's model repository")]
    ModelNotReady {
        /// The server.
        endpoint: String,
        /// The model name asked for.
        model: String,
    },
    /// The server's model does not fit `model.toml`.
    #[error("model {model:?} on {endpoint} does not match {spec}:\n  - {}", .problems.join("\n  - "))]
    Metadata {
        /// The server.
        endpoint: String,
        /// The model name on the server.
        model: String,
        /// Which `model.toml` (the gateway's model name).
        spec: String,
        /// One line per difference.
        problems: Vec<String>,
    },
    /// A call failed with an error that a retry cannot fix.
    #[error("Triton call to {endpoint} failed: {message}")]
    Call {
        /// The server.
        endpoint: String,
        /// The gRPC status.
        message: String,
    },
    /// Every attempt found its endpoint unavailable.
    #[error("no Triton endpoint available after {attempts} attempts: {failures}")]
    Unavailable {
        /// Attempts made.
        attempts: usize,
        /// Each attempt's endpoint and error.
        failures: String,
    },
    /// The answer does not have the outputs or sizes asked for.
    #[error("malformed Triton response: {0}")]
    Response(String),
}

impl From<TritonError> for GatewayError {
    fn from(e: TritonError) -> Self {
        match e {
            TritonError::Call { .. }
            | TritonError::Unavailable { .. }
            | TritonError::Response(_) => GatewayError::Backend(e.to_string()),
            _ => GatewayError::NotReady(e.to_string()),
        }
    }
}

/// One inference worker's view of the remote model.
pub struct TritonBackend {
    pool: Arc<TritonPool>,
    model_name: String,
    model_version: String,
    input_name: String,
    input_dims: [usize; 3],
    outputs: Vec<String>,
    /// One reusable buffer per output, in `outputs` order.
    buffers: Vec<Vec<f32>>,
}

impl std::fmt::Debug for TritonBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TritonBackend")
            .field("model", &self.model_name)
            .field("pool", &self.pool)
            .finish()
    }
}

impl TritonBackend {
    /// Binds `model` to its counterpart on the servers (`model_name`, else
    /// the model's own name) and checks, on every ready endpoint, that the
    /// server's metadata fits `model.toml` and `max_batch`.
    pub fn new(
        pool: Arc<TritonPool>,
        model: &LoadedModel,
        model_name: Option<&str>,
        model_version: &str,
        max_batch: usize,
    ) -> Result<Self, TritonError> {
        let spec = &model.spec;
        let model_name = model_name.unwrap_or(&spec.name).to_string();
        let fits: pool::MetadataCheck = {
            let (spec, classes) = (spec.clone(), model.labels.len());
            Arc::new(move |meta| metadata::check(meta, &spec, max_batch, classes))
        };
        for (endpoint, meta) in pool.watch_model(&model_name, model_version, fits.clone())? {
            let problems = fits(&meta);
            if !problems.is_empty() {
                return Err(TritonError::Metadata {
                    endpoint,
                    model: model_name,
                    spec: format!("the model.toml of {:?}", spec.name),
                    problems,
                });
            }
        }
        let outputs = metadata::decoder_outputs(spec);
        Ok(Self {
            pool,
            model_name,
            model_version: model_version.to_string(),
            input_name: spec.input.name.clone(),
            input_dims: [3, spec.input.height as usize, spec.input.width as usize],
            buffers: vec![Vec::new(); outputs.len()],
            outputs,
        })
    }

    fn request(&self, input: &[f32], batch: usize) -> ModelInferRequest {
        let [c, h, w] = self.input_dims;
        let mut raw = Vec::with_capacity(input.len() * 4);
        for x in input {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        ModelInferRequest {
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            inputs: vec![InferInputTensor {
                name: self.input_name.clone(),
                datatype: "FP32".into(),
                shape: [batch, c, h, w].iter().map(|&d| d as i64).collect(),
                ..Default::default()
            }],
            outputs: self
                .outputs
                .iter()
                .map(|name| InferRequestedOutputTensor {
                    name: name.clone(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: vec![Bytes::from(raw)],
            ..Default::default()
        }
    }

    /// Copies each wanted output of `response` into its buffer; returns the
    /// shapes.
    fn read_outputs(
        &mut self,
        response: &ModelInferResponse,
        batch: usize,
    ) -> Result<Vec<Vec<usize>>, TritonError> {
        let bad = |m: String| TritonError::Response(m);
        let mut shapes = Vec::with_capacity(self.outputs.len());
        for (name, buffer) in self.outputs.iter().zip(&mut self.buffers) {
            let (index, tensor) = response
                .outputs
                .iter()
                .enumerate()
                .find(|(_, t)| &t.name == name)
                .ok_or_else(|| bad(format!("output {name:?} missing")))?;
            if tensor.datatype != "FP32" {
                return Err(bad(format!("output {name:?} is {}", tensor.datatype)));
            }
            if tensor.shape.iter().any(|&d| d < 0) || tensor.shape.first() != Some(&(batch as i64))
            {
                return Err(bad(format!(
                    "output {name:?} has shape {:?} for a batch of {batch}",
                    tensor.shape
                )));
            }
            let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
            // Checked: a made-up shape whose product wraps to the length of
            // the values sent would pass the length check below.
            let count = element_count(&shape).ok_or_else(|| {
                bad(format!(
                    "output {name:?} has shape {shape:?}: more values than memory holds"
                ))
            })?;
            buffer.clear();
            if response.raw_output_contents.is_empty() {
                // A server may answer in typed fields even when asked raw.
                let typed = tensor
                    .contents
                    .as_ref()
                    .map(|c| c.fp32_contents.as_slice())
                    .unwrap_or_default();
                buffer.extend_from_slice(typed);
            } else {
                let raw = response
                    .raw_output_contents
                    .get(index)
                    .ok_or_else(|| bad(format!("no raw contents for output {name:?}")))?;
                buffer.extend(
                    raw.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                if raw.len() % 4 != 0 {
                    buffer.clear();
                }
            }
            if buffer.len() != count {
                return Err(bad(format!(
                    "output {name:?} of shape {shape:?} came with {} values, expected {count}",
                    buffer.len()
                )));
            }
            shapes.push(shape);
        }
        Ok(shapes)
    }
}

impl Backend for TritonBackend {
    fn kind(&self) -> &'static str {
        "triton"
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
        let request = self.request(&input[..len], batch);
        let response = self.pool.infer(request)?;
        let shapes = self.read_outputs(&response, batch)?;
        let views: Vec<TensorView<'_>> = self
            .outputs
            .iter()
            .zip(shapes)
            .zip(&self.buffers)
            .map(|((name, shape), data)| TensorView {
                name: name.clone(),
                shape,
                data,
            })
            .collect();
        sink(&views)
    }
}

#[cfg(test)]
mod tests {
    use super::element_count;

    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        assert_eq!(element_count(&[2, 2704, 112]), Some(2 * 2704 * 112));
        assert_eq!(element_count(&[]), Some(1));
        // 2704 × 2^62 wraps to 0 in plain arithmetic: the length of an
        // empty answer.
        assert_eq!(element_count(&[1, 2704, 1 << 62]), None);
    }
}
