"""The FastAPI app: /predict (raw bytes in, raw bytes out) over a worker pool, plus health,
metadata, metrics and the model's OpenAPI schema.

The server never parses a request body: the worker validates it once, in the model's own
environment. /predict is a raw route (Request -> Response; the middleware calls the same handler
as plain ASGI for speed, see _predict.py) and its OpenAPI description comes
from the worker's HELLO schemas via ``openapi_extra``, filled in once the first worker says
HELLO (until then /openapi.json describes the routes without the model's schema).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ._budget import BodyBudget
from ._health import Health
from ._metrics import Metrics
from ._middleware import ObserveMiddleware
from ._pool import Pool, WorkerPool
from ._predict import PredictHandler
from ._settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("mlbuild.runtime")

_ERROR_RESPONSES = {
    "413": {"description": "Request body larger than the server's limit"},
    "415": {"description": "Content-Type is neither application/json nor application/*+json (none is fine)"},
    "422": {"description": "The body is not valid JSON, nests deeper than the limit, or does not match the input schema"},
    "500": {"description": "predict() raised (the traceback is in the server log), or its answer was larger than the limit"},
    "503": {"description": "No worker is ready (loading, failed, or it died during the request)"},
    "504": {"description": "predict() ran past the timeout; the worker was replaced"},
}


class _ModelServerApp(FastAPI):
    """FastAPI, except that ``POST`` to a predict path goes straight to the observed raw
    handler: FastAPI's own middleware stack (error, telemetry, body-limit wrappers, router)
    costs more per trivial request than the whole hop to the worker. Everything else, and the
    OpenAPI description of /predict, is plain FastAPI."""

    fast_post: dict = {}
    observed_fast_path = None

    async def __call__(self, scope, receive, send) -> None:
        fast = self.observed_fast_path
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.fast_post:
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, pool: Pool | None = None) -> FastAPI:
    """The ASGI app. ``pool`` defaults to a WorkerPool of ``settings.workers`` real workers;
    its lifecycle (start, graceful stop) follows the app's lifespan."""
    pool = WorkerPool(settings) if pool is None else pool
    metrics = Metrics(pool)
    stop_timeout = max(1.0, min(settings.grace_period, 10.0))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info(
            "starting",
            extra={"fields": {"model_dir": str(settings.model_dir), "python": settings.python,
                              "workers": settings.workers, "port": settings.port}},
        )  # fmt: skip
        await pool.start()
        try:
            yield
        finally:
            log.info("stopping workers")
            await pool.stop(stop_timeout)

    app = _ModelServerApp(
        title=settings.model_name or "model",
        version=settings.model_version or "0",
        description="Model served by mlbuild. POST a JSON body to /predict.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.metrics = metrics

    # One budget of request-body bytes for the whole server, shared by every predict door
    # (one handler serves them all), exported and counted in /metrics.
    predictor = PredictHandler(pool, settings.max_body_size, BodyBudget(settings.max_body_bytes_in_flight))
    metrics.watch_body_budget(predictor.budget)

    predict_paths = ["/predict", "/invocations"]
    if settings.predict_route and settings.predict_route not in predict_paths:
        predict_paths.append(settings.predict_route)
    for path in predict_paths:
        app.add_api_route(
            path,
            predictor.endpoint,
            methods=["POST"],
            include_in_schema=path == "/predict",
            name="predict" if path == "/predict" else f"predict_alias_{len(app.routes)}",
            summary="Run the model on one JSON input",
            openapi_extra=_predict_openapi(None),
        )
    predict_route = next(r for r in app.routes if getattr(r, "path", None) == "/predict")

    async def live() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready() -> JSONResponse:
        report = pool.health()
        body = {
            "status": report.status.value,
            "reason": report.reason,
            "workers": {"ready": report.ready_workers, "total": report.total_workers},
        }
        return JSONResponse(body, status_code=200 if report.status is Health.READY else 503)

    app.add_api_route("/health/live", live, methods=["GET"], summary="200 while the server runs")
    app.add_api_route("/health/ready", ready, methods=["GET"], summary="200 when every worker is ready")
    app.add_api_route("/ping", ready, methods=["GET"], include_in_schema=False)  # SageMaker
    if settings.health_route and settings.health_route not in ("/health/ready", "/ping", "/health/live"):
        app.add_api_route(settings.health_route, ready, methods=["GET"], include_in_schema=False)  # Vertex AI

    async def metadata() -> JSONResponse:
        hello = pool.hello or {}
        return JSONResponse(
            {
                "name": settings.model_name,
                "version": settings.model_version,
                "entrypoint": hello.get("entrypoint") or settings.entrypoint,
                "python": hello.get("python"),
                "lock_digest": settings.lock_digest,
                "input_schema": hello.get("input_schema"),
                "output_schema": hello.get("output_schema"),
                "workers": settings.workers,
                "runtime": {"version": __version__, "python": platform.python_version()},
            }
        )

    app.add_api_route("/metadata", metadata, methods=["GET"], summary="Model name, version, schemas")

    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics_route, methods=["GET"], include_in_schema=False)

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        hello = pool.hello
        predict_route.openapi_extra = _predict_openapi(hello)
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        if hello is not None:
            _hoist_model_schemas(schema, hello)
            app.openapi_schema = schema  # final only once the model's schema is known
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    routes = {path: path for path in predict_paths}
    routes.update({r.path: r.path for r in app.routes if hasattr(r, "path")})
    # POST to a predict path goes straight to the raw ASGI handler, observed (request id,
    # metrics, access log) by the same middleware that wraps every other route.
    fast = {path: predictor for path in predict_paths}
    app.fast_post = fast
    app.observed_fast_path = ObserveMiddleware(
        None, metrics=metrics, routes=routes, fast_post=fast, access_log=settings.access_log
    )
    app.add_middleware(ObserveMiddleware, metrics=metrics, routes=routes, access_log=settings.access_log)
    return app


