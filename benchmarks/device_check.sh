#!/usr/bin/env bash
# One accelerator check, under 8 minutes on one H100/H200: training-step MFU of ankh3_large in bf16, embedding
# throughput of ankh3_large in bf16, and a 50-step tiny run through launch/run.py on the default mesh.
#
#   ANKH3_VENV=/path/to/venv-with-jax[cuda12] benchmarks/device_check.sh 2>&1 | tee device_check.log
#
# The venv needs requirements.txt plus jax[cuda12] of the pinned jax version. Each part has its own time limit
# (4 + 1.5 + 2 minutes); a part that fails or runs out prints why and the next one still runs.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${ANKH3_VENV:-$root/.venv}/bin/python"
cd "$root"
backend="$("$python" -c 'import jax; print(jax.default_backend(), jax.devices()[0].device_kind)' 2>/dev/null)"
case "$backend" in
  gpu*|cuda*|tpu*) echo "== device: $backend" ;;
  *) echo "error: no accelerator visible to jax in $python (backend: ${backend:-none}); install jax[cuda12]==$(sed -n 's/^jax==//p' requirements.txt) into that venv" >&2; exit 2 ;;
esac

echo "== 1. training step, ankh3_large, bf16, remat dots, Le 512 / Ld 384 (the largest batch of 32, 16, 8 that fits)"
for batch in 32 16 8; do
  if timeout 240 "$python" benchmarks/model_step.py --shape=ankh3_large --dtype=bfloat16 --remat=dots --batch=$batch \
      --enc_len=512 --dec_len=384 --steps=5 --warmup=2 --no_hf --compile_depths= 2>&1 | tee /tmp/ankh3_step.log |
      grep -E "^(device|ours)"; then
    break
  fi
  grep -q -i "RESOURCE_EXHAUSTED\|out of memory" /tmp/ankh3_step.log || { tail -n 3 /tmp/ankh3_step.log; break; }
  echo "   batch $batch does not fit; trying a smaller one"
done

echo "== 2. embedding throughput, ankh3_large, bf16"
timeout 90 "$python" benchmarks/embed.py --shape=ankh3_large --dtype=bfloat16 --no_hf --repeats=2 2>&1 | tail -n 4

echo "== 3. 50-step tiny run on the accelerator, default mesh (all local devices, data parallel)"
workdir="$(mktemp -d)"
MLFLOW_TRACKING_URI="sqlite:///$workdir/mlflow.db" timeout 120 "$python" launch/run.py --config=experiments/base.py \
  --config.train.steps=50 --config.train.eval_every=25 --config.train.progress_every_s=10 --mode=pretrain \
  --workdir="$workdir/run" 2>&1 | grep -E "^step|train/loss|eval/loss|tokens_per_s|error"
echo "   exit status ${PIPESTATUS[0]}; workdir $workdir"
