"""Text sources (CSV, JSONL, Parquet, lists), tokenisation with a truncation policy, and
batches with dynamic padding.

Every text is checked when the source is built: an empty text, a non-UTF-8 byte, a
missing column or an unknown label is reported with its file, row and column before any
training starts. Labels are one per row, or several per row (multi-label: a list in JSONL /
Parquet, or ``label_sep``-separated in CSV).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

from ..zoo.base import TextPreprocess
from .images import DataError, _check_classes, existing_path

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pq")


@dataclass
class TextSource:
    """Texts with labels: ``(N,)`` class indices, or ``(N, C)`` 0/1 rows when multi-label."""

    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    origin: str
    rows: list[int] = field(default_factory=list)  # 1-based rows in the origin file
    groups: np.ndarray | None = None  # a sender / author id per text, kept together by splits

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def name(self, i: int) -> str:
        row = self.rows[i] if self.rows else i + 1
        return f"{self.origin}:row {row}"

    def subset(self, indices) -> TextSource:
        indices = np.asarray(indices, dtype=np.int64)
        return TextSource(
            [self.texts[i] for i in indices],
            self.labels[indices],
            self.classes,
            self.origin,
            [self.rows[i] for i in indices] if self.rows else [],
            None if self.groups is None else self.groups[indices],
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()[:24]


# ---------------------------------------------------------------------- reading
def table_path(entry: str, text_column: str = "text") -> Path | None:
    """The file ``entry`` names when it names one (a table to read texts from), or None
    when ``entry`` is a text itself; a folder is an error."""
    path = existing_path(entry)
    if path is not None and path.is_dir():
        raise DataError(
            f"{path}: a folder; a text model reads texts (in quotes on the "
            "command line, or a list of str), or table files (CSV, TSV, JSONL, "
            f"Parquet) with a {text_column!r} column"
        )
    return path


def read_table(path: str | Path, blank_lines: bool = False):
    """A CSV/TSV (UTF-8), JSONL or Parquet file as a DataFrame; bad bytes are named.

    ``blank_lines``: keep a CSV's blank lines as rows of empty cells (prediction, where
    every line is an item) instead of skipping them (training)."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path}: a folder; texts are read from a table file (CSV, TSV, "
            "JSONL, Parquet) with a text and a label column"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported table format {suffix!r}; use CSV, TSV, JSONL or Parquet"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line_no} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
            f"at offset {exc.start}); re-save the file as UTF-8 (e.g. `iconv -f "
            "latin1 -t utf-8`)"
        ) from None

    if suffix in (".jsonl", ".json"):
        rows, lines = [], []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {i} is not valid JSON ({exc.msg}); JSONL "
                    "needs one JSON object per line"
                ) from None
            lines.append(i)
        frame = pd.DataFrame(rows)
        frame.attrs["rows"] = lines  # file line of each record, for error messages
        return frame
    sep = "\t" if suffix == ".tsv" else ","
    try:
        frame = pd.read_csv(
            StringIO(text),
            sep=sep,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=not blank_lines,
        )
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a valid CSV ({exc})") from None
    starts = _record_lines(text, sep, blank_lines)
    if len(starts) == len(frame):  # the two parsers agree: name rows by their file line
        frame.attrs["rows"] = starts
    return frame


def _record_lines(text: str, sep: str, blank_lines: bool) -> list[int]:
    """The file line on which each data record of a CSV starts (after the header): a quoted
    cell over several lines (an email body) or a skipped blank line shifts the records
    after it, so counting records would name the wrong line."""
    reader = csv.reader(StringIO(text), delimiter=sep)
    starts, end = [], 0
    for record in reader:
        start, end = end + 1, reader.line_num
        if record or blank_lines:
            starts.append(start)
    return starts[1:]


def _cell_labels(value, label_sep: str | None) -> list[str] | str | None:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    value = str(value).strip()
    if not value:
        return None
    if label_sep and label_sep in value:
        return [v.strip() for v in value.split(label_sep) if v.strip()]
    return value


MAX_ROWS_NAMED = 10  # rows a message names; past them, how many more


def empty_rows_message(origin: str, text_column: str, rows: list[int]) -> str:
    """The error for empty texts: every row named (up to :data:`MAX_ROWS_NAMED`), and the
    total, so that one pass over the file fixes them all."""
    if len(rows) == 1:
        return (
            f"{origin}: row {rows[0]}, column {text_column!r}: empty text; "
            "remove the row or fill in its text"
        )
    named = ", ".join(f"row {r}" for r in rows[:MAX_ROWS_NAMED])
    more = f" and {len(rows) - MAX_ROWS_NAMED:,} more" if len(rows) > MAX_ROWS_NAMED else ""
    return (
        f"{origin}: {len(rows):,} rows have an empty text in column {text_column!r}: "
        f"{named}{more}; remove the rows or fill in their texts"
    )


