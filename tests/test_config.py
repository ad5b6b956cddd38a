import re

import pytest

from lora_pipeline.config import load_config
from lora_pipeline.errors import ConfigError


def test_defaults_record_demo_sizes():
    cfg = load_config(env={})
    assert cfg.data.name is None and cfg.dataset_name == "vader"  # the built-in set
    assert cfg.base.name == "all-minilm-l6-v2"
    assert cfg.split.max_train_rows == "auto" and cfg.train.epochs > 0 and cfg.base.max_length == "auto"
    from lora_pipeline.models.adapters import lora_settings_for

    # null = the base's defaults; MiniLM's must train and save the new head, else it reloads random
    assert cfg.lora.modules_to_save is None
    assert lora_settings_for(cfg.base.name, cfg.lora).modules_to_save == ["classifier", "pooler.dense", "bag_of_words"]
    assert lora_settings_for("smollm2-135m", cfg.lora).target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("modules_to_save, bag_of_words, trained", [
    (None, True, ["classifier", "pooler.dense", "bag_of_words"]),  # also a serving pool: every module any domain trains
    (None, False, ["classifier", "pooler.dense"]),  # a domain that trains without the term (training/bag_of_words.py)
    (["classifier"], True, ["classifier"]),  # never one the config leaves out
])
def test_a_domains_modules_follow_its_bag_of_words_choice(modules_to_save, bag_of_words, trained):
    from lora_pipeline.config import LoraSettings
    from lora_pipeline.models.adapters import lora_settings_for

    lora = LoraSettings(modules_to_save=modules_to_save)
    assert lora_settings_for("all-minilm-l6-v2", lora, bag_of_words).modules_to_save == trained


@pytest.mark.parametrize(
    "override, path, expected",
    [
        ("train.epochs=1", ("train", "epochs"), 1),
        ("lora.target_modules=[query,key,value]", ("lora", "target_modules"), ["query", "key", "value"]),
        ("data.domains=[amazon]", ("data", "domains"), ["amazon"]),
        ("promotion.min_gain_over_base=0.1", ("promotion", "min_gain_over_base"), 0.1),
        ("split.max_train_rows=3200", ("split", "max_train_rows"), 3200),  # a number-or-'auto' key
        ("split.max_train_rows=auto", ("split", "max_train_rows"), "auto"),
        ("lora.layers_to_transform=[5,3,4,4]", ("lora", "layers_to_transform"), [3, 4, 5]),  # one key per set
    ],
)
def test_any_key_overridable(override, path, expected):
    cfg = load_config(overrides=[override], env={})
    assert getattr(getattr(cfg, path[0]), path[1]) == expected


