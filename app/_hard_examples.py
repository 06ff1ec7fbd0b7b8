"""Hard examples in the console: entries pulled from the nodes' ledgers, joined into rows, filtered, exported.

Each node records what it saw of a row (runners/_ledger.py): the device its detector's scores and the answer that
came back, the edge the same row under the id the device sent it with (`origin_row_id`), its classifier's scores
and, when it sent the row on, the id it used (`row_id`). `join` follows those ids into one `HardRow` per input row,
lowest tier first, so the gallery shows every stage's scores side by side. `write_dataset` writes a selection as
a dataset: `OUT.npz` (one array per input, stacked, plus `labels`) and `OUT.json` (labels, every stage's scores,
provenance); `tools/hard_examples.load_hard_examples` (used by tools/train_models.py) reads it back.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runners._proto import tierdeck_control_pb2 as ctl
from runners._store import write_atomic

FORMAT = "tierdeck.hard_examples"
FORMAT_VERSION = 1
TIME_WINDOWS = {"last 15 min": 15 * 60, "last hour": 3600, "last 24 h": 86400, "any time": 0}


@dataclass(frozen=True)
class NodeEntry:
    """One node's ledger entry for a row."""

    node_key: str
    node_name: str
    tier: str
    example: ctl.HardExample = field(compare=False)

    @property
    def key(self) -> tuple[str, int]:
        """(node key, entry seq): names the entry for GetHardExample."""
        return self.node_key, int(self.example.seq)

    def scores(self) -> dict[str, float]:
        """This stage's scores by class."""
        labels = list(self.example.score_labels)
        return {labels[i] if i < len(labels) else str(i): float(v) for i, v in enumerate(self.example.scores)}

    def as_json(self) -> dict[str, Any]:
        """What the manifest says about this stage's view of the row."""
        e = self.example
        return {"node": self.node_name, "tier": self.tier, "stage": e.stage_id, "stage_version": e.stage_version,
                "seq": e.seq, "row_id": e.row_id, "origin_row_id": e.origin_row_id, "kind": e.kind,
                "time_unix_ms": e.created_unix_ms, "label": e.stage_label,
                "confidence": round(float(e.stage_confidence), 6),
                "scores": {k: round(v, 6) for k, v in self.scores().items()},
                "hop_label": e.hop_label, "hop_stage": e.hop_stage, "hop_confidence": round(float(e.hop_confidence), 6)}


@dataclass(frozen=True)
class HardRow:
    """One input row as the whole cascade saw it: the node entries along its way, lowest tier first."""

    entries: tuple[NodeEntry, ...]

    @property
    def root(self) -> NodeEntry:
        """The first stage that recorded the row (its inputs are the row's inputs)."""
        return self.entries[0]

    @property
    def key(self) -> str:
        """Unique in a listing: the first entry's node and seq."""
        return f"{self.root.node_key}#{self.root.example.seq}"

    @property
    def created_ms(self) -> int:
        """When the first stage recorded it."""
        return int(self.root.example.created_unix_ms)

    @property
    def kind(self) -> str:
        """escalated | shadow_disagreed (the first stage's)."""
        return self.root.example.kind

    @property
    def link(self) -> str:
        """The link the row crossed from its first stage: 'detector → classifier'."""
        root = self.root.example
        above = self.entries[1].example.stage_id if len(self.entries) > 1 else root.hop_stage or "?"
        return f"{root.stage_id} → {above}"

    @property
    def final(self) -> NodeEntry:
        """The entry that holds the answer the caller got (the first stage's view of it)."""
        return self.root

    @property
    def label(self) -> str:
        """The final answer's class: the dataset's label."""
        return self.root.example.final_label

    def disagreed_at(self, i: int) -> bool:
        """Did the answer that came back from above contradict entry i's own? Different classes count when one
        side knows the other's class: a detector's 'vessel' called 'water', or its 'water' called 'cargo', is a
        disagreement; its 'vessel' called 'cargo' is a refinement (the detector has no 'cargo', the classifier no
        'vessel'). Shadow rows are recorded because they disagreed."""
        e = self.entries[i].example
        if e.kind == "shadow_disagreed" and i == 0:
            return True
        if not e.hop_label or e.hop_label == e.stage_label:
            return False
        if not e.score_labels or e.hop_label in e.score_labels:
            return True
        above = self.entries[i + 1].example if i + 1 < len(self.entries) else None
        return above is not None and e.stage_label in above.score_labels

    @property
    def disagreed(self) -> bool:
        """Some stage's own answer was contradicted by the answer that came back from above it (disagreed_at)."""
        return any(self.disagreed_at(i) for i in range(len(self.entries)))

    @property
    def classes(self) -> frozenset[str]:
        """Every class any stage answered for the row."""
        out = set()
        for e in self.entries:
            out |= {e.example.stage_label, e.example.hop_label, e.example.final_label}
        return frozenset(x for x in out if x)

    def as_json(self) -> dict[str, Any]:
        """The manifest's record of the row (without the tensors)."""
        root = self.root.example
        return {"key": self.key, "label": root.final_label, "label_stage": root.final_stage,
                "confidence": round(float(root.final_confidence), 6), "final": root.final, "kind": root.kind,
                "link": self.link, "disagreed": self.disagreed, "time_unix_ms": root.created_unix_ms,
                "stages": [e.as_json() for e in self.entries]}


