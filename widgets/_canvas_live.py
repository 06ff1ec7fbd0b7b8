"""The live overlay of the pipeline canvas: sparklines and rates on node cards, live escalation on links.

A part of `PipelineCanvas` (widgets/_canvas.py): it reads the telemetry ring buffers at most twice a
second, only while the canvas is shown, and tells the items what to draw.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Slot

from app._miss import describe_link, link_label, miss_estimate

SPARK_S = 60.0   # a card's sparkline: the last minute


class CanvasLiveOverlay:
    """Live figures on the canvas's items (a mixin of `PipelineCanvas`)."""

    @Slot()
    def _frame(self) -> None:
        self._refresh_live()

    def set_live_badges(self, on: bool) -> None:
        """Mark every node card LIVE (on while the other views replay history: the cards never do)."""
        self.live_badges = on
        for card in self.cards.values():
            if card.live_badge != on:
                card.live_badge = on
                card.update()

    def _refresh_live(self, force: bool = False) -> None:
        """Sparklines and live rates from the ring buffers, at most twice a second and only when shown."""
        import time

        if self.telemetry is None or (not force and not self.isVisible()):
            return
        now = time.monotonic()
        if not force and now - self._last_live < self._live_every:
            return
        telemetry = self.telemetry
        # Nothing arrived and the sparklines (the last SPARK_S seconds) have aged out: nothing would change.
        seen = (telemetry.samples, len(self.cards), len(self.links))
        if seen != self._live_seen:
            self._live_seen, self._live_moved = seen, now
        elif not force and now - self._live_moved > SPARK_S + 1:
            return
        self._last_live = now
        self.live_refreshes += 1
        since = time.time() - SPARK_S
        for key, card in self.cards.items():
            node = self.fleet.node(key)
            if node is None or not node.node_id:
                continue
            total = None
            for st in node.stages:
                ring = telemetry.stage_series(node.node_id, st.stage_id)
                if ring is None or not len(ring):
                    continue
                v = ring.series("inferences_per_s", since)[1][-int(SPARK_S):]
                if len(v) == 0:
                    continue
                if total is None:
                    total = v
                else:   # stages of one node sample together: align on the newest samples
                    n = min(len(total), len(v))
                    total = total[-n:] + v[-n:]
            latest = telemetry.latest(node.node_id)
            parts = []
            if total is not None and len(total):
                parts.append(f"{total[-1]:,.0f} inf/s")
                card.spark = [float(x) for x in total]
            if latest is not None:
                parts.append(f"{latest.power_watts:.1f} W{' est.' if not latest.power_measured else ''}")
            card.live = " · ".join(parts)
            card.update()
        for stage_id, link in self.links.items():
            live = self.live_rate_text(stage_id)
            missed = self.live_miss_text(stage_id)
            if live != link.view.live or missed != link.view.missed or force:
                link.view = replace(link.view, live=live, missed=missed)
                sentence = self.miss_sentence(stage_id)
                link.setToolTip(f"{stage_id} escalates when {self.rule_text(stage_id)}\n"
                                f"{live or 'not deployed: no live rate yet'}\n"
                                + (f"{sentence}\n" if sentence else "")
                                + "Double-click or F2 edits the threshold; the what-if plot prices a new one.")
                link.update()

    def live_rate_text(self, stage_id: str) -> str:
        """'live 12.3 % (41/s) on 2 nodes' from the latest samples of the nodes running the stage."""
        if self.telemetry is None:
            return ""
        inferred = escalated = 0.0
        nodes = 0
        for node_id, sid in self.telemetry.stage_keys():
            if sid != stage_id:
                continue
            ring = self.telemetry.stage_series(node_id, sid)
            if ring is None or not len(ring):
                continue
            inferred += ring.last("inferences_per_s") or 0.0
            escalated += ring.last("escalated_per_s") or 0.0
            nodes += 1
        if not nodes:
            return ""
        rate = escalated / inferred if inferred else 0.0
        return f"live {rate * 100:.1f} % · {escalated:,.1f}/s"

    def live_miss_text(self, stage_id: str) -> str:
        """'missed ≈ 0.8 % (0.3–1.9)': the link's shadow estimate ('' before a shadow row is answered)."""
        if self.telemetry is None:
            return ""
        return link_label(miss_estimate(self.telemetry.shadow_counts(stage_id)))

    def miss_sentence(self, stage_id: str) -> str:
        """'detector → classifier: settles 63.5 %, of which an estimated 0.8 % (0.3–1.9 %) are vessels …' ('' when
        the link has no answered shadow rows)."""
        if self.telemetry is None:
            return ""
        counts = self.telemetry.shadow_counts(stage_id)
        estimate = miss_estimate(counts)
        if not estimate.known:
            return ""
        inferred, escalated = self._stage_totals(stage_id)
        ids = [s.id for s in self.pipeline.stages()]
        after = ids[ids.index(stage_id) + 1] if stage_id in ids and ids.index(stage_id) + 1 < len(ids) else "next tier"
        try:
            class_in = tuple(self.pipeline.stage(stage_id).rule.class_in)
        except KeyError:
            class_in = ()
        settles = 1.0 - escalated / inferred if inferred else 0.0
        top = sorted(counts.pairs.items(), key=lambda kv: -kv[1])[:4]
        pairs = "; ".join(f"{settled} → {answered}: {n}" for (settled, answered), n in top)
        return describe_link(stage_id, after, settles, estimate, class_in) + (f" ({pairs})" if pairs else "")

    def _stage_totals(self, stage_id: str) -> tuple[float, float]:
        """(inferences, escalated) of the stage since its nodes started, from their latest samples."""
        inferred = escalated = 0.0
        assert self.telemetry is not None
        for node_id in {n for n, sid in self.telemetry.stage_keys() if sid == stage_id}:
            sample = self.telemetry.latest(node_id)
            for st in sample.stages if sample is not None else ():
                if st.stage_id == stage_id:
                    inferred += st.inferences_total
                    escalated += st.escalated_total
        return inferred, escalated
