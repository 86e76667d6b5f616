"""Sweep reports: per-image CSV, mean +- std table over seeds (Markdown + CSV, printed with rich), plot.

Inputs are the `result.json` records of the fine-tunes (hybengine/finetune_runner.write_result).
The score of one run is its mean over test images of the foreground-class mean (`mean_fg_<metric>`);
a table cell is the mean and the sample standard deviation (ddof = 1; 0 for one seed) of that score
over the seeds of an (init, budget) pair.

    per_image.csv   init, budget, seed, image, class, dice, iou, hd95, assd   (one row per class)
    runs.csv        init, budget, seed, labeled, mean_fg_dice, mean_fg_iou, mean_fg_hd95, mean_fg_assd
    table.csv       init, budget, seeds, <metric>_mean, <metric>_std for each metric
    table.md        rows: init; columns: budgets; cells: mean +- std foreground Dice (and an HD95 table)
    plot.png        foreground Dice against label budget, one line per init, error bars = std over seeds
"""
from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..runtime.atomic import atomic_write_text

METRICS = ("dice", "iou", "hd95", "assd")


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def per_image_rows(records: list[dict], class_names: list[str]) -> list[list]:
    rows = []
    for r in sorted(records, key=_order_key):
        for img in r["per_image"]:
            for k in range(len(img["dice"])):
                rows.append([r["init"], r["budget"], r["seed"], img["name"], _class_name(k, class_names),
                             *(_fmt(img[m][k]) if m in img else "" for m in METRICS)])
    return rows


def _class_name(k: int, names: list[str]) -> str:
    return names[k] if k < len(names) else str(k)


def _order_key(r: dict) -> tuple:
    return (r["init"], r["budget"], r["seed"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(records: list[dict], inits: list[str] | None = None) -> list[dict]:
    """One row per (init, budget): seeds, and mean/std over seeds of each run's `mean_fg_<metric>`.
    `inits` fixes the row order (default: first appearance)."""
    order = inits or list(dict.fromkeys(r["init"] for r in records))
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["init"], r["budget"]), []).append(r)
    rows = []
    for init in order:
        for budget in sorted(b for (i, b) in groups if i == init):
            runs = sorted(groups[(init, budget)], key=lambda r: r["seed"])
            row = {"init": init, "budget": budget, "seeds": [r["seed"] for r in runs]}
            for m in METRICS:
                vals = [r[f"mean_fg_{m}"] for r in runs if f"mean_fg_{m}" in r]
                if vals:
                    row[f"{m}_mean"], row[f"{m}_std"] = mean_std(vals)
            rows.append(row)
    return rows


def _grid(agg: list[dict], metric: str) -> tuple[list[str], list[int], dict[tuple[str, int], str]]:
    inits = list(dict.fromkeys(a["init"] for a in agg))
    budgets = sorted({a["budget"] for a in agg})
    cells = {(a["init"], a["budget"]): f"{a[f'{metric}_mean']:.3f} ± {a[f'{metric}_std']:.3f}"
             for a in agg if f"{metric}_mean" in a}
    return inits, budgets, cells


