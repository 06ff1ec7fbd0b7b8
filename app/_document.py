"""The editable pipeline: stages in chain order, changed only through reversible edits.

Every edit is an object with `redo(doc)` and `undo(doc)` that restore the document exactly, so the
canvas can wrap each one in a QUndoCommand (QUndoStack lives in QtGui, which app/ may not import;
`widgets/` owns the stack, app/ owns the edits).

The document keeps stages in hop order (the order of the arrows on the canvas): each stage's next
hop is the following stage, the last one has none. Model files are kept by absolute path
(`Stage.model_path`); `to_dict(base_dir)` writes them relative to where the file is saved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app._fit import ModelCard, Requirements, TensorInfo, memory_estimate, read_model_card
from app._model_inspect import DEFAULT_CONFIDENCE
from app.pipeline_file import (
    FORMAT,
    VERSION,
    Budget,
    Pipeline,
    PipelineError,
    Placement,
    Problem,
    Rule,
    Stage,
    TensorSpec,
    load_pipeline,
    parse_pipeline,
    stage_dict,
)
from runners._store import write_atomic

log = logging.getLogger(f"tierdeck.{__name__}")

ChangeCallback = Callable[["DocumentChange"], None]


@dataclass(frozen=True)
class DocumentChange:
    """What an edit did: kind is inserted, removed, moved, changed or reset; index/old_index where it applies."""

    kind: str
    stage_id: str = ""
    index: int = -1
    old_index: int = -1


class PipelineDocument:
    """An editable pipeline (stages in hop order) with change notifications."""

    def __init__(self, pipeline: Pipeline | None = None, cards: dict[str, ModelCard] | None = None) -> None:
        self.name = "untitled"
        self.description = ""
        self.path: Path | None = None
        self.stages: list[Stage] = []
        self.cards: dict[str, ModelCard] = {}
        self._subscribers: list[ChangeCallback] = []
        if pipeline is not None:
            self.reset(pipeline, cards)

    # ----- observing ------------------------------------------------------------------------------
    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback(DocumentChange)` after every change; returns the unsubscribe callable."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _changed(self, change: DocumentChange) -> None:
        for callback in list(self._subscribers):
            callback(change)

    # ----- reading --------------------------------------------------------------------------------
    def index(self, stage_id: str) -> int:
        """Position of a stage (KeyError if absent)."""
        for i, s in enumerate(self.stages):
            if s.id == stage_id:
                return i
        raise KeyError(stage_id)

    def stage(self, stage_id: str) -> Stage:
        """The stage with this id (KeyError if absent)."""
        return self.stages[self.index(stage_id)]

    def stage_ids(self) -> list[str]:
        """Stage ids in hop order."""
        return [s.id for s in self.stages]

    def requirements(self, stage_id: str) -> Requirements | None:
        """What the stage needs from a node (None when its model card is unknown)."""
        card = self.cards.get(stage_id)
        stage = self.stage(stage_id)
        choice = stage.providers
        if card is None:
            if stage.model_path is None:
                return None
            try:
                size = stage.model_path.stat().st_size
            except OSError:
                return None
            return Requirements(memory_estimate(size), size, stage_id=stage_id).with_choice(choice.require,
                                                                                             choice.prefer)
        return Requirements.from_card(card, stage_id).with_choice(choice.require, choice.prefer)

    def to_dict(self, base_dir: Path | None = None) -> dict[str, Any]:
        """The pipeline file form; model paths relative to `base_dir` (default: the file's folder)."""
        base = base_dir or (self.path.parent if self.path else None)
        stages = []
        for i, s in enumerate(self.stages):
            if i == len(self.stages) - 1 and s.rule.escalates:
                # The last stage gives the final answer: its escalate conditions (kept in the document for
                # when a stage is added after it again) do not go into the file.
                s = replace(s, rule=replace(s.rule, confidence_below=None, class_in=(), score_above=None))
            model = s.model
            if s.model_path is not None and base is not None:
                model = Path(os.path.relpath(s.model_path.resolve(), base.resolve())).as_posix()
            d = stage_dict(s, model, s.next)  # the document keeps stages in hop order: no "next" needed
            stages.append(d)
        doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "name": self.name}
        if self.description:
            doc["description"] = self.description
        doc["stages"] = stages
        return doc

    def to_pipeline(self, base_dir: Path | None = None) -> Pipeline:
        """Validate and return the pipeline (PipelineError listing every problem otherwise)."""
        base = base_dir or (self.path.parent if self.path else None)
        if not self.stages:
            raise PipelineError([Problem("stages", "the pipeline has no stages")])
        if base is None:
            base = self.stages[0].model_path.parent if self.stages[0].model_path else Path.cwd()
        pipeline = parse_pipeline(self.to_dict(base), base, check_models=True, source=str(self.path or ""))
        return replace(pipeline, path=self.path)

    def problems(self) -> list[Problem]:
        """Everything wrong with the pipeline as it stands (empty when it can be saved and deployed)."""
        try:
            self.to_pipeline()
        except PipelineError as exc:
            return list(exc.problems)
        return []

    # ----- changing (edits call these; they notify) -----------------------------------------------
    def reset(self, pipeline: Pipeline, cards: dict[str, ModelCard] | None = None) -> None:
        """Replace the whole document (open a file); not an undoable edit."""
        self.name = pipeline.name
        self.description = pipeline.description
        self.path = pipeline.path
        self.stages = [_normalise(s) for s in pipeline.chain()]
        self._rewire()
        self.cards = dict(cards or {})
        self._changed(DocumentChange("reset"))

    def insert(self, index: int, stage: Stage, card: ModelCard | None = None) -> None:
        """Insert a stage at `index`."""
        if any(s.id == stage.id for s in self.stages):
            raise ValueError(f"a stage with id {stage.id!r} already exists")
        self.stages.insert(index, stage)
        if card is not None:
            self.cards[stage.id] = card
        self._rewire()
        self._changed(DocumentChange("inserted", stage.id, index))

    def remove(self, stage_id: str) -> tuple[int, Stage, ModelCard | None]:
        """Remove a stage; returns (index, stage, card) so it can be put back."""
        i = self.index(stage_id)
        stage = self.stages.pop(i)
        card = self.cards.pop(stage_id, None)
        self._rewire()
        self._changed(DocumentChange("removed", stage_id, i))
        return i, stage, card

    def move(self, stage_id: str, to_index: int) -> int:
        """Move a stage to `to_index`; returns where it was."""
        i = self.index(stage_id)
        stage = self.stages.pop(i)
        self.stages.insert(to_index, stage)
        self._rewire()
        self._changed(DocumentChange("moved", stage_id, to_index, i))
        return i

    def replace_stage(self, stage: Stage) -> Stage:
        """Replace the stage with the same id; returns the old one."""
        i = self.index(stage.id)
        old = self.stages[i]
        self.stages[i] = stage
        self._rewire()
        self._changed(DocumentChange("changed", stage.id, i))
        return old

    def _rewire(self) -> None:
        for i, s in enumerate(self.stages):
            following = self.stages[i + 1].id if i + 1 < len(self.stages) else None
            if s.next != following:
                self.stages[i] = replace(s, next=following)


