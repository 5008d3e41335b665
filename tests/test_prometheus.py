"""The Prometheus metrics source: unit tests over httpx.MockTransport, then a real Prometheus."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bot.errors import ConfigError
from bot.metrics import MetricsUnavailable, Target, VersionMetrics
from bot.metrics.prometheus import PrometheusSource
from bot.policy.schema import PrometheusConfig
from tests.prometheus_kit import Exporter, PrometheusServer, Traffic, require_prometheus

# The PromQL the docs (docs/prometheus.md) recommend for the example exporter metrics.
QUERIES = {
    "requests": 'sum(increase(llm_requests_total{prompt="$prompt",version="$version"}[$window]))',
    "errors": 'sum(increase(llm_errors_total{prompt="$prompt",version="$version"}[$window]))',
    "latency_p50_ms": (
        "histogram_quantile(0.5, sum by (le) "
        '(rate(llm_latency_ms_bucket{prompt="$prompt",version="$version"}[$window])))'
    ),
    "latency_p99_ms": (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(llm_latency_ms_bucket{prompt="$prompt",version="$version"}[$window])))'
    ),
    "quality": (
        'sum(increase(llm_quality_sum{prompt="$prompt",version="$version"}[$window])) / '
        'sum(increase(llm_quality_count{prompt="$prompt",version="$version"}[$window]))'
    ),
    "quality_count": (
        'sum(increase(llm_quality_count{prompt="$prompt",version="$version"}[$window]))'
    ),
}
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FAKE_URL = "http://prometheus.test:9090"


def make_config(url: str = FAKE_URL, **overrides: Any) -> PrometheusConfig:
    return PrometheusConfig.model_validate({"url": url, "queries": QUERIES, **overrides})


def make_target(**overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "prompt": "summarise",
        "version": "v2.0.0",
        "version_id": 2,
        "prompt_id": 1,
        "share_pct": 100,
        "serving_since": NOW - timedelta(hours=1),
        "window": timedelta(minutes=5),
        "baseline_window": timedelta(hours=1),
    }
    return Target(**{**fields, **overrides})


def figure_of(promql: str) -> str:
    """Which configured figure a rendered query is (the example queries differ by metric)."""
    for marker, figure in (
        ("histogram_quantile(0.5,", "latency_p50_ms"),
        ("histogram_quantile(0.99,", "latency_p99_ms"),
        ("llm_quality_sum", "quality"),
        ("llm_quality_count", "quality_count"),
        ("llm_requests_total", "requests"),
        ("llm_errors_total", "errors"),
    ):
        if marker in promql:
            return figure
    raise AssertionError(f"unexpected query {promql}")


def version_of(promql: str) -> str:
    match = re.search(r'version="([^"]*)"', promql)
    assert match, promql
    return match.group(1)


def vector(*values: str) -> dict[str, Any]:
    result = [
        {"metric": {"pod": str(i)}, "value": [NOW.timestamp(), v]} for i, v in enumerate(values)
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@dataclass
class FakePrometheus:
    """Answers instant queries from `answers[(version, figure)]` (default: empty vector)."""

    answers: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    broken: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    seen: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        promql = request.url.params["query"]
        version = version_of(promql)
        if version in self.broken:
            return self.broken[version](request)
        return httpx.Response(200, json=vector(*self.answers.get((version, figure_of(promql)), ())))

    def source(self, **config: Any) -> PrometheusSource:
        client = httpx.Client(transport=httpx.MockTransport(self))
        return PrometheusSource(make_config(**config), client=client)

    def queries(self, version: str) -> list[tuple[str, str]]:
        """(query, time) of each request for `version`, in order."""
        return [
            (r.url.params["query"], r.url.params["time"])
            for r in self.seen
            if version_of(r.url.params["query"]) == version
        ]


HEALTHY = {
    ("v2.0.0", "requests"): ("1000.4",),
    ("v2.0.0", "errors"): ("79.6",),
    ("v2.0.0", "latency_p50_ms"): ("180",),
    ("v2.0.0", "latency_p99_ms"): ("900",),
    ("v2.0.0", "quality"): ("0.7",),
    ("v2.0.0", "quality_count"): ("200.2",),
    ("v1.9.0", "requests"): ("5000",),
    ("v1.9.0", "errors"): ("50",),
    ("v1.9.0", "latency_p99_ms"): ("400",),
}


def collect_one(source: PrometheusSource, target: Target) -> VersionMetrics | MetricsUnavailable:
    results = source.collect([target], NOW)
    assert set(results) == {target.version_id}
    return results[target.version_id]


def metrics_of(source: PrometheusSource, target: Target) -> VersionMetrics:
    result = collect_one(source, target)
    assert isinstance(result, VersionMetrics), result
    return result


def unavailable(source: PrometheusSource, target: Target) -> str:
    result = collect_one(source, target)
    assert isinstance(result, MetricsUnavailable), result
    assert "\n" not in result.message
    return result.message


# --- unit tests over httpx.MockTransport -------------------------------------------------------


def test_queries_render_placeholders_time_and_headers() -> None:
    fake = FakePrometheus(HEALTHY)
    source = fake.source(headers={"X-Scope-OrgID": "llm"})
    metrics_of(source, make_target(version="v2.0.0+build.7"))

    sent = fake.queries("v2.0.0+build.7")
    assert [query for query, _ in sent] == [
        'sum(increase(llm_requests_total{prompt="summarise",version="v2.0.0+build.7"}[300s]))',
        'sum(increase(llm_errors_total{prompt="summarise",version="v2.0.0+build.7"}[300s]))',
        'histogram_quantile(0.5, sum by (le) (rate(llm_latency_ms_bucket{prompt="summarise",version="v2.0.0+build.7"}[300s])))',
        'histogram_quantile(0.99, sum by (le) (rate(llm_latency_ms_bucket{prompt="summarise",version="v2.0.0+build.7"}[300s])))',
        'sum(increase(llm_quality_sum{prompt="summarise",version="v2.0.0+build.7"}[300s])) / sum(increase(llm_quality_count{prompt="summarise",version="v2.0.0+build.7"}[300s]))',
        'sum(increase(llm_quality_count{prompt="summarise",version="v2.0.0+build.7"}[300s]))',
    ]
    assert {t for _, t in sent} == {"1740830400.000"}
    assert float("1740830400.000") == NOW.timestamp()
    assert {r.url.path for r in fake.seen} == {"/api/v1/query"}
    assert {r.method for r in fake.seen} == {"GET"}
    assert all(r.headers["X-Scope-OrgID"] == "llm" for r in fake.seen)


def test_names_are_escaped_for_promql_strings() -> None:
    fake = FakePrometheus()
    metrics_of(fake.source(), make_target(prompt='we"ird\\name'))
    assert 'prompt="we\\"ird\\\\name"' in fake.seen[0].url.params["query"]


def test_naive_now_is_read_as_utc_and_url_prefix_is_kept() -> None:
    fake = FakePrometheus()
    source = fake.source(url="http://prometheus.test/monitoring/")
    source.collect([make_target()], NOW.replace(tzinfo=None))
    assert fake.seen[0].url.params["time"] == "1740830400.000"
    assert fake.seen[0].url.path == "/monitoring/api/v1/query"


def test_figures_are_read_and_counts_rounded() -> None:
    current = metrics_of(FakePrometheus(HEALTHY).source(), make_target()).current
    assert (current.requests, current.errors) == (1000, 80)
    assert current.error_rate_pct == 8.0
    assert (current.latency_p50_ms, current.latency_p99_ms) == (180.0, 900.0)
    assert (current.quality, current.quality_count) == (0.7, 200)


def test_empty_vectors_mean_no_traffic() -> None:
    result = metrics_of(FakePrometheus().source(), make_target())
    current = result.current
    assert (current.requests, current.errors, current.error_rate_pct) == (0, 0, None)
    assert (current.latency_p50_ms, current.latency_p99_ms, current.quality) == (None, None, None)
    assert current.quality_count == 0
    assert result.baseline is None


def test_nan_and_infinite_latency_or_quality_mean_unknown() -> None:
    answers = {
        **HEALTHY,
        ("v2.0.0", "latency_p50_ms"): ("+Inf",),
        ("v2.0.0", "latency_p99_ms"): ("NaN",),
        ("v2.0.0", "quality"): ("NaN",),
    }
    current = metrics_of(FakePrometheus(answers).source(), make_target()).current
    assert (current.latency_p50_ms, current.latency_p99_ms, current.quality) == (None, None, None)
    assert current.requests == 1000


def test_several_series_are_summed_for_counts() -> None:
    answers = {("v2.0.0", "requests"): ("600", "400"), ("v2.0.0", "errors"): ("10", "20")}
    current = metrics_of(FakePrometheus(answers).source(), make_target()).current
    assert (current.requests, current.errors) == (1000, 30)


def test_several_series_for_latency_are_ambiguous() -> None:
    answers = {**HEALTHY, ("v2.0.0", "latency_p99_ms"): ("900", "850")}
    message = unavailable(FakePrometheus(answers).source(), make_target())
    assert message.startswith("summarise v2.0.0: query latency_p99_ms returned 2 series")


def test_nan_request_count_is_unavailable() -> None:
    answers = {("v2.0.0", "requests"): ("NaN",)}
    message = unavailable(FakePrometheus(answers).source(), make_target())
    assert "query requests" in message
    assert "not a finite number" in message


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            httpx.Response(500, text="upstream exploded"),
            "query requests: prometheus at http://prometheus.test:9090 returned HTTP 500: "
            "Internal Server Error",
        ),
        (
            httpx.Response(
                400,
                json={"status": "error", "errorType": "bad_data", "error": "parse error\nat 1:6"},
            ),
            "returned HTTP 400: bad_data: parse error at 1:6",
        ),
        (
            httpx.Response(
                200, json={"status": "error", "errorType": "timeout", "error": "query timed out"}
            ),
            "query requests: prometheus at http://prometheus.test:9090 answered with an error: timeout: "
            "query timed out",
        ),
        (httpx.Response(200, text="<html>login</html>"), "answered with invalid JSON"),
        (httpx.Response(200, json={"status": "success"}), "answered without data"),
        (
            httpx.Response(200, json={"status": "success", "data": {"resultType": "vector"}}),
            "answered with a malformed result",
        ),
        (
            httpx.Response(
                200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
            "query requests returned a matrix",
        ),
    ],
    ids=["http-500", "http-400", "status-error", "invalid-json", "no-data", "no-result", "matrix"],
)
def test_failed_answers_make_the_target_unavailable(
    response: httpx.Response, expected: str
) -> None:
    fake = FakePrometheus(HEALTHY, broken={"v2.0.0": lambda _request: response})
    message = unavailable(fake.source(), make_target())
    assert message.startswith("summarise v2.0.0: ")
    assert expected in message
    # The first failed query ends the target: no point asking five more times.
    assert len(fake.seen) == 1


def _time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def test_timeout_is_unavailable() -> None:
    fake = FakePrometheus(broken={"v2.0.0": _time_out})
    message = unavailable(fake.source(), make_target())
    assert (
        message == "summarise v2.0.0: prometheus at http://prometheus.test:9090 timed out after 5s"
    )


def test_refused_connection_is_unavailable_and_hides_url_credentials() -> None:
    fake = FakePrometheus(broken={"v2.0.0": _refuse})
    message = unavailable(fake.source(url="http://bot:s3cret@prometheus.test:9090"), make_target())
    assert message == (
        "summarise v2.0.0: prometheus at http://prometheus.test:9090 unreachable: "
        "[Errno 111] Connection refused"
    )
    assert fake.seen[0].headers["Authorization"].startswith("Basic ")


def test_dropped_connection_is_unavailable() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    message = unavailable(FakePrometheus(broken={"v2.0.0": drop}).source(), make_target())
    assert message == (
        "summarise v2.0.0: prometheus at http://prometheus.test:9090 request failed: "
        "Server disconnected without sending a response."
    )


def test_one_failing_target_leaves_the_others_and_targets_run_concurrently() -> None:
    # Each target's first query waits for the other two: only a concurrent collect gets past.
    barrier = threading.Barrier(3, timeout=5)
    fake = FakePrometheus(HEALTHY, broken={"v3.0.0": lambda _r: httpx.Response(502)})

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params["query"].startswith("sum(increase(llm_requests_total"):
            barrier.wait()
        return fake(request)

    source = PrometheusSource(
        make_config(), client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    targets = [
        make_target(version="v2.0.0", version_id=2),
        make_target(version="v3.0.0", version_id=3),
        make_target(prompt="other", version="v1.9.0", version_id=7),
    ]
    results = source.collect(targets, NOW)
    assert set(results) == {2, 3, 7}
    assert isinstance(results[2], VersionMetrics) and results[2].current.requests == 1000
    assert isinstance(results[7], VersionMetrics) and results[7].current.requests == 5000
    assert isinstance(results[3], MetricsUnavailable)
    assert "summarise v3.0.0" in results[3].message and "HTTP 502" in results[3].message


def test_unexpected_failure_is_returned_not_raised() -> None:
    def explode(_request: httpx.Request) -> httpx.Response:
        raise RuntimeError("boom")

    fake = FakePrometheus(broken={"v2.0.0": explode})
    assert (
        unavailable(fake.source(), make_target())
        == "summarise v2.0.0: unexpected RuntimeError: boom"
    )


def test_baseline_is_read_at_baseline_until_over_the_baseline_window() -> None:
    until = NOW - timedelta(hours=2)
    fake = FakePrometheus(HEALTHY)
    target = make_target(baseline_version="v1.9.0", baseline_version_id=1, baseline_until=until)
    result = metrics_of(fake.source(), target)

    baseline_queries = fake.queries("v1.9.0")
    assert len(baseline_queries) == 6
    assert all("[3600s]" in q and t == f"{until.timestamp():.3f}" for q, t in baseline_queries)
    assert all("[300s]" in q and t == "1740830400.000" for q, t in fake.queries("v2.0.0"))
    assert result.baseline is not None
    assert result.baseline.source == "v1.9.0 over the 60 min before v2.0.0 took over"
    assert (result.baseline.requests, result.baseline.error_rate_pct) == (5000, 1.0)
    assert result.baseline.latency_p99_ms == 400.0
    assert result.current.requests == 1000


def test_baseline_without_until_is_the_same_window_now() -> None:
    fake = FakePrometheus(HEALTHY)
    result = metrics_of(fake.source(), make_target(baseline_version="v1.9.0"))
    assert all("[300s]" in q and t == "1740830400.000" for q, t in fake.queries("v1.9.0"))
    assert result.baseline is not None
    assert result.baseline.source == "v1.9.0 over the same window"
    assert result.baseline.error_rate_pct == 1.0


def test_thin_live_baseline_falls_back_to_stored_figures() -> None:
    answers = {**HEALTHY, ("v1.9.0", "requests"): ("10",), ("v1.9.0", "errors"): ("5",)}
    stored = (("v1.9.0", {"error_rate_pct": 1.5, "latency_p99_ms": 420.0}),)
    target = make_target(baseline_version="v1.9.0", stored_baselines=stored)
    baseline = metrics_of(FakePrometheus(answers).source(), target).baseline
    assert baseline is not None
    assert baseline.source == "figures stored on v1.9.0"
    assert (baseline.requests, baseline.error_rate_pct, baseline.latency_p99_ms) == (
        None,
        1.5,
        420.0,
    )


def test_without_baseline_version_only_stored_figures_and_no_baseline_queries() -> None:
    fake = FakePrometheus(HEALTHY)
    target = make_target(stored_baselines=(("v2.0.0", {"quality": 0.8}),))
    baseline = metrics_of(fake.source(), target).baseline
    assert baseline is not None and baseline.quality == 0.8
    assert {version_of(r.url.params["query"]) for r in fake.seen} == {"v2.0.0"}


def test_baseline_failure_names_the_baseline_version() -> None:
    fake = FakePrometheus(HEALTHY, broken={"v1.9.0": lambda _r: httpx.Response(503)})
    message = unavailable(fake.source(), make_target(baseline_version="v1.9.0"))
    assert message.startswith("summarise v2.0.0: baseline v1.9.0: query requests: ")
    assert "HTTP 503" in message


def test_unconfigured_figures_are_not_queried() -> None:
    fake = FakePrometheus(HEALTHY)
    queries = {"requests": QUERIES["requests"], "errors": QUERIES["errors"]}
    current = metrics_of(fake.source(queries=queries), make_target()).current
    assert len(fake.seen) == 2
    assert (current.requests, current.latency_p99_ms, current.quality, current.quality_count) == (
        1000,
        None,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("rate(x[$__rate_interval])", r"unknown placeholder \$__rate_interval"),
        ("x * $ 2", r"a stray \$"),
    ],
)
def test_bad_placeholders_stop_start_up(query: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"^prometheus\.queries\.errors: {expected}"):
        PrometheusSource(make_config(queries={**QUERIES, "errors": query}))


def test_close_closes_only_its_own_client() -> None:
    given = httpx.Client(transport=httpx.MockTransport(FakePrometheus()))
    PrometheusSource(make_config(), client=given).close()
    assert not given.is_closed
    own = PrometheusSource(make_config())
    own.close()
    with pytest.raises(RuntimeError):  # httpx refuses requests on a closed client
        own._client.get(FAKE_URL)


# --- against a real Prometheus ------------------------------------------------------------------

WINDOW = timedelta(seconds=30)
# v2.0.0: 8% errors, 5% slow (p99 in the 500-1000 ms bucket); v1.9.0: twice the traffic, 1%.
TRAFFIC = {
    ("summarise", "v2.0.0"): Traffic(requests=100, errors=8, slow=5, scored=20, score=0.70),
    ("summarise", "v1.9.0"): Traffic(requests=200, errors=2, slow=0, scored=40, score=0.85),
}


def _has_data(server: PrometheusServer) -> bool:
    """Rates need two scrapes in the window, and the baseline test reads a second back."""
    source = PrometheusSource(make_config(server.url))
    try:
        results = source.collect(
            [live_target("v2.0.0", 2), live_target("v1.9.0", 1)], now() - timedelta(seconds=1)
        )
    finally:
        source.close()
    return all(
        isinstance(r, VersionMetrics) and r.current.requests >= 500 and r.current.latency_p99_ms
        for r in results.values()
    )


def now() -> datetime:
    return datetime.now(UTC)


def live_target(version: str, version_id: int, **overrides: Any) -> Target:
    return make_target(version=version, version_id=version_id, window=WINDOW, **overrides)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus (the Debian package) scraping a fake LLM app's metrics."""
    binary = require_prometheus()
    exporter = Exporter(TRAFFIC)
    server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), exporter.port)
    try:
        server.start(lambda: _has_data(server))
        yield server
    finally:
        server.stop()
        exporter.close()


