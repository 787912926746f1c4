"""Medical imaging (issue 34): DICOM / NIfTI readers on pydicom's real test files,
grouped (patient) splits, and DICOM data through fit / evaluate / predict / serving."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, make_arrays

pydicom = pytest.importorskip("pydicom")

from headstart.data.images import DataError, load_pixels, open_inputs, open_source  # noqa: E402
from headstart.data.medical import (  # noqa: E402
    WINDOW_PRESETS,
    MedicalError,
    Window,
    apply_window,
    read_dicom,
    read_unit,
    write_dicom,
)
from headstart.data.splits import grouped_split, stratified_folds  # noqa: E402

FILES = Path(pydicom.data.__file__).parent / "test_files"  # shipped with pydicom, offline


def _file(name: str) -> str:
    path = FILES / name
    if not path.is_file():  # pragma: no cover - pydicom ships these
        pytest.skip(f"{name} not in this pydicom")
    return str(path)


def test_ct_small_reads_in_hounsfield_units_and_windows_by_preset():
    raw = pydicom.dcmread(_file("CT_small.dcm")).pixel_array
    hu, info = read_dicom(_file("CT_small.dcm"))
    # rescale intercept -1024, slope 1: stored 128..2191 -> -896..1167 HU
    assert (raw.min(), raw.max()) == (128, 2191)
    assert (hu.min(), hu.max()) == (-896.0, 1167.0)
    np.testing.assert_array_equal(hu, raw.astype(np.float32) - 1024.0)
    assert info["window"] is None and not info["monochrome1"]
    # the lung preset (centre -600, width 1500): -1350.5 .. 149.5 HU map onto 0 .. 1
    lung = read_unit(_file("CT_small.dcm"), "lung")
    c, w = WINDOW_PRESETS["lung"]
    expected = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(lung, expected, atol=1e-6)
    assert lung[hu >= 150].min() == 1.0  # everything denser than the lung window is white
    bone = read_unit(_file("CT_small.dcm"), "bone")
    assert bone.max() < 1.0 and bone[hu <= -500].max() == 0.0  # air black in bone window
    # explicit centre,width as numbers equals the preset
    np.testing.assert_array_equal(read_unit(_file("CT_small.dcm"), "-600,1500"), lung)
    # no window in the file: the image's own range
    full = read_unit(_file("CT_small.dcm"))
    assert full.min() == 0.0 and full.max() == 1.0


def test_mr_small_uses_the_files_own_window():
    values, info = read_dicom(_file("MR_small.dcm"))
    assert info["window"] == (600.0, 1600.0)
    unit = read_unit(_file("MR_small.dcm"))
    np.testing.assert_allclose(unit, apply_window(values, (600.0, 1600.0)))
    assert 0.0 < unit.mean() < 1.0
    assert read_unit(_file("MR_small.dcm"), "minmax").max() == 1.0


def test_window_parse_errors_name_the_choices():
    assert Window.parse("brain") == Window("brain", 40.0, 80.0)
    with pytest.raises(MedicalError, match="lung"):
        Window.parse("lungs")
    with pytest.raises(MedicalError, match="width"):
        Window.parse("40,0")


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "ct_mono1.dcm"
    ds.save_as(inverted)
    np.testing.assert_allclose(
        read_unit(str(inverted), "lung"), 1.0 - read_unit(_file("CT_small.dcm"), "lung")
    )


def test_compressed_files_decode_or_name_the_missing_decoder():
    mr = read_unit(_file("MR_small.dcm"))
    np.testing.assert_array_equal(read_unit(_file("MR_small_RLE.dcm")), mr)  # RLE: numpy
    np.testing.assert_array_equal(read_unit(_file("MR_small_jp2klossless.dcm")), mr)  # Pillow
    assert read_unit(_file("JPEG2000.dcm")).shape == (1024, 256)
    try:
        read_unit(_file("JPEG-lossy.dcm"))  # 12-bit JPEG Extended: Pillow cannot
    except MedicalError as exc:
        assert "JPEG Extended" in str(exc) and "pylibjpeg-libjpeg" in str(exc)
    else:  # a decoder plugin is installed here: then it decodes
        pass


def test_a_multi_frame_file_is_read_as_slices(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    # rtdose_rle.dcm: 15 frames (RLE); MR_small: one
    (root / "a" / "dose.dcm").write_bytes(Path(_file("rtdose_rle.dcm")).read_bytes())
    (root / "b" / "mr.dcm").write_bytes(Path(_file("MR_small.dcm")).read_bytes())
    (root / "b" / "ct.dcm").write_bytes(Path(_file("CT_small.dcm")).read_bytes())
    source = open_source(root)
    assert len(source) == 17
    assert [str(i).endswith(f"dose.dcm#frame={k}") for k, i in enumerate(source.items[:15])]
    assert list(source.labels) == [0] * 15 + [1, 1]
    frames = [read_unit(source.items[k]) for k in (0, 7)]
    assert frames[0].shape == (10, 10) and not np.array_equal(frames[0], frames[1])
    inputs = open_inputs(root / "a")
    assert len(inputs) == 15 and len(set(inputs.items)) == 15
    assert len(source.subset([0, 1]).fingerprint()) == 24  # stat of the file under a slice


def test_16_bit_detail_reaches_the_network_input(tmp_path):
    """A smooth 12-bit ramp inside the window keeps more than 256 grey levels in the
    network's input tensor (an 8-bit pipeline would have at most 256)."""
    from headstart.data.transforms import ImageDataset, ImageTransform
    from headstart.zoo import create_backbone

    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 4096 levels, 12 bits
    path = write_dicom(tmp_path / "ramp.dcm", ramp, window=(2048, 4097))
    img = load_pixels(str(path))
    assert img.mode == "F"
    pre = create_backbone("tiny:cnn").preprocess
    ds = ImageDataset(open_inputs(str(path)), ImageTransform(64, pre, "none"))
    x, _ = ds[0]
    assert x.shape == (3, 64, 64)
    assert len(np.unique(x[0].numpy())) > 1000  # an 8-bit pipeline has at most 256


