"""(Run from a worktree of the measured commit at /tmp/wt; "both" was dropped after the first domain: too slow.)
Cheap, pre-training signals of whether the bag-of-words term helps a domain: TF-IDF+LR, frozen-embedding+LR
and both together, each with C picked on val (macro-F1 on val), on the pipeline's own default splits."""
import json, sys
from pathlib import Path
import numpy as np, scipy.sparse as sp, torch
sys.path.insert(0, "/tmp/wt")
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from lora_pipeline.config import load_config
from lora_pipeline.data.prepare import prepare_data
from lora_pipeline.evaluation.metrics import classification_metrics
from lora_pipeline.models.bases import base_model_path, load_tokenizer
from lora_pipeline.models.encoder import _embed
from lora_pipeline.training.trainer import resolve_max_length
from transformers import AutoModel
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
GRID = [0.1, 0.3, 1, 3, 10, 30, 100]
def best_val(xtr, ytr, xva, yva):
    best = (-1, None)
    for c in GRID:
        clf = LogisticRegression(max_iter=3000, class_weight="balanced", C=c).fit(xtr, ytr)
        f1 = classification_metrics(list(yva), list(clf.predict(xva)), sorted(set(yva)))["macro_f1"]
        best = max(best, (f1, c), key=lambda t: t[0])
    return best
out = open("/tmp/s9/term_probe.jsonl", "a")
for name in sys.argv[1].split(","):
    cfg = load_config(values={"data.path": f"/tmp/wt/data/{name}.csv"})
    tok = load_tokenizer(cfg.base.name, cfg.base.cache_dir)
    enc = AutoModel.from_pretrained(base_model_path(cfg.base.name), use_safetensors=True).eval()
    for dom, splits in sorted(prepare_data(Path(cfg.data.path), cfg.data, cfg.split, Path(f"/tmp/s9/probe-work/{name}"), base=cfg.base).domains.items()):
        tr, va = splits.read("train"), splits.read("val")
        L = resolve_max_length(tok, splits, cfg.base).max_length
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(tr["text"])
        ttr, tva = vec.transform(tr["text"]), vec.transform(va["text"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            etr = _embed(enc, tok, tr["text"].tolist(), L, 32); eva = _embed(enc, tok, va["text"].tolist(), L, 32)
        t = best_val(ttr, tr["label"], tva, va["label"])
        e = best_val(etr, tr["label"], eva, va["label"])
        b = (0, None)
        row = {"dataset": name, "domain": dom, "labels": len(splits.labels), "n_train": len(tr), "length": L,
               "tfidf_val": round(t[0], 4), "emb_val": round(e[0], 4), "both_val": round(b[0], 4), "C": [t[1], e[1], b[1]]}
        print(row, flush=True); out.write(json.dumps(row) + "\n"); out.flush()
