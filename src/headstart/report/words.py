"""The words of a study's verdict, shared by the CLI and the HTML report (a leaf module)."""

from __future__ import annotations

SCRATCH = "scratch"
BASELINE = "baseline"  # the classic baseline's runs (no network)
RIVAL_WORDS = {SCRATCH: "training from scratch", BASELINE: "the classic baseline"}


def describe_gain(g: dict) -> tuple[str, str]:
    """(the verdict in a few words, the figures behind it) of one row of
    :meth:`StudyResult.gains`, as the CLI and the report print it."""
    rival = RIVAL_WORDS.get(g.get("rival", ""), "the baseline")
    if g["verdict"] == "negative transfer":
        head = f"NEGATIVE TRANSFER: {rival} beat every transfer strategy"
    elif g["verdict"] == "transfer":
        beaten = " and ".join(RIVAL_WORDS[k] for k in (SCRATCH, BASELINE) if f"{k}_accuracy" in g)
        head = f"transfer beat {beaten}"
    else:
        head = (
            f"a tie: against {rival} the difference is within the test set's noise "
            f"(+-{g['margin_points']:.1f} points)"
        )
    parts = [f"{g['best_strategy']} {100 * g['transfer_accuracy']:.1f}%"]
    for k, words in ((SCRATCH, "scratch"), (BASELINE, "classic baseline")):
        if f"{k}_accuracy" in g:
            parts.append(
                f"{g[f'{k}_gain_points']:+.1f} pts over {words} ({100 * g[f'{k}_accuracy']:.1f}%)"
            )
    needs = []
    if g.get("scratch_items_to_match") is not None:
        needs.append(f"scratch needs ~{g['scratch_items_to_match']:.0f} items to match it")
    elif "scratch_accuracy" in g:
        needs.append("scratch never matches it here")
    if "baseline_accuracy" in g:
        if g["baseline_accuracy"] > g["transfer_accuracy"]:
            m = g.get("transfer_items_to_match_baseline")
            needs.append(
                f"transfer needs ~{m:.0f} items to match the baseline"
                if m
                else "transfer never matches the baseline here"
            )
        else:
            m = g.get("baseline_items_to_match")
            needs.append(
                f"the baseline needs ~{m:.0f} items to match transfer"
                if m
                else "the baseline never matches transfer here"
            )
    return head, "; ".join([", ".join(parts), *needs])
