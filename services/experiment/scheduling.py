"""The experiment service's scheduled work, run by the runtime's scheduler (``tasks``):

- ``refresh``: follow other replicas' changes (poll the store's revision);
- ``end_time``: stop running experiments whose ``end_time`` has passed;
- ``bandits``: re-weight the running bandits that are due, by Thompson sampling.

Changes made here are audited as ``system:experiments`` (:func:`llmops.identity.system`).
A failing run is logged and counted by the scheduler and tried again next interval.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog

from llmops.errors import Aborted
from llmops.scheduler import Periodic, Task
from llmops.v1 import experiment_pb2
from services.experiment import model, stats
from services.experiment.catalog import Catalog
from services.experiment.lifecycle import SYSTEM, Change, Lifecycle

log = structlog.get_logger("llmops.experiment")

RewardSource = Callable[
    [experiment_pb2.Experiment], Awaitable[tuple[dict[str, int], dict[str, int]]]
]
"""(successes, trials) per arm of a bandit (``Analysis.bandit_rewards``)."""


class Schedule:
    def __init__(
        self,
        catalog: Catalog,
        lifecycle: Lifecycle,
        rewards: RewardSource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.lifecycle = lifecycle
        self.rewards = rewards
        self._clock = clock

    def tasks(self, reload_interval_s: float, check_interval_s: float) -> list[Task]:
        """The periodic tasks (an interval of 0 disables one)."""
        return [
            Periodic("refresh", reload_interval_s, self.refresh),
            Periodic("end_time", check_interval_s, self.expire),
            Periodic("bandits", check_interval_s, self.reweight),
        ]

    async def refresh(self) -> None:
        if await self.catalog.refresh():
            log.info("experiments_reloaded", revision=self.catalog.snapshot.revision)

    async def expire(self) -> None:
        stopped = await self.stop_expired()
        if stopped:
            log.info("experiments_ended", experiments=stopped)

    async def reweight(self) -> None:
        updated = await self.update_bandits()
        if updated:
            log.info("bandits_reweighted", experiments=updated)

    async def stop_expired(self) -> list[str]:
        """Stop every running experiment whose ``end_time`` has passed; the ids stopped."""
        now_us = int(self._clock() * 1e6)
        stopped = []
        for exp in list(self.catalog.snapshot.experiments.values()):
            if exp.status != model.RUNNING or not exp.HasField("end_time"):
                continue
            if exp.end_time.ToMicroseconds() > now_us:
                continue
            change = Change(reason="end_time reached", actor=SYSTEM)
            try:
                await self.lifecycle.transition(exp.id, exp.version, model.STOPPED, change)
            except Aborted:
                continue  # another replica (or an operator) got there first
            stopped.append(exp.id)
        return stopped

    async def update_bandits(self, *, seed: int | None = None) -> list[str]:
        """Recompute the weights of every running bandit that is due (``update_interval``,
        default 1 h, since its last change) by Thompson sampling on (successes, trials) per
        arm; the ids updated. A replica that loses the race to another (ABORTED) skips: the
        other one did the update."""
        now = self._clock()
        done = []
        for exp in list(self.catalog.snapshot.experiments.values()):
            if exp.type != model.BANDIT or exp.status != model.RUNNING:
                continue
            interval = exp.bandit.update_interval.ToSeconds() or 3600
            if now - exp.update_time.ToNanoseconds() / 1e9 < interval:
                continue
            successes, trials = await self.rewards(exp)
            weights = stats.thompson_weights(
                successes, trials, min_weight_bps=exp.bandit.min_weight_bps, seed=seed
            )
            change = Change(reason="thompson sampling", actor=SYSTEM)
            try:
                await self.lifecycle.reweight(exp.id, weights, change)
            except Aborted:
                continue
            done.append(exp.id)
        return done
