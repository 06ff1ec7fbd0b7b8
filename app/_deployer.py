"""The deployer: plan a pipeline onto the fleet as a per-node diff, then apply it all-or-nothing.

Placement. A stage placed on a tier goes to every reachable (online or degraded) node of that tier;
a stage pinned to nodes goes to exactly those. A tier with no reachable node, or a pinned node that
is unknown or offline, makes the plan unusable (`Plan.problems`); offline nodes of a tier are left
out with a warning.

Next hops. The next hop of stage k on a node is a node running stage k+1. When stage k+1 runs on
several nodes, they are assigned round-robin in node-id order: the i-th node of stage k (sorted by
node id) escalates to node i mod m of stage k+1. Deterministic, so replanning an unchanged fleet
gives an unchanged plan.

Versions. A stage's version on a node is `<first 8 hex of the model sha256>-<first 8 hex of a hash
of its manifest policy>` (inputs/outputs, rule, next hop, budget, batch): any change of model or
policy is a new version, and Rollback restores the previous one exactly (model and policy).

Apply. Stages go top tier first (the last stage of the chain first) so that every next hop exists
and is verified before anything escalates to it; within one stage all nodes are pushed in
parallel. Per node and stage: upload (the Deploy stream; the agent checks the sha256, loads, warms
up and swaps atomically) → activate (the agent answered ok) → verify (ModelReady, the stage's
health, one smoke inference on zeros). Removals come last. If anything fails, every node already
switched is rolled back (Rollback RPC where a previous version ran, Undeploy for a new stage),
bottom tier first, and the result carries the reason per node. Every step goes into the ledger.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from app._fit import Requirements, check_fit, expected_provider, memory_estimate
from app._records import ConsoleEvent, NodeSnapshot, Severity, now_ms
from app._routing import REACHABLE, next_hop, placement_warnings, stage_targets
from app.pipeline_file import Budget, Pipeline, Rule, Stage
from runners._forward import SMOKE
from runners._proto import grpc_predict_v2_pb2 as pb
from runners._proto import tierdeck_control_pb2 as ctl
from runners._tensors import DATATYPES
from runners.client import ClientTLS, DeployError, NodeClient, infer_request, infer_result, manifest_for

log = logging.getLogger(f"tierdeck.{__name__}")

ADD, UPDATE, REMOVE, UNCHANGED = "add", "update", "remove", "unchanged"


@dataclass(frozen=True)
class StageAction:
    """What the plan does with one stage on one node, and why."""

    kind: str                    # add | update | remove | unchanged
    stage_id: str
    version: str = ""            # the version that will run ("" for remove)
    running_version: str = ""    # the version running now ("" when new)
    reason: str = ""
    next_hop: str = ""           # HOST:PORT of the next tier ("" for the last stage)
    next_node: str = ""          # node id of the next hop
    next_model: str = ""
    provider: str = ""           # the execution provider it will run on there (see app/_fit.expected_provider)

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output and the ledger."""
        return {"kind": self.kind, "stage_id": self.stage_id, "version": self.version,
                "running_version": self.running_version, "reason": self.reason, "next_hop": self.next_hop,
                "next_node": self.next_node, "next_model": self.next_model, "provider": self.provider}


@dataclass(frozen=True)
class NodePlan:
    """The diff for one node."""

    node_key: str
    node_id: str
    name: str
    tier: str
    address: str
    actions: tuple[StageAction, ...]

    @property
    def changes(self) -> tuple[StageAction, ...]:
        """Actions other than unchanged."""
        return tuple(a for a in self.actions if a.kind != UNCHANGED)

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output and the ledger."""
        return {"node_id": self.node_id, "name": self.name, "tier": self.tier, "address": self.address,
                "actions": [a.as_json() for a in self.actions]}


@dataclass(frozen=True)
class Plan:
    """A pipeline planned onto the fleet: per-node diffs, plus problems that block it and warnings."""

    pipeline: Pipeline
    nodes: tuple[NodePlan, ...]
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    created_ms: int = field(default_factory=now_ms)

    @property
    def ok(self) -> bool:
        """True when the plan can be applied."""
        return not self.problems

    @property
    def has_changes(self) -> bool:
        """True when applying would change anything."""
        return any(n.changes for n in self.nodes)

    def node(self, key: str) -> NodePlan | None:
        """The diff of one node (by key or node id)."""
        return next((n for n in self.nodes if key in (n.node_key, n.node_id)), None)

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output and the ledger."""
        return {"pipeline": self.pipeline.name, "path": str(self.pipeline.path or ""),
                "stages": [s.id for s in self.pipeline.chain()], "ok": self.ok, "problems": list(self.problems),
                "warnings": list(self.warnings), "nodes": [n.as_json() for n in self.nodes]}


