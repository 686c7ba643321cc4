"""Sweep results: a CSV row per run, a Markdown row per configuration, and plots.

The table follows the seed DDPM sweep's layout: configurations sorted by the mean FID
of their last evaluation (lower is better; then by the final loss), with mean, std, min
and max of final FID and of final loss over the finished repeats, and how many repeats
finished or diverged. Diverged and failed runs are counted, never silently dropped.
Plots are drawn with matplotlib's object API on the Agg canvas (no display, no global
pyplot state, safe inside the app's threads).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .sweep import Report, RunResult, collect, describe_label, format_value, read_plan

CSV_NAME, MD_NAME = "results.csv", "results.md"
PLOT_NAMES = ("loss_curves.png", "fid_curves.png", "final_fid.png", "final_loss.png", "one_at_a_time.png")


@dataclass
class Stats:
    mean: float
    std: float | None  # sample standard deviation; None for a single value
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats | None":
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, min(values), max(values))


@dataclass
class ConfigSummary:
    """One configuration (row of results.md) over its repeats."""

    label: dict[str, Any]
    runs: list[RunResult]
    fid: Stats | None = None  # over finished runs with an FID
    loss: Stats | None = None  # over finished runs
    counts: dict[str, int] = field(default_factory=dict)  # status -> runs

    @property
    def configuration(self) -> str:
        return describe_label(self.label)

    def sort_key(self) -> tuple:
        # best FID first, then best loss; configurations with nothing finished last
        fid = self.fid.mean if self.fid else math.inf
        loss = self.loss.mean if self.loss else math.inf
        return (self.fid is None, fid, self.loss is None, loss)


def summarize(results: Sequence[RunResult]) -> list[ConfigSummary]:
    """One summary per configuration, sorted best first."""
    grouped: dict[str, list[RunResult]] = {}
    for result in results:  # by exact values: the printed ones are rounded
        grouped.setdefault(json.dumps(result.label, sort_keys=True), []).append(result)
    summaries = []
    for runs in grouped.values():
        finished = [r for r in runs if r.status == "finished"]
        counts: dict[str, int] = {}
        for r in runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        summaries.append(ConfigSummary(
            runs[0].label, runs,
            Stats.of([r.final_fid for r in finished if r.final_fid is not None]),
            Stats.of([r.final_loss for r in finished if r.final_loss is not None]),
            counts,
        ))
    return sorted(summaries, key=ConfigSummary.sort_key)


def write_report(out: str | Path) -> Report:
    """(Re)write results.csv, results.md and the plots from the sweep folder's runs on disk."""
    out = Path(out)
    plan, results = read_plan(out), collect(out)
    fields = plan.get("fields") or (list(results[0].label) if results else [])
    summaries = summarize(results)
    csv_path = write_csv(out / CSV_NAME, results, fields)
    md_path = out / MD_NAME
    md_path.write_text(markdown(plan, summaries, results, fields))
    for stale in PLOT_NAMES:  # a plot that no longer applies must not linger
        (out / stale).unlink(missing_ok=True)
    return Report(csv_path, md_path, write_plots(out, plan, summaries, results))


# --- CSV --------------------------------------------------------------------------------

CSV_COLUMNS = ("repeat", "seed", "status", "final_loss", "final_fid", "best_fid", "steps", "max_steps",
               "wall_seconds", "error", "run")


