"""Fast tier: task generate on a tiny random Llama built here (nothing mocked).

ROUGE against hand-computed values; generation data preparation; the loss on the target tokens only; a trained
generation adapter that reloads and writes the same texts; mixed-adapter batched generation equal to each
adapter alone; the evaluation's figures and files; the promotion rule on ROUGE-L with the lead baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from peft import PeftModel

from lora_pipeline.config import load_config
from lora_pipeline.data.prepare import prepare_data
from lora_pipeline.errors import ConfigError, DataError
from lora_pipeline.evaluation.generation import evaluate_generation, generation_metrics, lead_sentence, rouge_rows
from lora_pipeline.evaluation.tasks import GENERATE
from lora_pipeline.models import KINDS, kind_of
from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.models.bases import BASE_MODELS, load_tokenizer
from lora_pipeline.models.causal_scorer import BASE_ROWS
from lora_pipeline.models.generator import GenerationPrompt, generate_texts, training_example
from lora_pipeline.models.prompting import IGNORE
from lora_pipeline.provenance import evaluation_inputs, training_inputs
from lora_pipeline.registry.promotion import decide_promotion
from lora_pipeline.training.trainer import train_adapter
from tests.tiny_models import build_tiny_causal

DOMAINS = ("challenge", "outcome")


# --- ROUGE, hand-computed ---------------------------------------------------------------------------
@pytest.mark.parametrize("reference, output, rouge1, rouge2, rouge_l", [
    # stemming: cats = cat; unigrams 5/6 each way; bigrams the-cat cat-sat sat-on: 3/5; LCS the cat sat on mat: 5/6
    ("the cats sat on the mat", "the cat sat on a mat", 5 / 6, 3 / 5, 5 / 6),
    ("a b c d", "a b c d", 1.0, 1.0, 1.0),
    ("a b c d", "e f g", 0.0, 0.0, 0.0),
    # P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3; bigram a-b 1/1 vs 1/3 -> 1/2; LCS 2 -> 2/3
    ("a b c d", "a b", 2 / 3, 1 / 2, 2 / 3),
    # reversed: unigrams 4/4, no bigram in order, the longest common subsequence is one word: 1/4
    ("a b c d", "d c b a", 1.0, 0.0, 0.25),
])
def test_rouge_matches_hand_computed_values(reference, output, rouge1, rouge2, rouge_l):
    metrics = generation_metrics([reference], [output])
    assert metrics["rouge1"] == pytest.approx(rouge1)
    assert metrics["rouge2"] == pytest.approx(rouge2)
    assert metrics["rougeL"] == pytest.approx(rouge_l)
    assert rouge_rows([reference], [output]) == [pytest.approx(rouge_l)]
    assert metrics["mean_output_words"] == len(output.split())


@pytest.mark.parametrize("text, lead", [
    ("First one. Second one.", "First one."),
    ("Does it work? Yes!", "Does it work?"),
    ("No end mark at all", "No end mark at all"),
    ("  e.g.works. Then", "e.g.works."),  # a period not followed by a space is no sentence end
])
def test_the_lead_baseline_is_the_first_sentence(text, lead):
    assert lead_sentence(text) == lead


# --- data ----------------------------------------------------------------------------------------
def _generation_table(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame([{"text": f"Paper {i} of {d}: we study topic {i % 7} and find result {i % 5}.",
                          "target": f"The {d} is topic {i % 7}.", "domain": d} for d in DOMAINS for i in range(n)])


def test_generation_rows_are_prepared_without_labels(tmp_path):
    df = _generation_table()
    df.to_csv(tmp_path / "g.csv", index=False)
    cfg = load_config(overrides=["task=generate", "split.max_train_rows=20"], env={})
    prepared = prepare_data(tmp_path / "g.csv", cfg.data, cfg.split, tmp_path / "out", task="generate")
    splits = prepared.domains["challenge"]
    assert splits.labels == [] and splits.counts["train"] == 20
    train = splits.read("train")
    assert list(train.columns) == ["text", "target"] and train["target"].str.startswith("The challenge").all()
    with pytest.raises(DataError, match=r"row 3: empty value in target column 'target'"):
        df.assign(target=["ok", "ok", ""] + ["ok"] * (len(df) - 3)).to_csv(tmp_path / "bad.csv", index=False)
        prepare_data(tmp_path / "bad.csv", cfg.data, cfg.split, tmp_path / "out2", task="generate")


def test_generate_picks_the_generation_base_and_refuses_a_base_that_cannot_write():
    assert load_config(overrides=["task=generate"], env={}).base.name == "smollm2-135m"
    assert kind_of("smollm2-135m", "generate").name == "causal-generator"
    with pytest.raises(ConfigError, match=r"task': generate needs a base that can do it"):
        training_inputs(load_config(overrides=["task=generate", "base.name=all-minilm-l6-v2-mean"], env={}))


# --- the tiny base: train, reload, generate ---------------------------------------------------------
@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(tmp_path_factory, request):
    """Three generation adapters trained on a tiny base of each architecture the generation bases have
    (SmolLM2: Llama; Gemma 3: sliding-window and global attention layers)."""
    root = tmp_path_factory.mktemp(f"gen-{request.param}")
    spec = build_tiny_causal(root / "causal", arch=request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BASE_MODELS, spec.name, spec)
        _generation_table().to_csv(root / "g.csv", index=False)
        cfg = load_config(overrides=["task=generate", f"base.name={spec.name}", "base.max_length=32",
                                     "train.max_steps=4", "train.batch_size=4", "train.learning_rate=0.01",
                                     "runtime.precision=fp32", "generation.max_new_tokens=6",
                                     "generation.max_target_tokens=12", "split.max_test_rows=6",
                                     "eval.latency_samples=2"], env={})
        prepared = prepare_data(root / "g.csv", cfg.data, cfg.split, root / "prepared", task="generate")
        trained = {d: train_adapter(prepared.domains[d], training_inputs(cfg), root / d) for d in DOMAINS}
        yield cfg, prepared, trained, root


def test_the_loss_sees_only_the_target_and_eos(tiny):
    tokenizer = load_tokenizer(tiny[0].base.name)
    prompt = GenerationPrompt("Write the outcome of this text in one sentence.", 32).build(tokenizer, "Some text.")
    example = training_example(tokenizer, prompt, "It works.", max_target_tokens=12)
    n_prompt = len(tokenizer(prompt).input_ids)
    target = tokenizer(" It works.", add_special_tokens=False).input_ids
    assert example["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert example["labels"][n_prompt:] == target + [tokenizer.eos_token_id]
    assert example["input_ids"][n_prompt:] == example["labels"][n_prompt:]
    cut = training_example(tokenizer, prompt, "It works. " * 20, max_target_tokens=5)
    assert len(cut["labels"]) - n_prompt == 6  # 5 target tokens + EOS


def test_a_generation_adapter_is_saved_with_its_kind_and_reloads_to_the_same_outputs(tiny):
    cfg, prepared, trained, _ = tiny
    result = trained["outcome"]
    meta = json.loads((Path(result.adapter_dir) / "adapter_meta.json").read_text())
    assert meta["kind"] == "causal-generator" and meta["labels"] == [] and meta["max_new_tokens"] == 6
    assert meta["instruction"] == "Write the outcome of this text in one sentence."
    assert result.steps == 4 and result.class_weights is None
    texts = prepared.domains["outcome"].read("test")["text"].tolist()
    first, second = load_adapter(result.adapter_dir).predict(texts), load_adapter(result.adapter_dir).predict(texts)
    assert first == second and all(isinstance(t, str) for t in first)


def test_mixed_adapter_batches_generate_what_each_adapter_generates_alone(tiny):
    _, prepared, trained, _ = tiny
    adapters = {d: load_adapter(trained[d].adapter_dir) for d in DOMAINS}
    model: PeftModel = adapters["challenge"].model
    model.load_adapter(trained["outcome"].adapter_dir, adapter_name="outcome")  # a second adapter on one base
    model.eval()
    tokenizer = adapters["challenge"].tokenizer
    texts = prepared.domains["challenge"].read("test")["text"].tolist()[:4]
    names = ["default", "outcome", BASE_ROWS, "outcome"]
    prompts = [GenerationPrompt(adapters["outcome" if n == "outcome" else "challenge"].meta.instruction, 32)
               .build(tokenizer, t) for t, n in zip(texts, names)]
    mixed, _ = generate_texts(model, tokenizer, prompts, 6, batch_size=4, adapter_names=names)
    alone = []
    for prompt, name in zip(prompts, names):
        [out], _ = generate_texts(model, tokenizer, [prompt], 6, batch_size=1, adapter_names=[name])
        alone.append(out)
    assert mixed == alone
    # and an adapter's rows differ from the bare base's somewhere (the adapter is not a no-op)
    base, _ = generate_texts(model, tokenizer, prompts, 6, batch_size=4, adapter_names=[BASE_ROWS] * 4)
    trained_rows, _ = generate_texts(model, tokenizer, prompts, 6, batch_size=4, adapter_names=["default"] * 4)
    assert base != trained_rows


def test_the_evaluation_scores_every_model_with_rouge_and_writes_samples(tiny):
    cfg, prepared, trained, root = tiny
    splits = prepared.domains["challenge"]
    result = evaluate_generation(splits, trained["challenge"].adapter_dir, evaluation_inputs(cfg), root / "eval")
    assert set(result.metrics) == {"adapter", "base", "fewshot", "lead"}
    assert (result.metric, result.classical, result.labels) == ("rougeL", "lead", [])
    test = splits.read("test")
    predictions = pd.read_json(root / "eval" / "predictions.jsonl", lines=True, dtype=False)
    assert len(predictions) == len(test) == result.n_test
    for model, values in result.metrics.items():  # the logged means are the rows' own ROUGE
        rows = rouge_rows(test["target"].tolist(), predictions[f"{model}_pred"].astype(str).tolist())
        assert values["rougeL"] == pytest.approx(sum(rows) / len(rows))
    assert result.efficiency["tokens_per_s"] > 0 and result.efficiency["ms_per_token"] > 0
    assert "| input | reference | zero-shot base | adapter |" in (root / "eval" / "samples.md").read_text()
    assert KINDS["causal-generator"].classifies is False


@pytest.mark.parametrize("adapter, base, lead, alias, says", [
    (0.40, 0.20, 0.30, "champion", "lead sentence 0.3000: not beaten"),
    (0.25, 0.10, 0.30, "challenger", "lead sentence beats the adapter on outcome (0.30 vs 0.25)"),
    (0.21, 0.20, 0.10, "challenger", "ROUGE-L 0.2100 vs zero-shot base 0.2000: gain +0.0100 < margin 0.0200"),
])
def test_promotion_reads_rouge_l_and_the_lead_baseline(adapter, base, lead, alias, says):
    decision = decide_promotion(adapter, base, 0.02, tfidf_f1=lead, domain="outcome", metric_name=GENERATE.metric.name,
                                classical_name=GENERATE.classical_name)
    assert decision.alias == alias and says in decision.reason


def test_a_serving_pool_writes_with_each_of_its_generation_adapters(tiny):
    """One tiny causal base (the causal label scorers' pool) holds two generation adapters; mixed batches give
    each row what its adapter alone writes."""
    from lora_pipeline.config import LoraSettings
    from lora_pipeline.serving.adapter_pool import AdapterPool, PoolRequest

    cfg, prepared, trained, root = tiny
    pool = AdapterPool(cfg.base.name, LoraSettings())
    for domain in DOMAINS:
        assert pool.add(domain, trained[domain].adapter_dir).kind == "causal-generator"
    texts = prepared.domains["outcome"].read("test")["text"].tolist()[:4]
    requests = [PoolRequest(d, t) for d, t in zip(["challenge", "outcome", "outcome", "challenge"], texts)]
    mixed = pool.generate(requests, max_new_tokens=6, batch_size=4)
    alone = [load_adapter(trained[r.adapter].adapter_dir).predict([r.text])[0] for r in requests]
    assert mixed == alone


@pytest.mark.parametrize("setting, retrains", [
    ("generation.max_target_tokens=40", True), ("generation.instruction=Summarise the {domain}.", True),
    ("generation.max_new_tokens=32", True),  # saved with the adapter: what it writes by default
    ("generation.few_shot_k=4", False), ("generation.batch_size=2", False),  # the evaluation's only
])
def test_only_what_training_reads_is_part_of_a_generation_adapters_identity(setting, retrains):
    base = training_inputs(load_config(overrides=["task=generate"], env={}))
    changed = training_inputs(load_config(overrides=["task=generate", setting], env={}))
    assert (base.sha256() != changed.sha256()) == retrains
