"""An MLServer custom runtime serving one ONNX file with onnxruntime (MLServer ships none).

Runs inside the engine's own virtual environment (tests/engines.py makes it), never in tierdeck's.
"""
import os

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ENGINE_ORT_THREADS", "1"))  # as the agent's default
        self._session = ort.InferenceSession(self.settings.parameters.uri, sess_options=options,
                                             providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = [i.name for i in self._session.get_inputs()]
        feeds = {n: NumpyCodec.decode_input(i) for n, i in zip(names, payload.inputs, strict=True)}
        outs = self._session.run(None, feeds)
        _log_rows(len(next(iter(feeds.values()))))
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(o.name, v) for o, v in zip(self._session.get_outputs(), outs, strict=True)])


def _log_rows(rows: int) -> None:
    """Append how many rows this call ran to $ENGINE_ROW_LOG (the test counts what the engine really ran)."""
    path = os.environ.get("ENGINE_ROW_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{rows}\n")
