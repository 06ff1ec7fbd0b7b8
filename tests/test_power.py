"""Power probes against sample sysfs trees: source choice, exact watts, counter wrap, honest labels."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from runners import power
from runners._proto import tierdeck_control_pb2 as ctl
from runners._telemetry import StageStats, TelemetryWindow, attribute_energy
from runners.power import SOURCES, GpuPowerMeter, PowerMeter, PowerReading

TREES = Path(__file__).resolve().parent / "data" / "sysfs"
RAPL_RANGE = 262143328850


def _tree(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(TREES / name, root)
    return root


def _write(root: Path, relative: str, value: object) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")


# ---------------------------------------------------------------------------------------------- RAPL


def test_rapl_two_packages_with_wrap(tmp_path: Path) -> None:
    root = _tree("rapl-2pkg", tmp_path)
    meter = PowerMeter(root)
    assert (meter.source, meter.measured, meter.detail) == ("rapl", True, "package-0+package-1")
    assert meter.sample(100.0, 50.0) == PowerReading(0.0, "rapl", True, 0.0)  # no interval yet

    # package-0 wraps: 3.32885 J up to the range, then 6.67115 J past zero = 10 J; package-1 adds 15 J.
    _write(root, "class/powercap/intel-rapl:0/energy_uj", 6671150)
    _write(root, "class/powercap/intel-rapl:1/energy_uj", 123456789000 + 15_000_000)
    # Subzones are parts of their package: advancing them wildly must change nothing.
    _write(root, "class/powercap/intel-rapl:0:0/energy_uj", 1)
    _write(root, "class/powercap/intel-rapl:1:1/energy_uj", 260000000000)
    assert meter.sample(100.5, 50.0) == PowerReading(50.0, "rapl", True, 25.0)

    _write(root, "class/powercap/intel-rapl:0/energy_uj", 6671150 + 3_000_000)
    _write(root, "class/powercap/intel-rapl:1/energy_uj", 123456789000 + 17_000_000)
    assert meter.sample(102.5, 50.0) == PowerReading(2.5, "rapl", True, 30.0)


def test_rapl_counts_energy_since_construction(tmp_path: Path) -> None:
    root = _tree("rapl-2pkg", tmp_path)
    meter = PowerMeter(root)
    _write(root, "class/powercap/intel-rapl:1/energy_uj", 123456789000 + 4_000_000)
    assert meter.sample(7.0, 0.0) == PowerReading(0.0, "rapl", True, 4.0)


def test_rapl_unreadable_is_not_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree("rapl-2pkg", tmp_path)
    real = power._read_text

    def root_only(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))  # Linux >= 5.10 for non-root
        return real(path)

    monkeypatch.setattr(power, "_read_text", root_only)
    meter = PowerMeter(root)
    assert (meter.source, meter.measured) == ("estimate", False)


def test_rapl_psys_only_when_no_package(tmp_path: Path) -> None:
    root = _tree("rapl-2pkg", tmp_path)
    for key, value in [("name", "psys"), ("energy_uj", 1000), ("max_energy_range_uj", RAPL_RANGE)]:
        _write(root, f"class/powercap/intel-rapl:2/{key}", value)
    meter = PowerMeter(root)
    assert meter.detail == "package-0+package-1"
    meter.sample(0.0, 0.0)
    _write(root, "class/powercap/intel-rapl:2/energy_uj", 99_000_000)
    assert meter.sample(1.0, 0.0).watts == 0.0

    for zone in (root / "class/powercap").glob("intel-rapl:[01]*"):
        shutil.rmtree(zone)
    meter = PowerMeter(root)
    assert (meter.source, meter.detail) == ("rapl", "psys")
    meter.sample(0.0, 0.0)
    _write(root, "class/powercap/intel-rapl:2/energy_uj", 111_000_000)
    assert meter.sample(2.0, 0.0).watts == 6.0


def test_rapl_read_failure_falls_back_to_labelled_estimate(tmp_path: Path) -> None:
    root = _tree("rapl-2pkg", tmp_path)
    meter = PowerMeter(root, idle_watts=4.0, max_watts=24.0)
    meter.sample(0.0, 0.0)
    counter = root / "class/powercap/intel-rapl:1/energy_uj"
    counter.unlink()
    assert meter.sample(1.0, 50.0) == PowerReading(14.0, "estimate", False, 14.0)
    _write(root, "class/powercap/intel-rapl:1/energy_uj", 1)  # back, but with no baseline
    assert meter.sample(2.0, 0.0) == PowerReading(4.0, "estimate", False, 18.0)
    _write(root, "class/powercap/intel-rapl:1/energy_uj", 8_000_001)
    assert meter.sample(4.0, 0.0) == PowerReading(4.0, "rapl", True, 26.0)
    assert meter.source == "rapl"


# ---------------------------------------------------------------------------------------------- hwmon


def test_jetson_ina3221_in_curr_uses_the_input_rail(tmp_path: Path) -> None:
    root = _tree("jetson-ina3221-incurr", tmp_path)
    meter = PowerMeter(root)
    assert (meter.source, meter.measured, meter.detail) == ("hwmon", True, "ina3221:VDD_IN")
    first = meter.sample(10.0, 0.0)
    assert first == PowerReading(5072 * 1416 / 1e6, "hwmon", True, 0.0)

    _write(root, "class/hwmon/hwmon1/in1_input", 5000)
    _write(root, "class/hwmon/hwmon1/curr1_input", 2000)
    second = meter.sample(12.0, 0.0)
    assert second.watts == 10.0
    assert second.energy_joules_total == pytest.approx((first.watts + 10.0) / 2 * 2.0, rel=1e-12)


def test_ina3221_without_input_rail_sums_channels_not_the_sum_channel(tmp_path: Path) -> None:
    root = _tree("jetson-ina3221-incurr", tmp_path)
    # Jetson AGX style labels; channel 3 not connected.
    for i, label in [(1, "VDD_GPU_SOC"), (2, "VDD_CPU_CV"), (3, "NC")]:
        _write(root, f"class/hwmon/hwmon1/in{i}_label", label)
    meter = PowerMeter(root)
    assert meter.detail == "ina3221:VDD_GPU_SOC+ina3221:VDD_CPU_CV"
    assert meter.sample(0.0, 0.0).watts == pytest.approx((5072 * 1416 + 5064 * 400) / 1e6, rel=1e-12)


def test_ina3221_power_variant(tmp_path: Path) -> None:
    root = _tree("jetson-ina3221-power", tmp_path)
    meter = PowerMeter(root)
    assert (meter.source, meter.detail) == ("hwmon", "ina3221:POM_5V_IN")
    assert meter.sample(0.0, 0.0).watts == 4.123
    for i in (1, 2, 3):
        (root / f"class/hwmon/hwmon1/in{i}_label").unlink()
    unlabelled = PowerMeter(root)
    assert unlabelled.sample(0.0, 0.0).watts == pytest.approx(4.123 + 0.61 + 1.22, rel=1e-12)


def test_hwmon_ignores_gpu_drivers_and_unpaired_battery_channels(tmp_path: Path) -> None:
    root = tmp_path / "box"
    _write(root, "class/hwmon/hwmon0/name", "amdgpu")
    _write(root, "class/hwmon/hwmon0/power1_input", 35_000_000)
    _write(root, "class/hwmon/hwmon1/name", "BAT0")
    _write(root, "class/hwmon/hwmon1/in0_input", 11850)
    _write(root, "class/hwmon/hwmon1/curr1_input", 711)
    assert PowerMeter(root).source == "estimate"
    _write(root, "class/hwmon/hwmon2/name", "ina226")
    _write(root, "class/hwmon/hwmon2/power1_input", 3_500_000)
    meter = PowerMeter(root)
    assert (meter.source, meter.detail) == ("hwmon", "ina226:power1_input")
    assert meter.sample(0.0, 0.0).watts == 3.5


def test_hwmon_unreadable_rail_is_skipped_at_start(tmp_path: Path) -> None:
    root = _tree("jetson-ina3221-incurr", tmp_path)
    (root / "class/hwmon/hwmon1/curr1_input").write_text("garbage\n")  # stands in for ENODATA
    meter = PowerMeter(root)
    assert meter.detail == "ina3221:VDD_CPU_GPU_CV+ina3221:VDD_SOC"


# ---------------------------------------------------------------------------------------------- battery


def test_laptop_battery_discharging(tmp_path: Path) -> None:
    root = _tree("laptop-battery", tmp_path)
    meter = PowerMeter(root, idle_watts=3.0, max_watts=13.0)
    assert (meter.source, meter.measured, meter.detail) == ("battery", True, "BAT0")
    assert meter.sample(0.0, 10.0) == PowerReading(8.432, "battery", True, 0.0)

    # Drivers without power_now: current (µA) × voltage (µV); some report discharge current negative.
    (root / "class/power_supply/BAT0/power_now").unlink()
    _write(root, "class/power_supply/BAT0/current_now", -700000)
    _write(root, "class/power_supply/BAT0/voltage_now", 12000000)
    reading = meter.sample(10.0, 10.0)
    assert reading.watts == pytest.approx(8.4, rel=1e-12) and reading.source == "battery"
    assert reading.energy_joules_total == pytest.approx((8.432 + 8.4) / 2 * 10.0, rel=1e-12)

    # Plugged in: the battery no longer tells node power; the interval is an estimate, labelled so.
    _write(root, "class/power_supply/BAT0/status", "Charging")
    reading = meter.sample(12.0, 50.0)
    assert reading == PowerReading(8.0, "estimate", False, pytest.approx(84.16 + 16.0, rel=1e-12))
    assert meter.source == "battery"


def test_battery_not_discharging_is_not_a_source(tmp_path: Path) -> None:
    root = _tree("laptop-battery", tmp_path)
    _write(root, "class/power_supply/BAT0/status", "Full")
    assert PowerMeter(root).source == "estimate"


# ---------------------------------------------------------------------------------------------- estimate


def test_empty_tree_gives_the_labelled_estimate(tmp_path: Path) -> None:
    meter = PowerMeter(_tree("empty", tmp_path), idle_watts=5.0, max_watts=25.0, cpu_count=4)
    assert (meter.source, meter.measured) == ("estimate", False)
    assert meter.sample(1.0, 0.0) == PowerReading(5.0, "estimate", False, 0.0)
    assert meter.sample(3.0, 50.0) == PowerReading(15.0, "estimate", False, 30.0)
    assert meter.sample(4.0, 100.0) == PowerReading(25.0, "estimate", False, 55.0)
    assert meter.sample(5.0, 200.0).watts == 15.0  # per-process figure over 4 cores = 50 %
    assert meter.sample(6.0, -3.0).watts == 5.0
    energy = meter.sample(7.0, math.nan).energy_joules_total
    assert energy == 55.0 + 15.0 + 5.0 + 5.0
    # A clock that stands still or steps back adds no energy.
    assert meter.sample(6.5, 100.0).energy_joules_total == energy
    assert meter.sample(6.5, 100.0).energy_joules_total == energy


def test_missing_tree_gives_the_estimate(tmp_path: Path) -> None:
    assert PowerMeter(tmp_path / "nowhere").source == "estimate"


def test_prefer(tmp_path: Path) -> None:
    root = _tree("rapl-2pkg", tmp_path)
    shutil.copytree(TREES / "laptop-battery" / "class" / "power_supply", root / "class" / "power_supply")
    assert PowerMeter(root).source == "rapl"
    assert PowerMeter(root, prefer="battery").source == "battery"
    assert PowerMeter(root, prefer="estimate").source == "estimate"
    assert PowerMeter(root, prefer="hwmon").source == "rapl"  # not available: the usual order
    with pytest.raises(ValueError, match="unknown power source 'ipmi'"):
        PowerMeter(root, prefer="ipmi")


def test_power_model_must_make_sense(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PowerMeter(tmp_path, idle_watts=30.0, max_watts=25.0)
    with pytest.raises(ValueError):
        PowerMeter(tmp_path, idle_watts=-1.0)


@pytest.mark.parametrize("name", sorted(p.name for p in TREES.iterdir() if p.is_dir()))
def test_every_sample_tree_labels_honestly(name: str, tmp_path: Path) -> None:
    meter = PowerMeter(_tree(name, tmp_path))
    assert meter.source in SOURCES
    for t in (0.0, 1.0):
        reading = meter.sample(t, 30.0)
        assert reading.measured == (reading.source != "estimate")
        assert math.isfinite(reading.watts) and reading.watts >= 0


def test_this_machine_gives_a_valid_reading() -> None:
    meter = PowerMeter()
    assert meter.source in SOURCES and meter.measured == (meter.source != "estimate")
    meter.sample(0.0, 10.0)
    reading = meter.sample(1.0, 10.0)
    assert reading.source in SOURCES and reading.measured == (reading.source != "estimate")
    assert math.isfinite(reading.watts) and reading.watts >= 0
    assert math.isfinite(reading.energy_joules_total) and reading.energy_joules_total >= 0


# ---------------------------------------------------------------------------------------------- GPU stages
def _replay(watts: list[float]) -> Callable[[], float]:
    """An NVML reader that answers with a trace, one value per read (no GPU on the CI machines)."""
    values = iter(watts)
    return lambda: next(values)


def test_gpu_stage_energy_per_inference_comes_from_nvml_labelled_measured() -> None:
    # A hand-made trace shaped like NVML on a busy-then-idle GPU (W, every 0.5 s): idle 72 W, a burst, idle again.
    gpu = GpuPowerMeter(_replay([72.0, 72.0, 180.0, 176.0, 74.0]))
    stats = {"heavy": StageStats("heavy"), "det": StageStats("det")}
    stats["heavy"].runs_on, stats["det"].runs_on = "CUDAExecutionProvider", "CPUExecutionProvider"
    window = TelemetryWindow()
    window.sample(ctl.TelemetrySample(interval_s=2.0), list(stats.values()), now=0.0)
    for step in range(5):
        reading = gpu.sample(step * 0.5)
        assert reading is not None
        # Each interval both stages computed; the node's own source is the CPU estimate (4 J per interval).
        attribute_energy(stats, {"heavy": 0.2, "det": 0.1}, 4.0, "estimate", False, reading.dynamic_joules,
                         frozenset({"heavy"}))
    stats["heavy"].counters["inferences_total"] = 1000
    stats["det"].counters["inferences_total"] = 400
    sample = window.sample(ctl.TelemetrySample(interval_s=2.0), list(stats.values()), now=2.0)
    heavy, det = (next(s for s in sample.stages if s.stage_id == sid) for sid in ("heavy", "det"))
    # Above the 72 W idle: 0 + (126-72)·0.5 + (178-72)·0.5 + (125-72)·0.5 = 106.5 J, all the GPU stage's.
    assert gpu.idle_watts == 72.0
    assert heavy.energy_joules_total == pytest.approx(106.5)
    assert heavy.energy_per_inference_j == pytest.approx(0.1065)
    assert (heavy.energy_source, heavy.energy_measured) == ("nvml", True)
    # The CPU stage gets the node's energy (the GPU stage takes none of it), labelled as the estimate it is.
    assert det.energy_joules_total == pytest.approx(5 * 4.0)
    assert (det.energy_source, det.energy_measured) == ("estimate", False)


def test_unreadable_gpu_leaves_gpu_stages_on_the_node_source() -> None:
    def broken() -> float:
        raise power._Unreadable("NVML: GPU is lost")

    assert GpuPowerMeter(broken).sample(1.0) is None
    stats = {"heavy": StageStats("heavy")}
    attribute_energy(stats, {"heavy": 0.5}, 3.0, "rapl", True, None, frozenset({"heavy"}))
    assert stats["heavy"].energy_joules_total == pytest.approx(3.0)
    assert (stats["heavy"].energy_source, stats["heavy"].energy_measured) == ("rapl", True)


def test_no_nvml_here_means_no_gpu_meter() -> None:
    try:
        import pynvml  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert GpuPowerMeter.open() is None
    else:
        pytest.skip("pynvml is installed here: whether a GPU answers depends on the machine")
