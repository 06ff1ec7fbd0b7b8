"""The console on a live cascade with shadow sampling: miss estimates on the canvas links, the dashboard's
"missed (est.)" plot and the what-if's misses at a new threshold — real agents, a real deployment, real widgets."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot
from test_widgets_support import live_console, save_screenshot

from app._miss import ShadowCounts, describe_link, miss_estimate, percent, predict_misses, wilson_interval
from app.core import NodeState
from app.pipeline_file import load_pipeline
from app.qt import PipelineModel
from resources import scenes
from runners.client import NodeClient
from widgets import apply_theme
from widgets._dashboard import Dashboard
from widgets._pipeline_editor import PipelineEditor

ROOT = Path(__file__).resolve().parent.parent
AGENTS = {"device-1": ("device", ()), "edge-1": ("edge", ()), "cloud-1": ("cloud", ())}


def _pipeline_copy(folder: Path, rate: float) -> Path:
    """A copy of the ship-finder pipeline (and its models) with a shadow rate on its two links."""
    import shutil

    doc = json.loads((ROOT / "resources" / "pipelines" / "ship-finder.pipeline.json").read_text())
    (folder / "models").mkdir()
    (folder / "pipelines").mkdir()
    for stage in doc["stages"]:
        shutil.copy(ROOT / "resources" / "models" / Path(stage["model"]).name, folder / "models")
        if stage["id"] != "heavy":
            stage["budget"]["shadow_rate"] = rate
    path = folder / "pipelines" / "ship-finder-shadow.pipeline.json"
    path.write_text(json.dumps(doc))
    return path


def test_miss_sentence_reads_like_the_issue() -> None:
    estimate = miss_estimate(ShadowCounts(sent=1000, answered=1000, agreed=992))
    text = describe_link("detector", "classifier", 0.635, estimate, ("vessel",))
    low, high = wilson_interval(8, 1000)
    assert text == (f"detector → classifier: settles 63.5 %, of which an estimated 0.8 % "
                    f"({percent(low).removesuffix(' %')}–{percent(high)}) are vessels the next tier would have caught"
                    " — from 1,000 shadow rows")
    assert "answered differently" in describe_link("classifier", "heavy", 0.8, estimate)
    assert describe_link("a", "b", 0.5, miss_estimate(ShadowCounts())).endswith("no shadow rows answered yet")


def test_predicted_misses_follow_the_threshold() -> None:
    bins = 100
    answered = np.zeros(bins, int)
    disagreed = np.zeros(bins, int)
    answered[90:] = 100          # shadow rows: settled at confidence ≥ 0.9, 1,000 of them
    disagreed[90:92] = 10        # 20 disagree, all between 0.90 and 0.92
    esc_answered = np.zeros(bins, int)
    esc_disagreed = np.zeros(bins, int)
    esc_answered[80:90] = 50     # escalated rows between 0.8 and 0.9: 500 answered, 100 disagree
    esc_disagreed[80:90] = 10
    counts = ShadowCounts(1000, 1000, 980, 0, 0.01, {}, tuple(answered), tuple(disagreed), tuple(esc_answered),
                          tuple(esc_disagreed))
    same = predict_misses(counts, "confidence_below", 0.9, 0.9, 0.6)
    assert same is not None and math.isclose(same.now, 0.6 * 0.02) and math.isclose(same.new, same.now)
    assert same.now_low < same.now < same.now_high
    higher = predict_misses(counts, "confidence_below", 0.9, 0.92, 0.6)
    assert higher is not None and math.isclose(higher.new, 0.0, abs_tol=1e-12)  # the bins that disagreed escalate
    lower = predict_misses(counts, "confidence_below", 0.9, 0.8, 0.6)
    assert lower is not None and not lower.extrapolated
    assert math.isclose(lower.new, 0.6 * 0.02 + 0.4 * 0.2)  # plus the escalated band's disagreement, 20 %
    assert lower.new_low < lower.new < lower.new_high and lower.shadow_rows == 1000 and lower.escalated_rows == 500


@pytest.mark.timeout(300)
def test_the_console_shows_what_each_link_misses(qapp: QApplication, qtbot: QtBot, tmp_path: Path) -> None:
    apply_theme(qapp)
    pipeline_file = _pipeline_copy(tmp_path, 0.5)
    images, _ = scenes.split("test", 1500)
    x = scenes.to_model_input(images)
    with live_console(tmp_path, AGENTS) as live:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(live.console.fleet.nodes()) == 3 and all(
                n.state == NodeState.ONLINE and n.info is not None for n in live.console.fleet.nodes())):
            qapp.processEvents()
            time.sleep(0.01)
        pipeline = load_pipeline(pipeline_file)
        plan = live.core.plan(pipeline).result(60)
        assert live.core.apply(plan).result(300).ok
        model = PipelineModel(live.console)
        model.set_pipeline(pipeline)
        editor = PipelineEditor(model, live.console.fleet, live.console.telemetry)
        qtbot.addWidget(editor)
        editor.resize(1400, 800)
        editor.show()
        qtbot.waitExposed(editor)
        dashboard = Dashboard(live.console.fleet, live.console.telemetry, pipeline=model)
        qtbot.addWidget(dashboard)

        async def send() -> None:
            async with NodeClient(live.agents["device-1"].address) as client:
                for start in range(0, len(x), 50):
                    await client.infer("detector", {"image": x[start:start + 50]})
        asyncio.run(send())
        telemetry = live.console.telemetry
        # processEvents by hand, not qtbot.waitUntil: after a test that ran app.exec() and quit() in this process
        # (test_widgets_main's `tierdeck console` run), pytest-qt's waits no longer deliver queued events here.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (telemetry.shadow_counts("detector").answered > 300
                                                   and telemetry.shadow_counts("classifier").answered > 20):
            qapp.processEvents()
            time.sleep(0.01)
        assert telemetry.shadow_counts("classifier").answered > 20, (telemetry.samples, telemetry.batches)
        time.sleep(0.5)
        qapp.processEvents()
        counts = telemetry.shadow_counts("detector")
        # The node's cumulative figures reached the console intact.
        assert counts.sent >= counts.answered > 300 and counts.rate == 0.5
        assert sum(counts.answered_hist) == counts.answered and sum(counts.disagreed_hist) == counts.disagreed
        # Canvas: the link label carries the estimate; its tooltip says it in words.
        editor.canvas._refresh_live(force=True)
        view = editor.canvas.links["detector"].view
        assert view.live.startswith("live ") and view.missed.startswith("missed ≈ "), view
        sentence = editor.canvas.miss_sentence("detector")
        assert sentence.startswith("detector → classifier: settles ") and \
            "are vessels the next tier would have caught" in sentence, sentence
        classifier = editor.canvas.miss_sentence("classifier")
        assert "answered differently" in classifier
        pairs = telemetry.shadow_counts("classifier").pairs  # the most frequent disagreements, in the tooltip
        assert all(f"{settled} → {answered}: " in classifier for settled, answered in
                   sorted(pairs, key=lambda k: -pairs[k])[:1]) and (" → " in classifier.split(":", 1)[1]) == bool(pairs)
        assert "are vessels the next tier would have caught" in editor.canvas.links["detector"].toolTip()
        # What-if: misses now and at a proposed threshold, with the rows they stand on.
        editor.whatif.set_link("detector")
        editor.whatif.refresh()
        editor.whatif.proposal.setValue(0.99)
        text = editor.whatif.misses.text()
        assert text.startswith("Missed (est., of all inputs): now ") and "at 0.99: " in text, text
        assert ". From " in text and " shadow rows" in text, text
        # Dashboard: a "missed (est.)" curve per link, finite once shadow rows are answered.
        frame = dashboard.compute_frame()
        missed = {s.name: s for s in frame.plots["missed"]}
        assert set(missed) == {"detector → classifier", "classifier → heavy"}
        values = missed["detector → classifier"].v
        assert np.isfinite(values).any() and np.nanmax(values) <= 1.0
        last = values[np.isfinite(values)][-1]
        assert math.isclose(last, miss_estimate(counts).rate, abs_tol=0.02)
        save_screenshot(editor, tmp_path, "shadow_canvas_offscreen")
