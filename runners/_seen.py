"""Exactly-once escalations at the receiver, without ever answering from the wrong cache entry.

A forwarder tags every escalated row with an id (runners._forward.ROW_IDS) so that a row re-sent after a
timeout is answered from the receiver's memory instead of being run and counted twice. Such a cached
answer is correct only if it belongs to *this* stage version and to *these* input bytes, so:

* the cache lives on one Stage object: a new version, a policy change or a restart starts empty;
* each entry keeps a digest of the row's inputs; a known id with other bytes is run fresh (and replaces
  the entry), so even a reused id can never return another input's answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

import numpy as np

log = logging.getLogger("tierdeck.agent")

SEEN_ROWS_MAX = 20_000  # per stage version: re-sent escalated rows answered from here (~0.7 KB each)


def row_digests(feeds: dict[str, np.ndarray]) -> list[bytes]:
    """A 16-byte digest per row over every input tensor's bytes (names, dtypes and shapes included)."""
    rows = next(iter(feeds.values())).shape[0]
    hashers = [hashlib.blake2b(digest_size=16) for _ in range(rows)]
    for name, array in feeds.items():
        head = f"{name}|{array.dtype.str}|{array.shape[1:]}".encode()
        for r, h in enumerate(hashers):
            h.update(head)
            if array.dtype == object:
                for item in array[r].reshape(-1):
                    raw = item if isinstance(item, bytes) else str(item).encode()
                    h.update(len(raw).to_bytes(4, "little"))
                    h.update(raw)
            else:
                h.update(np.ascontiguousarray(array[r]).tobytes())
    return [h.digest() for h in hashers]


class SeenRows:
    """Answers this stage version gave to escalated rows, by row id, checked against the row's input digest."""

    def __init__(self, limit: int = SEEN_ROWS_MAX) -> None:
        self.limit = limit
        self._rows: OrderedDict[str, tuple[bytes, dict[str, np.ndarray], Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def fresh(self, row_ids: list[str], digests: list[bytes]) -> list[int]:
        """Indexes of the rows that must run: unknown ids, and known ids whose inputs differ."""
        out: list[int] = []
        for i, (rid, digest) in enumerate(zip(row_ids, digests, strict=True)):
            known = self._rows.get(rid)
            if known is None:
                out.append(i)
            elif known[0] != digest:
                log.warning("row id %s came back with other inputs: run fresh, not answered from memory", rid)
                out.append(i)
        return out

    def remember(self, row_ids: list[str], digests: list[bytes], fresh: list[int],
                 named: dict[str, np.ndarray], decisions: list[Any] | None) -> None:
        """Keep the answers of the rows that just ran (fresh[j] is row j of `named`)."""
        for j, i in enumerate(fresh):
            self._rows[row_ids[i]] = (digests[i], {n: a[j:j + 1].copy() for n, a in named.items()},
                                      decisions[j] if decisions else None)
            self._rows.move_to_end(row_ids[i])
        while len(self._rows) > self.limit:
            self._rows.popitem(last=False)

    def answers(self, row_ids: list[str]) -> tuple[dict[str, np.ndarray], list[Any] | None]:
        """Every row's answer, in order (all of them must be known: call after `remember`)."""
        rows = [self._rows[rid] for rid in row_ids]
        merged = {n: np.concatenate([r[1][n] for r in rows]) for n in rows[0][1]}
        decisions = [r[2] for r in rows]
        if any(d is None for d in decisions):
            return merged, None
        return merged, decisions