def markdown_table(agg: list[dict], metric: str = "dice") -> str:
    inits, budgets, cells = _grid(agg, metric)
    lines = ["| init | " + " | ".join(f"{b} label{'s' if b > 1 else ''}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for init in inits:
        lines.append(f"| {init} | " + " | ".join(cells.get((init, b), "") for b in budgets) + " |")
    return "\n".join(lines) + "\n"


def rich_table(agg: list[dict], title: str, metric: str = "dice") -> Table:
    inits, budgets, cells = _grid(agg, metric)
    table = Table(title=title)
    table.add_column("init")
    for b in budgets:
        table.add_column(f"{b} label{'s' if b > 1 else ''}", justify="right")
    for init in inits:
        table.add_row(init, *(cells.get((init, b), "") for b in budgets))
    return table


def plot(agg: list[dict], path: Path, title: str, metric: str = "dice") -> None:
    """Metric against label budget, one line per init, error bars = std over seeds (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    inits = list(dict.fromkeys(a["init"] for a in agg))
    budgets = sorted({a["budget"] for a in agg})
    for i, init in enumerate(inits):
        rows = [a for a in agg if a["init"] == init and f"{metric}_mean" in a]
        offset = 1 + 0.03 * (i - (len(inits) - 1) / 2)  # spread the error bars apart (log axis)
        ax.errorbar([a["budget"] * offset for a in rows], [a[f"{metric}_mean"] for a in rows],
                    yerr=[a[f"{metric}_std"] for a in rows], marker="o", capsize=3, label=init)
    _budget_axis(ax, budgets)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("labeled target images (budget)")
    ax.set_ylabel(f"mean foreground {metric.upper() if metric.startswith(('hd', 'as')) else metric.capitalize()}")
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_reports(records: list[dict], out_dir: Path, title: str, class_names: list[str] | None = None,
                  inits: list[str] | None = None, console: Console | None = None) -> list[dict]:
    """Writes every file of the module docstring into out_dir, prints the Dice table; returns the aggregate."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = class_names or []
    atomic_write_text(out_dir / "per_image.csv",
                      _csv_text(["init", "budget", "seed", "image", "class", *METRICS],
                                per_image_rows(records, names)))
    atomic_write_text(out_dir / "runs.csv", _csv_text(
        ["init", "budget", "seed", "labeled", *(f"mean_fg_{m}" for m in METRICS)],
        [[r["init"], r["budget"], r["seed"], " ".join(r["labeled"]),
          *(_fmt(r[f"mean_fg_{m}"]) if f"mean_fg_{m}" in r else "" for m in METRICS)]
         for r in sorted(records, key=_order_key)]))
    agg = aggregate(records, inits)
    atomic_write_text(out_dir / "table.csv", _csv_text(
        ["init", "budget", "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))],
        [[a["init"], a["budget"], " ".join(map(str, a["seeds"])),
          *(_fmt(a[f"{m}_{s}"]) if f"{m}_{s}" in a else "" for m in METRICS for s in ("mean", "std"))]
         for a in agg]))
    fg = ", ".join(names[1:]) if len(names) > 1 else "classes 1..K-1"
    md = (f"# {title}\n\nMean foreground Dice ({fg}) on the test split, mean ± std over seeds "
          f"(sample std, ddof = 1).\n\n" + markdown_table(agg, "dice") +
          "\nMean foreground HD95 in pixels (lower is better), mean ± std over seeds.\n\n" +
          markdown_table(agg, "hd95"))
    atomic_write_text(out_dir / "table.md", md)
    plot(agg, out_dir / "plot.png", title)
    (console or Console()).print(rich_table(agg, title))
    return agg


# ---------------------------------------------------------------------------------------------
# Paired contrasts (hybengine/experiment/stats.py): A - B per score and budget, 95 % interval, p-values

CONTRAST_FIELDS = ("score", "a", "b", "budget", "pretrain_seeds", "label_seeds", "mean", "ci_low", "ci_high",
                   "w_plus", "p", "p_holm", "hier_low", "hier_high", "label_low", "label_high", "seeds_up",
                   "seeds_nonzero", "sign_p")


def contrast_markdown(rows: list[dict]) -> str:
    """One table per score: rows = contrasts, columns = budgets, cells = mean [95 % CI] and p (Holm)."""
    out = []
    for score in dict.fromkeys(r["score"] for r in rows):
        sub = [r for r in rows if r["score"] == score]
        budgets = sorted({r["budget"] for r in sub})
        pairs = list(dict.fromkeys((r["a"], r["b"]) for r in sub))
        out.append(f"### {score}\n")
        out.append("| contrast | " + " | ".join(f"{b} label{'s' if b > 1 else ''}" for b in budgets) + " |")
        out.append("|---|" + "---:|" * len(budgets))
        for a, b in pairs:
            cells = []
            for budget in budgets:
                r = next((r for r in sub if (r["a"], r["b"], r["budget"]) == (a, b, budget)), None)
                if r is None or math.isnan(r["mean"]):
                    cells.append("")
                    continue
                holm = "" if math.isnan(r["p_holm"]) else f", Holm {r['p_holm']:.3g}"
                if "hier_low" in r and not math.isnan(r["hier_low"]):  # both units (stats.py)
                    mark = "**" if r["hier_low"] > 0 or r["hier_high"] < 0 else ""
                    sign = (f"; {r['seeds_up']}/{r['seeds_nonzero']} pretraining seeds > 0"
                            if r["seeds_nonzero"] else "")
                    cells.append(f"{mark}{r['mean']:+.3f} [{r['hier_low']:+.3f}, {r['hier_high']:+.3f}]{mark}{sign}; "
                                 f"label seeds [{r['label_low']:+.3f}, {r['label_high']:+.3f}] p {r['p']:.3g}{holm}")
                    continue
                mark = "**" if r["ci_low"] > 0 or r["ci_high"] < 0 else ""
                cells.append(f"{mark}{r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{mark} "
                             f"p {r['p']:.3g}{holm}")
            out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _budget_axis(ax, budgets) -> None:
    """Budgets on a log axis; linear below 1 when budget 0 (zero-shot) is among them."""
    if 0 in budgets:
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xscale("log")


def _ci(r: dict) -> tuple[float, float]:
    """The interval a contrast row is drawn with: the hierarchical one when computed, else the two-way."""
    if "hier_low" in r and not math.isnan(r["hier_low"]):
        return r["hier_low"], r["hier_high"]
    return r["ci_low"], r["ci_high"]


def plot_contrasts(rows: list[dict], path: Path, title: str) -> None:
    """One panel per score: A - B against budget with 95 % bootstrap intervals, one line per contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.8), dpi=120, squeeze=False)
    for ax, score in zip(axes[0], scores, strict=True):
        sub = [r for r in rows if r["score"] == score and not math.isnan(r["mean"])]
        pairs = list(dict.fromkeys((r["a"], r["b"]) for r in sub))
        budgets = sorted({r["budget"] for r in sub})
        for i, (a, b) in enumerate(pairs):
            pts = sorted((r for r in sub if (r["a"], r["b"]) == (a, b)), key=lambda r: r["budget"])
            offset = 1 + 0.04 * (i - (len(pairs) - 1) / 2)
            ax.errorbar([r["budget"] * offset for r in pts], [r["mean"] for r in pts],
                        yerr=[[r["mean"] - _ci(r)[0] for r in pts], [_ci(r)[1] - r["mean"] for r in pts]],
                        marker="o", capsize=3, label=f"{a} − {b}")
        ax.axhline(0, color="k", lw=0.8)
        _budget_axis(ax, budgets)
        if budgets:
            ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("labeled target images (budget)")
        ax.set_ylabel(f"paired difference, {score}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_contrasts(rows: list[dict], out_dir: Path, title: str, note: str = "") -> None:
    """contrasts.csv, contrasts.md and contrasts.png in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "contrasts.csv", _csv_text(
        list(CONTRAST_FIELDS), [[_fmt(r[k]) if isinstance(r[k], float) else r[k] for k in CONTRAST_FIELDS]
                                for r in rows]))
    seeds = [r["label_seeds"] for r in rows if r["label_seeds"]]
    if seeds and min(seeds) < 6:
        note += (f"\n\nCaution: some cells rest on {min(seeds)} label seeds. A percentile bootstrap over so few "
                 "seeds is too narrow (3 seeds allow 10 distinct resamples), and the exact signed-rank test cannot "
                 f"go below p = {2 / 2 ** min(seeds):.3g}: an interval that excludes 0 there is not evidence.")
    atomic_write_text(out_dir / "contrasts.md", f"# {title}\n\n{note}\n\n" + contrast_markdown(rows))
    plot_contrasts(rows, out_dir / "contrasts.png", title)


def records_from_csv(results_dir: Path) -> list[dict]:
    """Fine-tune records (init, budget, seed, mean_fg_dice, dice per class, ...) rebuilt from a results
    folder's runs.csv and per_image.csv, so committed results can be re-analysed without the runs."""
    results_dir = Path(results_dir)
    with open(results_dir / "runs.csv", newline="") as f:
        runs = {(r["init"], int(r["budget"]), int(r["seed"])): r for r in csv.DictReader(f)}
    per_class: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    classes: list[str] = []
    with open(results_dir / "per_image.csv", newline="") as f:
        for r in csv.DictReader(f):
            key = (r["init"], int(r["budget"]), int(r["seed"]))
            if r["class"] not in classes:
                classes.append(r["class"])
            for m in METRICS:
                if r[m] != "":
                    per_class.setdefault(key, {}).setdefault(m, {}).setdefault(r["class"], []).append(float(r[m]))
    records = []
    for key, r in runs.items():
        rec = {"init": key[0], "budget": key[1], "seed": key[2], "labeled": r["labeled"].split()}
        rec.update({f"mean_fg_{m}": float(r[f"mean_fg_{m}"]) for m in METRICS if r.get(f"mean_fg_{m}")})
        for m, by_class in per_class.get(key, {}).items():
            rec[m] = [sum(by_class[c]) / len(by_class[c]) for c in classes]
        records.append(rec)
    return records
