"""The pipeline file (``*.pipeline.json``): format version 1, loading, validation, saving.

A pipeline is an ordered list of stages; an input enters the first stage and a row that a stage's
rule escalates goes to that stage's next hop — the following stage in the list, unless the stage
names another one with ``"next": "<stage id>"``, or ends the chain with ``"next": null``. Because a
stage may name its next hop, a file can describe a loop or leave stages unreachable; both are
rejected. Example (paths are relative to the pipeline file)::

    {
      "format": "tierdeck.pipeline",
      "version": 1,
      "name": "ship-finder",
      "stages": [
        {
          "id": "detector",
          "model": "../models/detector.onnx",
          "sha256": "<64 hex digits of the model file>",
          "placement": {"tier": "device"},              // or {"nodes": ["<node id>", ...]}
          "inputs":  [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 64, 64]}],
          "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}],
          "rule": {"output": "probs", "labels": ["water", "vessel"],
                   "class_in": ["vessel"], "confidence_below": 0.9},
          "budget": {"max_escalations_per_s": 0, "priority": "high",
                     "shadow_rate": 0.01},                // optional, see below
          "providers": {"prefer": ["OpenVINOExecutionProvider"]},   // optional, see below
          "next": "classifier"                          // optional, see above
        },
        ...
      ]
    }

Format version 2 adds **endpoint stages**: the last stage may be served by an engine tierdeck does not run
(Triton, KServe, MLServer — anything that speaks the Open Inference Protocol over gRPC)::

        {
          "id": "heavy",
          "endpoint": {"address": "10.0.0.9:8001", "model": "heavy", "version": "",
                       "tls": {"ca": "engine-ca.pem", "cert": "client.pem", "key": "client.key"}},
          "placement": {"tier": "cloud"},
          "inputs":  [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 64, 64]}],
          "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 5]}],
          "rule": {"output": "probs", "labels": ["water", "cargo", "tanker", "fishing", "patrol"]}
        }

No model file and no sha256; `tls` is optional (absent = plaintext, which the deploy plan flags; paths are
relative to the pipeline file); the rule only names the output holding the class scores and its labels
(without it: the first output, answers labelled by class index); it must end the chain. The deployer
uploads nothing there: it checks the engine (ServerReady, ModelReady, its metadata against these
tensors and against what the stage before it escalates) and wires the stage before it to it. Version 1
files are read as before.

Rule semantics (the node agent implements them per input row): ``drop_class`` is checked first —
a row whose top class is listed settles here; otherwise the row escalates when any condition that
is set holds: ``confidence_below`` (top-class probability < t), ``class_in`` (top class listed),
``score_above`` (the row's maximum output value > t). A row that does not escalate settles with
this stage's top class. The last stage of the chain may not escalate.

``"scores"`` says what the rule's output holds: ``"probabilities"`` (the default: a float [N, C] tensor of
class probabilities), ``"logits"`` (the agent applies softmax first) or ``"raw"`` (any score; use
``score_above``, never ``confidence_below``). A ``confidence_below`` rule on an integer output (a label
tensor of class ids) is refused, and the node refuses one whose output gives values outside 0..1 at
warm-up. Labels may be given as integers (class ids); they are read as text. Outputs that are not tensors
(skl2onnx's ZipMap ``seq(map(...))``) cannot be served: leave them out of ``outputs`` — the node fetches
only the outputs a stage declares and the rule's.

Execution providers (optional ``"providers"``): ``require`` lists providers the stage must run on —
a node whose onnxruntime build lacks one is refused by the fit check before anything is uploaded,
and the agent refuses a session that gives it none of the graph; ``prefer`` lists providers to try
first where the node has them. Names are onnxruntime's (``CUDAExecutionProvider``,
``TensorrtExecutionProvider``, ``OpenVINOExecutionProvider``, ``CPUExecutionProvider``, or any other
``…ExecutionProvider``) or the short forms ``tensorrt``, ``cuda``, ``openvino``, ``cpu``; the file
keeps them as written, the manifest carries the full names. Without the key a stage runs on the
node's own order (its best provider first).

Shadow sampling (optional ``"budget": {"shadow_rate": r}``, 0..1): the share of the rows a stage settles that
its node also sends to the next hop in shadow mode — lowest priority, never counted as escalations, never
changing an answer — so that the console can estimate what the link misses. Without the key the node's
default applies (0.01, i.e. 1 %); 0 turns it off. A last stage has no next hop and ignores it.

Every problem found is reported, each as one `Problem` with a JSON path and a sentence; they are
raised together as one `PipelineError`. Pure Python (json, hashlib, onnx, numpy): no Qt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runners._store import write_atomic
from runners.protocol import DATATYPES, ONNX_DATATYPES, TIERS

FORMAT = "tierdeck.pipeline"
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # version 2 added endpoint stages (a serving engine tierdeck does not run)
PRIORITIES = ("high", "normal", "bulk")
STAGE_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NO_NEXT = object()  # "next" absent: the following stage

_TOP_KEYS = {"format", "version", "name", "description", "stages"}
_STAGE_KEYS = {"id", "model", "sha256", "placement", "inputs", "outputs", "rule", "budget", "next",
               "max_batch", "description", "endpoint", "providers"}
_ENDPOINT_KEYS = {"address", "model", "version", "tls"}
_TLS_KEYS = {"ca", "cert", "key"}
_RULE_KEYS = {"output", "labels", "confidence_below", "class_in", "score_above", "drop_class", "scores"}
# What a rule's output holds; the agent applies softmax to logits (runners._rules.SCORES says the same).
SCORES = ("probabilities", "logits", "raw")
_FLOAT_DATATYPES = {"FP16", "FP32", "FP64", "BF16"}
_BUDGET_KEYS = {"max_escalations_per_s", "priority", "shadow_rate"}
_TENSOR_KEYS = {"name", "datatype", "shape"}



@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file: where (a JSON path like ``stages[1].rule``) and what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class PipelineError(ValueError):
    """A pipeline file that cannot be used; ``problems`` lists every problem found, one message each."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        self.source = source
        head = f"{source}: " if source else ""
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}invalid pipeline ({n} problem{'s' if n != 1 else ''}):\n{lines}")


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output tensor; -1 in `shape` is a free dimension (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    """Where a stage runs: every node of a tier, or the listed nodes (by node id)."""

    tier: str | None = None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """A serving engine tierdeck does not run (Triton, KServe, MLServer) that answers a stage over OIP/gRPC.

    `tls` paths (PEM files: the engine's CA, and a client certificate and key where it asks for one) are
    resolved against the pipeline file; no `ca` means plaintext, which the deploy plan flags."""

    address: str
    model: str
    version: str = ""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_pem: bytes = field(default=b"", repr=False)   # the files' contents, read when the pipeline was loaded
    cert_pem: bytes = field(default=b"", repr=False)
    key_pem: bytes = field(default=b"", repr=False)

    @property
    def plaintext(self) -> bool:
        """True when the link to the engine is not encrypted."""
        return self.tls_ca is None


@dataclass(frozen=True)
class RuleDecision:
    """Per-row outcome of a rule: top class index, whether the row escalates, whether it was dropped."""

    top_class: npt.NDArray[np.int64]
    escalate: npt.NDArray[np.bool_]
    dropped: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Rule:
    """A stage's escalation rule, evaluated on one output per input row."""

    output: str
    labels: tuple[str, ...]
    confidence_below: float | None = None
    class_in: tuple[str, ...] = ()
    score_above: float | None = None
    drop_class: tuple[str, ...] = ()
    scores: str = "probabilities"

    @property
    def escalates(self) -> bool:
        """True when some escalate condition is set (a last stage must have none)."""
        return self.confidence_below is not None or bool(self.class_in) or self.score_above is not None

    def evaluate(self, values: npt.ArrayLike) -> RuleDecision:
        """Apply the rule to an output of shape [N, C]: the reference the node agent must agree with."""
        out = np.asarray(values, dtype=np.float64)
        if out.ndim == 1:
            out = out[:, None]
        out = out.reshape(out.shape[0], -1)
        if self.scores == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out = out / out.sum(axis=1, keepdims=True)
        top = out.argmax(axis=1).astype(np.int64)
        peak = out.max(axis=1)
        index = {label: i for i, label in enumerate(self.labels)}
        dropped = np.isin(top, [index[c] for c in self.drop_class])
        escalate = np.zeros(len(top), dtype=bool)
        if self.confidence_below is not None:
            escalate |= peak < self.confidence_below
        if self.class_in:
            escalate |= np.isin(top, [index[c] for c in self.class_in])
        if self.score_above is not None:
            escalate |= peak > self.score_above
        return RuleDecision(top, escalate & ~dropped, dropped)


@dataclass(frozen=True)
class Budget:
    """Governance for a stage's escalations: a rate cap (0 = unlimited), a priority class, and the share of settled
    rows sent up in shadow mode to estimate misses (None = the node's default, 1 %; 0 = off)."""

    max_escalations_per_s: float = 0.0
    priority: str = "normal"
    shadow_rate: float | None = None


@dataclass(frozen=True)
class ProviderChoice:
    """Execution providers a stage requires or prefers (full onnxruntime names; empty: the node decides)."""

    require: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.require or self.prefer)


