"""Generative mode on the real SmolLM2-135M (from its GGUF package, converted once to safetensors):
prompts, answer-only loss, exact label scoring, and a tiny real run of the flow through registry and serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from lora_pipeline.models import kind_of
from lora_pipeline.models.bases import base_model_path, get_spec, load_tokenizer
from lora_pipeline.config import load_config
from lora_pipeline.models.prompting import IGNORE, PromptFormat, build_prompt, pick_examples, score_labels, training_example
from tests.conftest import tiny_overrides

BASE = "smollm2-135m"
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["I love it.", "The meeting is at noon on Tuesday in the second-floor room.", "Awful, broke in a day."]


@pytest.fixture(scope="module")
def smollm2():
    return kind_of(BASE).load_base(get_spec(BASE), [], None).eval(), load_tokenizer(BASE)


def test_the_base_is_converted_once_to_safetensors_and_read_from_the_cache():
    path = base_model_path(BASE)
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    assert base_model_path(BASE) == path  # second call: the cache, no conversion


def test_prompts_always_list_the_labels_and_the_loss_sees_only_the_answer(smollm2):
    _, tokenizer = smollm2
    fmt = PromptFormat("Classify the sentiment of this text as one of: {labels}.", LABELS, 64)
    examples = pick_examples(["a", "b", "c", "d"], ["neutral", "positive", "negative", "positive"], 3, seed=1)
    assert sorted(label for _, label in examples) == LABELS  # labels taken in turn
    for prompt in (build_prompt(tokenizer, fmt, TEXTS[0]), build_prompt(tokenizer, fmt, TEXTS[0], examples)):
        assert "negative, neutral, positive" in prompt and prompt.endswith("Label:")
    example = training_example(tokenizer, build_prompt(tokenizer, fmt, TEXTS[0]), "positive")
    answer = [t for t in example["labels"] if t != IGNORE]
    assert tokenizer.decode(answer) == " positive" + tokenizer.eos_token
    assert example["input_ids"][-len(answer):] == answer


def _unpadded_logprob(model, tokenizer, prompt: str, label: str) -> float:
    prompt_ids = tokenizer(prompt).input_ids
    answer = tokenizer(" " + label, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + answer])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float()[0], dim=-1)
    return sum(logprobs[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(answer))


@pytest.mark.parametrize("labels", [LABELS, ["very negative", "mixed feelings", "very positive"]])
def test_label_scores_equal_one_prompt_at_a_time_without_padding(smollm2, labels):
    """Batched, left-padded scoring (one-token and multi-token labels) equals the plain computation."""
    model, tokenizer = smollm2
    fmt = PromptFormat("Classify the sentiment of this text as one of: {labels}.", labels, 64)
    prompts = [build_prompt(tokenizer, fmt, t) for t in TEXTS]  # different lengths -> padding
    batched = score_labels(model, tokenizer, prompts, [labels] * len(prompts), batch_size=3)
    for prompt, probs in zip(prompts, batched):
        expected = torch.softmax(torch.tensor([_unpadded_logprob(model, tokenizer, prompt, l) for l in labels]), 0)
        np.testing.assert_allclose(probs, expected.numpy(), atol=1e-4)


@pytest.mark.integration
def test_generative_adapter_runs_through_the_pipeline_and_the_server(tmp_path, vader_csv, prefect_harness):
    from flows.retrain import retrain
    from lora_pipeline.serving.api import create_app
    from lora_pipeline.serving.service import ChampionService

    data = pd.read_csv(vader_csv, dtype=str, keep_default_na=False)
    data[data["domain"] == "tweets"].to_csv(tmp_path / "data.csv", index=False)
    cfg = load_config(overrides=tiny_overrides(tmp_path) + [
        f"data.path={tmp_path / 'data.csv'}", "data.name=vader", "promotion.max_loss_to_tfidf=1", f"base.name={BASE}", "train.max_steps=3", "train.batch_size=4",
        "split.max_train_rows=24", "split.max_val_rows=9", "split.max_test_rows=12", "eval.latency_samples=2",
        "promotion.min_gain_over_base=-1", "api.poll_interval_s=0"])
    [row] = retrain(config=cfg)
    assert row["status"] == "registered" and row["alias"] == "champion"

    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    name = "vader-tweets-smollm2-135m"  # the registered model names its base
    assert client.get_registered_model(name).tags["base_model"] == BASE
    version = client.get_model_version(name, "1")
    metrics = client.get_run(version.run_id).data.metrics
    assert {"adapter_macro_f1", "base_macro_f1", "fewshot_macro_f1", "tfidf_macro_f1"} <= set(metrics)
    offline = pd.read_json(client.download_artifacts(version.run_id, "evaluation/predictions.jsonl", str(tmp_path)),
                           lines=True)

    service = ChampionService(cfg)
    assert service.reload().loaded == [f"{name} v1"]
    served = service.predict([("tweets", t) for t in offline["text"]])
    assert [p.label for p in served] == offline["adapter_pred"].tolist()

    with TestClient(create_app(cfg, service)) as http:
        response = http.post("/predict", json={"domain": "tweets", "texts": offline["text"].tolist()[:2]})
        assert response.status_code == 200 and response.json()["predictions"][0]["model"] == name
        body = {"text": "What a wonderful surprise!", "examples": [
            {"text": "Worst day ever.", "label": "negative"}, {"text": "So happy for you!", "label": "positive"},
            {"text": "The bus leaves at 5.", "label": "neutral"}]}
        fewshot = http.post("/predict_fewshot", json=body)
        assert fewshot.status_code == 200, fewshot.text
        assert fewshot.json()["label"] in LABELS
        assert sum(fewshot.json()["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        one_label = http.post("/predict_fewshot", json={**body, "examples": body["examples"][:1]})
        assert one_label.status_code == 422 and "one label" in one_label.text
