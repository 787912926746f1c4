"""Audio: reading and checking recordings, the front end, the packaged encoders' real weights
(CREPE finds a sine's pitch; GE2E tells synthetic speakers apart), AudioClassifier end to
end (fit, save, load, predict, CLI, pretrain -> chained fit, serve) and the espeak-ng
accent corpus builder. Audio is generated here (tones, espeak-ng); nothing is committed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from headstart import AudioClassifier
from headstart.data.audio import (
    AudioDataset,
    DataError,
    audio_from_csv,
    audio_from_folder,
    fit_length,
    open_audio_inputs,
    read_audio,
)
from headstart.zoo import ZooError, create_backbone
from headstart.zoo.base import AudioPreprocess

torch.set_num_threads(1)
ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(
    not ESPEAK, reason="espeak-ng is not installed (scripts/setup.sh installs it)"
)
RATE = 16000
TONES = {"low": 300.0, "mid": 900.0, "high": 2500.0}
FAST = dict(
    epochs=3,
    head_epochs=3,
    batch_size=8,
    eval_batch_size=16,
    lr=3e-3,
    head_lr=1e-2,
    early_stopping=0,
    num_workers=0,
    device="cpu",
    seed=0,
    val_fraction=0.25,
)


def tone(hz: float, seconds: float = 0.6, rate: int = RATE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wobble = hz * (1 + 0.03 * rng.standard_normal())
    wave = 0.3 * np.sin(2 * np.pi * wobble * t) + 0.01 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def write_tones(root: Path, per_class: int = 8, rate: int = RATE) -> Path:
    """``root/<low|mid|high>/<i>.wav``: noisy tones, separable by pitch."""
    for name, hz in TONES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sf.write(
                str(root / name / f"{i:02d}.wav"),
                tone(hz, 0.4 + 0.05 * (i % 5), rate, seed=i),
                rate,
            )
    return root


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return write_tones(tmp_path_factory.mktemp("tones") / "train")


@pytest.fixture(scope="module")
def fitted(tones, tmp_path_factory):
    run = tmp_path_factory.mktemp("audio-run") / "run"
    clf = AudioClassifier("scratch:audio:cnn", strategy="finetune", run_dir=run, **FAST)
    clf.fit(str(tones))
    return clf, run


# ---------------------------------------------------------------------- reading
def test_read_audio_mixes_down_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1).astype(np.float32)
    for fmt, ext in (("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")):
        path = tmp_path / f"a.{ext}"
        sf.write(str(path), stereo, 44100, format=fmt)
        wave = read_audio(path, RATE)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert abs(len(wave) - RATE) <= 1
        spectrum = np.abs(np.fft.rfft(wave))
        assert abs(np.argmax(spectrum) * RATE / len(wave) - 440) < 3  # pitch kept


def test_bad_recordings_are_named_with_the_fix(tmp_path):
    root = write_tones(tmp_path / "data", per_class=2)
    sf.write(str(root / "low" / "empty.wav"), np.zeros(0, np.float32), RATE)
    sf.write(str(root / "mid" / "short.wav"), np.zeros(160, np.float32), RATE)  # 10 ms
    (root / "high" / "garbage.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(DataError) as err:
        audio_from_folder(root)
    msg = str(err.value)
    for name, why in (
        ("empty.wav", "empty"),
        ("short.wav", "too short"),
        ("garbage.wav", "unreadable"),
    ):
        assert name in msg and why in msg
    assert "--skip-bad" in msg
    source = audio_from_folder(root, skip_bad=True)
    assert len(source) == 6 and len(source.skipped) == 3


def test_csv_errors_name_the_line(tmp_path):
    root = write_tones(tmp_path / "data", per_class=2)
    good = tmp_path / "ok.csv"
    good.write_text("path,label\ndata/low/00.wav,low\ndata/high/00.wav,high\n")
    assert audio_from_csv(good).classes == ["high", "low"]
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\ndata/low/00.wav,low\ndata/low/nope.wav,low\n")
    with pytest.raises(DataError, match=r"line 3: .*nope\.wav"):
        audio_from_csv(missing)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,label\ndata/low/00.wav,low\n")
    with pytest.raises(DataError, match="no column 'path'"):
        audio_from_csv(wrong)
    assert root.is_dir()


def test_arrays_need_a_rate_and_a_waveform():
    with pytest.raises(DataError, match="sample rate"):
        open_audio_inputs([tone(300)])
    with pytest.raises(DataError, match="1-D waveform"):
        read_audio(np.zeros((2, 3, 4), np.float32), RATE, RATE, "x")
    with pytest.raises(DataError, match="NaN"):
        read_audio(np.full(100, np.nan, np.float32), RATE, RATE, "x")


def test_fit_length_and_augmentation_are_deterministic(tones):
    source = audio_from_folder(tones)
    pre = AudioPreprocess(RATE, 1.0)
    a = AudioDataset(source, pre, "strong", seed=3, train=True)
    b = AudioDataset(source, pre, "strong", seed=3, train=True)
    assert torch.equal(a[2][0], b[2][0]) and a[2][0].shape == (RATE,)
    a.set_epoch(1)
    assert not torch.equal(a[2][0], b[2][0])  # another epoch, another draw
    plain = AudioDataset(source, pre, "none")
    wave = read_audio(source.items[2], RATE)
    centred = fit_length(wave, RATE, None)
    assert torch.equal(plain[2][0], torch.from_numpy(centred))
    assert np.array_equal(fit_length(np.arange(10, dtype=np.float32), 4, None), [3, 4, 5, 6])


# ---------------------------------------------------------------------- front end
def test_log_mel_matches_a_numpy_reference():
    from transformers.audio_utils import mel_filter_bank

    from headstart.zoo.audio import LogMel

    wave = tone(700, 0.5)
    mel = LogMel(RATE, 400, 160, 40)(torch.from_numpy(wave)[None])[0].numpy()
    padded = np.pad(wave, 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    frames = np.stack([padded[i : i + 400] * window for i in range(0, len(wave) + 1, 160)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    bank = mel_filter_bank(201, 40, 20.0, 8000.0, RATE, norm="slaney", mel_scale="slaney")
    reference = np.log(power @ bank + 1e-6).T
    assert mel.shape == reference.shape
    np.testing.assert_allclose(mel, reference, atol=2e-3)


def test_spec_augment_masks_only_while_training():
    from headstart.zoo.audio import spec_augment

    mel = torch.randn(4, 40, 100)
    masked = spec_augment(mel, 2, 8, 2, 10)
    changed = masked != mel
    assert changed.any() and changed.float().mean() < 0.6
    backbone = create_backbone("scratch:audio:cnn")
    backbone.set_augment("strong")
    x = torch.from_numpy(tone(500, 1.0))[None]
    backbone.eval()
    assert torch.equal(backbone(x), backbone(x))  # no masks in eval mode


# ---------------------------------------------------------------------- backbones
def test_audio_backbones_fulfil_the_contract():
    x = torch.from_numpy(np.stack([tone(300), tone(900)]))
    x = torch.nn.functional.pad(x, (0, RATE - x.shape[1]))
    for model_id in ("scratch:audio:cnn", "packaged:crepe-tiny", "packaged:ge2e"):
        b = create_backbone(model_id).eval()
        with torch.no_grad():
            feats, seq = b(x), b.sequence(x)
        assert feats.shape == (2, b.feature_dim) and seq.shape[::2] == (2, b.sequence_dim)
        assert torch.isfinite(feats).all()
        assert sum(g.num_params() for g in b.groups()) == sum(p.numel() for p in b.parameters())
        assert b.meta.modality == "audio" and b.meta.offline
        if b.meta.params:
            assert b.meta.params == sum(p.numel() for p in b.parameters())
    with pytest.raises(ZooError, match="headstart pretrain"):
        create_backbone("audio:cnn")


def test_crepe_weights_find_the_pitch_of_a_sine():
    """The packaged CREPE weights are real: its own head names a sine's pitch."""
    from headstart.zoo.audio import crepe_bin_to_hz

    crepe = create_backbone("packaged:crepe-tiny").eval()
    for hz in (110.0, 261.6, 440.0, 1000.0):
        wave = torch.from_numpy(
            0.5 * np.sin(2 * np.pi * hz * np.arange(RATE) / RATE).astype(np.float32)
        )[None]
        with torch.no_grad():
            found = crepe_bin_to_hz(crepe.pitch_logits(wave).argmax(-1)).median().item()
        assert abs(found / hz - 1) < 0.02, (hz, found)


