"""The base of every settings model: the runtime's sections and each service's own.

A service declares its settings beside its code (``services/<name>/settings.py``) as a
subclass of :class:`Settings`; the runtime adds it to the mesh config under the service's
``settings_key`` (see :mod:`llmops.plugin`). Unknown keys are rejected, values are frozen
after start-up, and every field carries a ``description`` (the docs are built from them).
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict

T = TypeVar("T", bound=str)


class Settings(BaseModel):
    """Strict, frozen, validated at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def by_mode(value: T | Literal["auto"], mode: str, embedded: T, production: T) -> T:
    """Resolve an ``auto`` backend choice: ``embedded`` in embedded mode, else ``production``."""
    if value != "auto":
        return value
    return embedded if mode == "embedded" else production


def _on_off(value: object) -> object:
    # YAML (a config file, an environment value) reads a bare on/off as a boolean.
    return ("on" if value else "off") if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)]
"""A feature that is ``on``, ``off``, or ``auto`` (decided by the mode, see :func:`switched_on`)."""


def switched_on(value: str, auto: bool) -> bool:
    """A :data:`Switch`'s state, where ``auto`` is decided by the caller (e.g. by the mode)."""
    return value == "on" or (value == "auto" and auto)
