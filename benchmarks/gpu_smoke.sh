#!/usr/bin/env bash
# One prepared check of the GPU path: a preset (small-real by default) through
#   features → pretrain (DeepSpeed ZeRO-2) → finetune (DeepSpeed ZeRO-3) → eval
# in bf16 with SDPA attention, on NUM_GPUS GPUs (1 by default), each stage launched by `msr` itself
# with the `deepspeed` launcher, as the 8-GPU run is. Writes $OUT/smoke.json (wall time per stage,
# training throughput, peak GPU memory, the environment) and the eval table $OUT/eval.md.
#
#   bash benchmarks/gpu_smoke.sh                      # on a CUDA machine, after `make setup-small-real`
#   PRESET=tiny NUM_GPUS=1 bash benchmarks/gpu_smoke.sh   # the same script on a CPU (gloo), ~3 min
#
# Budget: small-real on one H100/H200-class GPU is expected well inside 10 minutes (features ~1 min
# for 5,000 images, both stages and eval a few minutes); the step counts are capped by STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-small-real}
NUM_GPUS=${NUM_GPUS:-1}
STEPS=${STEPS:-60}
OUT=${OUT:-reports/gpu_smoke/$PRESET}
WORK=${WORK:-data/gpu_smoke/$PRESET}
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

mkdir -p "$OUT" "$WORK"
PARAMS="$WORK/params.yaml"
msr preset show "$PRESET" > "$PARAMS"
# the preset's data, models and feature cache stay where `dvc repro` of the preset puts them; the
# smoke run trains and evaluates into its own folders
SETS=(
  --set "paths.pretrain=$WORK/pretrain" --set "paths.finetune=$WORK/finetune"
  --set "paths.eval=$WORK/eval" --set "paths.reports=$OUT"
  --set "data.launcher=none"
  --set "pretrain.launcher=deepspeed" --set "pretrain.num_devices=$NUM_GPUS"
  --set "pretrain.deepspeed=configs/deepspeed/zero2.json" --set "pretrain.bf16=true"
  --set "pretrain.max_steps=$STEPS" --set "pretrain.log_every=5"
  --set "finetune.launcher=deepspeed" --set "finetune.num_devices=$NUM_GPUS"
  --set "finetune.deepspeed=configs/deepspeed/zero3.json" --set "finetune.bf16=true"
  --set "finetune.max_steps=$STEPS" --set "finetune.log_every=5"
  --set "pretrain.attention=sdpa" --set "finetune.attention=sdpa"
  --set "eval.launcher=torchrun" --set "eval.num_devices=$NUM_GPUS" --set "eval.dtype=bf16"
)

stamp() { date +%s.%N; }
declare -A SECONDS_OF
run() {  # name, command...
  local name=$1; shift
  local t0; t0=$(stamp)
  "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "^\[" | tail -3
  SECONDS_OF[$name]=$(python -c "print(round($(stamp) - $t0, 1))")
}

run synth msr synth --params "$PARAMS" "${SETS[@]}"
run models msr models --params "$PARAMS" "${SETS[@]}"
run features msr features --params "$PARAMS" "${SETS[@]}"
run pretrain msr pretrain --params "$PARAMS" "${SETS[@]}"
run finetune msr finetune --params "$PARAMS" "${SETS[@]}"
run eval msr eval --params "$PARAMS" "${SETS[@]}"

python - "$OUT" "${SECONDS_OF[synth]}" "${SECONDS_OF[models]}" "${SECONDS_OF[features]}" \
  "${SECONDS_OF[pretrain]}" "${SECONDS_OF[finetune]}" "${SECONDS_OF[eval]}" <<'EOF'
import json, sys
from pathlib import Path

from msr.profile.environment import environment

out = Path(sys.argv[1])
names = ["synth", "models", "features", "pretrain", "finetune", "eval"]
result = {"seconds": dict(zip(names, map(float, sys.argv[2:]))), "environment": environment()}
for stage in ("pretrain", "finetune"):
    m = json.loads((out / stage / "metrics.json").read_text())  # what was learned
    t = json.loads((out / stage / "timings.json").read_text())  # how fast, how much memory
    result[stage] = {"loss": m.get("train", {}).get("loss"), "steps": m.get("steps")}
    result[stage].update({k: t.get(k) for k in ("samples_per_s", "tokens_per_s", "max_memory_gb")})
result["eval"] = json.loads((out / "eval.json").read_text())["headline"]
(out / "smoke.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