@pytest.fixture
def live_prometheus(prometheus: PrometheusServer) -> PrometheusServer:
    """The real Prometheus, restarted if a test stopped it."""
    if not prometheus.running:
        prometheus.start(lambda: _has_data(prometheus))
    return prometheus


def real_source(server: PrometheusServer, timeout: str = "2s") -> PrometheusSource:
    return PrometheusSource(make_config(server.url, timeout=timeout))


def test_real_prometheus_error_rate_latency_and_quality(live_prometheus: PrometheusServer) -> None:
    source = real_source(live_prometheus)
    results = source.collect([live_target("v2.0.0", 2), live_target("v1.9.0", 1)], now())
    source.close()
    new, old = results[2], results[1]
    assert isinstance(new, VersionMetrics) and isinstance(old, VersionMetrics)
    assert new.current.error_rate_pct == pytest.approx(8.0, abs=0.2)
    assert old.current.error_rate_pct == pytest.approx(1.0, abs=0.1)
    # Each query kept to its own version: v1.9.0 serves twice as many requests.
    assert old.current.requests / new.current.requests == pytest.approx(2.0, rel=0.02)
    assert new.current.latency_p99_ms is not None and 500 < new.current.latency_p99_ms <= 1000
    assert old.current.latency_p99_ms is not None and 100 < old.current.latency_p99_ms <= 250
    assert new.current.latency_p50_ms is not None and 100 < new.current.latency_p50_ms <= 250
    assert new.current.quality == pytest.approx(0.70, abs=0.005)
    assert old.current.quality == pytest.approx(0.85, abs=0.005)
    assert new.current.quality_count == pytest.approx(new.current.requests / 5, rel=0.02)
    assert new.baseline is None and old.baseline is None


