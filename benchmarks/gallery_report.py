"""The gallery-size protocol's table and plot (:mod:`benchmarks.gallery_size`): means over the
splits per variant and gallery size, the paired gains over the first variant, and the in-sample ceilings."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# The in-sample ceilings of --oracle: result key -> (table label, gallery size; None: the whole other part's).
CEILINGS = {"oracle_1x": ("1.0x own", 1.0), "oracle_2x": ("2.0x own", 2.0), "oracle_whole": ("whole own", None)}
# With --oracle-group V, the same for the group variant V (its key's prefix "group_").
GROUP_CEILINGS = {f"group_{k}": (f"{label}, group rule", size) for k, (label, size) in CEILINGS.items()}


def table(results: list[dict]) -> str:
    """Mean over splits: per variant, OOF, CV, the whole other part, each size and the loss; the ceilings."""
    lines = ["variant  | gallery  | F1     | precision | recall | (mean over splits)"]
    first = next(iter(results[0]["variants"]))
    for name in results[0]["variants"]:
        rows = [r["variants"][name] for r in results]

        def mean(get, rows=rows) -> str:
            vals = [get(r) for r in rows]
            return " | ".join(f"{np.mean([v[k] for v in vals]):.4f}" for k in ("f1", "precision", "recall"))

        lines.append(f"{name:8} | OOF 1x   | {mean(lambda r: r['oof'])}")
        if "cv" in rows[0]:
            lines.append(f"{name:8} | CV 1x    | {mean(lambda r: r['cv'])}")
        lines.append(
            f"{name:8} | whole {np.mean([r['whole']['size'] for r in rows]):.1f}x | {mean(lambda r: r['whole'])}"
        )
        for i, s in enumerate(rows[0].get("sizes", [])):
            if all(len(r.get("sizes", [])) > i for r in rows):
                lines.append(f"{name:8} | {s['size']:.1f}x     | {mean(lambda r, i=i: r['sizes'][i])}")
        loss = 100 * np.array([r["oof"]["f1"] - r["whole"]["f1"] for r in rows])
        spread = f" ± {loss.std(ddof=1) / np.sqrt(len(loss)):.2f} (standard error)" if len(loss) > 1 else ""
        lines.append(f"{name:8} | loss     | OOF - whole: {loss.mean():.2f} points{spread} over {len(loss)} splits")
        if name != first:
            lines.append(f"{name:8} | gain     | over {first}, paired: {_gain(results, name, first)}")
    for key, (label, _) in {**CEILINGS, **GROUP_CEILINGS}.items():
        if all(key in r for r in results):
            lines.append(
                f"ceiling  | {label:8} | "
                + " | ".join(f"{np.mean([r[key][k] for r in results]):.4f}" for k in ("f1", "precision", "recall"))
                + "  (tuned in-sample on that gallery: its first draw)"
            )
    return "\n".join(lines)


def _gain(results: list[dict], name: str, ref: str) -> str:
    """Mean paired difference of F1 (points) and its standard error: the whole other part and 1x
    (when every split has a 1x draw)."""

    def at_1x(v: dict) -> float | None:
        return next((s["f1"] for s in v.get("sizes", []) if s["size"] == 1.0), None)

    parts = []
    for label, get in (("whole", lambda v: v["whole"]["f1"]), ("1.0x", at_1x)):
        pairs = [(get(r["variants"][name]), get(r["variants"][ref])) for r in results]
        if any(x is None or y is None for x, y in pairs):
            continue
        d = 100 * np.array([x - y for x, y in pairs])
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        parts.append(f"{label} {d.mean():+.2f} ± {se:.2f}")
    return "; ".join(parts) + " points"


def _ceiling_points(results: list[dict], key: str, ceilings: Mapping = CEILINGS) -> list[tuple[float, float]]:
    """(size, figure) of the in-sample ceilings (``--oracle``), each the mean over the splits."""
    points = []
    for name, (_, size) in ceilings.items():
        if all(name in r for r in results):
            sizes = [size or next(iter(r["variants"].values()))["whole"]["size"] for r in results]
            points.append((float(np.mean(sizes)), float(np.mean([r[name][key] for r in results]))))
    return sorted(points)


def plot(results: list[dict], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    from pipeline.io import save_figure

    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, key in zip(axes, ("f1", "precision", "recall")):
        for name in results[0]["variants"]:
            rows = [r["variants"][name] for r in results]
            n = min(len(r.get("sizes", [])) for r in rows)
            x = [rows[0]["sizes"][i]["size"] for i in range(n)]
            y = [np.mean([r["sizes"][i][key] for r in rows]) for i in range(n)]
            whole = float(np.mean([r["whole"]["size"] for r in rows]))
            if not x or whole > max(x) + 0.05:  # the whole other part, larger than every draw
                x, y = x + [whole], y + [np.mean([r["whole"][key] for r in rows])]
            line = ax.plot(x, y, marker="o", label=f"{name}: unseen groups")[0]
            ax.plot(
                [1.0],
                [np.mean([r["oof"][key] for r in rows])],
                marker="*",
                markersize=12,
                color=line.get_color(),
                linestyle="none",
                label=f"{name}: out-of-fold (tuning part)",
            )
        for ceilings, style, rule in ((CEILINGS, "--", "threshold rule"), (GROUP_CEILINGS, ":", "group rule")):
            ceiling = _ceiling_points(results, key, ceilings)
            if ceiling:
                ax.plot(
                    *zip(*ceiling),
                    marker="x",
                    markersize=9,
                    color="black",
                    linestyle=style,
                    label=f"ceiling ({rule}): tuned in-sample on that gallery itself",
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks([0.5, 1, 2, 3, 4], ["0.5x", "1x", "2x", "3x", "4x"])
        ax.set_xlabel("gallery size / tuning gallery size")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncol=3)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    return path


def write_results(results: list[dict], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.txt").write_text(table(results) + "\n")
    print(f"plot: {plot(results, out / 'gallery_size.png', title)}", file=sys.stderr)
