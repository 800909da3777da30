"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they do catch a
forbidden import: the same contracts run over a small tree with deliberately bad imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _contracts() -> str:
    text = (REPO / "pyproject.toml").read_text()
    start = text.index("[tool.importlinter]")
    end = text.index("\n[", text.index("[[tool.importlinter.contracts]]", start))
    # every later contract table too, up to the next non-importlinter table
    while text.startswith("[[tool.importlinter.contracts]]", end + 1):
        end = text.index("\n[", end + 1)
    return text[start:end] + "\n"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    (root / "pyproject.toml").write_text(_contracts())


def test_repository_keeps_its_import_contracts() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_contracts_fail_on_forbidden_imports(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "llmops/__init__.py": "",
            "llmops/runtime.py": "import services.alpha.domain\n",  # runtime -> service
            "services/__init__.py": "",
            "services/alpha/__init__.py": "",
            "services/alpha/domain.py": "",
            "services/beta/__init__.py": "",
            "services/beta/domain.py": "from services.alpha import domain\n",  # service -> service
            "benchmarks/__init__.py": "",
            "tests/__init__.py": "",
        },
    )
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "The runtime (llmops) never imports a service" in result.stdout
    assert "No service imports another service" in result.stdout
    assert "2 broken" in result.stdout
    assert "llmops.runtime -> services.alpha.domain" in result.stdout
    assert "services.beta.domain -> services.alpha" in result.stdout


def test_contracts_allow_benchmarks_and_tests_to_import_anything(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "llmops/__init__.py": "",
            "services/__init__.py": "",
            "services/alpha/__init__.py": "import llmops\n",
            "benchmarks/__init__.py": "import services.alpha\nimport llmops\n",
            "tests/__init__.py": "import services.alpha\nimport benchmarks\n",
        },
    )
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
