"""The hard-example gallery (offscreen) on the ship-finder models in three real agents: thumbnails, filters, the
detail pane's stages, and an export whose inputs and labels are what the gallery showed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication, QLabel
from pytestqt.qtbot import QtBot
from test_app_support import started_core, three_agents, wait_nodes, wait_until

from app._demo import PIPELINE
from app._hard_examples import HardRow
from app.gallery import GalleryModel
from app.pipeline_file import load_pipeline
from app.qt import QtConsole
from resources import scenes
from runners._ledger import make_preview
from runners._proto import tierdeck_control_pb2 as ctl
from runners.client import NodeClient
from tools.hard_examples import read_hard_examples
from widgets._gallery import Gallery, RowDetail, ScoreBars, preview_image, preview_pixmap


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], np.ndarray, list[str]]]:
    """The ship-finder on device, edge and cloud agents, 300 held-out patches sent through it."""
    root = tmp_path_factory.mktemp("gallery")
    images, _ = scenes.load_heldout()
    x = scenes.to_model_input(images[:300])
    with three_agents(root, "--ledger-max-rows-per-s", "0") as agents:  # every row recorded: rows are counted
        with started_core(root / "deploy.sqlite") as core:
            for agent in agents.values():
                core.add_address(agent.address).result(10)
            wait_nodes(core, lambda nodes: len(nodes) == 3 and all(n.state.value == "online" for n in nodes),
                       message="three nodes online")
            result = core.apply(core.plan(load_pipeline(PIPELINE)).result(60)).result(180)
            assert result.ok, result

        async def send() -> list[str]:
            labels: list[str] = []
            async with NodeClient(agents["device"].address) as client:
                for start in range(0, len(x), 30):
                    out = (await client.infer("detector", {"image": x[start:start + 30]})).outputs
                    labels += [v.decode() for v in out["decision_label"]]
            return labels
        answers = asyncio.run(send())
        yield {tier: a.address for tier, a in agents.items()}, x, answers


def test_gallery_shows_joined_rows_and_exports_what_it_shows(fleet: tuple[dict[str, str], np.ndarray, list[str]],
                                                           qapp: QApplication, qtbot: QtBot,
                                                           tmp_path: Path) -> None:
    addresses, x, answers = fleet
    with started_core(tmp_path / "console.sqlite") as core:
        for address in addresses.values():
            core.add_address(address).result(10)
        wait_nodes(core, lambda nodes: len(nodes) == 3 and all(n.state.value == "online" for n in nodes),
                   message="three nodes online")
        console = QtConsole(core)
        model = GalleryModel(console)
        gallery = Gallery(model)
        qtbot.addWidget(gallery)
        gallery.resize(1200, 700)
        assert gallery.empty_label.isVisibleTo(gallery)

        failures: list[str] = []
        model.refresh_failed.connect(failures.append)

        def pulled_all() -> bool:
            model.refresh()
            qtbot.waitUntil(lambda: not model.busy, timeout=20_000)
            assert not failures, failures
            device_rows = model.pull.ledgers["device-1"].recorded_total
            return device_rows > 0 and all(len(r.entries) >= 2 for r in model.all_rows)
        wait_until(pulled_all, timeout=60)
        rows = model.rows
        escalated = sum(1 for a in answers if a != "water")  # every non-water answer came from above
        assert len(rows) >= escalated > 0
        assert {r.root.node_name for r in rows} == {"device-1"}
        assert not gallery.empty_label.isVisibleTo(gallery)
        assert all(r.link == "detector → classifier" for r in rows)
        # Every stage's view along the way: the device's detector, the edge's classifier, and for rows the
        # classifier sent on, the cloud's heavy model with its own scores.
        to_cloud = [r for r in rows if len(r.entries) == 3]
        assert to_cloud and all([e.node_name for e in r.entries] == ["device-1", "edge-1", "cloud-1"]
                                for r in to_cloud)
        assert all(r.label == r.entries[-1].example.final_label for r in rows)
        assert gallery.link_box.findData("detector → classifier") >= 0
        assert gallery.count_label.text() == f"{len(rows)} rows"
        assert "device-1:" in gallery.summary_label.text() and "MiB" in gallery.summary_label.text()

        # Paging: pages of 10, newest first, until every node is through; then the gallery's "Older" button.
        pull = core.hard_examples(ctl.ListHardExamplesRequest(limit=10)).result(20)
        while pull.older():
            pull = pull.merge(core.hard_examples(ctl.ListHardExamplesRequest(limit=10), pull.older()).result(20))
        assert sorted((e.node_key, e.example.seq) for e in pull.entries) == \
            sorted((e.node_key, e.example.seq) for r in model.all_rows for e in r.entries)
        small = GalleryModel(console, per_node=10)
        small.refresh()
        qtbot.waitUntil(lambda: not small.busy and len(small.all_rows) > 0, timeout=20_000)
        first_page = len(small.pull.entries)
        assert small.has_older and first_page == sum(min(10, n) for n in small.pull.matching.values())
        small.load_older()
        qtbot.waitUntil(lambda: not small.busy and len(small.pull.entries) > first_page, timeout=20_000)
        assert len({(e.node_key, e.example.seq) for e in small.pull.entries}) == len(small.pull.entries)

        # Thumbnails are the detector's input, as an image.
        data, shape = model.index(0).data(GalleryModel.PreviewRole)
        assert shape == (64, 64) and not preview_image(data, shape).isNull()

        # Filters: class and disagreement are the joined row's.
        label = rows[0].label
        gallery.class_box.setCurrentIndex(gallery.class_box.findData(label))
        assert model.rowCount() == sum(1 for r in rows if label in r.classes) < len(rows) + 1
        gallery.class_box.setCurrentIndex(0)
        gallery.disagreed_box.setChecked(True)
        assert model.rowCount() == sum(1 for r in rows if r.disagreed) > 0
        gallery.disagreed_box.setChecked(False)
        assert model.rowCount() == len(rows)

        # The detail pane: one box per stage, with its score bars.
        gallery.view.setCurrentIndex(model.index(model.rows.index(to_cloud[0])))
        detail: RowDetail = gallery.detail
        assert detail.row is not None and detail.row.key == to_cloud[0].key
        bars = detail.widget().findChildren(ScoreBars)
        assert [len(b.scores) for b in bars] == [2, 5, 5]
        title = detail.widget().findChild(QLabel, "gallery_detail_title")
        assert title is not None and to_cloud[0].label in title.text()

        # Export everything shown; the dataset holds what the gallery showed, row for row.
        gallery.select_all()
        shown: list[HardRow] = gallery.selected_rows()
        assert len(shown) == len(rows) and gallery.export_button.isEnabled()
        with qtbot.waitSignal(model.exported, timeout=30_000) as done:
            gallery.export_to(str(tmp_path / "picked.npz"))
        assert done.args[0].rows == len(shown)
        inputs, labels, manifest = read_hard_examples(tmp_path / "picked.npz")
        assert labels == [r.label for r in shown]
        assert [e["key"] for e in manifest["examples"]] == [r.key for r in shown]
        for image, row in zip(inputs["image"], shown, strict=True):
            preview, preview_shape = make_preview(image)
            assert preview == bytes(row.root.example.preview) and preview_shape == (64, 64)
        sent = {x[i].tobytes(): answers[i] for i in range(len(x))}
        assert all(sent[image.tobytes()] == label for image, label in zip(inputs["image"], labels, strict=True))
        console.close()



def test_thumbnails_of_other_tensors_are_heat_strips(qapp: QApplication) -> None:
    data, shape = make_preview(np.linspace(0, 1, 300, dtype=np.float32))  # e.g. a feature vector
    assert shape == (64,)
    strip = preview_image(data, shape)
    assert (strip.width(), strip.height()) == (64, 1)
    cold, warm = strip.pixelColor(0, 0), strip.pixelColor(63, 0)
    assert cold.blue() > cold.red() and warm.red() > warm.blue()  # dark blue → yellow
    assert preview_pixmap(data, shape, 96).size().toTuple() == (96, 24)
    colour, colour_shape = make_preview(np.random.default_rng(0).random((3, 32, 32), dtype=np.float32))
    assert colour_shape == (32, 32, 3) and not preview_image(colour, colour_shape).isNull()
    assert preview_image(b"", ()).isNull()
