"""AdapterPool on the real MiniLM base with untrained (randomised) adapters: mixed-adapter batches give
each row exactly what its adapter alone gives, whatever its label count; unusable adapters are refused
with the reason and leave the pool as it was."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from safetensors.torch import load_file, save_file

from lora_pipeline.serving.adapter_pool import AdapterPool, PoolRequest
from lora_pipeline.serving.stacked_lora import StackedLoraLinear
from lora_pipeline.models.adapters import (CHECKSUMS, AdapterMeta, build_lora_model, load_adapter, save_adapter,
                                           write_checksums)
from lora_pipeline.config import LoraSettings
from lora_pipeline.models.encoder import BagOfWords, padded_batches
from lora_pipeline.errors import AdapterLoadError, ConfigError

BASE = "all-minilm-l6-v2"
LORA = LoraSettings(modules_to_save=["classifier", "pooler.dense", "bag_of_words"])
TEXTS = ["Great value, works as described.", "Terrible.", "The committee met on Tuesday to discuss the budget.",
         "meh", "I can't believe how good this turned out to be, honestly the best purchase of the year!"]


def _adapter(root: Path, name: str, labels: list[str], seed: int, lora: LoraSettings = LORA) -> Path:
    """An adapter with random LoRA B matrices, head and bag-of-words term (untrained, but far from the base)."""
    torch.manual_seed(seed)
    model = build_lora_model(BASE, labels, lora)
    for param_name, param in model.named_parameters():
        if "lora_B" in param_name or "bag_of_words.modules_to_save" in param_name:
            torch.nn.init.normal_(param, std=0.05)
    for term in model.modules():
        if isinstance(term, BagOfWords):  # each adapter's own idf, as from its own train split
            term.idf.uniform_(0.5, 4.0)
    return save_adapter(model, AdapterMeta(name, labels, BASE, 64), root / name)


def _saved_before_idf(root: Path, name: str, labels: list[str], seed: int) -> Path:
    """An adapter as saved before the term had an idf and read whole texts: no idf in its file, and no
    bag_of_words_reads in its meta."""
    path = _adapter(root, name, labels, seed)
    weights_file = path / "adapter_model.safetensors"
    weights = load_file(weights_file)
    save_file({k: v for k, v in weights.items() if not k.endswith("bag_of_words.idf")}, weights_file)
    meta_file = path / "adapter_meta.json"
    meta_file.write_text(json.dumps({k: v for k, v in json.loads(meta_file.read_text()).items()
                                     if k != "bag_of_words_reads"}))
    write_checksums(path)
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"two": _adapter(root, "two", ["no", "yes"], 1),
            "five": _adapter(root, "five", [f"c{i}" for i in range(5)], 2),
            "three": _adapter(root, "three", ["negative", "neutral", "positive"], 3),
            # only its head trained (no bag-of-words term, as before it existed; the base's pooler): served
            # with a zero term and the base's pooler, as it was trained
            "head-only": _adapter(root, "head-only", ["x", "y", "z"], 5, LoraSettings(modules_to_save=["classifier"])),
            # its term without an idf and on head+tail (saved before both): served as it was trained
            "legacy": _saved_before_idf(root, "legacy", [f"d{i}" for i in range(4)], 6),
            # LoRA in the top two of MiniLM's six layers only (lora.layers_to_transform): the others run the base
            "top-layers": _adapter(root, "top-layers", ["p", "q", "r", "s"], 7,
                                   LORA.model_copy(update={"layers_to_transform": [4, 5]}))}


@pytest.fixture(scope="module")
def pool(adapters) -> AdapterPool:
    pool = AdapterPool(BASE, LORA, max_labels=8)
    for name, path in adapters.items():
        pool.add(name, path)
    return pool


def test_mixed_batch_rows_equal_each_adapter_alone(pool, adapters):
    requests = [PoolRequest(name, text) for text in TEXTS for name in adapters]
    mixed = pool.predict_proba(requests, batch_size=len(requests))  # one forward pass for all of them
    for name, path in adapters.items():
        alone = load_adapter(path).predict_proba(TEXTS)
        got = np.stack([p for r, p in zip(requests, mixed) if r.adapter == name])
        assert got.shape == alone.shape  # cut back to the adapter's own labels
        np.testing.assert_allclose(got, alone, atol=1e-5)
    assert len({tuple(np.round(p, 3)) for p in mixed[:len(adapters)]}) == len(adapters)  # the adapters really differ


def test_lora_layers_to_transform_adapts_only_those_layers(adapters):
    def adapted_layers(adapter_dir: Path) -> set[int]:
        saved = load_file(adapter_dir / "adapter_model.safetensors")
        return {int(re.search(r"encoder\.layer\.(\d+)\.", k).group(1)) for k in saved if "lora_" in k}

    assert adapted_layers(adapters["top-layers"]) == {4, 5}
    assert adapted_layers(adapters["five"]) == set(range(6))


def test_a_layer_the_base_does_not_have_is_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("lora.layers_to_transform [5, 6]: all-minilm-l6-v2 has layers 0-5")):
        build_lora_model(BASE, ["a", "b"], LORA.model_copy(update={"layers_to_transform": [5, 6]}))


def test_a_pool_of_a_top_layers_config_serves_an_adapter_of_every_layer(adapters):
    """The pool adapts every layer whatever lora.layers_to_transform says: champions of earlier runs keep theirs,
    in every layer through the stacked path (StackedLoraLinear), not peft's per-adapter loop."""
    pool = AdapterPool(BASE, LORA.model_copy(update={"layers_to_transform": [4, 5]}), max_labels=8)
    for name in ("five", "top-layers"):
        pool.add(name, adapters[name])
    adapted = [m for m in pool.model.modules() if isinstance(m, LoraLayer)]
    assert len(adapted) == 12 and all(isinstance(m, StackedLoraLinear) for m in adapted)  # query, value x 6
    assert all(m._stacks is not None for m in adapted)  # stacked, not left to peft's loop
    requests = [PoolRequest(name, text) for text in TEXTS for name in ("five", "top-layers")]
    mixed = pool.predict_proba(requests, batch_size=len(requests))
    for name in ("five", "top-layers"):
        got = np.stack([p for r, p in zip(requests, mixed) if r.adapter == name])
        np.testing.assert_allclose(got, load_adapter(adapters[name]).predict_proba(TEXTS), atol=1e-5)


