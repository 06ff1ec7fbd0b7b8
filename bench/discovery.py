"""Discovery latency: agent process start → browser's `added`, graceful stop → `removed`.

    python bench/discovery.py [--runs 10] [--modes loopback,netns] [--json OUT]

Each run starts a fresh `tierdeck-node` (new data dir, so a new node id) while a browser
(`tierdeck nodes --watch --json`) is already running, and times, from the moment before the agent
process is spawned: its `listening` line, and the browser's `added` event for its node id; then from
the moment SIGTERM is sent: the browser's `removed` event. `loopback` binds everything to 127.0.0.1;
`netns` puts the browser and the agent on two hosts (network namespaces, root only) joined by a bridge,
over real multicast. Target: found ≤ 2 s median.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from netns import Agent, Host, NetLab, NetnsUnavailable, Seen, Watcher  # noqa: E402

from bench._common import print_table, write_json  # noqa: E402

TARGET_FOUND_MEDIAN_S = 2.0


def _stats(values: list[float]) -> dict[str, float]:
    """Median and p95 (inclusive method) of a sample, in seconds."""
    if len(values) == 1:
        return {"median": values[0], "p95": values[0], "min": values[0], "max": values[0]}
    return {
        "median": statistics.median(values),
        "p95": statistics.quantiles(values, n=20, method="inclusive")[18],
        "min": min(values),
        "max": max(values),
    }


@contextmanager
def _setting(mode: str) -> Iterator[tuple[Watcher, Host | None]]:
    """A running watcher and where agents go: loopback (None) or a second namespace host."""
    if mode == "loopback":
        watcher = Watcher(["127.0.0.1"])
        try:
            watcher.wait_browsing()
            yield watcher, None
        finally:
            watcher.close()
        return
    with NetLab() as lab:
        browser_host, agent_host = lab.add_host(), lab.add_host()
        watcher = Watcher([browser_host.address], host=browser_host)
        try:
            watcher.wait_browsing()
            yield watcher, agent_host
        finally:
            watcher.close()


def _for(node_id: str, kind: str) -> Callable[[Seen], bool]:
    """Predicate on watcher events: `kind` for that node id."""
    return lambda seen: seen.kind == kind and seen.node.get("id") == node_id


def run_mode(mode: str, runs: int, work: Path) -> list[dict[str, float]]:
    """Time `runs` agent start/stop cycles in one setting."""
    samples: list[dict[str, float]] = []
    suffix = secrets.token_hex(2)
    with _setting(mode) as (watcher, host):
        for index in range(runs):
            name = f"bench-{mode}-{suffix}-{index}"
            listen = f"{host.address}:0" if host else "127.0.0.1:0"
            interfaces = [host.address] if host else ["127.0.0.1"]
            mark = len(watcher.events)
            agent = Agent(name, "edge", work / name, listen=listen, mdns_interfaces=interfaces, host=host,
                          log_dir=work)
            try:
                agent.wait_listening()
                found = watcher.wait_for(_for(agent.node_id, "added"), since=mark)
                mark = len(watcher.events)
                stop_sent = time.monotonic()
                agent.stop()
                exited = time.monotonic()
                removed = watcher.wait_for(_for(agent.node_id, "removed"), since=mark)
            except BaseException:
                agent.kill()
                raise
            assert agent.listening_at is not None
            sample = {
                "listening_s": agent.listening_at - agent.started,
                "found_s": found.at - agent.started,
                "removed_s": removed.at - stop_sent,
                "exit_s": exited - stop_sent,
            }
            samples.append(sample)
            print(f"  {mode} run {index + 1}/{runs}: " + ", ".join(f"{k} {v:.3f}" for k, v in sample.items()),
                  file=sys.stderr, flush=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="start/stop cycles per mode (default 10)")
    parser.add_argument("--modes", default="loopback,netns", help="comma-separated: loopback, netns")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("loopback", "netns") for m in modes) or args.runs < 1:
        parser.error("modes are loopback and netns; runs >= 1")

    results: dict[str, object] = {}
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="tierdeck-bench-discovery-") as tmp:
        for mode in modes:
            try:
                samples = run_mode(mode, args.runs, Path(tmp))
            except NetnsUnavailable as exc:
                print(f"skipping {mode}: {exc}", file=sys.stderr)
                results[mode] = {"skipped": str(exc)}
                continue
            summary = {key: _stats([s[key] for s in samples]) for key in samples[0]}
            results[mode] = {"runs": len(samples), "summary": summary, "samples": samples}
            rows.append([mode, len(samples), summary["listening_s"]["median"], summary["found_s"]["median"],
                         summary["found_s"]["p95"], summary["removed_s"]["median"], summary["removed_s"]["p95"]])

    print_table(["mode", "runs", "listening median s", "found median s", "found p95 s", "removed median s",
                 "removed p95 s"], rows)
    verdicts = {mode: results[mode]["summary"]["found_s"]["median"] <= TARGET_FOUND_MEDIAN_S  # type: ignore[index]
                for mode, *_ in rows}
    for mode, ok in verdicts.items():
        print(f"{mode}: found median {'meets' if ok else 'MISSES'} the {TARGET_FOUND_MEDIAN_S:.0f} s target")
    write_json(args.json, {"benchmark": "discovery", "target_found_median_s": TARGET_FOUND_MEDIAN_S,
                           "results": results, "meets_target": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