@dataclass(frozen=True)
class DeployProgress:
    """One step of a deployment on one node: upload, activate, verify, remove, rollback."""

    deployment_id: str
    node_key: str
    node_id: str
    node_name: str
    stage_id: str
    step: str
    status: str                  # started | done | failed
    message: str = ""
    ts_ms: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class NodeOutcome:
    """How a deployment ended on one node."""

    node_key: str
    node_id: str
    name: str
    ok: bool
    reason: str = ""
    rolled_back: tuple[str, ...] = ()        # stages restored or removed by the rollback
    rollback_failed: tuple[str, ...] = ()    # stages whose rollback failed (with reasons in `reason`)

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {"node_id": self.node_id, "name": self.name, "ok": self.ok, "reason": self.reason,
                "rolled_back": list(self.rolled_back), "rollback_failed": list(self.rollback_failed)}


@dataclass(frozen=True)
class DeployResult:
    """How a deployment ended: succeeded, unchanged, failed, rolled_back, rollback_failed or refused."""

    deployment_id: str
    ok: bool
    status: str
    reason: str
    nodes: tuple[NodeOutcome, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """A plain dict for JSON output."""
        return {"deployment_id": self.deployment_id, "ok": self.ok, "status": self.status, "reason": self.reason,
                "nodes": [n.as_json() for n in self.nodes]}


# ----- planning ---------------------------------------------------------------------------------------

def rule_proto(r: Rule) -> ctl.EscalationRule:
    """A pipeline-file rule as the agent takes it."""
    rule = ctl.EscalationRule(output=r.output, labels=list(r.labels), class_in=list(r.class_in),
                              drop_class=list(r.drop_class), scores="" if r.scores == "probabilities" else r.scores)
    if r.confidence_below is not None:
        rule.confidence_below = r.confidence_below
    if r.score_above is not None:
        rule.score_above = r.score_above
    return rule


def budget_proto(budget: Budget) -> ctl.Budget:
    """A pipeline budget as the manifest carries it (shadow_rate unset = the node's default)."""
    out = ctl.Budget(max_escalations_per_s=budget.max_escalations_per_s, priority=budget.priority)
    if budget.shadow_rate is not None:
        out.shadow_rate = budget.shadow_rate
    return out


def policy_fields(stage: Stage, next_stage: Stage | None, next_address: str, next_node_id: str = "") -> dict[str, Any]:
    """The manifest fields of a stage besides its model (for `manifest_for`)."""
    fields: dict[str, Any] = {
        "input_names": [t.name for t in stage.inputs],
        "output_names": [t.name for t in stage.outputs],
        "budget": budget_proto(stage.budget),
    }
    # Always sent, also a last stage's label-only rule: the agent then labels its answers and settles.
    fields["rule"] = rule_proto(stage.rule)
    if stage.max_batch is not None:
        fields["max_batch"] = stage.max_batch
    if stage.providers:
        fields["providers"] = ctl.ProviderChoice(require=list(stage.providers.require),
                                                 prefer=list(stage.providers.prefer))
    if next_stage is not None and next_stage.endpoint is not None:
        e = next_stage.endpoint
        fields["next_hop"] = ctl.NextHop(address=e.address, model=e.model, model_version=e.version,
                                         labels=list(next_stage.rule.labels), external=True, tls_ca=e.ca_pem,
                                         tls_cert=e.cert_pem, tls_key=e.key_pem, output=next_stage.rule.output,
                                         input_names=[t.name for t in next_stage.inputs])
    elif next_stage is not None:
        fields["next_hop"] = ctl.NextHop(address=next_address, model=next_stage.id,
                                         labels=list(next_stage.rule.labels), node_id=next_node_id)
    return fields


def stage_version(stage: Stage, fields: Mapping[str, Any]) -> str:
    """`<sha8>-<policy8>`: changes whenever the model or its policy changes."""
    manifest = ctl.StageManifest(stage_id=stage.id, sha256=stage.sha256)
    for name, value in fields.items():
        target = getattr(manifest, name)
        if hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        elif isinstance(value, list):
            target.extend(value)
        else:
            setattr(manifest, name, value)
    policy = hashlib.sha256(manifest.SerializeToString(deterministic=True)).hexdigest()
    return f"{stage.sha256[:8]}-{policy[:8]}"


def plan(pipeline: Pipeline, nodes: list[NodeSnapshot], *,
         requirements: Mapping[str, Requirements] | None = None,
         power_now: Mapping[str, float] | None = None,
         managed: Mapping[str, set[str]] | None = None) -> Plan:
    """Plan `pipeline` onto the fleet `nodes`: a diff per node (add/update/remove/unchanged).

    `requirements` (per stage id) enables the fit check; `power_now` (per node key) is each node's
    latest power draw; `managed` (per node id) lists stage ids this pipeline deployed there earlier,
    so stages dropped from the pipeline are removed too. Other stages on a node are left alone.
    """
    problems: list[str] = []
    warnings: list[str] = []
    nodes = [n for n in nodes if n.source != "endpoint"]  # engines are checked, never deployed to
    chain = pipeline.chain()
    ids = {s.id for s in chain}
    by_address = {n.address: n for n in nodes}
    targets: dict[str, list[NodeSnapshot]] = {}
    for stage in chain:
        if stage.endpoint is not None:
            e = stage.endpoint
            warnings.append(f"stage {stage.id} is served by the engine at {e.address} (model {e.model}): "
                            "nothing is uploaded there, it is only checked (ready, metadata, a smoke inference)")
            if e.plaintext:
                warnings.append(f"the link to the engine at {e.address} is plaintext (no tls.ca in the pipeline)")
            targets[stage.id] = []
            continue
        found = stage_targets(stage, nodes)
        problems += found.problems
        warnings += found.warnings
        targets[stage.id] = list(found.nodes)
    sizes = {sid: r.model_bytes for sid, r in (requirements or {}).items()}
    warnings += [words for _sid, words in placement_warnings([s for s in chain if s.endpoint is None], nodes, sizes)]
    # Fit check: all new/updated stages going to one node must fit there together. A stage's own
    # provider choice is part of what it needs, with or without its model card.
    needs = {s.id: stage_requirements(s, (requirements or {}).get(s.id)) for s in chain}
    if requirements or any(s.providers.require for s in chain):
        going: dict[str, list[Requirements]] = {}
        for stage in chain:
            req = needs[stage.id]
            if req is None:
                continue
            for node in targets[stage.id]:
                running = node.stage(stage.id)
                if running is not None and running.sha256 == stage.sha256:
                    # Same model already loaded: no new memory or power, but a new provider choice still counts.
                    light = replace(req, memory_bytes=0, model_bytes=0, watts=0.0)
                    fit = check_fit(light, node, (power_now or {}).get(node.key))
                    if not fit.fits:
                        problems.append(f"stage {stage.id} does not fit on {node.name}: {fit.reason}")
                    continue
                fit = check_fit(req, node, (power_now or {}).get(node.key), tuple(going.get(node.key, ())))
                if not fit.fits:
                    problems.append(f"stage {stage.id} does not fit on {node.name}: {fit.reason}")
                going.setdefault(node.key, []).append(req)
    actions: dict[str, list[StageAction]] = {n.key: [] for n in nodes if n.state in REACHABLE}
    for k, stage in enumerate(chain):
        following = chain[k + 1] if k + 1 < len(chain) else None
        hops = targets[following.id] if following is not None else []
        engine = following.endpoint if following is not None else None
        for i, node in enumerate(targets[stage.id]):
            hop = next_hop(i, hops)
            fields = policy_fields(stage, following, hop.address if hop else "", hop.node_id if hop else "")
            hop_address = engine.address if engine is not None else hop.address if hop else ""
            hop_node = f"endpoint:{engine.address}" if engine is not None else (hop.node_id or hop.key) if hop else ""
            version = stage_version(stage, fields)
            running = node.stage(stage.id)
            if running is None:
                kind, why = ADD, "new on this node"
            elif running.version == version:
                kind, why = UNCHANGED, "same model and policy"
            elif running.sha256 != stage.sha256:
                kind, why = UPDATE, f"model changed ({running.sha256[:8]} → {stage.sha256[:8]})"
            elif hop_address and running.next_hop != hop_address:
                was = by_address.get(running.next_hop)
                old = f"{was.name} ({was.tier})" if was is not None else (running.next_hop or "none")
                new = f"{hop.name} ({hop.tier})" if hop is not None else f"the engine at {hop_address}"
                kind, why = UPDATE, f"escalates to {new} instead of {old}"
            else:
                kind, why = UPDATE, "rule, budget or tensors changed"
            req = needs[stage.id] or Requirements(0, 0, stage_id=stage.id)
            actions.setdefault(node.key, []).append(StageAction(
                kind, stage.id, version, running.version if running else "", why,
                hop_address, hop_node, following.id if following else "",
                expected_provider(req, node.info) if node.info else ""))
    for node in nodes:
        if node.state not in REACHABLE:
            continue
        placed = {a.stage_id for a in actions.get(node.key, [])}
        earlier = (managed or {}).get(node.node_id, set())
        for running in node.stages:
            if running.stage_id in placed:
                continue
            if running.stage_id in ids:
                actions[node.key].append(StageAction(REMOVE, running.stage_id, "", running.version,
                                                     "placed on other nodes now"))
            elif running.stage_id in earlier:
                actions[node.key].append(StageAction(REMOVE, running.stage_id, "", running.version,
                                                     "no longer in the pipeline"))
            else:
                warnings.append(f"{node.name} ({node.tier}) also runs stage {running.stage_id}, which this "
                                f"pipeline does not have and did not deploy: it is left running; remove it with "
                                f"`tierdeck undeploy {running.stage_id} --node {node.name}`")
    node_plans = tuple(NodePlan(n.key, n.node_id, n.name, n.tier, n.address, tuple(actions[n.key]))
                       for n in nodes if actions.get(n.key))
    return Plan(pipeline, node_plans, tuple(problems), tuple(warnings))


# ----- applying ---------------------------------------------------------------------------------------

ProgressCallback = Callable[[DeployProgress], None]


class _StepFailed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass
class _Switched:
    node: NodePlan
    action: StageAction


def _rpc_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").split("\n")[0]
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return f"node unreachable ({details})" if details else "node unreachable"
        return f"{exc.code().name.lower()}: {details}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def smoke_inputs(stage: Stage) -> dict[str, np.ndarray]:
    """Zeros for every input of the stage, free dimensions set to 1."""
    feeds: dict[str, np.ndarray] = {}
    for spec in stage.inputs:
        shape = tuple(d if d >= 0 else 1 for d in spec.shape)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype])
    return feeds