def test_ge2e_split_layers_equal_resemblyzers_three_layer_lstm():
    """Three one-layer LSTMs with the checkpoint's weights compute what resemblyzer's
    one 3-layer ``nn.LSTM`` (its VoiceEncoder.forward, written out here) computes."""
    from headstart.zoo.audio import _package_file

    state = torch.load(
        _package_file("resemblyzer", "pretrained.pt"), map_location="cpu", weights_only=False
    )["model_state"]
    lstm, linear = torch.nn.LSTM(40, 256, 3, batch_first=True), torch.nn.Linear(256, 256)
    lstm.load_state_dict(
        {k.removeprefix("lstm."): v for k, v in state.items() if k.startswith("lstm.")}
    )
    linear.load_state_dict(
        {k.removeprefix("linear."): v for k, v in state.items() if k.startswith("linear.")}
    )
    ge2e = create_backbone("packaged:ge2e").eval()
    wave = torch.from_numpy(tone(220, 1.6))[None]
    with torch.no_grad():
        mels = ge2e._mels(wave)
        _, (hidden, _) = lstm(mels)
        raw = torch.relu(linear(hidden[-1]))
        reference = raw / raw.norm(dim=1, keepdim=True)
        np.testing.assert_allclose(ge2e(wave).numpy(), reference.numpy(), atol=1e-5)


