"""--group-column for texts and recordings: a sender's texts, a speaker's recordings stay on
one side of every split, as a patient's images do."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from headstart.data.audio import open_audio_source
from headstart.data.images import DataError
from headstart.data.splits import grouped_split
from headstart.data.text import open_text_source


def _texts_csv(path, n=24, per=3, empty_row=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "sender"])
        for i in range(n):
            sender = "" if i == empty_row else f"s{i // per}"
            w.writerow([f"message number {i}", "spam" if (i // per) % 2 else "ham", sender])
    return path


def test_a_text_table_carries_its_senders_and_splits_keep_them_whole(tmp_path):
    table = _texts_csv(tmp_path / "t.csv")
    source = open_text_source(table, group_column="sender")
    assert list(source.groups[:4]) == ["s0", "s0", "s0", "s1"]
    part = source.subset([3, 0])
    assert list(part.groups) == ["s1", "s0"]
    tr, va = grouped_split(source.labels, 0.25, 0, source.groups)
    assert not set(source.groups[tr]) & set(source.groups[va])
    assert open_text_source(table).groups is None
    # a test table for a fitted model may lack the column; a training one may not
    assert open_text_source(table, classes=["ham", "spam"], group_column="who").groups is None
    with pytest.raises(DataError, match="no column 'who'"):
        open_text_source(table, group_column="who")
    with pytest.raises(DataError, match="row 7: empty 'sender'"):
        open_text_source(_texts_csv(tmp_path / "e.csv", empty_row=5), group_column="sender")


def test_the_text_estimator_splits_by_sender(tmp_path):
    from headstart import TextClassifier

    table = _texts_csv(tmp_path / "t.csv", n=36)
    est = TextClassifier("tiny:bert", group_column="sender", val_fraction=0.25)
    src, train, val = est.split(str(table))
    assert not set(train.groups) & set(val.groups)
    assert len(set(val.groups)) >= 2 and len(train) + len(val) == len(src) == 36


def test_an_audio_csv_carries_its_speakers(tmp_path):
    rate = 16000
    rows = []
    for i in range(12):
        wav = tmp_path / f"{i}.wav"
        t = np.arange(rate // 2) / rate
        sf.write(str(wav), (0.3 * np.sin(2 * np.pi * (200 + 300 * (i % 2)) * t)), rate)
        rows.append([wav.name, "low" if i % 2 == 0 else "high", f"spk{i // 4}"])
    table = tmp_path / "a.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "speaker"], *rows])
    source = open_audio_source(table, group_column="speaker")
    assert list(source.groups) == [f"spk{i // 4}" for i in range(12)]
    assert list(source.subset([5, 0]).groups) == ["spk1", "spk0"]
    assert open_audio_source(table).groups is None
    with pytest.raises(DataError, match="no column 'who'"):
        open_audio_source(table, group_column="who")