def test_nifti_volume_slices(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(0).normal(size=(12, 10, 4)).astype(np.float32)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        nib.save(nib.Nifti1Image(vol + (cls == "b"), np.eye(4)), tmp_path / cls / "v.nii.gz")
    source = open_source(tmp_path)
    assert len(source) == 8 and source.items[2].endswith("v.nii.gz#frame=2")
    sl = read_unit(source.items[1], "minmax")
    assert sl.shape == (10, 12)  # rows: the volume's second axis


def _dicom_csv(tmp_path, n_patients=12, per=4, group=True, seed=0):
    """DICOM images (16-bit, from the colour test images' bright channel) of ``n_patients``
    patients with ``per`` images each, a CSV of path,label,patient_id."""
    images, labels = make_arrays(n_patients * per, size=16, seed=seed)
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        patient = f"P{i // per:03d}"
        grey = (img.max(axis=2).astype(np.uint16) * 16) + (img[..., 0].astype(np.uint16))
        # class a: channel 0 bright, class b: channel 1: keep the class in the grey level
        path = write_dicom(tmp_path / "dcm" / f"{i:03d}.dcm", grey, patient_id=patient)
        rows.append({"path": f"dcm/{path.name}", "label": lab, "patient_id": patient})
    csv_path = tmp_path / "data.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    return csv_path


def test_grouped_split_keeps_patients_whole_and_warns_without_a_group(tmp_path, caplog):
    csv_path = _dicom_csv(tmp_path)
    with caplog.at_level(logging.WARNING, logger="headstart.data.images"):
        plain = open_source(csv_path)
    assert plain.groups is None
    assert "patient_id" in caplog.text and "--group-column" in caplog.text
    source = open_source(csv_path, group_column="patient_id")
    assert len(set(source.groups)) == 12
    tr, va = grouped_split(source.labels, 0.25, 0, source.groups)
    assert not set(source.groups[tr]) & set(source.groups[va])
    assert len(tr) + len(va) == len(source) and 0.15 < len(va) / len(source) < 0.35
    for tr, te in stratified_folds(source.labels, 3, 0, source.groups):
        assert not set(source.groups[tr]) & set(source.groups[te])
    with pytest.raises(DataError, match="group"):
        grouped_split(source.labels, 0.25, 0, np.array(["one"] * len(source)))
    with pytest.raises(DataError, match="patient_id"):
        open_source(tmp_path / "dcm", group_column="patient_id")


def test_study_fractions_and_baseline_cv_keep_patients_whole(tmp_path):
    from headstart.study import nested_fractions

    labels = np.repeat([0, 1, 0, 1, 0, 1], 5)
    groups = np.repeat([f"p{i}" for i in range(6)], 5)
    subsets = nested_fractions(labels, [0.3, 1.0], 0, groups)
    for idx in subsets.values():
        chosen = set(groups[idx])
        assert sum(len(np.flatnonzero(groups == g)) for g in chosen) == len(idx)
    assert set(subsets[0.3]) <= set(subsets[1.0]) and len(subsets[1.0]) == 30


def test_fit_on_dicom_csv_with_patients_evaluate_predict_serve(tmp_path):
    from headstart import ImageClassifier
    from headstart.inference import Predictor
    from headstart.tasks.serving.image import open_image

    csv_path = _dicom_csv(tmp_path)
    run = tmp_path / "run"
    clf = ImageClassifier(
        "tiny:cnn", run_dir=run, group_column="patient_id", val_fraction=0.25, **FAST
    )
    source, train, val = clf.split(str(csv_path))
    assert not set(train.groups) & set(val.groups)
    clf.fit(str(csv_path))
    m = clf.evaluate(str(csv_path))
    assert m["clinical"]["bootstrap"]["unit"] == "patient"
    assert m["clinical"]["bootstrap"]["groups"] == 12
    # data without the id column still evaluates, resampling images
    plain = tmp_path / "plain.csv"
    rows = list(csv.DictReader(open(csv_path)))
    with open(plain, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows({"path": r["path"], "label": r["label"]} for r in rows)
    assert clf.evaluate(str(plain))["clinical"]["bootstrap"]["unit"] == "item"
    loaded = ImageClassifier.load(run)
    first = str(source.items[0])
    proba = loaded.predict_proba([first])
    pred = Predictor(loaded).predict([first])[0]
    np.testing.assert_allclose(pred.probabilities, proba[0], atol=1e-4)
    # an upload of DICOM bytes reads as the file does, and `serve` answers it
    img = open_image(Path(first).read_bytes())
    assert img.mode == "F" and img.size == (16, 16)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from headstart.serve import ServeSettings, create_app

    with TestClient(create_app({"ct": run}, ServeSettings())) as client:
        data = Path(first).read_bytes()
        raw = client.post(
            "/predict", content=data, headers={"content-type": "application/octet-stream"}
        )
        form = client.post("/predict", files={"file": ("x.dcm", data, "application/dicom")})
    for r in (raw, form):
        assert r.status_code == 200, r.text
        top = r.json()["predictions"][0]
        assert top["probability"] == pytest.approx(float(proba[0].max()), abs=1e-4)


def test_predict_explain_writes_grad_cam_overlays_and_every_run_has_a_model_card(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from PIL import Image

    from headstart import ImageClassifier
    from headstart.cli import main

    csv_path = _dicom_csv(tmp_path, n_patients=8, per=3)
    run = tmp_path / "run"
    ImageClassifier(
        "tiny:cnn",
        run_dir=run,
        group_column="patient_id",
        operating_point="youden",
        val_fraction=0.25,
        baseline=False,
        **FAST,
    ).fit(str(csv_path))
    card = (run / "model_card.md").read_text()
    for part in ("## Source model", "## Intended use", "## Training data", "8 patients"):
        assert part in card, part
    assert "| sensitivity |" in card and "youden" in card and "external sites" in card
    out = tmp_path / "maps"
    rc = main(["predict", str(run), str(tmp_path / "dcm"), "--out", str(tmp_path / "p.csv"),
               "--explain", str(out)])  # fmt: skip
    assert rc == 0
    index = list(csv.DictReader(open(out / "index.csv")))
    assert len(index) == 24
    panel = np.asarray(Image.open(out / index[0]["file"]))
    assert panel.shape[1] == 2 * panel.shape[0] and panel.shape[2] == 3
    left, right = panel[:, : panel.shape[0]], panel[:, panel.shape[0] :]
    assert not np.array_equal(left, right)  # the map is drawn over the crop
    assert np.allclose(left[..., 0], left[..., 1])  # the crop is the grey DICOM image
    preds = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["prediction"] for r in preds] == [r["prediction"] for r in index]


def test_medmnist_loader_on_a_small_npz_and_dicom_export(tmp_path):
    from headstart.datasets import export_dicom_csv, medmnist_npz

    rng = np.random.default_rng(0)
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(
        npz,
        train_images=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(10) % 2).reshape(-1, 1),
        val_images=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        val_labels=np.zeros((4, 1), dtype=np.int64),
        test_images=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        test_labels=np.ones((4, 1), dtype=np.int64),
    )
    x, y, classes = medmnist_npz(npz, "train", ["normal", "pneumonia"])
    assert x.shape == (10, 28, 28) and list(y[:4]) == [0, 1, 0, 1]
    assert classes == ["normal", "pneumonia"]
    with pytest.raises(FileNotFoundError, match="zenodo"):
        medmnist_npz(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="split"):
        medmnist_npz(npz, "dev")
    csv_path = export_dicom_csv(x, y, classes, tmp_path / "out", patients=np.arange(10) // 2)
    source = open_source(csv_path, group_column="patient_id")
    assert len(source) == 10 and len(set(source.groups)) == 5
    ds = pydicom.dcmread(source.items[3])
    assert ds.BitsStored == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_array_equal(ds.pixel_array, x[3].astype(np.uint16) * 257)


def test_cold_start_suggest_reads_a_dicom_pool_with_the_window_asked_for(tmp_path):
    """Before any fit there is no run to remember a window: suggest's --window is it."""
    from headstart import ImageClassifier
    from headstart.active import suggest
    from headstart.cli import main

    _dicom_csv(tmp_path, n_patients=4, per=3)
    pool = tmp_path / "dcm"
    plain = ImageClassifier("tiny:cnn").read_unlabeled(str(pool))
    bone = ImageClassifier("tiny:cnn", window="bone").read_unlabeled(str(pool))
    assert plain.window is None and bone.window == "bone"
    first = plain.items[0]
    assert not np.array_equal(
        np.asarray(load_pixels(first, plain.window)), np.asarray(load_pixels(first, "bone"))
    )
    out = tmp_path / "to_label.csv"
    cache = str(tmp_path / "cache")
    rc = main(["suggest", "tiny:cnn", "--pool", str(pool), "--budget", "3", "--window", "bone",
               "--out", str(out), "--feature-cache", cache])  # fmt: skip
    assert rc == 0 and len(list(csv.DictReader(open(out)))) == 3
    run = tmp_path / "run"
    ImageClassifier("tiny:cnn", run_dir=run, baseline=False, val_fraction=0.34, **FAST).fit(
        str(tmp_path / "data.csv")
    )
    with pytest.raises(ValueError, match="window would not apply"):
        suggest(str(run), str(pool), 3, window="bone")


def _volume(path, n=5, side=16, seed=0):
    """A 3-D NIfTI volume whose slice k holds values near 100 k (the slice's own level)."""
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(seed)
    vol = np.stack([100.0 * k + rng.normal(0, 5, (side, side)) for k in range(n)], axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), path)
    return path


def test_slices_stack_reads_each_slice_with_its_neighbours_as_channels(tmp_path):
    from headstart import ImageClassifier
    from headstart.config import FitConfig

    vol = _volume(tmp_path / "v.nii.gz")
    window = FitConfig(slices="stack", window="200,500").pixel_window()
    assert window == "200,500+stack" and FitConfig(window="lung").pixel_window() == "lung"
    mid = np.asarray(load_pixels(f"{vol}#frame=2", window), dtype=np.float64)
    single = [
        np.asarray(load_pixels(f"{vol}#frame={k}", "200,500"), dtype=np.float64) for k in range(5)
    ]
    assert mid.shape == (16, 16, 3)
    for channel, k in enumerate((1, 2, 3)):  # slices 1, 2, 3 on red, green, blue
        assert np.abs(mid[..., channel] - single[k]).max() <= 1.0
    first = np.asarray(load_pixels(f"{vol}#frame=0", window), dtype=np.float64)
    assert np.abs(first[..., 0] - single[0]).max() <= 1.0  # the edge repeats its own slice
    assert np.abs(first[..., 2] - single[1]).max() <= 1.0
    source = ImageClassifier("tiny:cnn", slices="stack").read_unlabeled(str(vol))
    assert len(source) == 5 and source.window == "file+stack"


def test_a_stack_run_predicts_volumes_as_it_was_trained(tmp_path):
    from headstart import ImageClassifier

    rows = ["path,label"]
    for i in range(8):
        _volume(tmp_path / "vol" / f"{i}.nii.gz", seed=i)
        rows.append(f"vol/{i}.nii.gz,{'ab'[i % 2]}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    est = ImageClassifier(
        "tiny:cnn", run_dir=run, slices="stack", baseline=False, val_fraction=0.25, **FAST
    ).fit(str(tmp_path / "data.csv"))
    assert est.config_.slices == "stack"
    reloaded = ImageClassifier.load(run)
    assert reloaded.config_.pixel_window() == "file+stack"
    item = str(tmp_path / "vol" / "3.nii.gz")
    np.testing.assert_allclose(reloaded.predict_proba(item), est.predict_proba(item), atol=1e-6)
    assert reloaded.predict_proba(item).shape == (5, 2)  # one row per slice
