"""Read a hard-example dataset exported by the console or `tierdeck export --hard-examples` (numpy only).

The format (written by app/_hard_examples.write_dataset): `OUT.npz` holds one array per model input, stacked over
rows (`image`: [rows, 1, 64, 64] for the ship-finder), and `labels` (the class the cascade finally answered);
`OUT.json` is the manifest — per row, in the same order, the label, every stage's answer and scores, and where the
row came from (node, stage, version, time). Any trainer can read it with `np.load`; this module adds the checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "tierdeck.hard_examples"


def paths(dataset: Path | str) -> tuple[Path, Path]:
    """OUT.npz and OUT.json, for OUT given with or without the .npz suffix."""
    dataset = Path(dataset)
    base = dataset.with_suffix("") if dataset.suffix in (".npz", ".json") else dataset
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


def read_hard_examples(dataset: Path | str) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """Inputs by name, labels and the manifest; ValueError when the two files do not belong together."""
    npz_path, manifest_path = paths(dataset)
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not a tierdeck hard-example manifest")
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    labels = [str(x) for x in arrays.pop("labels")]
    if labels != [e["label"] for e in manifest["examples"]]:
        raise ValueError(f"{npz_path.name} and {manifest_path.name} disagree on the labels")
    return arrays, labels, manifest


def load_hard_examples(dataset: Path | str, classes: Sequence[str], input_name: str = "image"
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs (x, y) for a model with these classes: y is the index of each row's label in `classes`;
    rows whose label is not one of them (e.g. 'vessel', a detector's answer, for a type classifier) are left out."""
    arrays, labels, _ = read_hard_examples(dataset)
    if input_name not in arrays:
        raise ValueError(f"the dataset has no input {input_name!r} (inputs: {sorted(arrays)})")
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([label in index for label in labels], dtype=bool)
    y = np.array([index[label] for label in labels if label in index], dtype=np.int64)
    return np.asarray(arrays[input_name])[keep], y
