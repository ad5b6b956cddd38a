"""``lora-pipeline``: the one command users run.

    lora-pipeline run [--config FILE] [--domains a,b] [--data FILE --text-col C --label-col C --domain-col C]
                      [--set section.key=value ...]
    lora-pipeline fetch-data
    lora-pipeline config [--config FILE] [--set ...]     # print the resolved config
"""

from __future__ import annotations

import argparse
import sys

import yaml

from lora_pipeline.config import PipelineConfig, apply_runtime_env, load_config
from lora_pipeline.errors import PipelineError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (keys as in lora_pipeline/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=1 (repeatable)")


def _config_from_args(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    # Named flags are shorthands for --set data.*.
    for flag, key in [("data", "path"), ("text_col", "text_col"), ("label_col", "label_col"),
                      ("domain_col", "domain_col")]:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"data.{key}={value}")
    if getattr(args, "domains", None):
        overrides.append(f"data.domains=[{args.domains}]")
    return load_config(args.config, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    # Imported here: the library itself never imports Prefect; only running the flow needs it.
    from flows.retrain import retrain_with

    retrain_with(cfg)(config=cfg)
    print(f"\nMLflow store: {cfg.tracking_uri}   registered models: {cfg.data.name}-<domain>")
    print("Open the UIs (each in its own terminal, from the project directory):")
    print("  Prefect: PREFECT_HOME=.prefect .venv/bin/prefect server start --host 127.0.0.1   -> http://127.0.0.1:4200")
    print(f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri {cfg.tracking_uri} --host 127.0.0.1   -> http://127.0.0.1:5000")
    return 0


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from lora_pipeline.datasets import resolve_data_path

    cfg = _config_from_args(args)
    print(resolve_data_path(None, cfg.project_dir))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_config_from_args(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="prepare, train, evaluate, register and promote one adapter per domain")
    _add_config_args(run)
    run.add_argument("--domains", help="comma-separated domains to build (default: all)")
    run.add_argument("--data", help="CSV, Parquet or JSONL file (default: the built-in VADER set)")
    run.add_argument("--text-col", help="text column name")
    run.add_argument("--label-col", help="label column name")
    run.add_argument("--domain-col", help="domain column name")
    run.set_defaults(func=_cmd_run)

    fetch = sub.add_parser("fetch-data", help="download the built-in VADER dataset into data/vader.csv")
    _add_config_args(fetch)
    fetch.set_defaults(func=_cmd_fetch_data)

    show = sub.add_parser("config", help="print the resolved config as YAML")
    _add_config_args(show)
    show.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_runtime_env()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as exc:  # bad input/config or failed domains: one line; details are in the logs
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