def test_yaml_file_then_override_then_env(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 5\n  batch_size: 4\n")
    cfg = load_config(f, ["train.epochs=2"], env={"MLFLOW_TRACKING_URI": "sqlite:///x.db"})
    assert (cfg.train.epochs, cfg.train.batch_size) == (2, 4)
    assert cfg.tracking_uri == "sqlite:///x.db"


def test_default_tracking_uri_is_project_sqlite(tmp_path):
    cfg = load_config(overrides=[f"runtime.project_dir={tmp_path}"], env={})
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=1", "train.epochz"),
        ("train.epochs=-1", "train.epochs"),
        ("noequals", "section.key=value"),
        ("train.seed=4294967296", "train.seed"),  # numpy's seeds are 32-bit: refused now, not once training starts
        ("split.seed=-1", "split.seed"),
        ("promotion.metric=rougeL", "promotion.metric 'rougeL' is not a classify metric (macro_f1, accuracy)"),
        ("promotion.metric=f1", "promotion.metric 'f1' is not a classify metric"),
        ("split.max_train_rows=atuo", "config key 'split.max_train_rows': must be 'auto' or a whole number (got 'atuo')"),
        ("base.max_length=atuo", "config key 'base.max_length': must be 'auto' or a whole number"),
        ("split.max_train_rows=-3", "split.max_train_rows must be 'auto' or a row count >= 0"),
        ("lora.layers_to_transform=[]", "lora.layers_to_transform must be null (every layer) or layer indices"),
        ("lora.layers_to_transform=[-1]", "lora.layers_to_transform must be null (every layer) or layer indices"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=[override], env={})


@pytest.mark.parametrize("task, metric, expected", [
    ("classify", None, "macro_f1"), ("classify", "accuracy", "accuracy"),
    ("generate", None, "rougeL"), ("generate", "rouge2", "rouge2"),
])
def test_promotion_compares_the_tasks_metric_unless_told(task, metric, expected):
    cfg = load_config(overrides=[f"task={task}"] + ([f"promotion.metric={metric}"] if metric else []), env={})
    assert cfg.promotion_metric == expected


def test_every_promotion_metric_is_scored_and_bootstrapped_by_its_task():
    from lora_pipeline.config import PROMOTION_METRICS
    from lora_pipeline.evaluation.tasks import TASKS

    assert {name: tuple(m.key for m in task.metrics) for name, task in TASKS.items()} == PROMOTION_METRICS


def test_config_hash_changes_with_values():
    a, b = load_config(env={}), load_config(overrides=["lora.r=4"], env={})
    assert a.sha256() == load_config(env={}).sha256()
    assert a.sha256() != b.sha256()
    assert a.sha256("data") == b.sha256("data")


def test_tracking_setup_does_not_redirect_the_next_config(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a later config in the same process must not see it."""
    from lora_pipeline.registry.tracking import setup_tracking

    first = load_config(overrides=[f"runtime.project_dir={tmp_path / 'a'}"])
    setup_tracking(first)
    second = load_config(overrides=[f"runtime.project_dir={tmp_path / 'b'}"])
    assert second.tracking_uri == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"


@pytest.mark.parametrize(
    "argv, key, expected",
    [
        (["--text-col", "yes"], ("data", "text_col"), "yes"),  # a value, not YAML's boolean
        (["--data", "my data #1.csv"], ("data", "path"), "my data #1.csv"),  # '#' is not a comment
        (["--label-col", "rating: 1-5"], ("data", "label_col"), "rating: 1-5"),  # ': ' is not a mapping
        (["--domains", "2019,2020"], ("data", "domains"), ["2019", "2020"]),  # names, not integers
        (["--set", "train.epochs=2"], ("train", "epochs"), 2),  # --set values are YAML
        (["--set", "data.path=a #b.csv"], ("data", "path"), "a #b.csv"),  # ... but plain text keeps its '#'
        (["--set", "data.path=C: x.csv"], ("data", "path"), "C: x.csv"),  # ... and its ': '
        (["--set", "data.name=2019"], ("data", "name"), "2019"),  # a number for a text key is that text
        (["--set", "data.name='#1'"], ("data", "name"), "#1"),  # quoted: YAML's reading
        (["--set", "data.name=01"], ("data", "name"), "01"),  # a text key keeps the text as typed
        (["--set", "data.label_col=yes"], ("data", "label_col"), "yes"),
        (["--set", "data.domain_col=null"], ("data", "domain_col"), None),  # ... but null still resets it
    ],
)
def test_cli_flags_are_values_and_only_set_is_parsed(argv, key, expected):
    from lora_pipeline.cli import _config_from_args, build_parser

    cfg = _config_from_args(build_parser().parse_args(["run", *argv]))
    assert getattr(getattr(cfg, key[0]), key[1]) == expected


def test_an_unparsable_set_value_is_one_line_naming_the_key(capsys):
    from lora_pipeline.cli import main

    assert main(["config", "--set", "data.domains=["]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: override 'data.domains'")


def test_the_schema_default_base_is_the_configs():
    from lora_pipeline.registry.schema import DEFAULT_BASE

    assert DEFAULT_BASE == load_config(env={}).base.name


@pytest.mark.parametrize("override, message", [
    ("base.max_length=600", "'base.max_length': 600 tokens, but all-minilm-l6-v2 has 512 positions"),
    ("base.max_length_cap=1024", "'base.max_length_cap': 1024 tokens"),
    ("base.name=no-such-base", "'base.name': unknown base model 'no-such-base'"),
])
def test_a_length_or_base_the_model_cannot_take_stops_before_any_data_is_read(override, message):
    """Checked where the run resolves what training reads (before prepare), not when a domain starts training."""
    from lora_pipeline.provenance import training_inputs

    with pytest.raises(ConfigError, match=re.escape(message)):
        training_inputs(load_config(overrides=[override], env={}))


@pytest.mark.parametrize("bag_of_words, trained", [(False, ["classifier", "pooler.dense"]),
                                                   (True, ["classifier", "pooler.dense", "bag_of_words"])])
def test_a_domain_runs_params_name_the_modules_it_trained(bag_of_words, trained):
    from lora_pipeline.registry.tracking import _flat_params

    assert _flat_params(load_config(), bag_of_words)["lora.modules_to_save"] == trained
