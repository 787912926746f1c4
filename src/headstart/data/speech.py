"""A reproducible accent-adaptation speech corpus, synthesised offline with espeak-ng.

The same command words (or digit strings, for speech recognition) are spoken by many
synthetic speakers. A *speaker* is an espeak-ng accent voice (``en-us``,
``en-gb-scotland``, ``de`` reading English, ...) with a voice variant (timbre: ``m3``,
``f2``, ``klatt4``, ...), a speaking rate and a pitch. Each recording also gets its own
small rate and pitch jitter and background noise at a random SNR.

Splits (speakers never shared between them; voice variants of the target-test speakers
appear in no other split):

* ``source/``       the source accent group: many speakers, the pretraining corpus;
* ``target-train/`` the target accent: ``--target-per-word`` recordings per word (and
  ``target-train-<k>/``, nested subsets with k per word, e.g. 5);
* ``target-test/``  the target accent, other speakers: where adaptation is measured;
* ``source-test/``  the source accent spoken by the target-test speakers' variants.

Everything is drawn from one seed: the same command writes the same files.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .images import DataError

log = logging.getLogger(__name__)

# Accent groups: espeak-ng voices that read English text with that accent.
ACCENTS = {
    "us": ("en-us", "en-us-nyc"),
    "gb": ("en-gb", "en-gb-x-rp"),
    "north-england": ("en-gb-x-gbclan", "en-gb-x-gbcwmd"),
    "scotland": ("en-gb-scotland",),
    "caribbean": ("en-029",),
    "german": ("de",),
    "spanish": ("es", "es-419"),
    "french": ("fr",),
    "italian": ("it",),
}
COMMANDS = (
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "on",
    "off",
    "stop",
    "go",
    "forward",
    "four",
)
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Voice variants that sound like people (no robots, whispers or effects).
VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "adam",
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "david",
    "Denis",
    "Diogo",
    "ed",
    "edward",
    "edward2",
    "Gene",
    "Gene2",
    "grandma",
    "grandpa",
    "gustave",
    "Henrique",
    "Hugo",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "Jacky",
    "john",
    "kaukovalta",
    "Lee",
    "linda",
    "Marco",
    "marcelo",
    "Mario",
    "max",
    "Michael",
    "michel",
    "miguel",
    "Mike",
    "norbert",
    "Nguyen",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "travis",
    "victor",
    "zac",
)
RATE = 16000


def espeak_binary() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DataError(
            "espeak-ng is not installed: `apt-get install espeak-ng` (Debian/Ubuntu; "
            "scripts/setup.sh does it), then run this again"
        )
    return exe


def speak(text: str, voice: str, variant: str, wpm: int, pitch: int) -> np.ndarray:
    """One utterance from espeak-ng as float32 mono at 16 kHz."""
    import io

    import soundfile as sf

    from .audio import read_audio

    cmd = [
        espeak_binary(),
        "-v",
        f"{voice}+{variant}",
        "-s",
        str(wpm),
        "-p",
        str(pitch),
        "--stdout",
        text,
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if done.returncode != 0 or not done.stdout:
        raise DataError(
            f"espeak-ng failed for voice {voice}+{variant}: "
            f"{done.stderr.decode(errors='replace').strip() or 'no audio'}"
        )
    wave, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return read_audio(wave, RATE, rate, f"espeak {voice}+{variant}")


def _noisy(wave: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """Trim espeak's silence to 50 ms margins, then add coloured noise at a random SNR."""
    loud = np.flatnonzero(np.abs(wave) > 0.01 * max(np.abs(wave).max(), 1e-6))
    if len(loud):
        margin = RATE // 20
        wave = wave[max(0, loud[0] - margin) : loud[-1] + margin]
    white = rng.standard_normal(len(wave) + 1).astype(np.float32)
    tilt = rng.uniform(0.0, 0.95)  # 0: white, near 1: brown-ish
    noise = white[1:] + tilt * white[:-1]
    power = float(np.mean(wave**2)) or 1e-8
    snr = rng.uniform(*snr_db)
    noise *= np.sqrt(power / 10 ** (snr / 10) / float(np.mean(noise**2)))
    out = wave + noise
    return (out / max(1.0, float(np.abs(out).max()) / 0.95)).astype(np.float32)


