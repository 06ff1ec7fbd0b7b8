"""Pipeline problems in an operator's words: what is wrong, on which stage, and the action that fixes it.

The pipeline file's checker speaks in JSON paths (`stages[2].rule: …`), which is right for a file
and wrong for a canvas. `explain` keeps that as the detail and puts first which stage it is, what
is wrong in plain words, and the key or gesture that fixes it; the canvas selects the stage when the
operator clicks the line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.pipeline_file import Problem

_STAGE = re.compile(r"^stages\[(\d+)\](?:\.(\w+))?")


@dataclass(frozen=True)
class Advice:
    """One problem for an operator: the stage it is about ('' for the whole pipeline), words, the fix, the detail."""

    stage_id: str
    text: str
    action: str
    detail: str

    def __str__(self) -> str:
        return f"{self.text} — {self.action}" if self.action else self.text


def explain(problem: Problem, stage_ids: Sequence[str]) -> Advice:
    """Put one validation problem into an operator's words (the JSON path stays as `detail`)."""
    detail = str(problem)
    m = _STAGE.match(problem.where)
    index = int(m.group(1)) if m else -1
    part = (m.group(2) or "") if m else ""
    sid = stage_ids[index] if 0 <= index < len(stage_ids) else ""
    name = f"'{sid}'" if sid else "a stage"
    msg = problem.message
    following = stage_ids[index + 1] if 0 <= index + 1 < len(stage_ids) else ""
    if "never escalates" in msg:
        return Advice(sid, f"{name} passes what it cannot settle to '{following or 'the next stage'}', but its rule "
                           "never escalates, so nothing would reach it",
                      f"press F2 on {name} to set a threshold (or Shift+F2 for the rule)", detail)
    if "is the last stage" in msg:
        return Advice(sid, f"{name} is the last stage but its rule still escalates (there is nowhere to go)",
                      f"press Shift+F2 on {name} and choose 'never (last stage)'", detail)
    if "labels for output" in msg:
        return Advice(sid, f"{name}: the number of class names does not match the model's output ({msg})",
                      f"press Shift+F2 on {name} to edit the labels", detail)
    if "missing output name" in msg and part == "rule":
        return Advice(sid, f"{name}: the rule reads an output the model does not have",
                      f"press Shift+F2 on {name} to choose the output", detail)
    if "unknown class" in msg or "drop_class and class_in" in msg:
        return Advice(sid, f"{name}: the rule names a class the labels do not have",
                      f"press Shift+F2 on {name} to fix the classes", detail)
    if "sha256 mismatch" in msg:
        return Advice(sid, f"{name}: its model file changed on disk since it was placed",
                      f"delete {name} (Del) and drag the model from the palette again", detail)
    if "unknown model file" in msg or "cannot read model file" in msg or "not a readable ONNX" in msg:
        return Advice(sid, f"{name}: its model file is missing or unreadable",
                      "import the model again (Ctrl+I) and drop it in place of this stage", detail)
    if "escalates its inputs" in msg:
        return Advice(sid, f"{name} sends inputs that '{following}' cannot take (different input tensors)",
                      f"move {name} (Alt+Up/Down) next to a stage with the same inputs, or delete one of them",
                      detail)
    if part in ("inputs", "outputs"):
        return Advice(sid, f"{name}: the stage's tensors do not match its model file ({msg})",
                      f"delete {name} (Del) and drag the model from the palette again", detail)
    if part == "placement":
        return Advice(sid, f"{name}: where it runs is not valid ({msg})",
                      f"drag {name} onto a lane or a node card", detail)
    if problem.where == "stages" and "no stages" in msg:
        return Advice("", "the pipeline has no stages yet",
                      "drag a model from the palette onto a lane (or select it and press Enter)", detail)
    if sid:
        return Advice(sid, f"{name}: {msg}", f"select {name} and fix it with F2 (threshold) or Shift+F2 (rule)", detail)
    return Advice("", msg, "", detail)


def explain_all(problems: Sequence[Problem], stage_ids: Sequence[str]) -> list[Advice]:
    """Every problem in words, once each (the same words for two paths are said once)."""
    out: list[Advice] = []
    seen: set[str] = set()
    for p in problems:
        advice = explain(p, stage_ids)
        key = str(advice)
        if key not in seen:
            seen.add(key)
            out.append(advice)
    return out