@needs_espeak
def test_ge2e_tells_speakers_apart():
    """Real speaker-verification weights: two words of one voice are closer than the same
    word in two voices."""
    from headstart.data.speech import speak

    ge2e = create_backbone("packaged:ge2e").eval()
    clips = [
        speak(w, "en-us", v, 150, 50)
        for v, w in (
            ("m3", "hello there my friend"),
            ("m3", "stop the music now please"),
            ("f4", "hello there my friend"),
            ("f4", "stop the music now please"),
        )
    ]
    x = torch.stack([torch.from_numpy(fit_length(c, 32000, None)) for c in clips])
    with torch.no_grad():
        e = ge2e(x)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[1, 3]


# ---------------------------------------------------------------------- estimator
def test_fit_save_load_predict(fitted, tones, tmp_path):
    clf, run = fitted
    assert clf.metrics_["validation"]["accuracy"] >= 0.6
    assert clf.preprocess_ == AudioPreprocess(RATE, 1.0)
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "audio" and config["preprocess"]["kind"] == "audio"
    files = sorted(str(p) for p in tones.rglob("*.wav"))[:6]
    again = AudioClassifier.load(run)
    np.testing.assert_allclose(again.predict_proba(files), clf.predict_proba(files), atol=1e-5)
    # arrays at another rate are resampled like files
    waves = [read_audio(f, 8000) for f in files]
    np.testing.assert_allclose(
        AudioClassifier.load(
            run,
        )
        .set_params(array_rate=8000)
        .predict_proba(open_audio_inputs(waves, rate=8000)),
        clf.predict_proba(files),
        atol=0.05,
    )


def test_predictor_takes_paths_bytes_and_reports_bad_items(fitted, tones, tmp_path):
    from headstart.inference import Predictor

    clf, run = fitted
    predictor = Predictor.from_run(run)
    path = sorted(tones.rglob("*.wav"))[0]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    too_long = str(tmp_path / ("n" * 300 + ".wav"))  # no filesystem holds the name
    results = predictor.predict([str(path), path.read_bytes(), str(bad), b"", too_long])
    np.testing.assert_allclose(
        results[0].probabilities, clf.predict_proba([str(path)])[0], atol=1e-5
    )
    np.testing.assert_allclose(results[1].probabilities, results[0].probabilities, atol=1e-5)
    assert "bad.wav" in results[2].error and "empty" in results[3].error
    assert results[4].error == f"{too_long}: no such file"


