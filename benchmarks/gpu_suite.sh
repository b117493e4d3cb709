#!/usr/bin/env bash
# One prepared GPU session: CUDA tests of the merge library and evaluation, merge speed, training
# throughput, data-pipeline throughput and the built-in benchmark end to end. Writes logs to $OUT
# (default ./gpu_out). Usage on a GPU machine with torch/lightning installed:
#   WHEELS=<folder of extra wheels> bash benchmarks/gpu_suite.sh
#   (the merge library also needs scipy and threadpoolctl: add their wheels to WHEELS if missing)
set -u
OUT="${OUT:-gpu_out}"; mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH="$PWD"
PY="${PYTHON:-python3}"
if [ -n "${WHEELS:-}" ]; then "$PY" -m pip install -q --no-deps --no-index "$WHEELS"/*.whl > "$OUT/pip.log" 2>&1; fi
step() { local name="$1" limit="$2"; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "[$name] rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/steps.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch, lightning, open_clip, torchmetrics; print(torch.__version__, lightning.__version__, open_clip.__version__, torchmetrics.__version__, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1
# merge library (target: ViT-L/14, N = 3, r2m <= 5 s on one H100; each cell a fresh process)
step merge_speed_l14 150 "$PY" benchmarks/merge_speed.py --model ViT-L-14 --n 3 --device cuda --methods r2m tsv iso_cts --check64 --no-sweep --no-peer
step merge_speed_b16 150 "$PY" benchmarks/merge_speed.py --model ViT-B-16 --n 3 --device cuda --check64 tsv iso_cts r2m
step merge_agreement 60 "$PY" benchmarks/merge_speed.py --agreement --model ViT-B-16 --n 3
step train_b16 50 "$PY" benchmarks/train_throughput.py model --device cuda --model ViT-B-16 --image-size 224 --batch-size 256 --precision bf16-mixed --steps 20
step train_l14 50 "$PY" benchmarks/train_throughput.py model --device cuda --model ViT-L-14 --image-size 224 --batch-size 128 --precision bf16-mixed --steps 15
step data_16w 40 "$PY" benchmarks/train_throughput.py data --image-size 224 --workers 16 --images 2048
step tests_cuda 90 "$PY" -m pytest -q -x tests/merging tests/evaluation/test_eval_functional.py -p no:cacheprovider
step tests_merge_cuda 60 "$PY" -m pytest -q tests/merging/test_invariants.py -k cuda -rs -p no:cacheprovider
step builtin 130 "$PY" train.py paths.root_dir="$OUT/builtin" extras.print_config=false
cp "$OUT"/builtin/logs/train/runs/*/merge/comparison.md "$OUT/builtin_comparison.md" 2>/dev/null
tar czf "$OUT/builtin_merge.tgz" -C "$OUT" --exclude='*.safetensors' --exclude='*.ckpt' builtin/logs 2>/dev/null
rm -rf "$OUT/builtin"
