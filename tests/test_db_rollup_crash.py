"""Rollups survive a crash: kill -9 during a rollup/retention pass, or between a late sample and the next pass."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT
from test_app_support import synthetic_sample

from app._db import Database

MINUTE = 60_000
T0 = 1_900_000_000_000 // MINUTE * MINUTE
NODES = ("node-a", "node-b", "node-c", "node-d")
MINUTES = 150
NOW = T0 + (MINUTES + 10) * MINUTE
RAW_S = 60 * 60.0  # raw rows of the first ~100 minutes go once rolled up

PASS = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from app._db import Database, Retention
db = Database(sys.argv[1], retention=Retention(raw_s=float(sys.argv[4])), maintenance_seconds=3600).start()
print("start", flush=True)
db.run_maintenance(int(sys.argv[3])).result()
print("done", flush=True)
time.sleep(60)
"""

LATE = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
from test_app_support import synthetic_sample
from app._db import Database
db = Database(sys.argv[1], maintenance_seconds=3600).start()
db.write_sample(synthetic_sample("node-a", 10_000, int(sys.argv[3]), inferences_total=10_000, inferences=7))
db.flush().result()
os.kill(os.getpid(), 9)  # the console dies before its next rollup pass
"""


def _populate(path: Path) -> None:
    db = Database(path, batch_rows=5000, maintenance_seconds=3600).start()
    try:
        seq = 0
        for minute in range(MINUTES):
            for second in range(0, 60, 2):
                seq += 1
                for node in NODES:
                    db.write_sample(synthetic_sample(node, seq, T0 + minute * MINUTE + second * 1000,
                                                     inferences_total=seq, inferences=1))
        db.flush().result(120)
    finally:
        db.close()


def _check(path: Path) -> tuple[int, int]:
    """Integrity, and every rolled window exact and present; returns (watermark, windows)."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = conn.execute("SELECT value FROM meta WHERE key = 'rollup_watermark'").fetchone()
        watermark = int(row[0]) if row else T0
        windows = conn.execute("SELECT n.node_id, r.stage, r.minute_ms, r.samples, r.inferences "
                               "FROM telemetry_rollup_1m r JOIN nodes n ON n.ref = r.node").fetchall()
        for node_id, stage, minute, samples, inferences in windows:
            assert minute < watermark, "a window beyond the watermark"
            assert samples == 30, f"window {node_id}/{stage or 'node'}/{minute} counted {samples} samples"
            assert stage == "" or inferences == 30
        expected = {(n, st, T0 + m * MINUTE) for n in NODES for st in ("", "s1") for m in range(MINUTES)
                    if T0 + m * MINUTE < watermark}
        assert {(n, st, m) for n, st, m, _, _ in windows} == expected, "a window below the watermark is missing"
        # Raw rows not rolled up yet are never deleted.
        raw_min = conn.execute("SELECT min(ts_ms) FROM telemetry").fetchone()[0]
        assert raw_min is not None and raw_min <= max(watermark, T0)
        return watermark, len(windows)
    finally:
        conn.close()


def _run_pass(path: Path, kill_after: float | None) -> bool:
    """One maintenance pass in a child; SIGKILL it `kill_after` s after it starts; True if it finished first."""
    child = subprocess.Popen([sys.executable, "-c", PASS, str(path), str(ROOT / "tests"), str(NOW), str(RAW_S)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "start", child.stderr.read() if child.stderr else ""
        if kill_after is None:
            assert child.stdout.readline().strip() == "done"
            return True
        time.sleep(kill_after)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        return "done" in (child.stdout.read() or "")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)


def test_kill_9_during_rollup_and_retention_passes_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "console.sqlite"
    _populate(path)
    assert _check(path) == (T0, 0)
    interrupted = 0
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.35):
        finished = _run_pass(path, delay)
        interrupted += not finished
        watermark, _ = _check(path)
        assert watermark in (T0, (NOW - 90_000) // MINUTE * MINUTE)  # all or nothing
    assert interrupted >= 3, "the kills should land inside the pass"
    assert _run_pass(path, None)
    watermark, windows = _check(path)
    assert windows == len(NODES) * 2 * MINUTES
    conn = sqlite3.connect(path)
    try:
        raw_left = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]
        total = conn.execute("SELECT sum(inferences) FROM telemetry_rollup_1m WHERE stage = 's1'").fetchone()[0]
    finally:
        conn.close()
    assert total == len(NODES) * MINUTES * 30, "every sample counted once"
    assert 0 < raw_left < len(NODES) * MINUTES * 30 * 2, "retention ran"


def test_a_late_sample_committed_just_before_a_crash_is_rolled_up_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "console.sqlite"
    _populate(path)
    assert _run_pass(path, None)
    late_minute = T0 + (MINUTES - 5) * MINUTE  # below the watermark, still within raw retention
    child = subprocess.run([sys.executable, "-c", LATE, str(path), str(ROOT / "tests"), str(late_minute + 1234)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert _run_pass(path, None)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        samples, inferences = conn.execute(
            "SELECT r.samples, r.inferences FROM telemetry_rollup_1m r JOIN nodes n ON n.ref = r.node "
            "WHERE n.node_id = 'node-a' AND r.stage = 's1' AND r.minute_ms = ?", (late_minute,)).fetchone()
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone()[0] == 0
    finally:
        conn.close()
    assert (samples, inferences) == (31, 37), "the late sample's window was not rolled up again"
