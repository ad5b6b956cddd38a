"""latest.json -> the headline ratios and report.md (+ quality.png), rendered with the library's report code."""

from __future__ import annotations

import json
from pathlib import Path

from lora_pipeline.reporting.report import plot_grouped_bars, render_markdown

MODELS = {"base": "zero-shot base", "tfidf": "TF-IDF+LR", "adapter": "LoRA adapter", "full_finetune": "full fine-tune"}
MB = 1024 * 1024


def write_json_and_table(out: Path, result: dict, table: str) -> None:
    """A benchmark's result as ``out`` (JSON) and its table beside it (``out`` with ``.md``), and on the console."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


def ratios(r: dict) -> dict[str, float]:
    """Every headline ratio, each from two measurements of the same run (both are in latest.json)."""
    lora, full = r["train_step"]["lora"], r["train_step"]["full"]
    chosen, fp32 = r["by_precision"][r["chosen_precision"]], r["by_precision"]["fp32"]
    attainable = r["matmul"][r["chosen_precision"]]["flops_per_s"]
    pipeline = r["pipeline"]
    f1_change = [abs(chosen["quality"][d]["adapter"]["macro_f1"] - fp32["quality"][d]["adapter"]["macro_f1"])
                 for d in chosen["quality"]]
    return {
        "chosen_precision_pipeline_wall_over_fp32_pipeline_wall": round(
            pipeline["first_run"]["wall_s"] / fp32["pipeline"]["first_run"]["wall_s"], 3),
        "largest_adapter_macro_f1_change_chosen_precision_vs_fp32": round(max(f1_change), 4),
        "chosen_precision_lora_step_time_over_fp32_lora_step_time": round(
            lora["step_seconds_median"] / fp32["train_step"]["lora"]["step_seconds_median"], 3),
        "adapter_bytes_over_base_bytes": round(max(r["size"]["adapter_bytes"].values()) / r["size"]["base_bytes"], 5),
        "lora_step_time_over_full_step_time": round(lora["step_seconds_median"] / full["step_seconds_median"], 3),
        "lora_peak_rss_over_full_peak_rss": round(lora["peak_rss_bytes"] / full["peak_rss_bytes"], 3),
        "lora_training_memory_over_full_training_memory": round(lora["training_memory_bytes"] / full["training_memory_bytes"], 3),
        "lora_achieved_flops_over_matmul_flops": round(lora["achieved_flops_per_s"] / attainable, 3),
        "full_achieved_flops_over_matmul_flops": round(full["achieved_flops_per_s"] / attainable, 3),
        "mixed_batch_throughput_over_merged_throughput": r["serving"]["ratios"]["mixed_over_merged"],
        "cached_rerun_wall_over_first_run_wall": pipeline["cached_over_first"],
        "prefect_mlflow_overhead_over_pipeline_wall": pipeline["overhead_over_wall"],
        "full_pipeline_wall_s": pipeline["first_run"]["wall_s"],
    }


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def report_blocks(r: dict, chart: Path) -> list[tuple]:
    m, cfg, lora, full = r["machine"], r["config"], r["train_step"]["lora"], r["train_step"]["full"]
    ratio, pipe, serving = r["ratios"], r["pipeline"], r["serving"]
    chosen = r["chosen_precision"]
    attainable = r["matmul"][chosen]["flops_per_s"]
    rows = cfg["rows_per_domain"]
    some = next(iter(rows.values()))
    blocks = [
        ("h1", "lora-pipeline benchmark"),
        ("p", f"Measured {r['measured_at']} on {m['processor']} ({m['cpu_count']} CPUs, {m['device']}, torch "
              f"{m['torch']}, {m['torch_threads']} threads), {m['platform']}. One `make bench` run, "
              f"{r['bench_wall_s'] / 60:.1f} min in all; every ratio below divides two measurements of this run. "
              f"Base `{cfg['base_model']}`; per domain about {some['train']} train / {some['val']} val / "
              f"{some['test']} test rows, {cfg['epochs']} epochs (max_steps {cfg['max_steps']}), batch {cfg['batch_size']}; "
              f"LoRA r={cfg['lora']['r']} lr {cfg['lora']['learning_rate']} on "
              f"{','.join(cfg['lora'].get('target_modules') or ['the base default'])}; full fine-tune: the best on validation "
              f"macro-F1 of lr {', '.join(map(str, cfg['full_finetune_learning_rates']))}, per domain. Config overrides: {', '.join(cfg['overrides']) or 'none'}."),
        ("p", f"Precision: every figure below is in **{chosen}** on {r['device']} (runtime.precision: auto on this "
              f"machine) unless it says otherwise; the fp32 comparison is measured in the same run (section "
              f"'Precision')."),
        ("h2", "Headline ratios"),
        ("table", [
            {"ratio": f"pipeline wall time, {chosen} / fp32",
             "value": _f(ratio["chosen_precision_pipeline_wall_over_fp32_pipeline_wall"]),
             "from": f"{pipe['first_run']['wall_s']:.1f} s / {r['by_precision']['fp32']['pipeline']['first_run']['wall_s']:.1f} s"},
            {"ratio": f"largest change of a domain's adapter macro-F1, {chosen} vs fp32",
             "value": _f(ratio["largest_adapter_macro_f1_change_chosen_precision_vs_fp32"], 4), "from": "per domain below"},
            {"ratio": f"LoRA step time, {chosen} / fp32 (same batch)",
             "value": _f(ratio["chosen_precision_lora_step_time_over_fp32_lora_step_time"]),
             "from": f"{lora['step_seconds_median'] * 1000:.0f} ms / "
                     f"{r['by_precision']['fp32']['train_step']['lora']['step_seconds_median'] * 1000:.0f} ms"},
            {"ratio": "adapter bytes / base bytes", "value": _f(ratio["adapter_bytes_over_base_bytes"], 4),
             "from": f"{max(r['size']['adapter_bytes'].values()) / 1024:.0f} KB / {r['size']['base_bytes'] / MB:.1f} MB"},
            {"ratio": "LoRA step time / full fine-tune step time (same batch)",
             "value": _f(ratio["lora_step_time_over_full_step_time"]),
             "from": f"{lora['step_seconds_median'] * 1000:.0f} ms / {full['step_seconds_median'] * 1000:.0f} ms "
                     f"(batch {lora['batch_size']} x {lora['sequence_length']} tokens)"},
            {"ratio": "LoRA peak memory / full fine-tune peak memory (process peak RSS)",
             "value": _f(ratio["lora_peak_rss_over_full_peak_rss"]),
             "from": f"{lora['peak_rss_bytes'] / MB:.0f} MB / {full['peak_rss_bytes'] / MB:.0f} MB (model loaded, libraries included)"},
            {"ratio": "LoRA memory added by training / full fine-tune's (peak RSS - RSS before the first step)",
             "value": _f(ratio["lora_training_memory_over_full_training_memory"]),
             "from": f"{lora['training_memory_bytes'] / MB:.0f} MB / {full['training_memory_bytes'] / MB:.0f} MB"},
            {"ratio": f"LoRA achieved training FLOP/s / measured {chosen} matmul FLOP/s",
             "value": _f(ratio["lora_achieved_flops_over_matmul_flops"]),
             "from": f"{lora['achieved_flops_per_s'] / 1e9:.1f} / {attainable / 1e9:.1f} GFLOP/s"},
            {"ratio": f"full fine-tune achieved training FLOP/s / measured {chosen} matmul FLOP/s",
             "value": _f(ratio["full_achieved_flops_over_matmul_flops"]),
             "from": f"{full['achieved_flops_per_s'] / 1e9:.1f} / {attainable / 1e9:.1f} GFLOP/s"},
            {"ratio": "mixed-domain batch throughput / single merged model throughput",
             "value": _f(ratio["mixed_batch_throughput_over_merged_throughput"]),
             "from": f"{serving['throughput_texts_per_s']['mixed_adapters_one_forward']} / "
                     f"{serving['throughput_texts_per_s']['single_merged_model']} texts/s"},
            {"ratio": "cached no-change re-run wall / first run wall",
             "value": _f(ratio["cached_rerun_wall_over_first_run_wall"], 4),
             "from": f"{pipe['cached_rerun']['wall_s']:.1f} s / {pipe['first_run']['wall_s']:.1f} s"},
            {"ratio": "Prefect + MLflow overhead / pipeline wall",
             "value": _f(ratio["prefect_mlflow_overhead_over_pipeline_wall"], 4),
             "from": f"{pipe['first_run']['overhead_s']:.1f} s / {pipe['first_run']['wall_s']:.1f} s"},
            {"ratio": "full default pipeline wall time", "value": f"{pipe['first_run']['wall_s']:.1f} s",
             "from": f"Prefect server start-up before it: {pipe['prefect_server_startup_s']:.1f} s"},
        ]),
        ("h2", "Quality per domain (test split)"),
        ("img", chart, "macro-F1 per domain: zero-shot base, TF-IDF, LoRA adapter, full fine-tune"),
    ]
    for metric in ("macro_f1", "accuracy"):
        blocks += [("h3", metric), ("table", [
            {"domain": d, **{MODELS[k]: _f(v[k][metric]) for k in MODELS if k in v}} for d, v in r["quality"].items()])]
    blocks += [
        ("h2", "Training cost"),
        ("table", [{"method": name, "trainable params": f"{s['trainable_params']:,}",
                    "step ms (median)": f"{s['step_seconds_median'] * 1000:.0f}",
                    "GFLOP per step": f"{s['flops_per_step'] / 1e9:.1f}",
                    "achieved GFLOP/s": f"{s['achieved_flops_per_s'] / 1e9:.1f}",
                    "peak RSS MB": f"{s['peak_rss_bytes'] / MB:.0f}",
                    "RSS before training MB": f"{s['rss_before_training_bytes'] / MB:.0f}",
                    "added by training MB": f"{s['training_memory_bytes'] / MB:.0f}",
                    "grads + AdamW state MB": f"{s['grads_and_optimizer_state_bytes'] / MB:.1f}"}
                   for name, s in (("LoRA", lora), ("full fine-tune", full))]),
        ("p", f"FLOPs: {r['flops_counting']} Measured matmul: "
              + ", ".join(f"{p} {m['flops_per_s'] / 1e9:.1f} GFLOP/s" for p, m in r["matmul"].items())
              + f" (n = {r['matmul'][chosen]['matrix_size']}). Step timings use domain `{r['train_step']['step_domain']}`."),
        ("table", [{"domain": d, "full fine-tune lr (chosen)": v["learning_rate"],
                    "val macro-F1 per lr tried": ", ".join(f"{lr}: {t['best_val_macro_f1']:.3f}"
                                                           for lr, t in v["learning_rates_tried"].items()),
                    "train s (chosen)": _f(v["train_seconds"], 1), "steps": v["steps"]}
                   for d, v in r["full_finetune"].items()]),
        ("h2", "Serving (through the server's MicroBatcher)"),
        ("table", [{"mode": k, "texts/s": v} for k, v in serving["throughput_texts_per_s"].items()]),
        ("p", f"{serving['setup']['texts']} one-text requests over {len(serving['setup']['domains'])} domains, batches of up "
              f"to {serving['setup']['batch_size']}, median of {serving['setup']['repeats']} runs per mode, modes interleaved. "
              f"Batch-1 latency p50/p95: {serving['latency_batch1']['pool']['p50_ms']}/{serving['latency_batch1']['pool']['p95_ms']} ms "
              f"in process, {serving['latency_batch1']['http']['p50_ms']}/{serving['latency_batch1']['http']['p95_ms']} ms over HTTP. "
              f"Mixed and switching gave the same label to {serving['mixed_and_switching_agreement']:.1%} of the texts "
              f"({serving['setup']['precision']}; under bf16 the two paths round differently)."),
        ("h2", "Precision: fp32 against " + chosen + " (same run)"),
        ("table", [{"figure": name, **{p: fmt(v) for p, v in r["by_precision"].items()}}
                   for name, fmt in _precision_rows(r)]),
        ("p", "Each precision ran the pipeline in its own fresh project on the same splits; quality is the "
              "adapter's test macro-F1 read back from MLflow. GFLOP/s share = achieved LoRA training FLOP/s / the "
              "measured matmul FLOP/s of that precision."),
        ("h2", "Pipeline wall time"),
        ("table", [{"run": name, "wall s": _f(v["wall_s"], 1), "ML work s": _f(v["ml_work_s"], 1),
                    "overhead s": _f(v["overhead_s"], 1), "tracking tasks s": _f(v["tracking_task_s"], 1),
                    "task runs": ", ".join(f"{k} {n}" for k, n in sorted(v["task_run_states"].items()))}
                   for name, v in (("first", pipe["first_run"]), ("cached re-run", pipe["cached_rerun"]))]),
        ("p", "ML work = the time some prepare-data, train-adapter or evaluate-adapter task run was running (Prefect's "
              "recorded start/end); overhead = wall - ML work, i.e. time only orchestration, MLflow logging/registry "
              "and the run report were running. Tracking tasks s = summed durations of start-tracking, register-*, "
              "finish-tracking and report-run, overlapped or not. Both runs are flow calls inside one process after "
              "the imports and after Prefect's temporary server started."),
    ]
    return blocks


def _precision_rows(r: dict) -> list[tuple]:
    """(figure, how to read it from one precision's measurements) for the fp32-vs-chosen table."""
    peak = {p: m["flops_per_s"] for p, m in r["matmul"].items()}
    rows = [
        ("pipeline wall s (first run)", lambda v: _f(v["pipeline"]["first_run"]["wall_s"], 1)),
        ("LoRA step ms", lambda v: f"{v['train_step']['lora']['step_seconds_median'] * 1000:.0f}"),
        ("full fine-tune step ms", lambda v: f"{v['train_step']['full']['step_seconds_median'] * 1000:.0f}"),
        ("LoRA GFLOP/s (share of its matmul peak)",
         lambda v: f"{v['train_step']['lora']['achieved_flops_per_s'] / 1e9:.1f} "
                   f"({v['train_step']['lora']['achieved_flops_per_s'] / peak[v['train_step']['lora']['precision']]:.2f})"),
        ("serving mixed / merged texts/s", lambda v: f"{v['serving']['throughput_texts_per_s']['mixed_adapters_one_forward']} / "
                                                     f"{v['serving']['throughput_texts_per_s']['single_merged_model']}"),
        ("HTTP batch-1 p50 ms", lambda v: f"{v['serving']['latency_batch1']['http']['p50_ms']}"),
    ]
    for domain in r["quality"]:
        rows.append((f"{domain} adapter macro-F1", lambda v, d=domain: _f(v["quality"][d]["adapter"]["macro_f1"])))
    return rows


def write_report(result: dict, out_dir: Path) -> Path:
    quality = {d: {k: v[k]["macro_f1"] for k in MODELS if k in v} for d, v in result["quality"].items()}
    chart = plot_grouped_bars(quality, MODELS, "macro-F1", "Test macro-F1 per domain", out_dir / "quality.png")
    path = out_dir / "report.md"
    path.write_text(render_markdown(report_blocks(result, chart)))
    return path
