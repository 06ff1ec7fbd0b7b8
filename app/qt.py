"""Qt adapters over the console core (QtCore only): models that live on the GUI thread and only observe.

How updates cross threads: the core calls its listeners on the I/O loop thread; `Dispatcher` (a
QObject on the GUI thread) re-emits each one through a queued signal to its bound `@Slot` method,
which runs the model update on the GUI thread (never a lambda receiver: PySide6 >= 6.8 segfaulted
on receiver-less cross-thread signals, PYSIDE-3124). Telemetry is coalesced: samples collect on
the loop thread and are flushed to the GUI as one batch at most `flush_hz` times a second (20 Hz
by default), so a 200-node fleet at 10 Hz costs the GUI thread 20 small slot calls a second.

Usage::

    core = ConsoleCore(db_path, interfaces=["127.0.0.1"]).start()
    console = QtConsole(core)             # on the GUI thread, after QCoreApplication exists
    FleetPanel(console.fleet)             # widgets take a model and connect to its signals
    console.fleet.add_address("10.0.0.7:50051")
    ...
    console.close(); core.stop()
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
    Slot,
)

from app._console import ConsoleCore
from app._db import history
from app._deployer import DeployProgress, DeployResult, Plan
from app._document import (
    DocumentChange,
    Edit,
    PipelineDocument,
    import_model_file,
    open_document,
    save_document,
)
from app._fit import FitResult, ModelCard, Requirements, check_fit, read_model_card
from app._miss import ShadowCounts
from app._records import ConsoleEvent, FleetEvent, FleetEventKind, NodeSample, NodeSnapshot
from app._telemetry import LiveTelemetry, RingBuffer
from app.pipeline_file import Pipeline, PipelineError, Stage

log = logging.getLogger(f"tierdeck.{__name__}")

_Index = QModelIndex | QPersistentModelIndex


class Dispatcher(QObject):
    """Runs callables on the GUI thread: `post(fn, *args)` from any thread → queued signal → bound slot.

    The one bridge from worker threads to the GUI (never a receiver-less lambda: PySide6 >= 6.8 segfaulted
    on those, PYSIDE-3124); the views use it for the futures of their intents too (`when_done`).
    """

    posted = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.posted.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    def post(self, fn: Callable[..., object], *args: object) -> None:
        """Call `fn(*args)` on this object's (GUI) thread; never blocks."""
        self.posted.emit((fn, args))

    @Slot(object)
    def _deliver(self, item: tuple[Callable[..., object], tuple[object, ...]]) -> None:
        fn, args = item
        try:
            fn(*args)
        except Exception:
            log.exception("GUI-thread callback failed")

    def when_done(self, future: concurrent.futures.Future[Any], on_result: Callable[[Any], object],
                  on_error: Callable[[BaseException], object]) -> None:
        """Deliver a future's result (or exception, CancelledError included) to a GUI-thread callback."""
        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled():
                self.post(on_error, concurrent.futures.CancelledError())
                return
            exc = f.exception()
            if exc is not None:
                self.post(on_error, exc)
            else:
                self.post(on_result, f.result())
        future.add_done_callback(done)


# ----- fleet ---------------------------------------------------------------------------------------

