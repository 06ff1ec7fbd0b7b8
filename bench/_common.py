"""Shared helpers for the benchmark scripts: start agents, print tables, write JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Agent:
    """A `tierdeck-node` process started for a benchmark (no mDNS, loopback, insecure)."""

    def __init__(self, data_dir: Path, *args: str, name: str = "bench", tier: str = "edge") -> None:
        cmd = [sys.executable, "-m", "runners.agent", "--name", name, "--tier", tier, "--listen", "127.0.0.1:0",
               "--data-dir", str(data_dir), "--insecure", "--no-mdns", "--log-level", "WARNING", *args]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()  # type: ignore[arg-type]
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("agent did not start:\n" + "".join(self.stderr))
        info = json.loads(line)
        self.address: str = info["address"]
        self.node_id: str = info["node_id"]
        self.pid = self.process.pid

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print and return a Markdown table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def write_json(path: str | None, payload: dict[str, object]) -> None:
    """Write the results when --json was given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")
