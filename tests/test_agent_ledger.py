"""The hard-example ledger in real agent processes: what each node records, the paged pull, kill -9."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from agents import AgentProcess, running_agent, start_agent
from models import classifier
from test_agent_cascade import EDGE_LABELS, X, _deploy_chain, _expected

from runners._proto import tierdeck_control_pb2 as ctl
from runners.agent import build_parser, config_from_args
from runners.client import NodeClient, manifest_for


async def _listing(address: str, **filters: object) -> ctl.ListHardExamplesResponse:
    async with NodeClient(address) as client:
        return await client.hard_examples(ctl.ListHardExamplesRequest(**{"limit": 1000, **filters}))  # type: ignore[arg-type]


def _wait_recorded(address: str, count: int, timeout: float = 30.0) -> ctl.ListHardExamplesResponse:
    """The node's ledger once it has written `count` rows (the writer is off the request path)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = asyncio.run(_listing(address))
        if listing.ledger.recorded_total >= count or time.monotonic() > deadline:
            return listing
        time.sleep(0.05)


def _send(address: str, x: np.ndarray, chunk: int = 25) -> list[str]:
    async def go() -> list[str]:
        labels: list[str] = []
        async with NodeClient(address) as client:
            for start in range(0, len(x), chunk):
                result = await client.infer("detector", {"x": x[start:start + chunk]})
                labels += [v.decode() for v in result.outputs["decision_label"]]
        return labels
    return asyncio.run(go())


def test_each_node_records_what_it_saw_and_rows_join_by_id(tmp_path: Path) -> None:
    every = ("--ledger-max-rows-per-s", "0")  # record every row: the test counts them
    with running_agent(tmp_path / "cloud", *every, tier="cloud", name="cloud") as cloud, \
            running_agent(tmp_path / "edge", *every, tier="edge", name="edge") as edge, \
            running_agent(tmp_path / "device", *every, tier="device", name="device") as device:
        _deploy_chain(tmp_path, device, edge, cloud, shadow_rate=0.0)  # escalated rows only (shadow: test_shadow)
        to_edge, to_cloud, labels, stages = _expected()
        assert _send(device.address, X) == labels
        dev = _wait_recorded(device.address, int(to_edge.sum()))
        edg = _wait_recorded(edge.address, int(to_edge.sum()))
        cld = asyncio.run(_listing(cloud.address))
        # Device: one entry per row it escalated, with its scores and the answer that came back.
        assert dev.total == to_edge.sum() and dev.ledger.recorded_total == to_edge.sum()
        rows = np.flatnonzero(to_edge)[::-1]  # newest first
        assert [e.final_label for e in dev.examples] == [labels[r] for r in rows]
        assert [e.hop_stage for e in dev.examples] == [stages[r] for r in rows]
        assert all(e.kind == "escalated" and e.stage_label == "vessel" and e.row_id and not e.origin_row_id
                   and e.stage_version == "1" and list(e.score_labels) == ["water", "vessel"]
                   for e in dev.examples)
        # Edge: every row that came up, under the device's id; the ones it sent on carry a new id of their own.
        assert edg.total == to_edge.sum()
        assert {e.origin_row_id for e in edg.examples} == {e.row_id for e in dev.examples}
        sent_on = [e for e in edg.examples if e.row_id]
        assert len(sent_on) == to_cloud.sum() and all(e.hop_stage == "heavy" for e in sent_on)
        assert all(e.hop_label == "" and e.final_stage == "classifier" and e.final_label in EDGE_LABELS
                   for e in edg.examples if not e.row_id)
        # Cloud: its stage has no rule (a plain model answering raw scores), so it keeps no ledger; the heavy
        # stage's answer is in the edge's entries (test_demo_ledger covers a top stage with a rule).
        assert cld.total == 0 and cld.ledger.recorded_total == 0
        # Thumbnails in the listing, tensors only on request: the device's entries hold exactly the rows sent.
        assert all(len(e.preview) == 4 and not e.inputs[0].data for e in dev.examples)

        async def tensors() -> list[ctl.HardExample]:
            async with NodeClient(device.address) as client:
                return await client.hard_example_tensors([e.seq for e in dev.examples])
        full = asyncio.run(tensors())
        got = np.stack([np.frombuffer(e.inputs[0].data, np.dtype(e.inputs[0].dtype)).reshape(tuple(e.inputs[0].shape))
                        for e in full])
        np.testing.assert_array_equal(got, X[rows])
        # Filters and paging on the node.
        disagreed = asyncio.run(_listing(edge.address, disagreed_only=True))
        assert disagreed.total == sum(1 for e in edg.examples if e.hop_label and e.hop_label != e.stage_label)
        first = asyncio.run(_listing(device.address, limit=10))
        assert len(first.examples) == 10 and first.total == to_edge.sum()
        second = asyncio.run(_listing(device.address, limit=10, before_seq=first.examples[-1].seq))
        assert [e.seq for e in second.examples] == [e.seq for e in dev.examples[10:20]]
        with pytest.raises(grpc.RpcError) as refused:
            asyncio.run(_listing(device.address, kind="everything"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _escalate_all_pair(tmp: Path, device: AgentProcess, edge: AgentProcess) -> None:
    """Device escalates every row (a 64-float input) to the edge, which settles it."""
    model = classifier(tmp / "m.onnx", np.random.default_rng(3).normal(size=(64, 2)).astype(np.float32)).read_bytes()

    async def go() -> None:
        async with NodeClient(edge.address) as client:
            await client.deploy(manifest_for("top", model, "1", rule=ctl.EscalationRule(
                output="probs", labels=["a", "b"])), model)
        async with NodeClient(device.address) as client:
            rule = ctl.EscalationRule(output="probs", labels=["a", "b"], confidence_below=1.01)
            await client.deploy(manifest_for("detector", model, "1", rule=rule,
                                             next_hop=ctl.NextHop(address=edge.address, model="top")), model)
    asyncio.run(go())


def _integrity(path: Path) -> tuple[str, int, int]:
    with sqlite3.connect(path) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = db.execute("SELECT count(*) FROM entries").fetchone()[0]
        pages, free, page = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                                 "page_size"))
    return str(check), int(rows), int((pages - free) * page)  # the bytes the size limit is on


