"""The prediction API (`lora-pipeline serve`): FastAPI over :class:`ChampionService`.

    GET  /health     liveness + how many domains are served (no API key needed)
    GET  /adapters   every domain: champion version, labels, metrics, last load error
    POST /predict    {"domain": D, "texts": [...]} or {"items": [{"domain": D, "text": T}, ...]}
    POST /predict_fewshot  {"text": T, "examples": [{"text", "label"}, ...]}: the bare base, prompted
                     (generative bases only; the route does not exist on an encoder base)
    POST /reload     load new champions now (also done every api.poll_interval_s)

Limits come from the ``api`` config section and are part of the OpenAPI schema, so a request over a
limit is a 422 that names the field; an unknown domain is a 404; a missing/wrong API key a 401.
(No ``from __future__ import annotations`` here: FastAPI must see the request models built inside
:func:`create_app` as real classes, not strings.)
"""

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lora_pipeline.base_models import get_spec
from lora_pipeline.batching import MicroBatcher
from lora_pipeline.config import PipelineConfig
from lora_pipeline.errors import UnknownDomainError
from lora_pipeline.serving import ChampionService, Prediction

log = logging.getLogger("lora_pipeline.api")
API_KEY_HEADER = "X-API-Key"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class PredictionOut(BaseModel):
    domain: str
    label: str = Field(description="The most probable label.")
    probabilities: dict[str, float] = Field(description="Probability of each of the domain's labels.")
    model: str = Field(description="Registered model that answered.")
    model_version: str


class PredictResponse(BaseModel):
    predictions: list[PredictionOut] = Field(description="One per input text, in input order.")


class LoadErrorOut(BaseModel):
    version: str = Field(description="The champion version that failed to load (the previous one keeps serving).")
    message: str
    at: str


class AdapterOut(BaseModel):
    domain: str
    model: str | None
    version: str | None = Field(description="Version being served; null if none could be loaded yet.")
    labels: list[str]
    metrics: dict[str, float] = Field(description="Test-split metrics of the served version, from its MLflow run.")
    loaded_at: str | None
    error: LoadErrorOut | None = None


class AdaptersResponse(BaseModel):
    base_model: str
    last_reload_at: str | None
    adapters: list[AdapterOut]


class HealthResponse(BaseModel):
    status: str
    base_model: str
    domains: int = Field(description="Domains with a loaded champion.")
    batches: dict[str, int] = Field(description="Forward passes run, texts in them, the largest (requests share them).")


class ReloadResponse(BaseModel):
    loaded: list[str]
    unchanged: list[str]
    failed: list[str]
    removed: list[str]


class FewShotResponse(BaseModel):
    label: str
    probabilities: dict[str, float]


class Detail(BaseModel):
    detail: str