class Deployer:
    """Applies plans; runs on the I/O loop. One deployment at a time."""

    def __init__(self, *, ledger: Any = None, on_event: Callable[[ConsoleEvent], None] | None = None,
                 refresh: Callable[[str], Any] | None = None, operator: str | None = None,
                 deploy_timeout_s: float = 120.0, rpc_timeout_s: float = 30.0, tls: ClientTLS | None = None) -> None:
        self.ledger = ledger
        self.on_event = on_event
        self.refresh = refresh
        self.operator = operator or _operator()
        self.deploy_timeout_s = deploy_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.tls = tls
        self._lock: asyncio.Lock | None = None

    async def async_apply(self, the_plan: Plan, progress: ProgressCallback | None = None,
                          deployment_id: str | None = None) -> DeployResult:
        """Apply a plan all-or-nothing; progress is reported per node and step (on the loop thread)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._apply(the_plan, progress, deployment_id or uuid.uuid4().hex[:12])

    async def _apply(self, the_plan: Plan, progress: ProgressCallback | None, dep: str) -> DeployResult:
        pipeline = the_plan.pipeline
        if not the_plan.ok:
            reason = "; ".join(the_plan.problems)
            self._event("deploy", f"deployment of {pipeline.name} refused: {reason}", Severity.ERROR)
            return DeployResult(dep, False, "refused", reason)
        if self.ledger is not None:
            self.ledger.begin_deployment(dep, pipeline.name, str(pipeline.path or ""), self.operator,
                                         socket.gethostname(), the_plan.as_json())
        self._event("deploy", f"{self.operator} deploys {pipeline.name} ({dep}) to "
                              f"{sum(1 for n in the_plan.nodes if n.changes)} node(s)", Severity.INFO,
                    detail={"deployment_id": dep})
        if not the_plan.has_changes:
            self._finish(dep, "unchanged", "everything already runs this pipeline")
            return DeployResult(dep, True, "unchanged", "everything already runs this pipeline",
                                tuple(NodeOutcome(n.node_key, n.node_id, n.name, True) for n in the_plan.nodes))

        def report(node: NodePlan, stage_id: str, step: str, status: str, message: str = "") -> None:
            event = DeployProgress(dep, node.node_key, node.node_id, node.name, stage_id, step, status, message)
            if self.ledger is not None:
                self.ledger.add_step(dep, node.node_id, stage_id, step, status, message, event.ts_ms)
            if progress is not None:
                try:
                    progress(event)
                except Exception:
                    log.exception("deploy progress callback failed")

        clients = {n.node_key: NodeClient(n.address, tls=self.tls, node_id=n.node_id)
                   for n in the_plan.nodes if n.changes}
        failures: dict[str, str] = {}
        switched: list[_Switched] = []
        try:
            models: dict[str, bytes] = {}
            loop = asyncio.get_running_loop()
            for stage in pipeline.chain():
                if stage.endpoint is not None:
                    continue
                if stage.model_path is None:
                    raise RuntimeError(f"stage {stage.id}: the pipeline has no model path (load it from a file)")
                models[stage.id] = await loop.run_in_executor(None, stage.model_path.read_bytes)
            chain = pipeline.chain()
            # Top tier first: the last stage of the chain, then the one that escalates to it, ...
            for k in range(len(chain) - 1, -1, -1):
                stage = chain[k]
                following = chain[k + 1] if k + 1 < len(chain) else None
                if stage.endpoint is not None:
                    try:
                        await self._check_endpoint(stage, chain[k - 1] if k else None, report)
                    except _StepFailed as exc:
                        failures[f"endpoint:{stage.endpoint.address}"] = f"{stage.id}: {exc.step}: {exc.message}"
                        break
                    continue
                work = [(n, a) for n in the_plan.nodes for a in n.changes
                        if a.stage_id == stage.id and a.kind in (ADD, UPDATE)]
                results = await asyncio.gather(*(
                    self._push(clients[n.node_key], n, a, stage, following, models[stage.id], report)
                    for n, a in work), return_exceptions=True)
                for (n, a), res in zip(work, results, strict=True):
                    if isinstance(res, BaseException):
                        if isinstance(res, asyncio.CancelledError):
                            raise res
                        failures[n.node_key] = _reason(stage.id, res)
                        if isinstance(res, _StepFailed) and res.step == "verify":
                            switched.append(_Switched(n, a))  # activated, then failed to verify: undo it
                    else:
                        switched.append(_Switched(n, a))
                if failures:
                    break
            if not failures:
                removals = [(n, a) for n in the_plan.nodes for a in n.changes if a.kind == REMOVE]
                results = await asyncio.gather(*(self._remove(clients[n.node_key], n, a, report)
                                                 for n, a in removals), return_exceptions=True)
                for (n, a), res in zip(removals, results, strict=True):
                    if isinstance(res, BaseException):
                        failures[n.node_key] = _reason(a.stage_id, res)
        except Exception as exc:  # reading model files, or a bug: roll back what was switched
            log.exception("deployment %s failed", dep)
            failures.setdefault("", f"{type(exc).__name__}: {exc}")
        rolled: dict[str, list[str]] = {}
        rollback_failed: dict[str, list[str]] = {}
        rollback_reasons: dict[str, list[str]] = {}
        try:
            if failures:
                for item in reversed(switched):  # bottom tier first: nothing escalates into a stage being undone
                    n, a = item.node, item.action
                    try:
                        await self._undo(clients[n.node_key], n, a, report)
                        rolled.setdefault(n.node_key, []).append(a.stage_id)
                    except Exception as exc:
                        rollback_failed.setdefault(n.node_key, []).append(a.stage_id)
                        rollback_reasons.setdefault(n.node_key, []).append(
                            f"rollback of {a.stage_id} failed: {_reason(a.stage_id, exc)}")
        finally:
            await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
            if self.refresh is not None:
                await asyncio.gather(*(self.refresh(n.node_key) for n in the_plan.nodes if n.changes),
                                     return_exceptions=True)
        outcomes = []
        for n in the_plan.nodes:
            reasons = [failures[n.node_key]] if n.node_key in failures else []
            reasons += rollback_reasons.get(n.node_key, [])
            if failures and n.node_key not in failures and n.node_key in rolled:
                reasons.insert(0, f"rolled back because {_first_failure(failures, the_plan)}")
            outcomes.append(NodeOutcome(n.node_key, n.node_id, n.name, not reasons, "; ".join(reasons),
                                        tuple(rolled.get(n.node_key, ())), tuple(rollback_failed.get(n.node_key, ()))))
        if not failures:
            self._finish(dep, "succeeded", "")
            self._event("deploy", f"deployment {dep} of {pipeline.name} succeeded", Severity.INFO,
                        detail={"deployment_id": dep})
            return DeployResult(dep, True, "succeeded", "", tuple(outcomes))
        reason = _first_failure(failures, the_plan)
        status = "rollback_failed" if rollback_failed else "rolled_back" if switched else "failed"
        self._finish(dep, status, reason)
        self._event("deploy", f"deployment {dep} of {pipeline.name} failed and was "
                              f"{'partly ' if rollback_failed else ''}rolled back: {reason}", Severity.ERROR,
                    detail={"deployment_id": dep, "nodes": {o.name: o.reason for o in outcomes if o.reason}})
        return DeployResult(dep, False, status, reason, tuple(outcomes))

    def _finish(self, dep: str, status: str, reason: str) -> None:
        if self.ledger is not None:
            self.ledger.finish_deployment(dep, status, reason)

    def _event(self, kind: str, message: str, severity: Severity, node_id: str = "",
               detail: dict[str, Any] | None = None) -> None:
        if self.on_event is not None:
            self.on_event(ConsoleEvent(kind, message, severity, node_id, detail or {}))

    async def _check_endpoint(self, stage: Stage, before: Stage | None, report: Callable[..., None]) -> None:
        """An engine tierdeck does not run: ready, its metadata fits what the stage before it sends, and it
        answers a smoke inference. Nothing is uploaded; a mismatch is refused here, never at run time."""
        assert stage.endpoint is not None
        e = stage.endpoint
        node = NodePlan(f"endpoint:{e.address}", "", f"{stage.id} @ {e.address}", stage.placement.tier or "",
                        e.address, ())
        report(node, stage.id, "verify", "started", f"engine at {e.address}, model {e.model}: nothing uploaded")
        tls = ClientTLS(e.ca_pem, e.key_pem, e.cert_pem) if e.ca_pem else None
        try:
            async with NodeClient(e.address, tls=tls, external=True) as client:
                try:
                    ready = (await client.inference.ServerReady(pb.ServerReadyRequest(), timeout=self.rpc_timeout_s)
                             ).ready
                    if not ready:
                        raise _StepFailed("verify", f"the engine at {e.address} is not ready")
                    model_ready = (await client.inference.ModelReady(
                        pb.ModelReadyRequest(name=e.model, version=e.version), timeout=self.rpc_timeout_s)).ready
                    if not model_ready:
                        raise _StepFailed("verify", f"model {e.model!r} is not ready on the engine at {e.address}")
                    meta = await client.inference.ModelMetadata(
                        pb.ModelMetadataRequest(name=e.model, version=e.version), timeout=self.rpc_timeout_s)
                    server = await client.inference.ServerMetadata(pb.ServerMetadataRequest(),
                                                                   timeout=self.rpc_timeout_s)
                except grpc.aio.AioRpcError as exc:
                    raise _StepFailed("verify", f"the engine at {e.address}: {_rpc_error(exc)}") from exc
                differences = endpoint_differences(stage, before, meta)
                if differences:
                    raise _StepFailed("verify", "the engine's metadata does not fit the pipeline: "
                                                + "; ".join(differences))
                try:
                    feeds = smoke_inputs(stage)
                    request = infer_request(e.model, list(feeds.items()))
                    request.model_version = e.version
                    result = infer_result(await client.inference.ModelInfer(request, timeout=self.rpc_timeout_s))
                except grpc.aio.AioRpcError as exc:
                    raise _StepFailed("verify", f"smoke inference on the engine: {_rpc_error(exc)}") from exc
                if stage.rule.output and result.outputs and stage.rule.output not in result.outputs:
                    raise _StepFailed("verify", f"the engine answered without output {stage.rule.output!r} "
                                                f"(it sent {', '.join(result.outputs)})")
        except _StepFailed as exc:
            report(node, stage.id, "verify", "failed", exc.message)
            raise
        said = "lists no tensors: the pipeline's are used" if not meta.inputs else "metadata matches"
        report(node, stage.id, "verify", "done",
               f"{server.name or 'engine'} {server.version}: ready, {said}, smoke inference answered")

    async def _push(self, client: NodeClient, node: NodePlan, action: StageAction, stage: Stage,
                    following: Stage | None, model: bytes, report: Callable[..., None]) -> None:
        """Upload, activate and verify one stage on one node."""
        fields = policy_fields(stage, following, action.next_hop,
                               action.next_node if not action.next_node.startswith("addr:") else "")
        manifest = manifest_for(stage.id, model, action.version, **fields)
        if manifest.sha256 != stage.sha256:
            raise _StepFailed("upload", f"model file {stage.model} changed since the plan "
                                        f"(sha256 {manifest.sha256[:12]}, pipeline says {stage.sha256[:12]})")
        report(node, stage.id, "upload", "started", f"{len(model)} bytes, version {action.version}")
        try:
            info = await client.deploy(manifest, model, timeout=self.deploy_timeout_s)
        except DeployError as exc:
            step = "upload" if exc.step in ("receive", "verify") else "activate"
            report(node, stage.id, step, "failed", f"node refused at {exc.step}: {exc.message}")
            raise _StepFailed(step, f"node refused at {exc.step}: {exc.message}") from exc
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            report(node, stage.id, "upload", "failed", _rpc_error(exc))
            raise _StepFailed("upload", _rpc_error(exc)) from exc
        report(node, stage.id, "upload", "done", "checksum verified by the node")
        hop = f", next hop {action.next_hop}" if action.next_hop else ""
        report(node, stage.id, "activate", "done", f"version {info.manifest.version} serving{hop}")
        report(node, stage.id, "verify", "started")
        try:
            ready = await client.inference.ModelReady(
                pb.ModelReadyRequest(name=stage.id, version=action.version), timeout=self.rpc_timeout_s)
            if not ready.ready:
                raise _StepFailed("verify", f"ModelReady says version {action.version} is not ready")
            if not await client.healthy(f"stage/{stage.id}", timeout=self.rpc_timeout_s):
                raise _StepFailed("verify", f"health of stage/{stage.id} is not SERVING")
            request = infer_request(stage.id, smoke_inputs(stage))
            request.parameters[SMOKE].bool_param = True  # kept out of the stage's counts by the agent
            result = infer_result(await client.inference.ModelInfer(request, timeout=self.rpc_timeout_s))
        except _StepFailed as exc:
            report(node, stage.id, "verify", "failed", exc.message)
            raise
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            report(node, stage.id, "verify", "failed", f"smoke inference: {_rpc_error(exc)}")
            raise _StepFailed("verify", f"smoke inference: {_rpc_error(exc)}") from exc
        decided = str(result.parameters.get("tierdeck.decided_by", stage.id))
        final = bool(result.parameters.get("tierdeck.final", True))
        if not final and following is not None and stage.budget.max_escalations_per_s == 0:
            message = f"smoke inference came back provisional: next hop {action.next_hop} did not answer"
            report(node, stage.id, "verify", "failed", message)
            raise _StepFailed("verify", message)
        report(node, stage.id, "verify", "done", f"ModelReady, health SERVING, smoke inference decided by {decided}")

    async def _remove(self, client: NodeClient, node: NodePlan, action: StageAction,
                      report: Callable[..., None]) -> None:
        report(node, action.stage_id, "remove", "started", action.reason)
        try:
            await client.undeploy(action.stage_id, timeout=self.rpc_timeout_s)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            report(node, action.stage_id, "remove", "failed", _rpc_error(exc))
            raise _StepFailed("remove", _rpc_error(exc)) from exc
        report(node, action.stage_id, "remove", "done", f"version {action.running_version} removed")

    async def _undo(self, client: NodeClient, node: NodePlan, action: StageAction,
                    report: Callable[..., None]) -> None:
        """Put back what ran before: Rollback to the previous version, or Undeploy a new stage."""
        if action.kind == UPDATE:
            report(node, action.stage_id, "rollback", "started", f"back to version {action.running_version}")
            try:
                info = await client.rollback(action.stage_id, timeout=self.rpc_timeout_s)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                report(node, action.stage_id, "rollback", "failed", _rpc_error(exc))
                raise
            if info.manifest.version != action.running_version:
                message = f"node now runs {info.manifest.version}, expected {action.running_version}"
                report(node, action.stage_id, "rollback", "failed", message)
                raise RuntimeError(message)
            report(node, action.stage_id, "rollback", "done", f"version {action.running_version} restored")
        else:
            report(node, action.stage_id, "undeploy", "started", "stage was new on this node")
            try:
                await client.undeploy(action.stage_id, timeout=self.rpc_timeout_s)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                report(node, action.stage_id, "undeploy", "failed", _rpc_error(exc))
                raise
            report(node, action.stage_id, "undeploy", "done", "new stage removed")


def _reason(stage_id: str, exc: BaseException) -> str:
    if isinstance(exc, _StepFailed):
        return f"stage {stage_id}: {exc.step} failed: {exc.message}"
    if isinstance(exc, grpc.aio.AioRpcError | TimeoutError):
        return f"stage {stage_id}: {_rpc_error(exc)}"
    return f"stage {stage_id}: {type(exc).__name__}: {exc}"


def _first_failure(failures: dict[str, str], the_plan: Plan) -> str:
    key, reason = next(iter(failures.items()))
    node = the_plan.node(key) if key else None
    return f"{node.name}: {reason}" if node is not None else reason


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "operator"


def endpoint_differences(stage: Stage, before: Stage | None, meta: pb.ModelMetadataResponse) -> list[str]:
    """How an engine's ModelMetadata disagrees with the endpoint stage and what the stage before it sends
    (empty when it fits). An engine that lists no tensors is taken at the pipeline's word."""
    out: list[str] = []
    sent = list(before.inputs) if before is not None else list(stage.inputs)
    if meta.inputs:
        if len(meta.inputs) != len(sent):
            out.append(f"it takes {len(meta.inputs)} inputs ({', '.join(t.name for t in meta.inputs)}), the stage "
                       f"before it escalates {len(sent)} ({', '.join(t.name for t in sent)})")
        for mine, theirs in zip(sent, meta.inputs, strict=False):
            if mine.datatype != theirs.datatype:
                out.append(f"input {theirs.name!r} is {theirs.datatype} there, {mine.datatype} here")
            if not _shapes_fit(list(mine.shape), list(theirs.shape)):
                out.append(f"input {theirs.name!r} has shape {list(theirs.shape)} there, {list(mine.shape)} here")
    if meta.outputs:
        found = {t.name: t for t in meta.outputs}
        wanted = stage.rule.output or stage.outputs[0].name
        if wanted not in found:
            out.append(f"it has no output {wanted!r} (outputs: {', '.join(found)})")
        else:
            theirs = found[wanted]
            labels = len(stage.rule.labels)
            if labels and theirs.shape and theirs.shape[-1] > 0 and theirs.shape[-1] != labels:
                out.append(f"output {wanted!r} has {theirs.shape[-1]} classes there, the pipeline names {labels}")
            if theirs.datatype in ("BYTES", "BOOL"):
                out.append(f"output {wanted!r} is {theirs.datatype}, not class scores")
    return out


def _shapes_fit(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x < 0 or y < 0 or x == y for x, y in zip(a, b, strict=True))


def stage_requirements(stage: Stage, req: Requirements | None) -> Requirements | None:
    """`req` (from the model card) plus the stage's provider choice; a bare one when only the choice is known."""
    choice = stage.providers
    if req is None:
        return Requirements(0, 0, stage_id=stage.id).with_choice(choice.require, choice.prefer) \
            if choice.require else None
    return req.with_choice(choice.require, choice.prefer) if choice else req


def requirements_for(pipeline: Pipeline) -> dict[str, Requirements]:
    """Fit-check requirements of each stage from its model file (blocking: reads the files)."""
    from app._fit import read_model_card

    out: dict[str, Requirements] = {}
    for stage in pipeline.stages:
        if stage.model_path is None:
            continue
        path = Path(stage.model_path)
        try:
            card = read_model_card(path)
        except Exception as exc:  # an unreadable model fails later with its own message; size is enough here
            log.warning("fit check of stage %s uses the file size only: %s", stage.id, exc)
            size = path.stat().st_size
            out[stage.id] = Requirements(memory_estimate(size), size, stage_id=stage.id)
            continue
        out[stage.id] = Requirements.from_card(card, stage.id)
    return out
