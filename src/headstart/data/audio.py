"""Audio sources: a folder of recordings per class, a CSV of path + label (or transcript),
or in-memory waveforms; and the dataset that turns them into fixed-length waveforms.

Every file's header is read when the source is built, so an unreadable, empty or too-short
recording is named (file and reason) before training starts. Decoding uses libsndfile
(``soundfile``: WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...); several channels are mixed down to
mono and the rate is converted with a polyphase filter (``scipy.signal.resample_poly``).
No torchaudio is needed.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import FitConfig
from .images import (
    DataError,
    ImageSource,
    _check_classes,
    _csv_path,
    check_files,
    class_folders,
    csv_files,
    csv_groups,
    read_csv_rows,
    resolve_labels,
)

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
MIN_SECONDS = 0.05  # a shorter recording holds no word; it is named as an error


@dataclass
class AudioSource(ImageSource):
    """Recordings (file paths or 1-D float arrays at ``rate`` Hz) with integer labels into
    ``classes``, or with ``transcripts`` (speech recognition)."""

    rate: int | None = None  # sample rate of in-memory arrays
    transcripts: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    def subset(self, indices) -> AudioSource:
        indices = np.asarray(indices, dtype=np.int64)
        return AudioSource(
            [self.items[i] for i in indices],
            self.labels[indices],
            self.classes,
            self.origin,
            groups=None if self.groups is None else self.groups[indices],
            rate=self.rate,
            transcripts=[self.transcripts[i] for i in indices]
            if self.transcripts is not None
            else None,
        )

    def fingerprint(self) -> str:
        base = super().fingerprint()
        if self.transcripts is None and self.rate is None:
            return base
        import hashlib

        h = hashlib.sha256(base.encode())
        h.update(f"{self.rate}".encode())
        for t in self.transcripts or ():
            h.update(t.encode() + b"\0")
        return h.hexdigest()[:24]


def read_audio(item, rate: int, source_rate: int | None = None, name: str = "") -> np.ndarray:
    """One recording as float32 mono at ``rate`` Hz. ``item``: a path or a 1-D (or
    samples x channels) array at ``source_rate``."""
    import soundfile as sf

    if isinstance(item, (str, Path)):
        try:
            data, source_rate = sf.read(str(item), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - libsndfile's errors vary; named below
            raise DataError(
                f"{item}: cannot read this audio file ({exc}); convert it to WAV, "
                "FLAC or OGG, or remove it"
            ) from exc
        wave = data.mean(axis=1)
        name = str(item)
    else:
        wave = np.asarray(item, dtype=np.float32)
        if wave.ndim == 2:  # samples x channels (soundfile's layout) or channels x samples
            wave = wave.mean(axis=1 if wave.shape[0] > wave.shape[1] else 0)
        if wave.ndim != 1:
            raise DataError(
                f"{name or 'audio array'}: expected a 1-D waveform (or samples x "
                f"channels), got shape {wave.shape}"
            )
        if source_rate is None:
            raise DataError(
                f"{name or 'audio array'}: in-memory waveforms need their sample rate (rate=...)"
            )
    if wave.size == 0:
        raise DataError(f"{name}: the recording is empty (0 samples); remove it")
    if not np.isfinite(wave).all():
        raise DataError(f"{name}: the recording holds NaN or infinite samples; re-export it")
    if source_rate != rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(source_rate), int(rate))
        wave = resample_poly(wave, rate // g, int(source_rate) // g).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _check_file(path: str) -> str | None:
    """None if the header reads and the recording is long enough, else the reason."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as exc:  # noqa: BLE001
        return f"unreadable ({type(exc).__name__}: {exc})"
    if info.frames <= 0:
        return "empty (0 samples)"
    seconds = info.frames / info.samplerate
    if seconds < MIN_SECONDS:
        return f"too short ({seconds * 1000:.0f} ms; at least {MIN_SECONDS * 1000:.0f} ms)"
    return None


def check_audio_files(paths: list[str], skip_bad: bool, what: str) -> tuple[list[int], list[str]]:
    """Read every file's header; kept indices and skipped names, or raise naming them."""
    return check_files(paths, skip_bad, what, check=_check_file, kind="bad recording(s)")


