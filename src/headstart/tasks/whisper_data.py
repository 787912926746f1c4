"""The data side of a Whisper recogniser: recordings read at 16 kHz, padded batches of
(waveform, target tokens), and the checks that name a bad recording (unreadable, silent,
longer than Whisper's 30 s window) or a transcript the tokenizer cannot encode."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data.audio import AudioSource, read_audio
from ..data.images import DataError
from .whisper_decode import WhisperText

log = logging.getLogger(__name__)

RATE = 16000
WINDOW_SECONDS = 30.0
SILENT_PEAK = 1e-4  # a recording whose loudest sample is below this holds no speech


class _Recordings(torch.utils.data.Dataset):
    """(waveform, target tokens) pairs, read lazily at 16 kHz."""

    def __init__(self, source: AudioSource, targets: list[list[int]] | None):
        self.source, self.targets = source, targets

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        wave = _read(self.source, i)
        y = self.targets[i] if self.targets is not None else []
        return torch.from_numpy(wave), torch.tensor(y, dtype=torch.long)


def _collate(batch):
    waves, ys = zip(*batch)
    n = min(max(len(w) for w in waves), int(RATE * WINDOW_SECONDS))
    x = torch.zeros(len(waves), n)
    for i, w in enumerate(waves):
        x[i, : min(len(w), n)] = w[:n]
    longest = max((len(t) for t in ys), default=0)
    y = torch.full((len(ys), max(longest, 1)), -100, dtype=torch.long)
    for i, t in enumerate(ys):
        y[i, : len(t)] = t
    return x, y


def _name(source: AudioSource, i: int) -> str:
    item = source.items[i]
    return f"recording {i + 1}" if isinstance(item, np.ndarray) else str(item)


def _read(source: AudioSource, i: int) -> np.ndarray:
    return read_audio(source.items[i], RATE, source.rate, _name(source, i))


def check_recordings(source: AudioSource, training: bool) -> list[int]:
    """Too long (> 30 s) or silent recordings: in training each raises naming the file;
    otherwise a warning names them. Returns the indices of the silent ones."""
    long, silent = [], []
    for i in range(len(source)):
        wave = _read(source, i)
        if len(wave) > RATE * WINDOW_SECONDS:
            long.append((i, len(wave) / RATE))
        if not len(wave) or float(np.abs(wave).max()) < SILENT_PEAK:
            silent.append(i)
    if long:
        names = ", ".join(f"{_name(source, i)} ({s:.1f} s)" for i, s in long[:3])
        msg = (
            f"{source.origin}: {len(long)} recording(s) last longer than Whisper's "
            f"{WINDOW_SECONDS:g} s window: {names}{', ...' if len(long) > 3 else ''}"
        )
        if training:
            raise DataError(msg + "; split them into pieces of at most 30 s with their words")
        log.warning("%s; only their first %g s are transcribed", msg, WINDOW_SECONDS)
    if silent:
        names = ", ".join(_name(source, i) for i in silent[:3])
        msg = (
            f"{source.origin}: {len(silent)} recording(s) are silent (peak below "
            f"{SILENT_PEAK:g}): {names}{', ...' if len(silent) > 3 else ''}"
        )
        if training:
            raise DataError(msg + "; remove them or fix their export")
        log.warning("%s; they transcribe to an empty text", msg)
    return silent


def encode_transcripts(text: WhisperText, source: AudioSource) -> list[list[int]]:
    """Each transcript's decoder targets; a clear error naming the recording for text the
    tokenizer cannot encode, or an empty transcript."""
    if source.transcripts is None:
        raise DataError(
            f"{source.origin}: these recordings have no transcripts; speech recognition "
            "reads a CSV of path,transcript rows (or waveforms with their texts)"
        )
    out = []
    for i, t in enumerate(source.transcripts):
        if not str(t).strip():
            raise DataError(f"{source.origin}: {_name(source, i)}: empty transcript")
        try:
            out.append(text.targets(t))
        except ValueError as exc:
            raise DataError(
                f"{source.origin}: {_name(source, i)} (row {i + 1}): transcript {t!r}: {exc}; "
                "write it in plain text the model's tokenizer reads"
            ) from exc
    return out
