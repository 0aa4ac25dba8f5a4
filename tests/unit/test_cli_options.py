"""The worker's options are WorkerConfig's fields: one list of settings, their
defaults, help and GPUFEED_* variables, used by every command that takes them."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gpufeed.cli import app
from gpufeed.worker.config import WorkerConfig

runner = CliRunner()


def options_of(*path: str) -> dict[str, Any]:
    """The options of ``gpufeed PATH…`` by parameter name (typer's own click objects)."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def test_every_worker_setting_is_an_option_with_its_default_help_and_variable() -> None:
    options = options_of("worker")
    for field in dataclasses.fields(WorkerConfig):
        option = options[field.name]
        assert option.default == field.default, field.name
        assert option.help == field.metadata["help"], field.name
        assert option.envvar == f"GPUFEED_{field.name.upper()}", field.name
    assert set(options) - {f.name for f in dataclasses.fields(WorkerConfig)} == {
        "log_format",
        "log_level",
    }


@pytest.mark.parametrize(
    "path", [("stats",), ("produce",), ("dead", "list"), ("dead", "replay"), ("dead", "purge")]
)
def test_other_commands_take_the_same_redis_and_queue_options(path) -> None:
    worker = options_of("worker")
    options = options_of(*path)
    for name in ("redis_url", "tls_ca_cert", "tls_cert", "tls_key", "queue"):
        assert options[name].help == worker[name].help, (path, name)
        assert options[name].envvar == worker[name].envvar, (path, name)


def test_two_spellings_of_a_boolean_come_from_the_settings_field() -> None:
    delete = options_of("worker")["delete_acked"]
    assert delete.opts == ["--delete-acked"] and delete.secondary_opts == ["--keep-acked"]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--max-batch", "0"], {}, "--max-batch"),
        ([], {"GPUFEED_MAX_BATCH": "5000"}, "--max-batch"),
        ([], {"GPUFEED_SLOT_BYTES": "100"}, "--slot-bytes"),
        (["--cuda-streams", "65"], {}, "--cuda-streams"),
        (["--staging", "paged"], {}, "--staging"),
        (["--backend", "tpu"], {}, "--backend"),
        (["--queue", "a{b}"], {}, "--queue"),
        ([], {"GPUFEED_RECLAIM_INTERVAL_MS": "0"}, "--reclaim-interval-ms"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--ring-spin", "-1"], {}, "--ring-spin"),
    ],
)
def test_a_bad_setting_exits_2_naming_its_option_before_anything_starts(args, env, named) -> None:
    result = runner.invoke(app, ["worker", *args], env=env)
    assert result.exit_code == 2, result.output
    assert f"gpufeed worker: {named}" in result.output


def test_rings_that_do_not_fit_in_shared_memory_stop_the_worker_before_it_starts() -> None:
    stat = os.statvfs("/dev/shm")
    free = stat.f_bavail * stat.f_frsize
    slot_bytes = 1 << 16
    capacity = 1 << max(10, (free // slot_bytes).bit_length())  # each ring alone is too big
    args = ["worker", "--backend", "cpu", "--slot-bytes", str(slot_bytes),
            "--ring-capacity", str(capacity), "--max-batch", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "the worker's 2 rings need" in result.output and "--shm-size" in result.output
