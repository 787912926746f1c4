"""Text embedding throughput: headstart vs the raw transformers forward, and bucketing.

Both sides embed the same real SpamAssassin emails with all-MiniLM-L6-v2 (packaged, offline):

* reference: ``AutoModel`` forward + mean pooling on batches tokenised beforehand (the
  tokenizer is not timed, padding to the batch's longest text, in file order);
* headstart: ``compute_features`` on a ``TextDataset`` (tokenised beforehand too), with
  its collate, length bucketing and pooling.

Prints texts/s of both and the ratio (goal >= 0.85), then the speed-up of length
bucketing (headstart with bucketing vs without) at the same max length.

    python benchmarks/bench_text_embed.py --n 384 --max-length 256
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import median_time, report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=384, help="emails to embed")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--bucketing-only",
        action="store_true",
        help="only the bucketing speed-up, with --truncation/--max-chunks",
    )
    parser.add_argument("--truncation", default="head", choices=["head", "head_tail", "chunks"])
    parser.add_argument("--max-chunks", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from headstart.data.text import TextDataset, TextSource, collate_text
    from headstart.datasets import spam_assassin
    from headstart.features import compute_features
    from headstart.zoo import create_backbone
    from headstart.zoo.base import TextPreprocess

    texts, _, _ = spam_assassin()
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.choice(len(texts), args.n, replace=False)]
    backbone = create_backbone("packaged:minilm-l6").eval()
    tok = backbone.tokenizer
    model = backbone.model

    batches = [
        tok(
            texts[j : j + args.batch],
            padding=True,
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        for j in range(0, len(texts), args.batch)
    ]

    @torch.inference_mode()
    def reference():
        out = []
        for b in batches:
            states = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    source = TextSource(texts, np.zeros(len(texts), dtype=np.int64), ["x"], "bench")
    pre = TextPreprocess(
        args.max_length, args.truncation, args.max_chunks if args.truncation == "chunks" else 1
    )
    dataset = TextDataset(source, tok, pre)

    def ours(bucketing: bool):
        return compute_features(
            backbone,
            dataset,
            args.batch,
            "cpu",
            False,
            0,
            collate_fn=collate_text,
            bucketing=bucketing,
        )

    n = len(texts)
    if args.bucketing_only:
        t_ours = median_time(lambda: ours(True), args.repeats)
        t_plain = median_time(lambda: ours(False), args.repeats)
        report(
            "length bucketing on real emails",
            {
                "emails": n,
                "truncation": args.truncation,
                "max_length": args.max_length,
                "chunks per email": float(np.mean([len(d) for d in dataset.encoded])),
                "mean tokens": float(dataset.lengths.mean()),
                "with bucketing texts/s": round(n / t_ours, 1),
                "without bucketing texts/s": round(n / t_plain, 1),
            },
            "bucketing speed-up",
            t_plain / t_ours,
            "> 1",
        )
        return

    same = torch.allclose(reference(), ours(True), atol=1e-4)
    t_ref = median_time(reference, args.repeats)
    t_ours = median_time(lambda: ours(True), args.repeats)
    t_plain = median_time(lambda: ours(False), args.repeats)
    report(
        "text embedding throughput (all-MiniLM-L6-v2, SpamAssassin emails)",
        {
            "emails": n,
            "max_length": args.max_length,
            "mean tokens": float(dataset.lengths.mean()),
            "threads": torch.get_num_threads(),
            "reference (raw forward, pre-tokenised, file order) texts/s": round(n / t_ref, 1),
            "headstart compute_features (bucketing) texts/s": round(n / t_ours, 1),
            "headstart without bucketing texts/s": round(n / t_plain, 1),
            "same embeddings as reference": same,
            "bucketing speed-up (headstart, with vs without)": round(t_plain / t_ours, 3),
        },
        "ratio headstart / reference",
        t_ref / t_ours,
        ">= 0.85",
    )


if __name__ == "__main__":
    main()
