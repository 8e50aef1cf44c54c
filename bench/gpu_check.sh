#!/usr/bin/env bash
# Every check that needs CUDA (docs/benchmarks.md), on one GPU, in about 7 minutes, as one table.
#
#   bash bench/gpu_check.sh [--only STEP ...] [LOG_DIR]   # from anywhere; PYTHON=/path/to/python chooses the
#                                                          # interpreter; --only reruns just the steps named
#
# Random init and synthetic/example data only (model.pretrained null): nothing is downloaded.
# Steps (each with its own time limit; a failing or timed-out step is marked FAIL and the next one runs):
#   gpu_tests        pytest -m gpu tests/test_gpu.py: bf16 and fp16 AMP train steps with clipping and
#                    accumulation, torchrun --nproc_per_node=1 with NCCL and loss.gather_features=true, a resume
#                    restoring the CUDA RNG state, CUDA evaluation equal to CPU evaluation, a rank failing with NCCL
#                    (and DataLoader workers) ending the job promptly
#   paper_configs    pytest tests/test_paper_configs.py on CUDA: one real optimizer step of every paper config
#                    with its real architecture (the ViT-L/14@336 step runs only on CUDA)
#   vitb32_b128      bench/train_step.py ViT-B-32-quickgelu, batch 128, amp_bf16: ICSD vs contrastive-only
#   vitl14_336_b16   the same for ViT-L-14-336-quickgelu, batch 16, amp_bf16
#   vitl14_336_b16_gc  ... with gradient checkpointing
#   vitb32_speed     ViT-B/32 batch 128 amp_bf16, ICSD and contrastive-only: the plain step interleaved with
#                    torch.compile and fused AdamW, 20 steps each from the same init and batch (speed ratio and loss
#                    agreement; the ICSD/contrastive ratio with and without compile)
#   loader_w16       bench/data_loader.py with 16 workers: original 640x480 JPEGs, the JPEG cache, the pixel and
#                    token caches, the loader's own ceiling, and torchvision.io.decode_jpeg on the GPU
# Table columns: step, status (PASS | FAIL | FAIL(timeout)), seconds, and the step's numbers:
#   tests: pytest's summary line; train steps: samples/s and peak memory (MiB, max_memory_allocated) of the
#   ICSD step, its time ratio to contrastive-only, its host syncs per step; speed: each flag's step-time ratio
#   to the plain step, the largest relative loss difference over the steps, graphs recompiled after warm-up;
#   loader: images/s per worker of the original JPEGs, the JPEG cache and the pixel+token caches, their
#   ratios, the loader's ceiling, GPU decode.
# Full outputs are in LOG_DIR (default gpu_check_logs/).
set -euo pipefail

STEPS=" gpu_tests paper_configs vitb32_b128 vitl14_336_b16 vitl14_336_b16_gc vitb32_speed loader_w16 "
ONLY=() LOGS=gpu_check_logs
while [ $# -gt 0 ]; do
    case $1 in
        --only) ;;
        *) if [[ $STEPS == *" $1 "* ]]; then ONLY+=("$1"); else LOGS=$1; fi ;;
    esac
    shift
done
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$LOGS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

ROWS=()

summarize() {  # step log -> the numbers of the table's last column
    local step=$1 log=$2
    case $step in
        gpu_tests|paper_configs)
            grep -E "[0-9]+ (passed|failed|error|skipped)" "$log" | tail -n 1 | sed 's/=//g; s/^ *//' || true ;;
        vitb32_speed)
            awk '$1 ~ /\+/ {printf "%s x%s of plain, loss diff %s, icsd/contrastive %s, recompiles %s; ", $1, $7, $8, $6, $10}' "$log" || true ;;
        vit*)
            awk '$1 == "icsd" {printf "icsd %s samples/s, peak %s MiB, icsd/contrastive %s, host syncs/step %s", $2, $5, $6, $9}' "$log" || true ;;
        loader*)
            awk '$1 ~ /^[0-9]+$/ {printf "per worker: orig %s, jpeg %s, pixel+token caches %s img/s (x%s jpeg, x%s orig; loader ceiling %s); ", $2, $3, $5, $7, $8, $10}
                 $1 == "gpu" {printf "gpu decode orig %s img/s, jpeg %s img/s", $3, $4}' "$log" || true ;;
    esac
}

run_step() {  # name time-limit-seconds command...
    local name=$1 limit=$2
    shift 2
    if [ ${#ONLY[@]} -gt 0 ] && [[ " ${ONLY[*]} " != *" $name "* ]]; then return; fi
    local log="$LOGS/$name.log" start=$SECONDS status=PASS rc=0
    echo ">>> $name (limit ${limit}s): $*" >&2
    timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="FAIL(timeout)"
    elif [ "$rc" -ne 0 ]; then
        status="FAIL(rc=$rc)"
    fi
    ROWS+=("$name|$status|$((SECONDS - start))|$(summarize "$name" "$log")")
    echo "<<< ${ROWS[-1]}" >&2
}

GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')" 2>&1 || true)

run_step gpu_tests 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
run_step paper_configs 120 "$PY" -m pytest -q tests/test_paper_configs.py -p no:cacheprovider
run_step vitb32_b128 45 "$PY" bench/train_step.py --device cuda --model ViT-B-32-quickgelu --batch-size 128 \
    --precision amp_bf16 --steps 20 --warmup 5
run_step vitl14_336_b16 60 "$PY" bench/train_step.py --device cuda --model ViT-L-14-336-quickgelu --batch-size 16 \
    --precision amp_bf16 --steps 8 --warmup 3
run_step vitl14_336_b16_gc 60 "$PY" bench/train_step.py --device cuda --model ViT-L-14-336-quickgelu \
    --batch-size 16 --precision amp_bf16 --steps 8 --warmup 3 --grad-checkpointing
run_step vitb32_speed 200 "$PY" bench/train_step.py --device cuda --model ViT-B-32-quickgelu --batch-size 128 \
    --precision amp_bf16 --steps 17 --warmup 3 --losses icsd contrastive --compile --fused-adamw
run_step loader_w16 150 "$PY" bench/data_loader.py --workers 16 --images 1024 --repeats 1 --batch-size 16

echo "# gpu_check on $GPU, $(date -u +%Y-%m-%dT%H:%MZ), logs in $LOGS/"
printf '%-20s %-14s %8s  %s\n' step status seconds numbers
FAILED=0
for row in "${ROWS[@]}"; do
    IFS='|' read -r name status seconds numbers <<<"$row"
    printf '%-20s %-14s %8s  %s\n' "$name" "$status" "$seconds" "$numbers"
    [ "$status" = PASS ] || FAILED=1
done
exit "$FAILED"
