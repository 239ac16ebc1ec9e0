#!/usr/bin/env bash
# The CLLM adapter on one GPU, in a fixed wall-clock budget (the *_END deadlines below, seconds from
# the start; a lent GPU machine is held for minutes).
#
#   scripts/cllm_gpu.sh OUT [polyverse command]
#
# 1. Self-distillation: the bundled model's greedy answers to every GSM8K train question, 512 per
#    batched `generate` call (`polyverse train distill --batch`), 168 new tokens each (fit keeps 160).
# 2. Three packed consistency fits side by side on the same GPU, each in two phases as in the CPU
#    recipe (Makefile `cllm-adapter`): a constant rate until the phase-1 deadline, then a branch off
#    its last checkpoint with the rate decaying linearly to 0 over 40% as many steps. The phase-1
#    deadline makes the step count depend on the GPU: the count reached is in each polyverse.json.
#      A: AR : consistency 1 : 1, half the micro-batches refined on-policy; the branch 1 : 3, all refined
#      B: 1 : 3 and all refined in both phases
#      C: as A, LoRA rank 32
# 3. Each adapter's figures on GSM8K dev questions 1-10 (`cllm eval` on the GPU: tokens per pass,
#    agreement and accuracy are what counts there; the speed ratios are the CPU's to measure).
# Every step is resumable; the adapters are packed as OUT/<name>.tar. Check the fits' step rate in
# the first minute (each fit's log under $W): three processes share the machine's cores. What the
# first run showed is in BENCHMARKS.md.
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # three fits share the machine's cores
OUT=${1:?usage: cllm_gpu.sh OUT [polyverse command]}
PV=${2:-polyverse}
W=${W:-/tmp/cllm-gpu}
T0=$(date +%s)
mkdir -p "$W" "$OUT"
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( $1 - ($(date +%s) - T0) )); }

DATA=${DATA:-../shared/data}
DISTILL_END=${DISTILL_END:-150}  # seconds from the start
PHASE1_END=${PHASE1_END:-320}
PHASE2_END=${PHASE2_END:-410}
EVAL_END=${EVAL_END:-500}
STEPS_CAP=${STEPS_CAP:-100000}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-7473}  # questions distilled
DBATCH=${DBATCH:-512}  # questions per generate call
FBATCH=${FBATCH:-16}  # samples per fit micro-batch
SAVE=${SAVE:-25}  # checkpoint every N steps
EVAL_N=${EVAL_N:-10}

log "distill"
timeout -s INT "$(left "$DISTILL_END")" $PV train distill --data "$DATA/gsm8k_train.jsonl" --limit "$LIMIT" --batch "$DBATCH" \
    --device "$DEVICE" --max-new-tokens "${DTOK:-168}" --out "$W/self.jsonl" 2>&1 | tail -n 2
ROWS=$(wc -l < "$W/self.jsonl" 2>/dev/null)
[ "${ROWS:-0}" -gt 0 ] || { log "no distilled rows"; exit 6; }
log "distilled rows: $ROWS"

COMMON="--data $W/self.jsonl --batch $FBATCH --accumulate 1 --groups 32 --block 8 --max-len 160 --precision bf16 --store fp16 --save-every $SAVE --resume"

latest() { ls "$1/checkpoints" 2>/dev/null | sed 's/step-//' | sort -n | tail -n 1; }

train() {  # name, rank, phase-1 weights and refine, phase-2 weights and refine
    local name=$1 rank=$2 w1=$3 r1=$4 w2=$5 r2=$6 o=$W/$1
    timeout -s INT "$(left "$PHASE1_END")" $PV train cllm fit $COMMON --out "$o" --steps "$STEPS_CAP" --lr 5e-4 \
        --lora-rank "$rank" $w1 --refine "$r1" > "$W/$name-1.log" 2>&1
    local s1; s1=$(latest "$o")
    [ -n "$s1" ] || { log "$name: no checkpoint in phase 1"; return; }
    local d=$(( s1 * 2 / 5 / SAVE * SAVE )); [ "$d" -ge "$SAVE" ] || d=$SAVE
    log "$name: phase 1 ended at step $s1; phase 2: $d decay steps"
    timeout -s INT "$(left "$PHASE2_END")" $PV train cllm fit $COMMON --out "$o" --steps $(( s1 + d )) --lr 3e-4 \
        --lora-rank "$rank" $w2 --refine "$r2" --schedule linear --decay-from "$s1" > "$W/$name-2.log" 2>&1
    if [ ! -f "$o/adapter_model.safetensors" ]; then  # cut by the deadline: save the last checkpoint as it is
        local s2; s2=$(latest "$o")
        log "$name: phase 2 cut at step $s2"
        local decay="--schedule linear --decay-from $s1"; [ "$s2" -gt "$s1" ] || decay=""
        $PV train cllm fit $COMMON --out "$o" --steps "$s2" --lr 3e-4 --lora-rank "$rank" $w2 --refine "$r2" \
            $decay >> "$W/$name-2.log" 2>&1
    fi
    log "$name: $(tail -n 1 "$W/$name-2.log")"
}

config() {  # name -> train's arguments
    case $1 in
        A) train A 16 "--ar-weight 1 --consistency-weight 1" 0.5 "--ar-weight 1 --consistency-weight 3" 1.0 ;;
        B) train B 16 "--ar-weight 1 --consistency-weight 3" 1.0 "--ar-weight 1 --consistency-weight 3" 1.0 ;;
        C) train C 32 "--ar-weight 1 --consistency-weight 1" 0.5 "--ar-weight 1 --consistency-weight 3" 1.0 ;;
    esac
}
CONFIGS=${CONFIGS:-A B C}
log "fit: $CONFIGS"
for name in $CONFIGS; do config "$name" & done
wait

for name in $CONFIGS; do
    [ -f "$W/$name/adapter_model.safetensors" ] || continue
    (cd "$W/$name" && tar cf "$OUT/$name.tar" adapter_config.json adapter_model.safetensors polyverse.json)
    grep -h "step" "$W/$name-1.log" | tr '\r' '\n' | grep -o "step [0-9]*: ar [0-9.]* consistency [0-9.]*" | tail -n 1
done
log "eval"
for name in $CONFIGS; do
    [ -f "$W/$name/adapter_model.safetensors" ] || continue
    timeout -s INT "$(left "$EVAL_END")" $PV train cllm eval --adapter "$W/$name" --device "$DEVICE" --limit "$EVAL_N" \
        --data "$DATA/gsm8k_test_dev.jsonl" --max-new-tokens 128 --out "$OUT/eval-$name.json" > "$W/eval-$name.log" 2>&1 &
done
wait
for name in $CONFIGS; do echo "== $name"; tail -n 12 "$W/eval-$name.log" 2>/dev/null; done
log "done"