class FleetModel(QAbstractListModel):
    """The fleet as a list model (one row per node, in the order they became known)."""

    KeyRole = Qt.ItemDataRole.UserRole + 1
    NodeIdRole = Qt.ItemDataRole.UserRole + 2
    NameRole = Qt.ItemDataRole.UserRole + 3
    TierRole = Qt.ItemDataRole.UserRole + 4
    StateRole = Qt.ItemDataRole.UserRole + 5
    AddressRole = Qt.ItemDataRole.UserRole + 6
    ReasonRole = Qt.ItemDataRole.UserRole + 7
    SnapshotRole = Qt.ItemDataRole.UserRole + 8
    StateSinceRole = Qt.ItemDataRole.UserRole + 9

    node_added = Signal(str)                 # key
    node_removed = Signal(str)               # key
    node_changed = Signal(str)               # key (identity, info, stages or reasons)
    node_rekeyed = Signal(str, str)          # old key, new key (node id learned)
    state_changed = Signal(str, str, str)    # key, old state, new state

    def __init__(self, console: QtConsole) -> None:
        super().__init__(console)
        self._console = console
        self._rows: list[NodeSnapshot] = []
        self._index: dict[str, int] = {}

    # Qt model API
    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        """Number of nodes."""
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Per-row data by role."""
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        node = self._rows[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, self.NameRole):
            return node.name
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{node.name} ({node.tier or '?'}) {node.address}: {node.state}" + (
                f" — {node.reason}" if node.reason else "")
        return {
            self.KeyRole: node.key, self.NodeIdRole: node.node_id, self.TierRole: node.tier,
            self.StateRole: str(node.state), self.AddressRole: node.address, self.ReasonRole: node.reason,
            self.SnapshotRole: node, self.StateSinceRole: node.state_since_ms,
        }.get(role)

    def roleNames(self) -> dict[int, QByteArray]:
        """Role names (for QML and proxies)."""
        names = {self.KeyRole: b"key", self.NodeIdRole: b"nodeId", self.NameRole: b"name",
                 self.TierRole: b"tier", self.StateRole: b"state", self.AddressRole: b"address",
                 self.ReasonRole: b"reason", self.SnapshotRole: b"snapshot", self.StateSinceRole: b"stateSince"}
        return {k: QByteArray(v) for k, v in names.items()}

    # reading
    def nodes(self) -> list[NodeSnapshot]:
        """Every node's snapshot."""
        return list(self._rows)

    def node(self, key: str) -> NodeSnapshot | None:
        """One node by key (or node id)."""
        i = self._index.get(key)
        return self._rows[i] if i is not None else None

    def by_tier(self, tier: str) -> list[NodeSnapshot]:
        """Nodes of one tier."""
        return [n for n in self._rows if n.tier == tier]

    # intents (return at once; results arrive as signals)
    def add_address(self, address: str, tier: str = "", name: str = "") -> concurrent.futures.Future[str]:
        """Add a node by HOST:PORT (ValueError in the future for a bad address)."""
        return self._console.core.add_address(address, tier, name)

    def forget(self, key: str) -> None:
        """Forget a node."""
        self._console.core.forget(key)

    def reconnect(self, key: str) -> None:
        """Reconnect to a node now."""
        self._console.core.reconnect(key)

    def fit(self, requirements: Requirements, key: str) -> FitResult:
        """Fit check of a stage on one node, from what the console already knows (no I/O)."""
        node = self.node(key)
        if node is None:
            return FitResult(False, key, (f"unknown node {key}",))
        latest = self._console.telemetry.latest(node.node_id) if node.node_id else None
        return check_fit(requirements, node, latest.power_watts if latest else None)

    def fit_tier(self, requirements: Requirements, tier: str) -> list[FitResult]:
        """Fit check against every node of a tier (a lane drop places the stage on all of them)."""
        return [self.fit(requirements, n.key) for n in self.by_tier(tier)]

    # from the core (GUI thread)
    def _apply(self, event: FleetEvent) -> None:
        node = event.node
        if event.kind == FleetEventKind.ADDED:
            if node.key in self._index:
                self._replace(node.key, node)
                return
            row = len(self._rows)
            self.beginInsertRows(QModelIndex(), row, row)
            self._rows.append(node)
            self._index[node.key] = row
            self.endInsertRows()
            self.node_added.emit(node.key)
        elif event.kind == FleetEventKind.REMOVED:
            key = event.previous_key or node.key
            gone = self._index.get(key)
            if gone is None:
                return
            self.beginRemoveRows(QModelIndex(), gone, gone)
            del self._rows[gone]
            self._reindex()
            self.endRemoveRows()
            self.node_removed.emit(key)
        elif event.kind == FleetEventKind.REKEYED:
            moved = self._index.pop(event.previous_key, None)
            if moved is None:
                self._apply(FleetEvent(FleetEventKind.ADDED, node))
                return
            self._rows[moved] = node
            self._index[node.key] = moved
            self._changed_row(moved)
            self.node_rekeyed.emit(event.previous_key, node.key)
        else:
            self._replace(node.key, node)
            if event.kind == FleetEventKind.STATE_CHANGED:
                old = str(event.previous_state) if event.previous_state is not None else ""
                self.state_changed.emit(node.key, old, str(node.state))

    def _replace(self, key: str, node: NodeSnapshot) -> None:
        row = self._index.get(key)
        if row is None:
            return
        self._rows[row] = node
        self._changed_row(row)
        self.node_changed.emit(key)

    def _changed_row(self, row: int) -> None:
        index = self.index(row, 0)
        self.dataChanged.emit(index, index)

    def _reindex(self) -> None:
        self._index = {n.key: i for i, n in enumerate(self._rows)}


