"""Validation problems in an operator's words: the stage, what is wrong, the key that fixes it."""

from __future__ import annotations

import pytest

from app._problem_words import explain, explain_all
from app.pipeline_file import Problem

IDS = ["detector", "detector-2", "heavy"]


@pytest.mark.parametrize(("where", "message", "stage", "words", "action"), [
    ("stages[1].rule", "stage 'detector-2' has a next hop ('heavy') but its rule never escalates; set "
     "confidence_below, class_in or score_above", "detector-2", "passes what it cannot settle to 'heavy'",
     "press F2 on 'detector-2'"),
    ("stages[2].rule", "stage 'heavy' is the last stage (no next hop) but its rule escalates; remove …", "heavy",
     "is the last stage", "Shift+F2 on 'heavy'"),
    ("stages[0].rule.labels", "3 labels for output 'probs' of 2 classes", "detector", "number of class names",
     "edit the labels"),
    ("stages[0].rule.output", "missing output name: 'label' is not one of this stage's outputs (probs)", "detector",
     "reads an output", "choose the output"),
    ("stages[2].sha256", "sha256 mismatch: the file heavy.onnx has 1…, the pipeline says 2…", "heavy",
     "changed on disk", "drag the model from the palette again"),
    ("stages[0].model", "unknown model file 'x.onnx' (no such file: /x.onnx)", "detector", "missing or unreadable",
     "Ctrl+I"),
    ("stages", "the pipeline has no stages", "", "no stages yet", "drag a model from the palette"),
])
def test_each_problem_names_the_stage_and_the_fix(where: str, message: str, stage: str, words: str,
                                                  action: str) -> None:
    advice = explain(Problem(where, message), IDS)
    assert advice.stage_id == stage
    assert words in advice.text and action in advice.action
    assert "stages[" not in str(advice) and advice.detail == f"{where}: {message}"


def test_the_same_words_are_said_once() -> None:
    problems = [Problem("stages[0].rule.class_in[0]", "rule refers to unknown class 'a' (labels: b)"),
                Problem("stages[0].rule.class_in[1]", "rule refers to unknown class 'c' (labels: b)")]
    assert len(explain_all(problems, IDS)) == 1
