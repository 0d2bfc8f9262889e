"""``report.md``: report.json said in words, for a person deciding what to try next."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What each signal is, in a sentence.
SIGNAL_WORDS = {
    "image": "cosine of the image encoder's embeddings (timm backbone fine-tuned with ArcFace over label_group)",
    "text": "cosine of the title encoder's embeddings (transformer fine-tuned with ArcFace over label_group)",
    "tfidf": "cosine of TF-IDF vectors of the cleaned titles, fitted on the searched titles themselves",
    "phash": "1 - Hamming distance / 64 between the images' 64-bit perceptual hashes (near-duplicate photos)",
    "concat": "the image and title embeddings concatenated with weights: its cosine is the weighted mean of the two",
    "blend": "neighbourhood blending: each vector becomes the similarity-weighted sum of its close neighbours and "
    "is searched again, so postings that share neighbours move together",
    "pair": "a learned pair score: gradient-boosted trees over every signal's similarity, rank and gap to the "
    "query's best, cross-fitted by fold; the probability that the two postings match",
}


# What each figure in plots/ shows; report.md lists those the run has.
FIGURE_WORDS = {
    "threshold_f1.png": "F1 against each threshold",
    "training.png": "loss and held-out F1 per epoch",
    "f1_by_group_size.png": "F1 by the size of the true group",
    "false_positives.png": "the hardest out-of-fold false matches, ranked by the margin of the score that decided them",
    "false_negatives.png": "the true matches missed by least",
}


def report_markdown(r: Mapping[str, Any], root: Path) -> str:
    """The report in Markdown: headline, signals, the rule step by step, group sizes, training, files."""
    lines = [f"# Run report: `{root}`", ""]
    lines += _headline(r)
    lines += _signals(r)
    lines += _rule(r)
    lines += _gallery_size(r)
    lines += _group_sizes(r)
    lines += _training(r)
    lines += _files(r)
    return "\n".join(lines) + "\n"


def _headline(r: Mapping[str, Any]) -> list[str]:
    d = r["data"]
    out = []
    if r["f1_cross_validated"] is not None:
        cv = r["oof_cv"]
        out.append(
            f"**Cross-validated F1: {cv['f1']:.4f}** (precision {cv['precision']:.3f}, recall "
            f"{cv['recall']:.3f}; per fold {', '.join(f'{x:.3f}' for x in cv.get('per_fold_f1', []))}). "
            f"For each fold, every threshold and setting was tuned on the other folds and scored on this "
            f"one: the figure to expect on unseen postings like these."
        )
    else:
        out.append("No cross-validated F1 (`decision.cv_estimate=false`).")
    searched = "every train posting" if r["gallery"] == "all" else "its own postings"
    out += [
        "",
        f"Tuned and scored on the same rows: {r['oof_f1']:.4f}. This is the tuning's own fit, optimistic; "
        "compare runs by the cross-validated figure.",
        "",
        f"Data: {d['train_rows']} train postings in {d['train_groups']} groups, {d['test_rows']} test postings. "
        f"Each held-out fold was searched among {searched}.",
        "",
    ]
    if r.get("ensemble"):
        out += ["Ensemble of " + ", ".join(f"`{m['run']}` (weight {m['weight']:g})" for m in r["ensemble"]) + ".", ""]
    out += [f"Submission: {r['submission_status']}" + (f" (`{r['submission']}`)" if r["submission"] else ""), ""]
    return out


def _signals(r: Mapping[str, Any]) -> list[str]:
    rule = r["rule"]
    out = [
        "## Signals",
        "",
        "| signal | what it is | F1 alone | its best threshold | applied in the rule |",
        "|---|---|---|---|---|",
    ]
    for name, step in r["per_modality"].items():
        applied = rule["applied_thresholds"].get(name)
        what = SIGNAL_WORDS.get(name, "")
        if name == "blend" and "signal" in step:
            what += (
                f" (here: {step['signal']}, {step['rounds']} round(s), neighbours above {step['blend_threshold']:.3f})"
            )
        shown = f"{applied:.4f}" if applied is not None else "not used"
        out.append(f"| {name} | {what} | {step['f1']:.4f} | {step['threshold']:.4f} | {shown} |")
    untrained = r.get("untrained") or {}
    for m, v in untrained.items():
        out.append(
            f"| {m}, untrained | the same encoder before fine-tuning (a baseline) | {v['f1']:.4f} | "
            f"{v['threshold']:.4f} | - |"
        )
    return out + [""]


def _groups_in_words(steps: Mapping[str, Any]) -> str:
    """The group step (``group.rule``) in one sentence: used, left out, or skipped."""
    g = steps["groups"]
    if "skipped" in g:
        return f"no group decision ({g['skipped']})."
    if g.get("kept") is False:
        return (
            f"clustering the accepted pairs scored {g['f1']:.4f}, more than the tolerance below the pairs' "
            f"own {steps['final']['f1']:.4f}, so each posting keeps its accepted pairs."
        )
    return (
        "the accepted pairs are clustered (linkage of the pair model's calibrated probabilities) and each "
        f"posting's matches are its group: F1 {steps['pairs_final']['f1']:.4f} with the pairs, "
        f"{g['f1']:.4f} with the groups."
    )


def _rule(r: Mapping[str, Any]) -> list[str]:
    rule, steps = r["rule"], r["steps"]
    out = ["## The rule, step by step", ""]
    if "union" in steps:
        out.append(
            f"1. **Union** ({steps['union']['f1']:.4f} at that step): {rule['union']['in_words']} "
            f"({rule['union']['count']} thresholds)."
        )
    out.append(f"2. **Why the applied thresholds differ from each signal's best:** {rule['why_they_differ']}")
    out.append(f"3. **Min-2**: {rule['min2']['in_words']}.")
    if "pair" in r["per_modality"]:
        used = [
            where
            for where, yes in (
                ("in the union", "pair" in rule["applied_thresholds"]),
                ("as the min-2 signal", rule["min2"]["signal"] == "pair"),
            )
            if yes
        ]
        out.append(
            "4. **Pair score**: the pair model's probability is one more signal, tuned like the others; "
            + (
                f"here it is used {' and '.join(used)}."
                if used
                else "here the rule is better without it, so it is not used."
            )
        )
    if "groups" in steps:
        out.append(f"5. **Groups**: {_groups_in_words(steps)}")
    out += ["", f"Final rule, tuned and scored on the same rows: F1 {steps['final']['f1']:.4f}.", ""]
    contributions = rule.get("contributions") or {}
    parts = [(k.removeprefix("without "), v) for k, v in contributions.items() if k.startswith("without ")]
    if parts:
        out += [
            "What each part adds (the rule's F1 minus its F1 without that part, on the tuned rows):",
            "",
            "| part | F1 without it | adds |",
            "|---|---|---|",
        ]
        out += [f"| {name} | {v['f1']:.4f} | {v['adds']:+.4f} |" for name, v in parts]
        out.append("")
    return out


def _gallery_size(r: Mapping[str, Any]) -> list[str]:
    g = r.get("gallery_size")
    if not g:
        return []
    out = [
        "## Thresholds and the gallery's size",
        "",
        f"The thresholds were tuned on galleries of {g['tuned_size']:,} postings. A larger gallery holds more "
        "close non-matches, so `predict` moves each threshold by its slope per doubling of the gallery "
        f"(log2 of the postings matched over {g['tuned_size']:,}). On this run's test.csv ({g['test_rows']:,} "
        f"postings, {g['doublings_at_test']:+.2f} doublings):",
        "",
        "| threshold | per doubling | tuned | applied to test.csv |",
        "|---|---|---|---|",
    ]
    tuned = r["rule"]["applied_thresholds"]
    for name, at_test in g["thresholds_at_test"].items():
        slope = g["per_doubling"].get(name, 0.0)
        out.append(f"| {name} | {slope:+.4f} | {tuned[name]:.4f} | {at_test:.4f} |")
    if g.get("min2_floor_at_test") is not None:
        slope = g["per_doubling"].get("min2_floor", 0.0)
        floor = r["rule"]["min2"]["floor"]
        out.append(f"| min-2 floor | {slope:+.4f} | {floor:.4f} | {g['min2_floor_at_test']:.4f} |")
    return out + [""]


def _group_sizes(r: Mapping[str, Any]) -> list[str]:
    by = r.get("by_group_size") or {}
    table, kind = (
        (by.get("cross_validated"), "cross-validated")
        if by.get("cross_validated")
        else (by.get("in_sample"), "tuned and scored on the same rows")
    )
    if not table:
        return []
    out = [
        "## F1 by group size",
        "",
        f"Mean F1 of the postings whose true group has that many postings ({kind}). "
        "Small groups suffer most from one false match; large ones from missed matches.",
        "",
        "| group size | postings | F1 |",
        "|---|---|---|",
    ]
    out += [f"| {k} | {v['postings']} | {v['f1']:.4f} |" for k, v in table.items()]
    return out + [""]


def _training(r: Mapping[str, Any]) -> list[str]:
    training = r.get("training") or {}
    if not training:
        return []
    out = [
        "## Training",
        "",
        "| model | epochs | seconds (all epochs) | last loss | held-out F1 |",
        "|---|---|---|---|---|",
    ]
    for name, t in training.items():
        val = t.get("val_f1")
        shown = f"{val:.4f}" if isinstance(val, float) else "-"
        out.append(
            f"| {name} | {t.get('epochs')} | {t.get('seconds', 0):.1f} | {t.get('loss', float('nan')):.4f} | {shown} |"
        )
    return out + [""]


def _files(r: Mapping[str, Any]) -> list[str]:
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in r.get("timings", {}).items())
    figures = [f"`{name}` ({FIGURE_WORDS.get(name, 'a figure')})" for name in r.get("figures", [])]
    return [
        "## Files",
        "",
        f"Stage times: {timings}.",
        "",
        ("Figures in `plots/`: " + ", ".join(figures) + "." if figures else "No figures in `plots/`.")
        + " Every stage's log lines are in `run.log`.",
        "",
    ]
