"""Reading a classifier's ONNX file for the rule a new stage should start with (no Qt, no network).

An operator drops a model they brought; the stage must be deployable as it stands and its rule must
look at the right tensor. What is chosen, in this order:

* **Output.** The floating-point tensor of shape [N, C] — class probabilities or scores. A label
  tensor (INT64/STRING [N], what skl2onnx puts first) is never chosen while such a tensor exists.
  Among several, the one made by a softmax-like operator wins, then a name saying "prob".
  No [N, C] tensor at all: a float [N] or [N, 1] output is taken as a single raw score.
* **What the values are** (`scores`): "probabilities" when the output comes from Softmax,
  Sigmoid, Normalizer(L1) or an ai.onnx.ml classifier, or is named like probabilities; "logits"
  when it comes straight from MatMul/Gemm/Add (the agent applies softmax first); "raw" for a
  single score.
* **Labels.** The classifier's own ML operator (`classlabels_strings` / `classlabels_ints` on
  LinearClassifier, SVMClassifier, TreeEnsembleClassifier, ZipMap…), else the class table an
  ArrayFeatureExtractor reads (skl2onnx's MLP and friends), else ONNX metadata (`labels`,
  `classes`, `class_labels`: a JSON list or comma-separated), else the model card next to the
  file (`NAME.card.json`, key `classes`), else class0…class{C-1}. Integer labels become text.
* **Rule.** The card's `escalation_rule` when it has one; otherwise a visible default:
  `confidence_below 0.9` on probabilities or logits, `score_above 0.5` on a raw score.

A skl2onnx ZipMap output (a sequence of maps) cannot travel over the Open Inference Protocol; the
suggestion says so in words, and `without_zipmap` writes a copy of the model whose probabilities
leave it as the plain tensor the ZipMap was fed (what `zipmap=False` would have exported).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.pipeline_file import Rule, TensorSpec

DEFAULT_CONFIDENCE = 0.9
DEFAULT_SCORE = 0.5
SCORE_KINDS = ("probabilities", "logits", "raw")
RULE_KINDS = ("confidence_below", "score_above", "class_in")

_FLOAT_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 16: "BF16"}
_PROBABILITY_OPS = {"Softmax", "Sigmoid", "LogSoftmax", "Normalizer", "LinearClassifier", "SVMClassifier",
                    "TreeEnsembleClassifier", "TreeEnsemble"}
_LINEAR_OPS = {"MatMul", "Gemm", "Add", "Sub", "Conv", "MatMulInteger", "QLinearMatMul", "Einsum"}
_PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "CastLike"}
_LABEL_KEYS = ("labels", "classes", "class_labels", "classlabels")


@dataclass(frozen=True)
class RuleSuggestion:
    """The rule a dropped model starts with, where each part came from, and what stands in its way."""

    output: str
    labels: tuple[str, ...]
    scores: str = "probabilities"            # probabilities | logits | raw
    confidence_below: float | None = None
    class_in: tuple[str, ...] = ()
    score_above: float | None = None
    drop_class: tuple[str, ...] = ()
    source: str = "default"                  # "card" (the model card's escalation_rule) or "default"
    labels_from: str = ""                    # words: where the labels came from
    problems: tuple[str, ...] = ()           # words: why a stage of this model cannot deploy as it stands

    @property
    def classes(self) -> int:
        """Number of classes (labels)."""
        return len(self.labels)

    def rule(self) -> Rule:
        """The pipeline-file rule (with `scores` where this version of the file format has it)."""
        return make_rule(self.output, self.labels, scores=self.scores, confidence_below=self.confidence_below,
                         class_in=self.class_in, score_above=self.score_above, drop_class=self.drop_class)

    def words(self) -> str:
        """'rule from the model card: …' or 'default rule: …', for the canvas and the status bar."""
        what = condition_words(self.confidence_below, self.class_in, self.score_above)
        on = f"on {self.output!r} ({self.classes} classes, {self.scores})"
        if self.source == "card":
            return f"rule from the model card: escalate when {what} {on}"
        return f"default rule: escalate when {what} {on} — tune it with F2"


def condition_words(confidence_below: float | None, class_in: tuple[str, ...], score_above: float | None) -> str:
    """'confidence < 0.90 or class vessel' — the escalate conditions in words."""
    parts = []
    if class_in:
        parts.append("class " + "/".join(class_in))
    if confidence_below is not None:
        parts.append(f"confidence < {confidence_below:.2f}")
    if score_above is not None:
        parts.append(f"score > {score_above:.2f}")
    return " or ".join(parts) or "never (no condition)"


def rule_has_scores() -> bool:
    """True when the pipeline file's Rule carries `scores` (probabilities / logits / raw)."""
    return any(f.name == "scores" for f in dataclasses.fields(Rule))


