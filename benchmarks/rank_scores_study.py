"""Would another published transferability score rank our candidates better than N-LEEP?

Runs ``headstart.rank`` on the targets and candidates of ``rank_transfer.py`` with the
built-in scores plus a few published ones that headstart does not ship (each passed to
``rank(scores=...)`` as a plain function, so they see exactly the features the built-in
scores see), and judges every score against the fine-tuned accuracies that
``rank_transfer.py`` already recorded in its WORK folder: Kendall tau, random-init checks and
the tau interval over resampled fine-tuning seeds, by ``rank_transfer.summary``. The rank
times printed here include the extra scores: take speed from ``rank_transfer.py``.

  parc       Bolya et al., "Scalable Diverse Model Selection for Accessible Transfer
             Learning", NeurIPS 2021: Spearman correlation between the items' pairwise
             dissimilarities (1 - Pearson) in feature space (PCA to 32 dims, standardised) and
             in label space (one-hot), x100.
  gbc        Pandy et al., "Transferability Estimation using Bhattacharyya Class Separability",
             CVPR 2022: minus the sum of the Bhattacharyya coefficients between every pair of
             classes, each a diagonal Gaussian on the features reduced by PCA to 64 dims.
  transrate  Huang et al., "Frustratingly Easy Transferability Estimation", ICML 2022: coding
             rate of the features minus the mean coding rate of each class's (eps 1e-4; the
             features centred and scaled to unit mean squared norm).
  probe_c001 the built-in linear probe with 100x stronger L2 regularisation (C = 0.01).

    python benchmarks/rank_transfer.py --work /tmp/rbv ...      # the fine-tuning runs first
    python benchmarks/rank_scores_study.py --fits /tmp/rbv --work /tmp/rbv-study \\
        [--exclude packaged:efficientnet_lite0@3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import rank_transfer as rt


def _pca(f: np.ndarray, k: int) -> np.ndarray:
    f = f - f.mean(0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return u[:, :k] * s[:k]


def parc(features, labels, source_probs=None, dim: int = 32) -> float:
    """PARC (Bolya et al. 2021), x100."""
    from scipy.stats import spearmanr

    z = _pca(features, min(dim, features.shape[1], len(labels)))
    sd = z.std(0)
    z = (z - z.mean(0)) / np.where(sd > 0, sd, 1.0)
    onehot = np.eye(int(labels.max()) + 1)[labels]
    upper = np.triu_indices(len(labels), 1)
    return float(
        spearmanr((1 - np.corrcoef(z))[upper], (1 - np.corrcoef(onehot))[upper]).statistic * 100
    )


def gbc(features, labels, source_probs=None, dim: int = 64) -> float:
    """GBC (Pandy et al. 2022), diagonal Gaussians."""
    z = _pca(features, min(dim, features.shape[1], len(labels) - 1))
    floor = 1e-6 * float(z.var(0).mean()) + 1e-300  # a constant PCA column
    classes = range(int(labels.max()) + 1)
    mean = [z[labels == c].mean(0) for c in classes]
    var = [z[labels == c].var(0) + floor for c in classes]
    total = 0.0
    for i in classes:
        for j in classes:
            if i != j:
                v = (var[i] + var[j]) / 2
                distance = 0.125 * ((mean[i] - mean[j]) ** 2 / v).sum() + 0.5 * (
                    np.log(v).sum() - 0.5 * (np.log(var[i]).sum() + np.log(var[j]).sum())
                )
                total += math.exp(-distance)
    return -total


def transrate(features, labels, source_probs=None, eps: float = 1e-4) -> float:
    """TransRate (Huang et al. 2022)."""
    z = features - features.mean(0)
    z = z / math.sqrt(max(float((z**2).sum(1).mean()), 1e-300))

    def rate(part: np.ndarray) -> float:
        n = len(part)
        gram = part @ part.T if n < part.shape[1] else part.T @ part
        return 0.5 * np.linalg.slogdet(np.eye(len(gram)) + gram / (n * eps))[1]

    classes = range(int(labels.max()) + 1)
    return float(rate(z) - np.mean([rate(z[labels == c]) for c in classes]))


def probe_c001(features, labels, source_probs=None) -> float:
    """Linear probe accuracy at C = 0.01."""
    from headstart.select import linear_probe_accuracy

    return linear_probe_accuracy(features, labels, c=0.01)


EXTRA = [parc, gbc, transrate, probe_c001]


def main() -> None:
    from headstart import rank
    from headstart.features import clear_memory_cache
    from headstart.select import SCORES

    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--fits",
        default="/tmp/headstart-rankbench",
        help="rank_transfer.py's WORK folder (its fine-tuning records)",
    )
    parser.add_argument("--work", default="/tmp/headstart-rankstudy")
    parser.add_argument("--targets", default="fmnist,mnist,digits")
    parser.add_argument("--max-items", default="200,300,1000")
    parser.add_argument("--exclude", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fits_dir, work = Path(args.fits), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in (fits_dir / "results.jsonl").read_text().splitlines()]
    out = work / "results.jsonl"
    if not out.is_file():  # the fine-tuning records, then this study's rankings
        out.write_text("".join(json.dumps(r) + "\n" for r in records if r["kind"] == "fit"))
        if (fits_dir / "recipe.json").is_file():
            (work / "recipe.json").write_text((fits_dir / "recipe.json").read_text())
    finished = rt.done(out)
    for name in args.targets.split(","):
        xtr, ytr, _, _, classes = rt.target(name)
        labels = [classes[i] for i in ytr]
        source = rt.source_run(fits_dir)
        cands = [source if c == "SOURCE" else c for c in rt.CANDIDATES]
        for m in (int(v) for v in args.max_items.split(",")):
            if (name, "rank", None, m, 0) in finished:
                continue
            clear_memory_cache()
            res = rank(
                xtr,
                cands,
                y=labels,
                image_size=rt.IMAGE_SIZE,
                max_items=m,
                scores=[*SCORES, *EXTRA],
            )
            rt.append(
                out,
                {
                    "target": name,
                    "kind": "rank",
                    "max_items": m,
                    "seconds": res.seconds,
                    "n_items": res.n_items,
                    "rows": [r.to_dict() for r in res.rows],
                },
            )
    rt.summary(work, tuple(c for c in args.exclude.split(",") if c))


if __name__ == "__main__":
    main()
