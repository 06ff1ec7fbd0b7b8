"""The fleet: every node the console knows, with one live connection per node (runs on the I/O loop).

Nodes come from mDNS (discovery.Browser), a fleet file and manual add; they are keyed by node id.
A fleet-file or manual entry is keyed `addr:HOST:PORT` until it answers GetNodeInfo, then re-keyed
to its node id (a REKEYED event); if that id is already known the two entries become one.

State machine per node (liveness comes from gRPC, never from mDNS TTLs):

    discovered --connect--> connecting --first telemetry sample--> online
    online <--> degraded    (telemetry overdue, a stage not SERVING, a next hop down; reasons say which)
    any --RPC fails and health check fails--> offline --retry with backoff, first sample--> online

One task per node: GetNodeInfo, ListStages, stage health, overall health, then WatchTelemetry; a
watchdog degrades the node when samples are overdue (3 intervals, at least 2 s) and, if the health
check then fails, ends the session: the node goes offline and reconnects with exponential backoff
(0.25 s doubling to 10 s). Each attempt after going offline opens a fresh channel, so grpc's own
channel backoff (up to 120 s) never delays a node's return.

Everything here runs on the console's I/O loop; listeners are called on that loop and must not
block (the Qt adapter queues to the GUI thread; the database enqueues to its writer).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from app._records import (
    ConsoleEvent,
    FleetEvent,
    FleetEventKind,
    NodeInfoSummary,
    NodeSample,
    NodeSnapshot,
    NodeState,
    Severity,
    StageSnapshot,
    now_ms,
)
from app._telemetry import Position, SampleAcceptor
from discovery import NodeAdvert, NodeEvent, address_key, format_address, parse_address
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import ClientTLS, NodeClient

log = logging.getLogger(f"tierdeck.{__name__}")

FleetCallback = Callable[[FleetEvent], None]
SampleCallback = Callable[[NodeSample], None]
ConsoleEventCallback = Callable[[ConsoleEvent], None]

# A fresh channel per attempt; keep grpc's own reconnect backoff short in between.
CHANNEL_OPTIONS: list[tuple[str, object]] = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


PROCESS_REASON = "process"  # the reason a supervisor (the demo) gives for a node: its process or input died


class _SessionEnded(Exception):
    """The node's session ended for a reason worth telling the operator."""


class _Merged(Exception):
    """This entry turned out to be a node already known under its id; the entry is gone."""


@dataclass
class _Node:
    key: str
    node_id: str
    name: str
    tier: str
    address: str
    source: str
    state: NodeState = NodeState.DISCOVERED
    state_since_ms: int = field(default_factory=now_ms)
    reasons: dict[str, str] = field(default_factory=dict)
    info: NodeInfoSummary | None = None
    stages: tuple[StageSnapshot, ...] = ()
    last_sample_ms: int = 0
    last_sample_at: float = 0.0
    boot_id: str = ""
    task: asyncio.Task[None] | None = None
    client: NodeClient | None = None
    forgotten: bool = False
    attempts: int = 0
    first_sample: bool = False
    stage_ids: frozenset[str] = frozenset()
    link_down: frozenset[str] = frozenset()
    refreshing: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    endpoint: tuple[str, str, str, ClientTLS | None] | None = None  # (model, version, stage id, TLS) of an engine
    revocations_pushed: frozenset[int] | None = None
    pgen: str = ""  # the pairing-code generation it advertises while unenrolled (TXT `pgen`)

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(
            key=self.key, node_id=self.node_id, name=self.name, tier=self.tier, address=self.address,
            source=self.source, state=self.state, state_since_ms=self.state_since_ms,
            reasons=tuple(self.reasons[k] for k in sorted(self.reasons)), info=self.info, stages=self.stages,
            last_sample_ms=self.last_sample_ms, boot_id=self.boot_id,
        )