# ----- telemetry -----------------------------------------------------------------------------------

class TelemetryModel(QObject):
    """Live telemetry: numpy ring buffers per node and per stage, filled on the GUI thread in batches."""

    samples_received = Signal(object)      # list[str]: node ids with new samples (once per flush)
    history_loaded = Signal(int, object)   # request id, dict {"resolution", "t", column: [...]}
    history_failed = Signal(int, str)      # request id, reason

    def __init__(self, console: QtConsole, capacity: int = 1200) -> None:
        super().__init__(console)
        self._console = console
        self.live = LiveTelemetry(capacity)
        self.batches = 0
        self._requests = itertools.count(1)

    @property
    def samples(self) -> int:
        """Samples received so far."""
        return self.live.samples

    def latest(self, node_id: str) -> NodeSample | None:
        """The newest sample of a node."""
        return self.live.latest.get(node_id)

    def node_series(self, node_id: str) -> RingBuffer | None:
        """Ring buffer of node figures (columns: app._telemetry.NODE_COLUMNS)."""
        return self.live.nodes.get(node_id)

    def stage_series(self, node_id: str, stage_id: str) -> RingBuffer | None:
        """Ring buffer of a stage's figures on a node (columns: app._telemetry.STAGE_COLUMNS)."""
        return self.live.stages.get((node_id, stage_id))

    def stage_keys(self) -> list[tuple[str, str]]:
        """(node id, stage id) pairs with live data."""
        return list(self.live.stages)

    def shadow_counts(self, stage_id: str) -> ShadowCounts:
        """The link's shadow figures (app/_miss.py) summed over the nodes running the stage."""
        return self.live.shadow_counts(stage_id)

    def score_histogram(self, node_id: str, stage_id: str, since: float | None = None) -> Any:
        """Summed score histogram (20 bins over [0, 1]) of a stage since `since` (Unix seconds)."""
        return self.live.score_histogram(node_id, stage_id, since)

    def request_history(self, node_id: str, stage: str, since_ms: int, until_ms: int,
                        columns: tuple[str, ...] = ("inferences_per_s", "escalation_rate", "latency_p95_ms"),
                        resolution: str = "auto") -> int:
        """Ask the database for a time series (stage '' = node figures); answered by `history_loaded`."""
        request = next(self._requests)
        future = self._console.core.db.read(
            lambda db: history(db, node_id, stage, since_ms, until_ms, columns, resolution))
        self._console.dispatcher.when_done(
            future, lambda result: self.history_loaded.emit(request, result),
            lambda exc: self.history_failed.emit(request, str(exc)))
        return request

    def _add_batch(self, batch: list[NodeSample]) -> None:
        for sample in batch:
            self.live.add(sample)
        self.batches += 1
        self.samples_received.emit(list(dict.fromkeys(s.node_id for s in batch)))

    def _forget(self, node_id: str) -> None:
        self.live.forget(node_id)


# ----- events --------------------------------------------------------------------------------------

