"""Deterministic, seeded generator of 64×64 grayscale maritime sensor patches (no downloads).

Each patch is open water (waves, sun glint, cloud shadow, passing cloud, sensor noise) and, for
the vessel classes, one vessel of a given type at a random size, heading, position, contrast and
polarity, sometimes cut by the patch border or partly hidden under cloud. Patch ``i`` of a stream
is drawn from its own child generator ``numpy.random.default_rng([seed, i])``, so any prefix of a
stream is the same bytes as the start of a longer one and a held-out set can be regenerated from
its seed alone.

Images are 8-bit, like a sensor's output; models take ``to_model_input(images)`` (float32 in [0, 1],
shape [N, 1, 64, 64]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("water", "cargo", "tanker", "fishing", "patrol")
VESSEL_TYPES: tuple[str, ...] = CLASSES[1:]
PATCH = 64
DEFAULT_WATER_FRACTION = 0.9
GENERATOR_VERSION = 1

# One seed per split: the models are trained on "train", thresholds are tuned on "val",
# and every reported accuracy is on "test" (the held-out stream; resources/data/heldout.npz
# is its first HELDOUT_SIZE patches).
SPLITS: dict[str, int] = {"train": 1001, "val": 2002, "test": 3003}
HELDOUT_SIZE = 1000
HELDOUT_PATH = Path(__file__).resolve().parent / "data" / "heldout.npz"

FloatImage = npt.NDArray[np.float64]

_YY, _XX = np.mgrid[0:PATCH, 0:PATCH].astype(np.float64) + 0.5


@dataclass(frozen=True)
class VesselSpec:
    """Size and look of one vessel type, in pixels."""

    length: tuple[float, float]
    width_ratio: tuple[float, float]
    wake_probability: float
    wake_strength: tuple[float, float]


_SPECS: dict[str, VesselSpec] = {
    "cargo": VesselSpec((20.0, 34.0), (0.14, 0.17), 0.5, (0.02, 0.08)),
    "tanker": VesselSpec((24.0, 38.0), (0.17, 0.21), 0.5, (0.02, 0.08)),
    "fishing": VesselSpec((8.0, 14.0), (0.28, 0.36), 0.25, (0.03, 0.10)),
    "patrol": VesselSpec((12.0, 20.0), (0.115, 0.15), 0.85, (0.08, 0.25)),
}


def _smooth_field(rng: np.random.Generator, cells: int) -> FloatImage:
    """Gaussian noise on a coarse grid, bilinearly upsampled to the patch (unit variance-ish)."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    pos = (np.arange(PATCH) + 0.5) * (cells / PATCH)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    frac = pos - i0
    rows = grid[i0] * (1 - frac)[:, None] + grid[i0 + 1] * frac[:, None]
    out: FloatImage = rows[:, i0] * (1 - frac)[None, :] + rows[:, i0 + 1] * frac[None, :]
    return out


def _blob(cx: float, cy: float, sigma: float) -> FloatImage:
    """Isotropic Gaussian bump with peak 1 at (cx, cy)."""
    out: FloatImage = np.exp(-((_XX - cx) ** 2 + (_YY - cy) ** 2) / (2.0 * sigma * sigma))
    return out


def _blur(img: FloatImage) -> FloatImage:
    """3×3 binomial blur (the sensor's point-spread function), edges replicated."""
    p = np.pad(img, 1, mode="edge")
    h = (p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]) * 0.25
    out: FloatImage = (h[:-2] + 2.0 * h[1:-1] + h[2:]) * 0.25
    return out


def _cloud_mask(rng: np.random.Generator, cx: float, cy: float, radius: float) -> FloatImage:
    """Soft, lumpy cloud coverage in [0, 1] around (cx, cy)."""
    lumps = _smooth_field(rng, 6) * 0.35
    dist = np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2) / radius
    out: FloatImage = np.clip((1.0 - dist + lumps) * 3.0, 0.0, 1.0)
    return out


