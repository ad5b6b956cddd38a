import sys, glob, json
from pathlib import Path
import pandas as pd
sys.path.insert(0, "/tmp/wt")
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from lora_pipeline.evaluation.metrics import classification_metrics
GRID = [0.1, 0.3, 1, 3, 10, 30, 100]
for work in sys.argv[1].split(","):
    for prep in sorted(glob.glob(f"{work}/*/.lora_pipeline/prepared/*/*/")):
        d = {s: pd.read_json(f"{prep}/{s}.jsonl", lines=True) for s in ("train", "val", "test")}
        for s in d: d[s]["label"] = d[s]["label"].astype(str); d[s]["text"] = d[s]["text"].astype(str)
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(d["train"]["text"])
        x = {s: vec.transform(df["text"]) for s, df in d.items()}
        best = None
        for c in GRID:
            m = LogisticRegression(max_iter=2000, class_weight="balanced", C=c).fit(x["train"], d["train"]["label"])
            f = {s: classification_metrics(d[s]["label"].tolist(), list(m.predict(x[s])), sorted(set(d[s]["label"])))["macro_f1"] for s in ("val", "test")}
            if best is None or f["val"] > best[1]["val"]: best = (c, f)
        print(json.dumps({"domain": Path(prep).parent.name, "labels": d["train"]["label"].nunique(), "n_val": len(d["val"]), "C": best[0], "tfidf_val": round(best[1]["val"], 4), "tfidf_test": round(best[1]["test"], 4)}), flush=True)