class EventLogModel(QAbstractListModel):
    """The audit log, newest last (the last `capacity` events of this session)."""

    TimeRole = Qt.ItemDataRole.UserRole + 1
    KindRole = Qt.ItemDataRole.UserRole + 2
    SeverityRole = Qt.ItemDataRole.UserRole + 3
    NodeIdRole = Qt.ItemDataRole.UserRole + 4
    EventRole = Qt.ItemDataRole.UserRole + 5

    event_added = Signal(object)    # ConsoleEvent

    def __init__(self, console: QtConsole, capacity: int = 5000) -> None:
        super().__init__(console)
        self.capacity = capacity
        self._rows: list[ConsoleEvent] = []

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        """Number of events held."""
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Per-row data by role."""
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        ev = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return ev.message
        return {self.TimeRole: ev.ts_ms, self.KindRole: ev.kind, self.SeverityRole: str(ev.severity),
                self.NodeIdRole: ev.node_id, self.EventRole: ev}.get(role)

    def events(self) -> list[ConsoleEvent]:
        """Every event held, oldest first."""
        return list(self._rows)

    def _add(self, event: ConsoleEvent) -> None:
        if len(self._rows) >= self.capacity:
            drop = len(self._rows) - self.capacity + 1
            self.beginRemoveRows(QModelIndex(), 0, drop - 1)
            del self._rows[:drop]
            self.endRemoveRows()
        row = len(self._rows)
        self.beginInsertRows(QModelIndex(), row, row)
        self._rows.append(event)
        self.endInsertRows()
        self.event_added.emit(event)


# ----- deployments ---------------------------------------------------------------------------------

class DeploymentModel(QObject):
    """Plan and apply pipelines; progress and results arrive as signals (for the deploy dialog)."""

    plan_ready = Signal(object)            # Plan
    plan_failed = Signal(str)
    progress_reported = Signal(object)     # DeployProgress
    deployment_finished = Signal(object)   # DeployResult
    deployment_failed = Signal(str)        # the deployment could not run at all (a bug, a lost loop)
    busy_changed = Signal(bool)

    def __init__(self, console: QtConsole) -> None:
        super().__init__(console)
        self._console = console
        self.busy = False
        self.last_plan: Plan | None = None
        self.last_result: DeployResult | None = None
        self.progress: list[DeployProgress] = []

    def plan(self, pipeline: Pipeline) -> None:
        """Plan a pipeline onto the fleet; answered by `plan_ready` or `plan_failed`."""
        self._console.dispatcher.when_done(self._console.core.plan(pipeline), self._planned,
                                           lambda exc: self.plan_failed.emit(str(exc)))

    def apply(self, plan: Plan) -> bool:
        """Apply a plan (False if a deployment is already running); progress via `progress_reported`."""
        if self.busy:
            return False
        self._set_busy(True)
        self.progress = []
        dispatcher = self._console.dispatcher
        future = self._console.core.apply(plan, lambda p: dispatcher.post(self._progress, p))
        dispatcher.when_done(future, self._finished, self._failed)
        return True

    def _planned(self, plan: Plan) -> None:
        self.last_plan = plan
        self.plan_ready.emit(plan)

    def _progress(self, progress: DeployProgress) -> None:
        self.progress.append(progress)
        self.progress_reported.emit(progress)

    def _finished(self, result: DeployResult) -> None:
        self.last_result = result
        self._set_busy(False)
        self.deployment_finished.emit(result)

    def _failed(self, exc: BaseException) -> None:
        self._set_busy(False)
        self.deployment_failed.emit(f"{type(exc).__name__}: {exc}")

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.busy_changed.emit(busy)


# ----- the pipeline being edited -------------------------------------------------------------------

class PipelineModel(QObject):
    """The pipeline on the canvas: a PipelineDocument plus signals; every edit is a reversible Edit.

    The canvas wraps each Edit in a QUndoCommand whose redo()/undo() call `redo(edit)`/`undo(edit)`
    here (QUndoStack is QtGui, which app/ does not import). Files are read and written off the GUI
    thread; the results come back as signals.
    """

    pipeline_loaded = Signal(str)          # path
    load_failed = Signal(str)              # reason (every problem of the file)
    saved = Signal(str)                    # path
    save_failed = Signal(str)
    model_imported = Signal(object)        # ModelCard
    import_failed = Signal(str)
    stage_inserted = Signal(int, str)      # index, stage id
    stage_removed = Signal(int, str)       # index, stage id
    stage_moved = Signal(str, int, int)    # stage id, new index, old index
    stage_changed = Signal(str)            # stage id (placement, rule, budget)
    pipeline_reset = Signal()
    problems_changed = Signal(object)      # list[Problem]

    def __init__(self, console: QtConsole | None = None, document: PipelineDocument | None = None) -> None:
        super().__init__(console)
        self._dispatcher = console.dispatcher if console is not None else Dispatcher(self)
        self._files = console.files if console is not None else ThreadPoolExecutor(1, "tierdeck-files")
        self.document = document or PipelineDocument()
        self.document.subscribe(self._on_change)
        self._problems: list[Any] = []

    # reading
    def stages(self) -> list[Stage]:
        """Stages in hop order."""
        return list(self.document.stages)

    def stage(self, stage_id: str) -> Stage:
        """One stage (KeyError if absent)."""
        return self.document.stage(stage_id)

    def card(self, stage_id: str) -> ModelCard | None:
        """The model card of a stage, if read."""
        return self.document.cards.get(stage_id)

    def requirements(self, stage_id: str) -> Requirements | None:
        """What the stage needs from a node (for FleetModel.fit)."""
        return self.document.requirements(stage_id)

    def problems(self) -> list[Any]:
        """Problems of the pipeline as it stands (checked after each change)."""
        return list(self._problems)

    def pipeline(self) -> Pipeline:
        """The validated pipeline for planning (PipelineError otherwise)."""
        return self.document.to_pipeline()

    # editing
    def redo(self, edit: Edit) -> None:
        """Apply an edit (QUndoCommand.redo)."""
        edit.redo(self.document)

    def undo(self, edit: Edit) -> None:
        """Revert an edit (QUndoCommand.undo)."""
        edit.undo(self.document)

    def set_pipeline(self, pipeline: Pipeline, cards: dict[str, ModelCard] | None = None) -> None:
        """Show an already loaded pipeline (not undoable); model cards not given are read off the GUI thread."""
        self.document.reset(pipeline, cards)
        missing = [s for s in pipeline.stages if s.model_path is not None and s.id not in (cards or {})]
        if missing:
            def read() -> dict[str, ModelCard]:
                return {s.id: read_model_card(s.model_path) for s in missing}  # type: ignore[arg-type]

            self._dispatcher.when_done(self._files.submit(read), self._cards_read,
                                       lambda exc: log.warning("model cards: %s", exc))

    def _cards_read(self, cards: dict[str, ModelCard]) -> None:
        for stage_id, card in cards.items():
            if stage_id in self.document.stage_ids() and stage_id not in self.document.cards:
                self.document.cards[stage_id] = card
                self.stage_changed.emit(stage_id)

    # files
    def open(self, path: Path | str) -> None:
        """Load a pipeline file off the GUI thread; `pipeline_loaded` or `load_failed` follow."""
        def loaded(result: tuple[Pipeline, dict[str, ModelCard]]) -> None:
            self.document.reset(*result)
            self.pipeline_loaded.emit(str(path))

        def failed(exc: BaseException) -> None:
            self.load_failed.emit(str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}")

        self._dispatcher.when_done(self._files.submit(open_document, path), loaded, failed)

    def save(self, path: Path | str) -> None:
        """Write the pipeline to `path` off the GUI thread (invalid pipelines are refused)."""
        target = Path(path)
        problems = self.document.problems()
        if problems:
            self.save_failed.emit("; ".join(str(p) for p in problems))
            return
        doc = self.document.to_dict(target.parent)

        def written(_: object) -> None:
            self.document.path = target
            self.saved.emit(str(target))

        self._dispatcher.when_done(self._files.submit(save_document, doc, target), written,
                                   lambda exc: self.save_failed.emit(f"{type(exc).__name__}: {exc}"))

    def save_as(self, path: Path | str) -> None:
        """Save under a new file; the pipeline takes the file's name ('harbour.pipeline.json' → 'harbour')."""
        target = Path(path)
        name = target.name.removesuffix(".json").removesuffix(".pipeline") or self.document.name
        if target != self.document.path and name != self.document.name:
            self.document.name = name
        self.save(target)

    def import_model(self, path: Path | str) -> None:
        """Read an ONNX model's card (inputs, outputs, size, opset) off the GUI thread; `model_imported` follows."""
        self._dispatcher.when_done(self._files.submit(import_model_file, path), self.model_imported.emit,
                                   lambda exc: self.import_failed.emit(f"{Path(path).name}: {exc}"))

    def _on_change(self, change: DocumentChange) -> None:
        if change.kind == "inserted":
            self.stage_inserted.emit(change.index, change.stage_id)
        elif change.kind == "removed":
            self.stage_removed.emit(change.index, change.stage_id)
        elif change.kind == "moved":
            self.stage_moved.emit(change.stage_id, change.index, change.old_index)
        elif change.kind == "changed":
            self.stage_changed.emit(change.stage_id)
        else:
            self.pipeline_reset.emit()
        problems = self.document.problems() if self.document.stages else []
        if problems != self._problems:
            self._problems = problems
            self.problems_changed.emit(problems)


