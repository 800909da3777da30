"""LiteLLM side of `llmops bench inference`: the LiteLLM proxy in front of the same upstream.

LiteLLM is not a dependency of this project (``litellm[proxy]`` pins its own web stack), so
it lives in a venv of its own (:mod:`benchmarks.baseline`, ``.llmops/bench/litellm-venv``),
created on first use with one exactly pinned requirement. Unlike the other baselines it needs
no harness script: the bench starts the venv's ``litellm`` CLI (the proxy server, one uvicorn
worker) as a process of its own on 127.0.0.1 and calls it over HTTP with aiohttp from our
venv, exactly as it calls the upstream directly — so only the proxy itself differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.baseline import Baseline

# The issue names 1.110.2, but its `proxy` extra cannot be installed from the package index
# the bench machines use: 1.110.x needs `litellm-proxy==<same version>` (not published there),
# 1.109.x and 1.108.10-13 need `litellm-proxy-extras` / `litellm-enterprise` post-releases
# that are missing too. 1.108.7 is the newest `litellm[proxy]` that installs on Python 3.11
# here. Pinned exactly so that the baseline numbers are comparable run to run; bump
# deliberately (the venv is rebuilt when its marker does not match `version`).
LITELLM_VERSION = "1.108.7"
LITELLM = Baseline(
    name="litellm",
    requirement=f"litellm[proxy]=={LITELLM_VERSION}",
    version=LITELLM_VERSION,
    probe="from importlib.metadata import version; print(version('litellm'))",
    # Baseline.run is not used (see the module docstring): the proxy is a process the bench
    # starts itself; this module stands in for the harness only to fill the field.
    harness=Path(__file__).resolve(),
    install_timeout_s=900,
)


def litellm_command(python: Path, config: Path, port: int) -> list[str]:
    """The proxy's command line: the ``litellm`` console script next to the venv's python,
    on 127.0.0.1:``port``, one worker, models from ``config``."""
    return [
        str(python.with_name("litellm")),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def ensure_litellm(log: Callable[[str], None]) -> Path:
    """The litellm venv's python (created on first use). RuntimeError when it cannot be."""
    return LITELLM.ensure_venv(log)