# --- OpenAPI -----------------------------------------------------------------------------


def _predict_openapi(hello: dict | None) -> dict:
    if hello is None:
        input_schema: dict = {}
        output_schema: dict = {}
    else:
        input_schema = {"$ref": "#/components/schemas/PredictInput"}
        output_schema = {"$ref": "#/components/schemas/PredictOutput"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": input_schema}}},
        "responses": {
            "200": {"description": "The model's output", "content": {"application/json": {"schema": output_schema}}},
            **_ERROR_RESPONSES,
        },
    }


def _hoist_model_schemas(openapi: dict, hello: dict) -> None:
    """Put the worker's input/output schemas under components/schemas (PredictInput,
    PredictOutput) and their ``$defs`` beside them, rewriting ``#/$defs/X`` references: inside
    an OpenAPI document ``#`` is the document root, where ``$defs`` does not exist."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, key in (("PredictInput", "input_schema"), ("PredictOutput", "output_schema")):
        schema = copy.deepcopy(hello.get(key) or {})
        if not isinstance(schema, dict):
            schema = {}
        defs = {**schema.pop("definitions", {}), **schema.pop("$defs", {})}
        renames = {}
        for def_name, def_schema in defs.items():
            target = def_name
            while target in components and components[target] != def_schema:
                target = f"{name}{target}"
            renames[def_name] = target
        for def_name, def_schema in defs.items():
            components[renames[def_name]] = _rewrite_refs(def_schema, renames)
        components[name] = _rewrite_refs(schema, renames)


def _rewrite_refs(node, renames: dict[str, str]):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                for prefix in ("#/$defs/", "#/definitions/"):
                    if value.startswith(prefix):
                        target = value[len(prefix):]
                        value = f"#/components/schemas/{renames.get(target, target)}"
                out[key] = value
            else:
                out[key] = _rewrite_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node