# ----- the whole console ---------------------------------------------------------------------------

class QtConsole(QObject):
    """The Qt face of a started ConsoleCore: fleet, telemetry, events, deployments and the pipeline."""

    def __init__(self, core: ConsoleCore, parent: QObject | None = None, flush_hz: float = 20.0,
                 ring_capacity: int = 1200) -> None:
        super().__init__(parent)
        self.core = core
        self.flush_interval_s = 1.0 / flush_hz
        self.dispatcher = Dispatcher(self)
        self.files = ThreadPoolExecutor(1, thread_name_prefix="tierdeck-files")
        self.fleet = FleetModel(self)
        self.telemetry = TelemetryModel(self, ring_capacity)
        self.events = EventLogModel(self)
        self.deployments = DeploymentModel(self)
        self.pipeline = PipelineModel(self)
        self._pending: list[NodeSample] = []
        self._flush_scheduled = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._closed = False
        future = core.submit(self._async_attach())
        self.dispatcher.when_done(future, self._attached, lambda exc: log.error("attach failed: %s", exc))

    async def _async_attach(self) -> tuple[list[NodeSnapshot], list[ConsoleEvent]]:
        """On the loop: subscribe, and take what is already known so nothing is missed in between."""
        core = self.core
        self._unsubscribe += [core.subscribe_fleet(self._on_fleet), core.subscribe_samples(self._on_sample),
                              core.subscribe_events(self._on_event)]
        nodes = core.fleet.nodes() if core.fleet is not None else []
        return nodes, list(core.events)

    def _attached(self, result: tuple[list[NodeSnapshot], list[ConsoleEvent]]) -> None:
        nodes, events = result
        for node in nodes:
            if self.fleet.node(node.key) is None:
                self.fleet._apply(FleetEvent(FleetEventKind.ADDED, node))
        for event in events:
            self.events._add(event)

    # loop thread → GUI thread
    def _on_fleet(self, event: FleetEvent) -> None:
        self.dispatcher.post(self._fleet_event, event)

    def _fleet_event(self, event: FleetEvent) -> None:
        if event.kind == FleetEventKind.REMOVED and not event.previous_key and event.node.node_id:
            self.telemetry._forget(event.node.node_id)
        self.fleet._apply(event)

    def _on_event(self, event: ConsoleEvent) -> None:
        self.dispatcher.post(self.events._add, event)

    def _on_sample(self, sample: NodeSample) -> None:
        """Loop thread: collect; one flush per interval carries every sample collected meanwhile."""
        self._pending.append(sample)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self.core._aloop
            assert loop is not None
            loop.call_later(self.flush_interval_s, self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        if batch and not self._closed:
            self.dispatcher.post(self.telemetry._add_batch, batch)

    def close(self) -> None:
        """Stop listening to the core (call before `core.stop()`)."""
        self._closed = True
        if self.core._aloop is not None and not self.core._aloop.is_closed():
            for unsubscribe in self._unsubscribe:
                self.core.call_soon(unsubscribe)
        self.files.shutdown(wait=False)
