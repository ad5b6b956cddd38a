"""How strong the classical baseline is: TF-IDF + logistic regression, untuned vs tuned, on the built-in datasets.

    python -m benchmarks.bench_classical [--datasets vader,bbc,...]

The promotion gate holds an adapter back when TF-IDF + logistic regression beats it, so the baseline must be
a fair one. On each domain's default splits (the rows the adapter trains, validates and is tested on), test
macro-F1 and fitting seconds of four variants, all from ``lora_pipeline.evaluation.classical.fit_tfidf``:
- ``untuned``: scikit-learn's defaults (C=1, no class weights), the baseline until 2026-12-06;
- ``balanced``: class-balanced, C=1;
- ``balanced_c_val`` (the default): class-balanced, C from ``eval.tfidf_c_grid`` picked on the validation split;
- ``balanced_c_cv``: class-balanced, C picked by 5-fold cross-validation on the train split (same grid).
Written to ``benchmarks/results/classical.json``. No training of adapters: ~15 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from sklearn.base import clone
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from benchmarks.report import write_json_and_table
from lora_pipeline.config import EvalConfig, load_config
from lora_pipeline.data.datasets import fetch_dataset
from lora_pipeline.data.prepare import prepare_data
from lora_pipeline.evaluation.classical import fit_tfidf, macro_f1_scorer
from lora_pipeline.evaluation.metrics import classification_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("vader", "bbc", "newsgroups", "newsgroups20", "imdb", "drugs", "clothing", "medmcqa", "reddit")


def _macro_f1(truth, predicted, labels) -> float:
    """The test metric exactly as the pipeline logs it (``tfidf_macro_f1``)."""
    return round(classification_metrics(truth, predicted, labels)["macro_f1"], 4)


def compare_domain(train, val, test, labels: list[str]) -> dict:
    """Each variant's test macro-F1, the C it used and its fitting seconds."""
    out = {}
    variants = {"untuned": EvalConfig(tfidf_c_grid=[1.0], tfidf_class_weight="none"),
                "balanced": EvalConfig(tfidf_c_grid=[1.0]), "balanced_c_val": EvalConfig()}
    for name, cfg in variants.items():
        started = time.perf_counter()
        model = fit_tfidf(train, val, cfg)
        out[name] = {"macro_f1": _macro_f1(test["label"], model.predict(test["text"]), labels),
                     "C": model.named_steps["logreg"].C, "seconds": round(time.perf_counter() - started, 2)}
    # The alternative to one validation split: 5 folds of train (the vectoriser fitted on all of train), the
    # same class-balanced classifier as the default's (``model``, the last variant fitted).
    started = time.perf_counter()
    vectorizer = model.named_steps["tfidf"]
    search = GridSearchCV(clone(model.named_steps["logreg"]), {"C": sorted(EvalConfig().tfidf_c_grid)},
                          scoring=macro_f1_scorer(), cv=StratifiedKFold(5, shuffle=True, random_state=0),
                          error_score="raise")
    search.fit(vectorizer.transform(train["text"]), train["label"])
    predicted = search.predict(vectorizer.transform(test["text"]))
    out["balanced_c_cv"] = {"macro_f1": _macro_f1(test["label"], predicted, labels), "C": search.best_params_["C"],
                            "seconds": round(time.perf_counter() - started + out["balanced_c_val"]["seconds"], 2)}
    return out


def markdown(result: dict) -> str:
    variants = ("untuned", "balanced", "balanced_c_val", "balanced_c_cv")
    lines = ["| dataset | domain | labels | " + " | ".join(variants) + " | s (c_val / c_cv) |", "|" + "---|" * 8]
    for row in result["domains"]:
        cells = [f"{row[v]['macro_f1']:.3f}" + (f" (C {row[v]['C']:g})" if v.endswith(("val", "cv")) else "")
                 for v in variants]
        lines.append(f"| {row['dataset']} | {row['domain']} | {row['labels']} | " + " | ".join(cells)
                     + f" | {row['balanced_c_val']['seconds']:.1f} / {row['balanced_c_cv']['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_classical", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of: " + ", ".join(DATASETS))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "classical.json")
    args = parser.parse_args(argv)
    from benchmarks.bench_serving import machine

    rows = []
    for name in args.datasets.split(","):
        data = fetch_dataset(name, REPO_ROOT / "data" / f"{name}.csv")
        cfg = load_config(values={"data.path": str(data)})
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # 5-fold CV: a rare label missing from a fold
            prepared = prepare_data(data, cfg.data, cfg.split, tmp, base=cfg.base)
            for domain, splits in prepared.domains.items():
                row = {"dataset": name, "domain": domain, "labels": len(splits.labels),
                       **compare_domain(splits.read("train"), splits.read("val"), splits.read("test"), splits.labels)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"benchmark": "classical baseline variants (python -m benchmarks.bench_classical)",
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "c_grid": EvalConfig().tfidf_c_grid, "domains": rows}
    write_json_and_table(args.out, result, markdown(result))
    return result


if __name__ == "__main__":
    main()
