"""Node power probes (RAPL, hwmon/INA3221, battery, NVML) with an always-labelled CPU-based estimate.

Every reading says where it came from. The source is chosen once, at construction, as the first
available of `SOURCES` (or `prefer` first); when a measured source fails or stops applying for one
interval (a file vanished, the laptop went on AC), that interval is answered with the estimate and
labelled `estimate`, never passed off as measured.

Which sysfs files count:
- rapl: top-level zones `class/powercap/intel-rapl:N` (never the `intel-rapl:N:M` subzones, which are
  parts of their package); `psys` (whole platform) is used only when no package zone exists, because
  it already contains the packages. Counter wrap is handled with `max_energy_range_uj`. A zone that
  cannot be read (root-only since Linux 5.10) makes RAPL unavailable.
- hwmon: chips under `class/hwmon/hwmon*` that expose `power<i>_input` (µW) or, when they have none,
  matching `in<i>_input` (mV) × `curr<i>_input` (mA) pairs (INA3221 on Jetson; for `ina3221` only
  channels 1-3, since index 4 pairs a shunt voltage with the summed current). GPU drivers (amdgpu,
  radeon, nouveau, i915, xe) are skipped: they measure one device, not the board. Rails labelled
  `NC` (not connected) are skipped. If a rail label names the board input (`VDD_IN`, `POM_5V_IN`,
  `VIN`, `TOTAL`, ...), only such rails count (one per chip); otherwise all rails of all chips are
  summed (e.g. Jetson AGX Xavier, whose two INA3221 have no input rail).
- battery: `class/power_supply/*` with `type` Battery and `status` Discharging at construction;
  `power_now` (µW), else `current_now` (µA) × `voltage_now` (µV); batteries discharging are summed.
- nvml: total board power of all NVIDIA GPUs through `pynvml` (nvidia-ml-py), only when the meter
  looks at the live machine (`sysfs_root` is `/sys`), since a recorded tree is another machine.
- estimate: `idle_watts + (max_watts - idle_watts) * cpu_percent / 100`.

GPU stages. Whatever the node's source, a node whose stages run on CUDA or TensorRT also gets a
`GpuPowerMeter`: NVML board power of its GPUs, sampled with the node. The energy of a GPU stage is
the GPU's energy above its idle draw (the lowest reading seen since the agent started, which the GPU
shows between bursts) over the interval, shared among GPU stages by their compute time, and labelled
`nvml`, measured. CPU stages keep the node's source; when that source is NVML itself (no CPU-side
sensor), their share comes from the estimate and is labelled `estimate`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SOURCES", "GpuPowerMeter", "GpuReading", "PowerMeter", "PowerReading"]

log = logging.getLogger(f"tierdeck.{__name__}")

SOURCES: tuple[str, ...] = ("rapl", "hwmon", "battery", "nvml", "estimate")

_RAPL_ZONE = re.compile(r"intel-rapl:\d+")
_GPU_DRIVERS = frozenset({"amdgpu", "radeon", "nouveau", "i915", "xe"})
_TOTAL_LABELS = frozenset({"VDD_IN", "POM_5V_IN", "VIN", "VDD_TOTAL", "TOTAL", "SYS_TOTAL", "TOTAL_POWER"})


@dataclass(frozen=True)
class PowerReading:
    """Node power over the last interval, where it came from, and energy since the meter was built."""

    watts: float
    source: str
    measured: bool
    energy_joules_total: float


class _Unreadable(Exception):
    """A probe could not produce a measurement right now."""


def _read_text(path: Path) -> str:
    """Contents of a small sysfs file, stripped (tests replace this to simulate permission errors)."""
    return path.read_text().strip()


def _read_number(path: Path) -> float:
    try:
        return float(_read_text(path))
    except (OSError, ValueError) as exc:
        raise _Unreadable(f"{path}: {exc}") from exc


def _read_label(path: Path) -> str:
    try:
        return _read_text(path)
    except (OSError, UnicodeDecodeError):
        return ""


def _indices(directory: Path, pattern: str) -> dict[int, Path]:
    regex = re.compile(pattern)
    found: dict[int, Path] = {}
    for entry in directory.iterdir():
        match = regex.fullmatch(entry.name)
        if match:
            found[int(match.group(1))] = entry
    return found


class _RaplProbe:
    """Sum of package energy counters; reports joules since the previous read."""

    def __init__(self, root: Path) -> None:
        base = root / "class" / "powercap"
        zones = sorted(p for p in base.glob("intel-rapl:*") if _RAPL_ZONE.fullmatch(p.name))
        names = {zone: _read_label(zone / "name") for zone in zones}
        if any(name.startswith("package") for name in names.values()):
            zones = [zone for zone in zones if names[zone] != "psys"]
        if not zones:
            raise _Unreadable(f"no RAPL zones under {base}")
        self.zones = zones
        self.ranges = [_read_number(zone / "max_energy_range_uj") for zone in zones]
        self.last: list[float] | None = self._counters()
        self.detail = "+".join(names[zone] or zone.name for zone in zones)

    def _counters(self) -> list[float]:
        return [_read_number(zone / "energy_uj") for zone in self.zones]

    def delta_joules(self) -> float | None:
        """Joules since the previous read, or None when this read only re-establishes the baseline."""
        try:
            now = self._counters()
        except _Unreadable:
            self.last = None
            raise
        last, self.last = self.last, now
        if last is None:
            return None
        total_uj = 0.0
        for before, after, span in zip(last, now, self.ranges, strict=True):
            total_uj += after - before if after >= before else after + span - before
        return total_uj / 1e6


@dataclass(frozen=True)
class _Rail:
    label: str
    files: tuple[Path, ...]  # one power file (µW), or a voltage (mV) and a current (mA) file

    def watts(self) -> float:
        if len(self.files) == 1:
            return _read_number(self.files[0]) / 1e6
        return _read_number(self.files[0]) * _read_number(self.files[1]) / 1e6


class _HwmonProbe:
    """Board power from hwmon power monitors (INA3221 and kin)."""

    def __init__(self, root: Path) -> None:
        chips: list[tuple[str, list[_Rail]]] = []
        for chip in sorted((root / "class" / "hwmon").glob("hwmon*")):
            name = _read_label(chip / "name")
            if name in _GPU_DRIVERS:
                continue
            rails = self._rails(chip, name)
            if rails:
                chips.append((name or chip.name, rails))
        totals: list[tuple[str, _Rail]] = []
        for name, rails in chips:
            chip_totals = [rail for rail in rails if rail.label.upper() in _TOTAL_LABELS]
            if chip_totals:
                totals.append((name, chip_totals[0]))
        chosen = totals or [(name, rail) for name, rails in chips for rail in rails]
        if not chosen:
            raise _Unreadable("no hwmon power rails")
        self.rails = [rail for _, rail in chosen]
        self.detail = "+".join(f"{name}:{rail.label or rail.files[0].name}" for name, rail in chosen)

    @staticmethod
    def _rails(chip: Path, name: str) -> list[_Rail]:
        try:
            power = _indices(chip, r"power(\d+)_input")
            volts = _indices(chip, r"in(\d+)_input")
            amps = _indices(chip, r"curr(\d+)_input")
        except OSError:
            return []
        rails: list[_Rail] = []
        if power:
            for i, path in sorted(power.items()):
                label = _read_label(chip / f"power{i}_label") or _read_label(chip / f"in{i}_label")
                rails.append(_Rail(label, (path,)))
        else:
            for i in sorted(volts.keys() & amps.keys()):
                if name == "ina3221" and not 1 <= i <= 3:
                    continue
                label = _read_label(chip / f"in{i}_label") or _read_label(chip / f"curr{i}_label")
                rails.append(_Rail(label, (volts[i], amps[i])))
        usable = []
        for rail in rails:
            if rail.label.upper() == "NC":
                continue
            try:
                rail.watts()
            except _Unreadable:
                continue  # a disabled INA3221 channel answers ENODATA
            usable.append(rail)
        return usable

    def watts(self) -> float:
        return sum(rail.watts() for rail in self.rails)


class _BatteryProbe:
    """Discharge power of the batteries that are discharging."""

    def __init__(self, root: Path) -> None:
        self.batteries = [
            supply
            for supply in sorted((root / "class" / "power_supply").glob("*"))
            if _read_label(supply / "type") == "Battery"
        ]
        self.watts()  # raises unless one is discharging with a readable rate
        self.detail = "+".join(b.name for b in self.batteries)

    @staticmethod
    def _battery_watts(supply: Path) -> float:
        if (supply / "power_now").exists():
            return abs(_read_number(supply / "power_now")) / 1e6
        current = _read_number(supply / "current_now")
        voltage = _read_number(supply / "voltage_now")
        return abs(current) * voltage / 1e12

    def watts(self) -> float:
        discharging = [b for b in self.batteries if _read_label(b / "status") == "Discharging"]
        if not discharging:
            raise _Unreadable("no battery is discharging")
        return sum(self._battery_watts(b) for b in discharging)


class _NvmlProbe:
    """Power of all NVIDIA GPUs through NVML (board power, mW)."""

    def __init__(self) -> None:
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # ImportError, NVMLError, a driver without devices...
            raise _Unreadable(f"NVML: {exc}") from exc
        if not self.handles:
            raise _Unreadable("NVML: no GPU")
        self.read: Callable[[Any], float] = pynvml.nvmlDeviceGetPowerUsage
        self.watts()
        self.detail = f"{len(self.handles)} GPU"

    def watts(self) -> float:
        try:
            return sum(self.read(handle) for handle in self.handles) / 1000.0
        except Exception as exc:  # NVMLError subclasses, GPU fallen off the bus
            raise _Unreadable(f"NVML: {exc}") from exc


@dataclass(frozen=True)
class GpuReading:
    """GPU board power over the last interval, its idle baseline, and the energy above that baseline."""

    watts: float
    idle_watts: float
    dynamic_joules: float


class GpuPowerMeter:
    """NVML power of the node's GPUs, for the energy of stages that run on them (always measured)."""

    source = "nvml"

    def __init__(self, read_watts: Callable[[], float]) -> None:
        self._read = read_watts
        self._last: tuple[float, float] | None = None  # (monotonic time, watts)
        self.idle_watts = math.inf

    @classmethod
    def open(cls) -> GpuPowerMeter | None:
        """A meter on the live machine's GPUs, or None when NVML is not there."""
        try:
            probe = _NvmlProbe()
        except _Unreadable as exc:
            log.info("no GPU power (%s): GPU stages' energy falls back to the node's source", exc)
            return None
        return cls(probe.watts)

    def sample(self, now: float) -> GpuReading | None:
        """Read once; energy above idle since the previous sample (trapezoid); None when NVML fails this time."""
        try:
            watts = float(self._read())
        except (_Unreadable, OSError) as exc:
            log.debug("GPU power unreadable this interval: %s", exc)
            self._last = None
            return None
        self.idle_watts = min(self.idle_watts, watts)
        joules = 0.0
        if self._last is not None:
            then, before = self._last
            dt = max(0.0, now - then)
            joules = max(0.0, (before + watts) / 2 - self.idle_watts) * dt
        self._last = (now, watts)
        return GpuReading(watts, self.idle_watts, joules)


