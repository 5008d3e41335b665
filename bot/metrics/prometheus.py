"""Figures from Prometheus: the policy's PromQL, one instant query per figure and version."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from string import Template
from typing import Any

import httpx

from bot.errors import ConfigError
from bot.metrics.base import MetricsUnavailable, Target, VersionMetrics, WindowStats
from bot.policy.schema import PrometheusConfig

log = logging.getLogger(__name__)

PLACEHOLDERS = frozenset({"prompt", "version", "window"})
# Counts are summed over series and no series means no traffic; the other figures must come
# back as one series, since picking one of several latencies or scores would be a guess.
COUNTS = frozenset({"requests", "errors", "quality_count"})
DETAIL_MAX = 200


class _QueryFailed(Exception):
    """One query could not be answered; the message says why, in one line."""


class PrometheusSource:
    """Reads each version's current and baseline figures from Prometheus."""

    name = "prometheus"

    def __init__(
        self,
        config: PrometheusConfig,
        *,
        client: httpx.Client | None = None,
        max_workers: int = 8,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._queries = query_templates(config)
        url = httpx.URL(str(config.url))
        self._endpoint = httpx.URL(str(url).rstrip("/") + "/api/v1/query")
        # Messages reach chat: never show credentials written into the URL.
        self._shown_url = str(url.copy_with(username=None, password=None)).rstrip("/")
        self._headers = dict(config.headers)
        self._timeout_s = config.timeout.total_seconds()
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client()
        self._max_workers = max_workers

    def collect(
        self, targets: Sequence[Target], now: datetime
    ) -> Mapping[int, VersionMetrics | MetricsUnavailable]:
        """Figures per target `version_id`; a target whose queries fail gets MetricsUnavailable."""
        if not targets:
            return {}
        workers = min(self._max_workers, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prometheus") as pool:
            results = list(pool.map(lambda target: self._collect_one(target, now), targets))
        return {target.version_id: result for target, result in zip(targets, results, strict=True)}

    def close(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._owns_client:
            self._client.close()

    def _collect_one(self, target: Target, now: datetime) -> VersionMetrics | MetricsUnavailable:
        try:
            return self._version_metrics(target, now)
        except MetricsUnavailable as exc:
            return exc
        except Exception as exc:
            # The interface promises never to raise: a bug met by one target must neither hide
            # the other targets' figures nor read as a reason to roll back.
            log.exception("prometheus: unexpected failure for %s %s", target.prompt, target.version)
            return MetricsUnavailable(
                f"{target.prompt} {target.version}: unexpected {type(exc).__name__}: "
                f"{_one_line(str(exc))}"
            )

    def _version_metrics(self, target: Target, now: datetime) -> VersionMetrics:
        window = target.current_window(now)  # from `since` on, for a verification
        current = self._stats(target, version=target.version, window=window, at=now)
        live = None
        if target.baseline_version is not None:
            if target.baseline_until is None:
                window, at = target.window, now
            else:
                window, at = target.baseline_window, target.baseline_until
            live = self._stats(target, version=target.baseline_version, window=window, at=at)
        return VersionMetrics(current=current, baseline=target.pick_baseline(live))

    def _stats(
        self, target: Target, *, version: str, window: timedelta, at: datetime
    ) -> WindowStats:
        values: dict[str, float | None] = {}
        for figure, template in self._queries.items():
            promql = template.substitute(
                prompt=_quote(target.prompt), version=_quote(version), window=_seconds(window)
            )
            try:
                values[figure] = _reduce(figure, self._query(figure, promql, at))
            except _QueryFailed as exc:
                whose = f"{target.prompt} {target.version}"
                if version != target.version:
                    whose += f": baseline {version}"
                raise MetricsUnavailable(f"{whose}: {exc}") from None
        return WindowStats(
            requests=round(values["requests"] or 0),
            errors=round(values["errors"] or 0),
            latency_p50_ms=values.get("latency_p50_ms"),
            latency_p99_ms=values.get("latency_p99_ms"),
            quality=values.get("quality"),
            quality_count=round(values.get("quality_count") or 0),
        )

    def _query(self, figure: str, promql: str, at: datetime) -> list[float]:
        where = f"prometheus at {self._shown_url}"
        params = {"query": promql, "time": f"{_unix(at):.3f}"}
        try:
            response = self._client.get(
                self._endpoint, params=params, headers=self._headers, timeout=self._timeout_s
            )
        except httpx.TimeoutException:
            raise _QueryFailed(f"{where} timed out after {self._timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            cause = _one_line(str(exc)) or type(exc).__name__
            failed = "unreachable" if isinstance(exc, httpx.ConnectError) else "request failed"
            raise _QueryFailed(f"{where} {failed}: {cause}") from None
        try:
            payload: Any = response.json()
        except ValueError:
            payload = None
        if not response.is_success:
            detail = _error_detail(payload) or response.reason_phrase
            raise _QueryFailed(
                f"query {figure}: {where} returned HTTP {response.status_code}: {detail}"
            )
        if payload is None:
            raise _QueryFailed(f"query {figure}: {where} answered with invalid JSON")
        return _samples(figure, payload, where)


def query_templates(config: PrometheusConfig) -> dict[str, Template]:
    """The configured queries as templates; ConfigError names one with a bad placeholder."""
    templates: dict[str, Template] = {}
    for figure, text in config.queries.model_dump().items():
        if text is None:
            continue
        template = Template(text)
        unknown = sorted(set(template.get_identifiers()) - PLACEHOLDERS)
        if unknown or not template.is_valid():
            found = f"unknown placeholder ${unknown[0]}" if unknown else "a stray $"
            raise ConfigError(
                f"prometheus.queries.{figure}: {found}; use $prompt, $version or $window "
                "($$ for a literal $)"
            )
        templates[figure] = template
    return templates


def _samples(figure: str, payload: Any, where: str) -> list[float]:
    """The sample values of an instant query's answer."""
    if not isinstance(payload, dict):
        raise _QueryFailed(f"query {figure}: {where} answered with unexpected JSON")
    if payload.get("status") != "success":
        detail = _error_detail(payload) or f"status {payload.get('status')!r}"
        raise _QueryFailed(f"query {figure}: {where} answered with an error: {detail}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise _QueryFailed(f"query {figure}: {where} answered without data")
    kind = data.get("resultType")
    try:
        if kind == "vector":
            return [float(item["value"][1]) for item in data["result"]]
        if kind == "scalar":
            return [float(data["result"][1])]
    except (TypeError, KeyError, IndexError, ValueError):
        raise _QueryFailed(f"query {figure}: {where} answered with a malformed result") from None
    raise _QueryFailed(f"query {figure} returned a {kind}; it must return an instant vector")


def _reduce(figure: str, samples: list[float]) -> float | None:
    """One figure from a query's samples (see COUNTS)."""
    if figure in COUNTS:
        if any(not math.isfinite(value) for value in samples):
            raise _QueryFailed(f"query {figure} returned a value that is not a finite number")
        return sum(samples)
    if len(samples) > 1:
        raise _QueryFailed(
            f"query {figure} returned {len(samples)} series; aggregate it to one "
            "(for example sum by (le) before histogram_quantile)"
        )
    if not samples or not math.isfinite(samples[0]):
        return None
    return samples[0]


def _error_detail(payload: Any) -> str:
    if not isinstance(payload, dict) or "error" not in payload:
        return ""
    kind = payload.get("errorType")
    return _one_line(f"{kind}: {payload['error']}" if kind else str(payload["error"]))


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= DETAIL_MAX else line[: DETAIL_MAX - 1] + "…"


def _quote(value: str) -> str:
    """`value` safe inside a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _seconds(window: timedelta) -> str:
    """A PromQL duration in whole seconds (PromQL has no zero or fractional range)."""
    return f"{max(1, round(window.total_seconds()))}s"


def _unix(at: datetime) -> float:
    # The bot's datetimes are UTC; a naive one must not be read as local time.
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).timestamp()