def create_app(cfg: PipelineConfig, service: ChampionService | None = None) -> FastAPI:
    """The app for ``cfg``; ``service`` (already loaded) is built from the registry at start-up when None."""
    limits = cfg.api
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars)]
    Domain = Annotated[str, StringConstraints(min_length=1, max_length=200)]

    class DomainTexts(_Body):
        domain: Domain
        texts: list[Text] = Field(min_length=1, max_length=limits.max_texts_per_request)

    class Item(_Body):
        domain: Domain
        text: Text

    class MixedItems(_Body):
        items: list[Item] = Field(min_length=1, max_length=limits.max_texts_per_request)

    class Example(_Body):
        text: Text
        label: Annotated[str, StringConstraints(min_length=1, max_length=200)]

    class FewShotRequest(_Body):
        text: Text
        examples: list[Example] = Field(min_length=1, max_length=16, description="Labelled examples for the prompt.")
        labels: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
            None, min_length=2, max_length=limits.max_labels,
            description="Candidate labels; default: the examples' labels.")

        @model_validator(mode="after")
        def _labels_cover_examples(self):
            shown = sorted({e.label for e in self.examples})
            if self.labels is None:
                if len(shown) < 2:
                    raise ValueError("examples show one label only: give 'labels' or examples of two labels or more")
                self.labels = shown
            elif set(shown) - set(self.labels):
                raise ValueError(f"example label '{sorted(set(shown) - set(self.labels))[0]}' is not in 'labels'")
            return self

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["service"] = service or await asyncio.to_thread(_loaded_service, cfg)
        state["batcher"] = MicroBatcher(state["service"].predict, limits.max_batch_size, limits.batch_wait_ms)
        poller = asyncio.create_task(_poll(state["service"], limits.poll_interval_s)) if limits.poll_interval_s else None
        yield
        if poller is not None:
            poller.cancel()
        await state["batcher"].stop()

    app = FastAPI(title="lora-pipeline", version="1", lifespan=lifespan,
                  description="One base model in memory; every domain's champion LoRA adapter, per request.")

    # The key check (and its entry in the OpenAPI schema) exists only when a key is configured.
    auth: list = []
    errors: dict = {}
    if limits.api_key is not None:
        expected = limits.api_key.get_secret_value()
        header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The configured api.api_key.")

        def require_key(given: Annotated[str | None, Depends(header)]) -> None:
            if not (given and secrets.compare_digest(given, expected)):
                raise HTTPException(401, f"missing or wrong {API_KEY_HEADER} header")

        auth = [Depends(require_key)]
        errors = {401: {"model": Detail, "description": "API key missing or wrong"}}

    @app.exception_handler(UnknownDomainError)
    async def _unknown_domain(request: Request, exc: UnknownDomainError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.get("/health")
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", base_model=cfg.base.name, domains=len(state["service"].served),
                              batches=state["batcher"].stats)

    @app.get("/adapters", dependencies=auth, responses=errors)
    async def adapters() -> AdaptersResponse:
        return AdaptersResponse(**state["service"].report())

    @app.post("/predict", dependencies=auth,
              responses={**errors, 400: {"model": Detail, "description": "The body could not be decoded"},
                         404: {"model": Detail, "description": "A domain with no served champion"}})
    async def predict(body: DomainTexts | MixedItems) -> PredictResponse:
        if isinstance(body, DomainTexts):
            items = [(body.domain, text) for text in body.texts]
        else:
            items = [(item.domain, item.text) for item in body.items]
        state["service"].check_domains([domain for domain, _ in items])  # fail this request alone, early
        predictions: list[Prediction] = await state["batcher"].submit(items)
        return PredictResponse(predictions=[
            PredictionOut(domain=p.domain, label=p.label, probabilities=p.probabilities, model=p.model_name,
                          model_version=p.model_version) for p in predictions])

    if get_spec(cfg.base.name).kind == "causal":  # the route exists only where it can answer

        @app.post("/predict_fewshot", dependencies=auth, responses=errors)
        async def predict_fewshot(body: FewShotRequest) -> FewShotResponse:
            """Classify a text with the base model alone, prompted with the given examples: no adapter, no training."""
            result = await asyncio.to_thread(state["service"].predict_few_shot, body.text,
                                             [(e.text, e.label) for e in body.examples], body.labels)
            return FewShotResponse(**result)

    @app.post("/reload", dependencies=auth,
              responses={**errors, 503: {"model": Detail, "description": "The registry could not be read"}})
    async def reload() -> ReloadResponse:
        try:
            report = await asyncio.to_thread(state["service"].reload)
        except Exception as exc:  # the registry is down: keep serving what is loaded
            raise HTTPException(503, f"registry {cfg.tracking_uri} unreadable: {exc}".splitlines()[0]) from exc
        return ReloadResponse(**vars(report))

    return app


def _loaded_service(cfg: PipelineConfig) -> ChampionService:
    service = ChampionService(cfg)
    report = service.reload()
    log.info("serving %d domains: loaded %s; failed %s", len(service.served), report.loaded, report.failed)
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
