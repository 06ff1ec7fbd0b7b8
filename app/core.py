"""The console core's public surface (no Qt): import from here, not from the private modules.

    from app.core import ConsoleCore, NodeState, plan, check_fit

Qt adapters over the same core live in `app.qt`.
"""

from __future__ import annotations

from app._console import ConsoleCore
from app._db import (
    Database,
    Retention,
    default_db_path,
    deployment_rows,
    event_rows,
    history,
    last_positions,
    rollup_rows,
    telemetry_rows,
)
from app._deployer import (
    ADD,
    REMOVE,
    UNCHANGED,
    UPDATE,
    Deployer,
    DeployProgress,
    DeployResult,
    NodeOutcome,
    NodePlan,
    Plan,
    StageAction,
    plan,
    requirements_for,
)
from app._document import (
    DocumentChange,
    Edit,
    InsertStage,
    MoveStage,
    PipelineDocument,
    RemoveStage,
    SetBudget,
    SetPlacement,
    SetRule,
    open_document,
    save_document,
    stage_from_card,
)
from app._fit import (
    MEMORY_FACTOR,
    FitResult,
    ModelCard,
    Requirements,
    TensorInfo,
    check_fit,
    memory_estimate,
    read_model_card,
)
from app._fleet import Fleet
from app._loop import IoLoop
from app._records import (
    ConsoleEvent,
    FleetEvent,
    FleetEventKind,
    NodeInfoSummary,
    NodeSample,
    NodeSnapshot,
    NodeState,
    Severity,
    StageSample,
    StageSnapshot,
)
from app._telemetry import NODE_COLUMNS, STAGE_COLUMNS, LiveTelemetry, RingBuffer, SampleAcceptor
from app._wiring import Enroller, PolicyPusher, bundled_models, make_enroller, make_policy_pusher

__all__ = [
    "ADD", "MEMORY_FACTOR", "NODE_COLUMNS", "REMOVE", "STAGE_COLUMNS", "UNCHANGED", "UPDATE", "ConsoleCore",
    "ConsoleEvent", "Database", "DeployProgress", "DeployResult", "Deployer", "DocumentChange", "Edit", "Enroller",
    "FitResult", "Fleet", "FleetEvent", "FleetEventKind", "InsertStage", "IoLoop", "LiveTelemetry", "ModelCard",
    "MoveStage", "NodeInfoSummary", "NodeOutcome", "NodePlan", "NodeSample", "NodeSnapshot", "NodeState",
    "PipelineDocument", "Plan", "PolicyPusher", "RemoveStage", "Requirements", "Retention", "RingBuffer",
    "SampleAcceptor", "SetBudget", "SetPlacement", "SetRule", "Severity", "StageAction", "StageSample",
    "StageSnapshot", "TensorInfo", "bundled_models", "check_fit", "default_db_path", "deployment_rows",
    "event_rows", "history", "last_positions", "make_enroller", "make_policy_pusher", "memory_estimate",
    "open_document", "plan", "read_model_card", "requirements_for", "rollup_rows", "save_document", "stage_from_card",
    "telemetry_rows",
]
