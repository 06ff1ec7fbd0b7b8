"""After-action replay: how long reading a window takes and how much memory it holds, by fleet size and window.

    python bench/replay_load.py [--nodes 7,50] [--windows 600,3600] [--json OUT]

Fills a console database through the recorder (app._db.Database: 1 sample a second per node, one stage
each) for the longest window, then per (nodes, window): `load_history` on a read-only connection (what
the reader thread runs; timed untraced), the peak Python memory it took (tracemalloc, a second read), the
arrays it keeps, and the cost
of a replay frame at 60× (seek 6 s on) and of a jump back (rebuilding the rings). Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import sqlite_utils
from replay_support import node_sample

from app._db import Database, connect
from app._replay import ReplayTelemetry, load_history
from bench._common import print_table, write_json


def fill(path: Path, nodes: int, seconds: int, start_ms: int) -> None:
    db = Database(path, batch_rows=5000).start()
    try:
        for i in range(seconds):
            db.write_samples(node_sample(f"node-{n:03d}", "stage", i, start_ms + i * 1000 + n, "up")
                             for n in range(nodes))
        db.flush().result(600)
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="7,50", help="fleet sizes, comma-separated (default 7,50)")
    parser.add_argument("--windows", default="600,3600", help="window lengths in s, comma-separated")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    windows = [int(x) for x in args.windows.split(",")]
    rows = []
    results = []
    start_ms = (int(time.time() * 1000) - 2 * max(windows) * 1000) // 60_000 * 60_000
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in sizes:
            path = Path(tmp) / f"console-{nodes}.sqlite"
            fill(path, nodes, max(windows), start_ms)
            db = sqlite_utils.Database(connect(path, readonly=True))
            for window in windows:
                t0 = time.perf_counter()
                history = load_history(db, start_ms, start_ms + window * 1000)
                load_s = time.perf_counter() - t0
                tracemalloc.start()   # a second read for the memory: tracing slows the first one down severalfold
                load_history(db, start_ms, start_ms + window * 1000)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                kept = sum(t.data.nbytes + t.t.nbytes for t in (*history.node_tracks.values(),
                                                                  *history.stage_tracks.values()))
                view = ReplayTelemetry(history)
                middle = start_ms + window * 500
                view.seek(middle)
                t0 = time.perf_counter()
                for k in range(1, 51):
                    view.seek(middle + k * 6000)
                frame_ms = (time.perf_counter() - t0) / 50 * 1000
                t0 = time.perf_counter()
                view.seek(start_ms + window * 250)
                back_ms = (time.perf_counter() - t0) * 1000
                row = {"nodes": nodes, "window_s": window, "rows": nodes * window * 2, "load_s": load_s,
                       "peak_mib": peak / 2**20, "kept_mib": kept / 2**20, "frame_60x_ms": frame_ms,
                       "jump_back_ms": back_ms}
                results.append(row)
                rows.append([nodes, window, row["rows"], f"{load_s:.2f}", f"{row['peak_mib']:.0f}",
                             f"{row['kept_mib']:.1f}", f"{frame_ms:.2f}", f"{back_ms:.1f}"])
            db.conn.close()
    print_table(["nodes", "window s", "rows read", "load s", "peak MiB", "kept MiB", "60× frame ms",
                 "jump back ms"], rows)
    write_json(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