@dataclass
class HardExamplePull:
    """One pull from the fleet: every node's entries, its ledger's size and counters, and who could not answer."""

    entries: list[NodeEntry] = field(default_factory=list)
    ledgers: dict[str, ctl.HardExampleLedger] = field(default_factory=dict)   # by node name
    totals: dict[str, int] = field(default_factory=dict)                      # entries matching, by node name
    errors: dict[str, str] = field(default_factory=dict)                      # by node name
    fetched: dict[str, int] = field(default_factory=dict)                     # entries pulled, by node key
    oldest: dict[str, int] = field(default_factory=dict)                      # smallest seq pulled, by node key
    more: dict[str, bool] = field(default_factory=dict)                       # older entries left, by node key
    matching: dict[str, int] = field(default_factory=dict)                    # entries matching, by node key

    def rows(self) -> list[HardRow]:
        """The entries joined into rows, newest first."""
        return join(self.entries)

    def older(self) -> dict[str, int]:
        """Where the next page starts, per node that has older entries: {node key: before_seq}."""
        return {key: self.oldest[key] for key, left in self.more.items() if left and key in self.oldest}

    def merge(self, page: HardExamplePull) -> HardExamplePull:
        """This pull with an older page added (counters and totals from the newer of the two)."""
        out = HardExamplePull(self.entries + page.entries, {**page.ledgers, **self.ledgers},
                              {**page.totals, **self.totals}, {**self.errors, **page.errors},
                              dict(self.fetched), dict(self.oldest), dict(self.more), dict(self.matching))
        for key, count in page.fetched.items():
            out.fetched[key] = out.fetched.get(key, 0) + count
            out.more[key] = count > 0 and page.matching.get(key, 0) > out.fetched[key]
        out.oldest.update(page.oldest)
        return out


@dataclass(frozen=True)
class RowFilter:
    """The gallery's filters; empty fields match everything."""

    link: str = ""
    label: str = ""
    disagreed_only: bool = False
    kind: str = ""
    since_ms: int = 0
    until_ms: int = 0

    def matches(self, row: HardRow) -> bool:
        """Does the row pass every filter that is set?"""
        return ((not self.link or row.link == self.link) and (not self.label or self.label in row.classes)
                and (not self.disagreed_only or row.disagreed) and (not self.kind or row.kind == self.kind)
                and (not self.since_ms or row.created_ms >= self.since_ms)
                and (not self.until_ms or row.created_ms <= self.until_ms))

    @classmethod
    def window(cls, seconds: float, now_s: float | None = None, **others: Any) -> RowFilter:
        """A filter for the last `seconds` (0 = any time)."""
        since = int(((now_s if now_s is not None else time.time()) - seconds) * 1000) if seconds else 0
        return cls(since_ms=since, **others)


