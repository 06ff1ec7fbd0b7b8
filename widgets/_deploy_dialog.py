"""The deploy dialog: the plan as a diff per node, then per-node progress, then the result and any rollback.

Opened with `open()` (never a nested event loop). It asks the deployment model for a plan of the
pipeline it was given; the plan arrives as `plan_ready`. "Deploy" applies it; progress arrives per
node and step (upload, activate, verify; rollback/undeploy when undoing), and the result says, per
node, what happened, why it failed, and which stages the rollback restored or removed. Each status
is an icon with its own shape plus words.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QBrush, QColor, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core import ADD, REMOVE, UNCHANGED, UPDATE, DeployProgress, DeployResult, Plan
from app.pipeline_file import Pipeline
from app.qt import DeploymentModel
from widgets import _format as fmt
from widgets import _theme as theme

KIND_WORDS = {ADD: ("+", "add"), UPDATE: ("~", "update"), REMOVE: ("−", "remove"), UNCHANGED: ("=", "unchanged")}
KIND_COLOURS = {ADD: theme.OK, UPDATE: theme.WARN, REMOVE: theme.BAD, UNCHANGED: theme.MUTED}
STEPS = ("upload", "activate", "verify")
STATUS_ICONS = {"started": "running", "done": "state-online", "failed": "state-offline"}


class DeployDialog(QDialog):
    """Plan → progress → result for one pipeline; rollback shown per node."""

    def __init__(self, deployments: DeploymentModel, pipeline: Pipeline, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Deploy {pipeline.name}")
        self.resize(860, 560)
        self.deployments = deployments
        self.pipeline = pipeline
        self.plan: Plan | None = None
        self.deploy_result: DeployResult | None = None
        self.deployment_id = ""
        self.phase = "planning"
        self._node_items: dict[str, QTreeWidgetItem] = {}
        self._step_items: dict[tuple[str, str, str], QTreeWidgetItem] = {}

        self.heading = QLabel(self)
        self.heading.setFont(theme.scaled_font(self.font(), 1.25, bold=True))
        self.heading.setWordWrap(True)
        self.banner = QLabel(self)
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.tree = QTreeWidget(self)
        self.tree.setColumnCount(3)
        self.tree.setHeaderLabels(["Node / stage", "What", "Details"])
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.tree.setAccessibleName("Deployment plan and progress")
        self.tree.setUniformRowHeights(True)
        self.buttons = QDialogButtonBox(self)
        self.deploy_button = QPushButton("&Deploy", self)
        self.deploy_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.deploy_button.setToolTip("Apply the plan, all or nothing (Ctrl+Enter)")
        self.replan_button = QPushButton("Re-&plan", self)
        self.replan_button.setToolTip("Plan again against the fleet as it is now")
        self.close_button = QPushButton("&Close", self)
        self.buttons.addButton(self.deploy_button, QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton(self.replan_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.buttons.addButton(self.close_button, QDialogButtonBox.ButtonRole.RejectRole)
        self.deploy_button.setDefault(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addWidget(self.banner)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.buttons)

        self.deploy_button.clicked.connect(self.deploy)
        self.replan_button.clicked.connect(self.replan)
        self.close_button.clicked.connect(self.reject)
        deployments.plan_ready.connect(self._planned)
        deployments.plan_failed.connect(self._plan_failed)
        deployments.progress_reported.connect(self._progress)
        deployments.deployment_finished.connect(self._finished)
        deployments.deployment_failed.connect(self._apply_failed)
        deployments.busy_changed.connect(self._busy)
        self.replan()

    # ----- banner ------------------------------------------------------------------------------------------
    def _banner(self, kind: str, text: str) -> None:
        self.banner.setProperty("banner", kind)
        self.banner.style().unpolish(self.banner)
        self.banner.style().polish(self.banner)
        self.banner.setText(text)
        self.banner.setVisible(bool(text))
        layout = self.layout()
        if layout is not None:
            layout.activate()   # grow the banner now, not at the next layout pass

    def banner_text(self) -> str:
        """What the banner says (for tests and screen readers)."""
        return self.banner.text() if self.banner.isVisible() else ""

    # ----- planning -----------------------------------------------------------------------------------------
    @Slot()
    def replan(self) -> None:
        """Ask for a fresh plan."""
        if self.deployments.busy:
            return
        self.phase = "planning"
        self.plan = None
        self.heading.setText(f"Planning {self.pipeline.name} onto the fleet…")
        self._banner("info", "Checking every placement against the fleet (memory, providers, power) and diffing "
                             "against what runs now.")
        self.tree.clear()
        self._node_items.clear()
        self._step_items.clear()
        self.deploy_button.setEnabled(False)
        self.deployments.plan(self.pipeline)

    @Slot(object)
    def _planned(self, plan: Plan) -> None:
        if self.phase != "planning" or plan.pipeline.name != self.pipeline.name:
            return
        self.plan = plan
        self.phase = "planned"
        self.tree.clear()
        self._node_items.clear()
        changes = sum(len(n.changes) for n in plan.nodes)
        self.heading.setText(f"Plan for {plan.pipeline.name}: {changes} change{'s' if changes != 1 else ''} on "
                             f"{sum(1 for n in plan.nodes if n.changes)} of {len(plan.nodes)} node(s)")
        order = {t: i for i, t in enumerate(theme.TIERS)}
        names = {n.node_id: f"{n.name} ({n.tier})" for n in plan.nodes if n.node_id}
        for node in sorted(plan.nodes, key=lambda n: (order.get(n.tier, 9), n.name.lower())):
            item = QTreeWidgetItem([f"{node.name} ({node.tier})", "", node.address])
            item.setIcon(0, theme.icon(f"tier-{node.tier}") if node.tier in theme.TIERS else theme.icon("stage"))
            self.tree.addTopLevelItem(item)
            self._node_items[node.node_key] = item
            for action in node.actions:
                sign, word = KIND_WORDS.get(action.kind, ("?", action.kind))
                detail = action.reason
                if action.provider:
                    detail += f" · runs on {fmt.providers((action.provider,))}"
                if action.next_hop:
                    hop = names.get(action.next_node)
                    detail += (f" · escalates to {action.next_model} on {hop}" if hop else
                               f" · escalates to {action.next_model} at {action.next_hop}")
                tip = detail + (f"\nversion {action.running_version or '—'} → {action.version}" if action.version
                                else "") + (f"\nnext hop address {action.next_hop}" if action.next_hop else "")
                child = QTreeWidgetItem([f"{sign} {action.stage_id}", word, detail])
                child.setToolTip(2, tip)
                child.setForeground(1, QBrush(QColor(KIND_COLOURS.get(action.kind, theme.MUTED))))
                item.addChild(child)
            item.setExpanded(True)
        messages = [f"✖ {p}" for p in plan.problems] + [f"⚠ {w}" for w in plan.warnings]
        if plan.problems:
            self._banner("error", "This plan cannot be deployed:\n" + "\n".join(messages))
        elif plan.warnings:
            self._banner("warning", "\n".join(messages))
        elif not plan.has_changes:
            self._banner("ok", "✔ Everything already runs this pipeline: nothing to deploy.")
        else:
            self._banner("", "")
        self.deploy_button.setEnabled(plan.ok and plan.has_changes and not self.deployments.busy)
        if self.deploy_button.isEnabled():
            self.deploy_button.setFocus()

    @Slot(str)
    def _plan_failed(self, reason: str) -> None:
        if self.phase != "planning":
            return
        self.phase = "planned"
        self.heading.setText(f"Could not plan {self.pipeline.name}")
        self._banner("error", f"✖ {reason}")

    # ----- applying -------------------------------------------------------------------------------------------
    @Slot()
    def deploy(self) -> None:
        """Apply the plan shown."""
        if self.plan is None or not self.plan.ok or self.phase != "planned":
            return
        if not self.deployments.apply(self.plan):
            self._banner("warning", "⚠ Another deployment is running; wait for it to finish.")
            return
        self.phase = "deploying"
        self.deployment_id = ""
        self.deploy_button.setEnabled(False)
        self.replan_button.setEnabled(False)
        self.heading.setText(f"Deploying {self.plan.pipeline.name}… (top tier first; all or nothing)")
        self._banner("info", "Upload → activate → verify on every node; if any node fails, every node already "
                             "switched is rolled back.")
        for node_item in self._node_items.values():
            node_item.setText(1, "waiting")
            node_item.setIcon(1, theme.icon("pending"))

    def _step_item(self, p: DeployProgress) -> QTreeWidgetItem:
        key = (p.node_key, p.stage_id, p.step)
        item = self._step_items.get(key)
        if item is None:
            parent = self._node_items.get(p.node_key)
            if parent is None:
                parent = QTreeWidgetItem([p.node_name, "", ""])
                self.tree.addTopLevelItem(parent)
                self._node_items[p.node_key] = parent
            item = QTreeWidgetItem([f"  {p.stage_id}: {p.step}", "", ""])
            parent.addChild(item)
            parent.setExpanded(True)
            self._step_items[key] = item
        return item

    @Slot(object)
    def _progress(self, p: DeployProgress) -> None:
        if self.phase != "deploying":
            return
        if not self.deployment_id:
            self.deployment_id = p.deployment_id
        if p.deployment_id != self.deployment_id:
            return
        item = self._step_item(p)
        undoing = p.step in ("rollback", "undeploy")
        icon = "rollback" if undoing and p.status == "done" else STATUS_ICONS.get(p.status, "pending")
        words = {"started": "in progress", "done": "done", "failed": "FAILED"}.get(p.status, p.status)
        if undoing and p.status == "done":
            words = "rolled back" if p.step == "rollback" else "removed again"
        item.setIcon(1, theme.icon(icon))
        item.setText(1, words)
        item.setText(2, p.message)
        item.setToolTip(2, p.message)
        parent = self._node_items.get(p.node_key)
        if parent is not None:
            parent.setIcon(1, theme.icon(icon))
            parent.setText(1, f"{p.stage_id}: {p.step} {words}")
        self.tree.scrollToItem(item)

    @Slot(object)
    def _finished(self, result: DeployResult) -> None:
        if self.phase != "deploying" or (self.deployment_id and result.deployment_id != self.deployment_id):
            return
        self.deploy_result = result
        self.phase = "done"
        self.replan_button.setEnabled(True)
        for outcome in result.nodes:
            item = self._node_items.get(outcome.node_key)
            if item is None:
                continue
            if outcome.ok:
                item.setIcon(1, theme.icon("state-online"))
                item.setText(1, "succeeded")
                item.setText(2, "")
                continue
            restored = ", ".join(outcome.rolled_back)
            failed_rb = ", ".join(outcome.rollback_failed)
            what = "FAILED" if outcome.reason and not outcome.reason.startswith("rolled back") else "ROLLED BACK"
            item.setIcon(1, theme.icon("rollback" if what == "ROLLED BACK" else "state-offline"))
            item.setText(1, what)
            detail = outcome.reason
            if restored:
                detail += f" · rollback restored/removed: {restored}"
            if failed_rb:
                detail += f" · ROLLBACK FAILED for {failed_rb}"
            item.setText(2, detail)
            item.setToolTip(2, detail)
        if result.ok:
            self.heading.setText(f"Deployed {self.pipeline.name}")
            self._banner("ok", f"✔ Deployment {result.deployment_id} {result.status}: every node verified.")
        else:
            words = {"rolled_back": "failed and was rolled back",
                     "rollback_failed": "failed, and the rollback failed too",
                     "refused": "was refused", "failed": "failed"}.get(result.status, result.status)
            lines = [f"✖ Deployment {result.deployment_id} {words}.", f"Cause: {result.reason}"]
            rolled = [o for o in result.nodes if o.rolled_back]
            if rolled:
                lines.append("↶ Rolled back: " + "; ".join(f"{o.name} ({', '.join(o.rolled_back)})" for o in rolled)
                             + ".")
            broken = [o for o in result.nodes if o.rollback_failed]
            if broken:
                lines.append("✖ ROLLBACK FAILED: " + "; ".join(f"{o.name} ({', '.join(o.rollback_failed)})"
                                                               for o in broken) + " — check these nodes.")
            elif result.status == "rolled_back":
                lines.append("Every node that had switched was rolled back: the fleet runs what it ran before.")
            self.heading.setText(f"Deployment of {self.pipeline.name} failed")
            self._banner("error", "\n".join(lines))
        self.close_button.setFocus()

    @Slot(str)
    def _apply_failed(self, reason: str) -> None:
        if self.phase != "deploying":
            return
        self.phase = "done"
        self.replan_button.setEnabled(True)
        self.heading.setText("The deployment could not run")
        self._banner("error", f"✖ {reason}")

    @Slot(bool)
    def _busy(self, busy: bool) -> None:
        if self.phase == "planned":
            self.deploy_button.setEnabled(not busy and self.plan is not None and self.plan.ok
                                          and self.plan.has_changes)

    def reject(self) -> None:
        """Close (a running deployment goes on; its result lands in the event log)."""
        super().reject()

    def node_status(self, name: str) -> tuple[str, str]:
        """(what, details) shown for a node row (for tests and screen readers)."""
        for item in self._node_items.values():
            if item.text(0).split(" (")[0] == name:
                return item.text(1), item.text(2)
        return "", ""
