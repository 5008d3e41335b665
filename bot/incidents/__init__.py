"""Incidents: their records, what people do with them, the lifecycle after any routing
change, and post-mortem drafts."""
