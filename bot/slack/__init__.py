"""The Slack app: incident cards with buttons, /rollback, on-call DMs, a durable outbox."""
