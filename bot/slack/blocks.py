"""Pure Block Kit builders; slack_sdk's classes check Slack's limits when serialised."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.models import AuditPublic, PromptDetail
from bot.people import mention

ROLLBACK_ACTION = "incident_rollback"
ACKNOWLEDGE_ACTION = "incident_acknowledge"
INVESTIGATE_ACTION = "incident_investigate"  # cards posted before Acknowledge: same handler
GRADUAL_ACTION = "incident_gradual_rollback"
FINISH_ROLLOUT_ACTION = "rollout_finish"
ABORT_ROLLOUT_ACTION = "rollout_abort"
SEVERITY_ICON = {
    "critical": ":red_circle:",
    "high": ":large_orange_circle:",
    "medium": ":large_yellow_circle:",
    "none": ":white_circle:",
}


@dataclass(frozen=True)
class IncidentCard:
    """Everything an incident card shows."""

    incident_id: int
    prompt: str
    version: str
    severity: str
    status: str
    fired: Sequence[dict[str, Any]]
    figures: dict[str, Any]
    target: str | None = None
    state: str | None = None  # "Rolled back v2.0.0 → v1.9.0 by <@U1>" once acted on
    investigator: str | None = None
    responders: Sequence[str] = ()  # everyone who acknowledged, first first
    paged: Sequence[str] = ()  # on-call people sent a DM about it
    runbook: str | None = None
    buttons: bool = True
    extra: list[str] = field(default_factory=list)


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}%"


def _num(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def figures_lines(figures: dict[str, Any]) -> list[str]:
    """The verdict's figures as short lines (error rate with n and interval, baselines)."""
    baseline = figures.get("baseline") or {}
    low, high = figures.get("error_rate_ci_pct") or (None, None)
    lines = [
        f"*Error rate* {_pct(figures.get('error_rate_pct'))} of {figures.get('requests', 0):,} "
        f"requests (95% bounds {_pct(low, 2)} to {_pct(high, 2)})",
    ]
    if figures.get("quality") is not None or baseline.get("quality") is not None:
        q, bq = figures.get("quality"), baseline.get("quality")
        drop = _pct(figures.get("quality_drop_pct"))
        lines.append(f"*Quality* {_score(q)} vs baseline {_score(bq)} (drop {drop})")
    lines.append(
        f"*Latency p99* {_num(figures.get('latency_p99_ms'), ' ms')} vs baseline "
        f"{_num(baseline.get('latency_p99_ms'), ' ms')} "
        f"(change {_pct(figures.get('latency_increase_pct'))})"
    )
    if baseline.get("source"):
        lines.append(f"_Baseline: {baseline['source']}_")
    return lines


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=text[:3000]))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def card_text(card: IncidentCard) -> str:
    """The notification and accessibility fallback of a card."""
    head = f"[{card.severity.upper()}] {card.prompt} {card.version}"
    rules = "; ".join(str(f.get("rule")) for f in card.fired) or "no rule"
    return f"{head}: {card.state or rules}"[:3000]


def incident_card(card: IncidentCard) -> list[Block]:
    """The #incidents card: severity, rules with figures, age, runbook, and the buttons."""
    icon = SEVERITY_ICON.get(card.severity, "")
    blocks: list[Block] = [
        HeaderBlock(
            text=PlainTextObject(
                text=f"{card.severity.upper()}: {card.prompt} {card.version}"[:150]
            )
        ),
        SectionBlock(
            fields=[
                MarkdownTextObject(text=f"*Severity*\n{icon} {card.severity}"),
                MarkdownTextObject(text=f"*Prompt*\n`{card.prompt}`"),
                MarkdownTextObject(text=f"*Version*\n`{card.version}`"),
                MarkdownTextObject(text=f"*Version age*\n{_age(card.figures.get('age_s'))}"),
            ]
        ),
    ]
    rules = "\n".join(f"• {in_words(f)} (`{f.get('rule')}`)" for f in card.fired)
    rules = rules or "• no rule fired"
    blocks.append(SectionBlock(text=MarkdownTextObject(text=f"*Rules fired*\n{rules}"[:3000])))
    blocks.append(
        SectionBlock(text=MarkdownTextObject(text="\n".join(figures_lines(card.figures))[:3000]))
    )
    context = [f"Incident #{card.incident_id}", f"status: {card.status}"]
    runbook = card.runbook or next((f.get("runbook") for f in card.fired if f.get("runbook")), None)
    if runbook:
        context.append(f"<{runbook}|Runbook>")
    if card.paged:
        context.append("paged: " + ", ".join(f"<@{u}>" for u in card.paged))
    responders = list(card.responders) or ([card.investigator] if card.investigator else [])
    if responders:
        context.append("acknowledged: " + ", ".join(f"<@{u}>" for u in responders))
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=" · ".join(context))]))
    blocks.extend(_section(line) for line in card.extra)
    if card.state:
        blocks.append(_section(f":white_check_mark: {card.state}"))
    elif card.buttons:
        blocks.append(_buttons(card))
    return blocks


