"""ConsoleCore: the console without widgets — I/O loop, database, fleet, deployer and event log together.

Two ways to run it (same code, same loop story, see app/_loop.py):

* GUI: `core = ConsoleCore(...).start()` starts the I/O loop thread and the database writer; the
  GUI thread calls the thread-safe intents (`add_address`, `forget`, `plan`, `apply`, ...) which
  return concurrent futures and never block, and observes through `subscribe_*` (listeners are
  called on the I/O loop thread; `app.qt` re-emits them as queued Qt signals).
* Headless: `async with ConsoleCore(...) as core:` inside `asyncio.run(...)` runs the same services
  on the caller's loop; the `async_*` methods are then awaited directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from app._db import Database, Retention, default_db_path, last_positions, managed_stages
from app._deployer import (
    Deployer,
    DeployProgress,
    DeployResult,
    Plan,
    budget_proto,
    plan,
    requirements_for,
    rule_proto,
)
from app._fleet import Fleet
from app._hard_examples import DatasetWritten, HardExamplePull, HardRow, NodeEntry, tensors_of, write_dataset
from app._loop import IoLoop
from app._records import ConsoleEvent, FleetEvent, FleetEventKind, NodeSample, NodeSnapshot, Severity, StageSnapshot
from app.pipeline_file import Budget, Pipeline, Rule
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import ClientTLS

if TYPE_CHECKING:
    from app.fleet_ca import Member

log = logging.getLogger(f"tierdeck.{__name__}")
T = TypeVar("T")
EventCallback = Callable[[ConsoleEvent], None]


class ConsoleCore:
    """The console's services, usable with or without Qt."""

    def __init__(
        self,
        db_path: Path | str | None = None,
        *,
        telemetry_interval_s: float = 1.0,
        interfaces: Iterable[str] = (),
        fleet_file: Path | str | None = None,
        retention: Retention | None = None,
        max_db_bytes: int | None = None,
        db_options: dict[str, Any] | None = None,
        fleet_options: dict[str, Any] | None = None,
        tls: ClientTLS | None = None,
        fleet_id: str = "",
        revocations: Callable[[], list[int]] | None = None,
    ) -> None:
        self.db_path = Path(db_path) if db_path is not None else default_db_path()
        self.telemetry_interval_s = telemetry_interval_s
        self.interfaces = list(interfaces)
        self.fleet_file = fleet_file
        self.tls = tls
        self.db = Database(self.db_path, retention=retention or Retention(), max_db_bytes=max_db_bytes,
                           on_error=self._db_error, on_recovered=self._db_recovered, **(db_options or {}))
        self._fleet_options = dict(fleet_options or {})
        if fleet_id:
            self._fleet_options["fleet_id"] = fleet_id
        if revocations is not None:
            self._fleet_options["revocations"] = revocations
        self.fleet: Fleet | None = None
        self.deployer: Deployer | None = None
        self.latest: dict[str, NodeSample] = {}
        self.events: list[ConsoleEvent] = []   # the last `max_events` events, newest last (loop thread)
        self.max_events = 2000
        self._event_subscribers: list[EventCallback] = []
        self._fleet_subscribers: list[Callable[[FleetEvent], None]] = []
        self._sample_subscribers: list[Callable[[NodeSample], None]] = []
        self._stored_stages: dict[str, tuple[StageSnapshot, ...]] = {}
        self._io: IoLoop | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    # ----- life cycle -----------------------------------------------------------------------------
    def start(self) -> ConsoleCore:
        """Start the I/O loop thread, the database and the fleet (for the GUI); returns self."""
        self._io = IoLoop().start()
        try:
            self._io.run(self.async_start(), timeout=60)
        except BaseException:
            self._io.stop()
            self._io = None
            raise
        return self

    def stop(self) -> None:
        """Stop everything started by `start` (waits for the database to commit what is queued)."""
        if self._io is None:
            return
        try:
            self._io.run(self.async_stop(), timeout=60)
        finally:
            self._io.stop()
            self._io = None

    async def __aenter__(self) -> ConsoleCore:
        await self.async_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_stop()

    async def async_start(self) -> None:
        """Start the services on the running loop."""
        self._aloop = asyncio.get_running_loop()
        loop = self._aloop
        await loop.run_in_executor(None, self.db.start)
        positions = await asyncio.wrap_future(self.db.read(last_positions))
        self.fleet = Fleet(telemetry_interval_s=self.telemetry_interval_s, interfaces=self.interfaces,
                           fleet_file=self.fleet_file, on_event=self.publish_event, tls=self.tls,
                           **self._fleet_options)
        self.fleet.seed_positions(positions)
        self.fleet.subscribe(self._on_fleet)
        self.fleet.subscribe_samples(self._on_sample)
        self.deployer = Deployer(ledger=self.db, on_event=self.publish_event, refresh=self._refresh_node, tls=self.tls)
        await self.fleet.async_start()

    async def async_stop(self) -> None:
        """Stop the fleet and close the database (commits what is queued)."""
        if self.fleet is not None:
            await self.fleet.async_stop()
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)

    @property
    def io(self) -> IoLoop | None:
        """The I/O loop thread when started with `start()` (None when run headless in the caller's loop)."""
        return self._io

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the console's loop from any thread."""
        if self._aloop is None:
            raise RuntimeError("console core is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._aloop)

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Call `fn(*args)` on the console's loop (thread-safe, never blocks)."""
        if self._aloop is None:
            raise RuntimeError("console core is not started")
        self._aloop.call_soon_threadsafe(fn, *args)

    # ----- listeners (called on the console's loop thread) ----------------------------------------
    def subscribe_events(self, callback: EventCallback) -> Callable[[], None]:
        """Audit-log events as they happen."""
        self._event_subscribers.append(callback)
        return lambda: self._event_subscribers.remove(callback) if callback in self._event_subscribers else None

    def subscribe_fleet(self, callback: Callable[[FleetEvent], None]) -> Callable[[], None]:
        """Node changes as they happen."""
        self._fleet_subscribers.append(callback)
        return lambda: self._fleet_subscribers.remove(callback) if callback in self._fleet_subscribers else None

    def subscribe_samples(self, callback: Callable[[NodeSample], None]) -> Callable[[], None]:
        """Accepted telemetry samples as they arrive."""
        self._sample_subscribers.append(callback)
        return lambda: self._sample_subscribers.remove(callback) if callback in self._sample_subscribers else None

    def publish_event(self, event: ConsoleEvent) -> None:
        """Record an event (database) and tell the listeners; call on the loop thread."""
        self.db.add_event(event)
        self.events.append(event)
        del self.events[:-self.max_events]
        for callback in list(self._event_subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber failed")

    def _db_error(self, message: str) -> None:
        """The writer thread reports trouble; it becomes an operator-visible event on the loop thread."""
        self._from_any_thread(ConsoleEvent("database", message, Severity.ERROR))

    def _db_recovered(self, message: str) -> None:
        self._from_any_thread(ConsoleEvent("database", message, Severity.INFO))

    def _from_any_thread(self, event: ConsoleEvent) -> None:
        loop = self._aloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.publish_event, event)

    def _on_fleet(self, event: FleetEvent) -> None:
        node = event.node
        if node.source == "endpoint":
            pass  # an engine is watched while a pipeline names it, never remembered as a tierdeck node
        elif event.kind == FleetEventKind.REMOVED:
            self.latest.pop(node.key, None)
            if not event.previous_key:  # forgotten (not merged into another entry)
                self.db.save_node(node, forgotten=True)
        else:
            self.db.save_node(node)
            if node.node_id and node.info is not None and self._stored_stages.get(node.node_id) != node.stages:
                self._stored_stages[node.node_id] = node.stages
                self.db.set_stages(node.node_id, node.stages)
        for callback in list(self._fleet_subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("fleet subscriber failed")

    def _on_sample(self, sample: NodeSample) -> None:
        self.latest[sample.node_id] = sample
        self.db.write_sample(sample)
        for callback in self._sample_subscribers:
            try:
                callback(sample)
            except Exception:
                log.exception("sample subscriber failed")

    async def _refresh_node(self, key: str) -> None:
        if self.fleet is not None:
            await self.fleet.async_refresh(key)

    # ----- coroutines (the console's loop) --------------------------------------------------------
    def _need_fleet(self) -> Fleet:
        if self.fleet is None:
            raise RuntimeError("console core is not started")
        return self.fleet

    async def async_plan(self, pipeline: Pipeline) -> Plan:
        """Plan a pipeline onto the fleet as it is now (fit check included)."""
        fleet = self._need_fleet()
        loop = asyncio.get_running_loop()
        requirements = await loop.run_in_executor(None, requirements_for, pipeline)
        managed = await asyncio.wrap_future(self.db.read(lambda db: managed_stages(db, pipeline.name)))
        power = {s.node_id: s.power_watts for s in self.latest.values()}
        for stage in pipeline.stages:  # engines tierdeck does not run are watched like nodes from now on
            if stage.endpoint is not None:
                e = stage.endpoint
                fleet.add_endpoint(e.address, e.model, stage.placement.tier or "cloud", stage.id, e.version,
                                   ClientTLS(e.ca_pem, e.key_pem, e.cert_pem) if e.ca_pem else None)
        return plan(pipeline, fleet.nodes(), requirements=requirements, power_now=power, managed=managed)

    async def async_apply(self, the_plan: Plan, progress: Callable[[DeployProgress], None] | None = None
                          ) -> DeployResult:
        """Apply a plan all-or-nothing; record which pipeline owns the stages it placed."""
        assert self.deployer is not None
        result = await self.deployer.async_apply(the_plan, progress)
        if result.ok:
            fleet = self._need_fleet()
            for node_plan in the_plan.nodes:
                snap = fleet.node(node_plan.node_key)
                if snap is None or not snap.node_id:
                    continue
                owners = {a.stage_id: (the_plan.pipeline.name, result.deployment_id)
                          for a in node_plan.actions if a.kind != "remove"}
                self._stored_stages[snap.node_id] = snap.stages
                self.db.set_stages(snap.node_id, snap.stages, owners)
        return result

    async def async_deploy(self, pipeline: Pipeline, progress: Callable[[DeployProgress], None] | None = None
                           ) -> tuple[Plan, DeployResult]:
        """Plan and apply in one go (the headless `tierdeck deploy`)."""
        the_plan = await self.async_plan(pipeline)
        return the_plan, await self.async_apply(the_plan, progress)

    # ----- thread-safe intents (any thread; results as concurrent futures) ------------------------
    def add_address(self, address: str, tier: str = "", name: str = "") -> concurrent.futures.Future[str]:
        """Add a node by HOST:PORT; the future gives its key."""
        async def go() -> str:
            return self._need_fleet().add_address(address, tier, name)
        return self.submit(go())

    def forget(self, key: str) -> concurrent.futures.Future[bool]:
        """Forget a node."""
        async def go() -> bool:
            return self._need_fleet().forget(key)
        return self.submit(go())

    def reconnect(self, key: str) -> concurrent.futures.Future[bool]:
        """Reconnect to a node now (a new telemetry stream)."""
        async def go() -> bool:
            return self._need_fleet().reconnect(key)
        return self.submit(go())

    def nodes(self) -> concurrent.futures.Future[list[NodeSnapshot]]:
        """Snapshots of every node."""
        async def go() -> list[NodeSnapshot]:
            return self._need_fleet().nodes()
        return self.submit(go())

    async def async_update_policy(self, stage_id: str, rule: Rule | None = None, budget: Budget | None = None
                                  ) -> dict[str, str]:
        """Push a new rule/budget to every node running the stage, live (UpdatePolicy, no redeploy).

        Returns {node name: "" or the error} for every node running it; each outcome is an audit event.
        """
        fleet = self._need_fleet()
        request = ctl.UpdatePolicyRequest(stage_id=stage_id)
        if rule is not None:
            request.rule.CopyFrom(rule_proto(rule))
        if budget is not None:
            request.budget.CopyFrom(budget_proto(budget))
        targets = [n for n in fleet.nodes() if n.source != "endpoint" and any(s.stage_id == stage_id for s in n.stages)]
        if not targets:
            raise LookupError(f"no node runs stage '{stage_id}'")
        errors: dict[str, str] = {}
        for node in targets:
            client = fleet.client(node.key)
            try:
                if client is None:
                    raise ConnectionError("not connected")
                await client.update_policy(request, timeout=10)
            except Exception as exc:  # grpc.aio.AioRpcError, connection errors
                details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else ""
                errors[node.key] = details or str(exc)
        results = {node.name: errors.get(node.key, "") for node in targets}
        what = "rule" if rule is not None else "budget"
        for node in targets:
            failed = errors.get(node.key)
            outcome = "updated live" if failed is None else f"not updated: {failed}"
            kind = "policy_updated" if failed is None else "policy_failed"
            self.publish_event(ConsoleEvent(kind, f"{what} of {stage_id} on {node.name} {outcome}",
                                            Severity.INFO if failed is None else Severity.ERROR, node.node_id,
                                            {"stage_id": stage_id}))
            await fleet.async_refresh(node.key)
        return results

    def undeploy_targets(self, stage_id: str, only: Iterable[str] = ()) -> tuple[list[NodeSnapshot], list[str]]:
        """Nodes running `stage_id` (restricted to `only`: names, ids, keys or addresses), and in words the
        stages elsewhere whose next hop is one of them (they would queue their escalations)."""
        fleet = self._need_fleet()
        wanted = set(only)
        targets = [n for n in fleet.nodes() if n.source != "endpoint" and any(s.stage_id == stage_id for s in n.stages)
                   and (not wanted or wanted & {n.name, n.node_id, n.key, n.address})]
        addresses = {n.address for n in targets}
        feeding = [f"{s.stage_id} on {n.name} escalates to it at {s.next_hop}"
                   for n in fleet.nodes() for s in n.stages
                   if s.next_hop in addresses and s.next_model == stage_id and n not in targets]
        return targets, feeding

    async def async_undeploy(self, stage_id: str, targets: list[NodeSnapshot]) -> dict[str, str]:
        """Undeploy the stage from these nodes; {node name: "" or the error}; each outcome is an audit event."""
        fleet = self._need_fleet()
        results: dict[str, str] = {}
        for node in targets:
            client = fleet.client(node.key)
            try:
                if client is None:
                    raise ConnectionError("not connected")
                await client.undeploy(stage_id, timeout=30)
                results[node.name] = ""
            except Exception as exc:  # grpc.aio.AioRpcError, connection errors
                details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else ""
                results[node.name] = details or str(exc)
            failed = results[node.name]
            self.publish_event(ConsoleEvent(
                "stage_undeployed" if not failed else "undeploy_failed",
                f"{stage_id} undeployed from {node.name}" if not failed
                else f"{stage_id} not undeployed from {node.name}: {failed}",
                Severity.INFO if not failed else Severity.ERROR, node.node_id, {"stage_id": stage_id}))
            await fleet.async_refresh(node.key)
        return results

    async def async_dead_letters(self, stage_id: str = "", limit: int = 100
                                 ) -> list[tuple[NodeSnapshot, ctl.ListDeadLettersResponse]]:
        """Per node (that runs a stage with a next hop): its dead letters, oldest first, and how many in all."""
        fleet = self._need_fleet()
        out = []
        for node in fleet.nodes():
            if not any(s.next_hop and (not stage_id or s.stage_id == stage_id) for s in node.stages):
                continue
            client = fleet.client(node.key)
            if client is None:
                continue
            out.append((node, await client.dead_letters(stage_id, limit, timeout=10)))
        return out

    async def async_settle_dead_letters(self, node: NodeSnapshot, stage_id: str, retry: bool,
                                        seqs: list[int] | None = None) -> int:
        """Retry (back into the queue, toward the next hop) or discard a node's dead letters; an audit event."""
        client = self._need_fleet().client(node.key)
        if client is None:
            raise ConnectionError(f"{node.name} is not connected")
        if retry:
            count = await client.retry_dead_letters(stage_id, seqs)
        else:
            count = await client.discard_dead_letters(stage_id, seqs)
        what = "put back in the queue" if retry else "discarded"
        self.publish_event(ConsoleEvent("dead_letters", f"{count} dead letter(s) of {stage_id} on {node.name} {what}",
                                        Severity.INFO if retry else Severity.WARNING, node.node_id,
                                        {"stage_id": stage_id, "count": count, "retry": retry}))
        return count

    async def async_hard_examples(self, request: ctl.ListHardExamplesRequest | None = None,
                                  before: dict[str, int] | None = None) -> HardExamplePull:
        """A page of every connected node's hard-example ledger (newest first, thumbnails only), pulled in
        parallel; a node that fails is named in `errors` and the others still count. With `before` ({node key:
        seq}, from `HardExamplePull.older()`), the next older page of those nodes only."""
        fleet = self._need_fleet()
        nodes = [n for n in fleet.nodes() if n.source != "endpoint" and fleet.client(n.key) is not None
                 and (before is None or n.key in before)]

        async def one(node: NodeSnapshot) -> ctl.ListHardExamplesResponse:
            client = fleet.client(node.key)
            if client is None:
                raise ConnectionError("not connected")
            page = ctl.ListHardExamplesRequest()
            if request is not None:
                page.CopyFrom(request)
            if before is not None:
                page.before_seq = before[node.key]
            return await client.hard_examples(page, timeout=15)

        results = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
        pull = HardExamplePull()
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, BaseException):
                details = result.details() if isinstance(result, grpc.aio.AioRpcError) else ""
                pull.errors[node.name] = details or str(result) or type(result).__name__
                continue
            pull.ledgers[node.name] = result.ledger
            pull.totals[node.name] = int(result.total)
            pull.entries += [NodeEntry(node.key, node.name, node.tier, e) for e in result.examples]
            pull.fetched[node.key] = len(result.examples)
            if result.examples:
                pull.oldest[node.key] = min(int(e.seq) for e in result.examples)
            # Newest first: older entries are left when this page was full and more match than it held.
            pull.matching[node.key] = int(result.total)
            pull.more[node.key] = bool(result.examples) and int(result.total) > len(result.examples)
        return pull

    async def async_hard_example_tensors(self, rows: list[HardRow]) -> dict[tuple[str, int], dict[str, Any]]:
        """The first-stage input tensors of these rows, {(node key, seq): {input name: array}} (rows whose entry is
        gone from its node are left out)."""
        fleet = self._need_fleet()
        wanted: dict[str, list[int]] = {}
        for row in rows:
            wanted.setdefault(row.root.node_key, []).append(int(row.root.example.seq))
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for key, seqs in wanted.items():
            client = fleet.client(key)
            if client is None:
                node = fleet.node(key)
                raise ConnectionError(f"{node.name if node is not None else key} is not connected")
            for example in await client.hard_example_tensors(seqs):
                out[(key, int(example.seq))] = tensors_of(example)
        return out

    async def async_export_hard_examples(self, rows: list[HardRow], out: Path | str, source: str = ""
                                         ) -> DatasetWritten:
        """Pull the rows' inputs from their nodes and write OUT.npz + OUT.json (see app/_hard_examples.py)."""
        tensors = await self.async_hard_example_tensors(rows)
        written = await asyncio.get_running_loop().run_in_executor(None, write_dataset, out, rows, tensors, source)
        self.publish_event(ConsoleEvent("hard_examples_exported",
                                        f"{written.rows} hard example(s) exported to {written.npz}"
                                        + (f" ({len(written.skipped)} gone from their node)" if written.skipped
                                           else ""), Severity.INFO, "",
                                        {"npz": str(written.npz), "manifest": str(written.manifest),
                                         "rows": written.rows}))
        return written

    def hard_examples(self, request: ctl.ListHardExamplesRequest | None = None, before: dict[str, int] | None = None
                      ) -> concurrent.futures.Future[HardExamplePull]:
        """Thread-safe `async_hard_examples`."""
        return self.submit(self.async_hard_examples(request, before))

    def hard_example_tensors(self, rows: list[HardRow]) -> concurrent.futures.Future[dict[tuple[str, int], Any]]:
        """Thread-safe `async_hard_example_tensors`."""
        return self.submit(self.async_hard_example_tensors(rows))

    def export_hard_examples(self, rows: list[HardRow], out: Path | str, source: str = ""
                             ) -> concurrent.futures.Future[DatasetWritten]:
        """Thread-safe `async_export_hard_examples`."""
        return self.submit(self.async_export_hard_examples(rows, out, source))

    def update_policy(self, stage_id: str, rule: Rule | None = None, budget: Budget | None = None
                      ) -> concurrent.futures.Future[dict[str, str]]:
        """Thread-safe `async_update_policy`."""
        return self.submit(self.async_update_policy(stage_id, rule, budget))

    def enroll(self, address: str, code: str, fleet_dir: Path | None = None) -> concurrent.futures.Future[Member]:
        """Enrol the unenrolled node at `address` with its pairing code, then add it; the future gives its record."""
        async def go() -> Member:
            from app.fleet_ca import FleetCA, default_fleet_dir  # cryptography: only when enrolling

            member = await FleetCA(fleet_dir or default_fleet_dir()).enroll(address, code)
            self.publish_event(ConsoleEvent("node_enrolled", f"enrolled {member.name} ({member.node_id[:12]}) at "
                                            f"{address}", Severity.INFO, member.node_id, {"address": address}))
            self._need_fleet().add_address(address)
            return member
        return self.submit(go())

    def report_process_exit(self, message: str, node_id: str = "", detail: dict[str, Any] | None = None,
                            note: str = "") -> None:
        """A supervised process died unexpectedly (any thread): an error event, and `note` on the node's card."""
        def go() -> None:
            self.publish_event(ConsoleEvent("process_exit", message, Severity.ERROR, node_id, dict(detail or {})))
            if node_id and self.fleet is not None:
                self.fleet.set_process_note(node_id, note or message)
        self.call_soon(go)

    def plan(self, pipeline: Pipeline) -> concurrent.futures.Future[Plan]:
        """Plan a pipeline (see `async_plan`)."""
        return self.submit(self.async_plan(pipeline))

    def apply(self, the_plan: Plan, progress: Callable[[DeployProgress], None] | None = None
              ) -> concurrent.futures.Future[DeployResult]:
        """Apply a plan (see `async_apply`); `progress` is called on the loop thread."""
        return self.submit(self.async_apply(the_plan, progress))

