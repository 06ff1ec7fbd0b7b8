"""A loaded stage: its onnxruntime session, input checks, rule, budget and next hop."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runners._forward import DECISION_OUTPUTS, Forwarder
from runners._proto import tierdeck_control_pb2 as ctl
from runners._providers import CPU, Placement, ProviderPlan, open_session
from runners._rules import Rule, TokenBucket, not_probabilities
from runners._seen import SeenRows
from runners._telemetry import StageStats
from runners._tensors import TensorError, check_tensor, datatype_from_ort

PLATFORM = "onnx_onnxv1"
COALESCE_ROWS = 256  # a shared run takes waiting requests until it holds this many rows
# Requests of fewer rows than this share runs. onnxruntime's cost per row is flat from about 8 rows on (the bundled
# models: detector 3.6–3.9 µs/row at 8–32 rows vs 9.8 at 1, heavy no better at 64 than at 8), so sharing a run
# among larger requests only copied their inputs into one array: 1 MiB per two batch-32 image requests, 8 % of the
# device node's CPU under bench/cascade.py.
SHARE_BELOW_ROWS = 8
# A run expected to take less than this runs on the event loop: handing it to a compute thread and back (a queue
# put, a thread wake-up, a self-pipe write and an event-loop wake-up) costs more CPU than a small stage's run
# (measured: the hand-off was 15-25 % of a cascade agent's CPU; the detector runs 32 rows in ~0.15 ms).
INLINE_RUN_S = 0.001
DECISION_SPECS = (
    ctl.TensorSpec(name="decision_label", datatype="BYTES", shape=[-1]),
    ctl.TensorSpec(name="decision_confidence", datatype="FP32", shape=[-1]),
    ctl.TensorSpec(name="decision_stage", datatype="BYTES", shape=[-1]),
    ctl.TensorSpec(name="decision_final", datatype="BOOL", shape=[-1]),
)
assert tuple(s.name for s in DECISION_SPECS) == DECISION_OUTPUTS


class ModelRejected(Exception):
    """A model file that must not be loaded; `step` says where it failed."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step
        self.message = message


def _specs(args: list[ort.NodeArg]) -> list[ctl.TensorSpec]:
    specs = []
    for arg in args:
        try:
            datatype = datatype_from_ort(arg.type)
        except (TensorError, ValueError) as exc:
            raise ModelRejected("load", f"tensor '{arg.name}' has an unsupported type {arg.type}") from exc
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
        specs.append(ctl.TensorSpec(name=arg.name, datatype=datatype, shape=dims))
    return specs


def _output_specs(args: list[ort.NodeArg]) -> tuple[list[ctl.TensorSpec], dict[str, str]]:
    """Outputs tierdeck can serve (tensors), and the others by name with their onnxruntime type."""
    specs: list[ctl.TensorSpec] = []
    others: dict[str, str] = {}
    for arg in args:
        try:
            specs += _specs([arg])
        except ModelRejected:
            others[arg.name] = arg.type
    return specs, others


def unservable_reason(name: str, onnx_type: str) -> str:
    """Why an output cannot be served, in words, with the way out."""
    what = "a sequence of maps (scikit-learn's ZipMap)" if onnx_type.startswith("seq(map") else onnx_type
    return (f"output '{name}' is {what}, which tierdeck cannot serve: leave it out of the stage's outputs, or "
            "re-export the model without it (skl2onnx: options={id(model): {'zipmap': False}})")


