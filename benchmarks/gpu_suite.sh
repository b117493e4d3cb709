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
# Training: the e2e benchmark IS the training run (train.py composition: experiment=df40_specialist,
# the -quickgelu model, Adam, batch 32, bf16-mixed, DF40DataModule with 8 workers over 256-px PNGs,
# Lightning fit, H2D copy, on-device normalisation) with the raw step beside it; GPU utilisation is
# sampled by nvidia-smi into $OUT/util_<step>.csv (and by torch.cuda.utilization when pynvml exists).
util_step() { local name="$1"; nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 250 > "$OUT/util_$name.csv" 2>/dev/null & local upid=$!
  step "$@"; kill "$upid" 2>/dev/null; wait "$upid" 2>/dev/null
  awk -F', ' '{gsub(/ %/,"",$2); if ($2+0 > 0) {s+=$2; n++}} END {if (n) printf "[%s] GPU util mean %.0f %% over %d busy samples\n", name, s/n, n}' name="$name" "$OUT/util_$name.csv" | tee -a "$OUT/steps.log"; }
util_step train_e2e_b16 150 "$PY" benchmarks/train_throughput.py e2e --model vit_b16 --device cuda --steps 100 --warmup 5
util_step train_e2e_l14 150 "$PY" benchmarks/train_throughput.py e2e --model vit_l14 --device cuda --steps 40 --warmup 5
# The lean loader (uint8 + on-device normalisation) vs the former float path, PNG vs packed shards, 16 workers.
step loader_16w 150 "$PY" benchmarks/train_throughput.py loader --device cuda --workers 16 --images 6144 --rounds 2 --decode-images 256
step tests_cuda 90 "$PY" -m pytest -q -x tests/merging tests/evaluation/test_eval_functional.py -p no:cacheprovider
step tests_merge_cuda 60 "$PY" -m pytest -q tests/merging/test_invariants.py -k cuda -rs -p no:cacheprovider
step builtin 130 "$PY" train.py paths.root_dir="$OUT/builtin" extras.print_config=false
cp "$OUT"/builtin/logs/train/runs/*/merge/comparison.md "$OUT/builtin_comparison.md" 2>/dev/null
tar czf "$OUT/builtin_merge.tgz" -C "$OUT" --exclude='*.safetensors' --exclude='*.ckpt' builtin/logs 2>/dev/null
rm -rf "$OUT/builtin"