def _buttons(card: IncidentCard) -> ActionsBlock:
    value = json.dumps({"incident": card.incident_id, "target": card.target})
    target = card.target or "the previous known-good version"
    return ActionsBlock(
        block_id=f"incident-{card.incident_id}",
        elements=[
            # Opens the rollback dialog (target and reason); nothing changes until it is sent.
            ButtonElement(
                text=f"Rollback to {target}"[:75] if card.target else "Rollback",
                action_id=ROLLBACK_ACTION,
                value=value,
                style="danger",
            ),
            ButtonElement(text="Acknowledge", action_id=ACKNOWLEDGE_ACTION, value=value),
            # Minor regressions (medium) may rather go back in stages.
            *(
                [ButtonElement(text="Gradual rollback", action_id=GRADUAL_ACTION, value=value)]
                if card.severity == "medium"
                else []
            ),
        ],
    )


PERMALINK = "@@card-permalink@@"  # the outbox puts the card's permalink here when it sends


def in_words(fired: dict[str, Any]) -> str:
    """A rule that fired, in plain words: 'error rate 5.8% is above 5%'."""
    metric, value, limit = fired.get("metric"), float(fired.get("value", 0)), fired.get("threshold")
    words = {
        "error_rate_pct": f"error rate {value:.1f}% is above {limit:g}%",
        "quality_drop_pct": f"quality is {value:.1f}% below its baseline (limit {limit:g}%)",
        "latency_increase_pct": f"p99 latency is {value:.0f}% above its baseline "
        f"(limit {limit:g}%)",
        "latency_p99_ms": f"p99 latency {value:,.0f} ms is above {float(limit or 0):,.0f} ms",
        "quality": f"quality score {value:.3f} is below {limit}",
        "alert": f"Alertmanager alert {fired.get('rule')} is firing",
    }.get(str(metric), f"{metric} {value:g} is above {limit}")
    note = str(fired.get("note") or "")
    if note.startswith("not yet significant"):
        words += " but not yet significant, so it was not rolled back automatically"
    elif note:
        words += f" ({note})"
    return words


def page_blocks(card: IncidentCard, severity: str, headline: str, channel: str) -> list[Block]:
    """The on-call DM: how bad, in plain words, a link to the card, and the card's buttons."""
    icon = SEVERITY_ICON.get(severity, "")
    rules = "\n".join(f"• {in_words(f)}" for f in card.fired)
    blocks: list[Block] = [
        HeaderBlock(
            text=PlainTextObject(text=f"{severity.upper()}: {card.prompt} {card.version}"[:150])
        ),
        _section(f"{icon} {headline}" + (f"\n{rules}" if rules else "")),
        ContextBlock(
            elements=[
                MarkdownTextObject(
                    text=f"<{PERMALINK}|Incident #{card.incident_id} card in {channel}>"
                )
            ]
        ),
    ]
    if card.buttons and not card.state:
        blocks.append(_buttons(card))
    return blocks


ROLLBACK_MODAL = "incident_rollback_modal"
TARGET_BLOCK, TARGET_INPUT = "target", "target_version"
REASON_BLOCK, REASON_INPUT = "reason", "reason_text"


def rollback_modal(
    *, incident_id: int, prompt: str, version: str, choices: Sequence[str], default: str | None
) -> View:
    """The dialog a Rollback click opens: the target (the previous known-good version chosen
    already, any other known-good one selectable) and an optional reason."""
    options = [Option(text=label[:75], value=label) for label in choices[:100]]
    initial = next((o for o in options if o.value == default), options[0] if options else None)
    return View(
        type="modal",
        callback_id=ROLLBACK_MODAL,
        private_metadata=json.dumps({"incident": incident_id}),
        title=PlainTextObject(text="Roll back"),
        submit=PlainTextObject(text="Roll back"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            _section(f"Switch *{prompt}* away from `{version}` now. All traffic moves at once."),
            InputBlock(
                block_id=TARGET_BLOCK,
                label=PlainTextObject(text="Roll back to"),
                element=StaticSelectElement(
                    action_id=TARGET_INPUT,
                    options=options,
                    initial_option=initial,
                    placeholder=PlainTextObject(text="A known-good version"),
                ),
            ),
            InputBlock(
                block_id=REASON_BLOCK,
                label=PlainTextObject(text="Reason (kept in the audit log)"),
                optional=True,
                element=PlainTextInputElement(
                    action_id=REASON_INPUT, multiline=True, max_length=1000
                ),
            ),
        ],
    )


