//! Does the server's model fit the `model.toml`? Checked once per model at
//! start-up against `ModelMetadata`, so a wrong model name, a model exported
//! at another size or with renamed outputs fails before the first frame
//! instead of producing garbage boxes.

use super::proto::model_metadata_response::TensorMetadata;
use super::proto::ModelMetadataResponse;
use crate::backend::spec::{DecoderSpec, ModelSpec};

/// The output tensors the decoder of `spec` reads, in a fixed order.
pub fn decoder_outputs(spec: &ModelSpec) -> Vec<String> {
    match &spec.decoder {
        DecoderSpec::Nanodet {
            cls_outputs,
            box_outputs,
            ..
        } => cls_outputs.iter().chain(box_outputs).cloned().collect(),
        DecoderSpec::Yolov8 { output, .. } => vec![output.clone()],
    }
}

fn names(tensors: &[TensorMetadata]) -> String {
    let n: Vec<String> = tensors
        .iter()
        .map(|t| format!("{} {} {:?}", t.name, t.datatype, t.shape))
        .collect();
    format!("[{}]", n.join(", "))
}

/// One dimension the decoder reads.
#[derive(Debug, Clone, Copy)]
enum Dim {
    /// Exactly this many.
    Exact(i64),
    /// At least this many (the class scores: a labels file may be shorter
    /// than the model's classes, whose extra boxes are named `class_N`, as
    /// with a local model; a longer one names another model's classes).
    AtLeast(i64),
    /// Taken as it comes.
    Any,
}

impl Dim {
    fn fits(self, got: i64) -> bool {
        got == -1
            || match self {
                Dim::Exact(n) => got == n,
                Dim::AtLeast(n) => got >= n,
                Dim::Any => true,
            }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Exact(n) => write!(f, "{n}"),
            Dim::AtLeast(n) => write!(f, ">= {n}"),
            Dim::Any => write!(f, "any"),
        }
    }
}

/// The shape the decoder of `spec` reads from each of its outputs (in
/// [`decoder_outputs`] order), batch dimension left out. `labels`: the
/// model's labels file's length.
fn decoder_shapes(spec: &ModelSpec, labels: usize) -> Vec<Vec<Dim>> {
    let (w, h) = (i64::from(spec.input.width), i64::from(spec.input.height));
    let labels = labels as i64;
    match &spec.decoder {
        DecoderSpec::Nanodet {
            strides,
            reg_max,
            cls_outputs,
            ..
        } => {
            let cells = |s: &u32| Dim::Exact((w / i64::from(*s)) * (h / i64::from(*s)));
            let cls = strides
                .iter()
                .take(cls_outputs.len())
                .map(|s| vec![cells(s), Dim::AtLeast(labels)]);
            let bins = 4 * (i64::from(*reg_max) + 1);
            let boxes = strides.iter().map(|s| vec![cells(s), Dim::Exact(bins)]);
            cls.chain(boxes).collect()
        }
        DecoderSpec::Yolov8 { .. } => vec![vec![Dim::AtLeast(4 + labels), Dim::Any]],
    }
}

