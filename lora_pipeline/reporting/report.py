"""Reports: the flow's per-domain summary table, and the comparison report of one pipeline run.

The comparison report (``lora-pipeline report``) reads everything from MLflow, so it can be rendered
for any past run: the parent run names each domain's run (tag ``domain_run/<domain_dirname>``, which for a
cached domain is the run that trained it), and each domain run holds the metrics and evaluation.json.
It is written as markdown (with PNGs beside it) and as one self-contained HTML file, and logged back to
the parent run under ``report/``.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lora_pipeline.config import PipelineConfig, domain_dirname
from lora_pipeline.errors import RegistryError
from lora_pipeline.evaluation.generation import markdown_cell
from lora_pipeline.evaluation.metrics import plot_confusion_matrix
from lora_pipeline.evaluation.tasks import Task, task_of_metric
from lora_pipeline.registry import schema
from lora_pipeline.registry.promotion import tfidf_verdict, tfidf_wins
from lora_pipeline.registry.tracking import setup_tracking

REPORT_ARTIFACT_DIR = "report"
# Display names, in the order reports show them; evaluation.py's model keys.
MODEL_NAMES = {"base": "zero-shot base", "fewshot": "few-shot base", "tfidf": "TF-IDF+LR", "lead": "lead sentence",
               "adapter": "LoRA adapter"}
# Per task: the metric tables the report shows (the one promotion compared comes first and is charted).
REPORTED = {"classify": ("macro_f1", "accuracy"), "generate": ("rougeL", "rouge1", "rouge2")}
EFFICIENCY = ("train_seconds", "adapter_size_bytes", "trainable_params", "latency_p50_ms", "throughput_per_s")


def summary_rows(results: dict, failures: dict[str, str], left_out: dict[str, str] | None = None) -> list[dict]:
    """``results``: domain -> (TrainedAdapter, DomainEvaluation, RegisteredAdapter). Each row shows the metric
    its version's promotion compared (promotion.metric; a cached version: the one it was decided by).
    ``left_out``: domain -> why the data had too little of it to train (``PreparedData.skipped_domains``)."""
    rows = []
    for domain, (trained, evaluation, registered) in sorted(results.items()):
        ranked = registered.metric
        # A classification run's few-shot base is in the report, not in this table (its width).
        shown = [m for m in MODEL_NAMES if m in evaluation.metrics and (m != "fewshot" or evaluation.classical == "lead")]
        rows.append({
            "domain": domain,
            "status": "registered" if registered.is_new else "unchanged (cached)",
            "model": registered.model_name,
            "version": registered.version,
            "alias": registered.alias,
            **{f"{model}_{ranked}": round(evaluation.metrics[model][ranked], 4) for model in shown},
            **({"adapter_accuracy": round(evaluation.metrics["adapter"]["accuracy"], 4)}
               if "accuracy" in evaluation.metrics["adapter"] else {}),
            "train_seconds": round(trained.train_seconds, 1),
            "adapter_kb": round(trained.adapter_size_bytes / 1024, 1),
            "n_test": evaluation.n_test,
            "max_length": trained.max_length,
            "truncated": f"{trained.truncated_share:.0%}",
            "train_rows": f"{trained.train_rows}/{trained.train_rows_available}",
            "finding": _finding(domain, trained, evaluation, ranked),
        })
    for domain, error in sorted(failures.items()):
        rows.append({"domain": domain, "status": f"FAILED: {error}"})
    for domain, reason in sorted((left_out or {}).items()):
        rows.append({"domain": domain, "status": "left out: too little data", "finding": reason})
    return rows


def _finding(domain: str, trained, evaluation, metric: str) -> str:
    """What the user must know about this domain, in words ('' for nothing)."""
    notes = []
    adapter, classical = (evaluation.metrics[m][metric] for m in ("adapter", evaluation.classical))
    if tfidf_wins(adapter, classical):
        notes.append(tfidf_verdict(domain, adapter, classical, task_of_metric(metric).classical_name))
    if trained.train_rows < trained.train_rows_available:
        minutes = trained.train_seconds * trained.train_rows_available / max(1, trained.train_rows) / 60
        notes.append(f"trained on {trained.train_rows} of {trained.train_rows_available} train rows "
                     f"(all rows: ~{minutes:.0f} min; --set split.max_train_rows=0)")
    return "; ".join(notes)


def findings(rows: list[dict]) -> list[str]:
    """One line per domain with something to say, for the console after the table."""
    return [f"{row['domain']}: {row['finding']}" for row in rows if row.get("finding")]


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A markdown table (renders in the Prefect UI and on GitHub, reads fine in a terminal)."""
    columns = columns or (list(rows[0]) if rows else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def format_results_table(rows: list[dict]) -> str:
    scores = [f"{model}_{metric}" for metrics in REPORTED.values() for metric in metrics
              for model in ("adapter", "base", "fewshot", "tfidf", "lead")]
    present = [c for c in scores if any(c in row for row in rows)]
    return markdown_table(rows, ["domain", "status", "version", "alias", *present, "train_seconds", "max_length",
                                 "train_rows", "n_test"])


# --- the comparison report of one run ---------------------------------------------------------------

@dataclass
class DomainResult:
    domain: str
    run_id: str
    labels: list[str]
    metrics: dict[str, dict[str, float]]  # model -> {accuracy, precision, recall, macro_f1, micro_f1}
    confusion: dict[str, list[list[int]]]  # model -> confusion matrix (rows true, columns predicted)
    efficiency: dict[str, float]
    version: str = ""
    decision: str = ""
    reason: str = ""  # the promotion rule's numbers, e.g. "challenger: TF-IDF beats the adapter on ..."
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> 95 % bootstrap of the metric
    metric: str = "macro_f1"  # what promotion compared (the task's own: macro_f1, generation rougeL)
    samples: list[dict] = field(default_factory=list)  # generation: a few (input, reference, outputs) rows


@dataclass
class RunComparison:
    run_id: str
    run_name: str
    started: str
    tags: dict[str, str]
    domains: list[DomainResult] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        present = {m for d in self.domains for m in d.metrics}
        return [m for m in MODEL_NAMES if m in present]

    @property
    def metric(self) -> str:
        return self.domains[0].metric if self.domains else "macro_f1"

    def scores(self, metric: str) -> dict[str, dict[str, float]]:
        """domain -> model -> ``metric``."""
        return {d.domain: {m: d.metrics[m][metric] for m in self.models if m in d.metrics} for d in self.domains}


def latest_parent_run(client, experiment: str) -> str:
    """The newest pipeline (parent) run of ``experiment``."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=200) if found else []
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags and run.data.tags.get(schema.DATA_FINGERPRINT):
            return run.info.run_id
    raise RegistryError(f"no pipeline run in MLflow experiment '{experiment}' (run `lora-pipeline run` first)")


def collect_comparison(client, run_id: str) -> RunComparison:
    """Metrics and confusion matrices of every domain of parent run ``run_id``, read from MLflow."""
    try:
        parent = client.get_run(run_id)
    except Exception as exc:  # MlflowException: unknown id
        raise RegistryError(f"run '{run_id}': not found in the MLflow store ({exc.__class__.__name__})") from None
    tags = parent.data.tags
    if "mlflow.parentRunId" in tags:
        raise RegistryError(f"run '{run_id}' is the domain run of '{tags.get('domain')}'; "
                            f"report its pipeline run {tags['mlflow.parentRunId']}")
    domain_runs = {k[len(schema.DOMAIN_RUN_PREFIX):]: v for k, v in tags.items() if k.startswith(schema.DOMAIN_RUN_PREFIX)}
    if not domain_runs:  # runs from before the tag existed: their nested runs
        children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        domain_runs = {c.data.tags["domain"]: c.info.run_id for c in children if "domain" in c.data.tags}
    comparison = RunComparison(run_id=run_id, run_name=parent.info.run_name or run_id,
                               started=_iso(parent.info.start_time), tags=dict(tags))
    ranked = tags.get(schema.PROMOTION_METRIC)  # the run's promotion.metric (runs before the tag: the task's own)
    with tempfile.TemporaryDirectory() as tmp:
        for key, domain_run_id in sorted(domain_runs.items()):
            run = client.get_run(domain_run_id)
            domain = run.data.tags.get(schema.DOMAIN, key)  # the tag key holds a safe form of the name
            local = client.download_artifacts(domain_run_id, "evaluation", tmp)
            evaluation = json.loads((Path(local) / "evaluation.json").read_text())
            metric = ranked or evaluation.get("metric", "macro_f1")
            task = task_of_metric(metric)
            predictions = Path(local) / "predictions.jsonl"  # absent in runs logged before it existed
            rows = pd.read_json(predictions, lines=True, dtype=False) if predictions.is_file() else None
            comparison.domains.append(DomainResult(
                domain=domain,
                run_id=domain_run_id,
                labels=evaluation["labels"],
                metrics={m: {k: x for k, x in v.items() if isinstance(x, (int, float))}
                         for m, v in evaluation["metrics"].items()},
                confusion={m: v["confusion_matrix"] for m, v in evaluation["metrics"].items() if "confusion_matrix" in v},
                efficiency={k: run.data.metrics[k] for k in EFFICIENCY if k in run.data.metrics},
                version=run.data.tags.get(schema.REGISTERED_VERSION, ""),
                decision=run.data.tags.get(schema.PROMOTION_DECISION, ""),
                reason=run.data.tags.get(schema.PROMOTION_REASON, ""),
                intervals=_intervals(rows, evaluation["labels"], task) if rows is not None else {},
                metric=metric,
                samples=rows.head(5).to_dict("records") if rows is not None and task.name == "generate" else [],
            ))
    return comparison


def _intervals(rows: pd.DataFrame, labels: list[str], task: Task) -> dict[str, tuple[float, float]]:
    """Per model, the bootstrap interval of the metric ``task`` ranks by (``rows``: the run's predictions.jsonl)."""
    truth = rows[task.truth_column].astype(str).tolist()
    return {c.removesuffix("_pred"): task.metric.interval(truth, rows[c].astype(str).tolist(), labels)
            for c in rows.columns if c.endswith("_pred")}


def _iso(ms: int | None) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds") if ms else ""


def plot_grouped_bars(values: dict[str, dict[str, float]], names: dict[str, str], ylabel: str, title: str,
                      path: str | Path, errors: dict[str, dict[str, tuple[float, float]]] | None = None) -> Path:
    """One group of bars per domain, one bar per model (in ``names`` order), value printed on each bar;
    ``errors``: domain -> model -> (low, high) drawn as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or CI
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(values)
    models = [m for m in names if any(m in values[g] for g in groups)]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.6 + 1.7 * len(groups), 3.8))
    for i, model in enumerate(models):
        xs = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
        ys = [values[g].get(model, np.nan) for g in groups]
        spans = [(errors or {}).get(g, {}).get(model) for g in groups]
        yerr = (np.array([[y - s[0] if s else 0 for y, s in zip(ys, spans)],
                          [s[1] - y if s else 0 for y, s in zip(ys, spans)]]).clip(min=0) if errors else None)
        bars = ax.bar(xs, ys, width, label=names[model], yerr=yerr, capsize=2, error_kw={"lw": 0.8})
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.08)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=len(models), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# A document is a list of blocks, rendered twice: ("h1"|"h2"|"p", text), ("table", rows), ("img", file, alt).
Block = tuple


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "table":
            out.append(markdown_table(args[0]))
        elif kind == "img":
            out.append(f"![{args[1]}]({Path(args[0]).name})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: images are embedded, so the file opens anywhere (MLflow's artifact view too)."""
    out = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
           "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(args[0]).replace('**', '')}</p>")
        elif kind == "table":
            rows = args[0]
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                           for r in rows)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode(Path(args[0]).read_bytes()).decode()
            out.append(f"<img alt='{html.escape(args[1])}' src='data:image/png;base64,{data}'>")
    return "\n".join(out) + "\n"


