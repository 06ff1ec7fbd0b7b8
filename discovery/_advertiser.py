"""The agent side: advertise one node as `_tierdeck._tcp.local.` on chosen IPv4 interfaces."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable

from zeroconf import (
    DNSOutgoing,
    DNSQuestion,
    DNSService,
    DNSText,
    IPVersion,
    RecordUpdate,
    RecordUpdateListener,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_QUERY, _FLAGS_QR_RESPONSE, _TYPE_PTR, _TYPE_SRV, _TYPE_TXT

from ._records import DEFAULT_PROTO, SERVICE_TYPE, TIERS, build_txt, clip_name, host_name_for

log = logging.getLogger(f"tierdeck.{__name__}")

# zeroconf answers queries through delayed multicast queues (up to 500 ms of aggregation, and 1 s + 200 ms
# for records sent within the last second). An answer queued for a name just before we yield it goes out
# *after* our goodbye and puts our withdrawn records back into every cache for their full TTL. So the
# goodbye is sent again once those queues must have drained (seconds after the first one).
GOODBYE_REPEATS_S = (1.5, 3.5)


def ipv4_only(addresses: list[str], what: str) -> list[str]:
    """The concrete IPv4 addresses among `addresses`; raises ValueError when none is left."""
    kept: list[str] = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{what}: {text!r} is not an IP address") from None
        if addr.version != 4:
            log.warning("mDNS is IPv4-only here; not using %s %s", what, text)
        elif addr.is_unspecified or addr.is_multicast:
            raise ValueError(f"{what}: {text} is not a concrete interface address")
        elif text not in kept:
            kept.append(text)
    if not kept:
        raise ValueError(f"{what}: no IPv4 address among {addresses!r}")
    return kept


def _goodbye_for(lost: AsyncServiceInfo) -> DNSOutgoing:
    """A goodbye (TTL 0) for one instance's SRV and TXT, without the cache-flush bit."""
    srv, txt = lost.dns_service(), lost.dns_text()
    goodbye = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    goodbye.add_answer_at_time(DNSService(srv.name, _TYPE_SRV, _CLASS_IN, 0, srv.priority, srv.weight, srv.port,
                                          srv.server), 0)
    goodbye.add_answer_at_time(DNSText(txt.name, _TYPE_TXT, _CLASS_IN, 0, txt.text), 0)
    return goodbye


def _drop_queued_answers(zc: Zeroconf, key: str) -> int:
    """Take our SRV/TXT for the instance `key` out of zeroconf's delayed multicast answers; returns how many.

    Best effort (zeroconf's queues are public attributes, not documented API); the repeated goodbye covers
    what this misses.
    """
    dropped = 0
    for queue in (getattr(zc, "out_queue", None), getattr(zc, "out_delay_queue", None)):
        for group in list(getattr(queue, "queue", ())):
            answers = getattr(group, "answers", None)
            if not isinstance(answers, dict):
                continue
            for record in list(answers):
                if record.key == key and record.type in (_TYPE_SRV, _TYPE_TXT):
                    del answers[record]
                    dropped += 1
                    continue
                extra = answers[record]
                if extra:
                    kept = {r for r in extra if not (r.key == key and r.type in (_TYPE_SRV, _TYPE_TXT))}
                    dropped += len(extra) - len(kept)
                    answers[record] = kept
    return dropped


class _ConflictWatch(RecordUpdateListener):
    """Hands every record zeroconf receives to the advertiser's conflict check."""

    def __init__(self, advertiser: Advertiser) -> None:
        """Remember whom to tell."""
        super().__init__()
        self._advertiser = advertiser

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        """Look at a batch of received records (event loop, must not block)."""
        self._advertiser._check_conflict(records, now)

    def async_update_records_complete(self) -> None:
        """Nothing to do once a batch is cached."""


