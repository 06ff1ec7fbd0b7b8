"""A known incident written through the console's own recorder (app._db.Database), for the replay tests.

Node "dev-1" (device tier) runs stage "det", escalating to "edge-1" (edge tier) which runs "cls".
One sample a second per node for `seconds` from `start_ms`. The incident: edge-1 goes offline at
t1 and is back at t2 (node_state events, as the fleet writes them); det's link on dev-1 is down
from t1 to t2 (its samples say so); an error event at t3 (a process exit on edge-1).
"""

from __future__ import annotations

from dataclasses import dataclass

from app._db import Database
from app._records import ConsoleEvent, NodeSample, NodeSnapshot, NodeState, Severity, StageSample
from runners.protocol import STAGE_COUNTERS

DEV, EDGE = "dev-1-id", "edge-1-id"


@dataclass(frozen=True)
class Incident:
    """The times of the incident (Unix ms) and everything written."""

    start_ms: int
    seconds: int
    t1: int
    t2: int
    t3: int
    samples: tuple[NodeSample, ...]
    events: tuple[ConsoleEvent, ...]


def stage_sample(stage_id: str, i: int, link: str) -> StageSample:
    """Stage figures that differ from second to second (so a frame off by one sample is seen)."""
    counters = dict.fromkeys(STAGE_COUNTERS, 0) | {"inferences_total": 10 * i + 3, "errors_total": i // 50,
                                                  "shadow_answered_total": 2 * i, "shadow_agreed_total": 2 * i - i // 9}
    ips = 10.0 + (i % 7)
    rate = 0.05 + (i % 5) / 100
    return StageSample._make([stage_id, *counters.values(), 10, int(10 * rate), 0, 0, 0, 0, ips, ips * rate, rate,
                              1.0 + i % 3, 2.0 + (i % 11) / 4, 4.0 + i % 13, i % 4, link, 0.5 * i, 0.001 * (1 + i % 3),
                              "", (), 0, 0.0, None])


def node_sample(node_id: str, stage_id: str, i: int, ts_ms: int, link: str) -> NodeSample:
    """One node's sample number i."""
    return NodeSample(node_id, "boot-1", i + 1, ts_ms, 1.0, 20.0 + i % 9, 1_000_000 + i, 5.0 + (i % 6) / 2, "estimate",
                      False, 5.0 * i, 5.0, (i % 8) * 3, (stage_sample(stage_id, i, link),))


def write_incident(db: Database, start_ms: int, seconds: int = 600, dev: str = DEV, edge: str = EDGE,
                   save_nodes: bool = True) -> Incident:
    """Write the incident through the recorder (nodes, samples, events) and wait until it is committed.

    `dev` and `edge` are the node ids (a live console's own nodes, with `save_nodes=False`)."""
    t1, t2, t3 = start_ms + 120_500, start_ms + 300_500, start_ms + 200_250
    for node_id, name, tier in ((dev, "dev-1", "device"), (edge, "edge-1", "edge")):
        if save_nodes:
            db.save_node(NodeSnapshot(node_id, node_id, name, tier, "127.0.0.1:1", state=NodeState.ONLINE))
    samples = []
    for i in range(seconds):
        ts = start_ms + i * 1000
        link = "down" if t1 <= ts < t2 else "up"
        samples.append(node_sample(dev, "det", i, ts, link))
        samples.append(node_sample(edge, "cls", i, ts + 200, "none"))
    db.write_samples(samples)
    events = (
        ConsoleEvent("node_state", "dev-1 is online", Severity.INFO, dev, {"from": "connecting", "to": "online"},
                     start_ms - 6_000),
        ConsoleEvent("node_state", "edge-1 is online", Severity.INFO, edge, {"from": "connecting", "to": "online"},
                     start_ms - 5_000),
        ConsoleEvent("node_state", "edge-1 is offline: unavailable: connection refused", Severity.WARNING, edge,
                     {"from": "online", "to": "offline"}, t1),
        ConsoleEvent("process_exit", "edge-1 exited with code -9", Severity.ERROR, edge, {}, t3),
        ConsoleEvent("node_state", "edge-1 is online", Severity.INFO, edge, {"from": "offline", "to": "online"}, t2),
        ConsoleEvent("deploy", "ship-finder deployed", Severity.INFO, "", {}, start_ms + 30_000),
    )
    for event in events:
        db.add_event(event)
    db.flush().result(30)
    return Incident(start_ms, seconds, t1, t2, t3, tuple(samples), tuple(sorted(events, key=lambda e: e.ts_ms)))
