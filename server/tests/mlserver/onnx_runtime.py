"""A minimal MLServer runtime that serves an ONNX model with ONNX Runtime.

MLServer 1.7 has no built-in ONNX runtime, so the test tier uses this one:
`load()` opens the model named by the model settings' `parameters.uri`
(absolute, or relative to the model-settings.json) and declares its inputs and outputs
from the graph itself, so `ModelMetadata` reports what the model really is,
as Triton would; `predict()` runs the named inputs and returns the requested
outputs (all of them when none is requested) as FP32 tensors.
"""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

_DATATYPES = {"tensor(float)": "FP32"}


def _dims(shape):
    # Symbolic dimensions ("batch", None) are dynamic: -1, as in Triton.
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            uri, options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [
            MetadataTensor(name=i.name, datatype=_DATATYPES[i.type], shape=_dims(i.shape))
            for i in self._session.get_inputs()
        ]
        self.outputs = [
            MetadataTensor(name=o.name, datatype=_DATATYPES[o.type], shape=_dims(o.shape))
            for o in self._session.get_outputs()
        ]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {
            i.name: NumpyCodec.decode_input(i).astype(np.float32, copy=False)
            for i in payload.inputs
        }
        wanted = [o.name for o in payload.outputs or []] or [
            o.name for o in self._session.get_outputs()
        ]
        results = self._session.run(wanted, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, np.ascontiguousarray(r, dtype=np.float32))
                for name, r in zip(wanted, results)
            ],
        )
