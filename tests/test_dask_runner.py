"""Scale-out: `runtime.task_runner: dask` sends the domains to a running Dask cluster (prefect-dask).

The cluster is a real distributed.LocalCluster of two worker processes on 127.0.0.1, started here as a
user would start theirs; the pipeline only gets its address.
"""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient

from lora_pipeline.config import load_config
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield cluster


def test_dask_runner_trains_domains_in_two_worker_processes(tmp_path, vader_csv, prefect_harness, dask_cluster):
    from distributed import Client

    from flows.retrain import retrain

    cfg = load_config(overrides=tiny_overrides(tmp_path) + [
        f"data.path={vader_csv}", "data.domains=[amazon,tweets]",
        "runtime.task_runner=dask", f"runtime.dask_address={dask_cluster.scheduler_address}"])
    rows = retrain(config=cfg)
    assert [r["status"] for r in rows] == ["registered", "registered"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trained_on = {}
    for domain in ("amazon", "tweets"):
        version = client.get_model_version(f"vader-{domain}", "1")
        trained_on[domain] = client.get_run(version.run_id).data.tags["trained_on"]
    pids = {int(where.rsplit(":", 1)[1]) for where in trained_on.values()}
    with Client(dask_cluster) as dask:
        worker_pids = set(dask.run(os.getpid).values())
    assert len(pids) == 2, trained_on  # two domains, two processes
    assert pids <= worker_pids and os.getpid() not in pids  # the cluster's workers, not this process