def test_serve_takes_an_uploaded_recording(fitted, tones):
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    _, run = fitted
    path = sorted(tones.rglob("*.wav"))[0]
    with TestClient(create_app({"kw": str(run)})) as client:
        up = client.post("/predict", files={"file": ("a.wav", path.read_bytes(), "audio/wav")})
        raw = client.post(
            "/predict", content=path.read_bytes(), headers={"content-type": "audio/wav"}
        )
        junk = client.post("/predict", content=b"junk", headers={"content-type": "audio/wav"})
    assert up.status_code == 200 and raw.status_code == 200, (up.text, raw.text)
    assert up.json()["predictions"] == raw.json()["predictions"]
    assert up.json()["task"] == "audio"
    assert junk.status_code == 422 and "audio" in junk.text


def test_serve_tells_an_audio_model_s_clients_what_it_takes(fitted):
    """Image bytes, JSON or a form without 'file' sent to an audio model: the answer names
    recordings (it used to say "a text model takes JSON" for image bytes)."""
    from fastapi.testclient import TestClient

    from headstart.serve import create_app

    _, run = fitted
    with TestClient(create_app({"kw": str(run)})) as client:
        image = client.post("/predict", content=b"\x89PNG", headers={"content-type": "image/png"})
        json_body = client.post("/predict", json={"text": "hello"})
        form = client.post("/predict", data={"text": "hello"})  # url-encoded: no file
        multipart = client.post("/predict", files={"text": (None, "hello")})  # no 'file'
    assert image.status_code == 415 and "text model" not in image.text
    assert "Content-Type audio/*" in image.json()["detail"], image.text
    assert json_body.status_code == 415 and "audio/..." in json_body.json()["detail"]
    # the documented contract (issue 36): a url-encoded form is a media type it does not take
    assert form.status_code == 415 and "field 'file'" in form.json()["detail"], form.text
    assert "audio/*" in form.json()["detail"]
    assert multipart.status_code == 422, multipart.text
    assert "'file' (the recording)" in multipart.json()["detail"]


def test_feature_extract_on_a_packaged_encoder(tones):
    clf = AudioClassifier("packaged:ge2e", strategy="feature_extract", **FAST).fit(str(tones))
    assert clf.stages_[0]["trainable_params"] < 1000  # the linear head only
    assert clf.preprocess_.clip_seconds == 1.6  # GE2E's own clip


def test_image_backbone_refused_for_audio(tones):
    with pytest.raises(ZooError, match="audio backbone"):
        AudioClassifier("tiny:cnn", **FAST).fit(str(tones))


def test_clip_follows_long_recordings(tmp_path):
    from headstart.tasks.audio import resolve_clip

    root = tmp_path / "long"
    for name, hz in (("a", 300.0), ("b", 900.0)):
        (root / name).mkdir(parents=True)
        for i in range(4):
            sf.write(str(root / name / f"{i}.wav"), tone(hz, 2.33), RATE)
    backbone = create_backbone("scratch:audio:cnn")
    cfg = AudioClassifier().resolved_config()
    assert resolve_clip(cfg, backbone, audio_from_folder(root)) == pytest.approx(2.4)
    assert resolve_clip(cfg.replace(clip_seconds=0.5), backbone, None) == 0.5


