"""The baseline: the plain FastAPI app a user would write by hand around the same predict.

The model is imported in-process and called straight from an ``async def`` route on raw JSON
(no pydantic body model, no thread pool hop): the leanest honest FastAPI serving, so mlbuild is
compared against a strong baseline, not a straw man. Configured by environment variables:
BENCH_MODEL_DIR (the model directory) and BENCH_ENTRYPOINT ("module:attr", optional; default
rule as mlbuild's: module ``predict``, class ``Model`` if it has one, else function ``predict``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


def _load_predict():
    model_dir = os.path.abspath(os.environ["BENCH_MODEL_DIR"])
    sys.path.insert(0, model_dir)
    os.chdir(model_dir)
    module_name, _, attr = (os.environ.get("BENCH_ENTRYPOINT") or "predict").partition(":")
    module = importlib.import_module(module_name)
    if not attr:
        attr = "Model" if inspect.isclass(getattr(module, "Model", None)) else "predict"
    target = getattr(module, attr)
    if inspect.isclass(target):
        instance = target()
        if callable(getattr(instance, "load", None)):
            instance.load()
        return instance.predict
    return target


predict = _load_predict()
app = FastAPI()


@app.post("/predict")
async def predict_route(request: Request) -> Response:
    try:
        x = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": "invalid JSON"}, status_code=422)
    return Response(json.dumps(predict(x)), media_type="application/json")


@app.get("/health/ready")
async def ready() -> JSONResponse:
    return JSONResponse({"status": "ready"})