def _water(rng: np.random.Generator) -> tuple[FloatImage, float]:
    """Open water: swell, chop, glint, slow brightness drift; returns the image and its mean level."""
    base = rng.uniform(0.16, 0.42)
    sea_state = rng.uniform(0.2, 1.2)
    main_dir = rng.uniform(0.0, math.pi)
    waves = np.zeros((PATCH, PATCH))
    for _ in range(int(rng.integers(2, 5))):
        theta = main_dir + rng.normal(0.0, 0.35)
        wavelength = rng.uniform(3.0, 12.0)
        k = 2.0 * math.pi / wavelength
        phase = rng.uniform(0.0, 2.0 * math.pi)
        amp = rng.uniform(0.004, 0.025) * sea_state
        waves += amp * np.sin(k * (_XX * math.cos(theta) + _YY * math.sin(theta)) + phase)
    img = base + waves + rng.uniform(0.0, 0.04) * _smooth_field(rng, 4)
    if rng.random() < 0.35:
        # Sun glint: wave crests inside a broad bright region flash to near white.
        region = _blob(rng.uniform(0, PATCH), rng.uniform(0, PATCH), rng.uniform(10.0, 30.0))
        crest = waves / (np.std(waves) + 1e-9) + 0.6 * rng.standard_normal((PATCH, PATCH))
        thr = rng.uniform(1.6, 2.6)
        img += rng.uniform(0.15, 0.5) * np.clip(crest - thr, 0.0, 1.0) * region
    if rng.random() < 0.2:
        # Isolated specks: whitecaps, birds, floating debris — things the detector must not call a ship.
        for _ in range(int(rng.integers(1, 5))):
            img += rng.uniform(0.05, 0.2) * _blob(rng.uniform(0, PATCH), rng.uniform(0, PATCH),
                                                  rng.uniform(0.4, 0.8))
    return img, base