def comparison_blocks(comparison: RunComparison, out_dir: Path) -> list[Block]:
    """The report's content; writes its pictures into ``out_dir``."""
    models = comparison.models
    names = {m: MODEL_NAMES[m] for m in models}
    tags = comparison.tags
    blocks: list[Block] = [
        ("h1", f"Comparison report: run {comparison.run_name}"),
        ("p", f"MLflow run `{comparison.run_id}`, started {comparison.started}. Dataset `{tags.get('dataset', '?')}` "
              f"(fingerprint `{tags.get('data_fingerprint', '?')[:12]}`), base `{tags.get('base_model', '?')}`, "
              f"code `{tags.get('code_version', '?')}`. Every model is scored on the same test split of its domain."),
    ]
    if not comparison.domains:
        return blocks + [("p", "This run has no evaluated domain.")]
    errors = {d.domain: d.intervals for d in comparison.domains}
    metric = comparison.metric
    task = task_of_metric(metric)
    label = task.metric.name
    chart = plot_grouped_bars(comparison.scores(metric), names, label,
                              f"Test {label} per domain (error bars: 95 % bootstrap over the test rows)",
                              out_dir / f"quality_{metric}.png", errors)
    blocks.append(("img", chart, f"{label} per domain and model, with bootstrap intervals"))
    for metric in dict.fromkeys([metric, *REPORTED[task.name]]):
        blocks += [("h2", metric), ("table", [
            {"domain": d, **{names[m]: f"{v:.3f}" for m, v in by_model.items()},
             "adapter - base": f"{by_model['adapter'] - by_model['base']:+.3f}"}
            for d, by_model in comparison.scores(metric).items()])]
    blocks += [("h2", "Cost of each adapter"), ("table", [
        {"domain": d.domain, "version": d.version, "decision": d.decision,
         "train s": f"{d.efficiency.get('train_seconds', float('nan')):.0f}",
         "adapter KB": f"{d.efficiency.get('adapter_size_bytes', 0) / 1024:.0f}",
         "trainable params": f"{int(d.efficiency.get('trainable_params', 0)):,}",
         "latency p50 ms": f"{d.efficiency.get('latency_p50_ms', float('nan')):.1f}",
         "texts/s": f"{d.efficiency.get('throughput_per_s', float('nan')):.1f}"} for d in comparison.domains])]
    blocks += [("h2", "Promotion decisions"), *[("p", f"**{d.domain}** v{d.version}: {d.reason or d.decision}")
                                                 for d in comparison.domains]]
    for d in comparison.domains:
        blocks += [("h2", f"{d.domain}: every metric"), ("table", [
            {"model": names[m], **{k: f"{v:.3f}" for k, v in d.metrics[m].items()}} for m in models if m in d.metrics])]
        if d.samples:
            blocks += [("p", f"Samples of {d.domain}'s test split:"), ("table", [
                {"input": markdown_cell(r["text"], 200), "reference": markdown_cell(r["target"]),
                 "zero-shot base": markdown_cell(r.get("base_pred", ""), 160),
                 "adapter": markdown_cell(r["adapter_pred"], 160)} for r in d.samples])]
        if not d.confusion:
            continue
        blocks.append(("p", f"Confusion matrices (rows: true label, columns: predicted) on {sum(map(sum, d.confusion['adapter']))} test texts."))
        for m in models:
            if m in d.confusion:
                png = plot_confusion_matrix(d.confusion[m], d.labels, f"{d.domain}: {names[m]}",
                                            out_dir / f"confusion_{domain_dirname(d.domain)}_{m}.png")
                blocks.append(("img", png, f"{d.domain} {names[m]} confusion matrix"))
    return blocks


