"""gRPC servicers of the experiment service: protobuf in, domain call, protobuf out.

Nothing is decided here. Experiments and layers cross as their protobuf messages, which
are the stored configuration model (:mod:`services.experiment.store`); requests become
domain queries (:class:`AssignQuery`, :class:`ResultsQuery`, :class:`Change`) and domain
results become responses.
"""

from __future__ import annotations

import functools
from typing import Any

from llmops.server import paginate
from llmops.v1 import common_pb2, experiment_pb2, experiment_pb2_grpc
from services.experiment import model
from services.experiment.assignment import Assigned, Assigner, AssignQuery
from services.experiment.catalog import Catalog
from services.experiment.lifecycle import Change, Lifecycle
from services.experiment.results import Analysis, Results, ResultsQuery
from services.experiment.targeting import context_from_request

_SRM_VERDICTS = {
    "PASS": experiment_pb2.SRM_VERDICT_PASS,
    "MISMATCH": experiment_pb2.SRM_VERDICT_MISMATCH,
    "INSUFFICIENT_DATA": experiment_pb2.SRM_VERDICT_INSUFFICIENT_DATA,
}


def assign_query(request: experiment_pb2.AssignRequest) -> AssignQuery:
    ctx = request.context
    query = AssignQuery(
        unit_type=request.unit_type,
        unit_id=request.unit_id,
        layers=request.layers,
        experiment_ids=request.experiment_ids,
        log_exposure=not request.skip_exposure,
        targeting=functools.partial(context_from_request, ctx, request.attributes),
    )
    if query.log_exposure:  # what exposure events carry (read only when they are logged)
        query.request_id, query.tenant = ctx.request_id, ctx.tenant
        query.market, query.device = ctx.market, ctx.device
    return query


def assign_response(assigned: list[Assigned]) -> experiment_pb2.AssignResponse:
    response = experiment_pb2.AssignResponse()
    for a in assigned:
        entry = response.assignments.add()
        entry.CopyFrom(a.experiment.templates[a.variant])
        entry.bucket = a.bucket
        entry.reason = a.reason
        entry.exposure_id = a.exposure_id
    return response


def results_query(request: experiment_pb2.GetResultsRequest) -> ResultsQuery:
    window = request.window
    return ResultsQuery(
        experiment_id=request.experiment_id,
        metrics=tuple(request.metrics),
        start_s=window.start_time.ToMicroseconds() / 1e6 if window.HasField("start_time") else None,
        end_s=window.end_time.ToMicroseconds() / 1e6 if window.HasField("end_time") else None,
        confidence_level=request.confidence_level,
    )


def results_response(results: Results) -> experiment_pb2.GetResultsResponse:
    response = experiment_pb2.GetResultsResponse(
        experiment_id=results.experiment_id, experiment_version=results.experiment_version
    )
    response.window.start_time.FromMicroseconds(int(results.start_s * 1e6))
    response.window.end_time.FromMicroseconds(int(results.end_s * 1e6))
    for v in results.variants:
        vs = response.variants.add(
            variant=v.variant, is_control=v.is_control, units=v.units, exposures=v.exposures
        )
        for m in v.metrics:
            mom = m.moments
            vs.metrics.add(
                metric=m.metric, count=mom.n, mean=mom.mean, variance=mom.variance, sum=mom.sum
            )
    for c in results.comparisons:
        r = c.result
        comparison = response.comparisons.add(
            metric=c.metric,
            control=c.control,
            treatment=c.treatment,
            absolute_difference=r.absolute_difference,
            relative_difference=r.relative_difference,
            p_value=r.p_value,
            significant=r.significant,
        )
        comparison.absolute_ci.lower, comparison.absolute_ci.upper = r.abs_ci
        comparison.absolute_ci.level = r.level
        comparison.relative_ci.lower, comparison.relative_ci.upper = r.rel_ci
        comparison.relative_ci.level = r.level
    srm = results.srm
    response.srm.verdict = _SRM_VERDICTS[str(srm.result.verdict)]
    response.srm.chi_square = srm.result.chi_square
    response.srm.p_value = srm.result.p_value
    response.srm.threshold = srm.threshold
    response.srm.expected_shares.update(srm.expected_shares)
    response.srm.observed_units.update(srm.observed_units)
    response.compute_time.FromMicroseconds(int(results.computed_s * 1e6))
    return response


