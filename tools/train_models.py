"""Train the three ship-finder stages, export them to ONNX, write model cards and the pipeline file.

    pip install -e '.[train]'          # torch 2.13 (CPU is enough)
    python -m tools.train_models   # ~10 min on 2 CPU cores; --quick for a smoke run

Everything is seeded: the data come from resources.scenes (train/val/test seeds in
resources/data/splits.json) and torch is seeded with TRAIN_SEED. Retraining reproduces the
architectures, the procedure and, to within noise, the accuracies; bit-identical weights are not
promised across machines (CPU kernels may sum in a different order), which is why the exported
files are committed and their sha256 recorded in the cards and the pipeline file.

Thresholds for the escalation rules are chosen on the validation split only (see choose_thresholds);
the test split is used for the accuracies reported in the cards and nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from resources import scenes
from resources.models.flops import count_flops, count_parameters
from tools.hard_examples import load_hard_examples

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
MODELS_DIR = RESOURCES / "models"
DATA_DIR = RESOURCES / "data"
PIPELINE_PATH = RESOURCES / "pipelines" / "ship-finder.pipeline.json"

TRAIN_SEED = 7
OPSET = 17
TRAIN_WATER_FRACTION = 0.5  # training sees more vessels than the 90 %-water stream it will serve
N_TRAIN = 48_000  # the detector trains on all of it, the two classifiers on the first 24,000 (StageSpec.n_train)
N_VAL = 10_000
N_TEST = 10_000

DETECTOR_CLASSES = ["water", "vessel"]
TYPE_CLASSES = list(scenes.CLASSES)

# Selection rule for the thresholds (validation split): keep the cascade's accuracy within
# ACCURACY_MARGIN of the heavy model alone and its vessel recall within RECALL_MARGIN of it, and among
# those settings pick the cheapest: expected cost = p_edge + HEAVY_WEIGHT * p_cloud per input, where
# p_edge / p_cloud are the fractions of inputs sent to the edge / cloud stage. HEAVY_WEIGHT says a
# row sent to the cloud costs about ten rows sent to the edge (RPC + 60× the classifier's FLOPs).
ACCURACY_MARGIN = 0.0020
RECALL_MARGIN = 0.005
HEAVY_WEIGHT = 10.0


class InstanceCentre(nn.Module):
    """Subtract each image's mean level, so models see contrast, not the water's brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=(2, 3), keepdim=True)


class GlobalPools(nn.Module):
    """Concatenate global max and global average pooling: [N, C, H, W] → [N, 2C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def _cbr(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def build_detector() -> nn.Module:
    """Stage 1 (device): 2× average-pool, two strided 3×3 convs, global pools, linear → 2 logits."""
    return nn.Sequential(
        nn.AvgPool2d(2), InstanceCentre(),
        *_cbr(1, 6, stride=2),       # 32×32 → 16×16×6
        *_cbr(6, 8, stride=2),       # → 8×8×8
        GlobalPools(), nn.Linear(16, 2),
    )


def build_classifier() -> nn.Module:
    """Stage 2 (edge): strided 3×3 stem to 32×32, then a three-block conv net → 5 logits."""
    return nn.Sequential(
        InstanceCentre(),
        *_cbr(1, 8, stride=2),             # 64 → 32
        *_cbr(8, 16), nn.MaxPool2d(2),     # 32 → 16
        *_cbr(16, 32), nn.MaxPool2d(2),    # 16 → 8
        *_cbr(32, 64),
        GlobalPools(), nn.Linear(128, 5),
    )


def build_heavy() -> nn.Module:
    """Stage 3 (cloud) and monolithic baseline: a VGG-style net at full 64×64 resolution → 5 logits."""
    return nn.Sequential(
        InstanceCentre(),
        *_cbr(1, 16), *_cbr(16, 16), nn.MaxPool2d(2),     # 64 → 32
        *_cbr(16, 32), *_cbr(32, 32), nn.MaxPool2d(2),    # 32 → 16
        *_cbr(32, 64), *_cbr(64, 64), nn.MaxPool2d(2),    # 16 → 8
        *_cbr(64, 128),
        GlobalPools(), nn.Linear(256, 5),
    )


class WithSoftmax(nn.Module):
    """Export wrapper: the ONNX output is softmax probabilities, not logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(image), dim=1)


