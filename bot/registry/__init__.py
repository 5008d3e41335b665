"""The prompt registry: versions, routing, atomic deploys and rollbacks, and the audit log.

Every function takes the session it works in; write functions expect a session from
`bot.db.write_session`, so their reads and writes share one transaction.
"""

from bot.registry.changes import create_version, deploy, mark_health, rollback, set_split
from bot.registry.queries import (
    history,
    list_prompts,
    prompt_detail,
    revisions,
    routing_fingerprint,
    routing_states,
)
from bot.registry.resolve import bucket_for, resolve

__all__ = [
    "bucket_for",
    "create_version",
    "deploy",
    "history",
    "list_prompts",
    "mark_health",
    "prompt_detail",
    "resolve",
    "revisions",
    "rollback",
    "routing_fingerprint",
    "routing_states",
    "set_split",
]
