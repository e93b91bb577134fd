"""The settings: one parser per key, the same for the environment and `create_app(config)`;
every key documented in docs/settings.md."""
from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import ROOT

from kb.settings import (
    SETTINGS,
    SettingError,
    Settings,
    parse_bool,
    parse_count,
    parse_seconds,
    parse_seconds_or_zero,
    size_in,
)


@pytest.mark.parametrize("text", ["on", "ON", "true", "True", "1", "yes", " Yes "])
def test_true_spellings(text):
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["off", "OFF", "false", "0", "no", "No"])
def test_false_spellings(text):
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["enabled", "", "2", "onn", "y"])
def test_other_words_are_not_booleans(text):
    with pytest.raises(ValueError):
        parse_bool(text)


@pytest.mark.parametrize(("text", "mib"), [("512.5", 512.5), ("1024", 1024.0), ("2GiB", 2048.0), ("2 G", 2048.0),
                                           ("512KiB", 0.5), ("256mb", 256.0), (300, 300.0), (0.5, 0.5)])
def test_sizes_in_mib(text, mib):
    assert size_in(2**20)(text) == mib


@pytest.mark.parametrize(("text", "kib"), [("64", 64.0), ("1MiB", 1024.0), ("0.5", 0.5), ("2048B", 2.0)])
def test_sizes_in_kib(text, kib):
    assert size_in(2**10)(text) == kib


@pytest.mark.parametrize("text", ["lots", "12 parsecs", "-5", "0", "nan", "inf", "1e999", "", True])
def test_bad_sizes(text):
    with pytest.raises((ValueError, TypeError)):
        size_in(2**20)(text)


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), ("2.5", 2.5), ("500ms", 0.5), ("1.5min", 90.0),
                                               ("2m", 120.0), ("1h", 3600.0), (7, 7.0)])
def test_durations(text, seconds):
    assert parse_seconds(text) == seconds


def test_a_duration_is_above_zero_unless_it_may_be_zero():
    with pytest.raises(ValueError):
        parse_seconds("0")
    assert parse_seconds_or_zero("0") == 0.0
    assert parse_seconds_or_zero(0) == 0.0
    assert parse_seconds_or_zero("250ms") == 0.25


@pytest.mark.parametrize(("text", "count"), [("2", 2), (" 8 ", 8), (3, 3)])
def test_counts(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["0", "-1", "2.5", "two", "²", True])
def test_bad_counts(text):
    with pytest.raises((ValueError, TypeError)):
        parse_count(text)


def test_max_runs_may_be_zero_but_not_negative():
    assert Settings.load({"KB_MAX_RUNS": "0"}).max_runs == 0
    assert Settings.load({}, {"KB_MAX_RUNS": 0}).max_runs == 0
    with pytest.raises(SettingError, match="KB_MAX_RUNS"):
        Settings.load({"KB_MAX_RUNS": "-1"})


def test_run_missing_words_and_booleans():
    for text, meaning in [("background", "background"), ("WAIT", "wait"), ("off", "off"), ("on", "background"),
                          ("true", "background"), ("0", "off"), ("no", "off"), (False, "off"), (True, "background")]:
        assert Settings.load({"KB_RUN_MISSING": text}).run_missing == meaning
    with pytest.raises(SettingError, match="KB_RUN_MISSING"):
        Settings.load({"KB_RUN_MISSING": "later"})


