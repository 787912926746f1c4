"""R lazy-load database reader: hand-built databases, and the real Fine Food reviews when present.

The synthetic database is written byte by byte in R's XDR serialization format, so these tests
need neither R nor the Debian package.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("rdata")

from headstart.data.rlazyload import read_lazyload_index, read_lazyload_object  # noqa: E402
from headstart.datasets import fine_food_folders  # noqa: E402

# --- a minimal R serializer (XDR, format version 3) ----------------------------------------

NILVALUE = struct.pack(">i", 254)
HAS_ATTR, HAS_TAG, IS_OBJECT = 1 << 9, 1 << 10, 1 << 8
STRSXP, INTSXP, VECSXP, LISTSXP, SYMSXP, CHARSXP = 16, 13, 19, 2, 1, 9
NA_INTEGER = -(2**31)


def _int(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _charsxp(s: str) -> bytes:
    raw = s.encode()
    levels = 64 if s.isascii() else 8  # ASCII_MASK / UTF8_MASK
    return _int(CHARSXP | levels << 12, len(raw)) + raw


def _attrs(*pairs: tuple[str, bytes]) -> bytes:
    """A pairlist of attributes from (name, serialized value) pairs."""
    out = b"".join(_int(LISTSXP | HAS_TAG, SYMSXP) + _charsxp(k) + v for k, v in pairs)
    return out + NILVALUE


def _vector(sxptype: int, body: bytes, n: int, attrs: bytes | None, is_object: bool) -> bytes:
    flags = sxptype | (HAS_ATTR if attrs else 0) | (IS_OBJECT if is_object else 0)
    return _int(flags, n) + body + (attrs or b"")


def strs(*items: str, attrs: bytes | None = None) -> bytes:
    return _vector(STRSXP, b"".join(map(_charsxp, items)), len(items), attrs, False)


def ints(*items: int, attrs: bytes | None = None, is_object: bool = False) -> bytes:
    return _vector(INTSXP, _int(*items), len(items), attrs, is_object)


def named_list(attrs: bytes | None = None, is_object: bool = False, **items: bytes) -> bytes:
    names = _attrs(("names", strs(*items)))  # extra ``attrs`` go on the same pairlist
    return _vector(
        VECSXP,
        b"".join(items.values()),
        len(items),
        names[: -len(NILVALUE)] + attrs if attrs else names,
        is_object,
    )


def serialize(obj: bytes) -> bytes:
    return b"X\n" + _int(3, 0x040202, 0x030500, 5) + b"UTF-8" + obj


def factor(codes: list[int], levels: list[str]) -> bytes:
    attrs = _attrs(("levels", strs(*levels)), ("class", strs("factor")))
    return ints(*codes, attrs=attrs, is_object=True)


def data_frame(n_rows: int, **columns: bytes) -> bytes:
    """A tibble; compact row names ``c(NA, -n_rows)`` as R writes them."""
    attrs = _attrs(
        ("class", strs("tbl_df", "tbl", "data.frame")), ("row.names", ints(NA_INTEGER, -n_rows))
    )
    return named_list(attrs=attrs, is_object=True, **columns)


REVIEWS = data_frame(
    3, review=strs("tasty", "stale", "crème brûlée"), score=factor([1, 2, 1], ["great", "other"])
)
WORDS = strs("a", "bb")


def _blob(raw: bytes, codec: str) -> bytes:
    """One .rdb blob for ``compressed == 3`` (codec 'Z', '2', '1', '0') or ``== 1`` ('zlib')."""
    head = struct.pack(">I", len(raw))
    if codec == "zlib":
        return head + zlib.compress(raw)
    if codec == "Z":
        lzma2 = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
        return head + b"Z" + lzma.compress(raw, format=lzma.FORMAT_RAW, filters=lzma2)
    packed = {"2": bz2.compress, "1": zlib.compress, "0": bytes}[codec](raw)
    return head + codec.encode() + packed


def write_db(tmp_path: Path, objects: dict[str, bytes], codec: str) -> tuple[Path, Path]:
    """Write Rdata.rdb/.rdx holding the serialized ``objects``, every blob in ``codec``."""
    blobs, variables, offset = [], {}, 0
    for name, obj in objects.items():
        blob = _blob(serialize(obj), codec)
        variables[name] = ints(offset, len(blob))
        blobs.append(blob)
        offset += len(blob)
    index = named_list(
        variables=named_list(**variables),
        references=named_list(),
        compressed=ints(1 if codec == "zlib" else 3),
    )
    rdb, rdx = tmp_path / "Rdata.rdb", tmp_path / "Rdata.rdx"
    rdb.write_bytes(b"".join(blobs))
    rdx.write_bytes(gzip.compress(serialize(index)))
    return rdb, rdx


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["Z", "zlib", "2", "1", "0"])
def test_reads_synthetic_database(tmp_path, codec):
    rdb, rdx = write_db(tmp_path, {"words": WORDS, "reviews": REVIEWS}, codec)
    index = read_lazyload_index(rdx)
    assert list(index) == ["words", "reviews"] and index["words"][0] == 0

    assert list(read_lazyload_object(rdb, rdx, "words")) == ["a", "bb"]
    df = read_lazyload_object(rdb, rdx, "reviews")
    assert list(df.columns) == ["review", "score"]
    assert list(df["review"]) == ["tasty", "stale", "crème brûlée"]
    assert list(df["score"]) == ["great", "other", "great"]
    assert list(df["score"].cat.categories) == ["great", "other"]


def test_unknown_name_lists_available(tmp_path):
    rdb, rdx = write_db(tmp_path, {"words": WORDS, "reviews": REVIEWS}, "Z")
    with pytest.raises(ValueError, match=r"Rdata\.rdx.*'nope'.*reviews, words"):
        read_lazyload_object(rdb, rdx, "nope")


def test_corrupt_or_truncated_blob(tmp_path):
    rdb, rdx = write_db(tmp_path, {"words": WORDS}, "Z")
    data = rdb.read_bytes()
    rdb.write_bytes(data[:4] + b"Q" + data[5:])
    with pytest.raises(ValueError, match=r"Rdata\.rdb \[words\].*type byte 'Q'"):
        read_lazyload_object(rdb, rdx, "words")
    rdb.write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"Rdata\.rdb \[words\].*file ends"):
        read_lazyload_object(rdb, rdx, "words")


def test_not_an_index(tmp_path):
    rdx = tmp_path / "Rdata.rdx"
    rdx.write_bytes(gzip.compress(serialize(WORDS)))
    with pytest.raises(ValueError, match="not a lazy-load index"):
        read_lazyload_index(rdx)
    rdx.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the R serialization"):
        read_lazyload_index(rdx)


# --- the real data set (Debian r-cran-modeldata), when installed or extracted --------------

_FOUND = [d for d in fine_food_folders() if (d / "Rdata.rdx").is_file()]


@pytest.mark.slow
@pytest.mark.skipif(not _FOUND, reason="r-cran-modeldata not installed or extracted")
def test_real_fine_food_reviews():
    rdb, rdx = _FOUND[0] / "Rdata.rdb", _FOUND[0] / "Rdata.rdx"
    assert {"training_data", "testing_data"} <= set(read_lazyload_index(rdx))
    for name, rows, counts in [
        ("training_data", 4000, {"great": 2600, "other": 1400}),
        ("testing_data", 1000, {"great": 658, "other": 342}),
    ]:
        df = read_lazyload_object(rdb, rdx, name)
        assert len(df) == rows
        assert list(df.columns) == ["product", "review", "score"]
        assert df["score"].value_counts().to_dict() == counts
        assert not df.isna().any().any()
