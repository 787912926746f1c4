"""Medical imaging end to end on DICOM, and the leak of a random split (issue 34).

No labelled medical image set can be reached offline (docs/medical.md), so this writes a
stand-in from real images: Fashion-MNIST's Pullover vs Coat (two close classes), stored as
16-bit MONOCHROME2 DICOM with synthetic patient ids, several images per patient. Each
patient has one label and a patient-level effect, as scans of one person share anatomy,
positioning and scanner: a gain and a faint fixed texture over all of that patient's
images. A random split puts images of one patient on both sides, so a model can
recognise the patient instead of the finding; a grouped split (``--group-column``)
cannot.

For each seed (a fresh draw of patients):
  1. fit with a random validation split and with a grouped one (same images, same model);
  2. evaluate both on a test set of NEW patients (the honest figure);
  3. print each split's validation AUROC beside its new-patient AUROC.
The first seed also runs the command line end to end: ``fit`` (grouped, operating point
sensitivity=0.9), ``evaluate`` (clinical block with patient-level bootstrap intervals),
``predict --explain`` (Grad-CAM overlays) and the model card.

    OMP_NUM_THREADS=1 python benchmarks/medical_dicom.py [--seeds 0 1 2] [--patients 60]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("Pullover", "Coat")  # Fashion-MNIST 2 and 4
SETTINGS = dict(
    strategy="feature_extract",
    image_size=64,
    epochs=30,
    head_epochs=30,
    batch_size=32,
    num_workers=0,
    device="cpu",
    baseline=False,
    early_stopping=0,
    val_fraction=0.25,
)


EFFECT = 60.0  # grey levels of each patient's fixed texture


def patients_set(x, y, n_patients: int, per: int, seed: int, offset: int = 0):
    """``n_patients`` synthetic patients of ``per`` images each (one label per patient,
    half each), with a patient-level gain and fixed texture: uint8 images, labels
    (0/1), patient ids."""
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in (0, 1)}
    taken = {0: 0, 1: 0}
    images, labels, ids = [], [], []
    for p in range(n_patients):
        label = p % 2
        gain = rng.uniform(0.6, 1.25)
        texture = rng.normal(0, EFFECT, (28, 28))  # the patient's own "scanner" pattern
        for _ in range(per):
            i = pools[label][taken[label]]
            taken[label] += 1
            img = np.clip(x[i].astype(np.float64) * gain + texture, 0, 255)
            images.append(img.round().astype(np.uint8))
            labels.append(label)
            ids.append(f"S{seed}-P{offset + p:04d}")
    return np.stack(images), np.array(labels), ids


def fashion_pair():
    from headstart.datasets import FASHION_MNIST_CLASSES, fashion_mnist

    x, y, _ = fashion_mnist("train")
    codes = [FASHION_MNIST_CLASSES.index(c) for c in CLASSES]
    keep = np.isin(y, codes)
    return x[keep], (y[keep] == codes[1]).astype(np.int64)


def one_seed(x, y, seed: int, n_patients: int, per: int, root: Path, backbone: str) -> dict:
    from headstart import ImageClassifier
    from headstart.datasets import export_dicom_csv

    half = len(y) // 2  # training and new patients draw from disjoint halves of the images
    train = patients_set(x[:half], y[:half], n_patients, per, seed)
    test = patients_set(x[half:], y[half:], n_patients // 2, per, seed + 1000, offset=10_000)
    train_csv = export_dicom_csv(train[0], train[1], list(CLASSES), root / "train", train[2])
    test_csv = export_dicom_csv(test[0], test[1], list(CLASSES), root / "test", test[2])
    out = {"seed": seed, "train_images": len(train[1]), "test_images": len(test[1])}
    patient_of = {
        str(train_csv.parent / r["path"]): r["patient_id"]
        for r in csv.DictReader(open(train_csv, encoding="utf-8"))
    }
    for name, group in (("random", None), ("grouped", "patient_id")):
        t0 = time.perf_counter()
        clf = ImageClassifier(backbone, group_column=group, seed=seed, **SETTINGS)
        clf.fit(str(train_csv))
        val = clf.metrics_["validation"]
        new = clf.evaluate(str(test_csv))
        _, tr, va = clf.split(str(train_csv))
        seen = {patient_of[str(i)] for i in tr.items}
        shared = sum(patient_of[str(i)] in seen for i in va.items) / max(1, len(va))
        out[name] = {
            "val_auroc": val["auroc"],
            "val_accuracy": val["accuracy"],
            "new_patients_auroc": new["auroc"],
            "new_patients_accuracy": new["accuracy"],
            "new_auroc_ci": [new["clinical"]["auroc"]["low"], new["clinical"]["auroc"]["high"]],
            "val_images_of_patients_in_training": round(shared, 3),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def cli_run(root: Path, backbone: str) -> dict:
    """fit / evaluate / predict --explain through the command line on seed 0's files."""
    from headstart.cli import main

    run = root / "run-cli"
    fit = [
        "fit", str(root / "train" / "labels.csv"), "--out", str(run), "--backbone", backbone,
        "--group-column", "patient_id", "--operating-point", "sensitivity=0.9",
        "--strategy", "feature_extract", "--image-size", "64", "--epochs", "30",
        "--head-epochs", "30", "--no-baseline", "--num-workers", "0", "--device", "cpu",
        "--val-fraction", "0.25",
    ]  # fmt: skip
    steps = {
        "fit": fit,
        "evaluate": ["evaluate", str(run), str(root / "test" / "labels.csv")],
        "predict --explain": [
            "predict",
            str(run),
            str(root / "test" / "dcm"),
            "--out",
            str(root / "pred.csv"),
            "--explain",
            str(root / "maps"),
        ],  # fmt: skip
    }
    printed = {}
    for name, argv in steps.items():
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = main(argv)
        printed[name] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
        if name == "evaluate":
            printed[name]["output"] = buf.getvalue()
    maps = sorted((root / "maps").glob("*.png"))
    printed["maps"] = len(maps)
    printed["model_card_lines"] = len((run / "model_card.md").read_text().splitlines())
    return printed


