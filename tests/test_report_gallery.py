"""``fit --test`` on images writes ``report.html``: the run's metrics and the test items it was
surest of, right and wrong (fastai's ``top_losses``), each with its Grad-CAM map."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from headstart.explain import confident_right_and_wrong

from conftest import FAST, make_arrays, write_folder


def test_confident_right_and_wrong_against_a_naive_sort():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, 200)
    predicted = proba.argmax(1)
    got = confident_right_and_wrong(labels, proba, predicted, k=5)
    sure = [(proba[i, predicted[i]], i) for i in range(200)]
    right = sorted((s for s in sure if predicted[s[1]] == labels[s[1]]), reverse=True)
    wrong = sorted((s for s in sure if predicted[s[1]] != labels[s[1]]), reverse=True)
    assert got["right"] == [i for _, i in right[:5]]
    assert got["wrong"] == [i for _, i in wrong[:5]]
    none_wrong = confident_right_and_wrong(labels, proba, labels, k=3)
    assert none_wrong["wrong"] == [] and len(none_wrong["right"]) == 3


def test_fit_with_a_test_set_writes_a_report_with_the_surest_right_and_wrong_maps(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from PIL import Image

    from headstart.cli import main

    train = write_folder(tmp_path / "train", *make_arrays(n=45, n_classes=3, seed=0))
    images, labels = make_arrays(n=24, n_classes=3, seed=1)
    labels = labels.copy()
    labels[:3] = ["b", "c", "a"]  # three test items labelled wrong: the model must miss them
    test = write_folder(tmp_path / "test", images, labels)
    run = tmp_path / "run"
    settings = {**FAST, "epochs": 3}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "device"]
    rc = main(["fit", str(train), "--test", str(test), "--backbone", "tiny:cnn",
               "--strategy", "finetune", "--no-baseline", "--out", str(run), *flags])  # fmt: skip
    assert rc == 0
    page = (run / "report.html").read_text()
    assert "Surest right" in page and "Surest wrong" in page
    assert "Of 24 test items" in page and "Grad-CAM" in page
    right = page.split("<h3>Surest wrong")[0].split("<h3>Surest right")[1]
    wrong = page.split("<h3>Surest wrong")[1]
    assert right.count("<figure>") == 6
    # the three mislabelled items are among the wrong ones, named with their true label
    for i, truth in ((0, "b"), (1, "c"), (2, "a")):
        assert f"test/{truth}/{i:03d}.png" in wrong
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) >= 9
    panel = np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs[0]))).convert("RGB"))
    assert panel.shape == (32, 64, 3)  # the crop beside its map
    assert not np.array_equal(panel[:, :32], panel[:, 32:])
