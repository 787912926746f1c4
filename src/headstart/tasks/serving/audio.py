"""Audio, served. Classification: decoding, mix-down, resampling and the run's clip outside
the graph; ``float32 [N, samples]`` waveforms -> backbone (its spectral front end is part of
it), head, softmax inside it. Speech recognition: transcripts, predicted and evaluated on
the command line (no graph to export or serve yet)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...data.audio import AUDIO_EXTENSIONS, _audio_files
from ...inference import ItemError
from .base import Feed, TaskServing


class AudioGraph(nn.Module):
    """``waveform: float32 [N, samples]`` -> probabilities ``[N, classes]``."""

    def __init__(self, model: nn.Module, multi_label: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = bool(multi_label)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        logits = self.model(waveform.to(torch.float32)).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


class AudioFeed(Feed):
    def prepare_many(self, items: list) -> list:
        return [self._prepare(item) for item in items]

    def _prepare(self, item):
        """A path, bytes (an uploaded file) or a waveform at the run's rate -> the run's
        clip, or the :class:`ItemError` that stops it."""
        import soundfile as sf

        from ...data.audio import fit_length, read_audio
        from ...data.images import DataError, existing_path

        pre = self.estimator.preprocess_
        try:
            if isinstance(item, (bytes, bytearray, memoryview)):
                if len(item) == 0:
                    raise ItemError("empty file: no audio bytes were sent")
                try:
                    data, rate = sf.read(io.BytesIO(bytes(item)), dtype="float32", always_2d=True)
                except Exception as exc:  # noqa: BLE001 - libsndfile's errors vary
                    raise ItemError(
                        f"the upload is not audio libsndfile can read (WAV, FLAC, "
                        f"OGG, MP3, ...): {exc}"
                    ) from exc
                wave = read_audio(data, pre.sample_rate, rate, "the upload")
            elif isinstance(item, (str, Path)):
                if existing_path(item) is None or not Path(item).is_file():
                    raise ItemError(f"{item}: no such file")
                wave = read_audio(item, pre.sample_rate)
            else:
                wave = read_audio(item, pre.sample_rate, pre.sample_rate, "the waveform")
        except DataError as exc:
            return ItemError(str(exc))
        except ItemError as exc:
            return exc
        if self.baseline is not None:  # the whole recording, as the baseline was fitted
            return self.baseline.featurizer_(wave)
        return fit_length(wave, pre.samples, None)

    def collate(self, prepared: list) -> dict[str, np.ndarray]:
        return {"waveform": np.stack(prepared).astype(np.float32)}


class AudioServing(TaskServing):
    task = "audio"
    what = "audio classifiers"
    kind, extensions = "recordings", AUDIO_EXTENSIONS
    input_names = ("waveform",)
    form_field = "'file' (the recording)"
    pool_help = "a folder of recordings (searched recursively) or a CSV with a 'path' column"

    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        from ...data.audio import open_audio_source

        return open_audio_source(
            data,
            classes=classes,
            skip_bad=cfg.skip_bad,
            path_column=path_column,
            label_column=cfg.label_column,
            group_column=cfg.group_column,
        )

    def open_inputs(self, data):
        from ...data.audio import open_audio_inputs

        return open_audio_inputs(data)

    def folder_files(self, folder: Path) -> list[str]:
        return _audio_files(folder)

    def graph(self, estimator, model, multi_label: bool) -> AudioGraph:
        return AudioGraph(model, multi_label)

    def feed(self, estimator, views: list, max_pixels: int | None, baseline=None) -> AudioFeed:
        return AudioFeed(estimator, baseline)

    def export_inputs(self, predictor) -> tuple[list[dict], dict]:
        pre = predictor.estimator.preprocess_
        inputs = [{"name": "waveform", "dtype": "float32", "shape": ["batch", pre.samples]}]
        recipe = {
            "steps": [
                "decode the recording (WAV, FLAC, OGG, ...) to float samples in [-1, 1]",
                "average the channels to mono",
                f"resample to {pre.sample_rate} Hz (polyphase filter, scipy's resample_poly)",
                f"centre-crop or zero-pad (centred) to {pre.samples} samples "
                f"({pre.clip_seconds:g} s)",
                "stack as float32 [batch, samples]",
            ],
            "inside_graph": "the backbone's spectral front end (STFT, mel filter bank, log), "
            "the network, the head",
            **pre.to_dict(),
        }
        return inputs, recipe

    def input_summary(self, estimator) -> str:
        pre = estimator.preprocess_
        return f"{pre.clip_seconds:g} s at {pre.sample_rate} Hz"


class SpeechServing(AudioServing):
    """Speech recognition (CTC): recordings in, transcripts out."""

    task = "asr"
    what = "speech recognisers"
    served = False

    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        from ...data.audio import open_transcribed

        return open_transcribed(data, None, cfg, path_column=path_column)

    def graph(self, estimator, model, multi_label: bool):
        raise self._no_graph()

    def feed(self, estimator, views: list, max_pixels: int | None, baseline=None):
        raise self._no_graph()

    def export_inputs(self, predictor):
        raise self._no_graph()

    def input_summary(self, estimator) -> str:
        if not estimator.classes_:  # a Whisper recogniser: its own tokenizer, no alphabet
            return f"up to {estimator.preprocess_.clip_seconds:g} s recordings, Whisper's tokenizer"
        return (
            f"{estimator.preprocess_.clip_seconds:g} s clips, alphabet "
            f"{''.join(estimator.classes_)!r}"
        )

    def format_metrics(self, m: dict) -> str:
        return (
            f"CER {m['cer']:.3f}  WER {m['wer']:.3f}  sentence accuracy "
            f"{m['sentence_accuracy']:.3f}  (n={m['n']})"
        )

    def evaluation_lines(self, estimator, m: dict) -> list[str]:
        return [
            self.format_metrics(m),
            *(f"  {ex['reference']!r:<32} -> {ex['transcript']!r}" for ex in m["examples"]),
        ]

    def predict_to_csv(
        self,
        run_dir,
        inputs: list,
        out=None,
        *,
        engine: str = "torch",
        tta: str = "none",
        batch_size: int = 64,
        min_score: float | None = None,
        progress: bool = True,
    ) -> str:
        """Transcripts, ``item, transcript, error``."""
        from ...predict import write_transcripts
        from ..base import tta_views
        from ..registry import load_estimator

        rec = load_estimator(run_dir)
        tta_views(rec, tta)  # a clear error: speech recognition has no test-time views
        counts = write_transcripts(rec, inputs, out, batch_size=batch_size)
        return f"wrote {counts['transcribed']} transcripts to {out}" + (
            f"; {counts['errors']} recording(s) failed, see their 'error' column"
            if counts["errors"]
            else ""
        )