def summarize(rows: list[dict], args) -> None:
    """Medians over the seeds, and each seed's optimism (validation minus new-patient
    AUROC) under both splits."""
    print(
        f"\n{args.backbone}, {CLASSES[0]} vs {CLASSES[1]}, {args.patients} training "
        f"patients x {args.per} images, seeds {[r['seed'] for r in rows]}:"
    )
    print(f"{'split':<9} {'val AUROC':>10} {'new-patient AUROC':>18}  per-seed gap (val - new)")
    for name in ("random", "grouped"):
        v = statistics.median(r[name]["val_auroc"] for r in rows)
        t = statistics.median(r[name]["new_patients_auroc"] for r in rows)
        gaps = [r[name]["val_auroc"] - r[name]["new_patients_auroc"] for r in rows]
        print(
            f"{name:<9} {v:10.3f} {t:18.3f}  "
            + " ".join(f"{g:+.3f}" for g in gaps)
            + f"  (mean {statistics.mean(gaps):+.3f})"
        )
    shared = statistics.median(r["random"]["val_images_of_patients_in_training"] for r in rows)
    print(
        f"random split: {shared:.0%} of the validation images are of patients seen in "
        "training; grouped split: 0%"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--patients", type=int, default=80, help="training patients per seed")
    p.add_argument("--per", type=int, default=6, help="images per patient")
    p.add_argument("--backbone", default="packaged:efficientnet_lite0")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--keep-maps", default=None, help="copy the first seed's Grad-CAM maps here")
    p.add_argument("--no-cli", action="store_true", help="skip the command-line run")
    p.add_argument("--summarize", default=None, help="print the summary of a --json file")
    p.add_argument(
        "--effect", type=float, default=EFFECT, help="grey levels of the patient texture"
    )
    args = p.parse_args(argv)
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    for name in ("headstart", "headstart.tasks", "headstart.train", "headstart.features"):
        logging.getLogger(name).setLevel(logging.WARNING)
    globals()["EFFECT"] = args.effect
    if args.summarize:
        summarize(json.loads(Path(args.summarize).read_text()), args)
        return 0
    x, y = fashion_pair()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            root = Path(tmp) / f"s{seed}"
            row = one_seed(x, y, seed, args.patients, args.per, root, args.backbone)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if seed == args.seeds[0] and not args.no_cli:
                cli = cli_run(root, args.backbone)
                if args.keep_maps:
                    import shutil

                    shutil.copytree(root / "maps", args.keep_maps, dirs_exist_ok=True)
                print(cli["evaluate"].pop("output"))
                print(json.dumps(cli), flush=True)
    summarize(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
