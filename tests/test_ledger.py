"""The hard-example ledger (runners/_ledger.py) on real SQLite files: recording, bounds, counters, restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runners._ledger import Ledger, make_preview
from runners._rules import Decisions

LABELS = ["water", "vessel"]


def answers(labels: list[str], stage: str, confidence: float, final: bool = True) -> Decisions:
    """Decisions for len(labels) rows, all decided by `stage`."""
    table = sorted(set(labels))
    return Decisions(table, np.array([table.index(x) for x in labels], np.int32),
                     np.full(len(labels), confidence, np.float32), [stage], np.zeros(len(labels), np.int32),
                     np.full(len(labels), final))


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 64, 64), dtype=np.float32)


def record(ledger: Ledger, rows: int, first: int = 0, seed: int = 0, kind: str = "escalated") -> np.ndarray:
    """Record `rows` detector rows (ids det.<first>...) the classifier answered 'cargo'; returns the inputs."""
    inputs = images(rows, seed)
    scores = np.tile(np.array([[0.3, 0.7]], np.float32), (rows, 1))
    ids = [f"dev.det.x.{first + k}" for k in range(rows)]
    stage = answers(["vessel"] * rows, "detector", 0.7, final=False)
    hop = answers(["cargo"] * rows, "classifier", 0.9)
    if kind == "escalated":
        assert ledger.record_escalated("detector", "v1", ids, {"image": inputs}, scores, LABELS, stage, hop) == rows
    else:
        assert ledger.record_shadow_disagreed("detector", "v1", ids, {"image": inputs}, scores, LABELS, stage,
                                              hop) == rows
    return inputs


def test_recorded_rows_come_back_whole(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        inputs = record(ledger, 3)
        record(ledger, 1, first=3, seed=1, kind="shadow_disagreed")
        assert ledger.flush()
        entries, total = ledger.list()
        assert total == 4 and [e.row_id for e in entries] == [f"dev.det.x.{k}" for k in (3, 2, 1, 0)]
        shadow, escalated = entries[0], entries[-1]
        assert shadow.kind == "shadow_disagreed" and shadow.final_label == "vessel" and shadow.disagreed
        assert escalated.kind == "escalated" and escalated.final_label == "cargo" and escalated.final_stage == \
            "classifier" and escalated.hop_confidence == pytest.approx(0.9)
        assert escalated.stage_label == "vessel" and escalated.scores == pytest.approx((0.3, 0.7))
        assert escalated.score_labels == ("water", "vessel") and escalated.stage_version == "v1"
        assert escalated.inputs[0].name == "image" and escalated.inputs[0].shape == (1, 64, 64)
        assert escalated.preview_shape == (64, 64) and len(escalated.preview) == 64 * 64
        full = ledger.get(escalated.seq)
        assert full is not None
        np.testing.assert_array_equal(full.tensors["image"], inputs[0])
        assert ledger.get(10_000) is None
        # Filters: kind, class, disagreement, stage, page.
        assert ledger.list(kind="shadow_disagreed")[1] == 1
        assert ledger.list(label="cargo")[1] == 4 and ledger.list(label="tanker")[1] == 0
        assert ledger.list(stage_id="classifier")[1] == 0
        page, total = ledger.list(limit=2, before_seq=entries[1].seq)
        assert total == 4 and [e.seq for e in page] == [entries[2].seq, entries[3].seq]
    finally:
        ledger.close()


def test_the_answer_given_is_copied_before_the_request_path_changes_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        stage = answers(["vessel"], "detector", 0.7, final=False)
        ledger.record_escalated("detector", "v1", ["a.0"], {"image": images(1)}, np.array([[0.3, 0.7]]), LABELS,
                                stage, None)
        stage.assign(np.array([0]), answers(["cargo"], "classifier", 0.9))  # what _decide does next
        assert ledger.flush()
        (entry,), _ = ledger.list()
        assert (entry.stage_label, entry.hop_label, entry.final_label, entry.final) == ("vessel", "", "vessel", False)
    finally:
        ledger.close()


def test_size_limit_evicts_oldest_and_counts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", max_mb=0.25)  # ~12 rows of 16 KiB images
    try:
        for k in range(10):
            record(ledger, 5, first=5 * k, seed=k)
            assert ledger.flush()
        stats = ledger.stats()
        assert stats.recorded_total == 50
        assert 0 < stats.rows < 50 and stats.evicted_total == 50 - stats.rows
        assert stats.bytes <= stats.max_bytes
        entries, _ = ledger.list(limit=100)
        assert entries[0].row_id == "dev.det.x.49"  # the newest stay
        assert sorted(int(e.row_id.rsplit(".", 1)[1]) for e in entries) == list(range(50 - stats.rows, 50))
    finally:
        ledger.close()
    # The limit is on the disk: the file (WAL checkpointed at close) stays within it, give or take a page or two.
    assert (tmp_path / "ledger.sqlite").stat().st_size <= 0.25 * 2**20 + 8192


def test_age_limit_expires_and_counts(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ledger = Ledger(tmp_path / "ledger.sqlite", max_age_h=1.0, clock=lambda: now[0])
    try:
        record(ledger, 4)
        assert ledger.flush()
        now[0] += 1800
        record(ledger, 2, first=4)
        assert ledger.flush() and ledger.stats().rows == 6
        now[0] += 2400  # the first four are now 70 minutes old
        record(ledger, 1, first=6)
        assert ledger.flush()
        stats = ledger.stats()
        assert (stats.rows, stats.expired_total, stats.evicted_total) == (3, 4, 0)
    finally:
        ledger.close()


def test_a_full_handoff_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", handoff_rows=4)
    try:
        with ledger._cond:  # the writer cannot take anything while we hold its lock: the hand-off fills
            accepted = [ledger.record_escalated("detector", "v1", [f"r.{k}", f"r.{k}b", f"r.{k}c"],
                                                {"image": images(3)}, np.zeros((3, 2)), LABELS,
                                                answers(["water"] * 3, "detector", 0.5), None) for k in range(3)]
        assert accepted == [3, 0, 0]
        assert ledger.flush()
        stats = ledger.stats()
        assert (stats.rows, stats.dropped_total) == (3, 6)
    finally:
        ledger.close()


def test_the_handoff_holds_at_most_its_bytes_of_large_inputs_and_counts_the_rest(tmp_path: Path) -> None:
    """An operator's 224×224×3 float images are 588 KiB a row: 4,096 waiting rows would be 2.3 GiB on a device.
    While the writer is busy the hand-off takes the first rows that fit its bytes (one row at least when nothing
    waits), counts the others as dropped, and the rows it took are written whole."""
    big = np.random.default_rng(4).random((8, 3, 224, 224), dtype=np.float32)
    row_bytes = big[0].nbytes
    ledger = Ledger(tmp_path / "ledger.sqlite", handoff_bytes=5 * row_bytes, max_rows_per_s=0)
    try:
        def rec(rows: np.ndarray, first: int) -> int:
            n = len(rows)
            return ledger.record_escalated("own", "v1", [f"r.{first + k}" for k in range(n)], {"image": rows},
                                           np.zeros((n, 2)), LABELS, answers(["water"] * n, "own", 0.5), None)

        with ledger._cond:  # the writer cannot take anything while we hold its lock: the hand-off fills
            accepted = [rec(big[:3], 0), rec(big[3:6], 3), rec(big[6:8], 6)]
        assert accepted == [3, 2, 0]  # 3 + 2 rows = the 5 rows' bytes the hand-off holds; the rest dropped
        assert ledger.flush()
        stats = ledger.stats()
        assert (stats.rows, stats.dropped_total) == (5, 3)
        kept = sorted(ledger.list(limit=10)[0], key=lambda e: e.row_id)
        assert [e.row_id for e in kept] == ["r.0", "r.1", "r.2", "r.3", "r.4"]
        for entry, row in zip(kept, big[:5], strict=True):
            got = ledger.get(entry.seq)
            assert got is not None and np.array_equal(got.tensors["image"], row)  # written whole

        alone = Ledger(tmp_path / "alone.sqlite", handoff_bytes=row_bytes // 2, max_rows_per_s=0)
        try:  # a row larger than the whole bound is still kept when nothing else waits
            assert alone.record_escalated("own", "v1", ["a.0", "a.1"], {"image": big[:2]}, np.zeros((2, 2)),
                                          LABELS, answers(["water"] * 2, "own", 0.5), None) == 1
            assert alone.flush() and (alone.stats().rows, alone.stats().dropped_total) == (1, 1)
        finally:
            alone.close()
    finally:
        ledger.close()


def test_counters_and_rows_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, max_mb=0.1)
    record(ledger, 10)
    ledger.close()
    again = Ledger(path, max_mb=0.1)
    try:
        stats = again.stats()
        assert stats.recorded_total == 10 and stats.rows + stats.evicted_total == 10 and stats.rows > 0
        assert stats.bytes <= stats.max_bytes
    finally:
        again.close()


@pytest.mark.parametrize(("shape", "expected"), [
    ((1, 64, 64), (64, 64)), ((3, 128, 96), (64, 48, 3)), ((32, 32, 3), (32, 32, 3)), ((20,), (20,)),
    ((1000,), (64,)), ((4, 2), (8,)),
])
def test_preview_shapes(shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    data, got = make_preview(np.random.default_rng(0).random(shape).astype(np.float32))
    assert got == expected and len(data) == int(np.prod(expected))


def test_preview_keeps_a_peak_and_survives_nan() -> None:
    row = np.zeros(1000, np.float32)
    row[500] = 50.0
    row[3] = np.nan
    data, _ = make_preview(row)
    cells = np.frombuffer(data, np.uint8)
    assert cells.argmax() == 32 and cells.max() == 255 and cells[0] == 0


def test_bytes_inputs_are_kept_as_bytes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        text = np.array([[b"ship"], [b"no ship here"]], dtype=object)
        ledger.record_escalated("reader", "v1", ["t.0", "t.1"], {"text": text}, np.zeros((2, 2)), LABELS,
                                answers(["water", "water"], "reader", 0.5), None)
        assert ledger.flush()
        entries, _ = ledger.list()
        full = ledger.get(entries[0].seq)
        assert full is not None and full.tensors["text"].tolist() == [b"no ship here"]
    finally:
        ledger.close()


def test_rows_over_the_recording_rate_are_dropped_and_counted(tmp_path: Path) -> None:
    now = [5_000.0]
    ledger = Ledger(tmp_path / "ledger.sqlite", max_rows_per_s=10.0, clock=lambda: now[0])
    try:
        assert ledger.record_escalated("detector", "v1", [f"a.{k}" for k in range(25)], {"image": images(25)},
                                       np.zeros((25, 2)), LABELS, answers(["water"] * 25, "detector", 0.5),
                                       None) == 10  # a burst of one second's worth
        now[0] += 0.5
        record_half = ledger.record_escalated("detector", "v1", ["b.0", "b.1", "b.2", "b.3", "b.4", "b.5"],
                                              {"image": images(6)}, np.zeros((6, 2)), LABELS,
                                              answers(["water"] * 6, "detector", 0.5), None)
        assert record_half == 5
        assert ledger.flush()
        stats = ledger.stats()
        assert (stats.rows, stats.recorded_total, stats.dropped_total) == (15, 15, 16)
        entries, _ = ledger.list(limit=100)
        assert sorted(e.row_id for e in entries) == sorted([f"a.{k}" for k in range(10)] + [f"b.{k}" for k in range(5)])
    finally:
        ledger.close()


def test_reads_see_what_was_written_since(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        for k in range(5):
            record(ledger, 1, first=k)
            assert ledger.flush()
            entries, total = ledger.list()
            assert total == k + 1 and entries[0].row_id == f"dev.det.x.{k}"  # never an older snapshot
            assert ledger.get(entries[0].seq) is not None
    finally:
        ledger.close()
