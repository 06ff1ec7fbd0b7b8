"""A KServe Python model server serving one ONNX file with onnxruntime (gRPC v2 on)."""
import argparse
import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


def _log_rows(rows: int) -> None:
    """Append how many rows this call ran to $ENGINE_ROW_LOG (the test counts what the engine really ran)."""
    path = os.environ.get("ENGINE_ROW_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{rows}\n")


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ENGINE_ORT_THREADS", "1"))  # as the agent's default
        self.session = ort.InferenceSession(self.path, sess_options=options, providers=["CPUExecutionProvider"])
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        names = [i.name for i in self.session.get_inputs()]
        feeds = {n: i.as_numpy() for n, i in zip(names, payload.inputs, strict=True)}
        outs = self.session.run(None, feeds)
        _log_rows(len(next(iter(feeds.values()))))
        outputs = []
        for o, v in zip(self.session.get_outputs(), outs, strict=True):
            out = InferOutput(name=o.name, shape=list(v.shape), datatype="FP32")
            out.set_data_from_numpy(np.asarray(v, np.float32), binary_data=True)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_grpc=True,
                enable_latency_logging=False).start([OnnxModel(args.name, args.model)])

