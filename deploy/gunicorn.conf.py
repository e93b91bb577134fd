"""gunicorn's settings for the service (deploy/serve-local.sh, the README's production command):

    gunicorn -c deploy/gunicorn.conf.py -b 127.0.0.1:8000 "service:create_app()"

- **One model per machine.** `on_starting` loads the embedding model (onnxruntime session and
  tokenizer, single-threaded: no thread exists when gunicorn forks) in the master, before any
  worker is forked. Each worker's `create_app` then finds it already made (`shared_embedder`
  keeps one per process and file), and the session's pages stay shared between the workers,
  copy-on-write, instead of each worker loading its own. The app itself is *not* preloaded:
  `create_app` starts threads (evidence runs, look-ups), which must not exist across a fork.
- **Metrics across workers.** `PROMETHEUS_MULTIPROC_DIR` is set here, before the workers import
  prometheus-client, to a fresh directory (emptied at start; a temporary one unless set), and a
  worker that exits is marked dead, so `/metrics` from any worker adds up all of them.
- **Logs.** With `KB_LOG_FORMAT=json`, gunicorn's access and error logs are JSON lines too.

Settings read: KB_WORKERS (2), KB_THREADS (8), KB_LOG_FORMAT, KB_MODEL_FILE, PROMETHEUS_MULTIPROC_DIR.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime

from gunicorn.glogging import Logger

from kb.settings import Settings

settings = Settings.load({key: os.environ[key] for key in ("KB_LOG_FORMAT", "KB_MODEL_FILE") if key in os.environ})

worker_class = "gthread"
workers = int(os.environ.get("KB_WORKERS", "2"))
threads = int(os.environ.get("KB_THREADS", "8"))
control_socket_disable = True  # gunicorn's control socket: nothing here uses it
# Limits above nginx's (8 KiB lines and fields): nginx refuses first, with its problem+json, so
# gunicorn's own bare HTML errors are never seen.
limit_request_line = 16384
limit_request_field_size = 16384

_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kb-metrics-")
METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


class JsonAccessLogger(Logger):
    """gunicorn's logger, writing each access as one JSON object (values are JSON-escaped)."""

    def access(self, resp, req, environ, request_time):  # noqa: ANN001  (gunicorn's signature)
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict or self.cfg.syslog):
            return
        atoms = self.atoms(resp, req, environ, request_time)
        entry = {
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": "info", "logger": "gunicorn.access",
            "remote": atoms["h"], "method": atoms["m"], "path": atoms["U"], "query": atoms["q"],
            "protocol": atoms["H"], "status": resp.status_code if hasattr(resp, "status_code") else atoms["s"],
            "bytes": atoms["B"], "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "referer": atoms["f"], "user_agent": atoms["a"], "pid": atoms["p"],
        }
        try:
            self.access_log.info(json.dumps(entry, ensure_ascii=False, default=str))
        except Exception:  # as gunicorn's own access(): a log line never fails a request
            self.exception("Failed to write the access log entry")


if settings.log_format == "json":
    logger_class = JsonAccessLogger
    accesslog = "-"
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "service.logs.JsonFormatter"},
            "raw": {"format": "%(message)s"},  # the access lines are JSON already
        },
        "handlers": {
            "error": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "raw", "stream": "ext://sys.stdout"},
        },
        "root": {"level": "INFO", "handlers": ["error"]},  # gunicorn merges its defaults: name ours
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        },
    }


def on_starting(server) -> None:  # noqa: ANN001
    """In the master, before the first fork: a clean metrics directory, and the model loaded."""
    for entry in os.listdir(METRICS_DIR):  # values of an earlier run's workers would add up with ours
        path = os.path.join(METRICS_DIR, entry)
        if entry.endswith(".db") and os.path.isfile(path):
            os.unlink(path)
    from kb.search.embeddings import shared_embedder

    shared_embedder(settings.model_file or None)
    server.log.info("embedding model loaded once, before the workers fork (shared by all of them)")


def child_exit(server, worker) -> None:  # noqa: ANN001
    """A worker that exits: its live gauges go, its counters stay counted (prometheus-client)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:  # noqa: ANN001
    if _own_metrics_dir:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