def build_source(
    texts,
    raw_labels,
    classes: list[str] | None,
    origin: str,
    text_column: str = "text",
    label_column: str = "label",
    label_sep: str | None = None,
    rows: list[int] | None = None,
) -> TextSource:
    """Check texts and labels, and map labels onto ``classes`` (sorted, if not given)."""
    rows = rows or list(range(1, len(texts) + 1))
    clean, empty = [], []
    for text, row in zip(texts, rows):
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(
                    f"{origin}: row {row}, column {text_column!r}: not valid "
                    "UTF-8; decode the text first or re-save as UTF-8"
                ) from None
        if not isinstance(text, str) or not text.strip():
            empty.append(row)
        clean.append(text)
    if empty:
        raise DataError(empty_rows_message(origin, text_column, empty))
    if raw_labels is None:
        return TextSource(clean, np.full(len(clean), -1), list(classes or []), origin, rows)
    if len(raw_labels) != len(clean):  # zip would silently drop the tail of the longer one
        raise DataError(
            f"{origin}: {len(clean)} texts but {len(raw_labels)} labels; give one label per "
            "text (y must be as long as X)"
        )
    cells = [_cell_labels(v, label_sep) for v in raw_labels]
    for cell, row in zip(cells, rows):
        if cell is None:
            raise DataError(f"{origin}: row {row}, column {label_column!r}: empty label")
    multi = any(isinstance(c, list) for c in cells)
    as_lists = [
        c if isinstance(c, list) else [cast(str, c)]  # an empty label raised above
        for c in cells
    ]
    if classes is None:
        classes = sorted({c for cell in as_lists for c in cell})
        if not multi:  # (a test set, opened with the model's classes, may hold one)
            _check_classes(classes, origin)
    index = {c: i for i, c in enumerate(classes)}
    for cell, row in zip(as_lists, rows):
        for c in cell:
            if c not in index:
                raise DataError(
                    f"{origin}: row {row}, column {label_column!r}: unknown label "
                    f"{c!r}; the model knows {', '.join(map(str, classes))}"
                )
    labels: np.ndarray
    if multi:
        labels = np.zeros((len(clean), len(classes)), dtype=np.float32)
        for i, cell in enumerate(as_lists):
            labels[i, [index[c] for c in cell]] = 1.0
    else:
        labels = np.array([index[c[0]] for c in as_lists], dtype=np.int64)
    return TextSource(clean, labels, list(classes), origin, rows)


