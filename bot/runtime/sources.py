"""The checker's lease name and the metrics sources the policies name: what `check --once`
shares with the server's scheduler, without importing the scheduler (APScheduler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bot.metrics import MetricsSource
    from bot.policy import PolicySet

LEASE = "checker"


def build_sources(engine: Engine, policies: PolicySet) -> dict[str, MetricsSource]:
    """The metrics sources the policies name."""
    from bot.metrics.builtin import BuiltinSource

    sources: dict[str, MetricsSource] = {"builtin": BuiltinSource(engine)}
    if policies.prometheus is not None:
        from bot.metrics.prometheus import PrometheusSource

        sources["prometheus"] = PrometheusSource(policies.prometheus)
    return sources
