"""The console database: crash safety, rollups and retention, locked and full databases, the ledger."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT
from test_app_support import synthetic_sample

from app._db import Database, Retention, last_positions, rollup_rows, telemetry_rows
from app._records import ConsoleEvent, Severity

MINUTE = 60_000
NOW = 1_900_000_000_000 // MINUTE * MINUTE  # a fixed, minute-aligned "now" (2030)

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from test_app_support import synthetic_sample
from app._db import Database
db = Database(sys.argv[1], batch_seconds=0.02, batch_rows=200).start()
seq = 0
while True:
    for _ in range(40):
        seq += 1
        db.write_sample(synthetic_sample("node-a", seq, 1_700_000_000_000 + seq * 100, inferences_total=seq,
                                         inferences=1))
    committed = db.flush().result()
    print(json.dumps({"committed": committed, "last_seq": seq}), flush=True)
"""


def test_kill_9_while_writing_keeps_every_committed_sample(tmp_path: Path) -> None:
    path = tmp_path / "console.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(ROOT / "tests")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reports = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            reports.append(json.loads(line))
            if len(reports) >= 8:
                break
        # The child goes on writing (the next batch is being inserted) when the signal lands.
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    last = reports[-1]
    assert last["committed"] == last["last_seq"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seqs = [r[0] for r in conn.execute("SELECT seq FROM telemetry WHERE stage = '' ORDER BY seq")]
        stage_rows = conn.execute("SELECT count(*) FROM telemetry WHERE stage = 's1'").fetchone()[0]
    finally:
        conn.close()
    assert len(seqs) >= last["last_seq"], "a sample committed before the kill is missing"
    assert seqs == list(range(1, len(seqs) + 1)), "samples lost or duplicated"
    assert stage_rows == len(seqs), "a sample's node row and stage row are committed together"


def _write(db: Database, samples: list) -> None:  # type: ignore[type-arg]
    for s in samples:
        db.write_sample(s)
    db.flush().result(10)


def test_rollups_and_retention_are_exact(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite", retention=Retention(raw_s=24 * 3600, rollup_s=30 * 86400,
                                                              events_s=7 * 86400)).start()
    try:
        t0 = NOW - 3 * 3600 * 1000  # three hours ago, on a minute boundary
        samples, total = [], 0
        for i in range(18):  # every 10 s for three minutes; inferences i+1 in sample i
            total += i + 1
            samples.append(synthetic_sample("node-a", i + 1, t0 + i * 10_000, inferences_total=total,
                                            inferences=i + 1, escalated=i % 3, cpu=float(i), power=2.0 + i,
                                            p95=float(10 * i)))
        old = [synthetic_sample("node-b", i + 1, NOW - 25 * 3600 * 1000 + i * 1000, inferences_total=i + 1,
                                inferences=1) for i in range(5)]
        _write(db, samples + old)
        db.add_event(ConsoleEvent("test", "old event", Severity.INFO, ts_ms=NOW - 8 * 86400 * 1000))
        db.add_event(ConsoleEvent("test", "new event", Severity.INFO, ts_ms=NOW - 1000))
        counts = db.run_maintenance(NOW).result(10)
        assert counts["raw_deleted"] == 5 * 2 and counts["events_deleted"] == 1  # a node row + a stage row each

        def read(fn):  # type: ignore[no-untyped-def]
            return db.read(fn).result(10)

        rollups = read(lambda d: rollup_rows(d, 0, None, "node-a", "s1"))
        assert [r["minute_ms"] for r in rollups] == [t0, t0 + MINUTE, t0 + 2 * MINUTE]
        for m, row in enumerate(rollups):
            chunk = samples[m * 6:(m + 1) * 6]
            inferences = sum(s.stages[0].inferences for s in chunk)
            escalated = sum(s.stages[0].escalated for s in chunk)
            assert row["samples"] == 6
            assert (row["inferences"], row["escalated"]) == (inferences, escalated)
            assert row["escalation_rate"] == pytest.approx(escalated / inferences)
            assert row["latency_p95_ms_max"] == max(s.stages[0].latency_p95_ms for s in chunk)
            assert row["latency_p95_ms_avg"] == pytest.approx(sum(s.stages[0].latency_p95_ms for s in chunk) / 6)
        node_rollups = read(lambda d: rollup_rows(d, 0, None, "node-a", ""))
        assert [r["cpu_percent_avg"] for r in node_rollups] == pytest.approx([2.5, 8.5, 14.5])
        assert [r["power_watts_max"] for r in node_rollups] == [7.0, 13.0, 19.0]
        assert sum(r["inferences"] for r in rollups) == total, "rollups add up to the agent's counter"
        # node-b's raw samples are gone (older than 24 h) but were rolled up first.
        assert read(lambda d: telemetry_rows(d, 0, None, "node-b")) == []
        b = read(lambda d: rollup_rows(d, 0, None, "node-b", "s1"))
        assert sum(r["inferences"] for r in b) == 5 and sum(r["samples"] for r in b) == 5
        events = read(lambda d: [r["message"] for r in d.query("SELECT message FROM events")])
        assert events == ["new event"]

        # A late sample (a reconnect delivering an old timestamp) is rolled into its minute again.
        _write(db, [synthetic_sample("node-a", 19, t0 + MINUTE + 59_000, inferences_total=total + 100,
                                     inferences=100)])
        db.run_maintenance(NOW).result(10)
        minute1 = read(lambda d: rollup_rows(d, t0 + MINUTE, t0 + 2 * MINUTE, "node-a", "s1"))[0]
        assert minute1["samples"] == 7
        assert minute1["inferences"] == sum(s.stages[0].inferences for s in samples[6:12]) + 100

        # A month later the rollups are gone too.
        db.run_maintenance(NOW + 31 * 86400 * 1000).result(10)
        assert read(lambda d: rollup_rows(d, 0, None)) == []
    finally:
        db.close()


