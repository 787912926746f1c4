"""``models``, ``datasets``, ``convert-boxes``: the zoo, the offline datasets, box formats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("headstart")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "convert-boxes",
        help="convert box annotations between COCO JSON, "
        "Pascal VOC XML and YOLO txt (checking every box)",
    )
    p.add_argument("source", help="a COCO .json, a folder of VOC .xml, or a YOLO folder")
    p.add_argument("--to", choices=["coco", "voc", "yolo"], required=True)
    p.add_argument("--out", required=True, help="COCO: the .json to write; VOC/YOLO: a folder")
    p.add_argument(
        "--images", default=None, help="folder of the images, when not beside the annotations"
    )
    p.add_argument("--fix-boxes", choices=["error", "clip", "drop"], default="error")
    p.set_defaults(handler=cmd_convert_boxes)

    p = sub.add_parser("models", help="list the source models of the zoo")
    p.add_argument("--modality", default=None)
    p.add_argument("--offline", action="store_true", help="only models usable with no network")
    p.add_argument("--source", default=None, help="id prefix: packaged, timm, tiny")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser(
        "datasets",
        help="export a real offline dataset: image folders, or train.csv/test.csv for text",
    )
    p.add_argument(
        "name",
        choices=[
            "fashion-mnist",
            "spam-assassin",
            "fine-foods",
            "tree-crowns",
            "accent-commands",
            "accent-digits",
        ],
    )
    p.add_argument(
        "--source-accent",
        default="us",
        help="accent-*: the source accent group "
        "(us, gb, north-england, scotland, caribbean, german, spanish, french, "
        "italian)",
    )
    p.add_argument("--target-accent", default="spanish", help="accent-*: the target accent")
    p.add_argument("--out", required=True, help="folder to write train and test data into")
    p.add_argument(
        "--per-class",
        type=int,
        default=100,
        help="training items per class (0: all; fine-foods: the official 4000 when 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="test images per class (default: the whole official test split)",
    )
    p.set_defaults(handler=cmd_datasets)


def cmd_convert_boxes(args) -> int:
    from ..data.boxes import read_boxes, write_boxes

    source = read_boxes(args.source, fix=args.fix_boxes, images=args.images)
    out = write_boxes(source, args.out, args.to)
    print(
        f"wrote {len(source)} images, {source.num_boxes} boxes, classes "
        f"{', '.join(source.classes)} as {args.to} to {out}"
        + (f"; dropped {len(source.dropped)} bad box(es)" if source.dropped else "")
    )
    return 0


def cmd_models(args) -> int:
    from ..zoo import list_models

    metas = list_models(
        modality=args.modality, offline=True if args.offline else None, source=args.source
    )
    if args.json:
        print(json.dumps([m.to_dict() for m in metas], indent=2))
        return 0
    print(
        f"{'id':<36} {'modality':<8} {'params':>10} {'offline':<7} {'licence':<12} source "
        "data / task"
    )
    for m in metas:
        params = f"{m.params / 1e6:.2f}M" if m.params else "?"
        print(
            f"{m.id:<36} {m.modality:<8} {params:>10} {'yes' if m.offline else 'no':<7} "
            f"{m.licence:<12} {m.source_data} / {m.source_task}"
        )
        if m.input:
            print(f"{'':<4}input: {m.input}")
    print(
        "\nAlso: timm:<any timm model name> and hf:<any hub text encoder, or wav2vec2 / "
        "HuBERT / WavLM speech encoder> (hub weights, need network) and the directory of a "
        "run headstart wrote (`headstart pretrain` makes one from your own source data)."
    )
    from ..tasks.detect import TORCHVISION_DETECTORS

    print(
        "Detection (--task detect): --detector fasterrcnn | retinanet | fcos on any image "
        "backbone above, or a whole COCO-pretrained detector (needs network): "
        + ", ".join(f"torchvision:{n}" for n in TORCHVISION_DETECTORS)
        + "."
    )
    return 0


def cmd_datasets(args) -> int:
    if args.name.startswith("accent-"):
        from ..data.speech import build_accent_corpus

        summary = build_accent_corpus(
            args.out,
            source=args.source_accent,
            target=args.target_accent,
            task=args.name.removeprefix("accent-"),
            seed=args.seed,
        )
        for split, info in summary["splits"].items():
            print(f"wrote {split}: {info['recordings']} recordings to {Path(args.out) / split}")
        return 0
    if args.name == "tree-crowns":
        return _tree_dataset(args)
    if args.name != "fashion-mnist":
        return _text_dataset(args)
    from ..datasets import export_image_folder, fashion_mnist, per_class_subset

    out = Path(args.out)
    x, y, classes = fashion_mnist("train")
    idx = per_class_subset(y, args.per_class, args.seed)
    export_image_folder(x[idx], y[idx], classes, out / "train")
    xt, yt, _ = fashion_mnist("test")
    tidx = (
        per_class_subset(yt, args.test_per_class, args.seed) if args.test_per_class else slice(None)
    )
    export_image_folder(xt[tidx], yt[tidx], classes, out / "test")
    print(
        f"wrote {len(idx)} training images to {out / 'train'} and "
        f"{len(yt[tidx])} test images to {out / 'test'}"
    )
    return 0


def _text_dataset(args) -> int:
    """SpamAssassin: stratified 50/50 split (--seed), --per-class of the train half;
    Fine Food: the official split. Written as train.csv / test.csv (text,label)."""
    import numpy as np

    from ..datasets import export_text_csv, fine_foods, per_class_subset, spam_assassin

    out = Path(args.out)
    if args.name == "spam-assassin":
        from sklearn.model_selection import train_test_split

        texts, labels, _ = spam_assassin()
        idx = np.arange(len(texts))
        tr, te = train_test_split(idx, test_size=0.5, stratify=labels, random_state=args.seed)
        train = ([texts[i] for i in tr], [labels[i] for i in tr])
        test = ([texts[i] for i in te], [labels[i] for i in te])
    else:
        train, test = fine_foods("train"), fine_foods("test")
    if args.per_class:
        y = np.unique(train[1], return_inverse=True)[1]
        keep = per_class_subset(y, args.per_class, args.seed)
        train = ([train[0][i] for i in keep], [train[1][i] for i in keep])
    if args.test_per_class:
        y = np.unique(test[1], return_inverse=True)[1]
        keep = per_class_subset(y, args.test_per_class, args.seed)
        test = ([test[0][i] for i in keep], [test[1][i] for i in keep])
    export_text_csv(*train, out / "train.csv")
    export_text_csv(*test, out / "test.csv")
    print(
        f"wrote {len(train[0])} training texts to {out / 'train.csv'} and {len(test[0])} "
        f"test texts to {out / 'test.csv'}"
    )
    return 0


def _tree_dataset(args) -> int:
    """The DeepForest tree crowns as Pascal VOC folders (images copied): train/ (one large
    scene) and test/ (two held-out images)."""
    import shutil

    from ..data.boxes import BoxSource, write_voc
    from ..datasets import tree_crowns

    out = Path(args.out)
    for split in ("train", "test"):
        source = tree_crowns(split)
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        copied = []
        for s in source.samples:
            target = folder / Path(s.path).name
            if not target.exists():
                shutil.copyfile(s.path, target)
            copied.append(type(s)(str(target), s.width, s.height, s.boxes, s.labels))
        write_voc(BoxSource(copied, source.classes, source.origin), folder)
        print(f"wrote {split}: {len(source)} image(s), {source.num_boxes} tree crowns to {folder}")
    return 0