def rule_scores(rule: Rule) -> str:
    """What the rule's output holds ('probabilities' when the file format does not say)."""
    return str(getattr(rule, "scores", "probabilities") or "probabilities")


def make_rule(output: str, labels: tuple[str, ...], *, scores: str = "probabilities",
              confidence_below: float | None = None, class_in: tuple[str, ...] = (),
              score_above: float | None = None, drop_class: tuple[str, ...] = ()) -> Rule:
    """A Rule; `scores` is kept where the file format has the key (dropped, and so 'probabilities', before)."""
    extra: dict[str, Any] = {"scores": scores} if rule_has_scores() else {}
    return Rule(output, tuple(labels), confidence_below, tuple(class_in), score_above, tuple(drop_class), **extra)


# ----- reading the graph ----------------------------------------------------------------------------

def _dims(value_info: Any) -> tuple[int, ...] | None:
    """Shape of a tensor value (-1 = free); None when it is not a tensor (sequence, map)."""
    if value_info.type.WhichOneof("value") != "tensor_type":
        return None
    tt = value_info.type.tensor_type
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _trace_kind(name: str, producers: dict[str, Any]) -> str:
    """'probabilities', 'logits' or '' (unknown) from the operator that makes `name` (through casts/reshapes)."""
    seen = 0
    while name in producers and seen < 16:
        node = producers[name]
        seen += 1
        if node.op_type in _PASS_THROUGH and node.input:
            name = node.input[0]
            continue
        if node.op_type in _PROBABILITY_OPS:
            if node.op_type == "Normalizer":
                norm = next((a.s.decode() for a in node.attribute if a.name == "norm"), "")
                return "probabilities" if norm in ("L1", "") else ""
            if node.op_type in ("LinearClassifier", "SVMClassifier", "TreeEnsembleClassifier"):
                post = next((a.s.decode() for a in node.attribute if a.name == "post_transform"), "NONE")
                # a linear classifier without post transform gives raw margins
                if node.op_type == "LinearClassifier" and post == "NONE":
                    return "logits"
            return "probabilities" if node.op_type != "LogSoftmax" else ""
        if node.op_type in _LINEAR_OPS:
            return "logits"
        return ""
    return ""


def _strings(attr: Any) -> tuple[str, ...]:
    if attr.strings:
        return tuple(s.decode("utf-8", "replace") for s in attr.strings)
    return tuple(str(i) for i in attr.ints)


def _operator_labels(graph: Any) -> tuple[tuple[str, ...], str]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.name in ("classlabels_strings", "classlabels_ints", "classlabels_int64s") and (
                    attr.strings or attr.ints):
                return _strings(attr), f"the model's {node.op_type} operator ({attr.name})"
    return (), ""


def _extractor_labels(graph: Any) -> tuple[tuple[str, ...], str]:
    """skl2onnx's MLP and friends: ArrayFeatureExtractor(classes, argmax) reads the label from a class table."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
                 for n in graph.node if n.op_type == "Constant" and n.output}
    for node in graph.node:
        if node.op_type != "ArrayFeatureExtractor" or not node.input:
            continue
        table = initializers.get(node.input[0]) or constants.get(node.input[0])
        if table is None:
            continue
        values = numpy_helper.to_array(table).reshape(-1)
        labels = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist())
        if labels:
            return labels, "the model's class table (ArrayFeatureExtractor)"
    return (), ""


def _metadata_labels(meta: dict[str, str]) -> tuple[tuple[str, ...], str]:
    for key in _LABEL_KEYS:
        raw = meta.get(key)
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = [x.strip() for x in raw.split(",")]
        if isinstance(value, dict):   # {"0": "cat", "1": "dog"} (some exporters write id→name)
            value = [value[k] for k in sorted(value, key=lambda k: int(k) if str(k).isdigit() else 0)]
        if isinstance(value, list) and value and all(isinstance(x, str | int) for x in value):
            return tuple(str(x) for x in value), f"the model's metadata ({key})"
    return (), ""


def card_path(model_path: Path) -> Path:
    """Where a model's card lives: NAME.card.json next to NAME.onnx."""
    return model_path.with_name(model_path.stem + ".card.json")


