"""Console-side telemetry: de-duplication by (boot_id, seq), deltas, ring buffers."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from app._telemetry import LiveTelemetry, Position, RingBuffer, SampleAcceptor
from runners._proto import tierdeck_control_pb2 as ctl


def msg(seq: int, ts: int, boot: str = "b1", inferences: int = 0, energy: float = 0.0) -> ctl.TelemetrySample:
    sample = ctl.TelemetrySample(node_id="n", boot_id=boot, seq=seq, timestamp_ms=ts, energy_joules_total=energy)
    sample.stages.add(stage_id="s", inferences_total=inferences, escalated_total=inferences // 2)
    return sample


def test_a_replayed_stream_is_dropped_as_duplicates() -> None:
    acc = SampleAcceptor()
    first = [acc.accept("n", msg(i, 1000 * i, inferences=10 * i)) for i in range(1, 6)]
    assert all(s is not None for s in first)
    # Reconnect: an agent that replays from seq 3 (same boot, same timestamps) must not be stored twice.
    again = [acc.accept("n", msg(i, 1000 * i, inferences=10 * i)) for i in range(3, 8)]
    assert [s.seq if s else None for s in again] == [None, None, None, 6, 7]
    assert acc.duplicates == 3


def test_a_new_boot_starts_over_and_counts_from_zero() -> None:
    acc = SampleAcceptor()
    acc.accept("n", msg(1, 1000, inferences=40, energy=5.0))
    s = acc.accept("n", msg(1, 2000, boot="b2", inferences=7, energy=1.5))
    assert s is not None and s.boot_id == "b2" and s.seq == 1
    assert s.stages[0].inferences == 7 and s.energy_joules == 1.5


def test_seeded_position_continues_after_a_console_restart() -> None:
    acc = SampleAcceptor()
    acc.seed("n", Position("b1", 10, 10_000, 3.0, {"s": (0, 50, 25, 0, 0, 0, 0, 0, 0, 0, 0)}))
    assert acc.accept("n", msg(10, 10_000, inferences=50)) is None
    s = acc.accept("n", msg(11, 11_000, inferences=55, energy=4.0))
    assert s is not None and s.stages[0].inferences == 5 and s.energy_joules == 1.0


@given(st.lists(st.integers(1, 30), min_size=1, max_size=80))
def test_stored_seqs_strictly_increase_within_a_boot(events: list[int]) -> None:
    acc = SampleAcceptor()
    ts, accepted = 0, []
    for seq in events:
        ts += 1
        s = acc.accept("n", msg(seq, ts))
        if s is not None:
            accepted.append(s.seq)
    assert accepted == sorted(set(accepted))


def test_ring_buffer_wraps_in_order_without_reallocating() -> None:
    ring = RingBuffer(("a", "b"), capacity=4)
    storage = ring._data
    for i in range(10):
        ring.append(float(i), (i, 10 * i))
    assert ring._data is storage
    np.testing.assert_array_equal(ring.times(), [6, 7, 8, 9])
    np.testing.assert_array_equal(ring.column("b"), [60, 70, 80, 90])
    t, v = ring.series("a", since=8)
    np.testing.assert_array_equal(t, [8, 9])
    np.testing.assert_array_equal(v, [8, 9])
    assert ring.last("a") == 9 and len(ring) == 4 and ring.appended == 10


def test_live_telemetry_keeps_buffers_per_node_and_stage() -> None:
    acc = SampleAcceptor()
    live = LiveTelemetry(capacity=8)
    for i in range(1, 4):
        m = msg(i, 1000 * i, inferences=10 * i)
        m.stages[0].score_histogram.extend([i] * 20)
        sample = acc.accept("n", m)
        assert sample is not None
        live.add(sample)
    assert live.latest["n"].seq == 3
    np.testing.assert_array_equal(live.stages[("n", "s")].column("inferences_total"), [10, 20, 30])
    np.testing.assert_array_equal(live.score_histogram("n", "s", since=2.0), [5] * 20)
    live.rename("n", "m")
    assert ("m", "s") in live.stages and "n" not in live.nodes
    live.forget("m")
    assert not live.stages and not live.nodes
