"""Parse `/rollback` text into a command; pure, so every shape is testable without Slack."""

from __future__ import annotations

from dataclasses import dataclass

from bot.errors import InvalidRequest

REASON_MAX = 1000  # the audit log's reason column


@dataclass(frozen=True)
class SlashCommand:
    """What the user asked for."""

    verb: str  # rollback, status, history, help
    prompt: str | None = None
    version: str | None = None
    force: bool = False
    gradual: bool = False
    canary: bool = False
    reason: str = ""


def parse(text: str) -> SlashCommand:
    """`[status|history|help] PROMPT [VERSION] [--force] [reason...]`; raises InvalidRequest."""
    words = text.split()
    if not words or words[0].lower() in {"help", "-h", "--help"}:
        return SlashCommand("help")
    verb = words[0].lower()
    if verb in {"status", "history"}:
        if len(words) != 2:
            raise InvalidRequest(f"usage: /rollback {verb} PROMPT")
        return SlashCommand(verb, prompt=words[1])
    flags = {w for w in words if w in ("--force", "--gradual", "--canary")}
    words = [w for w in words if w not in flags]
    unknown = [w for w in words if w.startswith("--") and w != "--reason"]
    if unknown:
        raise InvalidRequest(f"unknown option {unknown[0]}; see /rollback help")
    prompt, rest = words[0], words[1:]
    version = None
    if rest and rest[0] != "--reason":
        version, rest = rest[0], rest[1:]
    if rest and rest[0] == "--reason":
        rest = rest[1:]
    reason = " ".join(rest)
    if len(reason) > REASON_MAX:
        raise InvalidRequest(
            f"the reason is {len(reason)} characters; at most {REASON_MAX} are kept in the "
            "audit log. Shorten it (link a doc for the details) and send the command again"
        )
    return SlashCommand(
        "rollback",
        prompt=prompt,
        version=version,
        force="--force" in flags,
        gradual="--gradual" in flags,
        canary="--canary" in flags,
        reason=reason,
    )


def parse_deploy(text: str) -> SlashCommand:
    """`/deploy PROMPT VERSION [--canary] [reason...]`."""
    command = parse(text)
    if command.verb != "rollback" or command.version is None:
        raise InvalidRequest("usage: /deploy PROMPT VERSION [--canary] [reason]")
    return SlashCommand(
        "deploy",
        prompt=command.prompt,
        version=command.version,
        force=command.force,
        canary=command.canary,
        reason=command.reason,
    )
