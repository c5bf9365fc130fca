"""The operations routes: ``GET /v1/models``, ``GET /healthz``, ``GET /readyz`` (each probe
also on HEAD) and ``GET /metrics``. None does model work, so probes answer at once, even
while the models load.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ...runtime.errors import NotReadyError
from ..errors import error_response
from ..openapi import HEALTHZ_RESPONSES, METRICS_RESPONSES, MODELS_RESPONSES, READYZ_RESPONSES
from ..state import ApiState

router = APIRouter()


@router.get("/v1/models", summary="Served quality levels and their state", responses=MODELS_RESPONSES)
async def models(request: Request) -> dict[str, Any]:
    pool = ApiState.of(request).pool
    return {
        "default_quality": pool.default_quality,
        "max_effort": pool.settings.max_effort,
        "qualities": pool.qualities,
        "devices": [str(d) for d in pool.devices],
        "max_batch_size": pool.max_batch_size,
        "ready": pool.ready,
        "models": pool.models_info(),
    }


# response_model=None: the answer is either a dict or an error response (no model to infer)
@router.get(
    "/healthz",
    summary="Liveness: the process and its workers are alive",
    responses=HEALTHZ_RESPONSES,
    response_model=None,
)
async def healthz(request: Request) -> dict[str, str] | JSONResponse:
    problem = ApiState.of(request).pool.alive_problem()
    if problem:
        return error_response(503, "unhealthy", problem)
    return {"status": "ok"}


@router.get(
    "/readyz", summary="Readiness: every model loaded and warmed up", responses=READYZ_RESPONSES, response_model=None
)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    pool = ApiState.of(request).pool
    if pool.ready:
        return {"status": "ready", "models_loaded": sum(len(w.slots) for w in pool.workers)}
    reason = pool.not_ready_reason() or "not ready"
    return error_response(503, "not_ready", reason, {"Retry-After": str(NotReadyError.default_retry_after)})


# HEAD on the probes (some load balancers and uptime checkers send HEAD): the same
# status; the server drops the body. Kept out of the schema, which documents bodies.
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False, response_model=None)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses=METRICS_RESPONSES)
async def metrics_endpoint(request: Request) -> Response:
    metrics = ApiState.of(request).metrics
    return Response(metrics.render(), media_type=metrics.content_type)
