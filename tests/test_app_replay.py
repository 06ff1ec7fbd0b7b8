"""After-action replay on a real SQLite file written by the console's recorder: exact frames, the events up to the
replayed instant, node and link states, rollups where retention deleted the raw samples."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils
from replay_support import DEV, EDGE, Incident, write_incident

from app._db import Database, Retention, connect, rollup_rows
from app._records import NodeSample
from app._replay import RAW_MAX_WINDOW_S, ReplayTelemetry, load_history
from app._telemetry import RingBuffer

MINUTE = 60_000


def reader(path: Path) -> sqlite_utils.Database:
    return sqlite_utils.Database(connect(path, readonly=True))


@pytest.fixture
def incident(tmp_path: Path) -> tuple[Path, Incident]:
    start = (int(time.time() * 1000) - 3600_000) // MINUTE * MINUTE   # an hour ago: inside raw retention
    db = Database(tmp_path / "console.sqlite").start()
    try:
        inc = write_incident(db, start)
    finally:
        db.close()
    return tmp_path / "console.sqlite", inc


def recorded(inc: Incident, node_id: str, t_ms: int) -> NodeSample:
    """The last sample of a node written at or before t_ms."""
    return [s for s in inc.samples if s.node_id == node_id and s.ts_ms <= t_ms][-1]


def test_frame_at_t_shows_exactly_what_was_recorded(incident: tuple[Path, Incident]) -> None:
    path, inc = incident
    history = load_history(reader(path), inc.start_ms, inc.start_ms + inc.seconds * 1000)
    assert history.resolution == "raw" and history.note == "playing raw samples"
    view = ReplayTelemetry(history)
    for t in (inc.start_ms + 500, inc.t1 - 1, inc.t1, inc.t1 + 999, inc.t3, inc.t2 - 1, inc.t2 + 10,
              inc.start_ms + 599_000):
        view.seek(t)
        for node_id in (DEV, EDGE):
            want = recorded(inc, node_id, t)
            got = view.latest(node_id)
            assert got is not None and got.ts_ms == want.ts_ms, (t, node_id)
            assert (got.cpu_percent, got.power_watts, got.backlog, got.rss_bytes, got.energy_joules_total,
                    got.power_source, got.power_measured) == \
                (want.cpu_percent, want.power_watts, want.backlog, want.rss_bytes, want.energy_joules_total,
                 want.power_source, want.power_measured)
            ws, gs = want.stages[0], got.stages[0]
            for field in ("stage_id", "inferences_per_s", "escalated_per_s", "escalation_rate", "latency_p50_ms",
                          "latency_p95_ms", "latency_p99_ms", "queue_depth", "link_state", "energy_per_inference_j",
                          "inferences_total", "errors_total", "shadow_answered_total", "shadow_agreed_total"):
                assert getattr(gs, field) == getattr(ws, field), (t, node_id, field)
            # the rings hold every row up to t, as the live rings would have
            ring = view.node_series(node_id)
            assert ring is not None
            times = [s.ts_ms / 1000 for s in inc.samples if s.node_id == node_id and s.ts_ms <= t]
            assert np.array_equal(ring.times(), times)
        down = inc.t1 <= recorded(inc, DEV, t).ts_ms < inc.t2
        assert view.link_state(DEV, "det") == ("down" if down else "up")
        edge = view.node_at(EDGE)
        assert edge.state == ("offline" if inc.t1 <= t < inc.t2 else "online"), t
        if inc.t1 <= t < inc.t2:
            assert edge.reason == "unavailable: connection refused" and edge.state_since_ms == inc.t1
        snapshot = view.node(DEV)
        assert snapshot is not None and snapshot.tier == "device" and snapshot.name == "dev-1"
        assert ("link down: det" in snapshot.reasons) == down


def test_event_log_holds_exactly_the_events_up_to_t(incident: tuple[Path, Incident]) -> None:
    path, inc = incident
    history = load_history(reader(path), inc.start_ms, inc.start_ms + inc.seconds * 1000)
    in_window = [e for e in inc.events if e.ts_ms >= inc.start_ms]
    for t in (inc.start_ms, inc.start_ms + 30_000 - 1, inc.start_ms + 30_000, inc.t1, inc.t3 - 1, inc.t3, inc.t2,
              inc.start_ms + inc.seconds * 1000):
        got = [(e.ts_ms, e.kind, e.message, str(e.severity), e.node_id) for e in history.events_until(t)]
        want = [(e.ts_ms, e.kind, e.message, str(e.severity), e.node_id) for e in in_window if e.ts_ms <= t]
        assert got == want, t
    assert [e.kind for e in history.events_until(inc.t3)][-1] == "process_exit"


def test_an_online_node_without_telemetry_for_minutes_is_not_known(incident: tuple[Path, Incident]) -> None:
    path, inc = incident
    end = inc.start_ms + inc.seconds * 1000
    view = ReplayTelemetry(load_history(reader(path), inc.start_ms, end + 20 * MINUTE))
    view.seek(end + 4 * MINUTE)              # the recording stopped four minutes ago: still online as recorded
    snapshot = view.node(DEV)
    assert snapshot is not None and str(snapshot.state) == "online"
    view.seek(end + 6 * MINUTE)              # six: the audit log's "online" is no longer backed by telemetry
    snapshot = view.node(DEV)
    assert snapshot is not None and str(snapshot.state) == "discovered"
    assert snapshot.reasons[0].startswith("not known: no telemetry recorded since")
    assert snapshot.state_since_ms == 0      # no "discovered for 25 h": how long is not known either
    assert str(view.node(EDGE).state) == "discovered"   # type: ignore[union-attr]
    # a window that starts after the recording ended: its start is judged by the last sample before it
    late = ReplayTelemetry(load_history(reader(path), end + 2 * MINUTE, end + 20 * MINUTE))
    assert str(late.node(DEV).state) == "online"            # type: ignore[union-attr]  # 2 min since the last
    later = ReplayTelemetry(load_history(reader(path), end + 6 * MINUTE, end + 20 * MINUTE))
    snapshot = later.node(DEV)
    assert snapshot is not None and str(snapshot.state) == "discovered"
    assert snapshot.reasons[0].startswith("not known: no telemetry recorded since")


def test_going_back_rebuilds_the_rings_exactly(incident: tuple[Path, Incident]) -> None:
    path, inc = incident
    history = load_history(reader(path), inc.start_ms, inc.start_ms + inc.seconds * 1000)
    forward = ReplayTelemetry(history)
    forward.seek(inc.t2 + 50_000)
    changed, rebuilt = forward.seek(inc.t1 + 3_000)
    assert rebuilt and set(changed) == {DEV, EDGE}
    fresh = ReplayTelemetry(history)
    fresh.seek(inc.t1 + 3_000)
    for node_id, stage in ((DEV, "det"), (EDGE, "cls")):
        a, b = forward.stage_series(node_id, stage), fresh.stage_series(node_id, stage)
        assert a is not None and b is not None
        assert np.array_equal(a.times(), b.times())
        assert np.array_equal(a.column("latency_p95_ms"), b.column("latency_p95_ms"))
    changed, rebuilt = forward.seek(inc.t1 + 3_100)   # a tenth of a second on: no new row yet
    assert not rebuilt and changed == []


def test_ring_extend_matches_append_row_by_row() -> None:
    rng = np.random.default_rng(3)
    for capacity, first, n in ((10, 3, 4), (10, 8, 5), (10, 2, 25), (4, 0, 4)):
        a, b = RingBuffer(("x", "y"), capacity), RingBuffer(("x", "y"), capacity)
        t0 = rng.random(first).cumsum()
        rows0 = rng.random((first, 2))
        for t, row in zip(t0, rows0, strict=True):
            a.append(float(t), tuple(row))
            b.append(float(t), tuple(row))
        t1 = 100 + rng.random(n).cumsum()
        rows1 = rng.random((n, 2))
        for t, row in zip(t1, rows1, strict=True):
            a.append(float(t), tuple(row))
        b.extend(t1, rows1)
        assert np.array_equal(a.times(), b.times()) and np.array_equal(a.column("y"), b.column("y"))
        assert a.appended == b.appended and len(a) == len(b)
        assert np.array_equal(a.tail(3)[1], b.tail(3)[1])


def test_beyond_raw_retention_plays_the_rollups_and_says_so(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    start = (now - 3 * 3600_000) // MINUTE * MINUTE     # three hours ago; raw samples are kept one hour here
    db = Database(tmp_path / "console.sqlite", retention=Retention(raw_s=3600.0)).start()
    try:
        inc = write_incident(db, start)
        edge_start = (now - 70 * MINUTE) // MINUTE * MINUTE
        write_incident(db, edge_start, seconds=1200)   # 20 minutes across the retention horizon (now - 1 h)
        counts = db.run_maintenance(now).result(30)
        assert counts["raw_deleted"] > 0
        rollups = db.read(lambda d: rollup_rows(d, start, start + inc.seconds * 1000)).result(30)
    finally:
        db.close()
    history = load_history(reader(tmp_path / "console.sqlite"), start, start + inc.seconds * 1000, 3600.0)
    assert history.resolution == "1m" and history.raw_gone
    assert history.note == "playing 1-minute rollups: raw samples kept only for the last 1 h"
    view = ReplayTelemetry(history)
    for minute in (2, 5, 8):
        t = start + minute * MINUTE + 45_000          # after the minute's middle: that rollup is the latest
        view.seek(t)
        sample = view.latest(DEV)
        assert sample is not None and sample.ts_ms == start + minute * MINUTE + 30_000
        row = next(r for r in rollups if r["node_id"] == DEV and r["stage"] == "det"
                   and r["minute_ms"] == start + minute * MINUTE)
        node_row = next(r for r in rollups if r["node_id"] == DEV and r["stage"] == ""
                        and r["minute_ms"] == start + minute * MINUTE)
        st = sample.stages[0]
        assert st.inferences_per_s == row["inferences"] / 60 and st.escalation_rate == row["escalation_rate"]
        assert st.latency_p95_ms == row["latency_p95_ms_avg"] and st.link_state == ""   # not kept in rollups
        assert sample.power_watts == node_row["power_watts_avg"] and sample.backlog == node_row["backlog_max"]
        assert sample.power_source == "1-min avg"        # said so on the node card's power line
        want_minute = [s for s in inc.samples if s.node_id == DEV and
                       start + minute * MINUTE <= s.ts_ms < start + (minute + 1) * MINUTE]
        assert row["inferences"] == sum(s.stages[0].inferences for s in want_minute)
    # the events outlive the raw samples: the incident is still in the log
    assert [e.kind for e in history.events_until(inc.t3)][-1] == "process_exit"
    assert view.node_at(EDGE).state == "online"
    view.seek(inc.t1 + 1000)
    assert view.node_at(EDGE).state == "offline"

    # a window across the retention horizon: rollups first, then the raw samples, and the note says until when
    raw_first = reader(tmp_path / "console.sqlite").execute("SELECT min(ts_ms) FROM telemetry").fetchone()[0]
    assert edge_start < raw_first < edge_start + 20 * MINUTE
    split = -(-raw_first // MINUTE) * MINUTE
    mixed = load_history(reader(tmp_path / "console.sqlite"), edge_start + 2 * MINUTE, edge_start + 18 * MINUTE,
                         3600.0)
    assert mixed.resolution == "mixed" and mixed.rollup_until_ms == split
    assert "playing 1-minute rollups until" in mixed.note and "raw samples kept only for the last 1 h" in mixed.note
    track = mixed.stage_tracks[(DEV, "det")]
    assert np.all(np.diff(track.t) > 0)
    rolled, raw = track.t[track.t < split / 1000], track.t[track.t >= split / 1000]
    assert len(rolled) == (split - edge_start) // MINUTE - 2   # one a minute, at the minute's middle
    assert np.all((rolled * 1000 - 30_000) % MINUTE == 0)
    assert raw[0] == split / 1000 and len(raw) == (edge_start + 18 * MINUTE - split) // 1000 + 1


def test_a_database_that_begins_inside_the_window_plays_its_raw_samples_from_the_first(tmp_path: Path) -> None:
    # the console started at 15:20:11 (say): no rollups before, and the raw samples of its first minute count
    start = (int(time.time() * 1000) - 3600_000) // MINUTE * MINUTE + 11_958
    db = Database(tmp_path / "console.sqlite").start()
    try:
        inc = write_incident(db, start)
        db.run_maintenance().result(30)   # rolls up what it can; deletes nothing (raw kept 24 h)
    finally:
        db.close()
    history = load_history(reader(tmp_path / "console.sqlite"), start - 30 * MINUTE, start + 5 * MINUTE)
    assert history.resolution == "raw" and history.note == "playing raw samples"
    track = history.node_tracks[DEV]
    assert track.t[0] == start / 1000 and len(track) == 301   # every second of the 5 minutes, both ends
    view = ReplayTelemetry(history)
    view.seek(start + 30_000)
    sample = view.latest(DEV)
    assert sample is not None and sample.ts_ms == recorded(inc, DEV, start + 30_000).ts_ms


def test_long_windows_play_rollups_and_say_why(incident: tuple[Path, Incident]) -> None:
    # a record longer than an hour (another ten minutes 70 min before the incident) in a two-hour window
    path, inc = incident
    db = Database(path).start()
    try:
        earlier = write_incident(db, inc.start_ms - 70 * MINUTE, save_nodes=False)
        db.run_maintenance().result(30)
    finally:
        db.close()
    until = inc.start_ms + inc.seconds * 1000
    history = load_history(reader(path), until - int(RAW_MAX_WINDOW_S * 1000) - 3600_000, until)
    assert history.resolution == "1m" and not history.raw_gone
    assert history.note.startswith("playing 1-minute rollups: windows over 1 h play per minute")
    assert len(history.stage_tracks[(DEV, "det")]) == (earlier.seconds + inc.seconds) // 60
    assert history.since_ms == earlier.start_ms + MINUTE // 2       # the first rollup, at its minute's middle
    # a window that begins in the hour between the two (no telemetry for over 5 min): at the second's first sample
    between = load_history(reader(path), earlier.start_ms + 30 * MINUTE, until)
    assert between.since_ms == inc.start_ms and between.clipped and between.resolution == "raw"


def test_a_window_that_begins_before_the_record_begins_at_its_first_sample(incident: tuple[Path, Incident]) -> None:
    # "Last 1 h" / "Last 6 h" on a fleet recorded for ten minutes: the window is the ten minutes, raw samples
    # (not the rollups of a window over an hour: what was recorded is short), and its first instant shows data
    path, inc = incident
    db = Database(path).start()
    try:
        db.run_maintenance().result(30)      # the rollups of those minutes exist too
    finally:
        db.close()
    until = inc.start_ms + inc.seconds * 1000
    first = min(s.ts_ms for s in inc.samples)
    for hours in (1, 6):
        asked = until - hours * 3600_000
        history = load_history(reader(path), asked, until)
        assert history.since_ms == first and history.until_ms == until
        assert history.clipped and history.asked_since_ms == asked and not history.empty
        assert history.resolution == "raw" and history.note == "playing raw samples", hours
        assert len(history.node_tracks[DEV]) == inc.seconds
        # the nodes coming online a few seconds before the first sample were recorded in the window: kept
        assert [e.ts_ms for e in history.events] == sorted(e.ts_ms for e in inc.events)
        view = ReplayTelemetry(history)
        assert view.position_ms == first
        sample = view.latest(DEV)
        assert sample is not None and sample.ts_ms == first
        assert view.node_at(DEV).state == "online" and view.node_at(EDGE).state == "online"
        # a replay opens a minute into the record: the dashboard's minute full
        assert history.open_ms == first + MINUTE
        view.seek(history.open_ms)
        ring = view.node_series(DEV)
        assert ring is not None and len(ring) == 61
    # a window inside the record is not clipped, and opens at its start
    inside = load_history(reader(path), inc.start_ms + 500, until)
    assert inside.since_ms == inc.start_ms + 500 and not inside.clipped and inside.open_ms == inside.since_ms
    # a record shorter than a minute in the window: it opens at the window's end
    short = load_history(reader(path), inc.start_ms - 3600_000, inc.start_ms + 20_000)
    assert short.since_ms == first and short.open_ms == inc.start_ms + 20_000


def test_an_empty_window_and_a_bad_one(tmp_path: Path) -> None:
    db = Database(tmp_path / "console.sqlite").start()
    db.close()
    history = load_history(reader(tmp_path / "console.sqlite"), 0, 60_000)
    view = ReplayTelemetry(history)
    view.seek(30_000)
    assert view.nodes() == [] and view.stage_keys() == [] and history.events_until(60_000) == ()
    assert history.empty and not history.clipped and history.recorded is None
    assert history.empty_note.endswith("the console database holds no telemetry and no events yet.")
    with pytest.raises(ValueError):
        load_history(reader(tmp_path / "console.sqlite"), 60_000, 60_000)


def test_a_window_with_nothing_recorded_says_so_and_where_the_record_is(incident: tuple[Path, Incident]) -> None:
    path, inc = incident
    last = max(s.ts_ms for s in inc.samples)
    before = load_history(reader(path), inc.start_ms - 5 * 3600_000, inc.start_ms - 4 * 3600_000)
    after = load_history(reader(path), last + MINUTE, last + 61 * MINUTE)
    first_event = min(e.ts_ms for e in inc.events)
    for history in (before, after):
        assert history.empty and history.recorded == (first_event, last)
        assert history.empty_note.startswith("Nothing was recorded from ")
        runs = history.empty_note.split("; the record runs from ")[1]
        assert runs.startswith((f"{datetime.fromtimestamp(first_event / 1000):%H:%M} to",      # today
                                f"{datetime.fromtimestamp(first_event / 1000):%a %d %b %H:%M} to"))
        assert runs.endswith(f"{datetime.fromtimestamp(last / 1000):%H:%M}.")
    assert f"{datetime.fromtimestamp((last + MINUTE) / 1000):%H:%M} to" in after.empty_note
    # a day that is not today is named
    day = datetime.fromtimestamp((inc.start_ms - 3 * 86400_000) / 1000)
    older = load_history(reader(path), inc.start_ms - 3 * 86400_000, inc.start_ms - 3 * 86400_000 + 3600_000)
    assert older.empty_note.startswith(f"Nothing was recorded from {day:%a %d %b %H:%M} to ")
    assert not load_history(reader(path), inc.start_ms - 3600_000, inc.start_ms).empty   # the nodes came online
