"""Telemetry insert path: raw `executemany` (what app/_db.py uses) against sqlite-utils' `insert_all`.

    python bench/db_insert.py [--rows 50000] [--batch 500] [--json OUT]

Both write the same stage rows into a fresh console database (created by app/_db.py's schema, WAL,
synchronous=NORMAL) in transactions of `--batch` rows, as the writer thread batches. Prints rows/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app._db import _INSERT_STAGE, _STAGE_ROW, open_database
from bench._common import print_table, write_json


def _rows(n: int) -> list[tuple[Any, ...]]:
    row = tuple(1 if i < 5 else (0.5 if i % 3 else i) for i in range(len(_STAGE_ROW)))
    return [(1, 1, i, 1_000 + i, "s1", *row[5:]) for i in range(n)]


def _executemany(path: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    db = open_database(path)
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        db.execute("BEGIN")
        db.conn.executemany(_INSERT_STAGE, rows[i:i + batch])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.conn.close()
    return elapsed


def _insert_all(path: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    db = open_database(path)
    dicts = [dict(zip(_STAGE_ROW, r, strict=True)) for r in rows]
    table = db.table("telemetry")
    start = time.perf_counter()
    for i in range(0, len(dicts), batch):
        table.insert_all(dicts[i:i + batch], batch_size=batch)  # one transaction per call
    elapsed = time.perf_counter() - start
    db.conn.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args()
    rows = _rows(args.rows)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in (("executemany", _executemany), ("sqlite-utils insert_all", _insert_all)):
            elapsed = fn(Path(tmp) / f"{name.split()[0]}.sqlite", rows, args.batch)
            results[name] = {"seconds": elapsed, "rows_per_s": args.rows / elapsed}
    print_table(["path", "rows", "batch", "seconds", "rows/s"],
                [[k, args.rows, args.batch, v["seconds"], v["rows_per_s"]] for k, v in results.items()])
    write_json(args.json, {"rows": args.rows, "batch": args.batch, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