def test_real_prometheus_prompt_without_traffic(live_prometheus: PrometheusServer) -> None:
    source = real_source(live_prometheus)
    result = source.collect([make_target(prompt="nobody", window=WINDOW)], now())[2]
    source.close()
    assert isinstance(result, VersionMetrics)
    current = result.current
    assert (current.requests, current.errors, current.error_rate_pct) == (0, 0, None)
    assert (current.latency_p99_ms, current.quality, current.quality_count) == (None, None, 0)


def test_real_prometheus_live_baseline(live_prometheus: PrometheusServer) -> None:
    source = real_source(live_prometheus)
    at = now()
    stored = (("v1.9.0", {"error_rate_pct": 3.0}),)
    results = source.collect(
        [
            live_target("v2.0.0", 2, baseline_version="v1.9.0", baseline_version_id=1),
            # Until a second ago: live; until an hour ago, before any scrape: the stored figures.
            live_target(
                "v2.0.0",
                3,
                baseline_version="v1.9.0",
                baseline_until=at - timedelta(seconds=1),
                baseline_window=WINDOW,
            ),
            live_target(
                "v2.0.0",
                4,
                baseline_version="v1.9.0",
                baseline_until=at - timedelta(hours=1),
                stored_baselines=stored,
            ),
        ],
        at,
    )
    source.close()
    same, recent, past = results[2], results[3], results[4]
    assert isinstance(same, VersionMetrics) and same.baseline is not None
    assert same.baseline.source == "v1.9.0 over the same window"
    assert same.baseline.error_rate_pct == pytest.approx(1.0, abs=0.1)
    assert same.baseline.requests == pytest.approx(2 * same.current.requests, rel=0.02)
    assert same.baseline.latency_p99_ms is not None and 100 < same.baseline.latency_p99_ms <= 250
    assert isinstance(recent, VersionMetrics) and recent.baseline is not None
    assert recent.baseline.requests is not None and recent.baseline.requests >= 500
    assert recent.baseline.error_rate_pct == pytest.approx(1.0, abs=0.1)
    assert isinstance(past, VersionMetrics) and past.baseline is not None
    assert (past.baseline.source, past.baseline.error_rate_pct) == ("figures stored on v1.9.0", 3.0)


