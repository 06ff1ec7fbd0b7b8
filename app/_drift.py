"""Drift: where what runs on the fleet differs from the pipeline open in the console (no Qt, no I/O).

A threshold pushed live, a deployment from another file or console, a rollback: each leaves nodes
running a model or a rule the open file does not say. `drift` compares, per stage, every node
running it with the file's stage, and says what differs in words; `Drift.live_rule` is the rule the
nodes run (when they all agree), for "take the live values into the file".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from app._model_inspect import condition_words, make_rule, rule_scores
from app._records import NodeSnapshot
from app.pipeline_file import Rule, Stage


@dataclass(frozen=True)
class Drift:
    """One stage whose nodes run something other than the file."""

    stage_id: str
    nodes: tuple[str, ...]          # names of the nodes that differ
    words: str                      # what differs, e.g. "fleet runs confidence < 0.80, the file says 0.95"
    live_rule: Rule | None = None   # the rule those nodes run (None when they disagree or run another model)


def _values(rule: Rule) -> tuple[object, ...]:
    return (rule.output, tuple(rule.labels), rule.confidence_below, tuple(rule.class_in), rule.score_above,
            tuple(rule.drop_class))


def _close(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Equal, with thresholds compared as the float32 the wire carries."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > 1e-6:
                return False
        elif x != y:
            return False
    return True


def drift(chain: Sequence[Stage], nodes: Sequence[NodeSnapshot]) -> dict[str, Drift]:
    """Per stage id: how the nodes running it differ from the file's stage (stages that agree are left out)."""
    out: dict[str, Drift] = {}
    for k, stage in enumerate(chain):
        rule = stage.rule
        if k == len(chain) - 1:   # the file gives the last stage no escalate conditions (see PipelineDocument)
            rule = replace(rule, confidence_below=None, class_in=(), score_above=None)
        want = _values(rule)
        model_differs: list[str] = []
        rule_differs: dict[tuple[object, ...], list[str]] = {}
        for node in nodes:
            running = node.stage(stage.id)
            if running is None:
                continue
            if running.sha256 and running.sha256 != stage.sha256:
                model_differs.append(node.name)
            elif running.rule_values and not _close(running.rule_values, want):
                rule_differs.setdefault(tuple(running.rule_values), []).append(node.name)
        if model_differs:
            out[stage.id] = Drift(stage.id, tuple(sorted(model_differs)),
                                  f"{', '.join(sorted(model_differs))} run{'s' if len(model_differs) == 1 else ''} "
                                  "another model than the file")
        elif rule_differs:
            names = tuple(sorted(n for group in rule_differs.values() for n in group))
            live = next(iter(rule_differs)) if len(rule_differs) == 1 else None
            if live is not None:
                output, labels, conf, class_in, score, drop = live
                live_rule: Rule | None = make_rule(str(output), tuple(labels),  # type: ignore[arg-type]
                                                   scores=rule_scores(stage.rule), confidence_below=conf,  # type: ignore[arg-type]
                                                   class_in=tuple(class_in), score_above=score,  # type: ignore[arg-type]
                                                   drop_class=tuple(drop))  # type: ignore[arg-type]
                said = condition_words(conf, tuple(class_in), score)  # type: ignore[arg-type]
                filed = condition_words(rule.confidence_below, rule.class_in, rule.score_above)
                words = (f"fleet runs {said}, the file says {filed}" if said != filed else
                         "fleet runs other labels, output or drop classes than the file")
            else:
                live_rule, words = None, "nodes disagree with the file and with each other"
            out[stage.id] = Drift(stage.id, names, words, live_rule)
    return out