@dataclass(frozen=True)
class StageSpec:
    """What to train for one stage."""

    name: str
    classes: list[str]
    build: Any
    epochs: int
    lr: float
    description: str
    n_train: int = 24_000


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation by a multiple of 90° and random flip, one draw per batch (the scenes are isotropic)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def train_stage(spec: StageSpec, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64],
                batch: int = 128) -> nn.Module:
    """Train one network with Adam + one-cycle schedule; returns it in eval mode."""
    torch.manual_seed(TRAIN_SEED)
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    net: nn.Module = spec.build()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = spec.epochs * (len(xt) // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.2)
    net.train()
    t0 = time.time()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(len(xt) // batch):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = _augment(xt[idx], gen), yt[idx]
            logits = net(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(yb)
        print(f"  {spec.name} epoch {epoch + 1}/{spec.epochs}: loss {loss_sum / total:.4f} "
              f"train acc {correct / total:.4f} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()
    return net


def export(net: nn.Module, name: str, classes: list[str], path: Path) -> None:
    """Export `net` + softmax to ONNX: input `image` [N,1,64,64] float32, output `probs` [N,C] float32."""
    dummy = torch.zeros(1, 1, scenes.PATCH, scenes.PATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithSoftmax(net), (dummy,), str(path), input_names=["image"], output_names=["probs"],
                          dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    model.graph.name = name
    model.producer_name = "tierdeck tools/train_models.py"
    model.doc_string = f"tierdeck ship-finder stage {name!r}; output probs over {classes}"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"classes": json.dumps(classes), "stage": name})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def run_onnx(path: Path, x: npt.NDArray[np.float32], batch: int = 512) -> npt.NDArray[np.float32]:
    """Probabilities from the exported model, as onnxruntime computes them (single thread)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = [sess.run(["probs"], {"image": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float32)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cascade_decisions(p1: npt.NDArray[np.float32], p2: npt.NDArray[np.float32], p3: npt.NDArray[np.float32],
                      c1: float, c2: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_],
                                                     npt.NDArray[np.bool_]]:
    """Final 5-class decisions of the cascade under the pipeline's rules; also who reached edge / cloud.

    Stage 1 rule: class_in ["vessel"] or confidence_below c1 (⇔ P(vessel) > 1 − c1 when c1 > 0.5).
    Stage 2 rule: confidence_below c2. Stage 3 decides what reaches it.
    """
    top1, conf1 = p1.argmax(1), p1.max(1)
    to_edge = (top1 == 1) | (conf1 < c1)
    top2, conf2 = p2.argmax(1), p2.max(1)
    to_cloud = to_edge & (conf2 < c2)
    decision = np.zeros(len(p1), dtype=np.int64)
    decision[to_edge] = top2[to_edge]
    decision[to_cloud] = p3.argmax(1)[to_cloud]
    return decision, to_edge, to_cloud


def _summary(decision: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> dict[str, float]:
    vessels = y > 0
    return {
        "accuracy": float((decision == y).mean()),
        "vessel_recall": float((decision[vessels] > 0).mean()) if vessels.any() else 1.0,
    }


C1_GRID = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999]
C2_GRID = [0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.01]


def choose_thresholds(p1: npt.NDArray[np.float32], p2: npt.NDArray[np.float32], p3: npt.NDArray[np.float32],
                      y: npt.NDArray[np.int64]) -> dict[str, Any]:
    """Pick (c1, c2) on the validation split: cheapest setting within the accuracy/recall margins."""
    heavy = _summary(p3.argmax(1), y)
    sweep = []
    best: dict[str, Any] | None = None
    for c1 in C1_GRID:
        for c2 in C2_GRID:
            dec, to_edge, to_cloud = cascade_decisions(p1, p2, p3, c1, c2)
            s = _summary(dec, y)
            row = {"confidence_below_1": c1, "confidence_below_2": c2, **s,
                   "to_edge": float(to_edge.mean()), "to_cloud": float(to_cloud.mean())}
            row["cost"] = row["to_edge"] + HEAVY_WEIGHT * row["to_cloud"]
            row["feasible"] = bool(s["accuracy"] >= heavy["accuracy"] - ACCURACY_MARGIN
                                   and s["vessel_recall"] >= heavy["vessel_recall"] - RECALL_MARGIN)
            sweep.append(row)
            if row["feasible"] and (best is None or row["cost"] < best["cost"]):
                best = row
    if best is None:
        raise RuntimeError("no threshold setting keeps the cascade within the margins on validation")
    return {"heavy_alone": heavy, "chosen": best, "sweep": sweep,
            "rule": (f"cheapest (to_edge + {HEAVY_WEIGHT:g}·to_cloud) with accuracy ≥ heavy − "
                     f"{ACCURACY_MARGIN * 100:g} pt and vessel recall ≥ heavy − {RECALL_MARGIN * 100:g} pt, "
                     "on the validation split")}


def _per_class(pred: npt.NDArray[np.int64], y: npt.NDArray[np.int64], classes: list[str]) -> dict[str, float]:
    return {c: float((pred[y == i] == i).mean()) for i, c in enumerate(classes) if (y == i).any()}


def model_card(name: str, path: Path, classes: list[str], description: str, tier: str,
               metrics: dict[str, Any], extra: dict[str, Any], spec: StageSpec) -> dict[str, Any]:
    """The JSON model card for one exported stage."""
    return {
        "card_version": 1,
        "name": name,
        "description": description,
        "tier": tier,
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "format": {"onnx_opset": OPSET, "ir_version": onnx.load(str(path)).ir_version},
        "inputs": [{"name": "image", "datatype": "FP32", "shape": ["N", 1, scenes.PATCH, scenes.PATCH],
                    "range": [0.0, 1.0], "preprocess": "resources.scenes.to_model_input (uint8 / 255)"}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": ["N", len(classes)],
                     "meaning": "softmax probabilities, in the order of `classes`"}],
        "classes": classes,
        "parameters": count_parameters(path),
        "flops_per_input": count_flops(path),
        "flops_convention": "resources/models/flops.py: 2 per multiply-accumulate, 1 per element-wise op, "
                            "pool/reduce per window element; counted on the exported ONNX graph",
        "accuracy": metrics,
        **extra,
        "training": {
            "script": "tools/train_models.py",
            "seed": TRAIN_SEED,
            "data": {"split": "train", "seed": scenes.SPLITS["train"], "n": spec.n_train, "first": True,
                     "water_fraction": TRAIN_WATER_FRACTION},
            "epochs": spec.epochs, "optimizer": "AdamW + one-cycle", "max_lr": spec.lr, "batch": 128,
            "augmentation": "rot90 ×k, horizontal flip",
            "torch": torch.__version__, "python": platform.python_version(),
        },
    }


SPECS = {
    "detector": StageSpec("detector", DETECTOR_CLASSES, build_detector, 15, 1e-2,
                          "stage 1, device tier: is anything there? water vs vessel", 48_000),
    "classifier": StageSpec("classifier", TYPE_CLASSES, build_classifier, 10, 5e-3,
                            "stage 2, edge tier: which vessel type? (water bounces a false alarm)", 24_000),
    "heavy": StageSpec("heavy", TYPE_CLASSES, build_heavy, 6, 3e-3,
                       "stage 3, cloud tier: the big type classifier; also the monolithic baseline", 24_000),
}
TIERS = {"detector": "device", "classifier": "edge", "heavy": "cloud"}


def write_pipeline(chosen: dict[str, Any], cards: dict[str, dict[str, Any]]) -> None:
    """Write resources/pipelines/ship-finder.pipeline.json with the chosen thresholds and the models' hashes."""
    c1, c2 = chosen["confidence_below_1"], chosen["confidence_below_2"]
    stages = []
    for name in ("detector", "classifier", "heavy"):
        card = cards[name]
        rule: dict[str, Any] = {"output": "probs", "labels": card["classes"]}
        if name == "detector":
            rule.update(class_in=["vessel"], confidence_below=c1)
        elif name == "classifier":
            rule.update(confidence_below=c2)
        stages.append({
            "id": name,
            "model": f"../models/{card['file']}",
            "sha256": card["sha256"],
            "placement": {"tier": TIERS[name]},
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, scenes.PATCH, scenes.PATCH]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, len(card["classes"])]}],
            "rule": rule,
            "budget": {"max_escalations_per_s": 0, "priority": {"detector": "high", "classifier": "normal",
                                                                "heavy": "normal"}[name]},
        })
    doc = {
        "format": "tierdeck.pipeline",
        "version": 1,
        "name": "ship-finder",
        "description": (
            "Look for any ship first; only when one is seen, send the patch up to classify its type. "
            f"Stage 1 escalates when P(vessel) > {1 - c1:.3g} (class_in vessel, or top-class confidence "
            f"below {c1:g}, i.e. an uncertain 'water'); other rows settle as water. Stage 2 escalates when "
            f"its top-class confidence is below {c2:g}. Thresholds chosen on the validation split by "
            "tools/train_models.py; see the model cards."),
        "stages": stages,
    }
    PIPELINE_PATH.parent.mkdir(parents=True, exist_ok=True)
    PIPELINE_PATH.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Train, export, evaluate, choose thresholds on validation, write cards and the pipeline file."""
    parser = argparse.ArgumentParser(prog="python -m tools.train_models", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script (writes to --out)")
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="where the .onnx files and cards go")
    parser.add_argument("--only", choices=list(SPECS), action="append", help="train only these (experiments)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hard-examples", type=Path, action="append", default=[], metavar="DATASET",
                        help="also train on a hard-example dataset exported by the console or `tierdeck export "
                             "--hard-examples` (repeatable); rows labelled with a ship type or water are used")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train, n_val, n_test = (N_TRAIN, N_VAL, N_TEST) if not args.quick else (1024, 1000, 1000)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    xtr_u8, ytr = scenes.split("train", n_train, water_fraction=TRAIN_WATER_FRACTION)
    xva_u8, yva = scenes.split("val", n_val)
    xte_u8, yte = scenes.split("test", n_test)
    held_u8, yheld = scenes.load_heldout()
    if not np.array_equal(held_u8, xte_u8[: len(held_u8)]) and not args.quick:
        raise RuntimeError("heldout.npz is not the start of the test split: regenerate it")
    xtr, xva, xte, xheld = (scenes.to_model_input(a) for a in (xtr_u8, xva_u8, xte_u8, held_u8))
    for dataset in args.hard_examples:  # first, so that every stage's share of the training split holds them
        x_hard, y_hard = load_hard_examples(dataset, TYPE_CLASSES)
        xtr, ytr = np.concatenate([x_hard.astype(np.float32), xtr]), np.concatenate([y_hard, ytr])
        print(f"hard examples: {len(y_hard)} rows from {dataset}", flush=True)
    print(f"data: train {len(xtr)}, val {len(xva)}, test {len(xte)} ({time.time() - t0:.0f} s)", flush=True)

    names = args.only or list(SPECS)
    probs: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    for name in names:
        spec = SPECS[name]
        if args.quick:
            spec = StageSpec(spec.name, spec.classes, spec.build, 1, spec.lr, spec.description, n_train)
        n_stage = min(spec.n_train, n_train)
        target = (ytr[:n_stage] > 0).astype(np.int64) if name == "detector" else ytr[:n_stage]
        net = train_stage(spec, xtr[:n_stage], target)
        path = out / f"{name}.onnx"
        export(net, name, spec.classes, path)
        probs[name] = {"val": run_onnx(path, xva), "test": run_onnx(path, xte), "heldout": run_onnx(path, xheld)}
        SPECS[name] = spec
    if set(names) != set(SPECS):
        for name in names:
            for split_name, yy in (("val", yva), ("test", yte)):
                pred = probs[name][split_name].argmax(1)
                target = (yy > 0).astype(np.int64) if name == "detector" else yy
                print(f"{name} {split_name}: acc {(pred == target).mean():.4f} per class "
                      f"{_per_class(pred, target, SPECS[name].classes)}")
        return 0

    thresholds = choose_thresholds(probs["detector"]["val"], probs["classifier"]["val"], probs["heavy"]["val"], yva)
    chosen = thresholds["chosen"]
    c1, c2 = chosen["confidence_below_1"], chosen["confidence_below_2"]
    test_dec, test_edge, test_cloud = cascade_decisions(probs["detector"]["test"], probs["classifier"]["test"],
                                                        probs["heavy"]["test"], c1, c2)
    cascade_test = {"n": n_test, **_summary(test_dec, yte), "to_edge": float(test_edge.mean()),
                    "to_cloud": float(test_cloud.mean()),
                    "heavy_alone": _summary(probs["heavy"]["test"].argmax(1).astype(np.int64), yte)}
    held_dec, held_edge, held_cloud = cascade_decisions(probs["detector"]["heldout"], probs["classifier"]["heldout"],
                                                        probs["heavy"]["heldout"], c1, c2)
    cascade_heldout = {"n": len(yheld), **_summary(held_dec, yheld), "to_edge_rows": int(held_edge.sum()),
                       "to_cloud_rows": int(held_cloud.sum())}
    print("chosen on val:", json.dumps(chosen), "\ncascade on test:", json.dumps(cascade_test), flush=True)

    cards: dict[str, dict[str, Any]] = {}
    for name, spec in SPECS.items():
        is_det = name == "detector"
        metrics: dict[str, Any] = {}
        for split_name, yy, n in (("heldout", yheld, len(yheld)), ("test", yte, n_test), ("val", yva, n_val)):
            target = (yy > 0).astype(np.int64) if is_det else yy
            pred = probs[name][split_name].argmax(1).astype(np.int64)
            metrics[split_name] = {
                "n": n, "top1": round(float((pred == target).mean()), 6),
                "per_class_recall": {k: round(v, 6) for k, v in _per_class(pred, target, spec.classes).items()},
            }
        metrics["heldout"]["source"] = "resources/data/heldout.npz (first 1000 patches of the test split)"
        metrics["test"]["source"] = f"resources.scenes.split('test', {n_test}) (seed {scenes.SPLITS['test']})"
        metrics["val"]["source"] = f"resources.scenes.split('val', {n_val}) (seed {scenes.SPLITS['val']})"
        extra: dict[str, Any] = {}
        if is_det:
            p_vessel = probs[name]["test"][:, 1]
            esc = (probs[name]["test"].argmax(1) == 1) | (probs[name]["test"].max(1) < c1)
            extra["escalation_rule"] = {
                "class_in": ["vessel"], "confidence_below": c1,
                "equivalent": f"escalate when P(vessel) > {1 - c1:.6g}",
                "why": ("two-class softmax; a row whose top class is water but whose confidence is below the "
                        "threshold is an uncertain 'water' and goes up, so the threshold on P(vessel) can be "
                        "tuned live (UpdatePolicy) for vessel recall without re-exporting the model"),
                "chosen_on": "val",
                "test_vessel_recall": round(float(esc[yte > 0].mean()), 6),
                "test_false_alarm_rate": round(float(esc[yte == 0].mean()), 6),
                "test_escalation_rate": round(float(esc.mean()), 6),
                "test_mean_p_vessel_on_water": round(float(p_vessel[yte == 0].mean()), 6),
            }
        elif name == "classifier":
            extra["escalation_rule"] = {"confidence_below": c2, "chosen_on": "val"}
        cards[name] = model_card(name, out / f"{name}.onnx", spec.classes, spec.description, TIERS[name],
                                 metrics, extra, spec)
    for name in SPECS:
        f1, f3 = cards["detector"]["flops_per_input"], cards[name]["flops_per_input"]
        cards[name]["flops_vs_detector"] = round(f3 / f1, 2)
        cards[name]["cascade"] = {"validation_choice": chosen, "test": cascade_test, "heldout": cascade_heldout,
                                  "selection_rule": thresholds["rule"]}
        (out / f"{name}.card.json").write_text(json.dumps(cards[name], indent=2) + "\n")
    (out / "thresholds.json").write_text(json.dumps(thresholds, indent=1) + "\n")
    if not args.quick:
        write_pipeline(chosen, cards)
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