def test_cli_pretrain_then_fit_from_the_source_run(tones, tmp_path, capsys):
    from headstart.cli import main

    flags = [
        "--epochs",
        "2",
        "--head-epochs",
        "2",
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--early-stopping",
        "0",
        "--val-fraction",
        "0.25",
    ]
    src = tmp_path / "source"
    assert main(["pretrain", str(tones), "--task", "audio", "--out", str(src), *flags]) == 0
    config = json.loads((src / "config.json").read_text())
    assert config["fit_config"]["backbone"] == "scratch:audio:cnn"
    assert config["fit_config"]["strategy"] == "finetune" and config["fit_config"]["bn"] == "train"
    out = tmp_path / "target"
    assert (
        main(
            [
                "fit",
                str(tones),
                "--task",
                "audio",
                "--backbone",
                str(src),
                "--strategy",
                "lp_ft",
                "--out",
                str(out),
                "--test",
                str(tones),
                *flags,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "1 s at 16000 Hz" in printed and "test" in printed
    child = json.loads((out / "config.json").read_text())
    assert child["backbone"]["meta"]["notes"]["lineage"] == ["scratch:audio:cnn"]
    csv_out = tmp_path / "pred.csv"
    assert main(["predict", str(out), str(tones), "--out", str(csv_out)]) == 0
    rows = list(csv.DictReader(open(csv_out)))
    assert len(rows) == 24 and rows[0]["prediction"] in TONES and not rows[0]["error"]
    assert main(["models", "--modality", "audio"]) == 0
    listed = capsys.readouterr().out
    assert "packaged:crepe-tiny" in listed and "packaged:ge2e" in listed


# ---------------------------------------------------------------------- corpus builder
@needs_espeak
def test_accent_corpus_is_reproducible_and_keeps_speakers_apart(tmp_path):
    from headstart.data.speech import COMMANDS, build_accent_corpus

    kw = dict(
        source="us",
        target="spanish",
        source_speakers=3,
        per_speaker=1,
        target_per_word=2,
        subsets=(1,),
        test_speakers=2,
        seed=5,
    )
    summary = build_accent_corpus(tmp_path / "a", **kw)
    n = len(COMMANDS)
    assert summary["splits"]["source"]["recordings"] == 3 * n
    assert summary["splits"]["target-train"]["recordings"] == 2 * n
    assert summary["splits"]["target-train-1"]["recordings"] == n
    assert summary["splits"]["target-test"]["recordings"] == 2 * n
    speakers = {}
    for split in ("source", "target-train", "target-test", "source-test"):
        rows = list(csv.DictReader(open(tmp_path / "a" / f"{split}.csv")))
        speakers[split] = {r["speaker"] for r in rows}
        assert {r["label"] for r in rows} == set(COMMANDS)
        for r in rows[:3]:
            wave, rate = sf.read(str(tmp_path / "a" / r["path"]))
            assert rate == RATE and 0.1 < len(wave) / rate < 2.0
    variant = {s: {x.split("@")[0].split("+")[1] for x in v} for s, v in speakers.items()}
    assert not variant["target-test"] & (variant["source"] | variant["target-train"])
    assert all(x.startswith("es") for x in speakers["target-test"])
    assert all(x.startswith("en-us") for x in speakers["source"])
    # a folder per word, readable as a labeled source
    assert len(audio_from_folder(tmp_path / "a" / "target-train-1")) == n
    again = build_accent_corpus(tmp_path / "b", **kw)
    assert again == summary
    first = sorted((tmp_path / "a" / "target-test").rglob("*.wav"))[0]
    twin = tmp_path / "b" / first.relative_to(tmp_path / "a")
    assert first.read_bytes() == twin.read_bytes()


def test_missing_espeak_is_explained(monkeypatch):
    from headstart.data import speech

    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install espeak-ng"):
        speech.build_accent_corpus("/nonexistent")


def test_upload_bytes_roundtrip():
    buf = io.BytesIO()
    sf.write(buf, tone(440, 0.5, 22050), 22050, format="WAV")
    data, rate = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    assert rate == 22050 and len(read_audio(data, RATE, rate, "x")) == 8000


def test_hub_speech_encoder_offline_error(no_network, tones):
    from headstart.zoo import OfflineError

    with pytest.raises(OfflineError, match="packaged:ge2e"):
        AudioClassifier("hf:facebook/wav2vec2-base", **FAST).fit(str(tones))


# ---------------------------------------------------------------------- speech recognition
def write_spoken(root: Path, words: list[str], n: int = 16, seed: int = 0) -> Path:
    """``root/train.csv`` (path,transcript) of ``n`` utterances of one or two ``words``,
    spoken by espeak-ng with a few voices."""
    from headstart.data.speech import speak

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 3))))
        wave = speak(text, "en-us", ("m1", "f2", "m3", "f4")[i % 4], 170, 50)
        sf.write(str(root / f"{i:03d}.wav"), wave, RATE)
        rows.append(f"{i:03d}.wav,{text.upper()}")
    (root / "train.csv").write_text("path,transcript\n" + "\n".join(rows) + "\n")
    return root / "train.csv"