def join(entries: Iterable[NodeEntry]) -> list[HardRow]:
    """Follow row ids across nodes: each entry that arrived under an id another entry sent joins that row.
    Rows come newest first; an entry whose lower entry is gone (evicted, not pulled) starts a row of its own."""
    entries = list(entries)
    sent = {e.example.row_id: e for e in entries if e.example.row_id}
    arrived: dict[str, NodeEntry] = {}
    for e in entries:
        if e.example.origin_row_id:
            arrived.setdefault(e.example.origin_row_id, e)
    rows = []
    for e in entries:
        if e.example.origin_row_id and e.example.origin_row_id in sent:
            continue  # not a first stage: it joins the row that starts below it
        chain = [e]
        while chain[-1].example.row_id in arrived and len(chain) < 16:
            chain.append(arrived[chain[-1].example.row_id])
        rows.append(HardRow(tuple(chain)))
    rows.sort(key=lambda r: (r.created_ms, r.root.node_key, r.root.example.seq), reverse=True)
    return rows


def tensors_of(example: ctl.HardExample) -> dict[str, np.ndarray]:
    """The input tensors of an entry read with GetHardExample."""
    return {t.name: np.frombuffer(t.data, dtype=np.dtype(t.dtype)).reshape(tuple(t.shape)).copy()
            for t in example.inputs}


@dataclass(frozen=True)
class DatasetWritten:
    """What write_dataset wrote."""

    npz: Path
    manifest: Path
    rows: int
    skipped: tuple[str, ...]  # row keys left out: their entry is gone from the node, or shapes differ


def dataset_paths(out: Path | str) -> tuple[Path, Path]:
    """OUT.npz and OUT.json for an output named with or without the .npz suffix."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix == ".npz" else out
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


def write_dataset(out: Path | str, rows: Sequence[HardRow], tensors: dict[tuple[str, int], dict[str, np.ndarray]],
                  source: str = "") -> DatasetWritten:
    """Write the rows whose first-stage tensors are known as OUT.npz + OUT.json (blocking: run in an executor).

    The npz holds one array per input name, stacked over rows (`[rows, ...]`), and `labels` (the final answer's
    class, the dataset's label); the manifest holds, per row in the same order, the label, every stage's answer and
    scores, the link, the kind and the provenance (node, stage, version, ledger seq, row ids, time)."""
    npz_path, manifest_path = dataset_paths(out)
    kept: list[HardRow] = []
    skipped: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {}
    layout: list[tuple[str, str, tuple[int, ...]]] | None = None
    for row in rows:
        found = tensors.get(row.root.key)
        if not found:
            skipped.append(row.key)
            continue
        mine = [(name, a.dtype.str, a.shape) for name, a in found.items()]
        if layout is None:
            layout = mine
        elif mine != layout:  # rows of different stages with different inputs cannot share one array
            skipped.append(row.key)
            continue
        kept.append(row)
        for name, a in found.items():
            arrays.setdefault(name, []).append(a)
    if not kept:
        raise ValueError("no selected row has its inputs on its node any more (evicted or expired): nothing to export")
    stacked = {name: np.stack(parts) for name, parts in arrays.items()}
    labels = np.array([r.label for r in kept], dtype=str)
    reserved = {"labels"} & set(stacked)
    if reserved:
        raise ValueError(f"an input named {sorted(reserved)} clashes with the dataset's labels array")
    buffer = io.BytesIO()
    named: dict[str, Any] = {"labels": labels, **stacked}
    np.savez_compressed(buffer, **named)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "created_unix_ms": int(time.time() * 1000), "source": source,
        "npz": npz_path.name, "rows": len(kept),
        "inputs": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in layout or []],
        "classes": sorted(set(labels.tolist())),
        "examples": [{"index": i, **row.as_json()} for i, row in enumerate(kept)],
        "skipped": skipped,
    }
    write_atomic(npz_path, buffer.getvalue(), make_parents=False)
    write_atomic(manifest_path, json.dumps(manifest, indent=1).encode(), make_parents=False)
    return DatasetWritten(npz_path, manifest_path, len(kept), tuple(skipped))