@dataclass(frozen=True)
class Stage:
    """One validated stage; `model_path` is the model file resolved against the pipeline's folder."""

    id: str
    model: str
    sha256: str
    placement: Placement
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    rule: Rule
    budget: Budget = field(default_factory=Budget)
    next: str | None = None
    max_batch: int | None = None
    description: str = ""
    model_path: Path | None = None
    endpoint: Endpoint | None = None  # served by an engine tierdeck does not run (then model/sha256 are "")
    providers: ProviderChoice = field(default_factory=ProviderChoice)


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline: stages in file order; `next` of each stage already resolved."""

    name: str
    stages: tuple[Stage, ...]
    description: str = ""
    version: int = VERSION
    path: Path | None = None

    def stage(self, stage_id: str) -> Stage:
        """The stage with this id (KeyError if none)."""
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)

    def chain(self) -> list[Stage]:
        """Stages in hop order, from the entry stage to the last tier."""
        out: list[Stage] = []
        current: Stage | None = self.stages[0]
        while current is not None:
            out.append(current)
            current = self.stage(current.next) if current.next is not None else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """The file form of this pipeline (what `save_pipeline` writes)."""
        stages = []
        for i, s in enumerate(self.stages):
            following = self.stages[i + 1].id if i + 1 < len(self.stages) else None
            stages.append(stage_dict(s, s.model, following, self.path.parent if self.path else None))
        doc: dict[str, Any] = {"format": FORMAT, "version": self.version, "name": self.name}
        if self.description:
            doc["description"] = self.description
        doc["stages"] = stages
        return doc


def stage_dict(s: Stage, model: str, following: str | None, base: Path | None = None) -> dict[str, Any]:
    """One stage in file form; `next` is written only when it is not `following` (the next stage in the list).
    An endpoint's TLS files are written relative to `base` (the folder the file is saved in) when given."""
    d: dict[str, Any] = {"id": s.id}
    if s.endpoint is not None:
        d["endpoint"] = _endpoint_dict(s.endpoint, base)
    else:
        d.update({"model": model, "sha256": s.sha256})
    d.update({
        "placement": {"tier": s.placement.tier} if s.placement.tier else {"nodes": list(s.placement.nodes)},
        "inputs": [_tensor_dict(t) for t in s.inputs],
        "outputs": [_tensor_dict(t) for t in s.outputs],
        "rule": _rule_dict(s.rule),
        "budget": {k: v for k, v in asdict(s.budget).items() if v is not None},  # shadow_rate only when set
    })
    if s.endpoint is not None and not s.rule.labels:
        del d["rule"]  # the default: the engine's first output, answers labelled by class index
    if s.next != following:
        d["next"] = s.next
    if s.max_batch is not None:
        d["max_batch"] = s.max_batch
    if s.description:
        d["description"] = s.description
    if s.providers:
        d["providers"] = {k: list(v) for k, v in (("require", s.providers.require), ("prefer", s.providers.prefer))
                          if v}
    return d


