"""Outbound integrations beside Slack: PagerDuty and signed webhooks."""
