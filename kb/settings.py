"""Every `KB_*` setting, typed: one frozen `Settings` object, one parser per key.

The same parsers read the environment and the `config` dict of `create_app(config)` (a value there
may be a string, as in the environment, or already of the setting's type), so `KB_RUNS=on` and
`{"KB_RUNS": "on"}` mean the same, and a value no parser accepts is an error naming the key,
never a silent default. The table in docs/settings.md lists them all; a test checks it against
`SETTINGS`.

Adding a setting: a field on `Settings` (its default) and a `Setting` in `SETTINGS` (its key,
parser and one line of help), then a row in docs/settings.md.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from kb.run.limits import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_KIB, Limits


class SettingError(ValueError):
    """A setting's value that its parser does not accept; the message names the key."""


TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
RUN_MISSING = ("background", "wait", "off")
LOG_FORMATS = ("text", "json")
SIZE_RE = re.compile(r"\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[a-zA-Z]*)\s*")
# Sizes are binary whatever the spelling (K, KB, KiB: 1024), as the keys' MB and KIB always were.
SIZE_UNITS = {"": None, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
              "g": 2**30, "gb": 2**30, "gib": 2**30}
DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a string, not {type(value).__name__} {value!r}")
    return value


def parse_bool(value: object) -> bool:
    """on/off, true/false, yes/no, 1/0 (any case), or a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = _text(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{value!r} is not on/off, true/false, yes/no or 1/0")


def _number(value: object, units: Mapping[str, float | int | None], default_unit: float) -> float:
    if isinstance(value, bool):
        raise TypeError(f"a number, not {value!r}")
    if isinstance(value, int | float):
        number, scale = float(value), default_unit
    else:
        match = SIZE_RE.fullmatch(_text(value))
        unit = match["unit"].lower() if match else ""
        if match is None or unit not in units:
            known = ", ".join(u for u in units if u)
            raise ValueError(f"{value!r} is not a number with an optional unit ({known})")
        number, factor = float(match["number"]), units[unit]
        scale = default_unit if factor is None else float(factor)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{value!r} must be above 0")
    return number * scale


def size_in(unit: int) -> Callable[[object], float]:
    """A parser of sizes expressed in `unit` bytes: a bare number is in that unit (KB_MEMORY_MB=512.5),
    a number with a unit is converted (KB_MEMORY_MB=2GiB is 2048)."""
    def parse(value: object) -> float:
        return _number(value, SIZE_UNITS, unit) / unit
    return parse


def parse_seconds(value: object) -> float:
    """A duration above 0 in seconds: 30, 2.5, 500ms, 1.5min."""
    return _number(value, DURATION_UNITS, 1.0)


def parse_seconds_or_zero(value: object) -> float:
    """A duration in seconds that may be 0 (a cooldown of 0 turns it off)."""
    if value in (0, "0", 0.0):
        return 0.0
    return parse_seconds(value)


def parse_count(value: object) -> int:
    """A whole number above 0."""
    if isinstance(value, bool):
        raise TypeError(f"a whole number, not {value!r}")
    if isinstance(value, int):
        number = value
    elif re.fullmatch(r"\s*[0-9]+\s*", _text(value)):
        number = int(_text(value))
    else:
        raise ValueError(f"{value!r} is not a whole number")
    if number < 1:
        raise ValueError(f"{value!r} must be at least 1")
    return number


def parse_count_or_zero(value: object) -> int:
    """A whole number, 0 or more."""
    if value in (0, "0") and not isinstance(value, bool):
        return 0
    return parse_count(value)


def parse_text(value: object) -> str:
    return _text(value)


def choice(*allowed: str, aliases: Mapping[str, str] | None = None) -> Callable[[object], str]:
    """One of `allowed` (any case), or an alias of one."""
    spellings = {**{a: a for a in allowed}, **(aliases or {})}

    def parse(value: object) -> str:
        text = _text(value).strip().lower()
        if text not in spellings:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return spellings[text]
    return parse


def parse_run_missing(value: object) -> str:
    """background, wait or off; a boolean (any spelling, or a bool) means background or off."""
    if isinstance(value, bool):
        return "background" if value else "off"
    return _run_missing_word(value)


def parse_hosts(value: object) -> str:
    """A comma-separated list of host names (`*`: any), at least one; kept as given, trimmed."""
    hosts = [host.strip() for host in _text(value).split(",") if host.strip()]
    if not hosts:
        raise ValueError(f"{value!r} names no host (use * for any)")
    return ", ".join(hosts)


_run_missing_word = choice(*RUN_MISSING, aliases={**dict.fromkeys(TRUE, "background"), **dict.fromkeys(FALSE, "off")})


@dataclass(frozen=True)
class Setting:
    key: str  # the environment variable and the config key
    field: str  # the attribute of Settings
    parse: Callable[[object], Any]
    help: str


@dataclass(frozen=True)
class Settings:
    """The parsed settings of one app (or one `kb` command). Build it with `Settings.load`."""

    answers: str = "answers"
    db: str = ".kb/kb.sqlite3"
    timeout: float = Limits.timeout
    memory_mb: float = float(DEFAULT_MEMORY_MB)
    output_kib: float = float(DEFAULT_OUTPUT_KIB)
    max_runs: int = 2
    run_missing: str = "background"
    runs: bool = True
    run_cooldown: float = 10.0
    static: bool = False
    secret_key: str = ""
    model_file: str = ""
    log_format: str = "text"
    # Host names requests may name; any other Host gets 400, so a page on a rebound DNS name cannot
    # drive the service (issue 20). (An IPv6 literal never matches: werkzeug 3.1 compares "[".)
    trusted_hosts: str = "localhost, 127.0.0.1"

    def __repr__(self) -> str:  # never print the secret
        shown = ", ".join(f"{f.name}={'***' if f.name == 'secret_key' and self.secret_key else getattr(self, f.name)!r}"
                          for f in fields(self))
        return f"Settings({shown})"

    @property
    def limits(self) -> Limits:
        return Limits.of(self.timeout, self.memory_mb, self.output_kib)

    @property
    def flask_trusted_hosts(self) -> list[str] | None:
        """Flask's TRUSTED_HOSTS: the listed names, or None (any) when the list has `*`."""
        hosts = [host.strip() for host in self.trusted_hosts.split(",") if host.strip()]
        return None if "*" in hosts else hosts

    @classmethod
    def load(cls, *sources: Mapping[str, object]) -> Settings:
        """The defaults, overridden by each source in turn (`os.environ`, then a config dict).

        Keys of `SETTINGS` are parsed; other keys are ignored (Flask's own, or the environment's
        KB_PORT and such). Raises SettingError naming the key whose value does not parse.
        KB_RUNS=off runs nothing, ever: not even answers without evidence (run_missing is off).
        """
        values: dict[str, Any] = {}
        for source in sources:
            for setting in SETTINGS:
                if setting.key in source:
                    values[setting.field] = parse_one(setting, source[setting.key])
        settings = replace(cls(), **values)
        if not settings.runs:
            settings = replace(settings, run_missing="off")
        return settings

    def as_config(self) -> dict[str, Any]:
        """{KEY: parsed value}: what Flask's `app.config` holds (templates read it)."""
        return {setting.key: getattr(self, setting.field) for setting in SETTINGS}


