"""Offline: for each trained adapter in a held-out work dir, the test/val macro-F1 of head + a * term.

    python benchmarks/results/heldout-extra/term-weight-2026-12-07/probe.py OUT.json PROJECT_DIR...

PROJECT_DIR: a dataset's scratch project of a held-out run (bench_heldout --work W: W/newsgroups, ...).
"""
import json, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from lora_pipeline.config import Compute
from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.models.encoder import BagOfWords
from sklearn.metrics import f1_score

ALPHAS = [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, "term"]
out = {}
for project in sys.argv[2:]:
    project = Path(project)
    for adir in sorted((project / ".lora_pipeline/adapters").glob("*/*/adapter")):
        dom_key = adir.parent.parent.name
        prep = [p for p in (project / ".lora_pipeline/prepared" / dom_key).iterdir() if p.is_dir()]
        if len(prep) != 1:
            print("skip", adir, prep); continue
        ad = load_adapter(adir, compute=Compute(precision="bf16"))
        labels = ad.meta.labels
        terms = [m for m in ad.model.modules() if isinstance(m, BagOfWords)]
        res = {}
        cache = {}
        tr = pd.read_json(prep[0] / "train.jsonl", lines=True, dtype={"text": str, "label": str})
        prior = np.array([(tr["label"] == l).mean() for l in labels]) + 1e-6
        for split in ("val", "test"):
            df = pd.read_json(prep[0] / f"{split}.jsonl", lines=True, dtype={"text": str, "label": str})
            y = np.array([labels.index(l) for l in df["label"]])
            lp_full = np.log(ad.predict_proba(df["text"].tolist(), 64) + 1e-30)
            saved = [t.weight.detach().clone() for t in terms]
            with torch.no_grad():
                for t in terms: t.weight.zero_()
            lp_head = np.log(ad.predict_proba(df["text"].tolist(), 64) + 1e-30)
            with torch.no_grad():
                for t, w in zip(terms, saved): t.weight.copy_(w)
            term = lp_full - lp_head
            cache[split] = (y, lp_head, term)
            res[split] = {}
            for a in ALPHAS:
                s = term if a == "term" else lp_head + a * term
                if a != "term":
                    z = s - s.max(1, keepdims=True); lp = z - np.log(np.exp(z).sum(1, keepdims=True))
                    res[split]["ll" + str(a)] = float(-lp[np.arange(len(y)), y].mean())
                res[split][str(a)] = f1_score(y, s.argmax(1), average="macro", labels=range(len(labels)), zero_division=0)
        for split in ("val", "test"):
            y, h, t = cache[split]
            for tau in (-0.5, -0.25, 0.25, 0.5, 1.0):
                res[split][f"tau{tau}"] = f1_score(y, (h + t - tau * np.log(prior)).argmax(1), average="macro", labels=range(len(labels)), zero_division=0)
        # per-label bias by coordinate ascent on val (2 sweeps), applied to test
        yv, hv, tv = cache["val"]; yt, ht, tt = cache["test"]
        sv, st = hv + tv, ht + tt
        bias = np.zeros(len(labels))
        f = lambda s, y, b: f1_score(y, (s + b).argmax(1), average="macro", labels=range(len(labels)), zero_division=0)
        for sweep in range(2):
            for k in range(len(labels)):
                best = (f(sv, yv, bias), bias[k])
                for d in np.linspace(-2, 2, 17):
                    b = bias.copy(); b[k] = d
                    v = f(sv, yv, b)
                    if v > best[0] + 1e-9: best = (v, d)
                bias[k] = best[1]
        res["val"]["bias"] = f(sv, yv, bias); res["test"]["bias"] = f(st, yt, bias)
        name = f"{project.name}/{dom_key.rsplit('-',1)[0]}"
        out[name] = res
        has_term = bool(np.abs(np.concatenate([t.weight.detach().flatten().numpy() for t in terms])).max() > 0)
        print(name, "term" if has_term else "noterm", "val", {k: round(v, 3) for k, v in res["val"].items()})
        print(name, " test", {k: round(v, 3) for k, v in res["test"].items()}, flush=True)
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
