"""`make bench` on a tiny slice: the real benchmark entry point end to end (pipeline twice, full fine-tune,
step costs in their own processes, serving through the MicroBatcher), then its JSON and report checked
for consistency. No timing is asserted: only that every figure was measured and every ratio is the
quotient of the two measurements it names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lora_pipeline.models.compute import cpu_bf16
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration
DOMAINS = ["amazon", "tweets"]
TINY = ["data.domains=[amazon,tweets]", "split.max_train_rows=48", "split.max_val_rows=16", "split.max_test_rows=30",
        "train.max_steps=6", "train.batch_size=8", "eval.latency_samples=3",
        "promotion.min_gain_over_base=-1", "promotion.max_loss_to_tfidf=1"]  # every domain a champion: something to serve


@pytest.fixture(scope="module")
def bench(tmp_path_factory, vader_csv) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("bench-results")
    project = tmp_path_factory.mktemp("bench-project")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_HOME"}  # its own project's Prefect, as `make bench`
    args = [sys.executable, "-m", "benchmarks", "--project", str(project), "--out-dir", str(out),
            "--step-timed", "3", "--step-warmup", "1", "--full-lr", "1e-4,3e-4", "--matmul-size", "512", "--serving-texts", "48",
            "--serving-repeats", "1", "--latency-samples", "5", *[x for o in TINY for x in ("--set", o)]]
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((out / "latest.json").read_text()), out


def test_every_figure_is_measured_and_every_ratio_is_its_quotient(bench):
    r, _ = bench
    ratio, lora, full = r["ratios"], r["train_step"]["lora"], r["train_step"]["full"]
    pipeline, serving = r["pipeline"], r["serving"]

    assert set(r["quality"]) == set(DOMAINS)
    for domain, models in r["quality"].items():
        assert set(models) == {"base", "tfidf", "adapter", "full_finetune"}
        assert all(0 <= m["macro_f1"] <= 1 and 0 <= m["accuracy"] <= 1 for m in models.values())

    assert ratio["adapter_bytes_over_base_bytes"] == round(
        max(r["size"]["adapter_bytes"].values()) / r["size"]["base_bytes"], 5)
    assert 0 < ratio["adapter_bytes_over_base_bytes"] < 0.05  # an adapter, not a copy of the base
    assert ratio["lora_step_time_over_full_step_time"] == round(lora["step_seconds_median"] / full["step_seconds_median"], 3)
    assert ratio["lora_peak_rss_over_full_peak_rss"] == round(lora["peak_rss_bytes"] / full["peak_rss_bytes"], 3)
    chosen = r["chosen_precision"]
    assert ratio["lora_achieved_flops_over_matmul_flops"] == round(
        lora["achieved_flops_per_s"] / r["matmul"][chosen]["flops_per_s"], 3)  # against the peak of its own dtype
    assert lora["precision"] == full["precision"] == r["matmul"][chosen]["dtype"] == chosen
    assert ratio["mixed_batch_throughput_over_merged_throughput"] == serving["ratios"]["mixed_over_merged"]
    assert ratio["cached_rerun_wall_over_first_run_wall"] == round(
        pipeline["cached_rerun"]["wall_s"] / pipeline["first_run"]["wall_s"], 4)
    assert ratio["prefect_mlflow_overhead_over_pipeline_wall"] == round(
        pipeline["first_run"]["overhead_s"] / pipeline["first_run"]["wall_s"], 4)
    assert ratio["full_pipeline_wall_s"] == pipeline["first_run"]["wall_s"] > 0

    # fp32 and the chosen precision (bf16 where the CPU has it) were each measured in full, in one run.
    expected = ["fp32", "bf16"] if cpu_bf16() else ["fp32"]
    assert list(r["by_precision"]) == expected and chosen == expected[-1] and set(r["matmul"]) == set(expected)
    fp32 = r["by_precision"]["fp32"]
    assert fp32["train_step"]["lora"]["precision"] == "fp32" and fp32["serving"]["setup"]["precision"] == "fp32"
    assert r["by_precision"][chosen]["serving"]["setup"]["precision"] == chosen
    assert ratio["chosen_precision_pipeline_wall_over_fp32_pipeline_wall"] == round(
        pipeline["first_run"]["wall_s"] / fp32["pipeline"]["first_run"]["wall_s"], 3)
    assert ratio["largest_adapter_macro_f1_change_chosen_precision_vs_fp32"] == round(max(
        abs(r["quality"][d]["adapter"]["macro_f1"] - fp32["quality"][d]["adapter"]["macro_f1"]) for d in DOMAINS), 4)
    assert set(fp32["quality"]) == set(DOMAINS)
    # The full fine-tune's learning rate was picked on validation, among those asked for.
    for full_ft in r["full_finetune"].values():
        tried = full_ft["learning_rates_tried"]
        assert set(tried) == {"0.0001", "0.0003"}
        assert full_ft["best_val_macro_f1"] == max(t["best_val_macro_f1"] for t in tried.values())
    # The two methods trained what they claim, on the same batch.
    assert full["trainable_params"] > 50 * lora["trainable_params"]
    assert (lora["batch_size"], lora["sequence_length"]) == (full["batch_size"], full["sequence_length"])
    assert full["flops_per_step"] > lora["flops_per_step"] > 0  # full also computes every weight gradient
    assert full["grads_and_optimizer_state_bytes"] > 50 * lora["grads_and_optimizer_state_bytes"]
    assert lora["peak_rss_covers"] == "training steps only"
    # The re-run trained nothing: its train and evaluate task runs were cache hits.
    assert pipeline["cached_rerun"]["task_run_states"].get("Cached") == 2 * len(DOMAINS)
    assert pipeline["first_run"]["task_run_states"].get("Cached") is None
    assert 0 < pipeline["first_run"]["ml_work_s"] < pipeline["first_run"]["wall_s"]
    # Serving went through the server's batcher, in batches, and mixing changed no label.
    assert fp32["serving"]["mixed_and_switching_agreement"] == 1.0  # exact in fp32
    assert serving["mixed_and_switching_agreement"] >= 0.9  # bf16 may flip a near-tie
    assert serving["batcher_stats_last_run"]["mixed"]["texts"] == serving["setup"]["texts"]
    assert serving["batcher_stats_last_run"]["mixed"]["batches"] < serving["setup"]["texts"]


def test_the_report_shows_the_measured_table_and_its_plot(bench):
    r, out = bench
    report = (out / "report.md").read_text()
    assert "(quality.png)" in report and (out / "quality.png").stat().st_size > 1000
    for domain, models in r["quality"].items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {domain} |"))
        # columns: domain, zero-shot base, TF-IDF+LR, LoRA adapter, full fine-tune (macro-F1 first)
        assert row.split("|")[2:6] == [f" {models[m]['macro_f1']:.3f} " for m in ("base", "tfidf", "adapter", "full_finetune")]
    assert f"| {r['ratios']['lora_step_time_over_full_step_time']:.3f} |" in report
    assert r["machine"]["processor"] in report