def parse_one(setting: Setting, value: object) -> Any:
    try:
        return setting.parse(value)
    except (TypeError, ValueError) as exc:
        raise SettingError(f"{setting.key}: {exc}") from None


SETTINGS: tuple[Setting, ...] = (
    Setting("KB_ANSWERS", "answers", parse_text, "the answers directory"),
    Setting("KB_DB", "db", parse_text,
            "the SQLite file (evidence cache + search index), derived and safe to delete"),
    Setting("KB_TIMEOUT", "timeout", parse_seconds, "how long an answer may run: seconds, or with a unit (500ms, 2min)"),
    Setting("KB_MEMORY_MB", "memory_mb", size_in(2**20),
            "memory an answer may allocate: MiB (512.5), or with a unit (2GiB, 512KiB)"),
    Setting("KB_OUTPUT_KIB", "output_kib", size_in(2**10),
            "stdout (and stderr) kept per snippet: KiB (64), or with a unit (1MiB)"),
    Setting("KB_MAX_RUNS", "max_runs", parse_count_or_zero,
            "re-runs at once per process; more get 429 with Retry-After (0: every run does)"),
    Setting("KB_RUN_MISSING", "run_missing", parse_run_missing,
            "answers without cached evidence at start-up: background (serve at once, run them in a thread), "
            "wait (run them before serving), off (leave them pending); on/off and the other booleans also work"),
    Setting("KB_RUNS", "runs", parse_bool,
            "off: no Run again button, the run endpoints answer 403 (read-only deployments)"),
    Setting("KB_RUN_COOLDOWN", "run_cooldown", parse_seconds_or_zero,
            "seconds after a run of an answer during which a re-run returns that run's evidence (0: none)"),
    Setting("KB_STATIC", "static", parse_bool,
            "on: render pages for the static export (no run form, search in the browser); `kb build` sets it"),
    Setting("KB_SECRET_KEY", "secret_key", parse_text,
            "signs the run form's token; default: a random key kept in <KB_DB>.key"),
    Setting("KB_MODEL_FILE", "model_file", parse_text,
            "the embedding model file (default: the pinned package's model.onnx); must match the pinned SHA-256"),
    Setting("KB_LOG_FORMAT", "log_format", choice(*LOG_FORMATS),
            "text, or json: one JSON object per line for the service's log records"),
    Setting("KB_TRUSTED_HOSTS", "trusted_hosts", parse_hosts,
            "host names requests may name, comma-separated (Flask's TRUSTED_HOSTS; *: any); others get 400"),
)