def _vessel(rng: np.random.Generator, kind: str,
            water_level: float) -> tuple[FloatImage, FloatImage, FloatImage, tuple[float, float, float]]:
    """One vessel of `kind`: coverage in [0, 1], brightness where covered, wake, and (x, y, length)."""
    spec = _SPECS[kind]
    length = rng.uniform(*spec.length)
    width = length * rng.uniform(*spec.width_ratio)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    # Most vessels sit well inside the patch; some are cut by the border.
    margin = 4.0 if rng.random() < 0.15 else 0.5 * length * 0.7 + 2.0
    margin = min(margin, 26.0)
    cx = rng.uniform(margin, PATCH - margin)
    cy = rng.uniform(margin, PATCH - margin)
    c, s = math.cos(heading), math.sin(heading)
    u = (_XX - cx) * c + (_YY - cy) * s  # along the hull, bow positive
    v = -(_XX - cx) * s + (_YY - cy) * c  # across the hull
    half = length / 2.0
    hw = np.full_like(u, width / 2.0)
    texture = np.ones_like(u)
    if kind == "cargo":
        bow = 0.12 * length
        taper = np.clip((half - u) / bow, 0.3, 1.0)
        hw = hw * np.where(u > half - bow, taper, 1.0)
        period = rng.uniform(2.5, 3.5)
        deck = (u > -half + 0.15 * length) & (u < half - bow)
        rows = np.sign(np.sin(2.0 * math.pi * u / period + rng.uniform(0, 2 * math.pi)))
        texture = np.where(deck, 1.0 + 0.3 * rows, texture)
        texture = np.where(u < -half + 0.13 * length, 1.45, texture)
    elif kind == "tanker":
        ub = half - 0.6 * width
        ends = np.clip(1.0 - ((u - ub) / (half - ub)) ** 2, 0.0, 1.0)
        hw = hw * np.where(u > ub, np.sqrt(ends), 1.0)
        texture = np.where(np.abs(v) < 0.7, 0.6, texture)
        texture = np.where(u < -half + 0.12 * length, 1.45, texture)
    elif kind == "fishing":
        bow = 0.35 * length
        hw = hw * np.where(u > half - bow, np.clip((half - u) / bow, 0.0, 1.0), 1.0)
        texture = np.where((np.abs(u + 0.1 * length) < 0.2 * length) & (np.abs(v) < 0.3 * width), 1.3, texture)
    else:  # patrol
        bow = 0.4 * length
        hw = hw * np.where(u > half - bow, np.clip((half - u) / bow, 0.0, 1.0), 1.0)
        texture = np.where((np.abs(u + 0.05 * length) < 0.12 * length) & (np.abs(v) < 0.35 * width), 1.35,
                           texture)
    dist = np.maximum(np.maximum(-u - half, u - half), np.abs(v) - hw)
    cover = np.clip(0.5 - dist, 0.0, 1.0)
    if kind == "fishing" and rng.random() < 0.6:
        # Outrigger booms: thin spars across the hull amidships.
        boom = rng.uniform(1.5, 2.5) * width
        spar = np.clip(1.0 - np.abs(u + rng.uniform(-0.1, 0.1) * length) / 0.6, 0.0, 1.0) * (np.abs(v) < boom)
        cover = np.maximum(cover, 0.6 * spar)
    polarity = 1.0 if rng.random() < 0.8 else -1.0
    contrast = rng.uniform(0.12, 0.45)
    target = water_level + polarity * contrast * texture
    wake = np.zeros_like(u)
    if rng.random() < spec.wake_probability:
        strength = rng.uniform(*spec.wake_strength)
        behind = -u - half
        aft = behind > 0
        decay = rng.uniform(0.6, 1.5) * length
        arms = np.exp(-(((np.abs(v) - width / 2.0 - behind * math.tan(math.radians(19.5))) / 1.0) ** 2))
        centre = np.exp(-((v / max(width / 2.0, 0.8)) ** 2))
        wake = np.where(aft, strength * (0.7 * arms + centre) * np.exp(-behind / decay), 0.0)
    return cover, np.where(cover > 0, target, water_level), wake, (cx, cy, length)


def render(rng: np.random.Generator, label: int) -> npt.NDArray[np.uint8]:
    """Render one 64×64 uint8 patch of class index `label` from `rng`."""
    img, level = _water(rng)
    vessel: tuple[float, float, float] | None = None
    if label:
        cover, target, wake, vessel = _vessel(rng, CLASSES[label], level)
        img = img + wake
        img = img * (1.0 - cover) + target * cover
    if rng.random() < 0.3:
        # Cloud shadow: a broad soft darkening.
        shadow = _cloud_mask(rng, rng.uniform(0, PATCH), rng.uniform(0, PATCH), rng.uniform(14.0, 40.0))
        img = img * (1.0 - rng.uniform(0.15, 0.4) * shadow)
    if rng.random() < 0.18:
        # Passing cloud: bright, mostly opaque. Over a vessel it is placed so that its edge crosses
        # the hull: part of the vessel is hidden, never all of it (a hidden ship is not "a ship").
        radius = rng.uniform(6.0, 22.0)
        if vessel is None:
            cx, cy = rng.uniform(0, PATCH), rng.uniform(0, PATCH)
        else:
            angle = rng.uniform(0.0, 2.0 * math.pi)
            dist = radius * rng.uniform(0.85, 1.2)
            cx, cy = vessel[0] + dist * math.cos(angle), vessel[1] + dist * math.sin(angle)
        mask = _cloud_mask(rng, cx, cy, radius)
        opacity = rng.uniform(0.5, 0.95) * mask
        img = img * (1.0 - opacity) + rng.uniform(0.55, 0.85) * opacity
    img = _blur(img)
    img = img + rng.uniform(0.008, 0.035) * rng.standard_normal((PATCH, PATCH))
    if rng.random() < 0.2:
        img = img + rng.normal(0.0, 0.01, size=(PATCH, 1))  # row striping from the line sensor
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def draw_label(rng: np.random.Generator, water_fraction: float) -> int:
    """Draw a class index: water with probability `water_fraction`, else a uniformly chosen vessel type."""
    if rng.random() < water_fraction:
        return 0
    return 1 + int(rng.integers(0, len(VESSEL_TYPES)))