@dataclass(frozen=True)
class RolloutCard:
    """A staged rollout as its announcement shows it."""

    rollout_id: int
    title: str  # "Gradual rollback of customer-support v2.0.0 → v1.9.0"
    progress: str  # "stage 2/4 (50% on v1.9.0)"
    status: str
    note: str | None = None
    finish_text: str = "Move all traffic to the target now?"  # the confirm dialogs say
    abort_text: str = "Stop the rollout?"  # what each button will do to the traffic


def rollout_card(card: RolloutCard) -> list[Block]:
    """The announcement of a gradual rollback or canary, with Finish now / Abort while active."""
    blocks: list[Block] = [
        _section(
            f"*{card.title}*\n{card.progress} · status: {card.status}"
            + (f"\n_{card.note}_" if card.note else "")
        ),
    ]
    if card.status in ("running", "paused"):
        value = json.dumps({"rollout": card.rollout_id})
        blocks.append(
            ActionsBlock(
                block_id=f"rollout-{card.rollout_id}",
                elements=[
                    ButtonElement(
                        text="Finish now",
                        action_id=FINISH_ROLLOUT_ACTION,
                        value=value,
                        style="primary",
                        confirm=ConfirmObject(
                            title="Finish now?",
                            text=card.finish_text[:300],
                            confirm="Finish now",
                            deny="Cancel",
                        ),
                    ),
                    ButtonElement(
                        text="Abort",
                        action_id=ABORT_ROLLOUT_ACTION,
                        value=value,
                        style="danger",
                        confirm=ConfirmObject(
                            title="Abort?",
                            text=card.abort_text[:300],
                            confirm="Abort",
                            deny="Cancel",
                        ),
                    ),
                ],
            )
        )
    return blocks


def text_blocks(text: str) -> list[Block]:
    """One markdown section (thread replies, DMs, ephemeral answers)."""
    return [SectionBlock(text=MarkdownTextObject(text=text[:3000]))]


HELP = (
    "*/rollback* — put a prompt back on a known-good version\n"
    "• `/rollback PROMPT` — to the previous known-good version\n"
    "• `/rollback PROMPT VERSION` — to that version (`--force` if it is marked bad)\n"
    "• `/rollback PROMPT [VERSION] reason words…` — the rest of the line is the reason\n"
    "• `/rollback PROMPT [VERSION] --gradual` — in stages: 75% → 50% → 25% → 0% on the bad one\n"
    "• `/deploy PROMPT VERSION [reason…]` — put that version live now (`--force` if marked bad)\n"
    "• `/deploy PROMPT VERSION --canary` — roll a new version out 1% → 5% → 25% → 100%\n"
    "• `/rollback status PROMPT` — active version, split, health, open incident\n"
    "• `/rollback history PROMPT` — the last changes\n"
    "• `/rollback help` — this help\n"
    "Rollbacks and deploys are announced in the incidents channel; a reason is at most "
    "1,000 characters."
)


def status_blocks(detail: PromptDetail, incident: str | None) -> list[Block]:
    """`/rollback status`: routing, versions with health, the open incident."""
    split = ", ".join(f"{k} {v}%" for k, v in (detail.split or {}).items()) or "none"
    versions = "\n".join(
        f"• `{v.version}` {v.health.value}" + (f" — {v.health_reason}" if v.health_reason else "")
        for v in detail.versions[:10]
    )
    return [
        SectionBlock(
            text=MarkdownTextObject(
                text=f"*{detail.name}*: active `{detail.active_version or '-'}` · split {split} · "
                f"revision {detail.revision}"
            )
        ),
        SectionBlock(text=MarkdownTextObject(text=f"*Versions*\n{versions}"[:3000])),
        ContextBlock(elements=[MarkdownTextObject(text=incident or "No open incident")]),
    ]


def history_blocks(name: str, entries: Sequence[AuditPublic]) -> list[Block]:
    """`/rollback history`: the last changes, newest first."""
    lines = [
        f"• {e.timestamp:%Y-%m-%d %H:%M}Z {e.kind.value} `{e.from_version or '-'}` → "
        f"`{e.to_version or '-'}` by {mention(e.operator, e.trigger)} ({e.trigger.value})"
        + (f": {e.reason}" if e.reason else "")
        for e in entries
    ]
    body = "\n".join(lines) or "No changes yet."
    return [SectionBlock(text=MarkdownTextObject(text=f"*{name}* — last changes\n{body}"[:3000]))]


def to_dicts(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    """Serialise (and so validate) blocks for the Web API or the outbox."""
    return [block.to_dict() for block in blocks]
