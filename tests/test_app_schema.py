"""One source for the protocol's facts, and the console database's schema: creation, migration, export."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
from conftest import ROOT
from test_app_support import synthetic_sample

from app._db import SCHEMA_VERSION, Database, SchemaError, last_positions, open_database, schema_version, telemetry_rows
from app._records import NodeSnapshot, StageSample
from app._telemetry import SampleAcceptor
from app.pipeline_file import DATATYPES as PIPELINE_DATATYPES
from app.pipeline_file import TIERS as PIPELINE_TIERS
from cli._cmd_status import _node_json
from discovery import TIERS as DISCOVERY_TIERS
from runners._metrics import _STAGE_COUNTERS as PROMETHEUS_COUNTERS
from runners._proto import tierdeck_control_pb2 as ctl
from runners._telemetry import COUNTERS as AGENT_COUNTERS
from runners._tensors import DATATYPES as CODEC_DATATYPES
from runners._tensors import TensorError, decode_inputs
from runners.protocol import DATATYPES, STAGE_COUNTERS, TIERS

V1_SCHEMA = ROOT / "tests" / "data" / "console_schema_v1.sql"


def test_stage_counters_come_from_the_descriptor_everywhere() -> None:
    assert "duplicates_total" in STAGE_COUNTERS and "overflow_total" in STAGE_COUNTERS
    assert "compute_seconds_total" not in STAGE_COUNTERS, "a float total is not a counter"
    assert AGENT_COUNTERS == STAGE_COUNTERS
    assert tuple(PROMETHEUS_COUNTERS) == STAGE_COUNTERS
    assert StageSample._fields[1:1 + len(STAGE_COUNTERS)] == STAGE_COUNTERS


def test_tiers_and_datatypes_have_one_source() -> None:
    assert TIERS == DISCOVERY_TIERS == PIPELINE_TIERS == ("device", "edge", "cloud")
    assert DATATYPES == tuple(CODEC_DATATYPES) == PIPELINE_DATATYPES
    assert "BF16" not in PIPELINE_DATATYPES, "the validator accepts only what the agent's codec carries"
    with pytest.raises(TensorError):
        decode_inputs(_bf16_request())


def _bf16_request():  # type: ignore[no-untyped-def]
    from runners._proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="BF16", shape=[1, 2])
    request.raw_input_contents.append(b"\0" * 4)
    return request


def _every_counter_sample(seq: int) -> ctl.TelemetrySample:
    """A sample whose stage carries every descriptor counter, each with its own value."""
    stage = ctl.StageTelemetry(stage_id="s1", link_state="up",
                               **{name: 100 * seq + i + 1 for i, name in enumerate(STAGE_COUNTERS)})
    return ctl.TelemetrySample(node_id="node-a", boot_id="boot-1", seq=seq, timestamp_ms=1_000 * seq, interval_s=1.0,
                               stages=[stage])


def test_the_console_stores_and_shows_every_counter_the_agent_sends(tmp_path: Path) -> None:
    acceptor = SampleAcceptor()
    samples = [acceptor.accept("node-a", _every_counter_sample(seq)) for seq in (1, 2)]
    assert all(s is not None for s in samples)
    db = Database(tmp_path / "console.sqlite").start()
    try:
        db.write_samples([s for s in samples if s is not None])
        db.flush().result(10)
        rows = db.read(lambda d: telemetry_rows(d, stage="s1")).result(10)
        positions = db.read(last_positions).result(10)
    finally:
        db.close()
    expected = {name: 200 + i + 1 for i, name in enumerate(STAGE_COUNTERS)}
    assert {name: rows[-1][name] for name in STAGE_COUNTERS} == expected  # stored and exported
    assert positions["node-a"].stage_totals["s1"] == tuple(expected.values())
    shown = _node_json(NodeSnapshot("node-a", "node-a", "a", "edge", "127.0.0.1:1"), samples[-1])
    assert {name: shown["telemetry"]["stages"]["s1"][name] for name in STAGE_COUNTERS} == expected
    assert shown["telemetry"]["stages"]["s1"]["duplicates_total"] == expected["duplicates_total"]


def test_a_new_database_is_created_at_the_current_version(tmp_path: Path) -> None:
    db = open_database(tmp_path / "new.sqlite")
    try:
        assert schema_version(db) == SCHEMA_VERSION
        assert set(STAGE_COUNTERS) <= set(db["telemetry"].columns_dict)
        assert {"nodes", "boots", "stages", "deployments", "deployment_steps", "telemetry", "telemetry_rollup_1m",
                "events", "meta"} <= set(db.table_names())
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO nodes (node_id) VALUES ('x'), ('x')")
    finally:
        db.conn.close()


def test_a_version_1_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA.read_text())
    conn.execute("INSERT INTO nodes (ref, node_id, name) VALUES (1, 'node-a', 'a')")
    conn.execute("INSERT INTO boots (ref, node, boot_id) VALUES (1, 1, 'boot-1')")
    conn.execute("INSERT INTO telemetry (node, boot, seq, ts_ms, stage, inferences_total, errors_total) "
                 "VALUES (1, 1, 7, 5000, 's1', 70, 1), (1, 1, 7, 5000, '', NULL, NULL)")
    conn.commit()
    conn.close()
    v1 = sqlite_utils.Database(path)
    assert schema_version(v1) == 1 and "duplicates_total" not in v1["telemetry"].columns_dict
    v1.conn.close()

    db = Database(path).start()
    try:
        positions = db.read(last_positions).result(10)
        db.write_samples([synthetic_sample("node-a", 8, 6_000, inferences_total=80)])
        db.flush().result(10)
        rows = db.read(lambda d: telemetry_rows(d, stage="s1")).result(10)
        version = db.read(schema_version).result(10)
    finally:
        db.close()
    assert version == SCHEMA_VERSION == 4
    assert {"shadow_sent_total", "shadow_answered_total", "shadow_agreed_total", "shadow_shed_total"} <= set(
        sqlite_utils.Database(path)["telemetry"].columns_dict)
    assert positions["node-a"].seq == 7 and positions["node-a"].stage_totals["s1"][1] == 70
    assert [(r["seq"], r["inferences_total"], r["duplicates_total"]) for r in rows] == [(7, 70, None), (8, 80, 0)]


def test_a_database_from_a_newer_tierdeck_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    open_database(path).conn.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="newer than this tierdeck"):
        open_database(path)
