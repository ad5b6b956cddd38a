"""Held-out datasets: the default pipeline on data unlike VADER, run as a new user would run it.

    python -m benchmarks.bench_heldout [--datasets vader,bbc,newsgroups,newsgroups20,imdb,drugs] [--set KEY=VALUE ...]

For each dataset: the built-in copy (``lora-pipeline fetch-data --dataset NAME``), then
``lora-pipeline run --data data/NAME.csv`` with the default config (nothing tuned per dataset) in its
own scratch project under ``benchmarks/.work/heldout/``. Writes ``benchmarks/results/heldout.json`` and
``heldout.md``: per domain the adapter / zero-shot / TF-IDF macro-F1 and accuracy, the length chosen
from the data and the share of texts cut, train rows used of those available, train seconds, epochs
run, and the promotion decision with its reason. Also the targets: adapter error <= 0.8x TF-IDF's
(1 - F1), and for imdb accuracy >= 0.85.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from lora_pipeline.config import apply_runtime_env, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("vader", "bbc", "newsgroups", "newsgroups20", "newsgroups-close", "imdb", "drugs", "clothing", "stars", "medmcqa", "reddit")
ERROR_RATIO_TARGET = 0.8  # adapter's (1 - macro-F1) at most 0.8x TF-IDF+LR's
BASELINES = ("adapter", "base", "fewshot", "tfidf")


def run_dataset(name: str, overrides: list[str], work: Path) -> dict:
    """The default pipeline on built-in dataset ``name``; its per-domain results read back from MLflow."""
    from mlflow import MlflowClient

    from flows.retrain import retrain
    from lora_pipeline.data.datasets import fetch_dataset
    from lora_pipeline.errors import DomainFailure

    data = fetch_dataset(name, REPO_ROOT / "data" / f"{name}.csv")
    project = work / name
    shutil.rmtree(project, ignore_errors=True)  # a first run: no cache, no registry
    project.mkdir(parents=True)
    cfg = load_config(overrides=[*overrides, f"runtime.project_dir={project}"], values={"data.path": str(data)})
    started = time.perf_counter()
    try:
        rows, failure = retrain(config=cfg), None
    except DomainFailure as exc:  # the domains that finished are still registered and reported
        rows, failure = [], str(exc)
    wall = time.perf_counter() - started
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    versions = [(row["domain"], row["model"], row["version"], row["alias"]) for row in rows if "version" in row]
    return {"data": str(data.relative_to(REPO_ROOT)), "registered_as": f"{cfg.dataset_name}-<domain>",
            "wall_s": round(wall, 1), "failure": failure, "domains": collect_domains(client, versions)}


def collect_domains(client, versions: list[tuple[str, str, str, str]]) -> dict[str, dict]:
    """Per domain, read back from MLflow: ``versions`` = (domain, registered model, version, alias)."""
    import tempfile

    domains = {}
    for domain, model, number, alias in versions:
        version = client.get_model_version(model, number)
        m = client.get_run(version.run_id).data.metrics
        with tempfile.TemporaryDirectory() as tmp:
            evaluation = json.loads(Path(client.download_artifacts(version.run_id, "evaluation/evaluation.json",
                                                                   tmp)).read_text())
        per_class = evaluation["metrics"]["adapter"]["per_class"]
        adapter, tfidf = m["adapter_macro_f1"], m["tfidf_macro_f1"]
        domains[domain] = {
            "labels": version.tags.get("labels", "").split(","),
            # few-shot: generative bases only
            "macro_f1": {k: round(m[f"{k}_macro_f1"], 4) for k in BASELINES if f"{k}_macro_f1" in m},
            "accuracy": {k: round(m[f"{k}_accuracy"], 4) for k in BASELINES if f"{k}_accuracy" in m},
            "adapter_f1_per_label": {label: round(per_class[label]["f1-score"], 4) for label in evaluation["labels"]},
            "error_ratio_vs_tfidf": round((1 - adapter) / max(1e-9, 1 - tfidf), 3),
            "max_length": int(m["max_length"]), "truncated_share": m["truncated_share"],
            "train_rows": int(m["n_train"]), "train_rows_available": int(m.get("n_train_available", m["n_train"])),
            "n_test": int(m["n_test"]), "train_seconds": m["train_seconds"], "epochs_run": m["epochs_run"],
            "latency_p50_ms": m["latency_p50_ms"], "base_model": version.tags.get("base_model", ""),
            "adapter_size_bytes": int(m["adapter_size_bytes"]), "trainable_params": int(m["trainable_params"]),
            "class_weighted": bool(m["class_weighted"]),
            # whether the domain trained the bag-of-words term, and the TF-IDF signal that decided it (2-3 labels)
            "bag_of_words_term": bool(m.get("bag_of_words_term", 0)),
            "bag_of_words_tfidf_val_macro_f1": m.get("bag_of_words_tfidf_val_macro_f1"),
            "tfidf_C": m.get("tfidf_C"),  # what the validation split picked (absent before 2026-12-06: C=1)
            "alias": alias, "reason": version.tags.get("promotion_reason", ""),
        }
    return domains


def targets(results: dict) -> dict:
    """Issue 13's targets, each with the figures it was checked on."""
    per_domain = {f"{d}/{dom}": r["error_ratio_vs_tfidf"] for d, res in results.items() for dom, r in res["domains"].items()}
    out = {"error_ratio_vs_tfidf_max": max(per_domain.values(), default=None),
           "domains_meeting_error_ratio": sum(v <= ERROR_RATIO_TARGET for v in per_domain.values()),
           "domains": len(per_domain)}
    if "imdb" in results and "imdb" in results["imdb"]["domains"]:
        out["imdb_accuracy"] = results["imdb"]["domains"]["imdb"]["accuracy"]["adapter"]
    if "vader" in results and "movie" in results["vader"]["domains"]:
        out["vader_movie_neutral_f1"] = results["vader"]["domains"]["movie"]["adapter_f1_per_label"]["neutral"]
    return out