def test_real_prometheus_hung_times_out_concurrently(live_prometheus: PrometheusServer) -> None:
    source = real_source(live_prometheus, timeout="1s")
    live_prometheus.pause()
    try:
        started = time.monotonic()
        results = source.collect([live_target(f"v{i}", i) for i in range(3)], now())
        elapsed = time.monotonic() - started
    finally:
        live_prometheus.resume()
        source.close()
    expected = f"prometheus at {live_prometheus.url} timed out after 1s"
    assert {i: getattr(r, "message", r) for i, r in results.items()} == {
        i: f"summarise v{i}: {expected}" for i in range(3)
    }
    assert elapsed < 2.5  # one timeout, not three in a row


def test_real_prometheus_stopped_is_unavailable_quickly(live_prometheus: PrometheusServer) -> None:
    live_prometheus.stop()
    source = real_source(live_prometheus)
    started = time.monotonic()
    results = source.collect([live_target("v2.0.0", 2), live_target("v1.9.0", 1)], now())
    elapsed = time.monotonic() - started
    source.close()
    for version_id, version in ((2, "v2.0.0"), (1, "v1.9.0")):
        result = results[version_id]
        assert isinstance(result, MetricsUnavailable)
        assert result.message.startswith(
            f"summarise {version}: prometheus at {live_prometheus.url} unreachable: "
        )
    assert elapsed < 1.0