def open_text_source(
    data,
    y=None,
    *,
    classes: list[str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_sep: str | None = None,
    labeled: bool = True,
    group_column: str | None = None,
) -> TextSource:
    """Texts from a table file, a DataFrame, a list of strings (+ ``y``) or a TextSource.
    ``group_column``: a table's sender / author id column; every split keeps one id's
    texts together (optional in data for a fitted model, ``classes`` given)."""
    import pandas as pd

    if isinstance(data, TextSource):
        if classes is not None and list(classes) != data.classes and labeled:
            names = (
                [data.classes[i] for i in data.labels]
                if not data.multi_label
                else [[data.classes[j] for j in np.flatnonzero(r)] for r in data.labels]
            )
            out = build_source(data.texts, names, list(classes), data.origin, rows=data.rows)
            out.groups = data.groups
            return out
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        frame, origin = read_table(path), str(path)
    elif isinstance(data, pd.DataFrame):
        frame, origin = data, "DataFrame"
    else:
        texts = list(data)
        if labeled and y is None:
            raise DataError(
                "labels are missing: pass y (one label, or a list of labels, per "
                "text) or a table with a label column"
            )
        return build_source(
            texts,
            list(y) if (labeled and y is not None) else None,
            classes,
            "texts",
            label_sep=label_sep,
        )
    for col in [text_column] + ([label_column] if labeled else []):
        if col not in frame.columns:
            raise DataError(
                f"{origin}: no column {col!r}; the columns are "
                f"{', '.join(map(str, frame.columns))}. Name the right one with "
                f"--{'text' if col == text_column else 'label'}-column"
            )
    header = 2 if origin.endswith((".csv", ".tsv")) else 1
    rows = frame.attrs.get("rows") or (
        [i + header for i in range(len(frame))] if origin != "DataFrame" else None
    )
    labels = frame[label_column].tolist() if labeled else None
    source = build_source(
        frame[text_column].tolist(),
        labels,
        classes,
        origin,
        text_column,
        label_column,
        label_sep,
        rows,
    )
    if group_column and labeled:
        source.groups = _groups(frame, group_column, origin, source.rows, classes is not None)
    return source


def _groups(frame, column: str, origin: str, rows: list[int], optional: bool):
    """The table's ``column`` as one id per text; a missing column raises unless
    ``optional``, an empty id raises, named by row."""
    if column not in frame.columns:
        if optional:
            return None
        raise DataError(
            f"{origin}: no column {column!r} (--group-column); the columns are "
            f"{', '.join(map(str, frame.columns))}"
        )
    ids = ["" if v is None or v != v else str(v).strip() for v in frame[column].tolist()]
    empty = [row for gid, row in zip(ids, rows) if not gid]
    if empty:
        raise DataError(
            f"{origin}: row {empty[0]}: empty {column!r}; every row needs its group id "
            f"({len(empty)} row(s) have none), or drop --group-column"
        )
    return np.array(ids)


# ---------------------------------------------------------------------- tokens
def encode_texts(
    tokenizer, texts: list[str], pre: TextPreprocess, batch: int = 256
) -> list[list[list[int]]]:
    """Token ids per text, as a list of chunks (each with the model's special tokens).

    Only what the truncation policy keeps is tokenised in full: a long document's head
    and tail are cut from the string first (with a wide margin, then checked)."""
    prefix, suffix = special_tokens(tokenizer)
    body = pre.max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"max_length {pre.max_length} leaves no room for tokens")
    chunks_wanted = pre.max_chunks if pre.truncation == "chunks" else 1
    budget = body * chunks_wanted
    margin = budget * 12  # characters: >= 12 per kept token is a very safe bound
    head_tail = pre.truncation == "head_tail"
    # A long document's head and tail are tokenised from their own slices of the string;
    # a shorter one (head_tail: up to two slices long) is tokenised whole.
    long = [len(t) > (2 * margin if head_tail else margin) for t in texts]
    heads = [t[:margin] if is_long else t for t, is_long in zip(texts, long)]
    tails = [t[-margin:] if head_tail and is_long else "" for t, is_long in zip(texts, long)]
    head_ids = _tokenize(tokenizer, heads, batch)
    tail_ids = _tokenize(tokenizer, tails, batch) if head_tail else [[] for _ in texts]
    n_head = body // 4
    out = []
    for i, ids in enumerate(head_ids):
        if long[i] and len(ids) < budget:  # dense text: tokenise it all
            ids, tail_ids[i] = _tokenize(tokenizer, [texts[i]], 1)[0], []
        if head_tail:
            if tail_ids[i]:
                ids = ids[:n_head] + tail_ids[i][-(body - n_head) :]
            elif len(ids) > body:
                ids = ids[:n_head] + ids[-(body - n_head) :]
            pieces = [ids]
        elif pre.truncation == "chunks":
            pieces = [ids[j : j + body] for j in range(0, max(len(ids), 1), body)][:chunks_wanted]
        else:
            pieces = [ids[:body]]
        out.append([prefix + p + suffix for p in pieces])
    return out


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (BERT: [CLS] / [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(f"{type(tokenizer).__name__}: cannot locate its special tokens")


def _tokenize(tokenizer, texts: list[str], batch: int) -> list[list[int]]:
    ids: list[list[int]] = []
    for j in range(0, len(texts), batch):
        enc = tokenizer(
            texts[j : j + batch], add_special_tokens=False, truncation=False, verbose=False
        )
        ids.extend(enc["input_ids"])
    return ids


class TextDataset(Dataset):
    """Tokenised once; items are ``(chunks of ids, label)``; ``lengths`` drive bucketing.

    ``train_chunks`` (training only): a text of more chunks gives this many of them per
    epoch, drawn from a generator seeded by (seed, epoch, item), in their order; the
    features of evaluation still average all of a text's chunks."""

    def __init__(
        self,
        source: TextSource,
        tokenizer,
        pre: TextPreprocess,
        encoded: list | None = None,
        train_chunks: int = 0,
        seed: int = 0,
    ):
        self.source = source
        self.encoded = (
            encoded if encoded is not None else encode_texts(tokenizer, source.texts, pre)
        )
        self.train_chunks, self.seed, self.epoch = int(train_chunks), int(seed), 0
        k = self.train_chunks or None  # bucket by the tokens an epoch reads of each text
        self.lengths = np.array(
            [sum(sorted(map(len, doc), reverse=True)[:k]) for doc in self.encoded]
        )
        self.labels = torch.as_tensor(source.labels)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.encoded)

    def chunk_picks(self, i: int) -> list[int]:
        """The chunks of text ``i`` this epoch reads, in their order."""
        n = len(self.encoded[i])
        if self.train_chunks and n > self.train_chunks:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            return sorted(int(j) for j in rng.choice(n, self.train_chunks, replace=False))
        return list(range(n))

    def __getitem__(self, i: int):
        doc = self.encoded[i]
        return [doc[j] for j in self.chunk_picks(i)], self.labels[i]


class ReplayedText(Dataset):
    """A :class:`TextDataset` whose chunks come with the token states the encoder's frozen
    first ``depth`` blocks give them, computed once (they do not change while the later
    blocks train): a fine-tuning step then runs only the blocks that train."""

    def __init__(self, base: TextDataset, states: list[list[torch.Tensor]], depth: int):
        self.base, self.states, self.depth = base, states, int(depth)
        self.lengths = base.lengths

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        doc, states = self.base.encoded[i], self.states[i]
        return [(doc[j], states[j]) for j in self.base.chunk_picks(i)], self.base.labels[i]


def collate_replayed(batch, pad_id: int = 0, depth: int = 0):
    """:func:`collate_text` of the chunks, plus their replayed states padded alike."""
    x, y = collate_text([([ids for ids, _ in doc], label) for doc, label in batch], pad_id)
    states = [s for doc, _ in batch for _, s in doc]
    padded = states[0].new_zeros(len(states), x["input_ids"].shape[1], states[0].shape[1])
    for r, s in enumerate(states):
        padded[r, : len(s)] = s
    x["prefix_states"], x["prefix_depth"] = padded, torch.tensor(depth)
    return x, y


# replayed states live in memory while a stage trains: above this, the prefix runs each step
REPLAY_BYTES = 2 * 1024**3


def replay_frozen(
    backbone, dataset, frozen_groups: int, pad_id: int, batch_size: int
) -> ReplayedText | None:
    """``dataset`` with the states of ``backbone``'s first ``frozen_groups`` layer groups
    computed once (see :class:`ReplayedText`); None where that cannot be: not a plain text
    dataset, no block frozen, too large for memory, or the backbone's forward from replayed
    states does not give its own result (checked on the first batch)."""
    if not isinstance(dataset, TextDataset) or not hasattr(backbone, "prefix_states"):
        return None
    depth = backbone.replay_depth(frozen_groups)
    if depth < 1:
        return None
    tokens = sum(len(c) for doc in dataset.encoded for c in doc)
    if tokens * backbone.feature_dim * 4 > REPLAY_BYTES:
        log.info("frozen blocks not replayed: %d tokens' states would not fit in memory", tokens)
        return None
    device = next(backbone.parameters()).device
    chunks = sorted(
        ((len(c), i, j) for i, doc in enumerate(dataset.encoded) for j, c in enumerate(doc)),
        reverse=True,
    )
    states: list[list] = [[None] * len(doc) for doc in dataset.encoded]
    was_training = backbone.training
    backbone.eval()
    try:
        for start in range(0, len(chunks), batch_size):
            part = chunks[start : start + batch_size]
            x, _ = collate_text(
                [([dataset.encoded[i][j]], torch.tensor(0)) for _, i, j in part], pad_id
            )
            x = {k: v.to(device) for k, v in x.items()}
            out = backbone.prefix_states(x, depth)
            if start == 0 and not _replays_exactly(backbone, x, out, depth):
                log.warning(
                    "frozen blocks not replayed: %s's forward from stored states differs "
                    "from its own; they run every step",
                    getattr(backbone, "id", type(backbone).__name__),
                )
                return None
            for (n, i, j), row in zip(part, out.float().cpu()):
                states[i][j] = row[:n].clone()
    finally:
        backbone.train(was_training)
    return ReplayedText(dataset, states, depth)


@torch.no_grad()
def _replays_exactly(backbone, x: dict, prefix: torch.Tensor, depth: int) -> bool:
    full = backbone(x)
    replayed = backbone({**x, "prefix_states": prefix, "prefix_depth": torch.tensor(depth)})
    return bool(torch.allclose(full, replayed, atol=1e-4, rtol=1e-3))


def collate_text(batch, pad_id: int = 0):
    """Dynamic padding to the longest chunk of the batch; ``doc_index`` for chunked docs."""
    docs, labels = zip(*batch)
    chunks = [c for doc in docs for c in doc]
    width = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for r, c in enumerate(chunks):
        ids[r, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        mask[r, : len(c)] = 1
    x = {"input_ids": ids, "attention_mask": mask}
    if len(chunks) != len(docs):
        x["doc_index"] = torch.repeat_interleave(
            torch.arange(len(docs)), torch.as_tensor([len(d) for d in docs])
        )
        x["n_docs"] = torch.tensor(len(docs))
    return x, torch.stack(list(labels))
