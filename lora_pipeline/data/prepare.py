"""Prepare data: load a user table, validate it, split it per domain, fingerprint it.

Every input problem raises :class:`DataError` with one line naming the file and the column, row or
domain at fault, before anything is trained or registered.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from lora_pipeline.config import BaseModelConfig, DataConfig, SplitConfig, domain_dirname, safe_name, sha256_json
from lora_pipeline.errors import DataError, DomainTooSmall

SPLITS = ("train", "val", "test")
DEFAULT_DOMAIN_COL, SINGLE_DOMAIN = "domain", "all"  # data.domain_col null: this column, or one domain
DEFAULT_SPLIT_COL = "split"  # data.split_col null: this column when the file has it, else a random split
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}  # a split column's values (case-insensitive)
LENGTH_SAMPLE = 2000  # train texts whose token lengths set max_train_rows 'auto' (a percentile: a sample will do)
MAX_DOMAIN_CHARS = 100  # a domain names a registered model (with the dataset and base) and a directory


@dataclass(frozen=True)
class DomainSplits:
    """One domain's prepared splits on disk; plain paths and strings so Prefect can hash and cache it."""

    domain: str
    labels: list[str]  # [] for task: generate (its rows hold a target text instead of a label)
    dir: str
    fingerprint: str  # sha256 of this domain's split rows: changes only when its data changes
    counts: dict[str, int]
    available: dict[str, int] = field(default_factory=dict)  # rows per split before the split.max_*_rows caps

    def path(self, split: str) -> Path:
        return Path(self.dir) / f"{split}.jsonl"

    def read(self, split: str) -> pd.DataFrame:
        return pd.read_json(self.path(split), lines=True, dtype={"text": str, "label": str, "target": str})


