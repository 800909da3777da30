"""Config: defaults, file + env precedence, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmops.config import ConfigError, MeshConfig, Mode, load_config
from llmops.mesh import SERVICES


def test_defaults_cover_every_service_with_distinct_ports() -> None:
    config = load_config(environ={})
    assert set(config.services) == set(SERVICES)
    ports = [s.port for s in config.services.values()]
    ports += [s.admin_port for s in config.services.values()]
    assert len(set(ports)) == len(ports)
    assert config.mode is Mode.EMBEDDED


def test_file_then_env_precedence(tmp_path: Path) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text("services:\n  feature:\n    port: 6001\nserver:\n  shutdown_grace_s: 3\n")
    config = load_config(file, environ={"LLMOPS__SERVER__SHUTDOWN_GRACE_S": "1.5"})
    assert config.services["feature"].port == 6001
    assert config.services["feature"].admin_port == SERVICES["feature"].admin_port
    assert config.services["embedding"].port == SERVICES["embedding"].port
    assert config.server.shutdown_grace_s == 1.5


def test_env_value_types_are_parsed() -> None:
    config = load_config(
        environ={"LLMOPS__SERVICES__GUARDRAIL__ENABLED": "false", "LLMOPS__MODE": "production"}
    )
    assert config.services["guardrail"].enabled is False
    assert config.mode is Mode.PRODUCTION


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"LLMOPS__SERVICES__FEATURE__PORT": "abc"}, "services.feature.port"),
        ({"LLMOPS__SERVICES__FEATURE__PORT": "70000"}, "services.feature.port"),
        ({"LLMOPS__SERVER__SHUTDOWN_GRACE_S": "-1"}, "server.shutdown_grace_s"),
        ({"LLMOPS__LOGGING__LEVEL": "loud"}, "logging.level"),
        ({"LLMOPS__SERVER__NOPE": "1"}, "server.nope"),
        ({"LLMOPS__SERVICES__SEARCH__PORT": "1"}, "services"),
    ],
)
def test_bad_value_names_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ=environ)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="LLMOPS__SERVICES__FEATURE__PORT"):
        load_config(environ={"LLMOPS__SERVICES__FEATURE__PORT": "abc"})


def test_port_clash_is_rejected() -> None:
    port = SERVICES["embedding"].port
    with pytest.raises(ConfigError, match=rf"port {port} is also used by") as err:
        load_config(environ={"LLMOPS__SERVICES__FEATURE__PORT": str(port)})
    assert "services.feature.port" in str(err.value)
    assert "services.embedding.port" in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, environ={})


def test_config_is_immutable() -> None:
    config = MeshConfig()
    with pytest.raises(Exception, match="frozen"):
        config.mode = Mode.PRODUCTION  # type: ignore[misc]


@pytest.mark.parametrize("command", [["up"], ["run", "feature"], ["status"]])
def test_cli_bad_config_exits_2_with_one_line(command: list[str]) -> None:
    env = {"PATH": "/usr/bin:/bin", "LLMOPS__SERVICES__FEATURE__PORT": "not-a-port"}
    proc = subprocess.run(
        [sys.executable, "-m", "llmops", *command],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "services.feature.port" in lines[0]


def test_status_without_a_mesh_exits_1_and_says_unreachable() -> None:
    from tests.support import free_ports

    env = {"PATH": "/usr/bin:/bin"}
    for name, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True):
        env[f"LLMOPS__SERVICES__{name.upper()}__PORT"] = str(port)
    proc = subprocess.run(
        [sys.executable, "-m", "llmops", "status", "--json", "--timeout", "0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    import json

    rows = json.loads(proc.stdout)["services"]
    assert {r["health"] for r in rows} == {"UNREACHABLE"}
    assert all(r["error"].startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")) for r in rows)
