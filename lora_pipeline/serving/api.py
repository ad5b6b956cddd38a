"""The prediction API (`lora-pipeline serve`): FastAPI over :class:`ChampionService`.

    GET  /health     liveness + how many domains are served (no API key needed)
    GET  /adapters   every domain: champion version, labels, metrics, last load error
    POST /predict    {"domain": D, "texts": [...]} or {"items": [{"domain": D, "text": T}, ...]}
    POST /predict_fewshot  {"text": T, "examples": [{"text", "label"}, ...]}: the bare base, prompted
                     (only on bases whose kind offers it; the route does not exist otherwise)
    POST /generate   {"domain": D, "text": T, "max_new_tokens": N} or {"items": [...], "max_new_tokens": N}:
                     generation adapters (task: generate; only on bases that can write)
    POST /reload     load new champions now (also done every api.poll_interval_s)

One router per concern; the service, the batcher and the key check are dependencies. Limits come from
the ``api`` config section and are part of the OpenAPI schema (``schemas.request_models``), so a
request over a limit is a 422 that names the field; an unknown domain is a 404; a missing/wrong API key
a 401. (No ``from __future__ import annotations``: FastAPI must see the request models as classes.)
"""

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from lora_pipeline.config import ApiConfig, PipelineConfig
from lora_pipeline.errors import NonFiniteOutputError, UnknownDomainError, WrongTaskError
from lora_pipeline.models import kind_of, tasks_of
from lora_pipeline.serving.batching import MicroBatcher
from lora_pipeline.serving.schemas import (AdaptersResponse, Detail, FewShotResponse, GeneratedOut, GenerateResponse,
                                           HealthResponse, PredictionOut, PredictResponse, ReloadResponse, RequestModels,
                                           request_models)
from lora_pipeline.serving.service import ChampionService, Prediction

log = logging.getLogger("lora_pipeline.api")
API_KEY_HEADER = "X-API-Key"
MAX_REPORTED_ERRORS = 10  # a 422 names at most this many fields
MAX_FIELD_NAME = 64  # ... each by at most this many characters (an unknown key may be a megabyte long)


# --- dependencies: what a route needs, from the app's state ------------------------------------------
def get_service(request: Request) -> ChampionService:
    return request.app.state.service


def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


Service = Annotated[ChampionService, Depends(get_service)]
Batcher = Annotated[MicroBatcher, Depends(get_batcher)]


def key_check(limits: ApiConfig) -> tuple[list, dict]:
    """(dependencies, documented responses) of the routes that need the key; none when no key is set."""
    if limits.api_key is None:
        return [], {}
    expected = limits.api_key.get_secret_value()
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The configured api.api_key.")

    def require_key(given: Annotated[str | None, Depends(header)]) -> None:
        # As bytes: compare_digest refuses non-ASCII str, and a header may hold any byte.
        if not (given and secrets.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))):
            raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header")

    return [Depends(require_key)], {401: {"model": Detail, "description": "API key missing or wrong"}}


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is a 413, whether it declares its length or streams it; it is
    never read whole (a 50 MB body would otherwise be parsed, validated and echoed back)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            response = JSONResponse(status_code=413, content={"detail": f"request body over {self.max_bytes} bytes"})
            return await response(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # a streamed body: stop reading; FastAPI answers an HTTPException as is
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted_receive, send)


