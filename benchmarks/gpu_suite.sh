#!/usr/bin/env bash
# Every issue-7 GPU figure in one device call (H100: plan about 9 minutes of the 10-minute limit).
#
# Prepare on the development machine, once (both folders are ignored by git and travel with `carry`):
#   benchmarks/ultralytics_env.sh                               # Ultralytics beside the project
#   mkdir -p .gpu/shared/data && cp -r ../shared/data/aquarium .gpu/shared/data/
#   echo /.gpu/ >> .git/info/exclude
# Then, through the device tool:
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".gpu", "benchmarks/.ultralytics"])
# The JSON files land in $OUT (the device tool brings them back); copy them to benchmarks/results/.
# Nothing here needs open_clip, pycocotools or lvis (absent on the device machine).
set -euo pipefail
cd "$(dirname "$0")"
export CL_DETECT_SHARED="${CL_DETECT_SHARED:-$PWD/../.gpu/shared}"
export PYTHONPATH="$PWD/.ultralytics:$PWD/..${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/results}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# inference: S and L at 640, batch 32, bf16, ours vs Ultralytics, TFLOP/s against the peak
"$PY" inference_speed.py --sizes s l --batches 32 --dtypes bf16 --warmup 5 --iters 20 --ultralytics \
    --out "$OUT/inference_cuda.json"
# whole trainers on Aquarium at 640, batch 32, mosaic on, 12 workers: ours vs Ultralytics' WorldTrainer
"$PY" trainer_speed.py --sizes s l --batch 32 --workers 12 --warmup 5 --batches 25 --ultralytics \
    --out "$OUT/trainer_speed_cuda.json"
# model step: distill and lora against finetune (step time, CUDA peak memory)
"$PY" train_speed.py --sizes s l --image-size 640 --batch 32 --methods finetune ultralytics distill lora \
    --iters 10 --warmup 3 --out "$OUT/train_speed_cuda.json"
# the loader alone with the machine's 16 cores
"$PY" loader_speed.py --images 1024 --workers 0 4 8 16 --out "$OUT/loader_speed_h100.json"
# where a step's GPU time goes
"$PY" profile_train_step.py --size s --image-size 640 --batch 32 --device cuda --out "$OUT/profile_train_step_s_cuda.json"
