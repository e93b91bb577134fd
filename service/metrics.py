"""`/metrics`: the service's counters in Prometheus' text format (prometheus-client).

- `kb_http_requests_total{route, method, status}` and `kb_http_request_duration_seconds{route}`
  (a histogram): every request, by its URL rule (`/answers/<slug>`, not the slug: bounded
  labels), `unmatched` for a URL no rule matches;
- `kb_runs_total{outcome}`: `started` (a run began), `failed` (it ended other than passed),
  `coalesced` (the request got a run under way or one that just finished, KB_RUN_COOLDOWN),
  `limited` (429: KB_MAX_RUNS runs were under way);
- `kb_searches_total{confident}`: look-ups, by whether the best answer was confident;
- `kb_answers{status}` and `kb_evidence_age_seconds{which="oldest"|"newest"}`: read from the
  database when scraped (what every worker shares), so they need no cross-process bookkeeping.

Under gunicorn each worker is a process of its own: with `PROMETHEUS_MULTIPROC_DIR` set (by
`deploy/gunicorn.conf.py`, before the workers start) prometheus-client keeps every worker's
values in files there, and `/metrics`, whichever worker answers it, adds them up. Without it (the
development server, tests) the values are this process's. nginx (deploy/nginx.conf) serves
`/metrics` to loopback only.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .context import snapshot, state

metrics = Blueprint("metrics", __name__)
# Latency buckets for pages served from a cache (ms) up to re-runs (seconds, KB_TIMEOUT 30 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """One app's instruments, in a registry of its own (two apps in one process do not mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("kb_http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("kb_http_request_duration_seconds", "Time to answer a request, by route",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.runs = Counter("kb_runs", "Run requests by outcome: started, failed (of those started), "
                                       "coalesced (got another request's run), limited (429)",
                            ["outcome"], registry=self.registry)
        self.searches = Counter("kb_searches", "Look-ups, by whether the best answer was confident",
                                ["confident"], registry=self.registry)
        for outcome in ("started", "failed", "coalesced", "limited"):
            self.runs.labels(outcome)  # present at 0 from the start, so rates work
        for confident in ("true", "false"):
            self.searches.labels(confident)

    def run(self, outcome: str) -> None:
        self.runs.labels(outcome).inc()

    def search(self, confident: bool) -> None:
        self.searches.labels("true" if confident else "false").inc()


class EvidenceCollector(Collector):
    """Answers by evidence status, and the age of the oldest and newest evidence, from the database."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        library = state(self.app).library
        answers = list(snapshot().answers.values())
        statuses = library.statuses(answers)
        counts = GaugeMetricFamily("kb_answers", "Answers by the status of their current evidence", labels=["status"])
        for status in ("passed", "failed", "error", "timeout", "pending"):
            counts.add_metric([status], sum(1 for s in statuses.values() if s == status))
        yield counts
        now = datetime.now(UTC)
        ages = [(now - datetime.strptime(ran, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)).total_seconds()
                for ran in library.store.ran_at(answers).values() if ran]
        age = GaugeMetricFamily("kb_evidence_age_seconds", "Seconds since the oldest and the newest current evidence ran",
                                labels=["which"])
        if ages:
            age.add_metric(["oldest"], max(ages))
            age.add_metric(["newest"], min(ages))
        yield age


def init_app(app: Flask) -> Metrics:
    found = Metrics()

    @app.before_request
    def start_clock() -> None:
        g.kb_started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        found.requests.labels(route, request.method, str(response.status_code)).inc()
        if "kb_started" in g:
            found.latency.labels(route).observe(time.perf_counter() - g.kb_started)
        return response

    app.register_blueprint(metrics)
    return found


@metrics.get("/metrics")
def exposition() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # every worker's files, added up
    else:
        registry = state().metrics.registry
    text = generate_latest(registry) + generate_latest(_evidence_registry(current_app))
    return Response(text, content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def _evidence_registry(app: Flask) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EvidenceCollector(app))
    return registry
