"""`llmops features materialize`: Materialize in slices, with a progress bar."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime

import click

from llmops.clients import MeshClient
from llmops.config import MeshConfig
from llmops.v1 import feature_pb2, feature_pb2_grpc

_STEP = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _step_us(text: str) -> int:
    match = _STEP.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"--step {text!r}: use e.g. 6h, 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)] * 1_000_000


async def run_materialize(
    config: MeshConfig, views: list[str], start: str | None, end: str | None, step: str
) -> None:
    step_us = _step_us(step)
    end_us = int(_parse_time(end).timestamp() * 1e6) if end else None
    async with MeshClient(config, default_timeout_s=600) as mesh:
        if not views:
            listed = await mesh.stub(feature_pb2_grpc.FeatureAdminServiceStub).ListFeatureViews(
                feature_pb2.ListFeatureViewsRequest()
            )
            views = [v.name for v in listed.feature_views if v.online]
        fresh = await mesh.stub(feature_pb2_grpc.FeatureAdminServiceStub).GetFreshness(
            feature_pb2.GetFreshnessRequest(feature_views=views)
        )
        now_us = end_us or int(datetime.now(UTC).timestamp() * 1e6)
        for f in fresh.views:
            if start:
                begin = int(_parse_time(start).timestamp() * 1e6)
            elif f.HasField("materialized_until"):
                begin = f.materialized_until.ToMicroseconds()
            else:
                begin = now_us - 30 * 86_400_000_000  # first run: the last 30 days
            slices = list(range(begin, now_us, step_us)) or [now_us]
            total = 0
            with click.progressbar(
                slices, label=f"{f.feature_view:<20}", file=sys.stderr, show_pos=True
            ) as bar:
                for lo in bar:
                    request = feature_pb2.MaterializeRequest(feature_views=[f.feature_view])
                    request.window.start_time.FromMicroseconds(lo)
                    request.window.end_time.FromMicroseconds(min(lo + step_us, now_us))
                    reply = await mesh.stub(feature_pb2_grpc.FeatureServiceStub).Materialize(
                        request
                    )
                    total += sum(r.rows_written for r in reply.results)
            click.echo(f"{f.feature_view}: {total:,} keys written, watermark "
                       f"{datetime.fromtimestamp(now_us / 1e6, UTC).isoformat()}")  # fmt: skip