@dataclass(frozen=True)
class PreparedData:
    dataset: str
    source: str
    fingerprint: str  # sha256 of the source file bytes + the data/split config
    domains: dict[str, DomainSplits]
    dropped_empty_texts: int
    removed_leaks: int
    # domain -> {label: rows} left out: fewer than split.min_rows_per_label rows, too few to split
    dropped_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    # domain -> why it was left out (too few rows, one class); only when data.domains named none
    skipped_domains: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_table(path: str | Path) -> pd.DataFrame:
    """Read CSV/TSV, Parquet or JSONL into strings; raise DataError with the file name on failure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                             encoding="utf-8")
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(path, lines=suffix != ".json", dtype=False)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use .csv, .tsv, .parquet or .jsonl)")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except DataError:
        raise
    except Exception as exc:  # parser errors from pandas/pyarrow: keep their first line, name the file
        raise DataError(f"{path}: cannot be read: {str(exc).splitlines()[0]}") from None
    if df.empty:
        raise DataError(f"{path}: file has no rows")
    return df


def validate_table(df: pd.DataFrame, cfg: DataConfig, source: str,
                   task: str = "classify") -> tuple[pd.DataFrame, int]:
    """Check columns and values; return (text/label/domain frame, or text/target/domain for task generate,
    [+ split], number of empty-text rows dropped)."""
    domain_col = cfg.domain_col or DEFAULT_DOMAIN_COL
    answer = "label" if task == "classify" else "target"  # what a row is trained to give
    cols = {"text": cfg.text_col, answer: cfg.label_col if answer == "label" else cfg.target_col, "domain": domain_col}
    if cfg.domain_col is None and DEFAULT_DOMAIN_COL not in df.columns:  # a plain text,label table
        df = df.assign(**{DEFAULT_DOMAIN_COL: SINGLE_DOMAIN})
    split_col = cfg.split_col or (DEFAULT_SPLIT_COL if DEFAULT_SPLIT_COL in df.columns else None)
    if split_col:
        cols["split"] = split_col
    for role, col in cols.items():
        if col not in df.columns:
            raise DataError(
                f"{source}: missing {role} column '{col}' (columns: {', '.join(map(str, df.columns))})"
            )
    out = pd.DataFrame({role: df[col] for role, col in cols.items()})
    out.index = range(1, len(out) + 1)  # 1-based data row numbers for error messages
    if split_col:
        named = out["split"].astype(str).str.strip().str.lower().map(SPLIT_NAMES)
        if named.isna().any():
            row = int(named.isna().idxmax())
            raise DataError(f"{source}: row {row}: split column '{split_col}' has '{str(out['split'][row])[:40]}'; "
                            f"use train, val or test")
        out["split"] = named
    for role in (answer, "domain"):
        missing = out[role].isna() | (out[role].astype(str).str.strip() == "")
        if missing.any():
            row = int(missing.idxmax())
            raise DataError(f"{source}: row {row}: empty value in {role} column '{cols[role]}'")
    out[answer] = out[answer].astype(str).str.strip()
    if answer == "label":
        out["label"] = out["label"].replace(cfg.label_map)
    out["domain"] = out["domain"].astype(str).str.strip().replace(cfg.domain_map)
    bad = out["domain"].map(lambda d: len(d) > MAX_DOMAIN_CHARS or not d.isprintable())
    if bad.any():
        row = int(bad.idxmax())
        raise DataError(f"{source}: row {row}: domain value in column '{domain_col}' must be printable and at "
                        f"most {MAX_DOMAIN_CHARS} characters (map it with data.domain_map)")
    text = out["text"].where(out["text"].notna(), "").astype(str).str.strip()
    empty = text == ""
    if empty.all():
        raise DataError(f"{source}: every value in text column '{cfg.text_col}' is empty")
    out["text"] = text
    return out[~empty], int(empty.sum())


def _given_splits(df: pd.DataFrame, domain: str, cfg: SplitConfig, source: str) -> dict[str, pd.DataFrame]:
    """The data's own split column; validation rows drawn from train (stratified when every label can be)
    when the domain has none."""
    parts = {name: df[df["split"] == name] for name in SPLITS}
    for name in ("train", "test"):
        if parts[name].empty:
            raise DataError(f"{source}: domain '{domain}' has no '{name}' rows in its split column")
    for name in ("val", "test") if "label" in df.columns else ():  # only labels its train rows have are learnt
        unknown = sorted(set(parts[name]["label"]) - set(parts["train"]["label"]))
        if unknown:
            raise DataError(f"{source}: domain '{domain}': label '{unknown[0]}' is in its {name} rows but not in "
                            "its train rows (split column)")
    if parts["val"].empty:
        train = parts["train"]
        stratify = train["label"] if "label" in train and train["label"].value_counts().min() >= 2 else None
        try:
            parts["train"], parts["val"] = train_test_split(train, test_size=cfg.val_fraction, stratify=stratify,
                                                            random_state=cfg.seed)
        except ValueError as exc:
            raise DataError(f"{source}: domain '{domain}': cannot draw validation rows from train: {exc}") from None
    return parts


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def text_key(text: str) -> str:
    """A short hash of a text as the leakage check sees it (case and spacing ignored): what a registered
    version records of the texts it trained on, so a later comparison can leave them out."""
    return hashlib.sha256(_normalise(text).encode()).hexdigest()[:16]


def rows_per_label(sizes: pd.Series, max_rows: int, min_label_share: float = 0.0) -> dict:
    """How many rows of each label (``sizes``: label -> rows) a split capped at ``max_rows`` keeps: a share of
    each label's rows (at least 1 row), the same share for every label, except that a label whose share would
    be under ``min_label_share`` of an even split (``max_rows`` / labels) keeps that many rows, or all it
    has; the other labels give up those rows in proportion. Without such a label it is the plain
    proportional count, so a balanced domain's sample does not change."""
    # at most an even split: labels x floor <= max_rows, so at least one label always stays above the floor
    floor = min(math.ceil(min_label_share * max_rows / len(sizes)), max_rows // len(sizes))
    raised: dict = {}
    while True:  # raising a label takes rows from the rest, which can push another under the floor
        rest = sizes.drop(list(raised))
        frac = (max_rows - sum(raised.values())) / rest.sum()
        short = {label: min(int(n), floor) for label, n in rest.items() if n * frac < floor}
        if not short or len(short) == len(rest):
            break
        raised.update(short)
    return {**{label: min(int(n), max(1, round(n * frac))) for label, n in rest.items()}, **raised}


def _cap(df: pd.DataFrame, max_rows: int, seed: int, min_label_share: float = 0.0) -> pd.DataFrame:
    """A stratified sample down to about ``max_rows`` (:func:`rows_per_label`; keeps every label represented);
    a plain sample of rows without labels."""
    if max_rows <= 0 or len(df) <= max_rows:
        return df
    if "label" not in df.columns:
        return df.sample(n=max_rows, random_state=seed)
    keep = rows_per_label(df["label"].value_counts(sort=False), max_rows, min_label_share)
    return df.loc[[i for label, g in df.groupby("label") for i in g.sample(n=keep[label], random_state=seed).index]]


def _random_splits(df: pd.DataFrame, domain: str, cfg: SplitConfig, source: str) -> dict[str, pd.DataFrame]:
    if "label" not in df.columns:  # generation rows: nothing to stratify on
        rest, test = train_test_split(df, test_size=cfg.test_fraction, random_state=cfg.seed)
        train, val = train_test_split(rest, test_size=cfg.val_fraction / (1 - cfg.test_fraction), random_state=cfg.seed)
        return {"train": train, "val": val, "test": test}
    try:
        rest, test = train_test_split(df, test_size=cfg.test_fraction, stratify=df["label"], random_state=cfg.seed)
        val_share = cfg.val_fraction / (1 - cfg.test_fraction)
        train, val = train_test_split(rest, test_size=val_share, stratify=rest["label"], random_state=cfg.seed)
    except ValueError as exc:
        raise DomainTooSmall(f"{source}: domain '{domain}': cannot stratify: {exc}") from None
    return {"train": train, "val": val, "test": test}


def train_rows_cap(cfg: SplitConfig, texts: pd.Series, length_of: Callable[[list[str]], int] | None) -> int:
    """split.max_train_rows, or for 'auto': split.auto_train_rows, raised for short texts to as many rows as
    fit split.auto_train_tokens at ``length_of(texts)`` tokens each (the length the base will read them with,
    measured on at most LENGTH_SAMPLE of them)."""
    if cfg.max_train_rows != "auto":
        return cfg.max_train_rows
    if not cfg.auto_train_tokens or length_of is None or len(texts) <= cfg.auto_train_rows:
        return cfg.auto_train_rows
    sample = texts if len(texts) <= LENGTH_SAMPLE else texts.sample(n=LENGTH_SAMPLE, random_state=cfg.seed)
    return max(cfg.auto_train_rows, cfg.auto_train_tokens // length_of(sample.tolist()))


def split_domain(df: pd.DataFrame, domain: str, cfg: SplitConfig, source: str,
                 length_of: Callable[[list[str]], int] | None = None
                 ) -> tuple[dict[str, pd.DataFrame], int, dict[str, int], dict[str, int]]:
    """The data's own train/val/test (a split column) or a stratified random split; texts seen in an earlier
    split are removed from later ones. ``length_of``: the token length the base will read a list of train
    texts with (max_train_rows 'auto'; None = split.auto_train_rows).
    Returns (capped splits, leaked rows removed, rows per split before the caps, labels left out: rows)."""
    def check_rows(left_out: str = "") -> None:
        if len(df) < cfg.min_rows_per_domain:
            raise DomainTooSmall(f"{source}: domain '{domain}' has {len(df)} rows, fewer than "
                                 f"split.min_rows_per_domain={cfg.min_rows_per_domain}{left_out}")

    check_rows()
    counts = df["label"].value_counts() if "label" in df.columns else None
    rare = {}
    if counts is not None and "split" not in df.columns:
        # A stratified split needs a few rows of each label; a rarer one is left out of this domain (the run
        # says so), not the reason the whole run stops: public data often has a label or two with a handful.
        rare = {str(label): int(n) for label, n in counts[counts < cfg.min_rows_per_label].items()}
        df, counts = df[~df["label"].isin(rare)], counts[counts >= cfg.min_rows_per_label]
        check_rows(f" (after leaving out {len(rare)} label(s) with fewer than "
                   f"split.min_rows_per_label={cfg.min_rows_per_label} rows)")
    if counts is not None and len(counts) < 2:
        left_out = (f" with at least split.min_rows_per_label={cfg.min_rows_per_label} rows (too few: "
                    + ", ".join(f"'{label}' {n}" for label, n in rare.items()) + ")") if rare else ""
        raise DomainTooSmall(f"{source}: domain '{domain}' has a single class '{counts.index[0]}'{left_out}; "
                             "need at least 2")
    parts = (_given_splits if "split" in df.columns else _random_splits)(df, domain, cfg, source)
    # Leakage: a (normalised) text may live in one split only; train keeps it, later splits drop it.
    seen: set[str] = set()
    removed = 0
    for name in SPLITS:
        keys = parts[name]["text"].map(_normalise)
        leak = keys.isin(seen)
        removed += int(leak.sum())
        parts[name] = parts[name][~leak]
        seen.update(keys[~leak])
    available = {name: len(part) for name, part in parts.items()}
    caps = {"train": train_rows_cap(cfg, parts["train"]["text"], length_of), "val": cfg.max_val_rows,
            "test": cfg.max_test_rows}
    # Only train is topped up with rare labels: validation and test keep the data's own mix, so the scores are.
    floors = {"train": cfg.min_label_share, "val": 0.0, "test": 0.0}
    parts = {name: _cap(part, caps[name], cfg.seed, floors[name]).sort_index() for name, part in parts.items()}
    for name, part in parts.items() if counts is not None else ():
        if part["label"].nunique() < 2:
            raise DomainTooSmall(f"{source}: domain '{domain}': the {name} split has a single class; add rows")
    return parts, removed, available, rare


def _answer_column(df: pd.DataFrame) -> str:
    return "label" if "label" in df.columns else "target"


def _fingerprint_rows(parts: dict[str, pd.DataFrame]) -> str:
    payload = {name: part[["text", _answer_column(part)]].values.tolist() for name, part in parts.items()}
    return sha256_json(payload)


def _token_length_of(base: BaseModelConfig | None, task: str) -> Callable[[list[str]], int] | None:
    """The length ``base`` will read a domain's train texts with, where that is what a row costs: a classifier
    that reads the text alone (an encoder). A prompted kind's rows also carry the instruction and the labels,
    so short texts save less there, and generation rows carry their target: both keep auto_train_rows.
    The tokenizer loads on first use, only when a domain has more rows than split.auto_train_rows."""
    if base is None or task != "classify":
        return None
    from lora_pipeline.models import kind_of  # the data layer needs the base only for this
    from lora_pipeline.models.bases import load_tokenizer
    from lora_pipeline.models.text_length import length_for

    if kind_of(base.name, task).prompted:
        return None

    tokenizer = functools.cache(lambda: load_tokenizer(base.name, base.cache_dir))
    return lambda texts: length_for(tokenizer(), texts, base).max_length


def prepare_data(
    path: str | Path, data_cfg: DataConfig, split_cfg: SplitConfig, out_dir: str | Path, max_labels: int | None = None,
    task: str = "classify", base: BaseModelConfig | None = None,
) -> PreparedData:
    """Load, validate and split ``path``; write each domain's splits as JSONL under ``out_dir``.
    ``max_labels``: a domain with more labels is an input error (the server could not hold its head).
    ``task``: classify (text, label) or generate (text, target: no labels, unstratified splits).
    ``base``: the base the splits are for (split.max_train_rows 'auto' gives short texts more rows; without
    it, 'auto' is split.auto_train_rows)."""
    path = Path(path)
    source = str(path)
    table, dropped = validate_table(load_table(path), data_cfg, source, task)
    present = sorted(table["domain"].unique())
    unknown = [d for d in data_cfg.domains if d not in present]
    if unknown:
        raise DataError(f"{source}: unknown domain(s) {', '.join(unknown)} (available: {', '.join(present)})")
    chosen = data_cfg.domains or present

    length_of = _token_length_of(base, task) if split_cfg.max_train_rows == "auto" else None
    config_hash = sha256_json([data_cfg.model_dump(mode="json"), split_cfg.model_dump(mode="json")]
                              + ([task] if task != "classify" else [])
                              + ([base.model_dump(mode="json", exclude={"cache_dir"})] if length_of else []))
    fingerprint = hashlib.sha256(f"{_sha256_file(path)}:{config_hash}".encode()).hexdigest()

    split_parts, available, leaks, dropped_labels, skipped = {}, {}, 0, {}, {}
    for domain in chosen:  # validate every domain before writing anything
        rows = table[table["domain"] == domain]
        try:
            parts, removed, available[domain], rare = split_domain(rows, domain, split_cfg, source, length_of)
        except DomainTooSmall as exc:
            if data_cfg.domains:  # asked for by name: the user wants it, so its problem stops the run
                raise
            skipped[domain] = str(exc).removeprefix(f"{source}: ")  # one small domain does not stop the others
            continue
        labels = parts["train"]["label"].nunique() if "label" in parts["train"] else 0  # those it keeps
        if max_labels is not None and labels > max_labels:
            raise DataError(f"{source}: domain '{domain}' has {labels} labels, more than api.max_labels={max_labels} "
                            "(what one server can hold); merge labels with data.label_map or raise api.max_labels")
        split_parts[domain] = parts
        leaks += removed
        if rare:
            dropped_labels[domain] = rare

    if not split_parts:  # every domain too small: the first one's reason, as one line
        raise DomainTooSmall(f"{source}: {next(iter(skipped.values()))}")

    domains = {}
    for domain, parts in split_parts.items():
        domain_fingerprint = _fingerprint_rows(parts)
        # Keyed by the domain's own rows, so another domain's edit leaves this domain's inputs (and cache) as is.
        domain_dir = Path(out_dir) / domain_dirname(domain) / domain_fingerprint[:16]
        domain_dir.mkdir(parents=True, exist_ok=True)
        for name, part in parts.items():
            part[["text", _answer_column(part)]].to_json(domain_dir / f"{name}.jsonl", orient="records",
                                                         lines=True, force_ascii=False)
        domains[domain] = DomainSplits(
            domain=domain,
            labels=sorted(parts["train"]["label"].unique().tolist()) if "label" in parts["train"] else [],
            dir=str(domain_dir),
            fingerprint=domain_fingerprint,
            counts={name: len(part) for name, part in parts.items()},
            available=available[domain],
        )
    return PreparedData(
        dataset=safe_name(data_cfg.name or path.stem), source=source, fingerprint=fingerprint, domains=domains,
        dropped_empty_texts=dropped, removed_leaks=leaks, dropped_labels=dropped_labels,
        skipped_domains=skipped,
    )