def test_ctc_pieces():
    from headstart.tasks.asr import encode, greedy_decode, normalise

    vocab = [" ", "a", "b"]
    ids = encode([normalise("AB  a"), "b"], vocab)
    assert ids.tolist() == [[2, 3, 1, 2], [3, 0, 0, 0]]
    with pytest.raises(DataError, match="row 1: character"):
        encode(["abc"], vocab)
    # frames: a a blank a b b blank ' ' b  -> "aab b"
    path = [2, 2, 0, 2, 3, 3, 0, 1, 3]
    log_probs = torch.log(torch.nn.functional.one_hot(torch.tensor([path]), 4).float() + 1e-4)
    assert greedy_decode(log_probs, vocab) == ["aab b"]


def test_a_transcript_the_clip_cannot_hold_is_named_and_cut_recordings_are_said(caplog):
    """CTC needs a frame per character (and a blank between equal neighbours): a transcript
    longer than that was skipped by zero_infinity without a word. Recordings the clip cuts
    (and the words at their ends) are named, at fit and at transcription."""
    from headstart import SpeechRecognizer
    from headstart.tasks.asr import ctc_frames_needed

    assert ctc_frames_needed([1, 2, 2, 2, 3, 0, 0]) == 7  # a b b b c: two blanks
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, int(RATE * s)).astype(np.float32) for s in [0.5] * 11 + [2.34]]
    texts = ["ab"] * 6 + ["ba"] * 5 + ["abab"]
    settings = {**FAST, "epochs": 1, "array_rate": RATE, "val_fraction": 0}
    with caplog.at_level(logging.WARNING, logger="headstart.tasks.asr"):
        asr = SpeechRecognizer("scratch:audio:cnn", **settings).fit(waves, texts)
    assert asr.preprocess_.clip_seconds == pytest.approx(1.4)  # the 95th percentile
    assert "1 recording(s) last longer than the 1.4 s clip" in caplog.text
    assert "the auto clip covers 95% of the training recordings" in caplog.text
    caplog.clear()
    # audio:cnn gives 25 frames a second: 1 s holds 25 characters, "abab..." of 30 does not
    long_text = texts[:-1] + ["ab" * 15]
    with pytest.raises(
        DataError,
        match=r"recording 12: its transcript 'abab.*needs 30 "
        r"frames.*gives 25 for a 1 s clip.*--clip-seconds",
    ):
        SpeechRecognizer("scratch:audio:cnn", **{**settings, "clip_seconds": 1.0}).fit(
            waves, long_text
        )
    with caplog.at_level(logging.WARNING, logger="headstart.tasks.asr"):
        SpeechRecognizer("scratch:audio:cnn", **{**settings, "clip_seconds": 1.0}).fit(waves, texts)
    assert "1 recording(s) last longer than the 1 s clip" in caplog.text
    assert "recording 12" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headstart.tasks.asr"):
        asr.transcribe(waves[:2])
        assert not caplog.text
        asr.transcribe([np.zeros(RATE * 3, np.float32)])
    assert (
        "1 recording(s) last longer than the model's 1.4 s clip: only their middle" in caplog.text
    )