def test_last_positions_seed_deduplication_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    db = Database(path).start()
    _write(db, [synthetic_sample("node-a", i, 1_000 + i, inferences_total=10 * i) for i in range(1, 6)]
           + [synthetic_sample("node-a", 1, 9_000, boot_id="boot-2", inferences_total=3)])
    db.close()
    db = Database(path).start()
    try:
        positions = db.read(last_positions).result(10)
    finally:
        db.close()
    assert positions["node-a"].boot_id == "boot-2"
    assert positions["node-a"].seq == 1
    assert positions["node-a"].stage_totals["s1"][1] == 3


def test_locked_database_is_an_error_event_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    errors: list[str] = []
    recovered = threading.Event()
    locked = threading.Event()

    def on_error(message: str) -> None:
        errors.append(message)
        locked.set()

    db = Database(path, on_error=on_error, on_recovered=lambda m: recovered.set(), batch_seconds=0.01).start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        for i in range(1, 51):
            db.write_sample(synthetic_sample("node-a", i, 1_000 + i))  # never blocks the caller
        done = db.flush()
        assert locked.wait(30), "no error event for a locked database"
        assert "locked" in errors[0]
        assert not done.done()
        assert db.stats()["pending_rows"] > 0 or db.stats()["last_error"]
        other.execute("ROLLBACK")
        assert done.result(30) == 50
        assert recovered.wait(10)
        count = db.read(lambda d: d.execute("SELECT count(*) FROM telemetry WHERE stage = ''").fetchone()[0])
        assert count.result(10) == 50
    finally:
        other.close()
        db.close()