class PowerMeter:
    """Samples node power from the first available source; keeps cumulative energy since construction."""

    def __init__(
        self,
        sysfs_root: str | Path = "/sys",
        idle_watts: float = 5.0,
        max_watts: float = 25.0,
        cpu_count: int | None = None,
        prefer: str | None = None,
    ) -> None:
        if prefer is not None and prefer not in SOURCES:
            raise ValueError(f"unknown power source {prefer!r}; expected one of {', '.join(SOURCES)}")
        if not (0.0 <= idle_watts <= max_watts and math.isfinite(max_watts)):
            raise ValueError(f"need 0 <= idle_watts <= max_watts, got {idle_watts} and {max_watts}")
        self.sysfs_root = Path(sysfs_root)
        self.idle_watts = float(idle_watts)
        self.max_watts = float(max_watts)
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self.source = "estimate"
        self.detail = "estimate from CPU utilisation"
        self._rapl: _RaplProbe | None = None
        self._instant: _HwmonProbe | _BatteryProbe | _NvmlProbe | None = None
        order: Sequence[str] = SOURCES if prefer is None else (prefer, *[s for s in SOURCES if s != prefer])
        for source in order:
            if source == "estimate" or self._open(source):
                self.source = source
                break
        self.measured = self.source != "estimate"
        self._last_time: float | None = None
        self._last_watts = 0.0
        self._last_measured = False
        self._energy = 0.0
        log.info("power source: %s (%s)", self.source, self.detail)

    def _open(self, source: str) -> bool:
        try:
            if source == "rapl":
                self._rapl = _RaplProbe(self.sysfs_root)
                self.detail = self._rapl.detail
                return True
            probe: _HwmonProbe | _BatteryProbe | _NvmlProbe
            if source == "hwmon":
                probe = _HwmonProbe(self.sysfs_root)
            elif source == "battery":
                probe = _BatteryProbe(self.sysfs_root)
            elif source == "nvml" and self.sysfs_root.resolve() == Path("/sys"):
                probe = _NvmlProbe()
            else:
                return False
        except (_Unreadable, OSError) as exc:
            log.debug("power source %s unavailable: %s", source, exc)
            return False
        self._instant = probe
        self.detail = probe.detail
        return True

    def estimate_watts(self, cpu_percent: float) -> float:
        """The power model: idle + (max - idle) × system-wide CPU utilisation (percent, clamped to 0–100)."""
        if not math.isfinite(cpu_percent):
            cpu_percent = 0.0
        if cpu_percent > 100.0:
            # A per-process figure (100 per busy core) rather than a system-wide one.
            cpu_percent /= self.cpu_count
        share = min(max(cpu_percent, 0.0), 100.0) / 100.0
        return self.idle_watts + (self.max_watts - self.idle_watts) * share

    def sample(self, now: float, cpu_percent: float) -> PowerReading:
        """Watts over the interval since the previous call (monotonic seconds) and joules since construction.

        On the first call a counter source (RAPL) has no interval yet and reports 0 W; instantaneous
        sources report their reading. Energy of an interval is the counter delta (RAPL), the trapezoid
        of two measured readings, or watts × seconds for an estimated interval.
        """
        dt = None if self._last_time is None else now - self._last_time
        if dt is not None and dt < 0:
            dt = 0.0
        self._last_time = now
        watts: float | None = None
        try:
            if self._rapl is not None:
                joules = self._rapl.delta_joules()
                if joules is not None:
                    self._energy += joules
                    if dt is None:
                        watts = 0.0
                    else:
                        watts = joules / dt if dt > 0 else self._last_watts
            elif self._instant is not None:
                watts = self._instant.watts()
                if dt is not None:
                    mean = (watts + self._last_watts) / 2 if self._last_measured else watts
                    self._energy += mean * dt
        except _Unreadable as exc:
            log.debug("power source %s unreadable this interval: %s", self.source, exc)
            watts = None
        if watts is None or not self.measured:
            estimate = self.estimate_watts(cpu_percent)
            if dt is not None:
                self._energy += estimate * dt
            self._last_watts, self._last_measured = estimate, False
            return PowerReading(estimate, "estimate", False, self._energy)
        self._last_watts, self._last_measured = watts, True
        return PowerReading(watts, self.source, True, self._energy)