def write_csv(path: Path, results: Sequence[RunResult], fields: Sequence[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["configuration", *fields, *CSV_COLUMNS])
        for r in results:
            values = [_csv_value(r.label.get(f)) for f in fields]
            writer.writerow([r.configuration, *values, r.repeat, r.seed, r.status, _csv_value(r.final_loss),
                             _csv_value(r.final_fid), _csv_value(r.best_fid), r.steps, _csv_value(r.max_steps),
                             _csv_value(r.wall_seconds), r.error, str(r.path)])
    return path


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: the CSV is for further analysis
    return format_value(value)


# --- Markdown -----------------------------------------------------------------------------

STATUS_COLUMNS = ("finished", "diverged", "failed", "incomplete", "pending")


def markdown(plan: dict[str, Any], summaries: list[ConfigSummary], results: list[RunResult],
             fields: Sequence[str]) -> str:
    has_fid = any(s.fid for s in summaries)
    lines = [f"# Sweep `{plan.get('name', '')}`", ""]
    if plan.get("description"):
        lines += [plan["description"].strip(), ""]
    lines += [_overview(plan, results, has_fid), ""]
    lines += _table(summaries, fields, has_fid)
    lines += _problems(results)
    return "\n".join(lines) + "\n"


def _overview(plan: dict[str, Any], results: list[RunResult], has_fid: bool) -> str:
    mode = plan.get("mode", "grid")
    over = " × ".join(plan.get("fields", [])) if mode == "grid" else "; ".join(plan.get("groups", []))
    seeds = plan.get("seeds", [])
    counts = {s: sum(r.status == s for r in results) for s in STATUS_COLUMNS}
    done = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    order = ("mean final FID (lower is better), then mean final loss" if has_fid
             else "mean final loss (no FID recorded)")
    return (f"{'Grid over' if mode == 'grid' else 'One at a time, around the base values:'} {over}; "
            f"{len(seeds)} repeat(s), seeds {', '.join(map(str, seeds))}; {len(results)} runs: {done}.\n\n"
            f"Sorted by {order}. Statistics are over the finished repeats of each configuration "
            f"(std: sample standard deviation); final loss is the last logged training loss.")


def _table(summaries: list[ConfigSummary], fields: Sequence[str], has_fid: bool) -> list[str]:
    names = _column_names(fields)
    statuses = [s for s in STATUS_COLUMNS if s in ("finished", "diverged")
                or any(summary.counts.get(s) for summary in summaries)]
    metrics = (["FID"] if has_fid else []) + ["loss"]
    header = ["n", *names] + [f"{m} {k}" for m in metrics for k in ("mean", "std", "min", "max")] + statuses
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for n, s in enumerate(summaries, 1):
        cells = [str(n), *(format_value(s.label.get(f)) for f in fields)]
        if has_fid:
            cells += _stat_cells(s.fid, "{:.2f}")
        cells += _stat_cells(s.loss, "{:.4f}")
        cells += [str(s.counts.get(status, 0)) for status in statuses]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _column_names(fields: Sequence[str]) -> list[str]:
    """Short names (lr, optimizer) unless two fields share one."""
    short = [f.split(".")[-1] for f in fields]
    return [s if short.count(s) == 1 else f for s, f in zip(short, fields)]


def _stat_cells(stats: Stats | None, fmt: str) -> list[str]:
    if stats is None:
        return ["–"] * 4
    return [fmt.format(stats.mean), "–" if stats.std is None else fmt.format(stats.std),
            fmt.format(stats.min), fmt.format(stats.max)]


def _problems(results: list[RunResult]) -> list[str]:
    lines = []
    for status in ("diverged", "failed"):
        bad = [r for r in results if r.status == status]
        if bad:
            lines += ["", f"**{status.capitalize()} runs** (not in the statistics):", ""]
            lines += [f"- `{r.name}` ({r.configuration}, seed {r.seed}): {r.error or 'no message'}" for r in bad]
    return lines


# --- plots --------------------------------------------------------------------------------


def write_plots(out: Path, plan: dict[str, Any], summaries: list[ConfigSummary],
                results: list[RunResult]) -> list[Path]:
    panels = _panels(plan, summaries)
    written = []
    if any(r.loss_curve for r in results):
        written.append(_curves_plot(out / "loss_curves.png", panels, lambda r: r.loss_curve, "training loss", log=True))
    if any(r.fid_curve for r in results):
        written.append(_curves_plot(out / "fid_curves.png", panels, lambda r: r.fid_curve, "FID", log=False))
    if any(s.fid for s in summaries):
        written.append(_final_plot(out / "final_fid.png", summaries, lambda r: r.final_fid, "final FID"))
    if any(s.loss for s in summaries):
        written.append(_final_plot(out / "final_loss.png", summaries, lambda r: r.final_loss, "final loss"))
    if plan.get("mode") == "one-at-a-time" and any(s.loss for s in summaries):
        written.append(_one_at_a_time_plot(out / "one_at_a_time.png", plan, summaries))
    return written


Panel = tuple[str, list[ConfigSummary], list[str]]  # title, configurations, fields their legend shows


def _panels(plan: dict[str, Any], summaries: list[ConfigSummary]) -> list[Panel]:
    """Which configurations share a panel: one panel per value of group_by (grid mode:
    default the first varied field); one-at-a-time without group_by: one per varied group.
    Panels follow the file's order of values; lines in a panel are best first."""
    fields = plan.get("fields", [])
    group_by = plan.get("group_by")
    if plan.get("mode") == "one-at-a-time" and not group_by:
        return [(f"varying {_leaves(group.split(' + '))}", [s for s in summaries if group in s.runs[0].panels],
                 group.split(" + ")) for group in plan.get("groups", [])]
    group_by = group_by or (fields[0] if len(fields) > 1 else None)
    if not group_by:
        return [("", summaries, fields)]
    values: dict[str, list[ConfigSummary]] = {}
    for run in plan.get("runs", []):
        values.setdefault(format_value(run["label"].get(group_by)), [])
    for s in summaries:
        values.setdefault(format_value(s.label.get(group_by)), []).append(s)
    shown = [f for f in fields if f != group_by]
    return [(f"{_leaves([group_by])} = {v}", members, shown) for v, members in values.items() if members]


def _leaves(fields: Sequence[str]) -> str:
    return " + ".join(f.split(".")[-1] for f in fields)


def _figure(n_panels: int, width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    figure = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, axes[:n_panels]


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _curves_plot(path: Path, panels: list[Panel], curve: Callable[[RunResult], list], ylabel: str,
                 log: bool) -> Path:
    """Mean over repeats per configuration, shaded between min and max."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(len(panels))
    for ax, (title, members, shown) in zip(axes, panels):
        for color, summary in zip(_colors(len(members)), members):
            steps, mean, low, high = _band([curve(r) for r in summary.runs if curve(r)])
            if not steps:
                continue
            name = _legend_name(summary, shown, len(panels))
            ax.plot(steps, mean, color=color, label=name, marker="o" if len(steps) < 15 else None, markersize=3)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(title or ylabel)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if log and _spans_decades(ax):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    figure.savefig(path)
    return path


def _spans_decades(ax) -> bool:
    """Log scale only when the curves cover more than a factor of 10 (early loss vs late)."""
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _legend_name(summary: ConfigSummary, shown: list[str], panels: int) -> str:
    name = describe_label({k: v for k, v in summary.label.items() if k in shown}) or summary.configuration
    # one-at-a-time: the base configuration appears in every panel
    return name + (" (base)" if panels > 1 and len(summary.runs[0].panels) == panels else "")


def _band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean / min / max over the curves at every step any of them logged."""
    by_step: dict[int, list[float]] = {}
    for points in curves:
        for step, value in points:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (steps, [statistics.fmean(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])


def _final_plot(path: Path, summaries: list[ConfigSummary], value: Callable[[RunResult], float | None],
                xlabel: str) -> Path:
    """A box per configuration (best at the top) with each finished repeat as a dot."""
    from matplotlib.figure import Figure

    shown = [s for s in summaries if any(value(r) is not None for r in s.runs if r.status == "finished")]
    figure = Figure(figsize=(8, 1.5 + 0.4 * len(shown)), dpi=100, layout="constrained")
    ax = figure.subplots()
    data = [[value(r) for r in s.runs if r.status == "finished" and value(r) is not None] for s in shown]
    positions = list(range(len(shown), 0, -1))
    ax.boxplot(data, positions=positions, vert=False, widths=0.6, showfliers=False)
    for y, values in zip(positions, data):
        ax.scatter(values, [y] * len(values), s=12, color="tab:blue", alpha=0.7, zorder=3)
    ax.set_yticks(positions)
    ax.set_yticklabels([_with_failures(s) for s in shown], fontsize="small")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    figure.savefig(path)
    return path


def _with_failures(summary: ConfigSummary) -> str:
    lost = summary.counts.get("diverged", 0) + summary.counts.get("failed", 0)
    return summary.configuration + (f"  ({lost} diverged/failed)" if lost else "")


def _one_at_a_time_plot(path: Path, plan: dict[str, Any], summaries: list[ConfigSummary]) -> Path:
    """One panel per varied group: the final metric against that group's values."""
    has_fid = any(s.fid for s in summaries)
    metric = (lambda r: r.final_fid) if has_fid else (lambda r: r.final_loss)
    groups = plan.get("groups", [])
    figure, axes = _figure(len(groups), width=5.0, height=3.5)
    for ax, group in zip(axes, groups):
        fields = group.split(" + ")
        members = [s for s in summaries if group in s.runs[0].panels]
        members.sort(key=lambda s: [_sortable(s.label.get(f)) for f in fields])
        data = [[metric(r) for r in s.runs if r.status == "finished" and metric(r) is not None] for s in members]
        ticks = [", ".join(format_value(s.label.get(f)) for f in fields) for s in members]
        ax.boxplot([d if d else [math.nan] for d in data], positions=range(len(members)), widths=0.6,
                   showfliers=False)
        ax.set_xticks(range(len(members)))
        ax.set_xticklabels(ticks, rotation=30 if len(members) > 4 else 0, fontsize="small")
        ax.set_title(_leaves(fields))
        ax.set_ylabel("final FID" if has_fid else "final loss")
        ax.grid(axis="y", alpha=0.3)
    figure.savefig(path)
    return path


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
