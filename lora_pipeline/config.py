"""One typed config object that flows from the CLI to every step.

Sources, later wins: the packaged ``default.yaml`` -> a user YAML (``--config``) -> ``--set a.b=value``
overrides -> the few environment variables read in :func:`load_config` (the only place in the project
that reads the environment).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, SecretStr, ValidationError, field_validator,
                      model_validator)

from lora_pipeline.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")

# Offline and telemetry-free by default: nothing may be fetched from a model hub at run time, and no
# tool should phone home. Set only when the user has not chosen otherwise.
RUNTIME_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "true",  # MLflow ignores "1"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # first ephemeral start can take 20 s+
    "TOKENIZERS_PARALLELISM": "false",  # we already run domains in parallel threads
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the server downloads adapters; keep its log readable
    # A tracking server that is down fails a call in seconds, not after MLflow's 7 retries of up to 120 s
    # each (inside Prefect's own retries that was ~13 min): 3 retries, 1-2-4 s apart, 30 s per request.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def apply_runtime_env(cfg: PipelineConfig | None = None) -> None:
    """Call before importing Prefect/MLflow/transformers (the CLI and the tests do).

    With a config, Prefect also gets the project's own home (database and profile, so `lora-pipeline ui`
    can point this project's runs at its server) unless PREFECT_HOME is already set.
    """
    for key, value in RUNTIME_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if cfg is not None:
        os.environ.setdefault("PREFECT_HOME", str(cfg.prefect_home))


def sha256_json(obj: Any) -> str:
    """sha256 of ``obj`` as sorted-key JSON: the one hash behind config hashes and data fingerprints."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def safe_name(raw: str) -> str:
    """A name MLflow (and a file system) takes as is: letters, digits, '.', '_' and '-'; at most 100 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")[:100] or "data"


def domain_dirname(domain: str) -> str:
    """A directory name for ``domain`` that stays inside its parent whatever the value ('../x', 'a/b', 300
    characters, any script): its safe characters, then a hash that keeps distinct domains apart."""
    return f"{safe_name(domain)[:40]}-{hashlib.sha256(domain.encode()).hexdigest()[:8]}"


# promotion.metric: what each task may rank by, its default first (evaluation/tasks.py defines how each is
# scored and bootstrapped; a test keeps the two in step).
PROMOTION_METRICS = {"classify": ("macro_f1", "accuracy"), "generate": ("rougeL", "rouge1", "rouge2")}
GENERATION_DEFAULT_BASE = "smollm2-135m"  # base.name for task: generate when left at the classifiers' default
MAX_SEED = 2**32 - 1  # numpy's and the HF Trainer's seeds are 32-bit; a larger one fails only once training starts


class _Section(BaseModel):
    # Unknown keys are typos; fail loudly instead of silently ignoring them. A number given for a text key
    # (--set data.name=2019) is that text.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class DataConfig(_Section):
    name: str | None = Field(
        None, description="Dataset name; registered models are named '<name>-<domain>'. null = the data file's "
        "stem (reviews.csv -> 'reviews'), or 'vader' for the built-in set. Sanitised for MLflow.")
    path: str | None = Field(None, description="CSV, Parquet or JSONL file; null = the built-in VADER set.")
    text_col: str = Field("text", description="Column holding the input text.")
    label_col: str = Field("label", description="Column holding the class label (task: classify).")
    target_col: str = Field("target", description="Column holding the reference output text (task: generate).")
    domain_col: str | None = Field(
        None, description="Column naming the domain; one adapter per value. null = the column 'domain' if the file "
        "has one, else the whole file is one domain named 'all'.")
    split_col: str | None = Field(
        None, description="Column assigning each row to train / val / test (also: validation, valid, dev); the "
        "data's own splits are kept instead of a random split (a domain without val rows gets them drawn from its "
        "train rows). null = the column 'split' if the file has one, else a stratified random split.")
    domain_map: dict[str, str] = Field(
        default_factory=dict, description="Optional raw domain value -> domain name (unmapped values kept)."
    )
    label_map: dict[str, str] = Field(
        default_factory=dict, description="Optional raw label value -> label name (unmapped values kept)."
    )
    domains: list[str] = Field(default_factory=list, description="Domains to build; empty = every domain.")


class SplitConfig(_Section):
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the stratified splits and of the per-split "
                      "subsampling.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of each domain held out for validation.")
    test_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of each domain held out for test.")
    max_train_rows: int | Literal["auto"] = Field(
        0, description="Stratified cap on train rows per domain; 0 = no cap. 'auto' = split.auto_train_rows, or more "
        "for short texts: as many as fit split.auto_train_tokens at the length the base will read them with "
        "(encoder classifiers; a prompted base's rows also carry its prompt, and generation keeps auto_train_rows).")
    auto_train_rows: int = Field(800, ge=1, description="max_train_rows auto: the rows a domain of long texts trains on.")
    auto_train_tokens: int = Field(
        102_400, ge=0, description="max_train_rows auto: a domain of short texts trains on up to this many tokens "
        "(rows x its chosen length, measured on up to 2,000 train texts before the cap; 800 x 128), so 48-token "
        "snippets get 2,133 rows at about the cost of 800 128-token texts. 0 = auto_train_rows always.")
    min_label_share: float = Field(
        0.0, ge=0, le=1, description="A capped train split keeps of each label at least this share of an even "
        "split (cap / labels), or all its rows if it has fewer, instead of its proportional share (a 0.5 % class "
        "of 800 rows is 4 rows); the other labels give up those rows in proportion. Validation and test keep the "
        "data's mix. 0 = proportional (the default: 0.5 lifted clothing's rare departments in two seeds but not "
        "movie or MedMCQA, and TF-IDF gained more from the rows; README, Held-out).")
    max_val_rows: int = Field(0, ge=0, description="Stratified cap on validation rows per domain; 0 = no cap.")
    max_test_rows: int = Field(0, ge=0, description="Stratified cap on test rows per domain; 0 = no cap.")
    min_rows_per_domain: int = Field(
        30, ge=3, description="A domain with fewer usable rows (or a single label) is not trained: left out with a "
        "note when the run takes every domain of the file (data.domains empty), an input error when data.domains "
        "names it or no domain is left."
    )
    min_rows_per_label: int = Field(
        3, ge=3, description="Random splits: a label with fewer rows in a domain is left out of that domain (the "
        "stratified split needs at least 3), and the run says so (a note naming the domain, the label and its "
        "rows; recorded in prepared_data.json). Merge it into another label with data.label_map to keep its "
        "rows. With under ~10 rows a label may still get no val or test row (10 % / 15 % of them round to 0): "
        "it is trained on, and the macro averages of a split leave out a label without rows there. A data "
        "file's own split column is kept as it is.")

    @model_validator(mode="after")
    def _rows_are_sane(self) -> SplitConfig:
        if isinstance(self.max_train_rows, int) and self.max_train_rows < 0:
            raise ValueError("split.max_train_rows must be 'auto' or a row count >= 0 (0 = no cap)")
        return self


class BaseModelConfig(_Section):
    name: str = Field("all-minilm-l6-v2", description="Key in lora_pipeline.models.bases.BASE_MODELS (its kind and package).")
    max_length: int | Literal["auto"] = Field(
        "auto", description="Tokens of a text the model sees (longer texts keep their head and tail). 'auto' = "
        "per domain, the length covering base.length_coverage of its train texts, at most base.max_length_cap.")
    length_coverage: float = Field(0.95, gt=0, le=1, description="Share of train texts 'auto' lets through uncut.")
    max_length_cap: int | None = Field(
        None, ge=8, description="Upper bound of 'auto'; null = the base's budget (all-MiniLM-L6-v2: 256, the "
        "length it was trained with, or 512 when most texts are longer: base.long_text_share; causal bases: 256 "
        "text tokens, for CPU cost).")
    long_text_share: float = Field(
        0.75, gt=0, le=1, description="'auto' without a max_length_cap: when more than this share of a domain's "
        "train texts is longer than the base's budget, the cap is the base's long-text budget instead "
        "(all-MiniLM-L6-v2: 512; causal bases: none). 1 = never.")
    cache_dir: str = Field(
        "~/.cache/lora-pipeline/bases", description="Where generative (GGUF) bases are converted to safetensors once."
    )

    @model_validator(mode="after")
    def _length_is_sane(self) -> BaseModelConfig:
        if isinstance(self.max_length, int) and self.max_length < 8:
            raise ValueError("base.max_length must be 'auto' or at least 8")
        return self


class LoraSettings(_Section):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the LoRA input. 0 since 2026-12-05: against 0.1 it scored higher on 7 of 12 "
        "held-out domains and lower on 4 (by at most 0.012 macro-F1), with a step 0.85x as long (README, Held-out).")
    base_dropout: float | None = Field(
        0.0, ge=0, lt=1, description="Dropout inside the frozen base while an adapter trains (BERT: hidden and "
        "attention dropout; the trained head keeps its own); null = the base's own rates (MiniLM: 0.1). On 2 CPU "
        "cores the base's dropout was up to half of a bf16 step (README, Speed).")
    target_modules: list[str] | None = Field(
        None, description="Module names that get LoRA matrices; null = the base's default (BERT: query,value; "
        "causal LMs: q_proj,v_proj)."
    )
    layers_to_transform: list[int] | None = Field(
        None, description="0-based indices of the base's layers (blocks) whose target_modules get LoRA matrices "
        "(MiniLM has 6, SmolLM2-135M 30); null = every layer. Adapting only the top layers ends the backward "
        "pass there: the frozen layers below need no gradient. MiniLM's top three of six ([3,4,5]): a bf16 step "
        "0.70x the default's at 256 tokens, macro-F1 lower on 13 of 16 held-out domains (mean -0.012, VADER "
        "movie -0.041; README, Held-out datasets).")
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full (the bag-of-words term: fitted, lora.bag_of_words_fit) and "
        "saved with the adapter; null = the base's default "
        "(BERT: its new head, pooler.dense and the bag-of-words term, bag_of_words; causal LMs: none)."
    )
    bag_of_words_min_labels: int = Field(
        4, ge=0, description="A domain with fewer labels trains without the bag-of-words term even where "
        "modules_to_save has it. Measured (README, Held-out): the term lifted topic domains of 4-20 labels "
        "(forum posts, departments, exam subjects, star ratings) and cost 2-3-label sentiment snippets (VADER "
        "movie's 5 % neutral class, nyt) and drug reviews. 0 = every domain. A domain with fewer labels may still get the term: "
        "lora.bag_of_words_min_tfidf_f1.")
    bag_of_words_min_tfidf_f1: float | None = Field(
        0.85, ge=0, le=1, description="A domain of fewer than lora.bag_of_words_min_labels labels trains the "
        "bag-of-words term all the same when TF-IDF + logistic regression (word 1-2 grams, class-balanced, C "
        "0.1-100 picked on validation: the baseline's default) reaches this macro-F1 on its validation split: words tell its labels "
        "apart, as on topics, and the adapter needs them to beat TF-IDF. Measured (README, Held-out): 2-3-label "
        "forum topics (newsgroups-close, TF-IDF 0.86-0.98 on validation) lost to TF-IDF on all four domains "
        "without the term and gained 0.022-0.080 with it; short sentiment snippets and drug reviews (0.43-0.63) "
        "lost up to 0.05 with it. null = the label count alone decides.")
    bag_of_words_fit: Literal["trained", "logistic"] = Field(
        "trained", description="How a domain's bag-of-words term gets its weights. 'trained': from zero, trained "
        "with the adapter (with train.branch_loss_weight). 'logistic': a logistic regression on the term's TF-IDF "
        "features of the train split, its C chosen by validation log-loss, fitted before the adapter trains and "
        "then kept fixed, the head learning beside it on the loss of the sum. Measured (README, Held-out): "
        "'logistic' higher on 20-newsgroups topics (comp, rec, posts), lower on raw Reddit posts (forums -0.025, "
        "support -0.018 macro-F1); 'trained' stays the default.")

    @field_validator("layers_to_transform")
    @classmethod
    def _layers_are_sane(cls, layers: list[int] | None) -> list[int] | None:
        """Sorted and unique, so that the same layers are the same adapter (and cache key) however they are listed."""
        if layers is not None and (not layers or min(layers) < 0):
            raise ValueError("lora.layers_to_transform must be null (every layer) or layer indices >= 0")
        return None if layers is None else sorted(set(layers))


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0, description="Most training epochs (the best epoch by validation macro-F1 is "
                          "kept; see early_stopping_patience).")
    max_steps: int = Field(-1, description="If > 0, stop after this many optimizer steps (overrides epochs).")
    min_steps: int = Field(
        150, ge=0, description="A small domain trains more than train.epochs epochs (at most 10) to reach this many "
        "optimizer steps, and early stopping waits for them (800 rows x 3 epochs at batch 16 = 150 steps).")
    batch_size: int = Field(16, ge=1, description="Training batch size.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Linear warm-up share of the total steps.")
    early_stopping_patience: int = Field(
        1, ge=0, description="Stop when validation macro-F1 has not improved for this many epochs (the best epoch "
        "is kept); 0 = always train train.epochs.")
    checkpoint_tie_texts: float = Field(
        1, ge=0, description="A later checkpoint whose validation macro-F1 is within this many validation texts' "
        "worth (n / validation rows) of the best so far is kept instead of it: on 50 validation texts one text "
        "is 2 %, noise, and the later one has trained longer (500 IMDB reviews, seed 43: accuracy 0.733 -> 0.88). "
        "0 = the strictly best (the earliest on a tie).")
    class_weights: Literal["auto", "balanced", "none"] = Field(
        "auto", description="Loss weights per class (encoder bases). 'balanced': inverse class frequency, so a rare "
        "class is still predicted; 'auto': balanced when the largest class has >= 1.5x the rows of the smallest.")
    branch_loss_weight: float = Field(
        1.0, ge=0, description="Encoders whose bag-of-words term trains (lora.bag_of_words_fit: trained; a fitted "
        "term is fixed and the sum's loss is the only one): the head's logits alone and the term's alone are "
        "each scored by cross-entropy too, with this weight, beside the loss of their sum, so that each learns to "
        "classify on its own and the sum is an ensemble of two rather than two halves fitted together. On the forum "
        "and news domains both halves got better (talk: head 0.86 -> 0.92, term 0.91 -> 0.94 macro-F1), and their "
        "sum on 6 of the 10 held-out domains with the term (mean +0.005 macro-F1; README, Held-out). 0 = the sum's "
        "loss only (the default before 2026-12-07).")
    group_by_length: bool = Field(
        False, description="Batch train texts of similar token length together (HF's LengthGroupedSampler), so short "
        "texts are not padded to a long one's width. Off by default: on drug reviews, where length goes with the "
        "label, it cut training time 132 -> 77 s but macro-F1 0.486 -> 0.388 (README, Speed).")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed for adapter init, dropout and data order.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per process; 0 = torch's default.")


class EvalConfig(_Section):
    batch_size: int = Field(32, ge=1, description="Batch size for evaluation and the throughput figure.")
    latency_samples: int = Field(20, ge=1, description="Texts timed one by one for latency p50/p95.")
    label_descriptions: dict[str, str] = Field(
        default_factory=dict,
        description="Label -> sentence embedded for the zero-shot base; a label without one uses label_template.",
    )
    label_template: str = Field(
        "This text is about {label}.", description="Zero-shot description of a label with none configured; {label} is "
        "the label in words (snake_case / camelCase / kebab-case split).")
    tfidf_c_grid: list[PositiveFloat] = Field(
        [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0], min_length=1, description="Inverse regularisation strengths the "
        "TF-IDF + logistic regression baseline tries; the one with the best validation macro-F1 is scored on test. "
        "[1.0]: scikit-learn's untuned default.")
    tfidf_class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="The TF-IDF baseline's class weights: 'balanced' (inverse class frequency, as the "
        "adapter's loss on an imbalanced domain) or 'none' (scikit-learn's default).")


class GenerativeConfig(_Section):
    instruction: str = Field(
        "Classify the sentiment of this text as one of: {labels}.",
        description="First line of every prompt of a causal base; {labels} lists the domain's labels.",
    )
    few_shot_k: int = Field(3, ge=1, description="Labelled train examples in the few-shot baseline's prompt.")
    score_batch_size: int = Field(8, ge=1, description="Prompts per forward pass when scoring labels.")


class GenerationPrompting(_Section):
    """What a generation adapter is trained on and saved with (TrainingInputs reads only this part)."""

    instruction: str = Field(
        "Write the {domain} of this text in one sentence.",
        description="First line of every generation prompt (task: generate); {domain} is the domain's name.")
    instructions: dict[str, str] = Field(
        default_factory=dict, description="Domain -> its own instruction, instead of the template above.")
    max_new_tokens: int = Field(64, ge=1, le=1024, description="Tokens an adapter writes per text (greedy), "
                                "unless a request asks for fewer or more.")
    max_target_tokens: int = Field(96, ge=4, description="Reference tokens trained on; longer targets are cut.")

    def instruction_for(self, domain: str) -> str:
        return self.instructions.get(domain) or self.instruction.replace("{domain}", domain)


class GenerationConfig(GenerationPrompting):
    few_shot_k: int = Field(2, ge=1, description="Train (input, output) pairs in the few-shot baseline's prompt.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (left-padded, length-sorted).")

    def prompting(self) -> GenerationPrompting:
        return GenerationPrompting(**self.model_dump(include=set(GenerationPrompting.model_fields)))


class PromotionConfig(_Section):
    metric: str | None = Field(
        None, description="What promotion compares (and the reports rank by): null = the task's own, macro_f1 for "
        "classify (or accuracy), rougeL for generate (or rouge1, rouge2). The margins below are in its units.")
    min_gain_over_base: float = Field(
        0.02, description="Metric points the adapter must gain over the zero-shot base to become champion."
    )
    max_loss_to_tfidf: float = Field(
        0.0, ge=0, description="Metric points the adapter may lose to the classical baseline (TF-IDF + logistic "
        "regression; generation: the lead sentence) and still become champion; 0 = it must not be below it.")
    max_loss_to_champion: float = Field(
        0.01, ge=0, description="Non-inferiority margin against the current champion, both scored on the new "
        "version's test rows: the lower end of the bootstrap interval of (new - champion) metric must be at least "
        "-this. A difference the test rows cannot tell from noise holds the new version back.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of the bootstrap intervals.")
    bootstrap_samples: int = Field(1000, ge=100, description="Paired bootstrap resamples of the test rows.")
    rescore_champion: bool = Field(
        True, description="Score the current champion on the new version's test rows that it never trained or "
        "validated on (same rows for both) before deciding; false = compare with the champion's recorded metric "
        "on its own, older split.")
    min_rescored_rows: int = Field(
        30, ge=1, description="Fewer such rows than this: no fair comparison; the champion's recorded metric "
        "decides, and the reason says so.")


class TrackingConfig(_Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; null = sqlite:///<project_dir>/mlflow.db (env MLFLOW_TRACKING_URI wins)."
    )
    artifact_dir: str = Field("mlartifacts", description="Artifact root for new experiments, relative to project_dir.")
    experiment: str = Field("lora-pipeline", description="MLflow experiment name.")


class RuntimeConfig(_Section):
    project_dir: str = Field(".", description="Root for mlflow.db, mlartifacts/, .prefect/ and work_dir.")
    work_dir: str = Field(".lora_pipeline", description="Prepared splits, adapters and the task cache, relative to project_dir.")
    prefect_home: str = Field(
        ".prefect", description="Prefect's home (database, profile) relative to project_dir; env PREFECT_HOME wins."
    )
    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="'thread': domains in parallel threads here; 'dask': on the cluster at dask_address."
    )
    dask_address: str | None = Field(None, description="Scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786.")
    parallel_domains: int = Field(2, ge=1, description="Domains trained at once by the thread runner.")
    retries: int = Field(2, ge=0, description="Retries of a task that failed with a transient error (store busy, I/O).")
    retry_delay_s: float = Field(5, ge=0, description="First retry delay; doubles on each retry (exponential backoff).")
    train_timeout_s: int = Field(3600, ge=0, description="A training task running longer fails as TimedOut; 0 = no limit.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where models train, evaluate and serve; 'auto' = cuda if torch sees a GPU, else cpu.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto' = what measured faster (README, Speed): bf16 autocast on a CPU with native bf16 "
        "(avx512_bf16/AMX), fp32 on CUDA (the default recipe is launch-bound there) and elsewhere. Weights and saved "
        "adapters stay fp32 either way. Stored on every registered version.")
    refresh_cache: bool = Field(
        False, description="Retrain and re-evaluate instead of reusing cached results, and register the result "
        "even if the same adapter (same data, config and code) is already registered."
    )

    @model_validator(mode="after")
    def _dask_needs_an_address(self) -> RuntimeConfig:
        if self.task_runner == "dask" and not self.dask_address:
            raise ValueError("runtime.dask_address is required when task_runner is 'dask'")
        return self


class ScheduleConfig(_Section):
    cron: str = Field("0 2 * * *", description="Cron of the 'nightly' deployment (retrains every domain).")
    timezone: str = Field("UTC", description="Time zone the cron is read in.")


class ServersConfig(_Section):
    host: str = Field("127.0.0.1", description="Interface the Prefect and MLflow UIs bind to (loopback by default).")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Port of the Prefect server/UI.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="Port of the MLflow tracking server/UI.")


class ApiConfig(_Section):
    host: str = Field("127.0.0.1", description="Interface `lora-pipeline serve` binds to (loopback by default).")
    port: int = Field(8000, ge=1, le=65535, description="Port of the prediction API.")
    max_texts_per_request: int = Field(64, ge=1, description="More texts in one /predict request is a 422.")
    max_text_chars: int = Field(20000, ge=1, description="A longer text is a 422 (bounds the work per request).")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="A request body larger than this is a 413, refused before it is read whole.")
    max_batch_size: int = Field(32, ge=1, description="Texts per forward pass; concurrent requests are batched up to this.")
    max_new_tokens: int = Field(256, ge=1, le=2048, description="Most tokens a POST /generate request may ask for.")
    datasets: list[str] = Field(
        default_factory=list, description="Datasets whose champions (on base.name) one server holds, e.g. [vader, "
        "aclsum]: classifiers and writers side by side; empty = this config's dataset (data.name). A domain in two of "
        "them is served from the first listed (the other's champion is reported as skipped).")
    batch_wait_ms: float = Field(
        5, ge=0, description="How long the batcher waits for more requests before a forward pass (latency vs. throughput)."
    )
    poll_interval_s: float = Field(
        60, ge=0, description="Seconds between registry checks for new champions; 0 = only on POST /reload."
    )
    max_labels: int = Field(
        32, ge=2, description="Widest label set one adapter may have: all heads share one padded base head of this width."
    )
    # SecretStr: dumped as '**********', so the key never reaches a logged config.json or a hash.
    api_key: SecretStr | None = Field(
        None, description="If set, every call but /health needs header X-API-Key with this value (env LORA_PIPELINE_API_KEY)."
    )


class PipelineConfig(_Section):
    task: Literal["classify", "generate"] = Field(
        "classify", description="classify: text -> one of the domain's labels; generate: text -> text (the "
        "target column), on a causal base, scored with ROUGE.")
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    base: BaseModelConfig = Field(default_factory=BaseModelConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generative: GenerativeConfig = Field(default_factory=GenerativeConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    servers: ServersConfig = Field(default_factory=ServersConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)

    @model_validator(mode="after")
    def _generation_base(self) -> PipelineConfig:
        """task: generate on the classifiers' default base (which cannot write) means the generation default."""
        if self.task == "generate" and self.base.name == BaseModelConfig.model_fields["name"].default:
            self.base = self.base.model_copy(update={"name": GENERATION_DEFAULT_BASE})
        return self

    @model_validator(mode="after")
    def _promotion_metric(self) -> PipelineConfig:
        allowed = PROMOTION_METRICS[self.task]
        if self.promotion.metric is not None and self.promotion.metric not in allowed:
            raise ValueError(f"promotion.metric '{self.promotion.metric}' is not a {self.task} metric "
                             f"({', '.join(allowed)})")
        return self

    @property
    def promotion_metric(self) -> str:
        """The metric promotion compares: promotion.metric, or the task's own."""
        return self.promotion.metric or PROMOTION_METRICS[self.task][0]

    # Derived locations, all under project_dir unless absolute.
    @property
    def project_dir(self) -> Path:
        return Path(self.runtime.project_dir).expanduser().resolve()

    @property
    def work_dir(self) -> Path:
        return self.project_dir / self.runtime.work_dir

    @property
    def prefect_home(self) -> Path:
        return self.project_dir / self.runtime.prefect_home

    @property
    def tracking_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{self.project_dir / 'mlflow.db'}"

    @property
    def dataset_name(self) -> str:
        """data.name, or the data file's stem ('vader' for the built-in set), made safe for MLflow names."""
        return safe_name(self.data.name or (Path(self.data.path).stem if self.data.path else "vader"))

    @property
    def served_datasets(self) -> list[str]:
        """The datasets whose champions a server loads: api.datasets, or this config's dataset."""
        return list(dict.fromkeys(safe_name(name) for name in self.api.datasets)) or [self.dataset_name]

    @property
    def artifact_root(self) -> Path:
        return self.project_dir / self.tracking.artifact_dir

    def sha256(self, *sections: str) -> str:
        """Stable hash of the given sections (all when none): feeds fingerprints and cache keys."""
        dumped = self.model_dump(mode="json")
        chosen = {k: dumped[k] for k in sections} if sections else dumped
        return sha256_json(chosen)


