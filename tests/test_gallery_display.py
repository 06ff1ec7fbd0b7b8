"""The hard-example gallery on a real X display, from the demo fleet with real escalations: the operator opens
the tab (Ctrl+Shift+H), clicks a thumbnail, filters to the rows whose stages disagreed. Screenshots of each step
go to the test's folder (and $TIERDECK_SCREENSHOTS when set)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from display import Console, Operator, XDisplay, missing_tools

pytestmark = [pytest.mark.display, pytest.mark.slow,
              pytest.mark.skipif(bool(missing_tools()), reason=f"no X server to drive: {', '.join(missing_tools())} "
                                                               "missing (apt-get install xvfb xdotool openbox)")]


def _shot(display: XDisplay, folder: Path, name: str) -> Path:
    path = display.screenshot(folder / f"{name}.png")
    if os.environ.get("TIERDECK_SCREENSHOTS") and path.exists():
        Path(os.environ["TIERDECK_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["TIERDECK_SCREENSHOTS"]) / path.name)
    return path


def test_operator_browses_hard_examples_of_the_demo(tmp_path: Path) -> None:
    with XDisplay(1440, 900) as display:
        console = Console(display, tmp_path, device=2, edge=1, cloud=1, rate=20, empty=False, extra=("--deploy",))
        op = Operator(display)
        try:
            console.wait(lambda p: sum(1 for n in p["nodes"] for s in n["stages"] if s["serving"]) >= 4, 240,
                         "the ship-finder deployed on the fleet")
            time.sleep(8)  # let the sensors' traffic escalate for a while
            op.key("ctrl+shift+h")
            probe = console.wait(lambda p: p["window"]["tab"] == "Hard examples" and not p["gallery"]["busy"], 30,
                                 "the gallery tab pulled")
            deadline = time.monotonic() + 90
            while probe["gallery"]["pulled"] < 20 and time.monotonic() < deadline:
                time.sleep(3)
                op.click(probe["gallery"]["refresh"], "refresh")
                probe = console.wait(lambda p: not p["gallery"]["busy"], 30, "the pull")
            assert probe["gallery"]["pulled"] >= 20 and probe["gallery"]["thumbs"], probe["gallery"]
            assert "device-" in probe["gallery"]["summary"]
            op.click(probe["gallery"]["thumbs"][0], "first thumbnail")
            probe = console.wait(lambda p: p["gallery"]["detail"], 10, "the detail pane")
            assert probe["gallery"]["export_enabled"]
            _shot(display, tmp_path, "ledger_gallery")
            op.click(probe["gallery"]["disagreed"], "disagreed only")
            probe = console.wait(lambda p: p["gallery"]["rows"] < p["gallery"]["pulled"], 10, "the filter")
            if probe["gallery"]["thumbs"]:
                op.click(probe["gallery"]["thumbs"][0], "a disagreeing row")
                console.wait(lambda p: p["gallery"]["detail"], 10, "its detail")
            _shot(display, tmp_path, "ledger_gallery_disagreed")
            # A row that went all the way up: three stages' scores in the detail pane.
            op.click(probe["gallery"]["disagreed"], "all rows again")
            probe = console.wait(lambda p: p["gallery"]["rows"] == p["gallery"]["pulled"], 10, "no filter")
            deep = [at for at, n in zip(probe["gallery"]["thumbs"], probe["gallery"]["thumb_stages"], strict=True)
                    if n >= 3]
            if deep:  # the cloud sees a few rows in a hundred: not always among the first shown
                op.click(deep[0], "a row the cloud answered")
                time.sleep(0.5)
                _shot(display, tmp_path, "ledger_gallery_three_stages")
        finally:
            console.stop()
