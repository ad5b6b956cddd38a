"""The prediction API on a real registry: three domains trained by the real flow (tiny), served by a real
uvicorn server on 127.0.0.1, called over HTTP.

What must hold: the server answers exactly what the offline evaluation predicted; concurrent requests
mixing domains answer as sequential ones do (and share forward passes); new champions arrive without a
restart and a broken one never replaces a working one; bad requests get a 4xx that says why.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from mlflow import MlflowClient

from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.serving.api import create_app
from lora_pipeline.registry.champions import promote
from lora_pipeline.cli import main
from lora_pipeline.config import load_config
from lora_pipeline.registry.mlflow_model import PYFUNC_ENTRY
from lora_pipeline.serving.service import ChampionService
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
DOMAINS = ["amazon", "nyt", "tweets"]


def _overrides(project: Path) -> list[str]:
    # Every tiny adapter becomes champion, whatever its score: serving is under test here, not promotion.
    return tiny_overrides(project) + [f"data.path={project / 'data.csv'}", "data.name=vader",
                                      "promotion.min_gain_over_base=-1", "promotion.max_loss_to_tfidf=1",
                                      "api.poll_interval_s=0.5", "api.batch_wait_ms=20"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, vader_csv, prefect_harness) -> Path:
    from flows.retrain import retrain

    root = tmp_path_factory.mktemp("serving")
    data = pd.read_csv(vader_csv, dtype=str, keep_default_na=False)
    data[data["domain"].isin(DOMAINS)].to_csv(root / "data.csv", index=False)
    rows = retrain(config=load_config(overrides=_overrides(root)))
    assert [r["alias"] for r in rows] == ["champion"] * len(DOMAINS)
    return root


@pytest.fixture(scope="module")
def cfg(project):
    return load_config(overrides=_overrides(project))


@pytest.fixture(scope="module")
def registry(cfg) -> MlflowClient:
    return MlflowClient(cfg.tracking_uri, cfg.tracking_uri)


@pytest.fixture(scope="module")
def service(cfg) -> ChampionService:
    service = ChampionService(cfg)
    assert service.reload().loaded == [f"vader-{d} v1" for d in DOMAINS]
    return service


@pytest.fixture(scope="module")
def url(cfg, service) -> str:
    """A real uvicorn server in a thread, polling the registry every 0.5 s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def http(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _offline_predictions(registry: MlflowClient, domain: str, tmp_path: Path) -> pd.DataFrame:
    """The registered version's own evaluation output: test texts and what the adapter predicted."""
    run_id = registry.get_model_version(f"vader-{domain}", "1").run_id
    path = registry.download_artifacts(run_id, "evaluation/predictions.jsonl", str(tmp_path))
    return pd.read_json(path, lines=True)


def _mixed_items(registry, tmp_path, per_domain: int = 12) -> list[dict]:
    items = [{"domain": d, "text": t, "offline": p}
             for d in DOMAINS
             for t, p in _offline_predictions(registry, d, tmp_path)[["text", "adapter_pred"]].head(per_domain).values]
    random.Random(0).shuffle(items)
    return items


def test_server_answers_what_the_offline_evaluation_predicted(http, registry, service, tmp_path):
    items = _mixed_items(registry, tmp_path)
    response = http.post("/predict", json={"items": [{"domain": i["domain"], "text": i["text"]} for i in items]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]

    assert [p["domain"] for p in predictions] == [i["domain"] for i in items]
    assert [p["label"] for p in predictions] == [i["offline"] for i in items]
    assert {(p["model"], p["model_version"]) for p in predictions} == {(f"vader-{d}", "1") for d in DOMAINS}
    # Probabilities too: the same as the adapter loaded alone (no pool, no padding, no mixing).
    alone = load_adapter(service.fetch_adapter("vader-nyt", "1"))
    nyt = [(i, p) for i, p in zip(items, predictions) if i["domain"] == "nyt"]
    expected = alone.predict_proba([i["text"] for i, _ in nyt])
    got = np.array([[p["probabilities"][label] for label in alone.meta.labels] for _, p in nyt])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predictions)


def test_concurrent_mixed_domain_requests_answer_as_sequential_ones(http, registry, tmp_path):
    items = _mixed_items(registry, tmp_path, per_domain=16)
    requests = [{"items": [{"domain": i["domain"], "text": i["text"]} for i in items[k : k + 4]]}
                for k in range(0, len(items), 4)]  # 12 requests of 4 texts, mixed domains
    sequential = [http.post("/predict", json=body).json()["predictions"] for body in requests]
    health = http.get("/health").json()
    assert (health["precision"], health["device"]) == ("fp32", "cpu")  # the config's runtime.precision, resolved
    before = health["batches"]

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        concurrent = list(pool.map(lambda body: http.post("/predict", json=body).json()["predictions"], requests))
    after = http.get("/health").json()["batches"]

    for seq, conc in zip(sequential, concurrent):
        assert [p["label"] for p in conc] == [p["label"] for p in seq]
        for a, b in zip(seq, conc):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    # Concurrent requests shared forward passes: 48 texts in fewer batches than the 12 requests.
    assert after["texts"] - before["texts"] == 48
    assert after["batches"] - before["batches"] < len(requests)


def test_cli_predict_uses_the_same_path_and_answers_the_same(cfg, http, capsys):
    texts = ["The plot was thin but the acting carried it.", "Worst purchase ever."]
    served = http.post("/predict", json={"domain": "amazon", "texts": texts}).json()["predictions"]
    capsys.readouterr()
    assert main(["predict", "--domain", "amazon", *texts, *[x for o in _overrides(cfg.project_dir) for x in ("--set", o)]]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["label"] for p in printed] == [p["label"] for p in served]
    assert [p["model_version"] for p in printed] == ["1", "1"]


@pytest.mark.fault
@pytest.mark.parametrize("body, status, says", [
    ({"domain": "cooking", "texts": ["a"]}, 404, "unknown domain 'cooking'"),
    ({"items": [{"domain": "amazon", "text": "ok"}, {"domain": "cooking", "text": "a"}]}, 404, "cooking"),
    ({"domain": "amazon", "texts": []}, 422, "at least 1"),
    ({"domain": "amazon", "texts": ["x"] * 65}, 422, "at most 64"),
    ({"domain": "amazon", "texts": ["x" * 20001]}, 422, "at most 20000 characters"),
    ({"domain": "amazon", "texts": ["ok"], "mode": "fast"}, 422, "mode"),
    ({"domain": "amazon"}, 422, "texts"),
    ({"texts": ["ok"]}, 422, "domain"),
    ({"domain": "amazon", "texts": [3]}, 422, "string"),
    ([1, 2], 422, "body"),
])
def test_bad_requests_get_a_4xx_that_says_why(http, body, status, says):
    response = http.post("/predict", json=body)
    assert response.status_code == status
    assert says in response.text


@pytest.mark.fault
def test_hostile_bodies_are_refused_without_echoing_them(http):
    big = http.post("/predict", json={"domain": "amazon", "texts": ["x" * 2_200_000]})  # over api.max_body_bytes
    assert big.status_code == 413 and len(big.content) < 200
    long = http.post("/predict", json={"domain": "amazon", "texts": ["y" * 20001]})
    assert long.status_code == 422 and "at most 20000 characters" in long.text
    assert "y" * 50 not in long.text and len(long.content) < 2000  # names the field, does not copy the input
    key = http.post("/predict", json={"domain": "amazon", "texts": ["ok"], "k" * 500_000: 1})  # an unknown key
    assert key.status_code == 422 and "k" * 65 not in key.text and len(key.content) < 2000
    article = http.post("/predict", json={"domain": "amazon", "texts": ["A long news article. " * 900]})
    assert article.status_code == 200  # 18,900 characters: one text; the model reads its head and tail
    surrogate = http.post("/predict", content=b'{"domain": "amazon", "texts": ["\\ud800"]}',
                          headers={"content-type": "application/json"})
    assert surrogate.status_code == 422 and "texts" in surrogate.text
    assert http.post("/predict", json={"domain": "amazon", "texts": ["still fine"]}).status_code == 200


def test_few_shot_exists_only_on_a_generative_base(http):
    body = {"text": "fine", "examples": [{"text": "bad", "label": "negative"}, {"text": "good", "label": "positive"}]}
    assert http.post("/predict_fewshot", json=body).status_code == 404


def test_malformed_json_is_a_422(http):
    response = http.post("/predict", content=b'{"domain": "amazon", "texts": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.text


def test_api_key_when_configured(cfg, service):
    from fastapi.testclient import TestClient

    keyed = load_config(overrides=_overrides(cfg.project_dir) + ["api.poll_interval_s=0"], env={"LORA_PIPELINE_API_KEY": "s3cret"})
    with TestClient(create_app(keyed, service)) as client:
        body = {"domain": "amazon", "texts": ["fine"]}
        assert client.get("/health").status_code == 200  # liveness probes need no key
        assert client.post("/predict", json=body).status_code == 401
        assert client.post("/predict", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/predict", json=body, headers={"X-API-Key": "ключ".encode()}).status_code == 401
        assert client.post("/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/adapters").status_code == 401


def _register_copy(registry: MlflowClient, name: str, adapter_dir: Path) -> str:
    """A new version of ``name`` whose model is ``adapter_dir``, logged the way the pipeline logs adapters."""
    with mlflow.start_run(experiment_id=registry.get_experiment_by_name("lora-pipeline").experiment_id):
        info = mlflow.pyfunc.log_model(name="adapter", python_model=str(PYFUNC_ENTRY),
                                       artifacts={"adapter": str(adapter_dir)}, pip_requirements=["torch"])
    return str(mlflow.register_model(info.model_uri, name).version)


def test_new_champions_load_without_restart_and_a_broken_one_never_serves(http, cfg, registry, service, tmp_path):
    mlflow.set_tracking_uri(cfg.tracking_uri)
    name = "vader-tweets"
    good = service.fetch_adapter(name, "1")

    # v2 (the same weights) becomes champion: the poller picks it up, no restart, no /reload call.
    promote(registry, name, _register_copy(registry, name, good), "test")
    deadline = time.monotonic() + 30
    while _served_version(http, "tweets") != "2":
        assert time.monotonic() < deadline, "the new champion was not picked up by polling"
        time.sleep(0.2)
    [p] = http.post("/predict", json={"domain": "tweets", "texts": ["so happy today"]}).json()["predictions"]
    assert p["model_version"] == "2"

    # v3's weights are truncated: it fails to load, v2 keeps serving, /adapters says why.
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    promote(registry, name, _register_copy(registry, name, broken), "test")
    report = http.post("/reload").json()
    assert any(f.startswith(f"{name} v3:") for f in report["failed"]) or _failed_version(http, "tweets") == "3"
    assert _served_version(http, "tweets") == "2"
    assert _failed_version(http, "tweets") == "3"
    error = _adapter_row(http, "tweets")["error"]["message"]
    assert str(cfg.project_dir) not in error and cfg.tracking_uri not in error  # no path, no store address
    [p] = http.post("/predict", json={"domain": "tweets", "texts": ["so happy today"]}).json()["predictions"]
    assert p["model_version"] == "2"

    # Back to a good champion: served, and the error is gone.
    promote(registry, name, "1", "test")
    http.post("/reload")
    assert _served_version(http, "tweets") == "1" and _failed_version(http, "tweets") is None


def _adapter_row(http, domain: str) -> dict:
    return next(a for a in http.get("/adapters").json()["adapters"] if a["domain"] == domain)


def _served_version(http, domain: str) -> str | None:
    return _adapter_row(http, domain)["version"]


def _failed_version(http, domain: str) -> str | None:
    error = _adapter_row(http, domain)["error"]
    return error["version"] if error else None


# The schema of the app under test, built without loading anything (limits are the default config's,
# as in the served test app); schemathesis generates requests from it and sends them to the live server.
schema = schemathesis.openapi.from_dict(create_app(load_config()).openapi())


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_schema_holds_for_generated_requests(case, url):
    """Schemathesis: no 5xx, and every response matches the documented status codes and schemas."""
    case.call_and_validate(base_url=url)