def _normalise(stage: Stage) -> Stage:
    if stage.model_path is not None:
        return replace(stage, model_path=Path(stage.model_path).resolve())
    return stage


def open_document(path: Path | str) -> tuple[Pipeline, dict[str, ModelCard]]:
    """Load and validate a pipeline file and read its model cards (blocking: disk)."""
    pipeline = load_pipeline(path)
    cards = {}
    for s in pipeline.stages:
        if s.model_path is not None:
            try:
                cards[s.id] = read_model_card(s.model_path)
            except Exception as exc:  # the loader already validated the file; a card is a nicety
                log.warning("no model card for stage %s (%s): %s", s.id, s.model_path, exc)
                continue
    return pipeline, cards


def import_model_file(path: Path | str) -> ModelCard:
    """Read a model for the palette (blocking: disk); a skl2onnx ZipMap model is imported as a copy without it.

    The copy (`NAME.nozipmap.onnx`, next to the file, or in the temp folder when that is read-only)
    serves the [N, C] probability tensor the ZipMap was fed, which is what `zipmap=False` exports.
    """
    import tempfile

    import onnx

    from app._model_inspect import has_zipmap, without_zipmap

    source = Path(path)
    if not has_zipmap(onnx.load(str(source), load_external_data=False)):
        return read_model_card(source)
    name = source.stem + ".nozipmap.onnx"
    for folder in (source.parent, Path(tempfile.gettempdir()) / "tierdeck-models"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return read_model_card(without_zipmap(source, folder / name))
        except OSError:
            continue
    return read_model_card(source)


def save_document(doc_dict: dict[str, Any], path: Path | str) -> None:
    """Write a pipeline document (from `PipelineDocument.to_dict(Path(path).parent)`) atomically."""
    import json

    write_atomic(Path(path), (json.dumps(doc_dict, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
                 make_parents=False)


def stage_from_card(card: ModelCard, stage_id: str, placement: Placement, rule: Rule | None = None,
                    budget: Budget | None = None) -> Stage:
    """A new stage for a model card (e.g. dropped from the palette); the rule defaults to the card's suggestion.

    The suggestion (app/_model_inspect.py) puts the rule on the [N, C] probability or score tensor with
    the model's own labels and the model card's recommended rule, else a visible default. Only tensor
    outputs are declared (a ZipMap sequence cannot be served).
    """
    def spec(t: TensorInfo) -> TensorSpec:
        return TensorSpec(t.name, t.datatype, t.shape)

    if rule is None:
        if card.suggestion is not None:
            rule = card.suggestion.rule()
        else:
            first = card.outputs[0] if card.outputs else TensorInfo("output", "FP32", (-1,))
            classes = first.shape[-1] if first.shape and first.shape[-1] > 0 else 2
            rule = Rule(first.name, tuple(f"class{i}" for i in range(classes)),
                        confidence_below=DEFAULT_CONFIDENCE)
    return Stage(stage_id, card.path.name, card.sha256, placement, tuple(spec(t) for t in card.inputs),
                 tuple(spec(t) for t in card.outputs), rule, budget or Budget(), None, None, "",
                 card.path.resolve())


def rule_origin(card: ModelCard | None) -> str:
    """Words for where a new stage's rule came from ('rule from the model card: …' / 'default rule: …')."""
    if card is None or card.suggestion is None:
        return f"default rule: escalate when confidence < {DEFAULT_CONFIDENCE:.2f} — tune it with F2"
    return card.suggestion.words()


# ----- edits -------------------------------------------------------------------------------------------

@dataclass
class Edit:
    """A reversible change of a PipelineDocument; `text` names it for an undo menu."""

    text: str = field(default="", init=False)

    def redo(self, doc: PipelineDocument) -> None:
        """Apply the change."""
        raise NotImplementedError

    def undo(self, doc: PipelineDocument) -> None:
        """Revert the change exactly."""
        raise NotImplementedError


@dataclass
class InsertStage(Edit):
    """Add a stage at a position (a palette drop)."""

    index: int
    stage: Stage
    card: ModelCard | None = None

    def __post_init__(self) -> None:
        self.text = f"Add stage {self.stage.id}"

    def redo(self, doc: PipelineDocument) -> None:
        """Insert the stage."""
        doc.insert(min(self.index, len(doc.stages)), self.stage, self.card)

    def undo(self, doc: PipelineDocument) -> None:
        """Remove it again."""
        doc.remove(self.stage.id)


@dataclass
class RemoveStage(Edit):
    """Delete a stage."""

    stage_id: str
    _saved: tuple[int, Stage, ModelCard | None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.text = f"Delete stage {self.stage_id}"

    def redo(self, doc: PipelineDocument) -> None:
        """Remove the stage, remembering where it was."""
        self._saved = doc.remove(self.stage_id)

    def undo(self, doc: PipelineDocument) -> None:
        """Put it back where it was."""
        assert self._saved is not None
        index, stage, card = self._saved
        doc.insert(index, stage, card)


@dataclass
class MoveStage(Edit):
    """Reorder: move a stage to another position in the chain."""

    stage_id: str
    to_index: int
    _from: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        self.text = f"Move stage {self.stage_id}"

    def redo(self, doc: PipelineDocument) -> None:
        """Move it."""
        self._from = doc.move(self.stage_id, self.to_index)

    def undo(self, doc: PipelineDocument) -> None:
        """Move it back."""
        doc.move(self.stage_id, self._from)


@dataclass
class _ReplaceField(Edit):
    stage_id: str
    _old: Stage | None = field(default=None, init=False, repr=False)

    def _new(self, stage: Stage) -> Stage:
        raise NotImplementedError

    def redo(self, doc: PipelineDocument) -> None:
        """Change the field."""
        current = doc.stage(self.stage_id)
        self._old = doc.replace_stage(self._new(current))

    def undo(self, doc: PipelineDocument) -> None:
        """Restore the stage as it was."""
        assert self._old is not None
        doc.replace_stage(replace(self._old, next=doc.stage(self.stage_id).next))


@dataclass
class SetPlacement(_ReplaceField):
    """Place a stage on a tier (lane drop) or pin it to nodes (node-card drop)."""

    placement: Placement = field(default_factory=Placement)
    where: str = ""     # words for the undo text (node names); default: the tier or node ids

    def __post_init__(self) -> None:
        where = self.where or self.placement.tier or ", ".join(n[:8] for n in self.placement.nodes)
        self.text = f"Place {self.stage_id} on {where}"

    def _new(self, stage: Stage) -> Stage:
        return replace(stage, placement=self.placement)


@dataclass
class Retier(Edit):
    """Move a stage to another tier or node: new placement and its place in the hop order, as one edit."""

    stage_id: str
    placement: Placement
    to_index: int
    where: str = ""
    _old: Placement | None = field(default=None, init=False, repr=False)
    _from: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        where = self.where or self.placement.tier or ", ".join(n[:8] for n in self.placement.nodes)
        self.text = f"Move {self.stage_id} to {where}"

    def redo(self, doc: PipelineDocument) -> None:
        """Re-place the stage, then put it where its new tier belongs in the chain."""
        stage = doc.stage(self.stage_id)
        self._old = stage.placement
        doc.replace_stage(replace(stage, placement=self.placement))
        self._from = doc.index(self.stage_id)
        if self.to_index != self._from:
            doc.move(self.stage_id, max(0, min(self.to_index, len(doc.stages) - 1)))

    def undo(self, doc: PipelineDocument) -> None:
        """Back to the old position and placement."""
        assert self._old is not None
        if doc.index(self.stage_id) != self._from:
            doc.move(self.stage_id, self._from)
        doc.replace_stage(replace(doc.stage(self.stage_id), placement=self._old))


@dataclass
class SetRule(_ReplaceField):
    """Change a stage's escalation rule (e.g. its threshold, edited in place)."""

    rule: Rule | None = None

    def __post_init__(self) -> None:
        self.text = f"Change rule of {self.stage_id}"

    def _new(self, stage: Stage) -> Stage:
        assert self.rule is not None
        return replace(stage, rule=self.rule)


@dataclass
class SetBudget(_ReplaceField):
    """Change a stage's escalation budget."""

    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        self.text = f"Change budget of {self.stage_id}"

    def _new(self, stage: Stage) -> Stage:
        return replace(stage, budget=self.budget)