def markdown(result: dict) -> str:
    lines = ["| dataset | domain | labels | adapter | zero-shot | few-shot | TF-IDF | error / TF-IDF's | accuracy "
             "| length (cut) | train rows | train s | epochs | latency p50 ms | alias |", "|" + "---|" * 15]
    for name, res in result["datasets"].items():
        for dom, r in res["domains"].items():
            f1 = r["macro_f1"]
            fewshot = f"{f1['fewshot']:.3f}" if "fewshot" in f1 else "-"
            latency = f"{r['latency_p50_ms']:.0f}" if "latency_p50_ms" in r else "-"  # results before 2026-12-04 lack it
            tfidf_c = f" (C {r['tfidf_C']:g})" if r.get("tfidf_C") else ""
            best = max(f1[m] for m in ("adapter", "base", "tfidf", "fewshot") if m in f1)
            adapter, tfidf = (f"**{f1[m]:.3f}**" if f1[m] == best else f"{f1[m]:.3f}" for m in ("adapter", "tfidf"))
            lines.append(f"| {name} | {dom} | {len(r['labels'])} | {adapter} | {f1['base']:.3f} | "
                         f"{fewshot} | {tfidf}{tfidf_c} | {r['error_ratio_vs_tfidf']:.2f} | {r['accuracy']['adapter']:.3f} | "
                         f"{r['max_length']} ({r['truncated_share']:.0%}) | {r['train_rows']}/{r['train_rows_available']} | "
                         f"{r['train_seconds']:.0f} | {r['epochs_run']:g} | {latency} | {r['alias']} |")
        if res["failure"]:
            lines.append(f"| {name} | FAILED: {res['failure']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_heldout", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of: " + ", ".join(DATASETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config key for every dataset (default: none, as a new user)")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / ".work" / "heldout")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    apply_runtime_env(load_config(overrides=[f"runtime.project_dir={args.work}"]))  # one Prefect home for all
    from benchmarks.bench_serving import machine

    started = time.perf_counter()
    results = {}
    for name in args.datasets.split(","):
        print(f"held-out: {name} ...", flush=True)
        results[name] = run_dataset(name, args.overrides, args.work)
    result = {"benchmark": "held-out datasets, default config (python -m benchmarks.bench_heldout)",
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "overrides": args.overrides, "datasets": results, "targets": targets(results),
              "wall_s": round(time.perf_counter() - started, 1)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "heldout.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "heldout.md").write_text(markdown(result))
    print(markdown(result))
    print(json.dumps(result["targets"], indent=2))
    return result


if __name__ == "__main__":
    main()