def compact_validation_errors(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field at fault and what is wrong, without echoing the input back (FastAPI's default
    handler copies it, once per member of a union body)."""
    errors = [{"loc": [part if isinstance(part, int) else str(part)[:MAX_FIELD_NAME] for part in e.get("loc", ())],
               "msg": e.get("msg", "")[:200], "type": e.get("type", "")} for e in exc.errors()[:MAX_REPORTED_ERRORS]]
    return JSONResponse(status_code=422, content={"detail": errors})


# --- routers ----------------------------------------------------------------------------------------
def health_router(base_model: str) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(service: Service, batcher: Batcher) -> HealthResponse:
        return HealthResponse(status="ok", base_model=base_model, domains=len(service.served), batches=batcher.stats,
                              precision=service.compute.precision, device=service.compute.device)

    return router


def predict_router(bodies: RequestModels, errors: dict) -> APIRouter:
    router = APIRouter()

    @router.post("/predict", responses={**errors, 400: {"model": Detail, "description": "The body could not be decoded"},
                                        404: {"model": Detail, "description": "A domain with no served champion"}})
    async def predict(body: bodies.DomainTexts | bodies.MixedItems, service: Service, batcher: Batcher) -> PredictResponse:
        if isinstance(body, bodies.DomainTexts):
            items = [(body.domain, text) for text in body.texts]
        else:
            items = [(item.domain, item.text) for item in body.items]
        service.check_domains([domain for domain, _ in items])  # fail this request alone, early
        predictions: list[Prediction] = await batcher.submit(items)
        return PredictResponse(predictions=[
            PredictionOut(domain=p.domain, label=p.label, probabilities=p.probabilities, model=p.model_name,
                          model_version=p.model_version) for p in predictions])

    return router


def few_shot_router(bodies: RequestModels, errors: dict) -> APIRouter:
    router = APIRouter()

    @router.post("/predict_fewshot", responses=errors)
    async def predict_fewshot(body: bodies.FewShotRequest, service: Service) -> FewShotResponse:
        """Classify a text with the base model alone, prompted with the given examples: no adapter, no training."""
        result = await asyncio.to_thread(service.predict_few_shot, body.text,
                                         [(e.text, e.label) for e in body.examples], body.labels)
        return FewShotResponse(**result)

    return router


def generate_router(bodies: RequestModels, errors: dict) -> APIRouter:
    router = APIRouter()

    @router.post("/generate", responses={**errors, 400: {"model": Detail, "description": "A classification domain"},
                                         404: {"model": Detail, "description": "A domain with no served champion"}})
    async def generate(body: bodies.GenerateOne | bodies.GenerateItems, service: Service) -> GenerateResponse:
        """Each text through its domain's generation adapter (greedy); any mix of domains shares each batch."""
        items = ([(body.domain, body.text)] if isinstance(body, bodies.GenerateOne)
                 else [(item.domain, item.text) for item in body.items])
        service.check_task([domain for domain, _ in items], writes=True)  # fail this request alone, early
        outputs = await asyncio.to_thread(service.generate, items, body.max_new_tokens)
        return GenerateResponse(outputs=[GeneratedOut(domain=g.domain, output=g.output, model=g.model_name,
                                                      model_version=g.model_version) for g in outputs])

    return router


def admin_router(errors: dict) -> APIRouter:
    router = APIRouter()

    @router.get("/adapters", responses=errors)
    async def adapters(service: Service) -> AdaptersResponse:
        return AdaptersResponse(**service.report())

    @router.post("/reload", responses={**errors, 503: {"model": Detail, "description": "The registry could not be read"}})
    async def reload(service: Service) -> ReloadResponse:
        try:
            report = await asyncio.to_thread(service.reload)
        except Exception as exc:  # the registry is down: keep serving what is loaded
            raise HTTPException(503, f"registry unreadable: {type(exc).__name__}") from exc
        return ReloadResponse(**vars(report))

    return router


# --- the app ----------------------------------------------------------------------------------------
def create_app(cfg: PipelineConfig, service: ChampionService | None = None) -> FastAPI:
    """The app for ``cfg``; ``service`` (already loaded) is built from the registry at start-up when None."""
    limits = cfg.api

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = service or await asyncio.to_thread(_loaded_service, cfg)
        app.state.batcher = MicroBatcher(app.state.service.predict, limits.max_batch_size, limits.batch_wait_ms)
        poller = asyncio.create_task(_poll(app.state.service, limits.poll_interval_s)) if limits.poll_interval_s else None
        yield
        if poller is not None:
            poller.cancel()
        await app.state.batcher.stop()

    app = FastAPI(title="lora-pipeline", version="1", lifespan=lifespan,
                  description="One base model in memory; every domain's champion LoRA adapter, per request.")

    app.add_exception_handler(RequestValidationError, compact_validation_errors)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(UnknownDomainError)
    async def _unknown_domain(request: Request, exc: UnknownDomainError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(WrongTaskError)
    async def _wrong_task(request: Request, exc: WrongTaskError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(NonFiniteOutputError)
    async def _broken_adapter(request: Request, exc: NonFiniteOutputError) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(exc)})

    bodies = request_models(limits)
    auth, errors = key_check(limits)
    app.include_router(health_router(cfg.base.name))
    app.include_router(predict_router(bodies, errors), dependencies=auth)
    if kind_of(cfg.base.name).few_shot_api:  # the route exists only where it can answer
        app.include_router(few_shot_router(bodies, errors), dependencies=auth)
    if "generate" in tasks_of(cfg.base.name):  # a base that can write: generation domains are served too
        app.include_router(generate_router(bodies, errors), dependencies=auth)
    app.include_router(admin_router(errors), dependencies=auth)
    return app


def _loaded_service(cfg: PipelineConfig) -> ChampionService:
    service = ChampionService(cfg)
    report = service.reload()
    log.info("serving %d domains: loaded %s; failed %s; skipped %s", len(service.served), report.loaded, report.failed,
             report.skipped)
    return service


async def _poll(service: ChampionService, interval_s: float) -> None:
    """Pick up new champions without a restart; a failed check is logged and retried next interval."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            report = await asyncio.to_thread(service.reload)
            if report.loaded or report.failed or report.removed:
                log.info("reload: loaded %s; failed %s; removed %s", report.loaded, report.failed, report.removed)
        except Exception:
            log.exception("reload from the registry failed; still serving the loaded champions")
