"""The maritime scene generator: deterministic, prefix-stable, and the committed held-out set is its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resources import scenes

SPLITS_JSON = scenes.HELDOUT_PATH.parent / "splits.json"


def test_same_seed_same_bytes() -> None:
    a_img, a_lab = scenes.generate(40, seed=123)
    b_img, b_lab = scenes.generate(40, seed=123)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_lab.tobytes() == b_lab.tobytes()


def test_different_seed_different_bytes() -> None:
    a_img, _ = scenes.generate(10, seed=1)
    b_img, _ = scenes.generate(10, seed=2)
    assert a_img.tobytes() != b_img.tobytes()


def test_stream_prefix_stable() -> None:
    full_img, full_lab = scenes.generate(12, seed=5)
    part_img, part_lab = scenes.generate(4, seed=5, start=8)
    assert np.array_equal(part_img, full_img[8:])
    assert np.array_equal(part_lab, full_lab[8:])


def test_patch_format() -> None:
    images, labels = scenes.generate(50, seed=9, water_fraction=0.0)
    assert images.dtype == np.uint8 and images.shape == (50, scenes.PATCH, scenes.PATCH)
    assert labels.dtype == np.int64 and labels.min() >= 1 and labels.max() <= len(scenes.VESSEL_TYPES)
    assert all(img.std() > 1.0 for img in images)  # noise and waves: never a flat patch
    x = scenes.to_model_input(images)
    assert x.dtype == np.float32 and x.shape == (50, 1, 64, 64) and 0.0 <= x.min() and x.max() <= 1.0


def test_water_fraction_default_and_configurable() -> None:
    _, labels = scenes.generate(2000, seed=11)
    water = float((labels == 0).mean())
    assert 0.87 < water < 0.93  # binomial(2000, 0.9): ±3 pt is > 4 standard deviations
    _, none = scenes.generate(200, seed=11, water_fraction=0.0)
    assert (none > 0).all()
    _, only = scenes.generate(50, seed=11, water_fraction=1.0)
    assert (only == 0).all()
    _, mixed = scenes.generate(400, seed=11, water_fraction=0.0)
    assert set(np.unique(mixed)) == {1, 2, 3, 4}  # every vessel type occurs


def test_vessels_are_visible_on_average() -> None:
    # The same water with and without a vessel: a vessel patch has a larger spread than water alone.
    water, _ = scenes.generate(300, seed=21, water_fraction=1.0)
    ships, _ = scenes.generate(300, seed=21, water_fraction=0.0)
    spread = lambda a: float(np.mean([np.percentile(i, 99.5) - np.percentile(i, 0.5) for i in a]))  # noqa: E731
    assert spread(ships) > spread(water)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        scenes.generate(-1, seed=0)
    with pytest.raises(ValueError):
        scenes.generate(1, seed=0, water_fraction=1.5)
    with pytest.raises(KeyError):
        scenes.split("holdout", 1)


def test_heldout_is_regenerated_from_its_seed() -> None:
    images, labels = scenes.load_heldout()
    assert len(images) == scenes.HELDOUT_SIZE
    regenerated, regenerated_labels = scenes.split("test", scenes.HELDOUT_SIZE)
    assert images.tobytes() == regenerated.tobytes()
    assert np.array_equal(labels, regenerated_labels)
    with np.load(scenes.HELDOUT_PATH) as data:
        assert int(data["seed"]) == scenes.SPLITS["test"]
        assert list(data["classes"]) == list(scenes.CLASSES)
        assert int(data["generator_version"]) == scenes.GENERATOR_VERSION


def test_heldout_is_small() -> None:
    assert scenes.HELDOUT_PATH.stat().st_size < 5 * 1024 * 1024


def test_splits_record_matches_generator() -> None:
    record = json.loads(SPLITS_JSON.read_text())
    assert {name: s["seed"] for name, s in record["splits"].items()} == scenes.SPLITS
    assert record["classes"] == list(scenes.CLASSES)
    assert record["generator_version"] == scenes.GENERATOR_VERSION
    assert len(set(scenes.SPLITS.values())) == len(scenes.SPLITS)  # no two splits share a stream


def test_without_the_heldout_file_the_same_patches_are_regenerated(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    committed_images, committed_labels = scenes.load_heldout()
    monkeypatch.setattr(scenes, "HELDOUT_PATH", tmp_path / "heldout.npz")  # as in a wheel, which omits it
    images, labels = scenes.load_heldout(scenes.HELDOUT_PATH)
    assert images.tobytes() == committed_images.tobytes() and np.array_equal(labels, committed_labels)
    with pytest.raises(FileNotFoundError):
        scenes.load_heldout(tmp_path / "other.npz")
