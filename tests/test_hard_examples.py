"""Hard examples end to end: operator models on real agents → ledgers → `tierdeck export --hard-examples` →
a dataset that tools/hard_examples.py (the training script's loader) reads back; and the join and writer rules."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from agents import running_agent
from byo_models import DIGITS, big_classifier, digits, probabilities, small_classifier
from conftest import ROOT
from test_app_cli import tierdeck

from app._hard_examples import HardRow, NodeEntry, RowFilter, join, write_dataset
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import NodeClient, manifest_for
from tools.hard_examples import load_hard_examples, read_hard_examples

THRESHOLD = 0.9


def test_an_exported_dataset_of_operator_models_round_trips(tmp_path: Path) -> None:
    small, big = small_classifier(tmp_path / "small.onnx"), big_classifier(tmp_path / "big.onnx")
    _, _, x, _ = digits()
    p_small, p_big = probabilities(small, x), probabilities(big, x)
    escalate = p_small.max(axis=1) < THRESHOLD
    assert 10 < escalate.sum() < len(x) // 2
    every = ("--ledger-max-rows-per-s", "0")  # record every row: the dataset is counted against the escalations
    with running_agent(tmp_path / "cloud", *every, tier="cloud", name="cloud-1") as cloud, \
            running_agent(tmp_path / "device", *every, tier="device", name="device-1") as device:
        async def deploy_and_send() -> list[str]:
            async with NodeClient(cloud.address) as client:
                data = big.read_bytes()
                await client.deploy(manifest_for("big", data, "1", rule=ctl.EscalationRule(
                    output="probabilities", labels=DIGITS)), data)
            async with NodeClient(device.address) as client:
                data = small.read_bytes()
                rule = ctl.EscalationRule(output="probabilities", labels=DIGITS, confidence_below=THRESHOLD)
                # shadow sampling off: a disagreeing shadow row would be a ledger entry beside the escalations
                await client.deploy(manifest_for("small", data, "1", rule=rule, budget=ctl.Budget(shadow_rate=0.0),
                                                 next_hop=ctl.NextHop(address=cloud.address, model="big")), data)
                labels: list[str] = []
                for start in range(0, len(x), 50):
                    out = (await client.infer("small", {"X": x[start:start + 50]})).outputs
                    labels += [v.decode() for v in out["decision_label"]]
                return labels

        answers = asyncio.run(deploy_and_send())

        async def recorded(address: str) -> int:
            async with NodeClient(address) as client:
                return int((await client.hard_examples()).ledger.recorded_total)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (asyncio.run(recorded(device.address)) < escalate.sum()
                                               or asyncio.run(recorded(cloud.address)) < escalate.sum()):
            time.sleep(0.1)

        out = tmp_path / "export" / "hard"
        out.parent.mkdir()
        run = tierdeck("export", "--hard-examples", str(out), "--node", device.address, "--node", cloud.address,
                       "--db", str(tmp_path / "console.sqlite"), "--since", "1h")
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["rows"] == escalate.sum() and summary["errors"] == {} and summary["skipped"] == 0
        # A filter that matches nothing writes nothing and says so.
        empty = tierdeck("export", "--hard-examples", str(tmp_path / "none"), "--node", device.address,
                         "--db", str(tmp_path / "console.sqlite"), "--class", "no-such-class")
        assert empty.returncode == 1 and "no hard examples matched" in empty.stderr
        assert not (tmp_path / "none.npz").exists()

    inputs, labels, manifest = read_hard_examples(out.with_suffix(".npz"))
    # Back in the order the rows escalated (the device's row ids count up), to compare with what we sent.
    order = np.argsort([int(e["stages"][0]["row_id"].rsplit(".", 1)[1]) for e in manifest["examples"]])
    rows = np.flatnonzero(escalate)
    np.testing.assert_array_equal(inputs["X"][order], x[rows])
    assert [labels[i] for i in order] == [answers[r] for r in rows]
    assert [labels[i] for i in order] == [DIGITS[k] for k in p_big[rows].argmax(axis=1)]
    for i, r in zip(order, rows, strict=True):
        device_view, cloud_view = manifest["examples"][i]["stages"]
        assert (device_view["node"], device_view["stage"], cloud_view["node"], cloud_view["stage"]) == (
            "device-1", "small", "cloud-1", "big")
        np.testing.assert_allclose([device_view["scores"][d] for d in DIGITS], p_small[r], atol=1e-5)
        np.testing.assert_allclose([cloud_view["scores"][d] for d in DIGITS], p_big[r], atol=1e-5)
        assert cloud_view["origin_row_id"] == device_view["row_id"]
    assert manifest["examples"][0]["link"] == "small → big"
    # The training script's loader: pairs for a model with these classes.
    xs, ys = load_hard_examples(out, DIGITS, input_name="X")
    assert xs.shape == (escalate.sum(), 64) and [DIGITS[k] for k in ys] == labels


def _entry(node: str, seq: int, stage: str, row_id: str = "", origin: str = "", label: str = "a",
           hop: str = "", created: int = 1000) -> NodeEntry:
    return NodeEntry(node, node, "edge", ctl.HardExample(
        seq=seq, created_unix_ms=created, kind="escalated", stage_id=stage, row_id=row_id, origin_row_id=origin,
        stage_label=label, hop_label=hop, hop_stage="top" if hop else "", final_label=hop or label,
        score_labels=["a", "b"], scores=[0.6, 0.4]))


def test_join_follows_row_ids_and_keeps_orphans() -> None:
    entries = [
        _entry("dev", 1, "det", row_id="d.0", hop="b"), _entry("edge", 7, "cls", row_id="e.0", origin="d.0",
                                                               label="b", hop="c"),
        _entry("cloud", 3, "top", origin="e.0", label="c"),
        _entry("edge", 8, "cls", origin="d.gone", label="b", created=2000),  # its device entry was evicted
        _entry("dev", 2, "det", row_id="d.1", hop="a", created=500),
    ]
    rows = join(entries)
    assert [r.key for r in rows] == ["edge#8", "dev#1", "dev#2"]
    chain = rows[1]
    assert [e.node_key for e in chain.entries] == ["dev", "edge", "cloud"]
    assert chain.link == "det → cls" and chain.disagreed and chain.classes == {"a", "b", "c"}
    assert rows[2].link == "det → top" and not rows[2].disagreed
    assert [r.key for r in rows if RowFilter(disagreed_only=True).matches(r)] == ["dev#1"]
    assert [r.key for r in rows if RowFilter(label="c").matches(r)] == ["dev#1"]
    assert [r.key for r in rows if RowFilter(link="det → cls").matches(r)] == ["dev#1"]
    assert [r.key for r in rows if RowFilter(since_ms=900).matches(r)] == ["edge#8", "dev#1"]


def test_the_writer_keeps_one_layout_and_says_what_it_left_out(tmp_path: Path) -> None:
    rows = [HardRow((_entry("dev", k, "det", row_id=f"d.{k}", hop="b"),)) for k in range(4)]
    tensors = {("dev", 0): {"x": np.zeros((3,), np.float32)}, ("dev", 1): {"x": np.ones((3,), np.float32)},
               ("dev", 2): {"x": np.ones((5,), np.float32)}}  # another shape; dev#3 is gone from the node
    written = write_dataset(tmp_path / "out.npz", rows, tensors)
    assert written.rows == 2 and written.skipped == ("dev#2", "dev#3")
    inputs, labels, manifest = read_hard_examples(tmp_path / "out")
    assert inputs["x"].shape == (2, 3) and labels == ["b", "b"] and manifest["skipped"] == ["dev#2", "dev#3"]
    with pytest.raises(ValueError, match="nothing to export"):
        write_dataset(tmp_path / "none", rows[3:], tensors)
    (tmp_path / "out.json").write_text(json.dumps({**manifest, "examples": manifest["examples"][:1]}))
    with pytest.raises(ValueError, match="disagree on the labels"):
        read_hard_examples(tmp_path / "out")


def test_the_training_script_reads_hard_examples() -> None:
    train_models = pytest.importorskip("tools.train_models", reason="torch (the train extra) is not installed")
    assert train_models.MODELS_DIR == ROOT / "resources" / "models"
    assert train_models.load_hard_examples is load_hard_examples


@pytest.mark.parametrize(("said", "came_back", "disagreed"), [
    ("vessel", "water", True), ("water", "cargo", True), ("vessel", "cargo", False), ("water", "water", False)])
def test_a_refinement_is_not_a_disagreement(said: str, came_back: str, disagreed: bool) -> None:
    detector = NodeEntry("dev", "dev", "device", ctl.HardExample(
        seq=1, kind="escalated", stage_id="detector", row_id="d.0", stage_label=said, hop_label=came_back,
        score_labels=["water", "vessel"]))
    classifier = NodeEntry("edge", "edge", "edge", ctl.HardExample(
        seq=1, kind="escalated", stage_id="classifier", origin_row_id="d.0", stage_label=came_back,
        score_labels=["water", "cargo", "tanker"]))
    (row,) = join([detector, classifier])
    assert row.disagreed is disagreed