def check_model_file(path: Path, memory_cap_bytes: int) -> None:
    """Refuse, before onnxruntime opens it, a model that is too big or has external data (it could escape)."""
    import onnx  # imported lazily: only deploys need it

    size = path.stat().st_size
    if size == 0:
        raise ModelRejected("validate", "model file is empty")
    if memory_cap_bytes and size * 2 > memory_cap_bytes:
        raise ModelRejected("validate", f"model needs about {size * 2 / 2**20:.1f} MiB, over this node's "
                            f"memory cap of {memory_cap_bytes / 2**20:.1f} MiB")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelRejected("validate", f"not an ONNX model: {exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelRejected("validate", "not an ONNX model: the file parses but holds no graph")
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelRejected("validate", f"tensor '{tensor.name}' uses external data; tierdeck accepts "
                                "self-contained model files only (external paths can escape the stage dir)")


def load_session(path: Path, threads: int, plan: ProviderPlan | None = None,
                 profile_dir: Path | None = None, arena: bool = True) -> ort.InferenceSession:
    """Open an onnxruntime session with the plan's providers (CPU only without one), profiler on (blocking).

    `arena`: onnxruntime keeps the working memory of its runs for the next one (its CPU arena). Without it every
    run's activations are allocated afresh and their pages faulted in again: measured in an agent, the heavy
    model at batch 32 took 35 page faults per input and 22–35 % more CPU (bench/cascade.py, monolithic). With it the
    process keeps its peak working memory, which --no-ort-arena gives back on memory-tight boxes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    try:
        return open_session(path, options, plan or ProviderPlan((CPU,), ({},)), profile_dir)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / NotImplemented types
        raise ModelRejected("load", f"onnxruntime could not load the model: {exc}") from exc


@dataclass
class Stage:
    """One deployed stage version with its runtime state."""

    manifest: ctl.StageManifest
    session: ort.InferenceSession
    model_path: Path
    stats: StageStats
    previous_version: str = ""
    activated_unix_ms: int = 0
    inputs: list[ctl.TensorSpec] = field(default_factory=list)
    outputs: list[ctl.TensorSpec] = field(default_factory=list)  # what this stage fetches and serves
    model_outputs: list[ctl.TensorSpec] = field(default_factory=list)  # every tensor output of the model
    unservable: dict[str, str] = field(default_factory=dict)  # non-tensor outputs (e.g. ZipMap), never fetched
    rule: Rule | None = None
    bucket: TokenBucket | None = None
    forwarder: Forwarder | None = None
    placement: Placement | None = None  # what the session really runs on (runners/_providers.py)
    # Escalated rows this version already answered (exactly-once); never shared with another version.
    seen_rows: SeenRows = field(default_factory=SeenRows)
    scores_warned: bool = False  # "values above 1 under a probabilities rule" logged once
    # The dynamic batcher (async_run): requests waiting for a run, runs in flight, their tasks.
    _waiting: list[tuple[dict[str, np.ndarray], asyncio.Future[tuple[list[np.ndarray], float]]]] = field(
        default_factory=list, repr=False)
    _active: int = field(default=0, repr=False)
    _row_s: float | None = field(default=None, repr=False)  # running estimate of a run's seconds per row
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.inputs = _specs(self.session.get_inputs())
        self.model_outputs, self.unservable = _output_specs(self.session.get_outputs())
        self.apply_policy()

    @property
    def stage_id(self) -> str:
        """The stage id, which is also its OIP model name."""
        return self.manifest.stage_id

    @property
    def version(self) -> str:
        """The active version."""
        return self.manifest.version

    def apply_policy(self) -> None:
        """(Re)build rule and budget from the manifest; raise ModelRejected if they do not fit the model."""
        self.rule = Rule.from_pb(self.manifest.rule) if self.manifest.HasField("rule") else None
        self.stats.score_kind = self.rule.score_kind if self.rule else ""
        budget = self.manifest.budget
        self.bucket = TokenBucket(budget.max_escalations_per_s) if budget.max_escalations_per_s > 0 else None
        names = [o.name for o in self.model_outputs]
        problems: list[str] = []
        wanted = [n for n in self.manifest.output_names if n not in self.unservable]
        problems += [unservable_reason(n, self.unservable[n]) for n in self.manifest.output_names
                     if n in self.unservable]
        if self.rule is not None and self.rule.output in self.unservable:
            problems.append(unservable_reason(self.rule.output, self.unservable[self.rule.output]))
        for declared, actual, kind in ((self.manifest.input_names, [i.name for i in self.inputs], "input"),
                                       (wanted, names, "output")):
            missing = [n for n in declared if n not in actual]
            if missing:
                problems.append(f"manifest names {kind}s {missing} that the model does not have ({actual})")
        # Fetch only what the stage needs: the declared outputs and the rule's (all tensor outputs if none
        # is declared); an output the agent cannot encode is never fetched, so it cannot block the model.
        keep = set(wanted) | ({self.rule.output} if self.rule is not None else set())
        self.outputs = [o for o in self.model_outputs if not self.manifest.output_names or o.name in keep]
        if self.rule is not None:
            spec = next((o for o in self.outputs if o.name == self.rule.output), None)
            classes = spec.shape[-1] if spec is not None and len(spec.shape) > 1 and spec.shape[-1] > 0 else None
            problems += self.rule.problems(names, classes)
        if self.manifest.HasField("next_hop") and self.rule is None:
            problems.append("a next hop needs an escalation rule")
        if problems:
            raise ModelRejected("validate", "; ".join(problems))

    def metadata_outputs(self) -> list[ctl.TensorSpec]:
        """Outputs as ModelMetadata reports them (the decision tensors too when the stage has a rule)."""
        return self.outputs + (list(DECISION_SPECS) if self.rule else [])

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds for onnxruntime; TensorError naming the tensor and the expected shape otherwise."""
        expected = {i.name: i for i in self.inputs}
        unknown = [n for n in inputs if n not in expected]
        if unknown:
            raise TensorError(f"input {unknown[0]!r}: model '{self.stage_id}' has no such input "
                              f"(inputs: {list(expected)})")
        rows: set[int] = set()
        for name, spec in expected.items():
            if name not in inputs:
                raise TensorError(f"input {name!r}: missing; model '{self.stage_id}' expects "
                                  f"{spec.datatype} {list(spec.shape)}")
            check_tensor(name, inputs[name], spec.datatype, list(spec.shape))
            if inputs[name].ndim:
                rows.add(inputs[name].shape[0])
        if self.rule is not None and len(rows) > 1:
            raise TensorError(f"input {next(iter(expected))!r}: inputs disagree on the batch size ({sorted(rows)})")
        return {name: _to_ort(name, array) for name, array in inputs.items()}

    @property
    def batchable(self) -> bool:
        """True when every input and fetched output has a free first (batch) dimension: requests can share a run."""
        return all(spec.shape[:1] == [-1] for spec in (*self.inputs, *self.outputs)) and \
            all(spec.datatype != "BYTES" for spec in self.inputs)

    async def async_run(self, feeds: dict[str, np.ndarray], pool: Executor,
                        parallel: int) -> tuple[list[np.ndarray], float]:
        """Run on the compute pool, coalescing requests that arrive while up to `parallel` runs are busy into one
        onnxruntime call (a dynamic batcher without added delay); returns this request's outputs and its share
        of the compute seconds."""
        loop = asyncio.get_running_loop()
        if not self.batchable:
            return await loop.run_in_executor(pool, self.run, feeds)
        future: asyncio.Future[tuple[list[np.ndarray], float]] = loop.create_future()
        self._waiting.append((feeds, future))
        if self._active < parallel:
            self._active += 1
            task = loop.create_task(self._drain(pool))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, pool: Executor) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                take, rows = 1, _rows(self._waiting[0][0])
                if rows < SHARE_BELOW_ROWS:  # small requests share a run; a batch already runs as it came
                    while take < len(self._waiting) and rows < COALESCE_ROWS \
                            and _rows(self._waiting[take][0]) < SHARE_BELOW_ROWS:
                        rows += _rows(self._waiting[take][0])
                        take += 1
                batch, self._waiting = self._waiting[:take], self._waiting[take:]
                if len(batch) == 1:
                    feeds, future = batch[0]
                    try:
                        result = await self._run_where_cheaper(pool, feeds, rows)
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    if not future.done():
                        future.set_result(result)
                    continue
                names = list(batch[0][0])
                counts = [len(f[names[0]]) for f, _ in batch]
                try:
                    merged = {n: np.concatenate([f[n] for f, _ in batch]) for n in names}
                    outputs, seconds = await self._run_where_cheaper(pool, merged, rows)
                except Exception:  # one request's inputs broke the shared run: run each alone, errors to their own
                    for feeds, future in batch:
                        try:
                            result = await loop.run_in_executor(pool, self.run, feeds)
                        except Exception as exc:
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(result)
                    continue
                offset, total = 0, sum(counts)
                for (_, future), count in zip(batch, counts, strict=True):
                    if not future.done():
                        future.set_result(([o[offset:offset + count] for o in outputs], seconds * count / total))
                    offset += count
        finally:
            self._active -= 1

    async def _run_where_cheaper(self, pool: Executor, feeds: dict[str, np.ndarray],
                                 rows: int) -> tuple[list[np.ndarray], float]:
        """Run on the event loop when the run is expected to take less than INLINE_RUN_S, else on the pool; keeps
        the per-row estimate (a run's wall time over its rows) up to date."""
        if self._row_s is not None and self._row_s * rows < INLINE_RUN_S:
            result = self.run(feeds)
        else:
            result = await asyncio.get_running_loop().run_in_executor(pool, self.run, feeds)
        per_row = result[1] / max(rows, 1)
        self._row_s = per_row if self._row_s is None else 0.8 * self._row_s + 0.2 * per_row
        return result

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Run the model (blocking: call from the compute executor); returns outputs and seconds spent, and adds the
        calling thread's CPU time to the stage's compute_cpu_seconds_total."""
        start, cpu = time.perf_counter(), time.thread_time()
        outputs = self.session.run([o.name for o in self.outputs], feeds)
        seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu
        self.stats.add_compute_cpu(cpu_seconds)
        return [np.asarray(o) for o in outputs], seconds

    def warm_up(self) -> None:
        """Inferences on zeros and on ones (dynamic dims = 1): setup is paid before the first real request,
        and a confidence_below rule on an output that is not probabilities is refused (ModelRejected)."""
        seen: dict[str, list[np.ndarray]] = {}
        for fill in (0, 1):
            feeds = {}
            for spec in self.inputs:
                shape = [d if d >= 0 else 1 for d in spec.shape]
                feeds[spec.name] = (np.full(shape, b"" if fill == 0 else b"1", dtype=object)
                                    if spec.datatype == "BYTES" else np.full(shape, fill, _numpy_dtype(spec.datatype)))
            try:
                outputs, _ = self.run({n: _to_ort(n, a) for n, a in feeds.items()})
            except Exception as exc:
                raise ModelRejected("warmup", f"warm-up inference failed: {exc}") from exc
            for spec, out in zip(self.outputs, outputs, strict=True):
                seen.setdefault(spec.name, []).append(out.reshape(-1))
        self.check_scores({n: np.concatenate(parts) for n, parts in seen.items()})

    def check_scores(self, named: dict[str, np.ndarray]) -> None:
        """Refuse a confidence_below rule whose output cannot hold probabilities (seen on a warm-up run)."""
        rule = self.rule
        if rule is None or rule.confidence_below is None or rule.scores != "probabilities" or rule.output not in named:
            return
        why = not_probabilities(named[rule.output])
        if why:
            raise ModelRejected("validate", f"rule output '{rule.output}' cannot be probabilities: {why}. "
                                "A confidence_below rule needs probabilities: point it at the float [N, C] "
                                "probability output, or say the output is 'logits' (softmax is applied) or "
                                "'raw' (then use score_above)")

    def info(self) -> ctl.StageInfo:
        """The stage as ListStages reports it."""
        info = ctl.StageInfo(manifest=self.manifest, state="ready", previous_version=self.previous_version,
                             activated_unix_ms=self.activated_unix_ms, inputs=self.inputs,
                             outputs=self.metadata_outputs(), model_bytes=os.path.getsize(self.model_path))
        if self.placement is not None:
            self.placement.fill(info)
        return info


def _to_ort(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime takes string tensors as Python str: BYTES elements must be UTF-8."""
    if array.dtype != object:
        return array
    try:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array) if array.size else array
    except UnicodeDecodeError as exc:
        raise TensorError(f"input {name!r}: BYTES element is not UTF-8 text, which onnxruntime string "
                          f"tensors require ({exc.reason} at byte {exc.start})") from exc


def _numpy_dtype(datatype: str) -> np.dtype:
    from runners._tensors import DATATYPES

    return DATATYPES[datatype]


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))
