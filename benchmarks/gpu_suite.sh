#!/usr/bin/env bash
# Every issue-7 GPU figure, in two device calls of under 10 minutes each (estimates, not yet run on a GPU):
#   bash benchmarks/gpu_suite.sh inference   # eager/compiled, NCHW/NHWC, ours and Ultralytics' (compiles take minutes)
#   bash benchmarks/gpu_suite.sh training    # whole trainers, model steps, loader, profile (about 9 minutes)
#
# Prepare on the development machine, once (both folders are ignored by git and travel with `carry`):
#   benchmarks/ultralytics_env.sh                               # Ultralytics beside the project
#   mkdir -p .gpu/shared/data && cp -r ../shared/data/aquarium .gpu/shared/data/
#   echo /.gpu/ >> .git/info/exclude
# Then, through the device tool:
#   run(command="bash benchmarks/gpu_suite.sh inference", carry=[".gpu", "benchmarks/.ultralytics"])
#   run(command="bash benchmarks/gpu_suite.sh training", carry=[".gpu", "benchmarks/.ultralytics"])
# The JSON files land in $OUT (the device tool brings them back); copy them to benchmarks/results/.
# Nothing here needs open_clip, pycocotools or lvis (absent on the device machine).
set -euo pipefail
cd "$(dirname "$0")"
export CL_DETECT_SHARED="${CL_DETECT_SHARED:-$PWD/../.gpu/shared}"
export PYTHONPATH="$PWD/.ultralytics:$PWD/..${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/results}"
PY="${PYTHON:-python3}"
PART="${1:?usage: gpu_suite.sh inference|training}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "$PART" = inference ]; then
# inference: S and L at 640, batch 32, bf16, ours vs Ultralytics (eager and compiled), TFLOP/s against the
# peak (H100 SXM dense bf16: 989 TFLOP/s; the issue's reference figures imply about 790: recompute from
# achieved_tflops in the JSON if the lent card is another H100 variant)
"$PY" inference_speed.py --sizes s l --batches 32 --dtypes bf16 --warmup 5 --iters 20 --ultralytics --compile \
    --channels-last --peak-tflops "${PEAK_TFLOPS:-989}" --out "$OUT/inference_cuda.json"
# post-processing: candidates selected for the batch at once (the GPU default) vs image by image
"$PY" postprocess_speed.py --batch 32 --iters 10 --out "$OUT/postprocess_speed_cuda.json"
# the fine-tuning step in channels_last (NHWC) layout, against train_speed_cuda.json's default layout
"$PY" train_speed.py --sizes s l --image-size 640 --batch 32 --methods finetune --channels-last \
    --iters 10 --warmup 3 --out "$OUT/train_speed_cuda_channels_last.json"
exit 0
fi
[ "$PART" = training ] || { echo "unknown part $PART: inference or training" >&2; exit 2; }
# whole trainers on Aquarium at 640, batch 32, mosaic on, 12 workers: ours vs Ultralytics' WorldTrainer
"$PY" trainer_speed.py --sizes s l --batch 32 --workers 12 --warmup 5 --batches 25 --ultralytics \
    --out "$OUT/trainer_speed_cuda.json"
# model step: distill (bf16 teacher, the default on CUDA; fp32 teacher; compiled teacher) and lora against
# finetune (step time, CUDA peak memory)
"$PY" train_speed.py --sizes s l --image-size 640 --batch 32 --methods finetune ultralytics distill distill:teacher_precision=fp32 distill:compile_teacher=true lora \
    --iters 10 --warmup 3 --out "$OUT/train_speed_cuda.json"
# the loader alone with the machine's 16 cores
"$PY" loader_speed.py --images 1024 --workers 0 4 8 16 --out "$OUT/loader_speed_h100.json"
# where a step's GPU time goes
"$PY" profile_train_step.py --size s --image-size 640 --batch 32 --device cuda --out "$OUT/profile_train_step_s_cuda.json"