def _audio_files(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def _labeled(paths, labels, origin, skip_bad, classes, skipped=(), groups=None) -> AudioSource:
    keep, bad = check_audio_files(paths, skip_bad, origin)
    paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    kept_groups = None if groups is None else np.array([str(groups[i]) for i in keep])
    if classes is None:
        classes = _check_classes(labels, origin)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(
            f"{origin}: label(s) {', '.join(unknown)} are not among the model's "
            f"classes ({', '.join(classes)})"
        )
    index = {c: i for i, c in enumerate(classes)}
    counts = Counter(labels)
    log.info(
        "%s: %d recordings, %d classes (smallest %s: %d)%s",
        origin,
        len(paths),
        len(counts),
        *min(counts.items(), key=lambda kv: kv[1]),
        f", skipped {len(bad) + len(skipped)}" if bad or skipped else "",
    )
    return AudioSource(
        paths,
        np.array([index[c] for c in labels], dtype=np.int64),
        list(classes),
        origin,
        skipped=[*skipped, *bad],
        groups=kept_groups,
    )


def audio_from_folder(
    root: str | Path, skip_bad: bool = False, classes: list[str] | None = None
) -> AudioSource:
    """``root/<class>/<recording>``: one subfolder per class."""
    paths, labels = class_folders(root, _audio_files, "recordings", AUDIO_EXTENSIONS)
    return _labeled(paths, labels, str(root), skip_bad, classes)


def audio_from_csv(
    csv_path: str | Path,
    path_column: str = "path",
    label_column: str = "label",
    skip_bad: bool = False,
    classes: list[str] | None = None,
    transcripts: bool = False,
    group_column: str | None = None,
) -> AudioSource:
    """A CSV with a path column (relative to the CSV's folder, or absolute) and a label (or,
    with ``transcripts=True``, the words spoken); ``group_column``: a speaker (or session)
    id per row, which every split keeps together."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file")
    paths, labels, missing = csv_files(
        csv_path, path_column, label_column, skip_bad, need_label=not transcripts
    )
    groups = None
    if group_column and not transcripts:
        rows = read_csv_rows(csv_path, (path_column,))
        if not rows or group_column in rows[0][1] or classes is None:  # absent: named error
            rows = read_csv_rows(csv_path, (path_column, group_column))
            groups = csv_groups(csv_path, rows, path_column, group_column, paths)
    if transcripts:
        keep, bad = check_audio_files(paths, skip_bad, str(csv_path))
        return AudioSource(
            [paths[i] for i in keep],
            np.zeros(len(keep), dtype=np.int64),
            [],
            str(csv_path),
            transcripts=[labels[i] for i in keep],
            skipped=[*missing, *bad],
        )
    return _labeled(paths, labels, str(csv_path), skip_bad, classes, missing, groups)


def audio_from_arrays(
    waves,
    labels,
    rate: int,
    classes: list[str] | None = None,
    origin: str = "array",
    transcripts: bool = False,
) -> AudioSource:
    """In-memory waveforms (a list of 1-D arrays at ``rate`` Hz) and labels (class names or
    integer positions in ``classes``), or transcripts."""
    items = [np.asarray(w, dtype=np.float32) for w in waves]
    if len(items) != len(labels):
        raise DataError(f"{origin}: {len(items)} recordings but {len(labels)} labels")
    for i, w in enumerate(items):
        if (
            w.ndim not in (1, 2)
            or w.shape[0] == 0
            or w.size / (w.shape[1] if w.ndim == 2 else 1) < MIN_SECONDS * rate
        ):
            raise DataError(
                f"{origin}[{i}]: a recording must be a 1-D waveform of at least "
                f"{MIN_SECONDS * 1000:.0f} ms at {rate} Hz; got shape {w.shape}"
            )
    if transcripts:
        return AudioSource(
            items,
            np.zeros(len(items), dtype=np.int64),
            [],
            origin,
            rate=rate,
            transcripts=[str(t) for t in labels],
        )
    y, classes = resolve_labels(labels, classes, origin)
    return AudioSource(items, y, classes, origin, rate=rate)


def open_audio_source(
    data,
    labels=None,
    *,
    classes=None,
    rate: int | None = None,
    skip_bad: bool = False,
    path_column: str = "path",
    label_column: str = "label",
    transcripts: bool = False,
    group_column: str | None = None,
) -> AudioSource:
    """Anything users pass as labeled audio -> AudioSource (``group_column``: a CSV's
    speaker id column; folders and arrays carry none)."""
    if isinstance(data, AudioSource):
        return data
    if isinstance(data, (str, Path)):
        p = Path(data)
        if p.is_dir() and not transcripts:
            return audio_from_folder(p, skip_bad=skip_bad, classes=classes)
        if p.suffix.lower() == ".csv":
            return audio_from_csv(
                p,
                path_column,
                label_column,
                skip_bad=skip_bad,
                classes=classes,
                transcripts=transcripts,
                group_column=group_column,
            )
        want = (
            "a .csv of path,transcript rows"
            if transcripts
            else "a folder with one subfolder per class, or a .csv of path,label rows"
        )
        raise DataError(f"{p}: expected {want}")
    if labels is None:
        raise DataError("in-memory recordings need labels: fit(waves, labels, rate=...)")
    if rate is None:
        raise DataError("in-memory recordings need their sample rate: pass rate=<Hz>")
    return audio_from_arrays(data, labels, rate, classes, transcripts=transcripts)


def open_audio_inputs(data, *, rate: int | None = None, path_column: str = "path") -> AudioSource:
    """Recordings to predict on: a folder (flat or per class), a CSV with a path column, a
    path, a list of paths, or arrays (with ``rate``). Bad files raise, named."""
    if isinstance(data, AudioSource):
        return data
    if isinstance(data, (str, Path)):
        p = Path(data)
        if p.is_dir():
            paths = _audio_files(p)
            if not paths:
                raise DataError(f"{p}: no recordings found ({', '.join(AUDIO_EXTENSIONS)})")
        elif p.suffix.lower() == ".csv" and p.is_file():
            paths = [str(_csv_path(p, r[path_column])) for _, r in read_csv_rows(p, (path_column,))]
        elif p.is_file():
            paths = [str(p)]
        else:
            raise DataError(f"{p}: no such file or directory")
        check_audio_files(paths, skip_bad=False, what=str(p))
        return AudioSource(paths, np.zeros(len(paths), dtype=np.int64), [], str(p))
    items = list(data)
    if items and isinstance(items[0], (str, Path)):
        paths = [str(i) for i in items]
        check_audio_files(paths, skip_bad=False, what="inputs")
        return AudioSource(paths, np.zeros(len(paths), dtype=np.int64), [], "inputs")
    if rate is None:
        raise DataError("in-memory recordings need their sample rate: pass rate=<Hz>")
    return AudioSource(
        [np.asarray(w, dtype=np.float32) for w in items],
        np.zeros(len(items), dtype=np.int64),
        [],
        "inputs",
        rate=rate,
    )


# --------------------------------------------------------------------------- dataset
AUGMENT: dict[
    str, dict[str, Any] | None
] = {  # gain (dB, +-), probability of noise, SNR range (dB), time shift
    "none": None,
    "light": {"gain_db": 6.0, "noise_p": 0.5, "snr": (15.0, 35.0), "shift": True},
    "strong": {"gain_db": 10.0, "noise_p": 0.9, "snr": (5.0, 25.0), "shift": True},
}


def fit_length(wave: np.ndarray, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """Crop or zero-pad to ``n`` samples: centred for evaluation; at a random place (a time
    shift) when ``rng`` is given."""
    if len(wave) >= n:
        start = rng.integers(0, len(wave) - n + 1) if rng is not None else (len(wave) - n) // 2
        return wave[start : start + n]
    out = np.zeros(n, dtype=np.float32)
    start = rng.integers(0, n - len(wave) + 1) if rng is not None else (n - len(wave)) // 2
    out[start : start + len(wave)] = wave
    return out


CACHE_LIMIT = 2 * 1024**3  # decoded audio kept in memory (bytes); later files are re-read
_CACHE_BYTES = ("bytes",)


class AudioDataset(Dataset):
    """Items as (waveform of ``preprocess.samples``, label). Training items get a random
    time shift, gain and background noise (``augment``); decoded recordings are kept in
    memory up to :data:`CACHE_LIMIT` (small target datasets are decoded once)."""

    def __init__(
        self,
        source: AudioSource,
        preprocess,
        augment: str = "none",
        seed: int = 0,
        train: bool = False,
        cache: dict | None = None,
    ):
        if augment not in AUGMENT:
            raise ValueError(f"augment={augment!r}: choose one of {', '.join(AUGMENT)}")
        self.source, self.preprocess, self.seed = source, preprocess, seed
        self.aug = AUGMENT[augment] if train else None
        self.train = train
        self.epoch = 0
        self.cache = {} if cache is None else cache

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def wave(self, i: int) -> np.ndarray:
        item = self.source.items[i]
        key = (str(item), self.preprocess.sample_rate) if isinstance(item, (str, Path)) else None
        if key is not None and key in self.cache:
            return self.cache[key]
        wave = read_audio(item, self.preprocess.sample_rate, self.source.rate, self.source.name(i))
        if key is not None and self.cache.get(_CACHE_BYTES, 0) + wave.nbytes <= CACHE_LIMIT:
            self.cache[key] = wave
            self.cache[_CACHE_BYTES] = self.cache.get(_CACHE_BYTES, 0) + wave.nbytes
        return wave

    def __getitem__(self, i: int):
        wave = self.wave(i)
        aug = self.aug
        rng = np.random.default_rng([self.seed, self.epoch, i]) if aug else None
        wave = fit_length(wave, self.preprocess.samples, rng if aug and aug["shift"] else None)
        if aug and rng is not None:  # (there is an rng exactly when there is augmentation)
            wave = wave * np.float32(10 ** (rng.uniform(-1, 1) * aug["gain_db"] / 20))
            if rng.random() < aug["noise_p"]:
                power = float(np.mean(wave**2)) or 1e-8
                snr = rng.uniform(*aug["snr"])
                noise = rng.standard_normal(len(wave)).astype(np.float32)
                wave = wave + noise * np.float32(math.sqrt(power / 10 ** (snr / 10)))
        label = self.source.labels[i]  # a class, or a padded row of character ids (CTC)
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), (
            torch.as_tensor(label) if np.ndim(label) else int(label)
        )


def open_transcribed(X, y, cfg: FitConfig, path_column: str = "path") -> AudioSource:
    """Recordings with their transcripts; the transcript column is ``label_column`` when
    set, else ``transcript``."""
    column = cfg.label_column if cfg.label_column != "label" else "transcript"
    return open_audio_source(
        X,
        y,
        rate=cfg.array_rate,
        skip_bad=cfg.skip_bad,
        path_column=path_column,
        label_column=column,
        transcripts=True,
    )