def test_an_adapter_is_served_with_its_own_idf(pool, adapters):
    """The idf each adapter saved is the one its rows use; one saved without an idf gets ones (no weighting)."""
    for name in ("five", "legacy"):
        saved = load_file(adapters[name] / "adapter_model.safetensors")
        in_pool = [m.modules_to_save[name].idf for m in pool.model.modules()
                   if isinstance(m, ModulesToSaveWrapper) and isinstance(m.original_module, BagOfWords)]
        expected = [v for k, v in saved.items() if k.endswith("bag_of_words.idf")] or [torch.ones(len(in_pool[0]))]
        assert len(in_pool) == 1 and torch.equal(in_pool[0], expected[0])
    assert load_file(adapters["five"] / "adapter_model.safetensors")["base_model.model.bag_of_words.idf"].ne(1).all()


def test_the_term_counts_what_it_counted_in_training(pool, adapters):
    """A new adapter's term counts all of a long text; one saved before that, the head+tail its encoder reads."""
    long_text = " ".join(TEXTS * 6)  # far over the adapters' 64 tokens
    for name, reads in (("five", "all"), ("legacy", "head_tail")):
        alone = load_adapter(adapters[name])
        assert alone.meta.bag_of_words_reads == reads
        [(_, batch)] = padded_batches(alone.tokenizer, [long_text], [64], 1, "cpu", [reads])
        whole = len(alone.tokenizer(long_text).input_ids)
        assert batch["bag_of_words_ids"].shape[1] == (64 if reads == "head_tail" else whole) and whole > 64
        read = {k: v for k, v in batch.items() if "bag_of_words" not in k}  # what the encoder reads
        with torch.no_grad():
            expected = torch.softmax(alone.model(**batch).logits[0], -1).numpy()
            cut_only = torch.softmax(alone.model(**read).logits[0], -1).numpy()
        assert np.allclose(expected, cut_only, atol=1e-6) == (reads == "head_tail")
        np.testing.assert_allclose(alone.predict_proba([long_text])[0], expected, atol=1e-5)
        np.testing.assert_allclose(pool.predict_proba([PoolRequest(name, long_text)])[0], expected, atol=1e-5)


