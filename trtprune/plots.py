"""Pictures people would rather look at than read: stair curves and channels per group (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from trtprune.fsutil import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def stairs_plot(path: str | Path, title: str, stairs, current: int) -> None:
    """Latency against channel count: measured points, the estimated curve, edges, dips, current width."""
    plt = _pyplot()
    curve = stairs.curve()
    fig, ax = plt.subplots(figsize=(7.0, 3.6), layout="constrained")
    xs = sorted(curve)
    ax.plot(xs, [curve[c] * 1000 for c in xs], color="#b0b0b0", lw=1, label="estimate")
    measured = sorted(stairs.latency)
    ax.plot(measured, [stairs.latency[c] * 1000 for c in measured], "o", ms=3, color="#555555", label="measured")
    for name, counts, style in (
        ("edges", stairs.edges, dict(marker="^", color="#1a8f3c", ms=7)),
        ("dips", stairs.dips, dict(marker="v", color="#c0392b", ms=6)),
    ):
        if counts:
            ax.plot(counts, [stairs.latency[c] * 1000 for c in counts], ls="none", label=name, **style)
    ax.axvline(current, color="#3b7dd8", ls="--", lw=1, label=f"current ({current})")
    ax.set_xlabel("channels")
    ax.set_ylabel("latency (us, layers of the group)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def channels_plot(path: str | Path, title: str, before: dict[str, int], after: dict[str, int]) -> None:
    """Bars of each group's channels before and after pruning."""
    plt = _pyplot()
    names = list(after)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 3.6), layout="constrained")
    xs = range(len(names))
    ax.bar(xs, [before[n] for n in names], color="#c8c8c8", label="baseline")
    ax.bar(xs, [after[n] for n in names], color="#3b7dd8", label="pruned")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def pareto_plot(
    path: str | Path,
    title: str,
    series: dict[str, list[tuple[float, float]]],
    baseline: tuple[float, float] | None = None,
    xlabel: str = "latency (ms, measured in one interleaved run)",
    ylabel: str = "top-1 (%)",
) -> None:
    """Top-1 (or another metric) against measured latency, one marker per method; the baseline as a star."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for i, (name, points) in enumerate(sorted(series.items())):
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^vD<>"[i % 7], lw=1, label=name)
    if baseline:
        ax.plot([baseline[0]], [baseline[1]], marker="*", ms=12, color="black", ls="none", label="unpruned")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
