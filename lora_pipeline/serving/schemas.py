"""The API's request and response bodies. Request limits come from the ``api`` config section, so
the request models are built per app (:func:`request_models`) and the limits are part of the OpenAPI schema.
(No ``from __future__ import annotations``: FastAPI must see these models as real classes, not strings.)
"""

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lora_pipeline.config import ApiConfig


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
    task: str | None = Field(None, description="'classify' (POST /predict) or 'generate' (POST /generate).")


class AdaptersResponse(BaseModel):
    base_model: str
    datasets: list[str] = Field(default_factory=list, description="Datasets whose champions this server holds.")
    last_reload_at: str | None
    adapters: list[AdapterOut]


class HealthResponse(BaseModel):
    status: str
    base_model: str
    domains: int = Field(description="Domains with a loaded champion.")
    batches: dict[str, int] = Field(description="Forward passes run, texts in them, the largest (requests share them).")
    precision: str = Field(description="'bf16' (autocast, fp32 weights) or 'fp32': runtime.precision as resolved here.")
    device: str = Field(description="'cpu' or 'cuda'.")


class ReloadResponse(BaseModel):
    loaded: list[str]
    unchanged: list[str]
    failed: list[str]
    removed: list[str]
    skipped: list[str] = Field(default_factory=list, description="Champions not loaded: their domain is served from "
                               "a dataset listed before theirs in api.datasets.")


class FewShotResponse(BaseModel):
    label: str
    probabilities: dict[str, float]


class GeneratedOut(BaseModel):
    domain: str
    output: str = Field(description="The domain's adapter's greedy output.")
    model: str = Field(description="Registered model that answered.")
    model_version: str


class GenerateResponse(BaseModel):
    outputs: list[GeneratedOut] = Field(description="One per input, in input order.")


class Detail(BaseModel):
    detail: str


@dataclass(frozen=True)
class RequestModels:
    DomainTexts: type
    MixedItems: type
    FewShotRequest: type
    GenerateOne: type
    GenerateItems: type


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


def request_models(limits: ApiConfig) -> RequestModels:
    """Request bodies whose limits (texts per request, characters per text, labels) are this config's."""
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars), AfterValidator(_valid_unicode)]
    Domain = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_valid_unicode)]
    Label = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_valid_unicode)]

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
        label: Label

    class FewShotRequest(_Body):
        text: Text
        examples: list[Example] = Field(min_length=1, max_length=16, description="Labelled examples for the prompt.")
        labels: list[Label] | None = Field(None, min_length=2, max_length=limits.max_labels,
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

    NewTokens = Annotated[int | None, Field(None, ge=1, le=limits.max_new_tokens,
                                            description="Tokens to write at most; default: the adapter's own.")]

    class GenerateOne(_Body):
        domain: Domain
        text: Text
        max_new_tokens: NewTokens

    class GenerateItems(_Body):
        items: list[Item] = Field(min_length=1, max_length=limits.max_texts_per_request)
        max_new_tokens: NewTokens

    return RequestModels(DomainTexts, MixedItems, FewShotRequest, GenerateOne, GenerateItems)
