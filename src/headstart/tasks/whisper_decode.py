"""What a Whisper recogniser needs around the network: its tokenizer (the package's own
``tokenizer.json``, read by ``tokenizers``; nothing from a hub), the decoder prompt, the
text normalisation that error rates compare, and greedy / beam decoding on encoder states.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import torch

MAX_TOKENS = 440  # Whisper's decoder holds 448 positions; the prompt takes up to 4


def normalise_text(text: str) -> str:
    """What error rates compare: lower case, punctuation dropped (apostrophes inside words
    kept), one space between words."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return re.sub(r"\s+", " ", text).strip()


class WhisperText:
    """The tokenizer and special tokens of one Whisper model folder."""

    def __init__(self, folder: str | Path, english_only: bool):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        extra = folder / "whisper.json"
        settings = json.loads(extra.read_text()) if extra.is_file() else {}
        self.english_only = english_only

        def tid(token: str) -> int:
            found = self.tokenizer.token_to_id(token)
            if found is None:
                raise ValueError(f"{folder}/tokenizer.json has no {token} token: not Whisper's")
            return int(found)

        self.eot = tid("<|endoftext|>")
        self.sot = tid("<|startoftranscript|>")
        self.no_timestamps = tid("<|notimestamps|>")
        prompt = [self.sot]
        if not english_only:
            prompt += [tid("<|en|>"), tid("<|transcribe|>")]
        self.prompt = [*prompt, self.no_timestamps]
        self.suppress = [int(i) for i in settings.get("suppress_ids", [])]
        self.suppress_begin = [int(i) for i in settings.get("suppress_ids_begin", [220, self.eot])]

    def encode(self, text: str) -> list[int]:
        """A transcript's tokens (a leading space, as Whisper writes words), without the
        prompt. ValueError for text the tokenizer cannot represent exactly: control,
        unassigned or surrogate characters, or Whisper's own special tokens (``<|en|>``)."""
        text = str(text).strip()
        bad = sorted(
            {
                c
                for c in text
                if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") and not c.isspace()
            }
        )
        if bad:
            raise ValueError(f"characters {bad} cannot be encoded by the Whisper tokenizer")
        try:
            ids = self.tokenizer.encode(" " + text, add_special_tokens=False).ids
        except Exception as exc:  # noqa: BLE001 - the tokenizers library's errors vary
            raise ValueError(f"the Whisper tokenizer cannot encode it ({exc})") from exc
        if any(i >= self.eot for i in ids) or self.decode(ids) != text:
            raise ValueError(
                "it holds Whisper's special tokens (such as <|endoftext|>) or text the "
                "tokenizer does not give back unchanged"
            )
        return ids

    def raw_encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) < self.eot]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def targets(self, text: str) -> list[int]:
        """Prompt + transcript + end of text: what the decoder reads and predicts."""
        return [*self.prompt, *self.encode(text), self.eot]


def _suppress_mask(vocab: int, ids: list[int], device) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    if ids:
        mask[torch.tensor([i for i in ids if i < vocab], device=device)] = True
    return mask


@torch.inference_mode()
def greedy_decode(head: Any, states: torch.Tensor, text: WhisperText, max_tokens: int = 200):
    """The likeliest token at each step, batched, with the decoder's key/value cache.
    ``head``: Whisper's decoder and output projection (``.decoder``, ``.proj_out``);
    ``states``: encoder outputs (batch, frames, d). Returns token lists (no prompt)."""
    device = states.device
    n = states.shape[0]
    vocab = head.proj_out.out_features
    always = _suppress_mask(vocab, text.suppress, device)
    # timestamps and every other special token after <|notimestamps|>
    always[text.eot + 1 :] = True
    begin = _suppress_mask(vocab, text.suppress_begin, device)
    tokens = torch.tensor([text.prompt] * n, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    past = None
    step_in = tokens
    decoder = head.decoder
    states = states.float()
    for step in range(min(max_tokens, MAX_TOKENS)):
        res = decoder(
            input_ids=step_in, encoder_hidden_states=states, past_key_values=past, use_cache=True
        )
        past = res.past_key_values
        logits = head.proj_out(res.last_hidden_state[:, -1]).float()
        logits[:, always] = -float("inf")
        if step == 0:
            logits[:, begin] = -float("inf")
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, text.eot), nxt)
        for i in range(n):
            if not done[i] and int(nxt[i]) != text.eot:
                out[i].append(int(nxt[i]))
        done |= nxt == text.eot
        if bool(done.all()):
            break
        step_in = nxt[:, None]
    return out


@torch.inference_mode()
def beam_decode(
    head: Any, states: torch.Tensor, text: WhisperText, beams: int = 4, max_tokens: int = 200
):
    """Beam search, one recording at a time (sum of log-probabilities, length-normalised
    at the end, as Whisper's own decoder ranks finished beams); no key/value cache."""
    vocab = head.proj_out.out_features
    always = _suppress_mask(vocab, text.suppress, states.device)
    always[text.eot + 1 :] = True
    begin = _suppress_mask(vocab, text.suppress_begin, states.device)
    results = []
    for row in states.float():
        enc = row[None].expand(beams, -1, -1)
        alive: list[tuple[float, list[int]]] = [(0.0, [])]
        finished: list[tuple[float, list[int]]] = []
        for step in range(min(max_tokens, MAX_TOKENS)):
            seqs = torch.tensor([text.prompt + s for _, s in alive], device=states.device)
            logits = head.proj_out(
                head.decoder(
                    input_ids=seqs, encoder_hidden_states=enc[: len(alive)]
                ).last_hidden_state[:, -1]
            )
            logp = torch.log_softmax(logits.float(), -1)
            logp[:, always] = -float("inf")
            if step == 0:
                logp[:, begin] = -float("inf")
            cands = []
            for (score, seq), lp in zip(alive, logp):
                top = torch.topk(lp, beams + 1)
                cands += [
                    (score + float(v), seq + [int(k)]) for v, k in zip(top.values, top.indices)
                ]
            cands.sort(key=lambda c: -c[0])
            alive = []
            for score, seq in cands:
                if seq[-1] == text.eot:
                    finished.append((score / len(seq), seq[:-1]))
                elif len(alive) < beams:
                    alive.append((score, seq))
            if len(finished) >= beams or not alive:
                break
        if not finished:
            finished = [(s / max(len(q), 1), q) for s, q in alive]
        results.append(max(finished, key=lambda c: c[0])[1])
    return results