class Compute(_Section):
    """runtime.device and runtime.precision as resolved on the machine that runs them
    (lora_pipeline.models.compute): part of what made an adapter and its evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    device: Literal["cpu", "cuda"] = Field("cpu", description="The device models run on.")
    precision: Literal["bf16", "fp32"] = Field("fp32", description="bf16 autocast, or plain fp32.")


class TrainingInputs(_Section):
    """Everything training reads, and nothing else: an adapter's identity is the hash of this (plus its data
    and code), so a setting cannot change the weights without changing the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: BaseModelConfig
    lora: LoraSettings
    train: TrainConfig
    instruction: str | None = Field(
        None, description="The prompt's first line, for kinds that train on a prompt (causal LMs); null otherwise.")
    compute: Compute = Field(default_factory=Compute, description="Device and precision training runs in.")
    task: Literal["classify", "generate"] = Field("classify", description="What the adapter learns (picks the kind).")
    generation: GenerationPrompting | None = Field(
        None, description="task: generate: the per-domain instruction and the output lengths; null otherwise.")

    def instruction_for(self, domain: str) -> str | None:
        """The prompt's first line for ``domain``: generation's per-domain one, or the classifiers' (if any)."""
        return self.generation.instruction_for(domain) if self.generation else self.instruction

    def sha256(self) -> str:
        return sha256_json(self.model_dump(mode="json"))


