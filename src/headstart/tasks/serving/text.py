"""Text classification, served: tokenisation (the run's own tokenizer and truncation policy)
outside the graph; token ids and mask ``int64 [docs, chunks, tokens]`` -> encoder, pooling,
the mean over a document's chunks, head, softmax inside it. A run that blends its TF-IDF
baseline in applies it outside the graph, on the texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...data.images import DataError
from ...heads import TransferModel
from ...inference import ItemError
from .base import (
    BodyError,
    Feed,
    TaskServing,
    check_fields,
    missing_field,
    read_form,
    unsupported,
    upload_bytes,
)


class TextGraph(nn.Module):
    """``input_ids, attention_mask: int64 [D, C, L]`` -> probabilities ``[D, classes]``;
    a document's chunks are averaged (all-zero mask rows are padding chunks). With
    ``features``, also the averaged features ``[D, dim]`` (the head's input) as a second
    output: what a ``--blend-mode joint`` run's TF-IDF + features model reads."""

    def __init__(self, model: TransferModel, multi_label: bool = False, features: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = bool(multi_label)
        self.features = bool(features)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        docs, chunks, length = input_ids.shape
        valid = (attention_mask.sum(-1) > 0).to(torch.float32).unsqueeze(-1)  # [D, C, 1]
        # padding chunks attend to their first token, so no row of attention is empty
        first = torch.zeros_like(attention_mask)
        first[:, :, 0] = 1
        mask = torch.maximum(attention_mask, first)
        feats = self.model.backbone(
            {
                "input_ids": input_ids.reshape(docs * chunks, length),
                "attention_mask": mask.reshape(docs * chunks, length),
            }
        )
        feats = feats.reshape(docs, chunks, -1).float()
        pooled = (feats * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        logits = self.model.head(pooled).float()
        proba = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        return (proba, pooled) if self.features else proba


class PreparedText(list):
    """A text's token windows (what the graph takes), keeping the text for a run that
    blends its TF-IDF baseline in."""

    def __init__(self, chunks, text: str):
        super().__init__(chunks)
        self.text = text


class TextFeed(Feed):
    def __init__(self, estimator, baseline=None):
        super().__init__(estimator, baseline)
        tok = estimator.model_.backbone.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        self.blend = estimator._blends()

    def prepare_many(self, items: list) -> list:
        from ...data.text import encode_texts

        out: list = [None] * len(items)
        good, texts = [], []
        for i, item in enumerate(items):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out[i] = ItemError(f"not UTF-8 text ({exc}); send the text as UTF-8")
                    continue
            if not isinstance(item, str):
                out[i] = ItemError(f"expected a text (str), got {type(item).__name__}")
            elif not item.strip():
                out[i] = ItemError("empty text: there is nothing to classify")
            else:
                good.append(i)
                texts.append(item)
        if texts:
            encoded = encode_texts(
                self.estimator.model_.backbone.tokenizer, texts, self.estimator.preprocess_
            )
            for i, chunks, text in zip(good, encoded, texts):
                out[i] = PreparedText(chunks, text)
        return out

    def collate(self, prepared: list) -> dict[str, np.ndarray]:
        chunks = max(len(doc) for doc in prepared)
        length = max(len(c) for doc in prepared for c in doc)
        ids = np.full((len(prepared), chunks, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(prepared), chunks, length), dtype=np.int64)
        for d, doc in enumerate(prepared):
            for c, piece in enumerate(doc):
                ids[d, c, : len(piece)] = piece
                mask[d, c, : len(piece)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def baseline_inputs(self, prepared: list) -> list[str]:
        return [p.text for p in prepared]

    def finish(self, proba: np.ndarray, feats, prepared: list) -> np.ndarray:
        if not self.blend:
            return proba
        est = self.estimator  # the run's TF-IDF model, applied outside the graph
        texts = [p.text for p in prepared]
        if est._joint():
            if feats is None:
                raise ValueError(
                    "this run blends TF-IDF with the encoder's features "
                    "(--blend-mode joint) but the graph gives no features: "
                    "export it again with this headstart"
                )
            return est.joint_.predict_proba(texts, feats)
        from ...baselines.text import blend_proba

        return blend_proba(proba, est.baseline_.predict_proba(texts))


class TextServing(TaskServing):
    task = "text"
    what = "text classifiers"
    input_names = ("input_ids", "attention_mask")
    form_field = "'text' (or 'file', a text file)"
    pool_help = "a table file (CSV, TSV, JSONL, Parquet) with a text column, or a list of texts"

    def item_column(self, cfg) -> str:
        return cfg.text_column

    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        from ...data.text import open_text_source

        return open_text_source(
            data,
            classes=classes,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            label_sep=cfg.label_sep,
            group_column=cfg.group_column,
        )

    def entries(self, entry, i: int, text_column: str) -> list[tuple[str, object]]:
        """A table file's rows (its ``text_column``), or one text."""
        from ...data.text import read_table, table_path

        p = table_path(entry, text_column) if isinstance(entry, str) else None
        if p is None:  # a text (a file is a table, or read_table says which formats are)
            text = str(entry)
            return [
                (text if len(text) <= 60 else text[:57] + "...", text)
                if text.strip()
                else ("(empty text)", text)
            ]
        frame = read_table(p, blank_lines=True)
        if text_column not in frame.columns:
            raise DataError(
                f"{p}: no column {text_column!r}; the columns are "
                f"{', '.join(map(str, frame.columns))}"
            )
        header = 2 if p.suffix.lower() in (".csv", ".tsv") else 1
        rows = frame.attrs.get("rows") or [k + header for k in range(len(frame))]
        return [(f"{p}:row {r}", _cell_text(v)) for r, v in zip(rows, frame[text_column].tolist())]

    def graph(self, estimator, model, multi_label: bool) -> TextGraph:
        return TextGraph(model, multi_label, features=estimator._joint())

    def feed(self, estimator, views: list, max_pixels: int | None, baseline=None) -> TextFeed:
        return TextFeed(estimator, baseline)

    # ------------------------------------------------------------ export
    def check_items(self, estimator, source) -> list:
        from ...data.text import open_text_source

        texts = (
            source
            if isinstance(source, list)
            else open_text_source(
                source, text_column=estimator.config_.text_column, labeled=False
            ).texts
        )
        return list(texts)

    def check_source(self, items: list) -> list:
        return list(items)

    def dynamic_shapes(self, batch) -> dict:
        chunks = torch.export.Dim("chunks", min=1, max=1024)
        tokens = torch.export.Dim("tokens", min=2, max=8192)
        axes = {0: batch, 1: chunks, 2: tokens}
        return {name: axes for name in self.input_names}

    def export_inputs(self, predictor) -> tuple[list[dict], dict]:
        from ...data.text import special_tokens

        est = predictor.estimator
        pre = est.preprocess_
        prefix, suffix = special_tokens(est.model_.backbone.tokenizer)
        inputs = [
            {"name": n, "dtype": "int64", "shape": ["docs", "chunks", "tokens"]}
            for n in self.input_names
        ]
        recipe = {
            "steps": [
                "tokenise the text without special tokens (tokenizer/ beside the model)",
                f"truncation {pre.truncation!r}: keep up to {pre.max_chunks} chunk(s) of "
                f"{pre.max_length - len(prefix) - len(suffix)} tokens",
                f"wrap each chunk as {prefix} + ids + {suffix}",
                f"pad with id {predictor.feed.pad_id} to [docs, chunks, tokens]; "
                "attention_mask 1 on real tokens, an all-zero row marks a padding chunk",
            ],
            "inside_graph": "encoder, pooling, mean over a document's chunks, head",
            **pre.to_dict(),
        }
        return inputs, recipe

    def export_outputs(self, estimator) -> dict:
        if not estimator._joint():
            return {}
        return {
            "features_output": {
                "name": "features",
                "dtype": "float32",
                "shape": ["batch", "dim"],
                "use": "with the text, the input of the run's joint TF-IDF + features logistic "
                "regression (RUN/joint/: vocabulary, idf, weights; the features enter L2-"
                "normalised, times feature_weight, after the TF-IDF columns)",
            }
        }

    def features_check(self, estimator, source, reference: np.ndarray, feats):
        if not estimator._joint():
            return None
        joint_reference = estimator._output_proba(source, reference, feats)  # the run's

        def difference(graph_feats, rows: list[int]) -> float:
            texts = [source.texts[i] for i in rows]
            return np.abs(
                estimator.joint_.predict_proba(texts, graph_feats) - joint_reference[rows]
            ).max()

        return difference

    def save_beside(self, estimator, folder: Path) -> list[str]:
        estimator.model_.backbone.tokenizer.save_pretrained(str(folder / "tokenizer"))
        notes = ["tokenizer saved in tokenizer/"]
        if estimator._joint():
            notes.append(
                "this run predicts with one logistic regression on TF-IDF and the "
                "encoder's features (--blend-mode joint): the file gives the "
                "encoder's probabilities and, as its second output, those features; "
                "`headstart predict/serve --engine onnx` feed them with the texts to "
                "RUN/joint/, as should any other runtime"
            )
        elif estimator._blends():
            notes.append(
                "this run blends its TF-IDF baseline in (--blend): the file is the "
                "encoder alone; `headstart predict/serve --engine onnx` average its "
                "probabilities with the baseline's (RUN/baseline/), as should any "
                "other runtime"
            )
        return notes

    # ------------------------------------------------------------ HTTP
    def request_body(self, settings) -> dict:
        text = {
            "type": "string",
            "minLength": 1,
            "maxLength": settings.max_text_chars,
            "pattern": r"\S",
            "description": "the text to classify (not blank)",
        }
        text_file = {
            "type": "string",
            "format": "binary",
            "description": "a UTF-8 text file (instead of 'text')",
        }
        one = {
            "type": "object",
            "additionalProperties": False,
            "properties": {"text": text},
            "required": ["text"],
        }
        return {
            "required": True,
            "content": {
                "application/json": {"schema": one},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"text": text, "file": text_file},
                        "oneOf": [{"required": ["text"]}, {"required": ["file"]}],
                    },
                    "encoding": {"file": {"contentType": "text/plain"}},
                },
                "application/x-www-form-urlencoded": {"schema": one},
                "text/plain": {"schema": text},
            },
        }

    async def read_request(self, request, ctype: str, settings) -> str:
        """The text of a form (field ``text``, or ``file``: a UTF-8 text file), of JSON
        ``{"text": ...}``, or of a text/plain body."""
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await read_form(request, settings, self)
            check_fields(
                form, ("text", "file") if ctype.startswith("multipart") else ("text",), self
            )
            if "file" in form and "text" in form:
                raise BodyError(
                    422, "the form has both 'text' and 'file'; send one of them", "file"
                )
            if "file" in form:
                return _text_of(await upload_bytes(form, "file", self), settings, "file")
            text = form.get("text")
            if isinstance(text, str):
                return _check_text(text, settings, "text")
            if text is not None:
                raise BodyError(
                    422,
                    "the form field 'text' is a file; send the text as a "
                    "plain field (curl -F text=...) or the file as 'file'",
                    "text",
                )
            raise missing_field(form, self.task, self.form_field)
        if ctype == "application/json":
            return _check_text(_json_text(await request.body()), settings, "text")
        if ctype.startswith(("image/", "audio/")) or ctype == "application/octet-stream":
            body = await request.body()
            raise BodyError(415, _not_text(body, ctype))
        if ctype == "text/plain":
            return _text_of(await request.body(), settings, None)
        raise unsupported(ctype, "JSON {\"text\": ...}, a form field 'text', or text/plain")

    # ------------------------------------------------------------ command line
    def input_summary(self, estimator) -> str:
        pre = estimator.preprocess_
        chunks = f"{pre.max_chunks}x" if pre.truncation == "chunks" else ""
        return f"{chunks}{pre.max_length} tokens ({pre.truncation})"


def _cell_text(value) -> str:
    """A table cell as a text; a missing one (None, NaN, a blank line) as empty."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


# A file's first bytes -> what it is, to say so when it is sent to a text model.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"fLaC", "a FLAC recording"),
    (b"OggS", "an Ogg recording"),
    (b"ID3", "an MP3 recording"),
)


def sniff(data: bytes) -> str | None:
    """What ``data`` looks like from its first bytes (a PNG image, ...); None if unknown."""
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE"):
        return "a WebP image" if data[8:12] == b"WEBP" else "a WAV recording"
    return next((what for sig, what in SIGNATURES if data.startswith(sig)), None)


def _not_text(data: bytes, ctype: str | None = None) -> str:
    """The message for a body that is no text: what it looks like, and what to send."""
    what = sniff(data)
    looks = (
        f"the body looks like {what}"
        if what
        else f"the body is sent as {ctype}"
        if ctype
        else "the body is not UTF-8 text"
    )
    return f'this model reads text; send JSON {{"text": ...}} \u2014 {looks}'


def _json_text(body: bytes) -> str:
    import json

    try:
        parsed = json.loads(body)
    except UnicodeDecodeError:
        raise BodyError(
            400, f"the body is not valid JSON: it is not UTF-8 ({_not_text(body)})"
        ) from None
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise BodyError(400, 'the JSON body is nested too deeply; send {"text": "..."}') from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
        raise BodyError(
            422, 'send {"text": "..."}: a JSON object with a string field \'text\'', "text"
        )
    extra = sorted(k for k in parsed if k != "text")
    if extra:
        raise BodyError(
            422,
            f"the JSON object has a field {extra[0]!r} this model does not "
            'read; send {"text": "..."} alone',
            extra[0],
        )
    return parsed["text"]


def _text_of(data: bytes, settings, field: str | None) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if sniff(data):
            raise BodyError(422, _not_text(data), field) from None
        raise BodyError(
            422,
            f"the text is not UTF-8 (byte {exc.start}: 0x{data[exc.start]:02x}); send UTF-8 text",
            field,
        ) from None
    return _check_text(text, settings, field)


def _check_text(text: str, settings, field: str | None) -> str:
    if len(text) > settings.max_text_chars:
        raise BodyError(
            413,
            f"the text has {len(text):,} characters, more than the limit "
            f"of {settings.max_text_chars:,}",
            field,
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, from a JSON \ud800 escape
        raise BodyError(
            422,
            f"the text holds a lone surrogate (character {exc.start}); send valid Unicode",
            field,
        ) from None
    if not text.strip():
        raise BodyError(422, "empty text: there is nothing to classify", field)
    return text
