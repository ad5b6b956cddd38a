"""The two local UIs: a Prefect server and an MLflow tracking server over this project's own stores.

``start_servers`` launches them in the background on 127.0.0.1 (by default), waits until each answers
its health endpoint, and points this project's Prefect profile at the server, so flow runs started
afterwards appear in its UI (MLflow needs nothing: runs are written to the same mlflow.db it serves).
``stop_servers`` stops exactly the processes it started: each is recorded in a pid file with its command
line and checked against it before it is signalled, so an unrelated process that reused the pid is safe.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_pipeline.config import RUNTIME_ENV_DEFAULTS, PipelineConfig
from lora_pipeline.errors import PipelineError

BIN = Path(sys.executable).parent  # the venv that runs this code has both CLIs


class ServerError(PipelineError, RuntimeError):
    """A UI server could not be started or stopped."""


@dataclass(frozen=True)
class Server:
    name: str
    argv: list[str]
    url: str
    health_url: str
    pid: int = 0


def server_specs(cfg: PipelineConfig) -> list[Server]:
    host, srv = cfg.servers.host, cfg.servers
    return [
        Server("prefect", [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(srv.prefect_port)],
               url=f"http://{host}:{srv.prefect_port}", health_url=f"http://{host}:{srv.prefect_port}/api/health"),
        Server("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri", cfg.tracking_uri,
                          "--artifacts-destination", str(cfg.artifact_root), "--host", host,
                          "--port", str(srv.mlflow_port)],
               url=f"http://{host}:{srv.mlflow_port}", health_url=f"http://{host}:{srv.mlflow_port}/health"),
    ]


def _server_env(cfg: PipelineConfig) -> dict[str, str]:
    env = {**os.environ, **RUNTIME_ENV_DEFAULTS, "PREFECT_HOME": str(cfg.prefect_home),
           # MLflow's job runner would start ~10 extra processes (2.4 GB) that this project never uses.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("PREFECT_API_URL", None)  # the server itself must not try to reach a server
    return env


def _state_dir(cfg: PipelineConfig) -> Path:
    return cfg.work_dir / "servers"


def _running(server: Server) -> bool:
    """True if ``server.pid`` is alive and still runs the command we started (pids get reused)."""
    try:
        cmdline = [part.decode() for part in Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0") if part]
    except OSError:
        return False
    # A console script shows up as "python <script> args...": compare the tail.
    return len(cmdline) >= len(server.argv) and cmdline[-len(server.argv):] == server.argv


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def recorded_servers(cfg: PipelineConfig) -> list[Server]:
    return [Server(**json.loads(p.read_text())) for p in sorted(_state_dir(cfg).glob("*.json"))]


def _set_prefect_api_url(cfg: PipelineConfig, url: str | None) -> None:
    """Write (or remove) PREFECT_API_URL in the project's Prefect profile with Prefect's own CLI."""
    argv = ["config", "set", f"PREFECT_API_URL={url}"] if url else ["config", "unset", "PREFECT_API_URL", "-y"]
    subprocess.run([str(BIN / "prefect"), *argv], env=_server_env(cfg), check=True, capture_output=True)


def start_servers(cfg: PipelineConfig, timeout_s: float = 120) -> list[Server]:
    state = _state_dir(cfg)
    state.mkdir(parents=True, exist_ok=True)
    started = []
    for spec in server_specs(cfg):
        record = state / f"{spec.name}.json"
        if record.exists():
            previous = Server(**json.loads(record.read_text()))
            if _running(previous):
                started.append(previous)
                continue
            record.unlink()
        port = int(spec.argv[spec.argv.index("--port") + 1])
        if not _port_free(cfg.servers.host, port):
            raise ServerError(f"{spec.name}: port {port} on {cfg.servers.host} is already in use "
                              f"(set servers.{spec.name}_port to another port)")
        log = (state / f"{spec.name}.log").open("ab")
        # A new session: the server and its children form one process group that stop_servers ends.
        proc = subprocess.Popen(spec.argv, env=_server_env(cfg), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cfg.project_dir)
        server = Server(**{**asdict(spec), "pid": proc.pid})
        record.write_text(json.dumps(asdict(server)))
        started.append(server)
    deadline = time.monotonic() + timeout_s
    for server in started:
        while not _healthy(server.health_url):
            if not _running(server) or time.monotonic() > deadline:
                stop_servers(cfg)
                raise ServerError(f"{server.name}: not healthy at {server.health_url} "
                                  f"(log: {_state_dir(cfg) / (server.name + '.log')})")
            time.sleep(0.5)
    _set_prefect_api_url(cfg, f"{started[0].url}/api")
    return started


def stop_servers(cfg: PipelineConfig, grace_s: float = 20) -> list[Server]:
    """Stop the recorded servers (SIGTERM to their process group, SIGKILL after ``grace_s``)."""
    stopped = []
    for server in recorded_servers(cfg):
        if _running(server):
            os.killpg(server.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _running(server) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _running(server):
                os.killpg(server.pid, signal.SIGKILL)
            stopped.append(server)
        (_state_dir(cfg) / f"{server.name}.json").unlink(missing_ok=True)
    if cfg.prefect_home.exists():
        _set_prefect_api_url(cfg, None)  # later runs go back to Prefect's temporary local server
    return stopped
