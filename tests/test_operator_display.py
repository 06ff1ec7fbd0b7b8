"""The operator's own cascade on a real X display: real mouse drags (a real QDrag), real keys, the real window.

Xvfb + openbox + xdotool (tests/display.py); the console is `tierdeck demo --empty` on a fleet of real
agents on loopback. Skipped, with the reason, only where those X tools are missing.
Screenshots of every step go to the test's folder (and $TIERDECK_SCREENSHOTS when set).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from display import Console, Operator, XDisplay, missing_tools

pytestmark = [pytest.mark.display, pytest.mark.slow,
              pytest.mark.skipif(bool(missing_tools()), reason=f"no X server to drive: {', '.join(missing_tools())} "
                                                               "missing (apt-get install xvfb xdotool openbox)")]


class Session:
    """One console on one display, shared by this module's flows (the fleet takes a while to start)."""

    def __init__(self, display: XDisplay, console: Console, folder: Path) -> None:
        self.display = display
        self.console = console
        self.op = Operator(display)
        self.folder = folder
        self.shots: list[Path] = []

    def shot(self, name: str) -> Path:
        path = self.display.screenshot(self.folder / f"{len(self.shots):02d}-{name}.png")
        self.shots.append(path)
        if os.environ.get("TIERDECK_SCREENSHOTS") and path.exists():
            Path(os.environ["TIERDECK_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(os.environ["TIERDECK_SCREENSHOTS"]) / path.name)
        return path

    def probe(self) -> dict[str, Any]:
        return self.console.probe()

    def stage(self, stage_id: str) -> dict[str, Any]:
        return next(s for s in self.probe()["stages"] if s["id"] == stage_id)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """2 device, 2 edge and 1 cloud agents, and the console with an empty canvas, on a private X display."""
    folder = tmp_path_factory.mktemp("display")
    with XDisplay() as display:
        console = Console(display, folder, device=2, edge=2, cloud=1, rate=10)
        try:
            console.wait(lambda p: len(p["cards"]) == 5 and p["palette"] and all(
                n["state"] == "online" and n["node_id"] for n in p["nodes"]), 180, "the fleet on the canvas")
            yield Session(display, console, folder)
        finally:
            console.stop()


def deploy(s: Session) -> dict[str, Any]:
    """Ctrl+D, then Enter on the plan (the Deploy button has the focus once the plan is ready)."""
    s.op.key("ctrl+d")
    s.console.wait(lambda p: any(d.get("deploy_enabled") for d in p["dialogs"]), 60, "a deployable plan")
    s.shot("deploy-plan")
    before = s.probe().get("deploy")
    s.op.key("Return")
    done = s.console.wait(lambda p: p["deploy"] is not None and p["deploy"] != before and p["deploy"]["ok"], 180,
                          "deploy succeeded")
    s.op.key("Escape")   # close the deploy dialog
    return done


def test_from_an_empty_canvas_three_drags_keyboard_thresholds_deploy_and_traffic_at_every_tier(
        session: Session) -> None:
    s, op = session, session.op
    p = s.probe()
    assert p["stages"] == [] and set(p["palette"]) >= {"detector.onnx", "classifier.onnx", "heavy.onnx"}
    s.shot("empty")
    for model, tier, count in (("detector", "device", 1), ("classifier", "edge", 2), ("heavy", "cloud", 3)):
        op.drag(s.probe()["palette"][f"{model}.onnx"], s.probe()["lanes"][tier], model)
        p = s.console.wait(lambda p, n=count: len(p["stages"]) == n, 10, f"{model} on the {tier} lane")
        assert p["stages"][-1]["id"] == model and p["stages"][-1]["tier"] == tier
        assert p["problems"] == [], f"deployable as it stands after dropping {model}: {p['problems']}"
        s.shot(f"dropped-{model}")
    assert "rule from the model card" in p["status"] or p["stages"][1]["confidence_below"] == pytest.approx(0.8)
    assert p["routes"]["detector"] == ["device-1, device-2 → edge-1 (edge)", "device-1, device-2 → edge-2 (edge)"] \
        or sorted(p["routes"]["detector"]) == sorted(["device-1 → edge-1 (edge)", "device-2 → edge-2 (edge)"]) \
        or len(p["routes"]["detector"]) == 2
    # thresholds from the keyboard: select detector, F2, type, Enter; Tab to the classifier, F2, type, Enter
    op.click(s.probe()["chips"]["detector"], "detector")
    op.key("F2")
    s.console.wait(lambda p: p["threshold_editor"], 5, "the threshold editor")
    op.type("0.9")
    op.key("Return")
    s.console.wait(lambda p: not p["threshold_editor"], 5, "the editor closed")
    assert s.stage("detector")["confidence_below"] == pytest.approx(0.9)
    op.key("Tab", "F2")
    s.console.wait(lambda p: p["threshold_editor"], 5, "the threshold editor on classifier")
    op.type("0.85")
    op.key("Return")
    s.console.wait(lambda p: any(st["id"] == "classifier" and st["confidence_below"] == pytest.approx(0.85)
                                 for st in p["stages"]), 5, "classifier at 0.85")
    s.shot("thresholds")
    deploy(s)
    # traffic and escalations at every tier (the sensors start once the deployment succeeded)
    p = s.console.wait(lambda p: all(p["tiers"].get(t, {}).get("inferences_total", 0) > 0
                                     for t in ("device", "edge", "cloud"))
                       and p["tiers"]["device"]["escalated_per_s"] > 0, 90, "traffic at every tier")
    op.key("ctrl+shift+d")
    s.console.wait(lambda p: p["window"]["tab"] == "Dashboard", 5, "the dashboard")
    import time

    time.sleep(3)   # a few telemetry intervals on the plots
    s.shot("dashboard-live")
    op.key("ctrl+shift+p")


def _layout_settled(s: Session, tries: int = 20) -> dict[str, Any]:
    """The probe once the positions of chips, cards and lanes stopped moving (two probes 0.5 s apart agree)."""
    last: object = None
    probe = s.probe()
    for _ in range(tries):
        probe = s.probe()
        where = (probe["chips"], probe["cards"], probe["lanes"])
        if where == last:
            return probe
        last = where
        time.sleep(0.5)
    return probe


def test_move_the_classifier_to_cloud_and_back_then_pin_it_and_the_routing_matches_the_nodes(
        session: Session) -> None:
    s, op = session, session.op
    if [st["id"] for st in s.probe()["stages"]] != ["detector", "classifier", "heavy"]:
        pytest.skip("needs the cascade the first flow builds")
    op.drag(s.probe()["chips"]["classifier"], s.probe()["lanes"]["cloud"], "classifier to cloud")
    p = s.console.wait(lambda p: any(st["id"] == "classifier" and st["tier"] == "cloud" for st in p["stages"]), 10,
                       "classifier on the cloud tier")
    assert [st["id"] for st in p["stages"]] == ["detector", "classifier", "heavy"], "moved, not copied"
    assert p["undo"] == "Move classifier to the cloud tier"
    s.shot("classifier-on-cloud")
    op.key("ctrl+z")
    s.console.wait(lambda p: any(st["id"] == "classifier" and st["tier"] == "edge" for st in p["stages"]), 10,
                   "undo: classifier back on the edge tier")
    # pin the classifier to edge-1: both device nodes now escalate there, and the canvas says so
    edge_1 = next(n for n in s.probe()["nodes"] if n["name"] == "edge-1")
    settled = _layout_settled(s)  # the undo re-lays the canvas out: aim at where things are, not where they were
    op.drag(settled["chips"]["classifier"], settled["cards"]["edge-1"], "classifier onto edge-1")
    p = s.console.wait(lambda p: any(st["id"] == "classifier" and st["nodes"] == [edge_1["node_id"]]
                                     for st in p["stages"]), 20, "classifier pinned to edge-1")
    assert p["routes"]["detector"] == ["device-1, device-2 → edge-1 (edge)"]
    s.shot("classifier-pinned")
    deploy(s)
    # what the canvas shows is what the nodes report (ListStages next hops)
    p = s.console.wait(lambda p: all(
        any(st["id"] == "detector" and st["next_hop"] == edge_1["address"] for st in n["stages"])
        for n in p["nodes"] if n["tier"] == "device"), 30, "device nodes escalating to edge-1")
    by_address = {n["address"]: n for n in p["nodes"]}
    reported: dict[str, list[str]] = {}
    for n in p["nodes"]:
        for st in n["stages"]:
            if st["id"] == "detector" and st["next_hop"]:
                target = by_address[st["next_hop"]]
                reported.setdefault(f"{target['name']} ({target['tier']})", []).append(n["name"])
    shown = [f"{', '.join(sorted(names))} → {target}" for target, names in reported.items()]
    assert shown == p["routes"]["detector"]
    assert not any(st["id"] == "classifier" for n in p["nodes"] if n["name"] == "edge-2" for st in n["stages"]), \
        "the deployment took classifier off edge-2"


def test_closing_with_unsaved_changes_asks_and_cancel_keeps_the_window(session: Session) -> None:
    s, op = session, session.op
    p = s.probe()
    if not p["window"]["dirty"]:
        op.drag(p["palette"]["detector.onnx"], p["lanes"]["cloud"], "an edit")
        s.console.wait(lambda p: p["window"]["dirty"], 10, "an unsaved edit")
    op.key("ctrl+q")
    p = s.console.wait(lambda p: any(d["title"] == "Unsaved changes" for d in p["dialogs"]), 10, "the question")
    s.shot("unsaved-question")
    op.key("Escape")   # Cancel
    p = s.console.wait(lambda p: not p["dialogs"], 10, "the question answered")
    assert p["window"]["visible"] and p["window"]["dirty"] and s.console.proc.poll() is None
    s.shot("after-cancel")