def test_ledger_keeps_its_bounds_and_survives_kill_9(tmp_path: Path) -> None:
    x = np.random.default_rng(5).normal(size=(600, 64)).astype(np.float32)
    max_mb = 0.1  # 104,857 bytes: about 100 entries of a 64-float row (pages and indexes included): 600 overflow
    bound = ("--ledger-max-mb", str(max_mb), "--ledger-max-rows-per-s", "0")
    with running_agent(tmp_path / "edge", name="edge") as edge:
        device = start_agent(tmp_path / "device", *bound, name="device", tier="device")
        try:
            _escalate_all_pair(tmp_path, device, edge)
            _send(device.address, x, chunk=20)
            before = _wait_recorded(device.address, len(x))
            assert before.ledger.recorded_total == len(x)
            assert 0 < before.ledger.rows < len(x) and before.ledger.evicted_total == len(x) - before.ledger.rows
            assert before.ledger.bytes <= before.ledger.max_bytes == int(max_mb * 2**20)
            device.stop(signal.SIGKILL)
            assert device.process.returncode == -signal.SIGKILL
            check, rows, size = _integrity(tmp_path / "device" / "ledger.sqlite")
            assert (check, rows) == ("ok", before.ledger.rows) and size <= int(max_mb * 2**20)

            # Same data dir: the same entries, the same counters.
            device = start_agent(tmp_path / "device", *bound, name="device", tier="device")
            after = asyncio.run(_listing(device.address))
            assert [(e.seq, e.row_id, e.final_label) for e in after.examples] == \
                [(e.seq, e.row_id, e.final_label) for e in before.examples]
            assert after.ledger == before.ledger

            # Killed in the middle of traffic: what was written stays readable and bounded.
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    try:
                        _send(device.address, x[:100], chunk=10)
                    except grpc.RpcError:
                        return
            sender = threading.Thread(target=traffic, daemon=True)
            sender.start()
            _wait_recorded(device.address, before.ledger.recorded_total + 150)
            device.stop(signal.SIGKILL)
            stop.set()
            sender.join(30)
            check, rows, size = _integrity(tmp_path / "device" / "ledger.sqlite")
            assert check == "ok" and 0 < rows and size <= int(max_mb * 2**20)
            device = start_agent(tmp_path / "device", *bound, name="device", tier="device")
            again = asyncio.run(_listing(device.address))
            assert again.ledger.rows == rows and again.ledger.recorded_total >= before.ledger.recorded_total + 150
            assert again.ledger.recorded_total == again.ledger.rows + again.ledger.evicted_total
            _send(device.address, x[:200], chunk=20)
            last = _wait_recorded(device.address, again.ledger.recorded_total + 200)
            assert 0 < last.ledger.rows < 200 and last.ledger.bytes <= last.ledger.max_bytes
        finally:
            device.stop()


def test_ledger_off_and_bad_limits(tmp_path: Path) -> None:
    with running_agent(tmp_path / "edge", name="edge") as edge, \
            running_agent(tmp_path / "device", "--ledger-max-mb", "0", name="device", tier="device") as device:
        _escalate_all_pair(tmp_path, device, edge)
        _send(device.address, np.zeros((40, 64), np.float32))
        listing = asyncio.run(_listing(device.address))
        assert (listing.total, listing.ledger.recorded_total, listing.ledger.max_bytes) == (0, 0, 0)
        # The edge (no limit given) recorded the rows that arrived from below.
        assert _wait_recorded(edge.address, 40).total == 40
    for bad in (["--ledger-max-age-h", "0"], ["--ledger-max-mb", "-1"], ["--ledger-max-rows-per-s", "-2"]):
        args = build_parser().parse_args(["--data-dir", str(tmp_path / "bad"), *bad])
        with pytest.raises(SystemExit, match="ledger-max-age-h"):
            config_from_args(args)


def test_queued_rows_get_their_late_answer_in_the_ledger(tmp_path: Path) -> None:
    edge = start_agent(tmp_path / "edge", name="edge")
    device = start_agent(tmp_path / "device", name="device", tier="device")
    try:
        _escalate_all_pair(tmp_path, device, edge)
        port = edge.port
        assert edge.stop() == 0  # the link goes down: the device answers provisional and queues the rows
        x = np.random.default_rng(9).normal(size=(30, 64)).astype(np.float32)
        _send(device.address, x, chunk=10)
        queued = _wait_recorded(device.address, 30)
        assert queued.total == 30 and all(e.hop_label == "" and not e.final for e in queued.examples)
        edge = start_agent(tmp_path / "edge", name="edge", listen=f"127.0.0.1:{port}")  # back, same stage
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            late = asyncio.run(_listing(device.address))
            if all(e.hop_label for e in late.examples):
                break
            time.sleep(0.2)
        assert all(e.hop_label in ("a", "b") and e.hop_stage == "top" for e in late.examples)
        assert all(e.final_stage == "detector" and not e.final for e in late.examples)  # what the caller got
        arrived = _wait_recorded(edge.address, 30)
        assert {e.origin_row_id for e in arrived.examples} == {e.row_id for e in late.examples}
    finally:
        device.stop()
        edge.stop()
