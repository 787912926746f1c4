"""Read objects from an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``) without R.

R packages ship their ``data/`` sets as a lazy-load database:

* ``Rdata.rdx`` -- the index: an RDS file (usually gzip-compressed) holding a named list with
  ``variables`` (object name -> ``c(offset, length)`` into the ``.rdb``), ``references`` and
  ``compressed`` (the codec used for every blob: 1, 2 or 3).
* ``Rdata.rdb`` -- the blobs, one per object, back to back. Each blob is a 4-byte big-endian
  uncompressed length followed by

  - ``compressed == 1``: a zlib stream;
  - ``compressed == 2``: a type byte, ``'2'`` (bzip2) or ``'0'`` (stored);
  - ``compressed == 3``: a type byte, ``'Z'`` (raw LZMA2, no xz container; R encodes it with
    preset 6), ``'2'`` (bzip2), ``'1'`` (zlib) or ``'0'`` (stored).

Once decompressed, a blob is an ordinary R serialization (XDR, ``"X\\n"``), which the
``rdata`` package parses and converts (data frames and tibbles to ``pandas.DataFrame``,
factors to ``Categorical``). Objects that point into the database's ``references``
(environments, closures) are not supported; plain data sets do not use them.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import rdata

log = logging.getLogger(__name__)

# rdata knows "data.frame" but not tibble's classes; a tibble is a data.frame underneath.
_CONSTRUCTORS = {
    **rdata.conversion.DEFAULT_CLASS_MAP,
    "tbl_df": rdata.conversion.dataframe_constructor,
}
_LZMA_MAX_DICT = 1 << 26  # 64 MiB: the largest dictionary any xz preset uses


def _unserialize(data: bytes, what: str):
    """Parse and convert one R serialization (or RDS file) ``data``; ``what`` names it in errors."""
    try:
        parsed = rdata.parser.parse_data(data, extension=".rds")
        return rdata.conversion.convert(parsed, _CONSTRUCTORS)
    except Exception as exc:  # rdata raises ValueError, NotImplementedError, KeyError, ...
        raise ValueError(f"{what}: cannot read the R serialization ({exc!r})") from exc


def _decompress(blob: bytes, compressed: int, what: str) -> bytes:
    """Undo the lazy-load compression of one ``.rdb`` blob (see the module docstring)."""
    if len(blob) < 5:
        raise ValueError(f"{what}: blob of {len(blob)} bytes is too short")
    size = struct.unpack(">I", blob[:4])[0]
    if compressed == 1:
        codec, payload = "1", blob[4:]
    elif compressed in (2, 3):
        codec, payload = chr(blob[4]), blob[5:]
    else:
        raise ValueError(f"{what}: unknown compression {compressed} (expected 1, 2 or 3)")

    decode: Callable[[bytes], bytes]
    if codec == "Z" and compressed == 3:
        # Raw LZMA2: the dictionary never needs to exceed the output it rebuilds.
        dict_size = min(max(size, 4096), _LZMA_MAX_DICT)
        filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
        decode = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=filters).decompress
    elif codec == "2":
        decode = bz2.decompress
    elif codec == "1":
        decode = zlib.decompress
    elif codec == "0":
        decode = bytes
    else:
        raise ValueError(f"{what}: unknown blob type byte {codec!r} for compression {compressed}")

    try:
        data = decode(payload)
    except (lzma.LZMAError, OSError, zlib.error, ValueError) as exc:
        raise ValueError(f"{what}: corrupt blob (type {codec!r}): {exc}") from exc
    if len(data) != size:
        raise ValueError(f"{what}: decompressed to {len(data)} bytes, header says {size}")
    return data


def _read_index(rdx_path: str | Path) -> tuple[dict[str, tuple[int, int]], int]:
    """The ``variables`` map and the ``compressed`` codec of an ``.rdx`` file."""
    index = _unserialize(Path(rdx_path).read_bytes(), str(rdx_path))
    if not isinstance(index, dict) or not {"variables", "compressed"} <= set(index):
        raise ValueError(f"{rdx_path}: not a lazy-load index (no 'variables'/'compressed' list)")
    variables = {
        str(name): (int(pos[0]), int(pos[1])) for name, pos in (index["variables"] or {}).items()
    }
    return variables, int(index["compressed"][0])


def read_lazyload_index(rdx_path: str | Path) -> dict[str, tuple[int, int]]:
    """Object name -> ``(offset, length)`` of its blob in the matching ``.rdb`` file."""
    return _read_index(rdx_path)[0]


def read_lazyload_object(rdb_path: str | Path, rdx_path: str | Path, name: str):
    """Read object ``name`` from a lazy-load database.

    Returns what ``rdata`` converts it to: a ``pandas.DataFrame`` for a data frame or tibble
    (character columns as strings, factors as ``Categorical``), a numpy array for an atomic
    vector, a dict for a named list. Raises ``ValueError`` (naming the file) for an unknown
    name -- the message lists the available ones -- or a truncated / corrupt blob.
    """
    start = time.perf_counter()
    variables, compressed = _read_index(rdx_path)
    if name not in variables:
        available = ", ".join(sorted(variables))
        raise ValueError(f"{rdx_path}: no object {name!r}; available: {available}")
    offset, length = variables[name]
    with open(rdb_path, "rb") as f:
        f.seek(offset)
        blob = f.read(length)
    what = f"{rdb_path} [{name}]"
    if len(blob) != length:
        raise ValueError(
            f"{what}: file ends {len(blob)} bytes into a {length}-byte blob at offset {offset}"
        )
    obj = _unserialize(_decompress(blob, compressed, what), what)
    log.debug(
        "read %s (%d bytes, compression %d) in %.2f s",
        what,
        length,
        compressed,
        time.perf_counter() - start,
    )
    return obj
