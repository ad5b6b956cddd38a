"""The comparison report of one pipeline run (default: the newest), as its own flow run: rendered to
markdown + HTML, logged to the run in MLflow, and shown as a Prefect artifact. `lora-pipeline report`."""

from __future__ import annotations

from prefect import flow

from lora_pipeline.config import PipelineConfig, load_config
from tasks.pipeline import configure, report_run_task


@flow(name="report", log_prints=True)
def report(config: PipelineConfig | None = None, run_id: str | None = None, out_dir: str | None = None) -> str:
    cfg = config or load_config()
    files = configure(report_run_task, cfg)(cfg, run_id, out_dir)
    print(f"report of MLflow run {files.run_id}:\n  {files.markdown_path}\n  {files.html_path}")
    return str(files.html_path)
