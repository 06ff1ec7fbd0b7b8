"""The deploy dialog against real agents: plan as a diff, progress per node, success; a failing node and its
rollback."""

from __future__ import annotations

import signal
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog
from pytestqt.qtbot import QtBot
from test_app_support import write_pipeline
from test_widgets_support import assert_not_blank, big_model, live_console, save_screenshot, wait_online

from app.core import DeployResult
from app.pipeline_file import Pipeline, load_pipeline, save_pipeline
from widgets import DeployDialog, MainWindow

THREE = {"device-1": ("device", ()), "edge-1": ("edge", ()), "cloud-1": ("cloud", ())}


def open_dialog(qtbot: QtBot, window: MainWindow, path: Path) -> DeployDialog:
    with qtbot.waitSignal(window.console.pipeline.pipeline_loaded, timeout=20_000):
        window.open_pipeline(str(path))
    dialog = window.deploy_dialog()
    assert isinstance(dialog, DeployDialog)
    assert dialog.isVisible() and dialog.isModal(), "opened with open(): window-modal, no nested event loop"
    qtbot.waitUntil(lambda: dialog.phase == "planned", timeout=30_000)
    return dialog


def test_deploy_dialog_shows_the_plan_then_progress_then_success(tmp_path: Path, qtbot: QtBot) -> None:
    path = write_pipeline(tmp_path / "pipeline")
    with live_console(tmp_path, THREE) as live:
        wait_online(qtbot, live.console, 3)
        window = live.window(qtbot)
        dialog = open_dialog(qtbot, window, path)
        assert dialog.plan is not None and dialog.plan.ok
        assert dialog.deploy_button.isEnabled()
        plan_rows = {dialog.tree.topLevelItem(i).text(0) for i in range(dialog.tree.topLevelItemCount())}
        assert plan_rows == {"device-1 (device)", "edge-1 (edge)", "cloud-1 (cloud)"}
        edge = next(dialog.tree.topLevelItem(i) for i in range(3)
                    if dialog.tree.topLevelItem(i).text(0).startswith("edge"))
        assert edge.child(0).text(0) == "+ classifier" and edge.child(0).text(1) == "add"
        assert "escalates to heavy" in edge.child(0).text(2) and "runs on CPU" in edge.child(0).text(2)
        assert_not_blank(save_screenshot(dialog, tmp_path, "deploy-plan"))

        with qtbot.waitSignal(live.console.deployments.deployment_finished, timeout=120_000) as finished:
            qtbot.mouseClick(dialog.deploy_button, Qt.MouseButton.LeftButton)
        result: DeployResult = finished.args[0]
        assert result.ok and dialog.phase == "done"
        assert "succeeded" in dialog.banner_text() and dialog.banner.property("banner") == "ok"
        for name in THREE:
            assert dialog.node_status(name)[0] == "succeeded"
        steps = {dialog.tree.topLevelItem(i).child(j).text(0).strip(): dialog.tree.topLevelItem(i).child(j).text(1)
                 for i in range(3) for j in range(dialog.tree.topLevelItem(i).childCount())}
        assert steps["classifier: upload"] == "done" and steps["classifier: verify"] == "done"
        assert_not_blank(save_screenshot(dialog, tmp_path, "deploy-succeeded"))
        dialog.close()
        assert dialog.deploy_result is result
        # the deployed stages reach the fleet model (and the canvas that draws from it)
        qtbot.waitUntil(lambda: all(live.console.fleet.node(a.node_id).stages for a in live.agents.values()),
                        timeout=30_000)

        # the what-if's "push live" seam: UpdatePolicy on the node running the stage, no redeploy
        from dataclasses import replace

        from app.core import make_policy_pusher

        rule = replace(live.console.pipeline.stage("classifier").rule, confidence_below=0.7)
        future = make_policy_pusher(live.core)("classifier", rule)
        qtbot.waitUntil(future.done, timeout=30_000)
        assert future.result() == {"edge-1": ""}
        edge = live.agents["edge-1"].node_id
        qtbot.waitUntil(lambda: "confidence < 0.7" in live.console.fleet.node(edge).stage("classifier").rule,  # type: ignore[union-attr]
                        timeout=20_000)


