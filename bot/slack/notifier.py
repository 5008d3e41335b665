"""The Slack notifier: turns checker notices into cards, thread replies and on-call DMs."""

from __future__ import annotations

from sqlalchemy import event
from sqlmodel import Session

from bot.db import write_session
from bot.incidents.postmortem import postmortem
from bot.models import Action, AuditEntry, Incident, IncidentStatus, Rollout, utcnow
from bot.notify import Notice, NoticeKind
from bot.policy.schema import rollback_limits
from bot.slack import cards, outbox
from bot.slack.blocks import text_blocks, to_dicts
from bot.slack.deps import SlackDeps

VERIFICATION = (
    NoticeKind.SWITCH_CONFIRMED,
    NoticeKind.SWITCH_LAGGING,
    NoticeKind.VERIFICATION_CHECK,
    NoticeKind.VERIFICATION_RECOVERED,
    NoticeKind.VERIFICATION_FAILED,
    NoticeKind.VERIFICATION_NOT_JUDGED,
)
# Notices after which an incident may be closed: then its thread gets the post-mortem draft.
CLOSING = (
    NoticeKind.VERIFICATION_RECOVERED,
    NoticeKind.INCIDENT_RESOLVED,
    NoticeKind.OBSERVATION_ENDED,
)
ROLLOUT = (
    NoticeKind.ROLLOUT_STARTED,
    NoticeKind.ROLLOUT_STAGE,
    NoticeKind.ROLLOUT_PAUSED,
    NoticeKind.ROLLOUT_COMPLETED,
    NoticeKind.ROLLOUT_ABORTED,
    NoticeKind.ROLLOUT_SUPERSEDED,
)
THREAD_TEXT = {
    NoticeKind.ROLLED_BACK: "{text} Verification of the restored version reports in this thread.",
    NoticeKind.INCIDENT_ESCALATED: "Escalated: {text}",
    NoticeKind.OBSERVATION_ENDED: "{text}",
    NoticeKind.INCIDENT_RESOLVED: "Resolved: {text}",
    NoticeKind.ROLLBACK_FAILED: ":rotating_light: {text}",
    NoticeKind.ROLLOUT_FOR_INCIDENT: "{text}",
}