def read_card_json(model_path: Path) -> dict[str, Any]:
    """The model card next to the file ({} when there is none or it is unreadable)."""
    try:
        value = json.loads(card_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _pick_output(graph: Any, producers: dict[str, Any]) -> tuple[str, int, str, str] | None:
    """(name, classes, scores, datatype) of the rule's output, or None when the model has no float output."""
    initializers = {i.name for i in graph.initializer}
    matrices, singles = [], []
    for v in graph.output:
        if v.name in initializers:
            continue
        dims = _dims(v)
        elem = v.type.tensor_type.elem_type if dims is not None else 0
        if dims is None or elem not in _FLOAT_TYPES:
            continue
        kind = _trace_kind(v.name, producers)
        lname = v.name.lower()
        if not kind and "prob" in lname:
            kind = "probabilities"
        elif not kind and "logit" in lname:
            kind = "logits"
        if len(dims) == 2 and dims[1] != 1:
            matrices.append((v.name, dims[1], kind, _FLOAT_TYPES[elem]))
        elif len(dims) == 1 or (len(dims) == 2 and dims[1] == 1):
            singles.append((v.name, 1, "raw", _FLOAT_TYPES[elem]))
    if matrices:
        def rank(m: tuple[str, int, str, str]) -> tuple[int, int]:
            return ({"probabilities": 0, "logits": 1}.get(m[2], 2), 0 if "prob" in m[0].lower() else 1)
        name, classes, kind, dt = sorted(matrices, key=rank)[0]
        return name, classes, kind or "probabilities", dt
    if singles:
        return singles[0]
    return None


def _zipmap_problem(graph: Any) -> str:
    for v in graph.output:
        if _dims(v) is None:
            kind = v.type.WhichOneof("value")
            return (f"output {v.name!r} is a {kind.replace('_type', '')} (skl2onnx's ZipMap), which cannot be sent "
                    "over the inference protocol: export the model with zipmap=False (skl2onnx: "
                    "options={id(model): {'zipmap': False}}), or import it again and the console makes that copy")
    return ""


def suggest_rule(model: Any, model_path: Path | None = None, card: dict[str, Any] | None = None) -> RuleSuggestion:
    """The rule a new stage of this model starts with (see the module docstring for the order of choices)."""
    graph = model.graph
    producers = _producers(graph)
    picked = _pick_output(graph, producers)
    problems: list[str] = []
    zipmap = _zipmap_problem(graph)
    if card is None:
        card = read_card_json(model_path) if model_path is not None else {}
    if picked is None:
        first = next((v.name for v in graph.output), "output")
        problems.append(zipmap or f"no floating-point output to base a rule on (outputs: "
                                  f"{', '.join(v.name for v in graph.output) or 'none'}); the rule needs class "
                                  "probabilities, logits or a score")
        output, classes, scores = first, 0, "raw"
    else:
        output, classes, scores, _ = picked
    labels, labels_from = _operator_labels(graph)
    if not labels:
        labels, labels_from = _extractor_labels(graph)
    if not labels:
        labels, labels_from = _metadata_labels({m.key: m.value for m in model.metadata_props})
    if not labels and isinstance(card.get("classes"), list) and card["classes"]:
        labels, labels_from = tuple(str(c) for c in card["classes"]), "the model card (classes)"
    if scores == "raw" and classes <= 1:
        labels, labels_from = ("score",), "a single score"
    elif classes > 0 and labels and len(labels) != classes:
        problems.append(f"{len(labels)} labels from {labels_from} for output {output!r} of {classes} classes; "
                        "edit the labels (Shift+F2)")
        labels = labels[:classes] + tuple(f"class{i}" for i in range(len(labels), classes))
    if not labels:
        n = classes if classes > 0 else 2
        labels, labels_from = tuple(f"class{i}" for i in range(n)), "numbered (the model names no classes)"
    rule = card.get("escalation_rule")
    if isinstance(rule, dict) and any(k in rule for k in ("confidence_below", "class_in", "score_above")):
        def known(key: str) -> tuple[str, ...]:
            items = rule.get(key) or []
            return tuple(str(c) for c in items if str(c) in labels) if isinstance(items, list) else ()

        def number(key: str) -> float | None:
            v = rule.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

        kind = rule.get("scores") if rule.get("scores") in SCORE_KINDS else scores
        return RuleSuggestion(output, labels, str(kind), number("confidence_below"), known("class_in"),
                              number("score_above"), known("drop_class"), "card", labels_from, tuple(problems))
    if scores == "raw":
        return RuleSuggestion(output, labels, "raw", score_above=DEFAULT_SCORE, labels_from=labels_from,
                              problems=tuple(problems))
    return RuleSuggestion(output, labels, scores, confidence_below=DEFAULT_CONFIDENCE, labels_from=labels_from,
                          problems=tuple(problems))


def inspect_file(path: Path | str) -> RuleSuggestion:
    """`suggest_rule` for a model file (blocking: disk)."""
    import onnx

    p = Path(path)
    return suggest_rule(onnx.load(str(p), load_external_data=False), p)


def has_zipmap(model: Any) -> bool:
    """True when the graph ends in skl2onnx's ZipMap (an output that is a sequence of maps)."""
    return any(n.op_type == "ZipMap" for n in model.graph.node) and any(_dims(v) is None for v in model.graph.output)


def without_zipmap(path: Path | str, out: Path | str) -> Path:
    """Write a copy of the model whose ZipMap outputs are replaced by the [N, C] tensor fed to them (disk)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    zipmaps = [n for n in graph.node if n.op_type == "ZipMap"]
    if not zipmaps:
        raise ValueError(f"{Path(path).name} has no ZipMap")
    replaced: dict[str, str] = {}
    for node in zipmaps:
        replaced[node.output[0]] = node.input[0]
        graph.node.remove(node)
    # ZipMap's input is the probability tensor; its shape is [N, number of labels]
    new_outputs = []
    for v in graph.output:
        if v.name not in replaced:
            new_outputs.append(v)
            continue
        source = replaced[v.name]
        labels = next((len(_strings(a)) for n in zipmaps for a in n.attribute
                       if a.name.startswith("classlabels") and n.input[0] == source), -1)
        # named as zipmap=False names it, when that name is free
        taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        name = "probabilities" if "probabilities" not in taken else source
        if name != source:
            graph.node.append(helper.make_node("Identity", [source], [name], name="tierdeck_no_zipmap"))
        new_outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None, labels]))
    del graph.output[:]
    graph.output.extend(new_outputs)
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(target)
    return target


def rule_dict(rule: Rule) -> dict[str, Any]:
    """A rule as the pipeline file writes it (with `scores` where the format has it)."""
    d: dict[str, Any] = {"output": rule.output, "labels": list(rule.labels)}
    if rule_has_scores():
        d["scores"] = rule_scores(rule)
    for key in ("confidence_below", "score_above"):
        if getattr(rule, key) is not None:
            d[key] = getattr(rule, key)
    for key in ("class_in", "drop_class"):
        if getattr(rule, key):
            d[key] = list(getattr(rule, key))
    return d


def rule_from_dict(d: dict[str, Any], outputs: tuple[TensorSpec, ...]) -> tuple[Rule | None, list[str]]:
    """Validate a rule dict as the pipeline file does (the same checker); (rule, []) or (None, problems in words)."""
    from app.pipeline_file import _Checker, _rule

    d = dict(d)
    if not rule_has_scores():
        d.pop("scores", None)   # the file format of this version has no `scores` yet: probabilities
    checker = _Checker()
    rule = _rule(checker, d, "rule", outputs)
    words = [f"{p.where.removeprefix('rule').lstrip('.') or 'rule'}: {p.message}" for p in checker.problems]
    return (rule if not words else None), words