def test_a_failing_node_shows_the_rollback_per_node(tmp_path: Path, qtbot: QtBot) -> None:
    path = write_pipeline(tmp_path / "pipeline")
    with live_console(tmp_path, THREE) as live:
        wait_online(qtbot, live.console, 3)
        window = live.window(qtbot)
        dialog = open_dialog(qtbot, window, path)
        assert dialog.deploy_button.isEnabled()
        # The device node dies after the plan was made: the cloud and edge stages go first (top tier first),
        # then the device upload fails, and everything already switched must be rolled back.
        live.agents["device-1"].stop(signal.SIGKILL)
        with qtbot.waitSignal(live.console.deployments.deployment_finished, timeout=180_000) as finished:
            dialog.deploy()
        result: DeployResult = finished.args[0]
        assert not result.ok and result.status == "rolled_back", result
        banner = dialog.banner_text()
        assert dialog.banner.property("banner") == "error"
        assert "rolled back" in banner and "device-1" in banner and "upload failed" in banner
        assert "Every node that had switched was rolled back" in banner
        what, details = dialog.node_status("device-1")
        assert what == "FAILED" and "upload failed" in details
        for name, stage in (("edge-1", "classifier"), ("cloud-1", "heavy")):
            what, details = dialog.node_status(name)
            assert what == "ROLLED BACK", (name, what, details)
            assert f"rollback restored/removed: {stage}" in details and "rolled back because device-1" in details
        undo_rows = [dialog.tree.topLevelItem(i).child(j) for i in range(dialog.tree.topLevelItemCount())
                     for j in range(dialog.tree.topLevelItem(i).childCount())
                     if dialog.tree.topLevelItem(i).child(j).text(0).strip().endswith(": undeploy")]
        assert {r.text(1) for r in undo_rows} == {"removed again"} and len(undo_rows) == 2
        assert_not_blank(save_screenshot(dialog, tmp_path, "deploy-rolled-back"))
        # the log says so too
        assert any(e.kind == "deploy" and "rolled back" in e.message for e in live.console.events.events())
        dialog.done(QDialog.DialogCode.Rejected)


def test_a_plan_that_does_not_fit_cannot_be_deployed_and_says_why(tmp_path: Path, qtbot: QtBot) -> None:
    base = load_pipeline(write_pipeline(tmp_path / "pipeline"))
    big = big_model(tmp_path / "pipeline", "big.onnx")
    from dataclasses import replace

    from app.pipeline_file import sha256_of

    detector = replace(base.stage("detector"), model="big.onnx", model_path=big, sha256=sha256_of(big),
                       outputs=base.stage("detector").outputs)
    # the big model has 8 inputs and 20000 outputs: describe it truthfully
    from app.pipeline_file import Rule, TensorSpec

    detector = replace(detector, inputs=(TensorSpec("x", "FP32", (-1, 8)),),
                       outputs=(TensorSpec("probs", "FP32", (-1, 20000)),),
                       rule=Rule("probs", tuple(f"c{i}" for i in range(20000)), confidence_below=0.5))
    pipeline = Pipeline(base.name, (detector, *base.stages[1:]))
    path = tmp_path / "pipeline" / "big.pipeline.json"
    save_pipeline(pipeline, path)
    agents = {"device-1": ("device", ("--memory-cap-mb", "1")), "edge-1": ("edge", ()), "cloud-1": ("cloud", ())}
    with live_console(tmp_path, agents) as live:
        wait_online(qtbot, live.console, 3)
        window = live.window(qtbot)
        dialog = open_dialog(qtbot, window, path)
        assert dialog.plan is not None and not dialog.plan.ok
        assert not dialog.deploy_button.isEnabled()
        banner = dialog.banner_text()
        assert "cannot be deployed" in banner and "does not fit on device-1" in banner and "memory cap" in banner
        dialog.deploy()   # refused: nothing starts
        assert dialog.phase == "planned" and not live.console.deployments.busy