@dataclass(frozen=True)
class ReportFiles:
    run_id: str
    markdown_path: Path
    html_path: Path
    tables_markdown: str  # the report without its pictures: what a Prefect markdown artifact can show


def write_comparison_report(comparison: RunComparison, out_dir: str | Path) -> ReportFiles:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = comparison_blocks(comparison, out_dir)
    (out_dir / "report.md").write_text(render_markdown(blocks))
    (out_dir / "report.html").write_text(render_html(blocks, f"lora-pipeline run {comparison.run_name}"))
    tables = render_markdown([b for b in blocks if b[0] != "img"] + [
        ("p", f"Charts and confusion matrices: artifacts `{REPORT_ARTIFACT_DIR}/report.html` and "
              f"`{REPORT_ARTIFACT_DIR}/report.md` of MLflow run `{comparison.run_id}`.")])
    return ReportFiles(comparison.run_id, out_dir / "report.md", out_dir / "report.html", tables)


def report_run(cfg: PipelineConfig, run_id: str | None = None, out_dir: str | Path | None = None) -> ReportFiles:
    """Collect run ``run_id`` (default: the newest pipeline run), render it into ``out_dir`` (default:
    work_dir/reports/<run id>) and log it to that run under ``report/``."""
    from mlflow import MlflowClient

    setup_tracking(cfg)
    client = MlflowClient(cfg.tracking_uri, cfg.tracking_uri)
    run_id = run_id or latest_parent_run(client, cfg.tracking.experiment)
    files = write_comparison_report(collect_comparison(client, run_id), out_dir or cfg.work_dir / "reports" / run_id)
    client.log_artifacts(run_id, str(files.markdown_path.parent), REPORT_ARTIFACT_DIR)
    return files