def test_log_format():
    assert Settings.load({"KB_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingError, match="KB_LOG_FORMAT"):
        Settings.load({"KB_LOG_FORMAT": "xml"})


def test_text_settings_take_strings_only():
    assert Settings.load({"KB_DB": "/srv/kb.sqlite3"}).db == "/srv/kb.sqlite3"
    with pytest.raises(SettingError, match="KB_DB"):
        Settings.load({"KB_DB": 5})


def test_the_environment_and_the_config_dict_are_parsed_alike():
    env = {"KB_RUNS": "on", "KB_MEMORY_MB": "512.5", "KB_STATIC": "false", "KB_MAX_RUNS": "3"}
    from_env, from_config = Settings.load(env), Settings.load({}, env)
    assert from_env == from_config
    assert (from_env.runs, from_env.memory_mb, from_env.static, from_env.max_runs) == (True, 512.5, False, 3)
    assert from_env.limits.memory == int(512.5 * 2**20)


def test_config_wins_over_the_environment_and_may_hold_typed_values():
    settings = Settings.load({"KB_RUNS": "off", "KB_TIMEOUT": "5"}, {"KB_RUNS": True, "KB_TIMEOUT": 12})
    assert settings.runs is True
    assert settings.timeout == 12.0


def test_an_error_names_the_key_and_the_value():
    with pytest.raises(SettingError) as error:
        Settings.load({"KB_RUNS": "maybe"})
    assert str(error.value).startswith("KB_RUNS: 'maybe'")


def test_other_keys_are_ignored():
    assert Settings.load({"KB_PORT": "x", "TESTING": True, "PATH": "/bin"}) == Settings()


def test_the_secret_is_never_shown():
    shown = repr(Settings.load({"KB_SECRET_KEY": "hunter2"}))
    assert "hunter2" not in shown
    assert "secret_key='***'" in shown


def test_every_setting_has_a_field_and_a_row_in_the_table():
    keys = [s.key for s in SETTINGS]
    assert len(set(keys)) == len(keys)
    assert {s.field for s in SETTINGS} == {f.name for f in dataclasses.fields(Settings)}
    table = (ROOT / "docs" / "settings.md").read_text()
    documented = re.findall(r"^\| `(KB_[A-Z_]+)` \|", table, flags=re.MULTILINE)
    assert documented == keys  # in the same order as SETTINGS
    for setting in SETTINGS:  # the documented default is the object's
        default = getattr(Settings(), setting.field)
        row = next(line for line in table.splitlines() if line.startswith(f"| `{setting.key}` |"))
        if isinstance(default, bool):
            assert f"| `{'on' if default else 'off'}` |" in row
        elif isinstance(default, int | float):
            assert f"| `{default:g}` |" in row
        elif default:
            assert f"| `{default}` |" in row


def test_create_app_reads_the_environment(monkeypatch, tmp_path):
    """KB_RUNS=on used to turn runs off, and KB_MEMORY_MB=512.5 used to crash create_app."""
    from service import create_app
    from service.context import state

    monkeypatch.setenv("KB_RUNS", "on")
    monkeypatch.setenv("KB_MEMORY_MB", "512.5")
    monkeypatch.setenv("KB_RUN_MISSING", "off")
    (tmp_path / "answers").mkdir()
    app = create_app({"KB_ANSWERS": str(tmp_path / "answers"), "KB_DB": str(tmp_path / "kb.sqlite3"),
                      "KB_STATIC": "false"})
    try:
        settings = state(app).settings
        assert (settings.runs, settings.memory_mb, settings.static) == (True, 512.5, False)
        assert app.config["KB_STATIC"] is False  # templates read the parsed value
        assert state(app).library.limits.memory == int(512.5 * 2**20)
    finally:
        state(app).close()


def test_create_app_refuses_a_bad_value_naming_the_key(monkeypatch):
    from service import create_app

    monkeypatch.setenv("KB_RUNS", "enabled")
    with pytest.raises(SettingError, match="KB_RUNS"):
        create_app({})


def test_trusted_hosts_are_a_comma_list_and_star_means_any():
    assert Settings().flask_trusted_hosts == ["localhost", "127.0.0.1"]
    assert Settings.load({"KB_TRUSTED_HOSTS": " kb.example.org ,.example.net,"}).flask_trusted_hosts == [
        "kb.example.org", ".example.net"]
    assert Settings.load({"KB_TRUSTED_HOSTS": "*"}).flask_trusted_hosts is None
    with pytest.raises(SettingError, match="KB_TRUSTED_HOSTS"):
        Settings.load({"KB_TRUSTED_HOSTS": " , "})


def test_runs_off_runs_nothing_not_even_missing_evidence():
    assert Settings.load({"KB_RUNS": "off", "KB_RUN_MISSING": "wait"}).run_missing == "off"
    assert Settings.load({"KB_RUNS": "on", "KB_RUN_MISSING": "wait"}).run_missing == "wait"