def test_full_database_is_an_error_event_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    errors: list[str] = []
    full = threading.Event()

    def on_error(message: str) -> None:
        errors.append(message)
        full.set()

    db = Database(path, max_db_bytes=300 * 1024, batch_seconds=0.01, batch_rows=100, on_error=on_error).start()
    try:
        n = 3000
        for i in range(1, n + 1):
            db.write_sample(synthetic_sample("node-a", i, 1_000 + i, inferences_total=i))
        done = db.flush()
        assert full.wait(30), "no error event for a full database"
        assert "full" in errors[0]
        db.set_max_bytes(None)  # the operator makes room
        assert done.result(30) == n
        seqs = db.read(lambda d: [r[0] for r in d.execute("SELECT seq FROM telemetry WHERE stage = '' ORDER BY seq")])
        assert seqs.result(10) == list(range(1, n + 1))
        assert db.stats()["dropped_rows"] == 0
    finally:
        db.close()


def test_backlog_is_bounded_while_the_database_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    errors: list[str] = []
    dropped = threading.Event()

    def on_error(message: str) -> None:
        errors.append(message)
        if "dropped" in message:
            dropped.set()

    db = Database(path, max_pending_rows=200, batch_seconds=0.01, on_error=on_error).start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        for i in range(1, 1001):
            db.write_sample(synthetic_sample("node-a", i, 1_000 + i))
        done = db.flush()
        assert dropped.wait(30), errors
        other.execute("ROLLBACK")
        done.result(30)
        stats = db.stats()
        seqs = db.read(lambda d: [r[0] for r in d.execute("SELECT seq FROM telemetry WHERE stage = '' ORDER BY seq")])
        kept = seqs.result(10)
        assert stats["dropped_rows"] > 0
        assert len(kept) * 2 + stats["dropped_rows"] == 1000 * 2, "every row is either stored or counted as dropped"
        assert kept[-1] == 1000 and 1 not in kept, "the newest samples are kept, the oldest dropped"
    finally:
        other.close()
        db.close()


def test_ledger_and_events_round_trip(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite").start()
    try:
        db.begin_deployment("dep1", "chain", "/x/chain.pipeline.json", "alice", "laptop", {"nodes": []})
        db.add_step("dep1", "node-a", "s1", "upload", "done", "ok")
        db.finish_deployment("dep1", "succeeded", "")
        db.add_event(ConsoleEvent("deploy", "alice deployed chain", Severity.INFO, detail={"deployment_id": "dep1"}))
        db.flush().result(10)
        rows = db.read(lambda d: list(d.query("SELECT id, status, operator FROM deployments"))).result(10)
        steps = db.read(lambda d: list(d.query("SELECT node_id, step, status FROM deployment_steps"))).result(10)
        events = db.read(lambda d: list(d.query("SELECT kind, detail_json FROM events"))).result(10)
    finally:
        db.close()
    assert rows == [{"id": "dep1", "status": "succeeded", "operator": "alice"}]
    assert steps == [{"node_id": "node-a", "step": "upload", "status": "done"}]
    assert json.loads(events[0]["detail_json"]) == {"deployment_id": "dep1"}


def test_samples_wait_for_their_batch_but_a_flush_a_call_and_close_do_not(tmp_path: Path) -> None:
    """Samples only queue (the writer sleeps through its batch instead of waking for each sample); a flush, a call
    and close wake it at once — with a batch of an hour, each of them would otherwise wait for the hour."""
    db = Database(tmp_path / "c.sqlite", batch_seconds=3600.0, batch_rows=100_000).start()
    try:
        for seq in range(1, 51):
            db.write_sample(synthetic_sample("node-a", seq, NOW + seq * 100))
        assert db.flush().result(timeout=20) == 50
        for seq in range(51, 61):
            db.write_sample(synthetic_sample("node-a", seq, NOW + seq * 100))
        count = db.call(lambda d: d.conn.execute("SELECT COUNT(DISTINCT seq) FROM telemetry").fetchone()[0])
        assert count.result(20) == 60
        assert db.stats()["commits"] >= 2
        db.write_sample(synthetic_sample("node-a", 61, NOW + 6100))
    finally:
        closer = threading.Thread(target=db.close)
        closer.start()
        closer.join(20)
    assert not closer.is_alive(), "close waited for the batch"
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    assert conn.execute("SELECT MAX(seq) FROM telemetry").fetchone()[0] == 61, "close commits what is queued"