class Fleet:
    """The nodes the console knows and a live connection to each. Create and use on the I/O loop."""

    def __init__(
        self,
        *,
        telemetry_interval_s: float = 1.0,
        interfaces: Iterable[str] = (),
        fleet_file: Path | str | None = None,
        connect_timeout_s: float = 3.0,
        backoff_s: tuple[float, float] = (0.25, 10.0),
        overdue_factor: float = 3.0,
        on_event: ConsoleEventCallback | None = None,
        tls: ClientTLS | None = None,
        fleet_id: str = "",
        revocations: Callable[[], list[int]] | None = None,
    ) -> None:
        if not 0.1 <= telemetry_interval_s <= 10.0:
            raise ValueError("telemetry_interval_s must be between 0.1 and 10 s (the agent's range)")
        self.telemetry_interval_s = telemetry_interval_s
        self.interfaces = list(interfaces)
        self.fleet_file = Path(fleet_file) if fleet_file is not None else None
        self.connect_timeout_s = connect_timeout_s
        self.backoff_s = backoff_s
        self.overdue_s = max(overdue_factor * telemetry_interval_s, 2.0)
        self._on_event = on_event
        self.tls = tls
        # The fleet's revoked serials (read from the fleet CA, blocking): pushed on every (re)connection, so a
        # node that was away when `fleet revoke` ran gets the list when it is back.
        self._revocations = revocations
        self.fleet_id = fleet_id  # mDNS: only nodes advertising this fleet id (TXT `fleet`); "" = any
        self._nodes: dict[str, _Node] = {}
        self._forgotten: set[str] = set()
        self._subscribers: list[FleetCallback] = []
        self._sample_subscribers: list[SampleCallback] = []
        self._acceptor = SampleAcceptor()
        self._streams = itertools.count()
        self._browser: Any = None
        self._unsubscribe_browser: Callable[[], None] | None = None
        self._changed: asyncio.Event | None = None
        self._started = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self.samples_accepted = 0

    # ----- listeners ------------------------------------------------------------------------------
    def subscribe(self, callback: FleetCallback) -> Callable[[], None]:
        """Call `callback(FleetEvent)` on the loop for every node change; returns the unsubscribe callable."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def subscribe_samples(self, callback: SampleCallback) -> Callable[[], None]:
        """Call `callback(NodeSample)` on the loop for every accepted (non-duplicate) sample."""
        self._sample_subscribers.append(callback)
        return lambda: self._sample_subscribers.remove(callback) if callback in self._sample_subscribers else None

    @property
    def duplicates_dropped(self) -> int:
        """Telemetry samples recognised as duplicates by (boot_id, seq) and not passed on."""
        return self._acceptor.duplicates

    def seed_positions(self, positions: dict[str, Position]) -> None:
        """Continue de-duplication from positions stored in the database (call before `async_start`)."""
        for node_id, position in positions.items():
            self._acceptor.seed(node_id, position)

    # ----- life cycle -----------------------------------------------------------------------------
    async def async_start(self) -> None:
        """Load the fleet file, start mDNS browsing on `interfaces` (if any)."""
        self._changed = asyncio.Event()
        self._started = True
        if self.fleet_file is not None:
            await self.async_load_fleet_file(self.fleet_file)
        if self.interfaces:
            from discovery import Browser

            self._browser = Browser(self.interfaces, fleet_id=self.fleet_id)
            self._unsubscribe_browser = self._browser.subscribe(self._on_discovery)
            await self._browser.async_start()
            for advert in self._browser.nodes().values():
                self._on_discovery(NodeEvent("added", advert))

    async def async_stop(self) -> None:
        """Stop browsing and close every connection."""
        if self._unsubscribe_browser is not None:
            self._unsubscribe_browser()
        if self._browser is not None:
            await self._browser.async_stop()
            self._browser = None
        tasks = [n.task for n in self._nodes.values() if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(n.client.close() for n in self._nodes.values() if n.client is not None),
                             return_exceptions=True)
        self._started = False

    async def async_load_fleet_file(self, path: Path | str) -> list[str]:
        """Add every node of a fleet file (text or JSON, see discovery); returns their keys."""
        from discovery import read_fleet_file

        adverts: list[NodeAdvert] = await asyncio.get_running_loop().run_in_executor(None, read_fleet_file, path)
        return [self.add_address(a.address, a.tier, a.name, source="fleet-file") for a in adverts]

    # ----- the operator's intents -----------------------------------------------------------------
    def add_address(self, address: str, tier: str = "", name: str = "", source: str = "manual") -> str:
        """Add a node by HOST:PORT and start connecting; returns its key (existing key if already known)."""
        host, port = parse_address(address)
        address = format_address(host, port)
        for node in self._nodes.values():
            if node.address == address:
                if node.state == NodeState.OFFLINE:
                    node.wake.set()
                return node.key
        key = address_key(host, port)
        node = _Node(key=key, node_id="", name=name or address, tier=tier, address=address, source=source)
        self._add(node)
        return key

    def add_endpoint(self, address: str, model: str, tier: str, stage_id: str, version: str = "",
                     tls: ClientTLS | None = None) -> str:
        """Watch an engine tierdeck does not run (an endpoint stage's Triton/KServe/MLServer) like a node:
        its readiness, what it says it is, and the model's readiness. Returns its key (`endpoint:HOST:PORT`)."""
        key = f"endpoint:{address}"
        if key in self._nodes:
            return key
        node = _Node(key=key, node_id="", name=f"{stage_id} engine", tier=tier, address=address, source="endpoint")
        node.endpoint = (model, version, stage_id, tls)
        self._add(node)
        return key

    def forget(self, key: str) -> bool:
        """Drop a node and its connection; mDNS re-announcements of it are ignored until it is added again."""
        node = self._nodes.pop(key, None)
        if node is None:
            return False
        node.forgotten = True
        if node.node_id:
            self._forgotten.add(node.node_id)
        self._acceptor.forget(key)
        if node.task is not None:
            node.task.cancel()
        if node.client is not None:
            self._background(node.client.close())
            node.client = None
        self._emit(FleetEvent(FleetEventKind.REMOVED, node.snapshot()))
        self._console_event("node_forgotten", f"{node.name} forgotten by the operator", Severity.INFO, node.node_id)
        return True

    def reconnect(self, key: str) -> bool:
        """Drop the node's connection and connect again now (a new telemetry stream)."""
        node = self._nodes.get(key)
        if node is None:
            return False
        if node.task is not None:
            node.task.cancel()
        node.reasons.pop("alert", None)  # the operator has seen the alert
        node.task = asyncio.ensure_future(self._run(node, delay=0.0))
        return True

    def set_process_note(self, node_id: str, note: str) -> bool:
        """A supervisor's word on why a node's process or its input stopped ("" clears it); False if unknown.

        Kept as one of the node's reasons (so the card and the state say it) until cleared or the node is
        forgotten; it survives the node going offline.
        """
        node = self._nodes.get(node_id)
        if node is None:
            node = next((n for n in self._nodes.values() if n.node_id == node_id), None)
        if node is None:
            return False
        if note:
            node.reasons[PROCESS_REASON] = note
        else:
            node.reasons.pop(PROCESS_REASON, None)
        if node.state in (NodeState.ONLINE, NodeState.DEGRADED):
            self._update_reasons(node)
        else:
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))
        return True

    # ----- queries (loop thread) ------------------------------------------------------------------
    def nodes(self) -> list[NodeSnapshot]:
        """Snapshots of every node, in the order they became known."""
        return [n.snapshot() for n in self._nodes.values()]

    def node(self, key: str) -> NodeSnapshot | None:
        """One node's snapshot, or None."""
        node = self._nodes.get(key)
        return node.snapshot() if node is not None else None

    def client(self, key: str) -> NodeClient | None:
        """The node's live client (loop thread only), or None while it is not connected."""
        node = self._nodes.get(key)
        return node.client if node is not None else None

    async def async_wait_settled(self, timeout: float) -> bool:
        """Wait until no node is discovered/connecting (each is online, degraded or offline); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if all(n.state not in (NodeState.DISCOVERED, NodeState.CONNECTING) for n in self._nodes.values()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._changed is None:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False

    async def async_wait_for(self, predicate: Callable[[list[NodeSnapshot]], bool], timeout: float) -> bool:
        """Wait until `predicate(nodes())` holds (checked on every change); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.nodes()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._changed is None:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def async_refresh(self, key: str) -> NodeSnapshot | None:
        """Read the node's info, stages and stage health again (after a deploy); None if it is not connected."""
        node = self._nodes.get(key)
        if node is None or node.client is None:
            return None
        try:
            await self._read_node(node, node.client)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            log.info("refresh of %s failed: %s", node.name, _rpc_reason(exc))
            return None
        self._update_reasons(node)
        return node.snapshot()

    # ----- discovery ------------------------------------------------------------------------------
    def _on_discovery(self, event: NodeEvent) -> None:
        """mDNS presence: add nodes, follow address changes. Liveness is not taken from here."""
        advert = event.advert
        if event.kind == "removed" or not advert.node_id or advert.node_id in self._forgotten:
            return
        node = self._nodes.get(advert.node_id)
        if node is None:
            node = _Node(key=advert.node_id, node_id=advert.node_id, name=advert.name, tier=advert.tier,
                         address=advert.address, source="mdns", pgen=advert.txt_dict().get("pgen") or "")
            self._add(node)
            return
        connected = node.state in (NodeState.CONNECTING, NodeState.ONLINE, NodeState.DEGRADED)
        if connected and advert.address and advert.address != node.address:
            # A node we are talking to cannot be somewhere else: someone reuses its id.
            self._alert(node, f"an advertisement at {advert.address} claims to be node {node.name} "
                              f"({node.node_id[:12]}), which is connected at {node.address}: ignored "
                              "(spoofed or duplicated node id)", advert.address)
            return
        proven = node.info.fingerprint if node.info is not None else ""
        if advert.fingerprint and proven and advert.fingerprint != proven:
            self._alert(node, f"an advertisement for node {node.name} ({node.node_id[:12]}) carries certificate "
                              f"fingerprint {advert.fingerprint[:16]}…, not the {proven[:16]}… the node proved: "
                              "ignored", advert.address)
            return
        pgen = advert.txt_dict().get("pgen") or ""
        if pgen and pgen != node.pgen:
            if node.pgen:
                self._pairing_code_changed(node, pgen, advert.address)
            node.pgen = pgen
        elif not pgen and node.pgen:  # enrolled now: no code any more
            node.pgen = ""
            if node.reasons.pop("pairing", None) is not None:
                self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))
        if advert.address and advert.address != node.address and node.state == NodeState.OFFLINE:
            node.address = advert.address
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))
            node.wake.set()

    # ----- per-node connection --------------------------------------------------------------------
    def _add(self, node: _Node) -> None:
        self._nodes[node.key] = node
        self._emit(FleetEvent(FleetEventKind.ADDED, node.snapshot()))
        if self._started:
            node.task = asyncio.ensure_future(self._run(node))

    async def _run(self, node: _Node, delay: float = 0.0) -> None:
        """Connect, stream, and reconnect with backoff until the node is forgotten."""
        if delay:
            await asyncio.sleep(delay)
        if node.endpoint is not None:
            await self._watch_endpoint(node)
            return
        while not node.forgotten:
            node.attempts += 1
            try:
                await self._session(node)
                failure = "telemetry stream ended"
            except asyncio.CancelledError:
                raise
            except _Merged:
                return
            except _SessionEnded as exc:
                failure = str(exc)
            except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
                failure = _rpc_reason(exc)
            except Exception as exc:
                log.exception("session with %s failed", node.name)
                failure = f"{type(exc).__name__}: {exc}"
            if node.forgotten:
                return
            alive = False
            if node.client is not None and node.state in (NodeState.ONLINE, NodeState.DEGRADED):
                alive = await node.client.healthy("", timeout=self.connect_timeout_s)
            if alive:
                node.reasons["telemetry"] = f"telemetry stream interrupted ({failure}); reopening"
                self._update_reasons(node)
            else:
                kept = {k: v for k, v in node.reasons.items() if k == PROCESS_REASON}
                self._set_state(node, NodeState.OFFLINE, {"offline": failure, **kept})
                await self._close_client(node)
            low, high = self.backoff_s
            wait = min(high, low * 2 ** min(node.attempts - 1, 16)) if not alive else low
            node.wake.clear()
            try:
                await asyncio.wait_for(node.wake.wait(), wait)
            except TimeoutError:
                pass

    async def _watch_endpoint(self, node: _Node, every_s: float = 2.0) -> None:
        """An engine has no telemetry stream: poll ServerReady/ModelReady (and ServerMetadata once per session)."""
        assert node.endpoint is not None
        model, version, stage_id, tls = node.endpoint
        while not node.forgotten:
            if node.client is None:
                node.client = NodeClient(node.address, tls=tls, external=True, options=CHANNEL_OPTIONS)
                node.info = None
            try:
                if node.info is None:
                    meta = await node.client.inference.ServerMetadata(pb.ServerMetadataRequest(),
                                                                      timeout=self.connect_timeout_s)
                    node.info = NodeInfoSummary(agent_version=f"{meta.name or 'engine'} {meta.version}".strip(),
                                                platform=f"external · {meta.name or 'OIP engine'} {meta.version}",
                                                hostname=node.address, insecure=tls is None)
                ready = (await node.client.inference.ServerReady(pb.ServerReadyRequest(),
                                                                 timeout=self.connect_timeout_s)).ready
                model_ready = (await node.client.inference.ModelReady(
                    pb.ModelReadyRequest(name=model, version=version), timeout=self.connect_timeout_s)).ready
                node.stages = (StageSnapshot(stage_id, version or "engine", serving=model_ready,
                                             state="ready" if model_ready else "not ready"),)
                node.first_sample = True
                reasons = {} if ready and model_ready else {
                    "engine": f"model {model} is not ready" if ready else "the engine is not ready"}
                self._set_state(node, NodeState.DEGRADED if reasons else NodeState.ONLINE, reasons)
            except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
                self._set_state(node, NodeState.OFFLINE, {"offline": _rpc_reason(exc)})
                await self._close_client(node)
            node.wake.clear()
            try:
                await asyncio.wait_for(node.wake.wait(), every_s)
            except TimeoutError:
                pass

    async def _close_client(self, node: _Node) -> None:
        client, node.client = node.client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken channel may raise; nothing to do about it
                log.debug("closing channel of %s failed", node.name, exc_info=True)

    async def _session(self, node: _Node) -> None:
        """One connection: identify, read stages and health, then stream telemetry until it ends."""
        if node.client is None:
            node.client = NodeClient(node.address, tls=self.tls, node_id=node.node_id, options=CHANNEL_OPTIONS)
        client = node.client
        if node.state == NodeState.DISCOVERED:
            self._set_state(node, NodeState.CONNECTING, {})
        await self._read_node(node, client)
        if not await client.healthy("", timeout=self.connect_timeout_s):
            raise _SessionEnded("health check: not SERVING (the agent is shutting down or starting)")
        if self.tls is not None and self._revocations is not None:
            await self._push_revocations(node, client)
        node.first_sample = False
        stream = next(self._streams)
        node.last_sample_at = time.monotonic()
        stream_task = asyncio.ensure_future(self._stream(node, client, stream))
        watchdog = asyncio.ensure_future(self._watchdog(node, client))
        try:
            done, _ = await asyncio.wait({stream_task, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream_task, watchdog):
                task.cancel()
            await asyncio.gather(stream_task, watchdog, return_exceptions=True)
        finished = watchdog if watchdog in done else stream_task
        if not finished.cancelled() and finished.exception() is not None:
            raise finished.exception()  # type: ignore[misc]

    async def _push_revocations(self, node: _Node, client: NodeClient) -> None:
        """Send the fleet's revoked list (idempotent); a failure is reported, the session goes on."""
        assert self._revocations is not None
        try:
            serials = await asyncio.get_running_loop().run_in_executor(None, self._revocations)
            await client.control.UpdateRevocations(
                ctl.UpdateRevocationsRequest(revoked_serials=[str(s) for s in serials]),
                timeout=self.connect_timeout_s)
        except (grpc.aio.AioRpcError, TimeoutError, OSError, ValueError) as exc:
            self._console_event("revocations", f"revocations could not be pushed to {node.name}: "
                                f"{_rpc_reason(exc)}", Severity.WARNING, node.node_id)
            return
        pushed = frozenset(serials)
        if pushed != node.revocations_pushed and pushed:
            self._console_event("revocations", f"{node.name} has the fleet's {len(pushed)} revoked certificate(s)",
                                Severity.INFO, node.node_id, {"serials": sorted(str(s) for s in pushed)})
        node.revocations_pushed = pushed

    async def _read_node(self, node: _Node, client: NodeClient) -> None:
        """GetNodeInfo (identifying the node), ListStages and each stage's health."""
        info = await client.info(timeout=self.connect_timeout_s)
        self._identify(node, info)
        stages = await client.stages(timeout=self.connect_timeout_s)
        serving = await asyncio.gather(*(client.healthy(f"stage/{s.manifest.stage_id}",
                                                        timeout=self.connect_timeout_s) for s in stages))
        snapshots = tuple(StageSnapshot.from_proto(s, ok) for s, ok in zip(stages, serving, strict=True))
        changed = snapshots != node.stages or node.info != NodeInfoSummary.from_proto(info)
        node.info = NodeInfoSummary.from_proto(info)
        node.boot_id = info.boot_id
        node.stages = snapshots
        node.stage_ids = frozenset(s.stage_id for s in snapshots)
        for key in [k for k in node.reasons if k.startswith("stage:")]:
            del node.reasons[key]
        for s in snapshots:
            if not s.serving:
                node.reasons[f"stage:{s.stage_id}"] = f"stage {s.stage_id} is not SERVING"
        if changed:
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))

    def _identify(self, node: _Node, info: ctl.NodeInfo) -> None:
        """Check or learn which node answers at this address; re-key an addr: entry to its node id."""
        if node.node_id and info.node_id != node.node_id:
            self._alert(node, f"{node.address} answers as node {info.node_id[:12]}, not {node.node_id[:12]} as "
                              "advertised: not connected", node.address)
            raise _SessionEnded(f"{node.address} now answers as node {info.node_id[:12]}, "
                                f"not {node.node_id[:12]}")
        changed = (info.name and info.name != node.name) or (info.tier and info.tier != node.tier)
        node.name = info.name or node.name
        node.tier = info.tier or node.tier
        if not node.node_id:
            self._forgotten.discard(info.node_id)
            existing = self._nodes.get(info.node_id)
            old_key = node.key
            if existing is not None and existing is not node:
                # The same node was already known (mDNS, or another address): one entry per node.
                del self._nodes[old_key]
                node.forgotten = True
                if existing.state == NodeState.OFFLINE:
                    existing.address = node.address
                    existing.wake.set()
                self._emit(FleetEvent(FleetEventKind.REMOVED, node.snapshot(), previous_key=old_key))
                self._background(self._close_client(node))
                raise _Merged()
            del self._nodes[old_key]
            node.key = node.node_id = info.node_id
            self._nodes[node.key] = node
            self._acceptor.rename(old_key, node.key)
            self._emit(FleetEvent(FleetEventKind.REKEYED, node.snapshot(), previous_key=old_key))
        elif changed:
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))

    async def _stream(self, node: _Node, client: NodeClient, stream: int) -> None:
        async for msg in client.telemetry(self.telemetry_interval_s):
            self._on_sample(node, msg, stream)

    async def _watchdog(self, node: _Node, client: NodeClient) -> None:
        """Degrade a node whose samples are overdue; end the session when its health check fails too."""
        while True:
            late = time.monotonic() - node.last_sample_at
            if late <= self.overdue_s:
                # Wake when the next sample would be overdue, not every half period: one wake-up per node per
                # period while samples flow, and the silence is noticed when it starts to count.
                await asyncio.sleep(self.overdue_s - late + 0.01)
                continue
            node.reasons["telemetry"] = f"no telemetry for {late:.1f} s"
            self._update_reasons(node)
            if not await client.healthy("", timeout=self.connect_timeout_s):
                raise _SessionEnded(f"no telemetry for {late:.1f} s and the health check failed")
            await asyncio.sleep(self.overdue_s / 2)

    def _on_sample(self, node: _Node, msg: ctl.TelemetrySample, stream: int) -> None:
        node.last_sample_at = time.monotonic()
        sample = self._acceptor.accept(node.key, msg)
        if sample is None:
            return
        self.samples_accepted += 1
        node.last_sample_ms = sample.ts_ms
        reasons_changed = node.reasons.pop("telemetry", None) is not None
        if msg.boot_id != node.boot_id and node.refreshing is None:
            node.refreshing = asyncio.ensure_future(self._refresh_soon(node))
        ids = frozenset(s.stage_id for s in sample.stages)
        if ids != node.stage_ids and node.refreshing is None:
            node.stage_ids = ids
            node.refreshing = asyncio.ensure_future(self._refresh_soon(node))
        down = frozenset(s.stage_id for s in sample.stages if s.link_state == "down")
        if down != node.link_down:
            for key in [k for k in node.reasons if k.startswith("link:")]:
                del node.reasons[key]
            for sid in sorted(down):
                st = sample.stage(sid)
                queued = st.queue_depth if st is not None else 0
                node.reasons[f"link:{sid}"] = f"stage {sid}: next hop unreachable ({queued} escalations queued)"
            node.link_down = down
            reasons_changed = True
        if not node.first_sample or reasons_changed or node.state not in (NodeState.ONLINE, NodeState.DEGRADED):
            node.first_sample = True
            node.attempts = 0
            self._update_reasons(node)
        for callback in self._sample_subscribers:
            try:
                callback(sample)
            except Exception:
                log.exception("telemetry subscriber failed")

    async def _refresh_soon(self, node: _Node) -> None:
        try:
            if node.client is not None:
                await self._read_node(node, node.client)
                self._update_reasons(node)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            log.info("refreshing %s failed: %s", node.name, _rpc_reason(exc))
        finally:
            node.refreshing = None

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a fire-and-forget coroutine, keeping a reference until it is done."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- state and events -----------------------------------------------------------------------
    def _update_reasons(self, node: _Node) -> None:
        """online/degraded from the current reasons (only once the node is connected and streaming)."""
        if not node.first_sample:
            if node.reasons.get("telemetry"):
                self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))
            return
        reasons = {k: v for k, v in node.reasons.items() if k != "offline"}
        target = NodeState.DEGRADED if reasons else NodeState.ONLINE
        self._set_state(node, target, reasons)

    def _set_state(self, node: _Node, state: NodeState, reasons: dict[str, str]) -> None:
        previous, old_reasons = node.state, dict(node.reasons)
        node.reasons = dict(reasons)
        if state == previous and old_reasons == node.reasons:
            return
        if state != previous:
            node.state = state
            node.state_since_ms = now_ms()
            self._emit(FleetEvent(FleetEventKind.STATE_CHANGED, node.snapshot(), previous_state=previous))
            if state in (NodeState.ONLINE, NodeState.DEGRADED, NodeState.OFFLINE):
                severity = Severity.INFO if state == NodeState.ONLINE else Severity.WARNING
                why = f": {'; '.join(node.reasons.values())}" if node.reasons else ""
                self._console_event("node_state", f"{node.name} is {state}{why}", severity, node.node_id,
                                    {"from": str(previous), "to": str(state), "address": node.address})
        else:
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))

    def _pairing_code_changed(self, node: _Node, generation: str, address: str) -> None:
        """An unenrolled node made a new pairing code: the code the operator read is no longer good."""
        message = (f"the pairing code of {node.name} changed (generation {generation}): read the new code on the "
                   "node (its stdout JSON line or its log) before enrolling it")
        self._console_event("pairing_code_changed", message, Severity.WARNING, node.node_id,
                            {"generation": generation, "address": address})
        node.reasons["pairing"] = message
        if node.state in (NodeState.ONLINE, NodeState.DEGRADED):
            self._update_reasons(node)
        else:
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))

    def _alert(self, node: _Node, message: str, address: str) -> None:
        """An identity alert: an error event for the log and a reason on the node until the operator reconnects."""
        log.warning("identity alert: %s", message)
        self._console_event("identity_alert", message, Severity.ERROR, node.node_id, {"address": address})
        node.reasons["alert"] = message
        if node.state in (NodeState.ONLINE, NodeState.DEGRADED):
            self._update_reasons(node)
        else:
            self._emit(FleetEvent(FleetEventKind.CHANGED, node.snapshot()))

    def _emit(self, event: FleetEvent) -> None:
        if self._changed is not None:
            self._changed.set()
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("fleet subscriber failed on %s", event.kind)

    def _console_event(self, kind: str, message: str, severity: Severity, node_id: str = "",
                       detail: dict[str, Any] | None = None) -> None:
        if self._on_event is not None:
            self._on_event(ConsoleEvent(kind, message, severity, node_id, detail or {}))


def _rpc_reason(exc: BaseException) -> str:
    """A failed call in words."""
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").split("\n")[0]
        return f"{exc.code().name.lower()}: {details}" if details else exc.code().name.lower()
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
