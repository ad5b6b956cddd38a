"""Per-domain summary rows and their plain-text/markdown table (the flow's artifact and CLI output)."""

from __future__ import annotations


def summary_rows(results: dict, failures: dict[str, str]) -> list[dict]:
    """``results``: domain -> (TrainedAdapter, DomainEvaluation, RegisteredAdapter)."""
    rows = []
    for domain, (trained, evaluation, registered) in sorted(results.items()):
        rows.append({
            "domain": domain,
            "status": "registered" if registered.is_new else "unchanged (cached)",
            "model": registered.model_name,
            "version": registered.version,
            "alias": registered.alias,
            "adapter_macro_f1": round(evaluation.macro_f1("adapter"), 4),
            "base_macro_f1": round(evaluation.macro_f1("base"), 4),
            "tfidf_macro_f1": round(evaluation.macro_f1("tfidf"), 4),
            "adapter_accuracy": round(evaluation.metrics["adapter"]["accuracy"], 4),
            "train_seconds": round(trained.train_seconds, 1),
            "adapter_kb": round(trained.adapter_size_bytes / 1024, 1),
            "n_test": evaluation.n_test,
        })
    for domain, error in sorted(failures.items()):
        rows.append({"domain": domain, "status": f"FAILED: {error}"})
    return rows


def format_results_table(rows: list[dict]) -> str:
    """A markdown table (renders in the Prefect UI, reads fine in a terminal)."""
    columns = ["domain", "status", "version", "alias", "adapter_macro_f1", "base_macro_f1", "tfidf_macro_f1",
               "train_seconds", "adapter_kb", "n_test"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
