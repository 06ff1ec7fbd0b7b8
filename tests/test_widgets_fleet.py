"""The fleet panel on real agents: tiers, state and for how long, insecure nodes marked, filters, add, forget,
details, offline with its reason; enrolment of a real unenrolled node through the dialog."""

from __future__ import annotations

import signal
from pathlib import Path

from agents import start_agent
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox
from pytestqt.qtbot import QtBot
from test_app_support import started_core
from test_widgets_support import assert_not_blank, live_console, save_screenshot, wait_online

from app.core import NodeState, make_enroller
from app.fleet_ca import FleetCA
from app.qt import QtConsole
from widgets import AddNodeDialog, EnrollDialog, NodeDetailDialog
from widgets._fleet_panel import KEY_ROLE, TIER_ROLE

AGENTS = {"device-1": ("device", ()), "device-2": ("device", ()), "edge-1": ("edge", ())}


def shown_keys(panel: object) -> list[str]:
    proxy = panel.proxy  # type: ignore[attr-defined]
    keys = []
    for r in range(proxy.rowCount()):
        tier = proxy.index(r, 0)
        keys += [proxy.index(c, 0, tier).data(KEY_ROLE) for c in range(proxy.rowCount(tier))]
    return keys


def test_fleet_panel_groups_by_tier_and_marks_state_and_insecure_nodes(tmp_path: Path, qtbot: QtBot) -> None:
    extra = start_agent(tmp_path / "cloud-1", tier="cloud", name="cloud-1")
    try:
        with live_console(tmp_path, AGENTS) as live:
            wait_online(qtbot, live.console, 3)
            window = live.window(qtbot)
            panel = window.fleet_panel
            fleet = live.console.fleet
            tiers = [panel.proxy.index(r, 0).data(TIER_ROLE) for r in range(panel.proxy.rowCount())]
            assert tiers == ["device", "edge"]
            ids = {name: a.node_id for name, a in live.agents.items()}
            qtbot.waitUntil(lambda: all(live.console.telemetry.latest(i) is not None for i in ids.values()),
                            timeout=20_000)
            for name, node_id in ids.items():
                text = panel.row_text(node_id)
                # state in words (and for how long), insecure as words next to its icon, hardware, power and source
                assert f"{name} [online]" in text and "INSECURE" in text and "online for" in text
                assert "cores" in text and "CPU" in text and " W (" in text
            assert "3 nodes · 3 online · 3 insecure" in panel.summary.text()
            assert_not_blank(save_screenshot(window, tmp_path, "main-window-fleet"))

            # filters: words and states
            panel.search.setText("edge")
            assert shown_keys(panel) == [ids["edge-1"]]
            panel.search.setText("")
            panel.state_filter.setCurrentText("Offline")
            assert shown_keys(panel) == []
            panel.state_filter.setCurrentText("Insecure")
            assert sorted(shown_keys(panel)) == sorted(ids.values())
            panel.state_filter.setCurrentText("All nodes")

            # add a node by address, through the dialog (it stays open until the core took the address)
            dialog = window.add_node_dialog()
            assert isinstance(dialog, AddNodeDialog) and dialog.isVisible()
            dialog.address.setText("not an address")
            assert not dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
            assert "HOST:PORT" in dialog.message.text()
            dialog.address.setText(extra.address)
            with qtbot.waitSignal(dialog.node_added, timeout=10_000):
                qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: fleet.node(extra.node_id) is not None
                            and fleet.node(extra.node_id).state == NodeState.ONLINE, timeout=30_000)  # type: ignore[union-attr]
            qtbot.waitUntil(lambda: "cloud" in [panel.proxy.index(r, 0).data(TIER_ROLE)
                                                for r in range(panel.proxy.rowCount())], timeout=10_000)

            # details of a node: info, stages, recent events
            details = window.node_details(extra.node_id)
            assert isinstance(details, NodeDetailDialog) and details.isVisible()
            assert "cloud-1" in details.header.text() and "INSECURE" in details.header.text()
            assert "Address: " + extra.address in details.info.text()
            qtbot.waitUntil(lambda: details.recent.rowCount() > 0, timeout=10_000)
            details.accept()

            # an agent dies: the panel says offline, for how long, and why
            live.agents["device-2"].stop(signal.SIGKILL)
            qtbot.waitUntil(lambda: fleet.node(ids["device-2"]).state == NodeState.OFFLINE, timeout=60_000)  # type: ignore[union-attr]
            text = panel.row_text(ids["device-2"])
            assert "[offline]" in text and "offline for" in text and ":" in text.split("|")[1]
            panel.state_filter.setCurrentText("Needs attention")
            assert shown_keys(panel) == [ids["device-2"]]
            panel.state_filter.setCurrentText("All nodes")
            assert_not_blank(save_screenshot(window, tmp_path, "main-window-offline-node"))

            # forget it: asked first, then gone
            panel.select(ids["device-2"])
            box = window.confirm_forget(ids["device-2"])
            assert isinstance(box, QMessageBox) and box.isVisible()
            with qtbot.waitSignal(fleet.node_removed, timeout=10_000):
                box.button(QMessageBox.StandardButton.Yes).click()
            assert ids["device-2"] not in shown_keys(panel)
    finally:
        extra.stop()


def test_enrol_an_unenrolled_node_with_its_pairing_code(tmp_path: Path, qtbot: QtBot) -> None:
    ca_dir = tmp_path / "fleet"
    FleetCA.init(ca_dir)
    agent = start_agent(tmp_path / "node", tier="edge", name="gate-1", secure=True)
    try:
        code = str(agent.extra["pairing_code"])
        with started_core(tmp_path / "console.sqlite") as core:
            console = QtConsole(core)
            try:
                dialog = EnrollDialog(make_enroller(core, ca_dir))
                qtbot.addWidget(dialog)
                dialog.open()
                dialog.address.setText(agent.address)
                dialog.code.setText("0000-0000-0000-0000")
                with qtbot.waitSignal(dialog._dispatcher.posted, timeout=30_000):
                    dialog.enroll_button.click()
                qtbot.waitUntil(lambda: "Enrolment failed" in dialog.message.text(), timeout=5_000)
                assert "does not know this pairing code" in dialog.message.text()
                assert dialog.message.property("banner") == "error"
                dialog.code.setText(code.lower())
                with qtbot.waitSignal(dialog.enrolled, timeout=30_000) as done:
                    dialog.enroll_button.click()
                assert "Enrolled gate-1" in done.args[0] and dialog.message.property("banner") == "ok"
                assert FleetCA(ca_dir).node(agent.node_id) is not None, "the CA recorded the enrolment"
                assert_not_blank(save_screenshot(dialog, tmp_path, "enroll-dialog"), min_colours=10)
            finally:
                console.close()
    finally:
        agent.stop()


def test_enrol_without_a_fleet_ca_says_what_to_do(qtbot: QtBot) -> None:
    dialog = EnrollDialog(None)
    qtbot.addWidget(dialog)
    dialog.open()
    assert not dialog.enroll_button.isEnabled()
    assert "tierdeck fleet enroll" in dialog.message.text()
