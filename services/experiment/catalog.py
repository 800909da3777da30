"""The configuration in force: the compiled snapshot of the config store, and reads of it.

Assignment reads :attr:`Catalog.snapshot` (one attribute read, no I/O); the lifecycle
writes through the store and refreshes at once; the scheduler's refresh task picks up the
writes of other replicas by polling the store's revision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from llmops.errors import InvalidArgument, NotFound
from llmops.v1 import experiment_pb2
from services.experiment import model
from services.experiment.store import ConfigStore


class Catalog:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.snapshot = model.build_snapshot(0, {}, {})
        self._loaded = False
        self._refresh_lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Reload from the store if its revision moved; True when a new snapshot is in force.
        Serialized, so a slow reload never replaces a newer snapshot with an older one."""
        async with self._refresh_lock:
            revision = await self.store.revision()
            if self._loaded and revision == self.snapshot.revision:
                return False
            stored = await self.store.load()
            self.snapshot = model.build_snapshot(stored.revision, stored.layers, stored.experiments)
            self._loaded = True
            return True

    @property
    def empty(self) -> bool:
        """No layer and no experiment (a fresh store)."""
        return not self.snapshot.layers and not self.snapshot.experiments

    def experiment(self, exp_id: str) -> experiment_pb2.Experiment:
        if not exp_id:
            raise InvalidArgument("id", "required")
        found = self.snapshot.experiments.get(exp_id)
        if found is None:
            raise NotFound(f"experiment {exp_id!r} does not exist")
        return found

    def experiments(self, statuses: Collection[int], layer: str) -> list[experiment_pb2.Experiment]:
        """Experiments by id, those with one of ``statuses`` (all when empty) in ``layer``
        (all when empty)."""
        if layer and layer not in self.snapshot.layers:
            raise InvalidArgument("layer", f"unknown layer {layer!r}")
        return [
            e
            for _, e in sorted(self.snapshot.experiments.items())
            if (not statuses or e.status in statuses) and (not layer or e.layer == layer)
        ]

    def layers(self) -> list[experiment_pb2.Layer]:
        return [layer for _, layer in sorted(self.snapshot.layers.items())]
