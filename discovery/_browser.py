"""The console side: browse `_tierdeck._tcp.local.` and merge it with fleet-file and manual nodes."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from zeroconf import (
    DNSAddress,
    DNSQuestionType,
    IPVersion,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _TYPE_A, _TYPE_SRV, _TYPE_TXT

from ._advertiser import ipv4_only
from ._fleet import read_fleet_file, static_advert
from ._records import (
    SERVICE_TYPE,
    TIERS,
    NodeAdvert,
    NodeEvent,
    address_key,
    check_fleet_id,
    format_address,
    parse_address,
    parse_txt,
)

log = logging.getLogger(f"tierdeck.{__name__}")

NodeCallback = Callable[[NodeEvent], None]


class _RecordWatch(RecordUpdateListener):
    """Passes every record zeroconf receives to a callback (event loop, must not block)."""

    def __init__(self, callback: Callable[[list[RecordUpdate], float], None]) -> None:
        """Remember the callback."""
        super().__init__()
        self._callback = callback

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        """Hand a batch of received records over."""
        self._callback(records, now)

    def async_update_records_complete(self) -> None:
        """Nothing to do once a batch is cached."""


@dataclass(frozen=True)
class _Identity:
    """What the console learned about a statically added node once it connected."""

    node_id: str
    name: str | None
    tier: str | None
    version: str | None
    fingerprint: str | None


class Browser:
    """Finds tierdeck nodes on `interfaces` (IPv4) and merges in fleet-file and manual nodes.

    All methods run on the event loop that called `async_start` (the console bridges to Qt itself).
    Records are keyed by node id; a record known only by address is keyed `addr:HOST:PORT` until
    `merge_identity` tells which node answers there. mDNS presence is not liveness (records live
    120 s or more): a node that dies without a goodbye stays listed; the console checks gRPC health.
    """

    def __init__(
        self,
        interfaces: list[str],
        *,
        aiozc: AsyncZeroconf | None = None,
        fleet_file: str | Path | None = None,
        resolve_timeout: float = 3.0,
        fleet_id: str = "",
    ) -> None:
        """Prepare a browser; pass `aiozc` to share the process's AsyncZeroconf (then `interfaces` is unused).

        With `fleet_id`, only advertisements carrying that fleet id (TXT `fleet`) are shown; the others —
        another fleet's nodes, a stray node from another run — are left out (one log line each).
        """
        self.fleet_id = check_fleet_id(fleet_id) if fleet_id else ""
        self._out_of_scope: dict[str, str] = {}
        self._suspect: set[str] = set()
        self._interfaces = ipv4_only(list(interfaces), "interface") if aiozc is None else list(interfaces)
        self._shared = aiozc
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._fleet_file = Path(fleet_file) if fleet_file is not None else None
        self._resolve_timeout_ms = int(resolve_timeout * 1000)
        self._subscribers: list[NodeCallback] = []
        self._seq = 0
        self._by_name: dict[str, tuple[int, NodeAdvert]] = {}
        self._rejected: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._fleet: dict[str, NodeAdvert] = {}
        self._manual: dict[str, NodeAdvert] = {}
        self._identities: dict[str, _Identity] = {}
        self._view: dict[str, NodeAdvert] = {}
        self._watch = _RecordWatch(self._on_records)

    # ----- public surface -------------------------------------------------------------------------

    async def async_start(self) -> None:
        """Load the fleet file (if any) and start browsing; safe to call twice."""
        if self._browser is not None:
            return
        if self._fleet_file is not None:
            await self.async_load_fleet_file(self._fleet_file)
        try:
            self._aiozc = self._shared or AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise OSError(exc.errno, f"mDNS cannot use interface(s) {', '.join(self._interfaces)}: "
                          f"{exc.strerror or exc}") from exc
        self._aiozc.zeroconf.async_add_listener(self._watch, None)
        # QM, not the RFC's suggested QU first query: several mDNS stacks on one host share UDP 5353 and a
        # unicast answer reaches only one of their sockets, so agents on the console's own host went unheard.
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state_change],
            question_type=DNSQuestionType.QM,
        )
        log.info("browsing %s on %s", SERVICE_TYPE, ", ".join(self._interfaces) or "a shared zeroconf")

    async def async_stop(self) -> None:
        """Stop browsing and close the zeroconf this browser opened; known records stay readable."""
        browser, self._browser = self._browser, None
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if browser is not None:
            await browser.async_cancel()
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is not None:
            aiozc.zeroconf.async_remove_listener(self._watch)
            if aiozc is not self._shared:
                await aiozc.async_close()

    @property
    def interfaces(self) -> list[str]:
        """The IPv4 interface addresses this browser was asked to use."""
        return list(self._interfaces)

    def subscribe(self, callback: NodeCallback) -> Callable[[], None]:
        """Call `callback(NodeEvent)` on every change from now on; returns the unsubscribe callable."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def events(self) -> AsyncIterator[NodeEvent]:
        """Iterate over events from now on (an async-iterator view of `subscribe`)."""
        queue: asyncio.Queue[NodeEvent] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    def nodes(self) -> dict[str, NodeAdvert]:
        """A snapshot of the known nodes, keyed by node id (or `addr:HOST:PORT` while the id is unknown)."""
        return dict(self._view)

    async def async_load_fleet_file(self, path: str | Path) -> list[NodeAdvert]:
        """Replace the fleet-file nodes with those in `path`; raises OSError/ValueError and keeps the old ones."""
        adverts = await asyncio.get_running_loop().run_in_executor(None, read_fleet_file, path)
        self.set_fleet(adverts)
        return adverts

    def set_fleet(self, adverts: Iterable[NodeAdvert]) -> None:
        """Replace the fleet-file nodes (records from `parse_fleet`)."""
        self._fleet = {advert.address: replace(advert, source="fleet-file") for advert in adverts}
        self._publish()

    def add_manual(self, address: str, tier: str = "", name: str = "") -> NodeAdvert:
        """Add a node by `HOST:PORT` (the operator typed it); returns its record as now published."""
        advert = static_advert(address, tier, name, source="manual")
        self._manual[advert.address] = advert
        self._publish()
        return self._view.get(self._static_key(advert), advert)

    def remove_manual(self, address: str) -> bool:
        """Forget a manually added address; True if it was there."""
        host, port = parse_address(address)
        found = self._manual.pop(format_address(host, port), None) is not None
        self._publish()
        return found

    def merge_identity(
        self,
        address: str,
        node_id: str,
        *,
        name: str | None = None,
        tier: str | None = None,
        version: str | None = None,
        fingerprint: str | None = None,
    ) -> NodeAdvert | None:
        """Tell which node answers at a fleet-file/manual `HOST:PORT` (learned by connecting to it).

        Its `addr:` record is re-keyed to `node_id` (a removed event for the old key, then added/updated
        with `previous_key` set); when mDNS also knows that id, the mDNS record wins and the two are one.
        """
        host, port = parse_address(address)
        if tier is not None and tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        if not node_id:
            raise ValueError("empty node id")
        self._identities[format_address(host, port)] = _Identity(node_id, name, tier, version, fingerprint)
        self._publish(renamed={node_id: address_key(host, port)})
        return self._view.get(node_id)

    # ----- mDNS -----------------------------------------------------------------------------------

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """zeroconf's handler: never blocks, resolution runs in a named task."""
        if state_change is ServiceStateChange.Removed:
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            self._dirty.discard(name)
            self._rejected.pop(name, None)
            if self._by_name.pop(name, None) is not None:
                self._publish()
            return
        self._schedule_resolve(name)

    def _schedule_resolve(self, name: str) -> None:
        """Resolve `name` in a named task, or again after the one running now."""
        if name in self._resolving:
            self._dirty.add(name)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name), name=f"tierdeck-resolve {name}")
        self._resolving[name] = task
        task.add_done_callback(functools.partial(self._resolve_done, name))

    def _on_records(self, records: list[RecordUpdate], now: float) -> None:
        """Re-resolve a known service when one of its SRV/TXT records is withdrawn.

        zeroconf's browser reports no change when a node withdraws an SRV or TXT but keeps the PTR, which
        is how a node that lost a name clash hands the name over (see Advertiser): without this the name
        would stay resolved to the node that left it.
        """
        for update in records:
            record = update.new
            if record.type in (_TYPE_SRV, _TYPE_TXT) and record.is_expired(now):
                if record.name in self._by_name or record.name in self._rejected:
                    self._schedule_resolve(record.name)

    def _resolve_done(self, name: str, task: asyncio.Task[None]) -> None:
        """Drop the finished task; log what an unexpected failure was."""
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            log.error("resolving %r failed", name, exc_info=task.exception())

    async def _resolve(self, name: str) -> None:
        """Fetch SRV/TXT/A for `name` (from the cache when it is there) and accept or reject it."""
        while True:
            self._dirty.discard(name)
            aiozc = self._aiozc
            if aiozc is None:
                return
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if await info.async_request(aiozc.zeroconf, self._resolve_timeout_ms, question_type=DNSQuestionType.QM):
                self._suspect.discard(name)
                self._accept(name, info, aiozc.zeroconf)
            elif name in self._suspect:  # its node moved to another name and nobody else answers for it
                self._suspect.discard(name)
                if self._by_name.pop(name, None) is not None:
                    self._publish()
            elif name not in self._by_name:
                self._reject(name, "did not resolve (no SRV, TXT or IPv4 address)")
            if name not in self._dirty:
                return

    def _accept(self, name: str, info: AsyncServiceInfo, zc: Zeroconf) -> None:
        """Validate a resolved service and publish it, or ignore it with one log line."""
        instance = name[: -len(SERVICE_TYPE) - 1] if name.endswith("." + SERVICE_TYPE) else name
        try:
            advert = _advert_from_info(instance, info, zc)
        except ValueError as exc:
            self._reject(name, str(exc))
            return
        if self.fleet_id and advert.fleet != self.fleet_id:
            if self._out_of_scope.get(name) != advert.fleet:
                self._out_of_scope[name] = advert.fleet
                log.info("leaving out %r: fleet %r, not %r", name, advert.fleet or "(none)", self.fleet_id)
            if self._by_name.pop(name, None) is not None:
                self._publish()
            return
        self._out_of_scope.pop(name, None)
        if self._rejected.pop(name, None) is not None:
            log.info("advertisement %r is valid again", name)
        self._seq += 1
        self._by_name[name] = (self._seq, advert)
        # One node holds one name. If this node was also known under another name, that entry is stale: a
        # node that lost a name clash renamed itself, and the name now belongs to the winner (or to nobody).
        # Resolve it again instead of trusting it; a resolution that caught the loser's records in flight
        # would otherwise hide the winner for as long as nothing else about that name changes.
        for other, (_, known) in list(self._by_name.items()):
            if other != name and known.node_id == advert.node_id:
                self._suspect.add(other)
                self._schedule_resolve(other)
        self._publish()

    def _reject(self, name: str, reason: str) -> None:
        """Ignore an advertisement, logging once per name and reason."""
        if self._rejected.get(name) != reason:
            self._rejected[name] = reason
            log.warning("ignoring advertisement %r: %s", name, reason)
        if self._by_name.pop(name, None) is not None:
            self._publish()

    # ----- merging and events ---------------------------------------------------------------------

    def _static_key(self, advert: NodeAdvert) -> str:
        """The key a static record is published under (its node id once identified)."""
        identity = self._identities.get(advert.address)
        return identity.node_id if identity else advert.key

    def _compute_view(self) -> dict[str, NodeAdvert]:
        """Merge mDNS (latest advert per node id wins) with fleet-file and manual records."""
        view: dict[str, NodeAdvert] = {}
        for _seq, advert in sorted(self._by_name.values(), key=lambda item: item[0]):
            view[advert.node_id] = advert
        static = {**self._fleet, **self._manual}
        for address, advert in static.items():
            identity = self._identities.get(address)
            if identity is not None:
                advert = replace(
                    advert,
                    node_id=identity.node_id,
                    name=identity.name or advert.name,
                    tier=identity.tier or advert.tier,
                    version=identity.version or advert.version,
                    fingerprint=identity.fingerprint or advert.fingerprint,
                )
            view.setdefault(advert.key, advert)
        return view

    def _publish(self, renamed: dict[str, str] | None = None) -> None:
        """Recompute the merged view and tell subscribers what changed."""
        old, new = self._view, self._compute_view()
        self._view = new
        events = [NodeEvent("removed", advert) for key, advert in old.items() if key not in new]
        for key, advert in new.items():
            previous = (renamed or {}).get(key)
            previous = previous if previous in old and previous not in new else None
            if key not in old:
                events.append(NodeEvent("added", advert, previous))
            elif old[key] != advert or previous:
                events.append(NodeEvent("updated", advert, previous))
        for event in events:
            log.debug("%s %s %s", event.kind, event.advert.key, event.advert.name)
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:
                    log.exception("discovery subscriber %r failed on %s", callback, event.kind)


def _advert_from_info(instance: str, info: AsyncServiceInfo, zc: Zeroconf) -> NodeAdvert:
    """Build a record from a resolved service; raises ValueError for anything malformed."""
    if info.port is None or not 1 <= info.port <= 65535:
        raise ValueError(f"absurd port {info.port}")
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if info.server and len(addresses) > 1:
        # A node that moved announces its new A record with cache-flush; the old one is set to expire in
        # one second (RFC 6762 §10.2) but is still in the cache now: leave it out so the move is clean.
        stale = {
            socket.inet_ntoa(record.address)
            for record in zc.cache.async_all_by_details(info.server, _TYPE_A, _CLASS_IN)
            if isinstance(record, DNSAddress) and record.ttl <= 1 and len(record.address) == 4
        }
        addresses = [a for a in addresses if a not in stale] or addresses
    if not addresses:
        raise ValueError("no IPv4 address")
    return parse_txt(info.text or b"", name=instance, port=info.port, addresses=addresses, host=info.server or "")


def all_ipv4_interfaces() -> list[str]:
    """Every IPv4 interface address of this host (what an operator's console browses on by default)."""
    from zeroconf._utils.net import get_all_addresses

    return sorted(set(get_all_addresses()))
