"""The Qt adapters (QtCore only) on a live fleet: signals on the GUI thread, coalesced telemetry, deploy, pipeline."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from pytestqt.qtbot import QtBot
from test_app_support import started_core, three_agents, write_pipeline

from app._deployer import DeployProgress, DeployResult, Plan
from app._document import MoveStage, SetPlacement
from app._fit import ModelCard
from app.pipeline_file import Placement, load_pipeline
from app.qt import FleetModel, PipelineModel, QtConsole


def test_qt_models_follow_a_live_fleet_and_deploy(tmp_path: Path, qtbot: QtBot) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path / "pipeline"))
    on_gui_thread: list[bool] = []
    states: list[tuple[str, str, str]] = []
    with three_agents(tmp_path) as agents, started_core(tmp_path / "console.sqlite", telemetry_interval_s=0.1) as core:
        console = QtConsole(core, flush_hz=5)
        try:
            fleet = console.fleet

            def state_changed(key: str, old: str, new: str) -> None:
                on_gui_thread.append(threading.current_thread() is threading.main_thread())
                states.append((key, old, new))

            fleet.state_changed.connect(state_changed)
            for agent in agents.values():
                fleet.add_address(agent.address)
            qtbot.waitUntil(lambda: fleet.rowCount() == 3 and all(
                fleet.data(fleet.index(r), FleetModel.StateRole) == "online" for r in range(3)), timeout=30_000)
            assert on_gui_thread and all(on_gui_thread)
            assert {fleet.data(fleet.index(r), FleetModel.KeyRole) for r in range(3)} == {
                a.node_id for a in agents.values()}, "rows are re-keyed to node ids"
            assert {k for k, _, new in states if new == "online"} == {a.node_id for a in agents.values()}

            telemetry = console.telemetry
            qtbot.waitUntil(lambda: all(telemetry.node_series(a.node_id) is not None
                                        and len(telemetry.node_series(a.node_id) or ()) >= 5
                                        for a in agents.values()), timeout=30_000)
            assert telemetry.batches < telemetry.samples, "samples reach the GUI coalesced, not one signal each"
            assert any(e.kind == "node_state" for e in console.events.events())

            req = console.pipeline.requirements  # the canvas asks the fit through the models, no I/O
            console.pipeline.set_pipeline(pipeline)
            assert fleet.fit(req("detector"), agents["device"].node_id).fits  # type: ignore[arg-type]
            results = fleet.fit_tier(req("heavy"), "cloud")  # type: ignore[arg-type]
            assert [r.fits for r in results] == [True]

            deployments = console.deployments
            with qtbot.waitSignal(deployments.plan_ready, timeout=30_000) as planned:
                deployments.plan(console.pipeline.pipeline())
            plan: Plan = planned.args[0]
            assert plan.ok and len(plan.nodes) == 3
            progress: list[DeployProgress] = []
            deployments.progress_reported.connect(progress.append)
            with qtbot.waitSignal(deployments.deployment_finished, timeout=120_000) as finished:
                assert deployments.apply(plan)
                assert not deployments.apply(plan), "one deployment at a time"
            result: DeployResult = finished.args[0]
            assert result.ok, result
            assert {(p.node_name, p.step) for p in progress if p.status == "done"} >= {
                ("device-1", "verify"), ("edge-1", "verify"), ("cloud-1", "verify")}
            qtbot.waitUntil(lambda: all(fleet.node(a.node_id).stages for a in agents.values()),  # type: ignore[union-attr]
                            timeout=30_000)
            device = agents["device"].node_id
            qtbot.waitUntil(lambda: telemetry.stage_series(device, "detector") is not None, timeout=30_000)

            core.db.flush().result(10)
            now = int(time.time() * 1000)
            with qtbot.waitSignal(telemetry.history_loaded, timeout=30_000) as loaded:
                request = telemetry.request_history(device, "", now - 60_000, now + 1000, ("cpu_percent",))
            assert loaded.args[0] == request
            history = loaded.args[1]
            assert history["resolution"] == "raw" and len(history["t"]) == len(history["cpu_percent"]) > 0

            with qtbot.waitSignal(fleet.node_removed, timeout=10_000):
                fleet.forget(device)
            assert fleet.rowCount() == 2 and telemetry.node_series(device) is None
        finally:
            console.close()


def test_pipeline_model_opens_edits_undoes_and_saves(tmp_path: Path, qtbot: QtBot) -> None:
    path = write_pipeline(tmp_path / "p")
    model = PipelineModel()
    with qtbot.waitSignal(model.pipeline_loaded, timeout=10_000):
        model.open(path)
    original = model.document.to_dict()
    assert [s.id for s in model.stages()] == ["detector", "classifier", "heavy"]
    assert model.card("detector") is not None

    edit = SetPlacement("classifier", Placement(tier="cloud"))
    with qtbot.waitSignal(model.stage_changed) as changed:
        model.redo(edit)
    assert changed.args == ["classifier"] and model.stage("classifier").placement.tier == "cloud"
    model.undo(edit)
    assert model.stage("classifier").placement.tier == "edge"

    move = MoveStage("heavy", 0)
    with qtbot.waitSignals([model.stage_moved, model.problems_changed]):
        model.redo(move)
    assert model.problems(), "a last stage that escalates is reported at once"
    with qtbot.waitSignal(model.problems_changed) as fixed:
        model.undo(move)
    assert fixed.args == [[]] and model.document.to_dict() == original

    target = tmp_path / "saved" / "copy.pipeline.json"
    target.parent.mkdir()
    with qtbot.waitSignal(model.saved, timeout=10_000):
        model.save(target)
    reopened = load_pipeline(target)
    assert [s.sha256 for s in reopened.stages] == [s["sha256"] for s in original["stages"]]
    assert json.loads(target.read_text())["stages"][0]["model"] == "../p/" + original["stages"][0]["model"]

    broken = tmp_path / "broken.pipeline.json"
    broken.write_text('{"format": "tierdeck.pipeline", "version": 1, "name": "x", "stages": [{"id": "a"}]}')
    with qtbot.waitSignal(model.load_failed, timeout=10_000) as failed:
        model.open(broken)
    assert "missing required key 'model'" in failed.args[0]

    with qtbot.waitSignal(model.model_imported, timeout=10_000) as imported:
        model.import_model(tmp_path / "p" / original["stages"][0]["model"])
    card: ModelCard = imported.args[0]
    assert card.inputs[0].name == "x" and card.outputs[0].shape == (-1, 2)


def test_a_full_database_becomes_an_error_event_in_the_log(tmp_path: Path, qtbot: QtBot) -> None:
    from app._records import ConsoleEvent, Severity

    with started_core(tmp_path / "console.sqlite", max_db_bytes=1) as core:  # no room beyond the schema
        console = QtConsole(core)
        try:
            for i in range(50):  # events with some bulk, so the file must grow
                core.call_soon(core.publish_event, ConsoleEvent("test", f"event {i}", Severity.INFO,
                                                                detail={"pad": "x" * 2000}))
            qtbot.waitUntil(lambda: any(e.kind == "database" and e.severity == "error"
                                        for e in console.events.events()), timeout=30_000)
            error = next(e for e in console.events.events() if e.kind == "database")
            assert "database full" in error.message
            core.db.set_max_bytes(None)
            qtbot.waitUntil(lambda: any(e.kind == "database" and "writable again" in e.message
                                        for e in console.events.events()), timeout=30_000)
            core.db.flush().result(10)
            stored = core.db.read(lambda d: d.execute("SELECT count(*) FROM events WHERE kind = 'test'").fetchone()[0])
            assert stored.result(10) == 50, "nothing was lost while the database was full"
        finally:
            console.close()
