"""What the inference service serves: routes and tasks, loaded and reloaded together (a
task's model step must name a route of the same revision)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.inference.routes import RouteError, RouteTable, load_routes
from services.inference.tasks import ModelStep, RankStep, TaskError, TaskTable, load_tasks


@dataclass(frozen=True, slots=True)
class Serving:
    routes: RouteTable
    tasks: TaskTable

    @property
    def revision(self) -> str:
        both = f"{self.routes.revision}:{self.tasks.revision}".encode()
        return hashlib.sha256(both).hexdigest()[:12]


def load_serving(route_paths: Sequence[Path], task_paths: Sequence[Path]) -> Serving:
    routes = load_routes(route_paths)
    tasks = load_tasks(task_paths) if task_paths else TaskTable({}, "")
    for task in tasks.tasks.values():
        for i, step in enumerate(task.spec.steps):
            s = step.settings
            if not isinstance(s, ModelStep | RankStep):
                continue
            where = f"{task.source}: tasks[{task.spec.name}].steps[{i}].{step.kind}.route"
            route = routes.routes.get(s.route)
            if route is None:
                raise TaskError(where, f"no route {s.route!r} (routes: {sorted(routes.routes)})")
            ranks = routes.engines[route.targets[0].engine].backend == "onnx"
            if ranks != isinstance(s, RankStep):
                raise TaskError(
                    where,
                    f"route {s.route!r} "
                    + ("scores candidates: use it in a rank step" if ranks
                       else "generates text: a rank step needs an onnx route"),
                )  # fmt: skip
    return Serving(routes, tasks)


__all__ = ["RouteError", "Serving", "TaskError", "load_serving"]