@needs_espeak
def test_speech_recognizer_fit_save_load_transcribe(tmp_path):
    from headstart import SpeechRecognizer
    from headstart.cli import main

    csv_path = write_spoken(tmp_path / "spoken", ["yes", "no"], n=20)
    run = tmp_path / "asr"
    asr = SpeechRecognizer("scratch:audio:cnn", run_dir=run, **{**FAST, "epochs": 3})
    asr.fit(str(csv_path))
    assert asr.classes_ == [" ", "e", "n", "o", "s", "y"]
    m = asr.evaluate(str(csv_path))
    assert set(m) >= {"cer", "wer", "sentence_accuracy", "examples"} and 0 <= m["cer"]
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "asr" and config["alphabet"] == " enosy"
    assert not config["multi_label"]
    again = SpeechRecognizer.load(run)
    files = [str(p) for p in sorted((tmp_path / "spoken").glob("*.wav"))[:5]]
    assert again.transcribe(files) == asr.transcribe(files)
    # chained: the recogniser is the backbone of the next (its CTC head is not reused)
    child = SpeechRecognizer(str(run), strategy="lp_ft", **{**FAST, "epochs": 1}).fit(str(csv_path))
    assert child.model_.backbone.meta.notes["lineage"] == ["scratch:audio:cnn"]
    # keep_head: the parent's alphabet and CTC head, even if these transcripts use fewer letters
    lines = csv_path.read_text().splitlines()
    only_yes = tmp_path / "spoken" / "yes.csv"
    only_yes.write_text("\n".join([lines[0]] + [x for x in lines[1:] if "NO" not in x]) + "\n")
    kept = SpeechRecognizer(
        str(run),
        keep_head=True,
        strategy="feature_extract",
        **{**FAST, "head_epochs": 1, "val_fraction": 0},
    ).fit(str(only_yes))
    assert kept.classes_ == asr.classes_
    with pytest.raises(ValueError, match="speech-recogniser run"):
        SpeechRecognizer("scratch:audio:cnn", keep_head=True, **FAST).fit(str(csv_path))
    out = tmp_path / "t.csv"
    (tmp_path / "spoken" / "broken.wav").write_bytes(b"xx")
    assert main(["predict", str(run), str(tmp_path / "spoken"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 21 and sum(bool(r["error"]) for r in rows) == 1
    assert main(["evaluate", str(run), str(csv_path)]) == 0


def test_speech_recognizer_needs_an_audio_backbone(tmp_path):
    from headstart import SpeechRecognizer

    (tmp_path / "a.wav").write_bytes(b"")
    sf.write(str(tmp_path / "a.wav"), tone(300), RATE)
    (tmp_path / "t.csv").write_text("path,transcript\na.wav,hi\na.wav,ho\n")
    with pytest.raises(ZooError, match="--task asr needs an audio backbone"):
        SpeechRecognizer("tiny:cnn", **FAST).set_params(val_fraction=0).fit(str(tmp_path / "t.csv"))


def test_onnx_export_and_onnx_engine(fitted, tones):
    """The spectral front end exports with the network (ONNX STFT): same probabilities."""
    from headstart.export import export_model
    from headstart.inference import Predictor

    clf, run = fitted
    result = export_model(run, "onnx", check=str(tones), n_check=6)
    assert result.max_abs_diff < 1e-4
    meta = json.loads(Path(result.sidecar).read_text())
    assert meta["inputs"][0] == {"name": "waveform", "dtype": "float32", "shape": ["batch", RATE]}
    files = sorted(str(p) for p in tones.rglob("*.wav"))[:4]
    onnx = Predictor.from_run(run, engine="onnx").predict(files)
    np.testing.assert_allclose(
        np.stack([r.probabilities for r in onnx]), clf.predict_proba(files), atol=1e-4
    )


def test_hf_speech_encoder_adapter_roundtrip(tones, tmp_path):
    """The wav2vec2-family adapter (random tiny:wav2vec2): contract, fit, save with its
    config as an asset, reload with no hub; a local folder with a hub layout loads too."""
    from headstart.zoo.base import SourceMeta
    from headstart.zoo.hf_audio import from_audio_folder

    b = create_backbone("tiny:wav2vec2")
    assert sum(g.num_params() for g in b.groups()) == sum(p.numel() for p in b.parameters())
    assert [g.name for g in b.groups()][-2:] == ["layer.0", "layer.1"]
    x = torch.from_numpy(tone(300, 1.0))[None]
    assert b.sequence(x).shape == (1, 49, 32) and b(x).shape == (1, 32)
    run = tmp_path / "w2v"
    clf = AudioClassifier("tiny:wav2vec2", strategy="finetune", run_dir=run, **FAST).fit(str(tones))
    assert (run / "backbone" / "config.json").is_file()
    files = sorted(str(p) for p in tones.rglob("*.wav"))[:4]
    np.testing.assert_allclose(
        AudioClassifier.load(run).predict_proba(files), clf.predict_proba(files), atol=1e-5
    )
    folder = tmp_path / "hub"
    b.model.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(
        '{"do_normalize": false, "sampling_rate": 16000}'
    )
    meta = SourceMeta(
        id="hf:x", modality="audio", source_data="-", source_task="-", domain="-", licence="-"
    )
    again = from_audio_folder(folder, "hf:x", meta, pretrained=True, cut=1).eval()
    assert not again.normalize and len(again.model.encoder.layers) == 1


def test_web_page_takes_a_recording_in_headless_chromium(fitted, tones):
    """The served page offers a recording picker for an audio model, plays the file back and
    shows the same top class as the API, with no console errors and no outside request."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn
    from playwright.sync_api import sync_playwright

    from headstart.serve import create_app

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "Chromium is needed for the page test: apt-get install -y chromium "
            "(scripts/setup.sh installs it)"
        )
    _, run = fitted
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app({"kw": str(run)}), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    recording = str(sorted(tones.rglob("*.wav"))[5])
    try:
        with open(recording, "rb") as f:
            api = httpx.post(
                f"{base}/predict", files={"file": ("r.wav", f, "audio/wav")}, trust_env=False
            ).json()
        errors, console, requests = [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: console.append(m.text))
                page.on("request", lambda r: requests.append(r.url))
                page.goto(base + "/")
                page.wait_for_selector("body[data-state='ready']", state="attached")
                assert "recording" in page.inner_text("#drop-text")
                assert page.get_attribute("#file", "accept") == "audio/*"
                page.set_input_files("#file", recording)
                page.wait_for_selector("body[data-state='predicted']", state="attached")
                assert page.inner_text("#verdict") == f"Prediction: {api['prediction']}"
                assert page.is_visible("#player") and not page.is_visible("#preview")
            finally:
                browser.close()
        assert errors == [] and console == []
        assert all(u.startswith((base, "blob:", "data:")) for u in requests), requests
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_whisper_encoder_adapter(tones, tmp_path):
    """Whisper's encoder (random tiny:whisper, 2 s window): its log-mel input equals
    transformers' WhisperFeatureExtractor; a clip keeps only its own frames; it fits, saves
    its config as an asset and reloads; a hub-layout folder of a whole Whisper model loads
    as its encoder."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    from headstart.zoo.base import SourceMeta
    from headstart.zoo.hf_audio import WhisperEncoderBackbone, from_audio_folder

    b = create_backbone("tiny:whisper").eval()
    extractor = WhisperFeatureExtractor(
        feature_size=80, sampling_rate=RATE, hop_length=160, chunk_length=2, n_fft=400
    )
    wave = tone(440, 1.3)
    reference = extractor(wave, sampling_rate=RATE, return_tensors="np").input_features[0]
    np.testing.assert_allclose(
        b.log_mel(torch.from_numpy(wave)[None])[0].numpy(), reference, atol=1e-4
    )
    with torch.no_grad():
        assert b.sequence(torch.from_numpy(tone(300, 1.0))[None]).shape == (1, 50, 32)
    assert sum(g.num_params() for g in b.groups()) == sum(p.numel() for p in b.parameters())
    run = tmp_path / "whisper"
    clf = AudioClassifier("tiny:whisper", strategy="lp_ft", run_dir=run, **FAST).fit(str(tones))
    files = sorted(str(p) for p in tones.rglob("*.wav"))[:3]
    np.testing.assert_allclose(
        AudioClassifier.load(run).predict_proba(files), clf.predict_proba(files), atol=1e-5
    )
    whole = WhisperModel(b.model.config)
    whole.save_pretrained(str(tmp_path / "hub"))
    meta = SourceMeta(
        id="hf:w", modality="audio", source_data="-", source_task="-", domain="-", licence="-"
    )
    loaded = from_audio_folder(tmp_path / "hub", "hf:w", meta, pretrained=True)
    assert isinstance(loaded, WhisperEncoderBackbone)
    assert torch.equal(loaded.model.conv1.weight, whole.get_encoder().conv1.weight)
