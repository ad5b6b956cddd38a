"""Offline: a term-trained adapter scored with its full logits and with the head alone (term zeroed), on val and test."""
import json, sys, glob
from pathlib import Path
import pandas as pd, torch
sys.path.insert(0, "/tmp/wt")
from lora_pipeline.models.adapters import load_adapter
from lora_pipeline.models.compute import Compute
from lora_pipeline.models.encoder import BagOfWords
from lora_pipeline.evaluation.metrics import classification_metrics
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
out = open(sys.argv[3] if len(sys.argv) > 3 else "/tmp/s9/head_only.jsonl", "a")
for work in sys.argv[1].split(","):
    for adir in sorted(glob.glob(f"{work}/*/.lora_pipeline/adapters/*/*/adapter")):
        dom_key = Path(adir).parents[1].name
        prep = glob.glob(f"{Path(adir).parents[3]}/prepared/{dom_key}/*/")[0]
        ad = load_adapter(adir, compute=Compute(device="cpu", precision="bf16"))
        labels = ad.meta.labels
        res = {"adapter": adir, "domain": dom_key}
        data = {s: pd.read_json(f"{prep}/{s}.jsonl", lines=True) for s in ("val", "test")}
        for variant in ("full", "head"):
            if variant == "head":
                for m in ad.model.modules():
                    if isinstance(m, BagOfWords):
                        torch.nn.init.zeros_(m.weight)
            for s, df in data.items():
                pred = ad.predict(df["text"].astype(str).tolist(), 32)
                res[f"{variant}_{s}"] = round(classification_metrics(df["label"].astype(str).tolist(), pred, labels)["macro_f1"], 4)
        print(res, flush=True); out.write(json.dumps(res) + "\n"); out.flush()