def test_removed_adapter_is_gone_and_others_unaffected(pool, adapters):
    before = pool.predict_proba([PoolRequest("two", TEXTS[0])])[0]
    pool.add("extra", adapters["five"])
    pool.remove("extra")
    assert "extra" not in pool.names and "extra" not in pool.model.peft_config
    with pytest.raises(KeyError, match="extra"):
        pool.predict_proba([PoolRequest("extra", TEXTS[0])])
    np.testing.assert_allclose(pool.predict_proba([PoolRequest("two", TEXTS[0])])[0], before, atol=1e-6)


def _edit_meta(path: Path, **changes) -> None:
    meta_file = path / "adapter_meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **changes}))


@pytest.mark.parametrize("break_it, resave, says", [
    # Saved that way (checksums rewritten): what the adapter says does not fit this pool.
    (lambda p: _edit_meta(p, base_model="gemma-3-270m"), True, "trained on base 'gemma-3-270m'"),
    (lambda p: _edit_meta(p, labels=[f"l{i}" for i in range(9)]), True, "more than api.max_labels=8"),
    (lambda p: (p / "adapter_model.safetensors").unlink(), True, "no adapter_model.safetensors"),
    (lambda p: (p / "adapter_model.safetensors").write_bytes(b"\0" * 64), True, ""),  # the library's error
    (lambda p: shutil.rmtree(p) or _adapter(p.parent, p.name, ["a", "b", "c"], 4,
                                           LoraSettings(modules_to_save=["classifier", "pooler"])), False,
     "modules_to_save ['pooler'] are not all in this server's"),
    # Changed after saving: refused by the checksums before anything is read.
    (lambda p: (p / "adapter_model.safetensors").write_bytes(b"\0" * 64), False,
     "adapter_model.safetensors does not match its sha256"),
    (lambda p: (p / "adapter_model.safetensors").unlink(), False, "adapter_model.safetensors does not match"),
    (lambda p: _edit_meta(p, labels=["a", "b", "x"]), False, "adapter_meta.json does not match its sha256"),
    (lambda p: (p / CHECKSUMS).unlink(), False, "no checksums.json"),
])
def test_unusable_adapters_are_refused_and_the_pool_is_unchanged(pool, adapters, tmp_path, break_it, resave, says):
    broken = tmp_path / "broken"
    shutil.copytree(adapters["three"], broken)
    break_it(broken)
    if resave:
        write_checksums(broken)
    names, configs = list(pool.names), list(pool.model.peft_config)
    with pytest.raises(Exception, match=re.escape(says)) as raised:
        pool.add("broken", broken)
    if says:
        assert raised.type is AdapterLoadError
    assert pool.names == names and list(pool.model.peft_config) == configs
    assert pool.predict_proba([PoolRequest("three", TEXTS[0])])[0].shape == (3,)


def test_a_pool_whose_own_modules_cannot_be_mixed_is_a_config_error():
    with pytest.raises(ConfigError, match=re.escape("'pooler.dense', not 'pooler'")):
        AdapterPool(BASE, LoraSettings(modules_to_save=["classifier", "pooler"]))


def test_an_adapter_that_outputs_nan_is_refused_not_answered(pool, adapters, tmp_path):
    from safetensors.torch import load_file, save_file

    from lora_pipeline.errors import NonFiniteOutputError

    nan = tmp_path / "nan"
    shutil.copytree(adapters["two"], nan)
    weights = load_file(nan / "adapter_model.safetensors")
    weights = {k: v.fill_(float("nan")) if "lora_A" in k else v for k, v in weights.items()}
    save_file(weights, nan / "adapter_model.safetensors")
    write_checksums(nan)  # saved that way: the checksums cannot catch it, the output check must
    pool.add("nan", nan)
    try:
        with pytest.raises(NonFiniteOutputError, match="non-finite"):
            pool.predict_proba([PoolRequest("nan", TEXTS[0]), PoolRequest("two", TEXTS[0])])
        assert np.isfinite(pool.predict_proba([PoolRequest("two", TEXTS[0])])[0]).all()  # others unaffected
    finally:
        pool.remove("nan")