class Advertiser:
    """Advertises one node over mDNS; owns an AsyncZeroconf bound to `interfaces` (IPv4 only)."""

    def __init__(
        self,
        node_id: str,
        name: str,
        tier: str,
        port: int,
        addresses: list[str],
        version: str,
        proto: str = DEFAULT_PROTO,
        interfaces: list[str] | None = None,
        fingerprint: str = "",
        extra_txt: dict[str, str] | None = None,
    ) -> None:
        """Validate everything up front so a bad argument fails at construction, not on the network."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be 1-65535, not {port}")
        self._addresses = ipv4_only(list(addresses), "address")
        self._interfaces = ipv4_only(list(interfaces) if interfaces is not None else self._addresses, "interface")
        self._node_id = node_id
        self._port = port
        self._requested_name = clip_name(name)
        self._server = host_name_for(node_id)
        self._txt: dict[str, str] = build_txt(node_id, tier, version, proto, fingerprint, 0, extra_txt)
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._broadcasts: set[asyncio.Future[object]] = set()
        self._goodbyes: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()
        self._watch = _ConflictWatch(self)
        self._conflict_task: asyncio.Task[None] | None = None
        self._last_defended = 0.0

    @property
    def instance_name(self) -> str:
        """The instance name actually registered (after any rename), or the requested one before start."""
        if self._info is None:
            return self._requested_name
        return self._info.name[: -len(SERVICE_TYPE) - 1]

    @property
    def server(self) -> str:
        """The mDNS host name the SRV record points at."""
        return self._server

    @property
    def txt(self) -> dict[str, str]:
        """A copy of the TXT mapping currently advertised."""
        return dict(self._txt)

    def _make_info(self, instance: str) -> AsyncServiceInfo:
        """A ServiceInfo for `instance` with the current TXT."""
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            port=self._port,
            properties=dict(self._txt),
            server=self._server,
            parsed_addresses=self._addresses,
        )

    async def async_start(self) -> None:
        """Probe and register; renames on a name conflict ("name-2") instead of raising."""
        async with self._lock:
            if self._aiozc is not None:
                return
            try:
                self._aiozc = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
            except OSError as exc:
                raise OSError(exc.errno, f"mDNS cannot use interface(s) {', '.join(self._interfaces)}: "
                              f"{exc.strerror or exc}") from exc
            info = self._make_info(self._requested_name)
            try:
                await self._aiozc.zeroconf.async_wait_for_start()
                self._aiozc.zeroconf.async_add_listener(self._watch, None)
                # Several mDNS stacks on one host share UDP 5353, and a unicast answer to zeroconf's QU probe
                # reaches only one of their sockets, so a defending node on the same host can go unheard.
                # One multicast PTR query first makes every holder of the name answer by multicast into our
                # cache during probing's initial random wait, where zeroconf's conflict check looks.
                query = DNSOutgoing(_FLAGS_QR_QUERY)
                query.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
                self._aiozc.zeroconf.async_send(query)
                self._keep(await self._aiozc.async_register_service(info, allow_name_change=True))
            except BaseException:
                aiozc, self._aiozc = self._aiozc, None
                await aiozc.async_close()
                raise
            self._info = info
            if self.instance_name != self._requested_name:
                log.info("mDNS name %r is taken; advertising as %r", self._requested_name, self.instance_name)
            log.info(
                "advertising %s as %r on %s (host %s, port %d)",
                SERVICE_TYPE, self.instance_name, ", ".join(self._interfaces), self._server, self._port,
            )

    async def async_update(self, **txt: object) -> None:
        """Re-announce with TXT keys changed (None removes a key), e.g. `cfg=3`, `fp=...`, `paired=1`."""
        async with self._lock:
            new = dict(self._txt)
            for key, value in txt.items():
                if value is None:
                    new.pop(key.lower(), None)
                else:
                    new[key.lower()] = str(value)
            core = ("txtvers", "id", "tier", "ver", "proto", "fp", "cfg")
            extra = {k: v for k, v in new.items() if k not in core}
            if not new.get("cfg", "0").isdigit():
                raise ValueError(f"cfg must be a non-negative integer, not {new['cfg']!r}")
            self._txt = build_txt(
                new["id"], new["tier"], new["ver"], new["proto"], new.get("fp", ""), int(new.get("cfg", "0")), extra,
            )
            if self._aiozc is None or self._info is None:
                return
            info = self._make_info(self.instance_name)
            self._keep(await self._aiozc.async_update_service(info))
            self._info = info

    async def async_stop(self) -> None:
        """Send goodbye packets and close this advertiser's zeroconf; safe to call twice."""
        async with self._lock:
            aiozc, self._aiozc = self._aiozc, None
            if aiozc is None:
                return
            try:
                aiozc.zeroconf.async_remove_listener(self._watch)
                if self._conflict_task is not None:
                    self._conflict_task.cancel()
                for pending in list(self._broadcasts):
                    pending.cancel()
                for repeat in list(self._goodbyes):
                    repeat.cancel()
                if self._info is not None:
                    await self._await(aiozc.async_unregister_service(self._info))
            finally:
                await aiozc.async_close()
                log.info("stopped advertising %r", self.instance_name)

    def _check_conflict(self, records: list[RecordUpdate], now: float) -> None:
        """Resolve a name clash that probing missed (RFC 6762 §9), e.g. two nodes booted at the same moment.

        zeroconf probes, but two nodes probing the same name at once both win. When another host announces
        an SRV for our instance name, the node whose (host name, port) sorts lower yields: it says goodbye
        for its own SRV and TXT under that name (not the PTR, which both share) and re-registers, which
        renames it; the other re-announces its records for the name.
        """
        info = self._info
        if info is None or self._aiozc is None or self._conflict_task is not None:
            return
        for update in records:
            record = update.new
            if not isinstance(record, DNSService) or record.name.lower() != info.key or record.is_expired(now):
                continue
            ours = (self._server.lower(), self._port)
            theirs = (record.server.lower(), record.port)
            if theirs == ours:
                continue
            if ours < theirs:
                log.warning("mDNS name %r is also claimed by %s:%d; renaming", self.instance_name, *theirs)
                coro = self._async_yield_name(info)
            elif now - self._last_defended > 1000:
                self._last_defended = now
                log.warning("mDNS name %r is also claimed by %s:%d; defending it", self.instance_name, *theirs)
                coro = self._async_defend_name(info)
            else:
                continue
            self._conflict_task = asyncio.get_running_loop().create_task(coro, name="tierdeck-mdns-conflict")
            self._conflict_task.add_done_callback(self._conflict_done)
            return

    def _conflict_done(self, task: asyncio.Task[None]) -> None:
        """Clear the running conflict task; log what an unexpected failure was."""
        self._conflict_task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("resolving an mDNS name conflict failed", exc_info=task.exception())

    async def _async_yield_name(self, lost: AsyncServiceInfo) -> None:
        """Withdraw our records for the lost name and register again, probing for a new name."""
        async with self._lock:
            aiozc = self._aiozc
            if aiozc is None or self._info is not lost:
                return
            for pending in list(self._broadcasts):
                pending.cancel()
            # Goodbye for our SRV and TXT under the lost name only: they differ from the other node's, so
            # caches drop just ours; the PTR is identical to the other node's and must stay. Without the
            # cache-flush bit: with it (zeroconf sets it on SRV/TXT), every receiver also expires the *other*
            # node's SRV/TXT for this name that it cached more than a second ago (RFC 6762 §10.2) — under
            # load that is the winner's, which then vanished from every browser until its records were
            # asked for again (the "withdrawn and not re-announced" race of simultaneous boots).
            goodbye = _goodbye_for(lost)
            aiozc.zeroconf.async_send(goodbye)
            aiozc.zeroconf.registry.async_remove(lost)
            _drop_queued_answers(aiozc.zeroconf, lost.key)
            repeat = asyncio.ensure_future(self._async_repeat_goodbye(aiozc, goodbye))
            self._goodbyes.add(repeat)
            repeat.add_done_callback(self._goodbyes.discard)
            info = self._make_info(self._requested_name)
            self._info = None
            self._keep(await aiozc.async_register_service(info, allow_name_change=True))
            self._info = info
            log.info("advertising %s as %r after a name conflict", SERVICE_TYPE, self.instance_name)

    @staticmethod
    async def _async_repeat_goodbye(aiozc: AsyncZeroconf, goodbye: DNSOutgoing) -> None:
        """Send a goodbye again after zeroconf's delayed answers for the name must have gone out (see above)."""
        waited = 0.0
        for at in GOODBYE_REPEATS_S:
            await asyncio.sleep(at - waited)
            waited = at
            aiozc.zeroconf.async_send(goodbye)

    async def _async_defend_name(self, kept: AsyncServiceInfo) -> None:
        """Re-announce our records for the name (cache-flush) after another node claimed it."""
        async with self._lock:
            if self._aiozc is not None and self._info is kept:
                self._keep(await self._aiozc.async_update_service(kept))

    def _keep(self, broadcast: Awaitable[object]) -> None:
        """Hold a reference to a running announcement so it is neither collected nor left behind on stop."""
        future = asyncio.ensure_future(broadcast)
        self._broadcasts.add(future)
        future.add_done_callback(self._broadcasts.discard)

    @staticmethod
    async def _await(step: Awaitable[Awaitable[object]]) -> None:
        """Await one of zeroconf's two-stage calls (schedule, then broadcasts done)."""
        await (await step)

    def __repr__(self) -> str:
        """Show who is advertised where."""
        return f"Advertiser({self.instance_name!r}, id={self._node_id!r}, interfaces={self._interfaces!r})"
