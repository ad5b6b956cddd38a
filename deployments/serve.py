"""The retraining flow's two deployments, served from one long-running process (`lora-pipeline deploy`).

- ``retrain/nightly``: every domain, on the config's cron.
- ``retrain/rebuild``: no schedule; run it for some domains, e.g.
  ``prefect deployment run 'retrain/rebuild' -p domains='["amazon"]'``.
Both carry the resolved config as their default ``config`` parameter, so a run uses exactly the config
the process was started with (any key can still be overridden per run with ``-p``).
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from flows.retrain import retrain
from lora_pipeline.config import PipelineConfig

TAGS = ["lora-pipeline"]


def build_deployments(cfg: PipelineConfig) -> list[RunnerDeployment]:
    # Absolute project_dir: the served process starts each run in a fresh subprocess.
    pinned = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"project_dir": str(cfg.project_dir)})})
    common = dict(parameters={"config": pinned.model_dump(mode="json")}, tags=TAGS,
                  entrypoint_type=EntrypointType.MODULE_PATH)  # importable wherever the project is installed
    return [
        retrain.to_deployment(name="nightly", schedules=[Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)],
                              description="Retrain every domain (unchanged domains are cache hits).", **common),
        retrain.to_deployment(name="rebuild", description="Retrain the domains given in the 'domains' parameter.",
                              **common),
    ]


def serve_deployments(cfg: PipelineConfig) -> None:
    # One run at a time: two runs registering the same domain at once would race for the champion alias.
    serve(*build_deployments(cfg), limit=1)
