"""How a person is named in what the bot says: a Slack mention for someone who acted in Slack
(Slack shows it as @name, in every client and language), the recorded name otherwise."""

from __future__ import annotations

from bot.models import Trigger

VIA = {
    Trigger.API: "via the API",
    Trigger.CLI: "via the CLI",
    Trigger.DASHBOARD: "from the dashboard",
    Trigger.SLACK: "in Slack",
    Trigger.AUTOMATIC: "automatically",
}


def mention(operator: str, trigger: Trigger | str | None) -> str:
    """`<@U123>` for a Slack user, the operator's name for anyone else."""
    return f"<@{operator}>" if str(trigger) == Trigger.SLACK.value else operator


def by(operator: str, trigger: Trigger | str) -> str:
    """'by <@U1> in Slack', 'by alice via the CLI', or 'automatically'."""
    kind = Trigger(str(trigger))
    if kind == Trigger.AUTOMATIC:
        return VIA[kind]
    return f"by {mention(operator, kind)} {VIA[kind]}"


def plain(text: str) -> str:
    """`text` with Slack mentions shown as bare ids (for logs and terminals)."""
    return text.replace("<@", "").replace(">", "")