class SlackNotifier:
    """Queues every notice in the outbox (durable, once) and wakes its worker."""

    def __init__(self, deps: SlackDeps) -> None:
        self.deps = deps
        self.engine, self.worker = deps.engine, deps.worker

    def send(self, notice: Notice, session: Session | None = None) -> None:
        """Post or update the incident's card; thread the news; DM on-call for pages.

        With `session` the messages are queued in the caller's transaction, so they exist if
        and only if the change they report committed; the worker is woken after that commit.
        """
        if session is None:
            with write_session(self.engine) as own:
                self._queue(own, notice)
            self.worker.wake()
            return
        self._queue(session, notice)
        event.listen(session, "after_commit", self._wake_after_commit, once=True)

    def _wake_after_commit(self, _session: Session) -> None:
        self.worker.wake()

    def _queue(self, session: Session, notice: Notice) -> None:
        if notice.kind in VERIFICATION:
            self._verification(session, notice)
        elif notice.kind in ROLLOUT:
            self._rollout(session, notice)
        elif notice.incident_id is None:
            text = f"*{notice.title}*\n{notice.text}"
            outbox.enqueue(
                session,
                key=notice.key or f"notice:{notice.kind.value}:{utcnow().isoformat()}",
                method="chat.postMessage",
                payload={
                    "channel": self.deps.settings.slack_incidents_channel,
                    "text": text,
                    "blocks": to_dicts(text_blocks(text)),
                },
            )
        else:
            incident = session.get(Incident, notice.incident_id)
            if incident is None:
                return
            channel = self.deps.channel(incident.prompt)
            headline = _page_headline(notice)
            oncall = (
                self.deps.oncall.members(self.deps.group(incident.prompt))
                if headline is not None
                else frozenset()
            )
            # The card first (the DMs link to it), already naming who is being paged.
            cards.post_or_update_card(
                session, incident, channel, notice.kind.value, paging=sorted(oncall)
            )
            if notice.kind == NoticeKind.INCIDENT_OPENED and self.deps.settings.slack_charts:
                cards.chart_under(
                    session, incident, self._limits(incident.prompt), "opened", "when detected"
                )
            template = THREAD_TEXT.get(notice.kind)
            if template is not None:
                cards.thread_reply(
                    session, incident, template.format(text=notice.text), notice.kind.value
                )
            if headline is not None:
                cards.page(
                    session,
                    incident,
                    oncall,
                    severity=notice.severity.value,
                    headline=headline,
                    channel=channel,
                    reason=notice.kind.value,
                )
        if notice.incident_id is not None and notice.kind in CLOSING:
            self._postmortem_once_closed(session, notice.incident_id)

    def _postmortem_once_closed(self, session: Session, incident_id: int) -> None:
        """When the incident is resolved, its thread gets the post-mortem draft (once)."""
        incident = session.get(Incident, incident_id)
        if incident is not None and incident.status == IncidentStatus.RESOLVED:
            draft = postmortem(session=session, incident_id=incident_id, style="slack")
            if len(draft) > 3000:  # a section's limit: say where the whole draft is
                more = f"\n… (whole draft: `rollback-bot incidents show {incident_id} --markdown`)"
                draft = draft[: 3000 - len(more)] + more
            cards.reply_under(session, cards.card_key(incident_id), draft, "postmortem")

    def _limits(self, prompt: str) -> dict[str, float]:
        """The policy's automatic-rollback limits per metric, drawn on charts."""
        return rollback_limits(self.deps.policies.for_prompt(prompt))

    def _rollout(self, session: Session, notice: Notice) -> None:
        """Update the rollout's announcement and thread the stage; page when it pauses."""
        rollout = session.get(Rollout, notice.details["rollout_id"])
        if rollout is None:
            return
        reason = f"{notice.kind.value}:{rollout.stage}:{rollout.status.value}"
        key = cards.post_or_update_rollout(
            session, rollout, self.deps.channel(rollout.prompt), reason
        )
        cards.reply_under(session, key, notice.text, reason)
        if notice.action == Action.PAGE:
            summary = f"*{notice.severity.value.upper()}* {notice.title}: {notice.text}"
            for user in sorted(self.deps.oncall.members(self.deps.group(rollout.prompt))):
                outbox.enqueue(
                    session,
                    key=f"{key}:dm:{user}:{reason}",
                    method="dm",
                    payload={"user": user, "text": summary},
                )

    def _verification(self, session: Session, notice: Notice) -> None:
        """Thread each check under the incident card, or under the rollback's announcement."""
        audit_id = notice.details["audit_id"]
        incident = session.get(Incident, notice.incident_id) if notice.incident_id else None
        prompt = notice.prompt or ""
        if incident is not None:
            parent = cards.card_key(incident.id or 0)
        else:
            entry = session.get(AuditEntry, audit_id)
            if entry is None:
                return
            parent = cards.announce_change(session, self.deps.channel(prompt), entry, prompt)
        reason = f"verify:{audit_id}:{notice.kind.value}:{notice.details.get('check')}"
        cards.reply_under(session, parent, notice.text, reason)
        ended = (*CLOSING, NoticeKind.VERIFICATION_FAILED, NoticeKind.VERIFICATION_NOT_JUDGED)
        if incident is not None and notice.kind in ended:
            cards.post_or_update_card(session, incident, self.deps.channel(prompt), reason)
        if incident is not None and notice.kind in ended and self.deps.settings.slack_charts:
            outcome = notice.kind.value.removeprefix("verification_").replace("_", " ")
            cards.chart_under(
                session,
                incident,
                self._limits(prompt),
                f"verified:{audit_id}",
                f"after the rollback ({outcome})",
            )
        if notice.action == Action.PAGE:  # not recovered, apps lagging
            summary = f"*{notice.severity.value.upper()}* {notice.title}: {notice.text}"
            oncall = self.deps.oncall.members(self.deps.group(prompt))
            if incident is not None:
                cards.page(
                    session,
                    incident,
                    oncall,
                    severity=notice.severity.value,
                    headline=notice.text,
                    channel=self.deps.channel(prompt),
                    reason=reason,
                )
            else:
                for user in sorted(oncall):
                    outbox.enqueue(
                        session,
                        key=f"{parent}:dm:{user}:{reason}",
                        method="dm",
                        payload={"user": user, "text": summary},
                    )


def _page_headline(notice: Notice) -> str | None:
    """What the on-call DM about an incident notice says first, in plain words; None when the
    notice pages nobody. A critical automatic rollback is told too: someone must know."""
    if notice.kind == NoticeKind.ROLLBACK_FAILED:
        return f"The automatic rollback FAILED: roll back by hand now. {notice.text}"
    if notice.kind == NoticeKind.ROLLED_BACK and notice.action == Action.ROLLBACK:
        return (
            f"{notice.text} Verifying the restored version now; you are paged again only if "
            "it does not recover."
        )
    if notice.action != Action.PAGE:
        return None
    if notice.headline is not None:
        return notice.headline
    if notice.kind == NoticeKind.INCIDENT_ESCALATED:
        return "It got worse: roll back, or acknowledge if you are on it."
    return "Needs a person now: roll back, or acknowledge if you are on it."
