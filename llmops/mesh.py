"""The mesh's services, as discovered from their plug-ins (see :mod:`llmops.plugin`).

This is the one place the runtime learns which services exist; the CLI, the config
defaults, the status command and the typed clients all read it. Nothing here names a
service: adding one is a plug-in entry point, not an edit of the runtime.
"""

from __future__ import annotations

from llmops.plugin import ADMIN_SERVICE, PROTO_PACKAGE, ServicePlugin, discover

SERVICES: dict[str, ServicePlugin] = discover()
"""Installed services by name, ordered by default port."""

__all__ = ["ADMIN_SERVICE", "PROTO_PACKAGE", "SERVICES", "ServicePlugin"]
