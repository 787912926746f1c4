"""Text with real weights (slow): the packaged all-MiniLM-L6-v2 loads offline, embeds
paraphrases closer than unrelated sentences and fine-tunes end to end; ``hf:`` ids offline
fail fast naming the packaged model."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
import torch

from headstart import TextClassifier
from headstart.data.text import collate_text, encode_texts
from headstart.features import clear_memory_cache
from headstart.zoo import OfflineError, create_backbone

from text_common import TEXT_FAST


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
    batch = collate_text(
        [(d, torch.tensor(0)) for d in encode_texts(backbone.tokenizer, texts, pre)],
        pad_id=backbone.tokenizer.pad_token_id,
    )[0]
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
    e = _embed(
        minilm,
        [
            "A man is playing a guitar.",
            "Someone is playing the guitar.",
            "The stock market fell sharply today.",
            "Interest rates were raised by the central bank.",
        ],
    )
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
    common = dict(
        num_workers=0, device="cpu", val_fraction=0.2, head_epochs=40, early_stopping=0, seed=0
    )
    fe = TextClassifier("packaged:minilm-l6", strategy="feature_extract", **common).fit(X, y)
    assert fe.score(Xt, yt) >= 0.9
    assert fe.evaluate(Xt, yt)["baseline"]["n"] == len(Xt)

    caplog.set_level(logging.INFO, logger="headstart.strategies")
    run = tmp_path / "lora"
    lora = TextClassifier(
        "packaged:minilm-l6", strategy="lora", epochs=1, run_dir=run, **common
    ).fit(X, y)
    assert lora.score(Xt, yt) >= 0.9
    found = re.search(
        r"stage lora: trainable ([\d,]+) / ([\d,]+) parameters \(([\d.]+)%\)", caplog.text
    )
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
