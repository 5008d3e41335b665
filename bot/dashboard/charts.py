"""Charts of a prompt's versions over time: one figure function, drawn as SVG for the page
and as PNG for Slack (matplotlib, imported only when a chart is drawn).

matplotlib because it is the Python ecosystem's long-kept plotting library, renders on the
server with no browser and no network (nothing is fetched at run time), and gives SVG and PNG
from the same figure, so the page and Slack show the same chart.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bot.dashboard.data import Series
from bot.models import AuditEntry

PANELS = (
    ("error_rate", "Error rate (%)", "error_rate_pct"),
    ("quality", "Quality (0 to 1)", "quality"),
    ("p99_ms", "Latency p99 (ms)", "latency_p99_ms"),
)
# Distinguishable for colour-blind readers (Okabe-Ito), and every line also has its own marker
# and a legend entry, so colour is never the only signal.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MARKERS = ("o", "s", "^", "D", "v", "P")


def figure(
    title: str,
    lines: Sequence[Series],
    thresholds: dict[str, float],
    changes: Sequence[AuditEntry],
) -> Any:
    """The figure: a panel per metric, a line per version, the policy's limits dashed, and a
    vertical marker at each deploy, rollback and split."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5), dpi=100, layout="constrained")
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    fig.suptitle(title)
    for ax, (attr, label, metric) in zip(axes, PANELS, strict=True):
        for i, line in enumerate(lines):
            points = [(t, v) for t, v in zip(line.times, getattr(line, attr), strict=True)]
            shown = [(t, v) for t, v in points if v is not None]
            if not shown:
                continue
            ax.plot(
                [t for t, _ in shown],
                [v for _, v in shown],
                label=line.version,
                color=COLOURS[i % len(COLOURS)],
                marker=MARKERS[i % len(MARKERS)],
                markersize=3,
                linewidth=1.5,
                gid=f"{attr}-{line.version}",
            )
        if metric in thresholds:
            ax.axhline(
                thresholds[metric],
                color="#B00020",
                linestyle="--",
                linewidth=1,
                label=f"limit {thresholds[metric]:g}",
            )
        for change in changes:
            ax.axvline(_naive(change.created_at), color="#555555", linestyle=":", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    for change in changes:
        axes[0].annotate(
            f"{change.kind.value} {change.to_version or ''}",
            xy=(_naive(change.created_at), 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="right",
        )
    axes[0].legend(loc="upper left", fontsize=8)
    return fig


def _naive(at: datetime) -> datetime:
    return at.replace(tzinfo=None) if at.tzinfo else at


def svg(fig: Any) -> str:
    """The figure as an inline SVG element."""
    out = io.StringIO()
    fig.savefig(out, format="svg")
    text = out.getvalue()
    return text[text.index("<svg") :]


def png(fig: Any) -> bytes:
    """The figure as PNG (for Slack)."""
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