def _change(context: common_pb2.RequestContext, reason: str = "") -> Change:
    return Change(tenant=context.tenant, reason=reason)


class ExperimentServicer(experiment_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, catalog: Catalog, assigner: Assigner, analysis: Analysis) -> None:
        self.catalog = catalog
        self.assigner = assigner
        self.analysis = analysis

    async def Assign(
        self, request: experiment_pb2.AssignRequest, context: Any
    ) -> experiment_pb2.AssignResponse:
        return assign_response(await self.assigner.assign(assign_query(request)))

    async def GetExperiment(
        self, request: experiment_pb2.GetExperimentRequest, context: Any
    ) -> experiment_pb2.GetExperimentResponse:
        return experiment_pb2.GetExperimentResponse(experiment=self.catalog.experiment(request.id))

    async def GetResults(
        self, request: experiment_pb2.GetResultsRequest, context: Any
    ) -> experiment_pb2.GetResultsResponse:
        return results_response(await self.analysis.results(results_query(request)))


class ExperimentAdminServicer(experiment_pb2_grpc.ExperimentAdminServiceServicer):
    def __init__(self, catalog: Catalog, lifecycle: Lifecycle) -> None:
        self.catalog = catalog
        self.lifecycle = lifecycle

    async def CreateExperiment(
        self, request: experiment_pb2.CreateExperimentRequest, context: Any
    ) -> experiment_pb2.CreateExperimentResponse:
        exp = await self.lifecycle.create(request.experiment, _change(request.context))
        return experiment_pb2.CreateExperimentResponse(experiment=exp)

    async def UpdateExperiment(
        self, request: experiment_pb2.UpdateExperimentRequest, context: Any
    ) -> experiment_pb2.UpdateExperimentResponse:
        exp = await self.lifecycle.update(
            request.experiment, list(request.update_mask.paths), _change(request.context)
        )
        return experiment_pb2.UpdateExperimentResponse(experiment=exp)

    async def StartExperiment(
        self, request: experiment_pb2.StartExperimentRequest, context: Any
    ) -> experiment_pb2.StartExperimentResponse:
        exp = await self.lifecycle.transition(
            request.id, request.version, model.RUNNING, _change(request.context)
        )
        return experiment_pb2.StartExperimentResponse(experiment=exp)

    async def StopExperiment(
        self, request: experiment_pb2.StopExperimentRequest, context: Any
    ) -> experiment_pb2.StopExperimentResponse:
        exp = await self.lifecycle.transition(
            request.id, request.version, model.STOPPED, _change(request.context, request.reason)
        )
        return experiment_pb2.StopExperimentResponse(experiment=exp)

    async def ArchiveExperiment(
        self, request: experiment_pb2.ArchiveExperimentRequest, context: Any
    ) -> experiment_pb2.ArchiveExperimentResponse:
        exp = await self.lifecycle.transition(
            request.id, request.version, model.ARCHIVED, _change(request.context)
        )
        return experiment_pb2.ArchiveExperimentResponse(experiment=exp)

    async def ListExperiments(
        self, request: experiment_pb2.ListExperimentsRequest, context: Any
    ) -> experiment_pb2.ListExperimentsResponse:
        items = self.catalog.experiments(set(request.statuses), request.layer)
        page, token = paginate(items, request.page_size, request.page_token)
        return experiment_pb2.ListExperimentsResponse(experiments=page, next_page_token=token)

    async def CreateLayer(
        self, request: experiment_pb2.CreateLayerRequest, context: Any
    ) -> experiment_pb2.CreateLayerResponse:
        layer = await self.lifecycle.create_layer(request.layer, _change(request.context))
        return experiment_pb2.CreateLayerResponse(layer=layer)

    async def ListLayers(
        self, request: experiment_pb2.ListLayersRequest, context: Any
    ) -> experiment_pb2.ListLayersResponse:
        page, token = paginate(self.catalog.layers(), request.page_size, request.page_token)
        return experiment_pb2.ListLayersResponse(layers=page, next_page_token=token)