def _speakers(voices, variants, n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` speakers: voice x variant pairs cycled in a shuffled order, each with its own
    rate (wpm) and pitch."""
    pairs = [(v, var) for var in variants for v in voices]
    order = rng.permutation(len(pairs))
    out = []
    for k in range(n):
        voice, variant = pairs[order[k % len(pairs)]]
        out.append(
            {
                "voice": voice,
                "variant": variant,
                "wpm": int(rng.integers(120, 201)),
                "pitch": int(rng.integers(25, 76)),
            }
        )
    return out


def _render(jobs: list[dict], folder: Path, snr_db, workers: int) -> list[dict]:
    """Synthesise ``jobs`` (text, label, speaker, seed) into ``folder`` as 16-bit WAV."""
    import soundfile as sf

    def one(job: dict) -> dict:
        rng = np.random.default_rng(job["seed"])
        spk = job["speaker"]
        wave = speak(
            job["text"],
            spk["voice"],
            spk["variant"],
            int(spk["wpm"] + rng.integers(-10, 11)),
            int(np.clip(spk["pitch"] + rng.integers(-5, 6), 0, 99)),
        )
        wave = _noisy(wave, rng, snr_db)
        path = folder / job["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), wave, RATE, subtype="PCM_16")
        return {
            "path": str(path.relative_to(folder)),
            "label": job["label"],
            "speaker": f"{spk['voice']}+{spk['variant']}@{spk['wpm']}wpm/p{spk['pitch']}",
        }

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, jobs))


def build_accent_corpus(
    out: str | Path,
    source: str = "us",
    target: str = "scotland",
    task: str = "commands",
    source_speakers: int = 120,
    per_speaker: int = 2,
    target_per_word: int = 20,
    subsets: tuple[int, ...] = (5,),
    test_speakers: int = 16,
    seed: int = 0,
    snr_db: tuple[float, float] = (10.0, 30.0),
    workers: int = 4,
) -> dict:
    """Write the corpus to ``out`` and return its summary (also ``out/corpus.json``).

    ``task``: ``commands`` (one of :data:`COMMANDS` per recording, class folders) or
    ``digits`` (strings of 2-4 digit words, ``<split>.csv`` with path,transcript for a
    speech recogniser)."""
    import csv
    import json

    from ..artifacts import atomic_write_json

    for name in (source, target):
        if name not in ACCENTS:
            raise ValueError(f"unknown accent {name!r}; choose from {', '.join(ACCENTS)}")
    if source == target:
        raise ValueError("the source and target accents must differ")
    if task not in ("commands", "digits"):
        raise ValueError(f"task={task!r}: choose commands or digits")
    espeak_binary()
    out = Path(out)
    rng = np.random.default_rng(seed)
    variants = list(VARIANTS)
    rng.shuffle(variants)
    held = variants[:test_speakers]  # timbres only the test speakers have
    target_variants = variants[test_speakers : test_speakers + 12]
    source_variants = variants[test_speakers + 12 :]
    speakers = {
        "source": _speakers(ACCENTS[source], source_variants, source_speakers, rng),
        "target-train": _speakers(ACCENTS[target], target_variants, 12, rng),
        "target-test": _speakers(ACCENTS[target], held, test_speakers, rng),
        "source-test": _speakers(ACCENTS[source], held, test_speakers, rng),
    }

    def utterance(k: int) -> tuple[str, str]:
        if task == "commands":
            word = COMMANDS[k % len(COMMANDS)]
            return word, word
        digits = [DIGITS[d] for d in rng.integers(0, 10, size=int(rng.integers(2, 5)))]
        return " ".join(digits), " ".join(digits)

    per_split = {"source": per_speaker, "target-test": 1, "source-test": 1}
    summary: dict[str, Any] = {
        "source_accent": source,
        "target_accent": target,
        "voices": {"source": list(ACCENTS[source]), "target": list(ACCENTS[target])},
        "task": task,
        "seed": seed,
        "snr_db": list(snr_db),
        "splits": {},
    }
    for split, spks in speakers.items():
        jobs: list[dict[str, Any]] = []
        units = len(COMMANDS) if task == "commands" else 10
        if split == "target-train":  # target_per_word recordings of each word, each word's
            for k in range(target_per_word * units):  # by different speakers in turn
                text, label = utterance(k)
                jobs.append(
                    {"text": text, "label": label, "speaker": spks[(k + k // units) % len(spks)]}
                )
        else:
            for spk in spks:
                for _ in range(per_split[split]):
                    for w in range(units):
                        text, label = utterance(w)
                        jobs.append({"text": text, "label": label, "speaker": spk})
        for j, job in enumerate(jobs):
            job["seed"] = [seed, list(speakers).index(split), j]
            name = f"{j:05d}_{job['speaker']['variant']}.wav"
            job["file"] = f"{job['label']}/{name}" if task == "commands" else name
        rows = _render(jobs, out / split, snr_db, workers)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label" if task == "commands" else "transcript", "speaker"])
            for row in rows:
                writer.writerow([f"{split}/{row['path']}", row["label"], row["speaker"]])
        summary["splits"][split] = {
            "recordings": len(rows),
            "speakers": len({r["speaker"] for r in rows}),
        }
        log.info(
            "%s: %d recordings by %d speakers",
            split,
            len(rows),
            summary["splits"][split]["speakers"],
        )
    for k in subsets:  # nested: the first k recordings of each word of target-train
        if k >= target_per_word:
            continue
        _subset(out, "target-train", f"target-train-{k}", k, task)
        summary["splits"][f"target-train-{k}"] = {
            "recordings": k * (len(COMMANDS) if task == "commands" else 10)
        }
    summary["words"] = list(COMMANDS) if task == "commands" else list(DIGITS)
    atomic_write_json(out / "corpus.json", json.loads(json.dumps(summary)))
    return summary


def _subset(out: Path, split: str, name: str, k: int, task: str) -> None:
    """``name/``: the first ``k`` recordings per word of ``split`` (digit strings: the
    first ``10 k``), copied, and its CSV."""
    import csv

    with open(out / f"{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if task == "digits":
        kept = rows[: k * 10]
    else:
        seen: dict[str, int] = {}
        kept = []
        for row in rows:
            if seen.get(row["label"], 0) < k:
                seen[row["label"]] = seen.get(row["label"], 0) + 1
                kept.append(row)
    with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in kept:
            rel = Path(row["path"]).relative_to(split)
            target = out / name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / row["path"], target)
            writer.writerow({**row, "path": f"{name}/{rel}"})