def generate(n: int, seed: int, water_fraction: float = DEFAULT_WATER_FRACTION,
             start: int = 0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Patches `start`..`start+n-1` of stream `seed`: images uint8 [n, 64, 64] and labels int64 [n]."""
    if n < 0 or start < 0:
        raise ValueError("n and start must be >= 0")
    if not 0.0 <= water_fraction <= 1.0:
        raise ValueError("water_fraction must be in [0, 1]")
    images = np.empty((n, PATCH, PATCH), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for k in range(n):
        rng = np.random.default_rng([seed, start + k])
        labels[k] = draw_label(rng, water_fraction)
        images[k] = render(rng, int(labels[k]))
    return images, labels


def split(name: str, n: int, water_fraction: float = DEFAULT_WATER_FRACTION,
          start: int = 0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Patches of the named split ("train", "val" or "test"), see `generate`."""
    if name not in SPLITS:
        raise KeyError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    return generate(n, SPLITS[name], water_fraction, start)


def to_model_input(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """uint8 [N, 64, 64] patches → float32 [N, 1, 64, 64] in [0, 1], the models' `image` input."""
    out: npt.NDArray[np.float32] = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return out


def load_heldout(path: Path = HELDOUT_PATH) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Patches of an .npz file (default: the held-out set, the first HELDOUT_SIZE of the test split): images, labels.

    The wheel does not carry the held-out file (3 MB); without it the same patches are regenerated from
    the test split's seed (tests/test_scenes.py checks that both are identical).
    """
    if path == HELDOUT_PATH and not path.exists():
        images, labels = split("test", HELDOUT_SIZE)
        return images, labels.astype(np.int64)
    with np.load(path) as data:
        return data["images"].copy(), data["labels"].astype(np.int64)


def save_heldout(path: Path = HELDOUT_PATH, n: int = HELDOUT_SIZE) -> None:
    """Regenerate the held-out set from the test split's seed and write it compressed."""
    images, labels = split("test", n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, labels=labels.astype(np.uint8),
                        classes=np.array(CLASSES), seed=np.int64(SPLITS["test"]),
                        water_fraction=np.float64(DEFAULT_WATER_FRACTION),
                        generator_version=np.int64(GENERATOR_VERSION))


def png_gray(image: npt.NDArray[np.uint8]) -> bytes:
    """Encode a uint8 [H, W] image as an 8-bit grayscale PNG (no imaging library needed)."""
    import struct
    import zlib

    h, w = image.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(argv: list[str] | None = None) -> int:
    """`python -m resources.scenes [--write-heldout] [--preview PNG]`: regenerate data or preview it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m resources.scenes", description=main.__doc__)
    parser.add_argument("--write-heldout", action="store_true", help=f"rewrite {HELDOUT_PATH.name}")
    parser.add_argument("--preview", type=Path, help="write a PNG contact sheet of the first test patches")
    args = parser.parse_args(argv)
    if args.write_heldout:
        save_heldout()
        print(f"wrote {HELDOUT_PATH}")
    if args.preview:
        images, labels = split("test", 64, water_fraction=0.2)
        sheet = images.reshape(8, 8, PATCH, PATCH).transpose(0, 2, 1, 3).reshape(8 * PATCH, 8 * PATCH)
        args.preview.write_bytes(png_gray(np.kron(sheet, np.ones((2, 2), dtype=np.uint8))))
        print(" ".join(CLASSES[i][0] for i in labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