def _endpoint_dict(e: Endpoint, base: Path | None) -> dict[str, Any]:
    d: dict[str, Any] = {"address": e.address, "model": e.model}
    if e.version:
        d["version"] = e.version
    tls = {k: (os.path.relpath(p, base) if base is not None else str(p)) for k, p in
           (("ca", e.tls_ca), ("cert", e.tls_cert), ("key", e.tls_key)) if p is not None}
    if tls:
        d["tls"] = tls
    return d


def _tensor_dict(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def _rule_dict(r: Rule) -> dict[str, Any]:
    d: dict[str, Any] = {"output": r.output, "labels": list(r.labels)}
    if r.drop_class:
        d["drop_class"] = list(r.drop_class)
    if r.class_in:
        d["class_in"] = list(r.class_in)
    if r.confidence_below is not None:
        d["confidence_below"] = r.confidence_below
    if r.score_above is not None:
        d["score_above"] = r.score_above
    if r.scores != "probabilities":
        d["scores"] = r.scores
    return d


class _Checker:
    """Collects problems while it walks a document; each check returns a cleaned value or None."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))

    def obj(self, value: Any, where: str, keys: set[str], required: Iterable[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(where, f"must be a JSON object, not {_kind(value)}")
            return None
        for key in sorted(set(value) - keys, key=str):
            self.add(where, f"unknown key {key!r} (known: {', '.join(sorted(keys))})")
        for key in required:
            if key not in value:
                self.add(where, f"missing required key {key!r}")
        return value

    def string(self, value: Any, where: str, *, nonempty: bool = True) -> str | None:
        if not isinstance(value, str):
            self.add(where, f"must be a string, not {_kind(value)}")
            return None
        if nonempty and not value.strip():
            self.add(where, "must not be empty")
            return None
        if "\x00" in value:
            self.add(where, "must not contain a NUL character")
            return None
        return value

    def number(self, value: Any, where: str, lo: float | None = None, hi: float | None = None) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(where, f"must be a number, not {_kind(value)}")
            return None
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            self.add(where, "must be a finite number")
            return None
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            self.add(where, f"must be in [{_fmt(lo)}, {_fmt(hi)}], got {value!r}")
            return None
        return x

    def string_list(self, value: Any, where: str, *, nonempty: bool = True) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.add(where, f"must be a list of strings, not {_kind(value)}")
            return None
        if nonempty and not value:
            self.add(where, "must not be empty")
            return None
        out: list[str] = []
        ok = True
        for i, item in enumerate(value):
            s = self.string(item, f"{where}[{i}]")
            if s is None:
                ok = False
            elif s in out:
                self.add(f"{where}[{i}]", f"duplicate entry {s!r}")
                ok = False
            else:
                out.append(s)
        return tuple(out) if ok else None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _fmt(x: float | None) -> str:
    return "…" if x is None else f"{x:g}"


def _tensors(ck: _Checker, value: Any, where: str) -> tuple[TensorSpec, ...] | None:
    if not isinstance(value, list) or not value:
        ck.add(where, "must be a non-empty list of tensors ({name, datatype, shape})")
        return None
    out: list[TensorSpec] = []
    ok = True
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        d = ck.obj(item, w, _TENSOR_KEYS, ("name", "datatype", "shape"))
        if d is None or not {"name", "datatype", "shape"} <= set(d):
            ok = False
            continue
        name = ck.string(d["name"], f"{w}.name")
        dtype = d["datatype"]
        if dtype not in DATATYPES:
            ck.add(f"{w}.datatype", f"unknown datatype {dtype!r} (known: {', '.join(DATATYPES)})")
            dtype = None
        shape = d["shape"]
        if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= -1 for n in shape):
            ck.add(f"{w}.shape", "must be a list of integers, each ≥ 0 or -1 for a free dimension")
            shape = None
        if name is not None and any(t.name == name for t in out):
            ck.add(f"{w}.name", f"duplicate tensor name {name!r}")
            name = None
        if name is None or dtype is None or shape is None:
            ok = False
            continue
        out.append(TensorSpec(name, dtype, tuple(shape)))
    return tuple(out) if ok else None


def _placement(ck: _Checker, value: Any, where: str) -> Placement | None:
    d = ck.obj(value, where, {"tier", "nodes"}, ())
    if d is None:
        return None
    if ("tier" in d) == ("nodes" in d):
        ck.add(where, 'must give exactly one of "tier" (device, edge, cloud) or "nodes" (a list of node ids)')
        return None
    if "tier" in d:
        if d["tier"] not in TIERS:
            ck.add(f"{where}.tier", f"unknown tier {d['tier']!r} (known: {', '.join(TIERS)})")
            return None
        return Placement(tier=d["tier"])
    nodes = ck.string_list(d["nodes"], f"{where}.nodes")
    return Placement(nodes=nodes) if nodes is not None else None


def _rule(ck: _Checker, value: Any, where: str, outputs: tuple[TensorSpec, ...] | None) -> Rule | None:
    d = ck.obj(value, where, _RULE_KEYS, ("output", "labels"))
    if d is None or "output" not in d or "labels" not in d:
        return None
    ok = True
    output = ck.string(d["output"], f"{where}.output")
    if output is None:
        ok = False
    elif outputs is not None and output not in {t.name for t in outputs}:
        names = ", ".join(t.name for t in outputs)
        ck.add(f"{where}.output", f"missing output name: {output!r} is not one of this stage's outputs ({names})")
        ok = False
    raw_labels = d["labels"]
    if isinstance(raw_labels, list) and raw_labels and all(type(x) is int for x in raw_labels):
        raw_labels = [str(x) for x in raw_labels]  # integer class ids (e.g. skl2onnx classlabels_ints) as text
    labels = ck.string_list(raw_labels, f"{where}.labels")
    if labels is None:
        ok = False
    elif output is not None and outputs is not None:
        spec = next((t for t in outputs if t.name == output), None)
        if spec is not None and spec.shape and spec.shape[-1] > 0 and len(spec.shape) > 1 \
                and spec.shape[-1] != len(labels):
            ck.add(f"{where}.labels", f"{len(labels)} labels for output {output!r} of {spec.shape[-1]} classes")
            ok = False
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("class_in", "drop_class"):
        if key not in d:
            lists[key] = ()
            continue
        given = d[key]
        if isinstance(given, list) and all(type(x) is int for x in given):
            given = [str(x) for x in given]  # integer class ids, like the labels
        items = ck.string_list(given, f"{where}.{key}")
        if items is None:
            ok = False
            continue
        if labels is not None:
            for i, c in enumerate(items):
                if c not in labels:
                    ck.add(f"{where}.{key}[{i}]", f"rule refers to unknown class {c!r} (labels: {', '.join(labels)})")
                    ok = False
        lists[key] = items
    both = sorted(set(lists.get("class_in", ())) & set(lists.get("drop_class", ())))
    if both:
        ck.add(where, f"class {both[0]!r} is in both drop_class and class_in (drop_class wins, so that "
                      "class_in entry can never fire)")
        ok = False
    conf = score = None
    if "confidence_below" in d:
        conf = ck.number(d["confidence_below"], f"{where}.confidence_below", 0.0, 1.0)
        ok = ok and conf is not None
    if "score_above" in d:
        score = ck.number(d["score_above"], f"{where}.score_above")
        ok = ok and score is not None
    scores = d.get("scores", "probabilities")
    if scores not in SCORES:
        ck.add(f"{where}.scores", f"unknown scores {scores!r}: say what the rule's output holds, one of "
                                  f"{', '.join(SCORES)}")
        ok = False
    elif scores == "raw" and "confidence_below" in d:
        ck.add(f"{where}.confidence_below", "confidence_below compares a probability, but scores is 'raw': use "
                                            "score_above, or set scores to 'probabilities' or 'logits'")
        ok = False
    spec = next((t for t in outputs or () if t.name == output), None)
    if spec is not None and scores != "raw" and "confidence_below" in d and spec.datatype not in _FLOAT_DATATYPES:
        ck.add(f"{where}.output", f"output {output!r} is {spec.datatype}, so it holds class ids, not probabilities: "
                                  "point the rule at the model's float [N, C] probability output")
        ok = False
    if not ok or output is None or labels is None:
        return None
    return Rule(output, labels, conf, lists.get("class_in", ()), score, lists.get("drop_class", ()), scores)


def _budget(ck: _Checker, value: Any, where: str) -> Budget | None:
    d = ck.obj(value, where, _BUDGET_KEYS, ())
    if d is None:
        return None
    rate = 0.0
    if "max_escalations_per_s" in d:
        got = ck.number(d["max_escalations_per_s"], f"{where}.max_escalations_per_s", 0.0)
        if got is None:
            return None
        rate = got
    priority = d.get("priority", "normal")
    if priority not in PRIORITIES:
        ck.add(f"{where}.priority", f"unknown priority {priority!r} (known: {', '.join(PRIORITIES)})")
        return None
    shadow = None
    if "shadow_rate" in d:
        shadow = ck.number(d["shadow_rate"], f"{where}.shadow_rate", 0.0, 1.0)
        if shadow is None:
            return None
    return Budget(rate, priority, shadow)


def _providers(ck: _Checker, value: Any, where: str) -> ProviderChoice | None:
    from runners._providers import ALIASES, canonical

    d = ck.obj(value, where, {"require", "prefer"}, ())
    if d is None:
        return None
    lists: dict[str, tuple[str, ...]] = {}
    ok = True
    for key in ("require", "prefer"):
        if key not in d:
            lists[key] = ()
            continue
        items = ck.string_list(d[key], f"{where}.{key}")
        if items is None:
            ok = False
            continue
        names = []
        for i, item in enumerate(items):
            name = canonical(item)
            if not name.endswith("ExecutionProvider"):
                ck.add(f"{where}.{key}[{i}]", f"unknown execution provider {item!r} (use onnxruntime's name, e.g. "
                                              f"CUDAExecutionProvider, or one of {', '.join(sorted(ALIASES))})")
                ok = False
            names.append(name)
        lists[key] = tuple(dict.fromkeys(names))
    both = sorted(set(lists.get("require", ())) & set(lists.get("prefer", ())))
    if both:
        ck.add(where, f"{both[0]} is both required and preferred (required already comes first)")
        ok = False
    return ProviderChoice(lists["require"], lists["prefer"]) if ok else None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_model(ck: _Checker, where: str, path: Path, stage: dict[str, Any]) -> None:
    """Compare a stage's declarations with its ONNX file: hash, external data, tensor names and types."""
    try:
        digest = sha256_of(path)
    except OSError as exc:
        ck.add(f"{where}.model", f"cannot read model file {path}: {exc.strerror or exc}")
        return
    sha = stage.get("sha256")
    if isinstance(sha, str) and SHA256.match(sha) and sha != digest:
        ck.add(f"{where}.sha256", f"sha256 mismatch: the file {path.name} has {digest}, the pipeline says {sha}")
    import onnx  # only when a model file is actually checked: keeps parse_pipeline(check_models=False) light

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, … for a file that is not a model
        ck.add(f"{where}.model", f"{path.name} is not a readable ONNX model ({type(exc).__name__})")
        return
    root = path.parent.resolve()
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in init.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            ck.add(f"{where}.model", f"{path.name}: external data {location!r} points outside the model's folder")
            return
    graph_inputs = {v.name: v for v in model.graph.input}
    for init in model.graph.initializer:
        graph_inputs.pop(init.name, None)
    graph_outputs = {v.name: v for v in model.graph.output}
    for key, available in (("inputs", graph_inputs), ("outputs", graph_outputs)):
        declared = stage.get(key)
        if not isinstance(declared, list):
            continue
        names = [t.get("name") for t in declared if isinstance(t, dict)]
        for i, t in enumerate(declared):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                continue
            name = t["name"]
            what = "output" if key == "outputs" else "input"
            if name not in available:
                ck.add(f"{where}.{key}[{i}].name", f"missing {what} name: {path.name} has no {what} {name!r} "
                                                   f"(it has: {', '.join(available) or 'none'})")
                continue
            if available[name].type.WhichOneof("value") != "tensor_type":
                kind = available[name].type.WhichOneof("value") or "unknown"
                what = "a sequence of maps (scikit-learn's ZipMap)" if kind == "sequence_type" else f"a {kind}"
                ck.add(f"{where}.{key}[{i}]", f"{path.name}: {what} {name!r} is not a tensor, which tierdeck "
                                              "cannot serve: remove it from the outputs, or re-export the model "
                                              "without it (skl2onnx: options={id(model): {'zipmap': False}})")
                continue
            ttype = available[name].type.tensor_type
            want = ONNX_DATATYPES.get(ttype.elem_type, f"onnx type {ttype.elem_type}")
            if isinstance(t.get("datatype"), str) and t["datatype"] in DATATYPES and t["datatype"] != want:
                ck.add(f"{where}.{key}[{i}].datatype", f"{path.name} says {want} for {what} {name!r}, "
                                                       f"the pipeline says {t['datatype']}")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
            shape = t.get("shape")
            if isinstance(shape, list) and all(isinstance(n, int) for n in shape) and ttype.HasField("shape"):
                pairs = zip(shape, dims, strict=False)
                if len(shape) != len(dims) or any(a >= 0 and b >= 0 and a != b for a, b in pairs):
                    ck.add(f"{where}.{key}[{i}].shape", f"{path.name} gives {what} {name!r} the shape "
                                                        f"{dims} (-1 = free), the pipeline says {shape}")
        if key == "inputs":
            for name in available:
                if name not in names:
                    ck.add(f"{where}.inputs", f"{path.name} needs input {name!r}, which the stage does not declare")


def _stage(ck: _Checker, value: Any, where: str, base_dir: Path | None,
           check_models: bool) -> tuple[Stage | None, Any]:
    if isinstance(value, dict) and "endpoint" in value:
        return _endpoint_stage(ck, value, where, base_dir)
    d = ck.obj(value, where, _STAGE_KEYS, ("id", "model", "sha256", "placement", "inputs", "outputs", "rule"))
    if d is None:
        return None, _NO_NEXT
    ok = True
    sid = _stage_id(ck, d, where)
    model = ck.string(d["model"], f"{where}.model") if "model" in d else None
    model_path: Path | None = None
    if model is not None:
        if Path(model).is_absolute() or re.match(r"^[A-Za-z]:[\\/]", model):
            ck.add(f"{where}.model", f"model path {model!r} must be relative to the pipeline file")
            model = None
        elif base_dir is not None:
            model_path = base_dir / model
            try:
                exists = model_path.is_file()
            except (OSError, ValueError):
                exists = False
            if not exists:
                ck.add(f"{where}.model", f"unknown model file {model!r} (no such file: {model_path})")
                model = None
            elif check_models:
                _check_model(ck, where, model_path, d)
    sha = None
    if "sha256" in d:
        sha = ck.string(d["sha256"], f"{where}.sha256")
        if sha is not None and not SHA256.match(sha):
            ck.add(f"{where}.sha256", "must be 64 lowercase hex digits (the sha256 of the model file)")
            sha = None
    placement = _placement(ck, d["placement"], f"{where}.placement") if "placement" in d else None
    inputs = _tensors(ck, d["inputs"], f"{where}.inputs") if "inputs" in d else None
    outputs = _tensors(ck, d["outputs"], f"{where}.outputs") if "outputs" in d else None
    rule = _rule(ck, d["rule"], f"{where}.rule", outputs) if "rule" in d else None
    budget = _budget(ck, d["budget"], f"{where}.budget") if "budget" in d else Budget()
    providers = _providers(ck, d["providers"], f"{where}.providers") if "providers" in d else ProviderChoice()
    if providers is None:
        ok = False
    max_batch = None
    if "max_batch" in d:
        mb = d["max_batch"]
        if isinstance(mb, bool) or not isinstance(mb, int) or not 1 <= mb <= 65536:
            ck.add(f"{where}.max_batch", "must be an integer in [1, 65536]")
            ok = False
        else:
            max_batch = mb
    description = ""
    if "description" in d:
        description = ck.string(d["description"], f"{where}.description", nonempty=False) or ""
    nxt: Any = _NO_NEXT
    if "next" in d:
        nxt = d["next"]
        if nxt is not None and ck.string(nxt, f"{where}.next") is None:
            nxt = _NO_NEXT
            ok = False
    parts = (sid, model, sha, placement, inputs, outputs, rule, budget)
    if not ok or any(p is None for p in parts):
        return None, nxt
    assert sid is not None and model is not None and sha is not None and placement is not None
    assert inputs is not None and outputs is not None and rule is not None and budget is not None
    return Stage(sid, model, sha, placement, inputs, outputs, rule, budget, None, max_batch, description,
                 model_path, providers=providers or ProviderChoice()), nxt


def _stage_id(ck: _Checker, d: dict[str, Any], where: str) -> str | None:
    sid = ck.string(d["id"], f"{where}.id") if "id" in d else None
    if sid is not None and not STAGE_ID.match(sid):
        ck.add(f"{where}.id", f"stage id {sid!r} must be 1–63 of a-z 0-9 _ . - starting with a letter or digit")
        return None
    return sid


def _endpoint_stage(ck: _Checker, value: dict[str, Any], where: str, base_dir: Path | None) -> tuple[Stage | None, Any]:
    """A stage served by an engine tierdeck does not run: no model file, a label-only rule (optional)."""
    d = ck.obj(value, where, _STAGE_KEYS - {"model", "sha256", "max_batch", "providers"},
               ("id", "endpoint", "placement", "inputs", "outputs"))
    if d is None:
        return None, _NO_NEXT
    for key in ("model", "sha256"):
        if key in value:
            ck.add(f"{where}.{key}", f"an endpoint stage has no {key}: the engine serves its own model")
    sid = _stage_id(ck, d, where)
    endpoint = None
    e = ck.obj(d["endpoint"], f"{where}.endpoint", _ENDPOINT_KEYS, ("address", "model")) if "endpoint" in d else None
    if e is not None and "address" in e and "model" in e:
        address = ck.string(e["address"], f"{where}.endpoint.address")
        if address is not None and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$", address):
            ck.add(f"{where}.endpoint.address", f"must be HOST:PORT of the engine's gRPC port, got {address!r}")
            address = None
        model = ck.string(e["model"], f"{where}.endpoint.model")
        version = ck.string(e.get("version", ""), f"{where}.endpoint.version", nonempty=False)
        paths: dict[str, Path | None] = {"ca": None, "cert": None, "key": None}
        tls = ck.obj(e["tls"], f"{where}.endpoint.tls", _TLS_KEYS, ("ca",)) if "tls" in e else {}
        for key in _TLS_KEYS & set(tls or {}):
            name = ck.string((tls or {})[key], f"{where}.endpoint.tls.{key}")
            if name is not None:
                path = Path(name) if base_dir is None or Path(name).is_absolute() else base_dir / name
                if base_dir is not None and not path.is_file():
                    ck.add(f"{where}.endpoint.tls.{key}", f"no such file: {path}")
                else:
                    paths[key] = path
        if tls and (paths["cert"] is None) != (paths["key"] is None):
            ck.add(f"{where}.endpoint.tls", "give both cert and key (a client certificate), or neither")
        if address is not None and model is not None and version is not None:
            pems: dict[str, bytes] = {}
            for key, given in paths.items():
                try:
                    pems[key] = given.read_bytes() if given is not None and base_dir is not None else b""
                except OSError as exc:
                    ck.add(f"{where}.endpoint.tls.{key}", f"cannot read {given}: {exc.strerror or exc}")
            endpoint = Endpoint(address, model, version, paths["ca"], paths["cert"], paths["key"],
                                pems.get("ca", b""), pems.get("cert", b""), pems.get("key", b""))
    placement = _placement(ck, d["placement"], f"{where}.placement") if "placement" in d else None
    if placement is not None and not placement.tier:
        ck.add(f"{where}.placement", "an endpoint stage is placed on a tier (where the canvas shows it), not on "
                                     "nodes: the engine scales itself")
        placement = None
    inputs = _tensors(ck, d["inputs"], f"{where}.inputs") if "inputs" in d else None
    outputs = _tensors(ck, d["outputs"], f"{where}.outputs") if "outputs" in d else None
    if "rule" in d:
        rule = _rule(ck, d["rule"], f"{where}.rule", outputs)
        if rule is not None and rule.escalates:
            ck.add(f"{where}.rule", "an endpoint stage ends the chain: its rule only names the output and labels "
                                    "(remove confidence_below/class_in/score_above)")
            rule = None
    else:
        rule = Rule(outputs[0].name, ()) if outputs else None
    nxt: Any = _NO_NEXT
    if "next" in d:
        nxt = d["next"]
        if nxt is not None:
            ck.add(f"{where}.next", "an endpoint stage ends the chain: it cannot escalate to another stage")
            nxt = _NO_NEXT
    budget = _budget(ck, d["budget"], f"{where}.budget") if "budget" in d else Budget()
    description = ck.string(d.get("description", ""), f"{where}.description", nonempty=False) or ""
    parts = (sid, endpoint, placement, inputs, outputs, rule, budget)
    if any(p is None for p in parts):
        return None, nxt
    assert sid is not None and placement is not None and inputs is not None and outputs is not None
    assert rule is not None and budget is not None
    return Stage(sid, "", "", placement, inputs, outputs, rule, budget, None, None, description, None,
                 endpoint), nxt


def _resolve_hops(ck: _Checker, ids: list[str | None], nexts: list[Any]) -> list[str | None] | None:
    """Resolve each stage's next hop; report unknown targets, cycles and stages never reached."""
    known = {sid: i for i, sid in enumerate(ids) if sid is not None}
    hops: list[str | None] = []
    ok = True
    for i, nxt in enumerate(nexts):
        if nxt is _NO_NEXT:
            hops.append(ids[i + 1] if i + 1 < len(ids) else None)
        elif nxt is None or nxt in known:
            hops.append(nxt)
        else:
            ck.add(f"stages[{i}].next", f"next refers to unknown stage {nxt!r}")
            hops.append(None)
            ok = False
    if not ok or any(sid is None for sid in ids):
        return None
    # Each stage has at most one next hop, so the hops form a functional graph: walk from every
    # stage, colouring as we go, and report each loop once.
    state: dict[str, int] = {}
    for start in known:
        path: list[str] = []
        current: str | None = start
        while current is not None and state.get(current, 0) == 0:
            state[current] = 1
            path.append(current)
            current = hops[known[current]]
        if current is not None and state.get(current) == 1:
            loop = [*path[path.index(current):], current]
            ck.add(f"stages[{known[current]}].next", f"cycle: {' → '.join(loop)}")
            ok = False
        for sid in path:
            state[sid] = 2
    if not ok:
        return None
    reached: set[str] = set()
    walk: str | None = ids[0]
    while walk is not None and walk not in reached:
        reached.add(walk)
        walk = hops[known[walk]]
    for i, maybe_id in enumerate(ids):
        if maybe_id not in reached:
            ck.add(f"stages[{i}]", f"stage {maybe_id!r} is never reached from the entry stage {ids[0]!r}")
            ok = False
    return hops if ok else None


def parse_pipeline(doc: Any, base_dir: Path | None = None, *, check_models: bool = True,
                   source: str = "") -> Pipeline:
    """Validate a decoded pipeline document; model files are checked when `base_dir` is given."""
    ck = _Checker()
    top = ck.obj(doc, "", _TOP_KEYS, ("format", "version", "name", "stages"))
    if top is None:
        raise PipelineError(ck.problems, source)
    if "format" in top and top["format"] != FORMAT:
        ck.add("format", f"must be {FORMAT!r}, got {top['format']!r}")
    version = top.get("version")
    if "version" in top and (not isinstance(version, int) or isinstance(version, bool)
                             or version not in SUPPORTED_VERSIONS):
        ck.add("version", f"unsupported version {version!r} (this tierdeck reads version "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        raise PipelineError(ck.problems, source)  # a newer format: the rest would only add noise
    name = ck.string(top["name"], "name") if "name" in top else None
    description = ""
    if "description" in top:
        description = ck.string(top["description"], "description", nonempty=False) or ""
    stages_raw = top.get("stages")
    if "stages" in top and (not isinstance(stages_raw, list) or not stages_raw):
        ck.add("stages", "must be a non-empty list of stages")
        stages_raw = None
    stages: list[Stage | None] = []
    nexts: list[Any] = []
    if isinstance(stages_raw, list):
        for i, raw in enumerate(stages_raw):
            st, nxt = _stage(ck, raw, f"stages[{i}]", base_dir, check_models)
            stages.append(st)
            nexts.append(nxt)
        seen: dict[str, int] = {}
        ids: list[str | None] = []
        for i, raw in enumerate(stages_raw):
            sid = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(sid, str) and STAGE_ID.match(sid):
                if sid in seen:
                    ck.add(f"stages[{i}].id", f"duplicate stage id {sid!r} (also stages[{seen[sid]}])")
                    sid = None
                else:
                    seen[sid] = i
                ids.append(sid)
            else:
                ids.append(None)
        hops = _resolve_hops(ck, ids, nexts) if stages else None
        if hops is not None and all(s is not None for s in stages):
            resolved = [s for s in stages if s is not None]
            by_id = {s.id: s for s in resolved}
            for i, (s, hop) in enumerate(zip(resolved, hops, strict=True)):
                if hop is None:
                    if s.rule.escalates:
                        ck.add(f"stages[{i}].rule", f"stage {s.id!r} is the last stage (no next hop) but its "
                                                    "rule escalates; remove confidence_below/class_in/score_above")
                    continue
                following = by_id[hop]
                mine = {(t.name, t.datatype) for t in s.inputs}
                theirs = {(t.name, t.datatype) for t in following.inputs}
                if mine != theirs:
                    ck.add(f"stages[{i}].next", f"stage {s.id!r} escalates its inputs "
                                                f"{sorted(mine)} but the next stage {hop!r} takes {sorted(theirs)}")
                if not s.rule.escalates:
                    ck.add(f"stages[{i}].rule", f"stage {s.id!r} has a next hop ({hop!r}) but its rule never "
                                                "escalates; set confidence_below, class_in or score_above")
            for i, (s, hop) in enumerate(zip(resolved, hops, strict=True)):
                if s.endpoint is not None and hop is not None:
                    ck.add(f"stages[{i}]", f"endpoint stage {s.id!r} must end the chain (it is followed by "
                                           f"{hop!r}): put it last or give the stage before it \"next\"")
                if s.endpoint is not None and version == 1:
                    ck.add(f"stages[{i}].endpoint", "endpoint stages need format version 2")
            stages = [replace(s, next=hop) for s, hop in zip(resolved, hops, strict=True)]
    if ck.problems or name is None or not stages:
        if not ck.problems:
            ck.add("", "incomplete pipeline")
        raise PipelineError(ck.problems, source)
    assert isinstance(version, int)
    return Pipeline(name, tuple(s for s in stages if s is not None), description, version,
                    None)


def loads_pipeline(text: str | bytes, base_dir: Path | None = None, *, check_models: bool = True,
                   source: str = "") -> Pipeline:
    """Parse and validate pipeline JSON text (see `parse_pipeline`)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipelineError([Problem("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")],
                            source) from None
    except UnicodeDecodeError:
        raise PipelineError([Problem("", "not valid JSON: the file is not UTF-8 text")], source) from None
    except RecursionError:
        raise PipelineError([Problem("", "not valid JSON: nested too deeply")], source) from None
    return parse_pipeline(doc, base_dir, check_models=check_models, source=source)


def load_pipeline(path: Path | str, *, check_models: bool = True) -> Pipeline:
    """Read and validate a ``*.pipeline.json`` file; model paths resolve against its folder."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PipelineError([Problem("", f"cannot read pipeline file: {exc.strerror or exc}")], str(p)) from None
    pipeline = loads_pipeline(data, p.parent, check_models=check_models, source=str(p))
    return Pipeline(pipeline.name, pipeline.stages, pipeline.description, pipeline.version, p)


def dumps_pipeline(pipeline: Pipeline) -> str:
    """The pipeline as file text (indented JSON, trailing newline)."""
    return json.dumps(pipeline.to_dict(), indent=2, ensure_ascii=False) + "\n"


def save_pipeline(pipeline: Pipeline, path: Path | str) -> None:
    """Write the pipeline to `path` (model paths are written as they are: relative to the file)."""
    write_atomic(Path(path), dumps_pipeline(pipeline).encode("utf-8"), make_parents=False)
