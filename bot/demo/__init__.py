"""`rollback-bot demo`: the whole loop on one machine, with a local stand-in for Slack."""
