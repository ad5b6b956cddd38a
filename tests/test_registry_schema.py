"""The registry schema's lookups on a real MLflow store (SQLite in a temp dir): paging past one page of
registered models, so that serving and the catalog never silently drop the 101st domain."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from lora_pipeline.registry import schema
from lora_pipeline.registry.catalog import list_models

N_MODELS = 105  # more than one page (the API returns 100 at most)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> MlflowClient:
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    for i in range(N_MODELS):
        domain = f"d{i:03d}"
        name = schema.registered_name("shop", domain, schema.DEFAULT_BASE)
        client.create_registered_model(name, tags={schema.MANAGED_BY: schema.MANAGED_BY_US, schema.DATASET: "shop",
                                                   schema.DOMAIN: domain, schema.BASE_MODEL: schema.DEFAULT_BASE})
        version = client.create_model_version(name, source=f"file:///nowhere/{domain}")
        if i % 2 == 0 or i == N_MODELS - 1:  # the last one sorts onto the second page
            client.set_registered_model_alias(name, schema.CHAMPION, version.version)
    client.create_registered_model("someone-elses-model")  # not ours: never listed
    return client


def test_every_managed_model_is_found_past_the_first_page(client):
    names = [m.name for m in schema.managed_models(client)]
    assert len(names) == N_MODELS and names == sorted(names)
    assert "someone-elses-model" not in names


def test_champions_of_every_domain_are_found_past_the_first_page(client):
    champions = schema.champions_by_domain(client, "shop", schema.DEFAULT_BASE)
    expected = {f"d{i:03d}" for i in range(N_MODELS) if i % 2 == 0 or i == N_MODELS - 1}
    assert set(champions) == expected
    assert champions[f"d{N_MODELS - 1:03d}"] == (f"shop-d{N_MODELS - 1:03d}", "1")
    assert schema.champions_by_domain(client, "other-dataset", schema.DEFAULT_BASE) == {}


def test_the_catalog_lists_every_model(client):
    table = list_models(client)
    assert len(table) == N_MODELS
    assert table["aliases"].str.contains("champion").sum() == len({i for i in range(N_MODELS) if i % 2 == 0} | {N_MODELS - 1})