class EvaluationInputs(_Section):
    """Everything evaluation reads besides the adapter itself: the evaluation's identity is its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: BaseModelConfig
    eval: EvalConfig
    generative: GenerativeConfig | None = Field(
        None, description="Prompted kinds: the baselines' prompt, few-shot k and scoring batch; null otherwise.")
    seed: int = Field(42, description="Seed of anything evaluation draws (the few-shot examples): split.seed.")
    compute: Compute = Field(default_factory=Compute, description="Device and precision the adapter is scored and "
                             "timed in (the run's: what it serves in).")
    task: Literal["classify", "generate"] = Field("classify", description="classify: labels and macro-F1; "
                                                  "generate: texts and ROUGE.")
    generation: GenerationConfig | None = Field(
        None, description="task: generate: few-shot k and the generation batch; null otherwise.")

    def sha256(self) -> str:
        return sha256_json(self.model_dump(mode="json"))


def _is_text_field(key: str) -> bool:
    """True when ``key`` (section.key) names a text setting (str, or str | None)."""
    model, parts = PipelineConfig, key.split(".")
    for part in parts[:-1]:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
    field = model.model_fields.get(parts[-1])
    return field is not None and field.annotation in (str, str | None)


def _parse_override(item: str) -> tuple[str, Any]:
    """``section.key=value`` -> (key, value parsed as YAML: ints, floats, bools, lists "[a,b]", null).

    A text setting keeps the value as typed ('2019', '01', 'yes', 'a #b', 'C: x' stay those strings; quote it
    to have YAML's reading; 'null' still resets an optional one), and so does a value YAML would read as plain
    text with a '#' or ': ' in it."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    key, text = key.strip(), raw.strip()
    if not text:
        return key, ""
    quoted = text[0] in "'\""
    if _is_text_field(key) and not quoted and text not in ("null", "~"):
        return key, text
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if text[0] not in "[{'\"":  # plain text that merely contains YAML syntax ('a: b: c')
            return key, text
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override '{key}': value {raw!r} is not valid YAML ({problem})") from None
    if (isinstance(value, str) or isinstance(value, dict) and text[0] != "{") and not quoted:
        return key, text
    return key, value


def _set_key(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for k in parts[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{k}' is not a section")
    node[parts[-1]] = value


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    env: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Build the config: defaults, then ``path``, then ``section.key=value`` overrides, then ``values``
    (``{"data.text_col": "yes"}``: already typed, never parsed, as the CLI's named flags give them), then env."""
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()) or {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of sections (as lora_pipeline/default.yaml)")
        raw = _merge(raw, loaded)
    for item in overrides or []:
        _set_key(raw, *_parse_override(item))
    for key, value in (values or {}).items():
        _set_key(raw, key, value)
    env = os.environ if env is None else env
    if env.get("MLFLOW_TRACKING_URI"):
        raw.setdefault("tracking", {})["tracking_uri"] = env["MLFLOW_TRACKING_URI"]
    if env.get("LORA_PIPELINE_API_KEY"):  # a secret: better in the environment than in a YAML file
        raw.setdefault("api", {})["api_key"] = env["LORA_PIPELINE_API_KEY"]
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        where = ".".join(str(p) for p in err["loc"])
        if not where:  # a rule across sections: its message names the keys
            raise ConfigError(f"config: {err['msg'].removeprefix('Value error, ')}") from None
        if err["loc"][-1] == "int" and any(e["loc"][-1] == "literal['auto']" for e in errors):
            # a number-or-'auto' key: pydantic reports one error per alternative, named after the type
            raise ConfigError(f"config key '{where.removesuffix('.int')}': must be 'auto' or a whole number "
                              f"(got {err['input']!r})") from None
        raise ConfigError(f"config key '{where}': {err['msg']}") from None
