"""ghz probes (loadtests/ghz.py): the command line, and ghz's report read as samples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llmops.config import MeshConfig
from loadtests import ghz
from loadtests.spec import load_probes


def _config(tmp_path: Path, **security: object) -> MeshConfig:
    return MeshConfig.model_validate({"state_dir": str(tmp_path / "state"), "security": security})


def test_every_shipped_probe_names_an_objective_and_a_service() -> None:
    from loadtests.spec import load_objectives

    objectives = load_objectives().objectives
    for probe in load_probes().values():
        assert probe.objective in objectives
        assert probe.service in MeshConfig.model_validate({}).services


def test_the_command_calls_through_reflection_with_the_mesh_certificate(tmp_path: Path) -> None:
    probe = load_probes()["assign-probe"]
    config = _config(tmp_path)
    argv = ghz.command(probe, config, "/bin/ghz", tmp_path)
    assert argv[0] == "/bin/ghz" and argv[-1] == config.services["experiment"].address
    assert "--call=llmops.v1.ExperimentService.Assign" in argv
    assert not any(a.startswith("--proto") for a in argv)  # reflection
    flags = dict(a.split("=", 1) for a in argv[1:-1] if "=" in a)
    assert Path(flags["--cacert"]).is_file() and Path(flags["--cert"]).is_file()
    assert json.loads(flags["--data"])["unit_type"] == "user"
    assert flags["--concurrency"] == "8" and flags["--total"] == "20000"


def test_a_token_goes_in_a_private_file_never_on_the_command_line(tmp_path: Path) -> None:
    probe = load_probes()["assign-probe"]
    config = _config(tmp_path, client_certificates="none")
    argv = ghz.command(probe, config, "/bin/ghz", tmp_path)
    token = (config.state_dir / "security" / "service.token").read_text().strip()
    assert not any(token in a for a in argv)
    metadata = tmp_path / ".ghz-metadata.json"
    assert f"--metadata-file={metadata}" in argv
    assert json.loads(metadata.read_text()) == {"authorization": f"Bearer {token}"}
    assert metadata.stat().st_mode & 0o077 == 0


def test_ghz_details_become_samples_with_protocol_status_names(tmp_path: Path) -> None:
    probe = load_probes()["assign-probe"]
    report = {"details": [
        {"timestamp": "2026-12-08T01:05:52.975925759Z", "latency": 10_258_972, "status": "OK"},
        {"timestamp": "2026-12-08T01:05:53.475925759Z", "latency": 2_000_000,
         "status": "ResourceExhausted", "error": "shed"},
        {"timestamp": "2026-12-08T01:05:54.000000001+00:00", "latency": 1_500_000,
         "status": "DeadlineExceeded"},
    ]}  # fmt: skip
    ghz.to_samples(probe, report, tmp_path, elapsed_s=2.1)
    with (tmp_path / "samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["t_s"], r["latency_ms"], r["code"]) for r in rows] == [
        ("0.0000", "10.259", "OK"),
        ("0.5000", "2.000", "RESOURCE_EXHAUSTED"),
        ("1.0241", "1.500", "DEADLINE_EXCEEDED"),
    ]
    assert {r["name"] for r in rows} == {"ExperimentService/Assign"}
    with pytest.raises(ghz.GhzError, match="no calls"):
        ghz.to_samples(probe, {"details": []}, tmp_path, elapsed_s=1)


def test_a_missing_ghz_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("GOBIN", str(tmp_path))
    with pytest.raises(ghz.GhzError, match=r"deploy/local/install\.sh ghz"):
        ghz.find_ghz()
