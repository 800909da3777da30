"""gRPC servicers of the experiment service: protobuf in, domain call, protobuf out."""

from __future__ import annotations

import asyncio
from typing import Any

from llmops.server import paginate
from llmops.v1 import experiment_pb2, experiment_pb2_grpc
from services.experiment import model, results
from services.experiment.domain import Experiments


class ExperimentServicer(experiment_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, experiments: Experiments) -> None:
        self.experiments = experiments

    async def Assign(
        self, request: experiment_pb2.AssignRequest, context: Any
    ) -> experiment_pb2.AssignResponse:
        return await self.experiments.assign(request)

    async def GetExperiment(
        self, request: experiment_pb2.GetExperimentRequest, context: Any
    ) -> experiment_pb2.GetExperimentResponse:
        return experiment_pb2.GetExperimentResponse(experiment=self.experiments.get(request.id))

    async def GetResults(
        self, request: experiment_pb2.GetResultsRequest, context: Any
    ) -> experiment_pb2.GetResultsResponse:
        exp = self.experiments.get(request.experiment_id)
        store = self.experiments.clickhouse()
        return await asyncio.to_thread(results.compute, store, exp, request)


class ExperimentAdminServicer(experiment_pb2_grpc.ExperimentAdminServiceServicer):
    def __init__(self, experiments: Experiments) -> None:
        self.experiments = experiments

    async def CreateExperiment(
        self, request: experiment_pb2.CreateExperimentRequest, context: Any
    ) -> experiment_pb2.CreateExperimentResponse:
        exp = await self.experiments.create(request.experiment, request.context)
        return experiment_pb2.CreateExperimentResponse(experiment=exp)

    async def UpdateExperiment(
        self, request: experiment_pb2.UpdateExperimentRequest, context: Any
    ) -> experiment_pb2.UpdateExperimentResponse:
        exp = await self.experiments.update(
            request.experiment, list(request.update_mask.paths), request.context
        )
        return experiment_pb2.UpdateExperimentResponse(experiment=exp)

    async def StartExperiment(
        self, request: experiment_pb2.StartExperimentRequest, context: Any
    ) -> experiment_pb2.StartExperimentResponse:
        exp = await self.experiments.transition(
            request.id, request.version, model.RUNNING, request.context
        )
        return experiment_pb2.StartExperimentResponse(experiment=exp)

    async def StopExperiment(
        self, request: experiment_pb2.StopExperimentRequest, context: Any
    ) -> experiment_pb2.StopExperimentResponse:
        exp = await self.experiments.transition(
            request.id, request.version, model.STOPPED, request.context, request.reason
        )
        return experiment_pb2.StopExperimentResponse(experiment=exp)

    async def ArchiveExperiment(
        self, request: experiment_pb2.ArchiveExperimentRequest, context: Any
    ) -> experiment_pb2.ArchiveExperimentResponse:
        exp = await self.experiments.transition(
            request.id, request.version, model.ARCHIVED, request.context
        )
        return experiment_pb2.ArchiveExperimentResponse(experiment=exp)

    async def ListExperiments(
        self, request: experiment_pb2.ListExperimentsRequest, context: Any
    ) -> experiment_pb2.ListExperimentsResponse:
        items = self.experiments.list_experiments(list(request.statuses), request.layer)
        page, token = paginate(items, request.page_size, request.page_token)
        return experiment_pb2.ListExperimentsResponse(experiments=page, next_page_token=token)

    async def CreateLayer(
        self, request: experiment_pb2.CreateLayerRequest, context: Any
    ) -> experiment_pb2.CreateLayerResponse:
        layer = await self.experiments.create_layer(request.layer, request.context)
        return experiment_pb2.CreateLayerResponse(layer=layer)

    async def ListLayers(
        self, request: experiment_pb2.ListLayersRequest, context: Any
    ) -> experiment_pb2.ListLayersResponse:
        layers = [layer for _, layer in sorted(self.experiments.snapshot.layers.items())]
        page, token = paginate(layers, request.page_size, request.page_token)
        return experiment_pb2.ListLayersResponse(layers=page, next_page_token=token)
