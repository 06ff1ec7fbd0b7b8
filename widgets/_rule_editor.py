"""The rule editor (Shift+F2 on a stage): the output the rule reads, what its values are, labels, when to escalate.

The dialog is told the stage (a frozen record) and answers with a validated Rule through
`rule_chosen`; the canvas turns that into an undoable SetRule. Validation is the pipeline file's own
checker (`app._model_inspect.rule_from_dict`), shown live under the form, and OK stays disabled
while the rule has a problem.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from app._model_inspect import rule_from_dict, rule_has_scores, rule_scores
from app.pipeline_file import Stage

KINDS = (("confidence_below", "top-class confidence is below"), ("score_above", "top score is above"),
         ("class_in", "top class is one of"), ("", "never (last stage: final answer)"))
SCORES = (("probabilities", "probabilities (softmax already applied)"),
          ("logits", "logits (the agent applies softmax first)"),
          ("raw", "raw scores (only score / class conditions make sense)"))


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class RuleEditor(QDialog):
    """Edit one stage's escalation rule: output, scores, labels, condition; OK only when the rule is valid."""

    rule_chosen = Signal(str, object)     # stage id, Rule

    def __init__(self, stage: Stage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stage = stage
        self.setWindowTitle(f"Rule of {stage.id}")
        rule = stage.rule
        self.output = QComboBox(self)
        for t in stage.outputs:
            self.output.addItem(f"{t.name}  {t.datatype} {list(t.shape)}", t.name)
        self.output.setCurrentIndex(max(0, self.output.findData(rule.output)))
        self.scores = QComboBox(self)
        for key, words in SCORES:
            self.scores.addItem(words, key)
        self.scores.setCurrentIndex(max(0, self.scores.findData(rule_scores(rule))))
        if not rule_has_scores():
            self.scores.setEnabled(False)
            self.scores.setToolTip("This version of the pipeline file has no 'scores' key yet: probabilities")
        self.labels = QLineEdit(", ".join(rule.labels), self)
        self.labels.setToolTip("The class names, in the order of the output's columns, comma-separated")
        self.kind = QComboBox(self)
        for key, words in KINDS:
            self.kind.addItem(words, key)
        current = ("class_in" if rule.class_in and rule.confidence_below is None and rule.score_above is None else
                   "score_above" if rule.score_above is not None else
                   "confidence_below" if rule.confidence_below is not None or stage.next is not None else "")
        self.kind.setCurrentIndex(max(0, self.kind.findData(current)))
        self.threshold = QDoubleSpinBox(self)
        self.threshold.setDecimals(3)
        self.threshold.setRange(0.0, 1e6)
        self.threshold.setSingleStep(0.01)
        self.threshold.setValue(rule.confidence_below if rule.confidence_below is not None else
                                rule.score_above if rule.score_above is not None else 0.9)
        self.class_in = QLineEdit(", ".join(rule.class_in), self)
        self.class_in.setToolTip("Escalate when the top class is one of these (comma-separated); with a threshold too "
                                 "it escalates when either holds")
        self.drop_class = QLineEdit(", ".join(rule.drop_class), self)
        self.drop_class.setToolTip("Settle and stop here when the top class is one of these (checked first)")
        self.problems = QLabel(self)
        self.problems.setWordWrap(True)
        self.problems.setProperty("banner", "warning")
        self.problems.setAccessibleName("Rule problems")
        form = QFormLayout()
        form.addRow("&Output", self.output)
        form.addRow("Its &values are", self.scores)
        form.addRow("&Labels", self.labels)
        form.addRow("&Escalate when", self.kind)
        form.addRow("&Threshold", self.threshold)
        form.addRow("…or the top class is &in", self.class_in)
        form.addRow("&Settle (stop) on classes", self.drop_class)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.problems)
        layout.addWidget(self.buttons)
        for signal in (self.output.currentIndexChanged, self.scores.currentIndexChanged,
                       self.kind.currentIndexChanged, self.threshold.valueChanged):
            signal.connect(self._check)
        for edit in (self.labels, self.class_in, self.drop_class):
            edit.textChanged.connect(self._check)
        self._check()

    def as_dict(self) -> dict[str, Any]:
        """The rule the form describes, in pipeline-file form."""
        d: dict[str, Any] = {"output": self.output.currentData() or "", "labels": _split(self.labels.text()),
                             "scores": self.scores.currentData()}
        kind = self.kind.currentData()
        if kind in ("confidence_below", "score_above"):
            d[kind] = float(self.threshold.value())
        if _split(self.class_in.text()):
            d["class_in"] = _split(self.class_in.text())
        if _split(self.drop_class.text()):
            d["drop_class"] = _split(self.drop_class.text())
        return d

    @Slot()
    def _check(self) -> list[str]:
        kind = self.kind.currentData()
        self.threshold.setEnabled(kind in ("confidence_below", "score_above"))
        self.threshold.setMaximum(1.0 if kind == "confidence_below" else 1e6)
        rule, problems = rule_from_dict(self.as_dict(), self.stage.outputs)
        if rule is not None and self.stage.next is not None and not rule.escalates:
            problems.append(f"{self.stage.id} passes what it cannot settle to {self.stage.next}: choose a condition "
                            "(a threshold or classes), or it never escalates")
        if rule is not None and kind == "confidence_below" and self.scores.currentData() == "raw":
            problems.append("a confidence threshold needs probabilities or logits; on raw scores use 'top score is "
                            "above' or classes")
        self.problems.setText("\n".join(f"⚠ {p}" for p in problems))
        self.problems.setVisible(bool(problems))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problems)
        return problems

    def accept(self) -> None:
        """Emit the rule (only a valid one) and close."""
        rule, _ = rule_from_dict(self.as_dict(), self.stage.outputs)
        if rule is None or self._check():
            return
        if rule != self.stage.rule:
            self.rule_chosen.emit(self.stage.id, rule)
        super().accept()