/// Every way `meta` differs from what the gateway will send and read, one
/// line each; empty when it fits. `max_batch` is `pipeline.max_batch`;
/// `classes` the length of the model's labels file.
pub fn check(
    meta: &ModelMetadataResponse,
    spec: &ModelSpec,
    max_batch: usize,
    classes: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let want = [3, i64::from(spec.input.height), i64::from(spec.input.width)];
    match meta.inputs.iter().find(|t| t.name == spec.input.name) {
        None => problems.push(format!(
            "no input named {:?} (model.toml input.name); the server's inputs are {}",
            spec.input.name,
            names(&meta.inputs)
        )),
        Some(t) => {
            if t.datatype != "FP32" {
                problems.push(format!(
                    "input {:?} is {}, the gateway sends FP32",
                    t.name, t.datatype
                ));
            }
            let dims_fit = t.shape.len() == 4
                && t.shape[1..]
                    .iter()
                    .zip(want)
                    .all(|(&got, want)| got == -1 || got == want);
            if !dims_fit {
                problems.push(format!(
                    "input {:?} has shape {:?}, model.toml says [batch, {}, {}, {}]",
                    t.name, t.shape, want[0], want[1], want[2]
                ));
            } else if t.shape[0] >= 0 && (t.shape[0] as usize) < max_batch {
                problems.push(format!(
                    "input {:?} has a fixed batch of {} but pipeline.max_batch is {max_batch}: \
                     enable dynamic batching on the server (Triton: max_batch_size >= {max_batch}) \
                     or lower pipeline.max_batch",
                    t.name, t.shape[0]
                ));
            }
        }
    }
    let extra: Vec<&str> = meta
        .inputs
        .iter()
        .filter(|t| t.name != spec.input.name)
        .map(|t| t.name.as_str())
        .collect();
    if !extra.is_empty() {
        problems.push(format!(
            "the server's model has inputs the gateway does not feed: {extra:?}"
        ));
    }
    for (name, want) in decoder_outputs(spec)
        .into_iter()
        .zip(decoder_shapes(spec, classes))
    {
        match meta.outputs.iter().find(|t| t.name == name) {
            None => problems.push(format!(
                "no output named {name:?} (model.toml decoder); the server's outputs are {}",
                names(&meta.outputs)
            )),
            Some(t) if t.datatype != "FP32" => problems.push(format!(
                "output {name:?} is {}, the decoder reads FP32",
                t.datatype
            )),
            Some(t) => {
                // A model with other classes (a fine-tune under the same
                // output names) would have its boxes named with the wrong
                // labels; another box layout fails every frame.
                let fits = t.shape.len() == want.len() + 1
                    && t.shape[1..].iter().zip(&want).all(|(&got, w)| w.fits(got));
                if !fits {
                    let dims: Vec<String> = want.iter().map(Dim::to_string).collect();
                    problems.push(format!(
                        "output {name:?} has shape {:?}, the decoder reads [batch, {}] \
                         ({classes} labels in the model's labels file)",
                        t.shape,
                        dims.join(", ")
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::spec::{ModelSpec, BUNDLED_SPEC};

    fn tensor(name: &str, shape: &[i64]) -> TensorMetadata {
        TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
        }
    }

    fn nanodet_meta() -> ModelMetadataResponse {
        let mut outputs = Vec::new();
        for (s, cells) in [(8, 2704), (16, 676), (32, 169)] {
            outputs.push(tensor(&format!("cls_s{s}"), &[-1, cells, 80]));
            outputs.push(tensor(&format!("box_s{s}"), &[-1, cells, 44]));
        }
        ModelMetadataResponse {
            name: "nanodet-g".into(),
            inputs: vec![tensor("images", &[-1, 3, 416, 416])],
            outputs,
            ..Default::default()
        }
    }

    fn spec() -> ModelSpec {
        ModelSpec::parse(BUNDLED_SPEC, "bundled").unwrap()
    }

    #[test]
    fn the_bundled_model_fits_its_own_metadata() {
        assert_eq!(check(&nanodet_meta(), &spec(), 8, 80), Vec::<String>::new());
    }

    #[test]
    fn every_mismatch_is_named() {
        let mut meta = nanodet_meta();
        meta.inputs[0].shape = vec![-1, 3, 640, 640];
        meta.outputs.retain(|t| t.name != "box_s16");
        meta.outputs[0].datatype = "FP16".into();
        let problems = check(&meta, &spec(), 8, 80);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("[-1, 3, 640, 640]"), "{problems:?}");
        assert!(problems[1].contains("\"cls_s8\" is FP16"), "{problems:?}");
        assert!(
            problems[2].contains("no output named \"box_s16\""),
            "{problems:?}"
        );
    }

    #[test]
    fn a_fixed_batch_below_max_batch_is_refused() {
        let mut meta = nanodet_meta();
        meta.inputs[0].shape[0] = 1;
        assert!(check(&meta, &spec(), 1, 80).is_empty());
        let problems = check(&meta, &spec(), 8, 80);
        assert!(problems[0].contains("max_batch_size"), "{problems:?}");
    }

    #[test]
    fn outputs_of_another_shape_are_refused() {
        assert!(check(&nanodet_meta(), &spec(), 8, 80).is_empty());
        // A fine-tune with 20 classes under the same output names.
        let mut meta = nanodet_meta();
        meta.outputs[0].shape = vec![-1, 2704, 20];
        let problems = check(&meta, &spec(), 8, 80);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"cls_s8\" has shape [-1, 2704, 20]"),
            "{problems:?}"
        );
        assert!(problems[0].contains("[batch, 2704, >= 80]"), "{problems:?}");
        // A labels file shorter than the model's classes is fine (the rest
        // are named class_N, as with a local model).
        assert!(check(&nanodet_meta(), &spec(), 8, 60).is_empty());
        // Another box layout (reg_max 16 instead of 10).
        let mut meta = nanodet_meta();
        meta.outputs[1].shape = vec![-1, 2704, 68];
        assert_eq!(check(&meta, &spec(), 8, 80).len(), 1);
        // Dimensions the server leaves open (-1) pass.
        let mut meta = nanodet_meta();
        meta.outputs[1].shape = vec![-1, -1, -1];
        assert!(check(&meta, &spec(), 8, 80).is_empty());
    }

    #[test]
    fn a_renamed_input_lists_what_the_server_has() {
        let mut meta = nanodet_meta();
        meta.inputs[0].name = "input.1".into();
        let problems = check(&meta, &spec(), 8, 80);
        assert!(
            problems[0].contains("no input named \"images\""),
            "{problems:?}"
        );
        assert!(problems[0].contains("input.1 FP32"), "{problems:?}");
        assert!(problems[1].contains("does not feed"), "{problems:?}");
    }
}
