"""Charts of a prompt's versions over time: one figure function, drawn as SVG for the page
and as PNG for Slack (matplotlib, imported only when a chart is drawn).

matplotlib because it is the Python ecosystem's long-kept plotting library, renders on the
server with no browser and no network (nothing is fetched at run time), and gives SVG and PNG
from the same figure, so the page and Slack show the same chart.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from bot.dashboard.data import ChartData
from bot.models import AuditEntry, ChangeKind

PANELS = (
    ("error_rate", "Error rate (%)", "error_rate_pct"),
    ("quality", "Quality (0 to 1)", "quality"),
    ("p99_ms", "Latency p99 (ms)", "latency_p99_ms"),
    ("share", "Share of requests (%)", None),
)
# Distinguishable for colour-blind readers (Okabe-Ito), and every line also has its own marker
# and a legend entry, so colour is never the only signal.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MARKERS = ("o", "s", "^", "D", "v", "P")
INCIDENT = "#B00020"


def figure(title: str, chart: ChartData, thresholds: dict[str, float]) -> Any:
    """The figure: a panel per metric and one for each version's share of the requests, a
    line per version, the policy's limits dashed, a dotted marker at each deploy, rollback and
    split (rollout stages included), and each incident shaded from detection to its close."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 8), dpi=100, layout="constrained")
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    fig.suptitle(title)
    end = _end(chart)
    for ax, (attr, label, metric) in zip(axes, PANELS, strict=True):
        for i, line in enumerate(chart.lines):
            points = [(t, v) for t, v in zip(line.times, getattr(line, attr), strict=True)]
            shown = [(_naive(t), v) for t, v in points if v is not None]
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
        if metric is not None and metric in thresholds:
            ax.axhline(
                thresholds[metric],
                color=INCIDENT,
                linestyle="--",
                linewidth=1,
                label=f"limit {thresholds[metric]:g}",
            )
        for change in chart.changes:
            ax.axvline(
                _naive(change.created_at),
                color="#555555",
                linestyle=":",
                linewidth=1,
                gid=f"change-{change.id}",
            )
        for span in chart.incidents:
            if end is not None:
                ax.axvspan(
                    _naive(span.opened_at),
                    _naive(span.closed_at or end),
                    color=INCIDENT,
                    alpha=0.10,
                    linewidth=0,
                    gid=f"incident-{span.id}",
                )
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
    top = axes[0]
    for change in chart.changes:
        _note(top, change.created_at, describe(change), "#333333")
    for span in chart.incidents:
        _note(top, span.opened_at, f"incident #{span.id} ({span.severity})", INCIDENT, low=True)
    if top.get_legend_handles_labels()[0]:
        top.legend(loc="upper left", fontsize=8)
    return fig


def describe(change: AuditEntry) -> str:
    """A marker's label: 'deploy v2.0.0', 'rollback → v1.9.0', 'split v2.0.0 25%'."""
    if change.kind == ChangeKind.SPLIT and change.split:
        return "split " + ", ".join(f"{v} {p}%" for v, p in change.split.items())
    if change.kind == ChangeKind.ROLLBACK:
        return f"rollback → {change.to_version or ''}"
    return f"{change.kind.value} {change.to_version or ''}"


def _note(ax: Any, at: datetime, text: str, colour: str, *, low: bool = False) -> None:
    """A label along a marker: changes hang from the top, incidents stand at the bottom
    (right of their line), so a rollback and the incident it ended never overprint."""
    ax.annotate(
        text,
        xy=(_naive(at), 0 if low else 1),
        xycoords=("data", "axes fraction"),
        rotation=90,
        fontsize=7,
        va="bottom" if low else "top",
        ha="left" if low else "right",
        color=colour,
    )


def _end(chart: ChartData) -> datetime | None:
    """Where an incident still open is shaded to: the newest point or change."""
    moments = [t for line in chart.lines for t in line.times[-1:]]
    moments += [c.created_at for c in chart.changes[-1:]]
    moments += [s.opened_at for s in chart.incidents]
    return max((_naive(t) for t in moments), default=None)


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
