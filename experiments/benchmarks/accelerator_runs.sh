#!/usr/bin/env bash
# The runs that an accelerator makes practical, in priority order, within a time budget: each step
# is one command as a user types it; its run files (never checkpoints) and its log go to OUT.
#
#   bash experiments/benchmarks/accelerator_runs.sh OUT SECONDS [STEP ...]
#   bash experiments/benchmarks/accelerator_runs.sh /tmp/smoke 600 --smoke   # the mechanics on a CPU
#
# STEPs (default: all, in this order):
#   ladder_tfds    best_ladder, seeds 0-4 vmapped, tfds source
#   ladder_single  best_ladder, seed 0 alone, tfds source
#   amlp_seeds     ladder_amlp, seeds 5-9 vmapped, tfds source
#   device_check   python -m experiments.benchmarks.device_check
#   benchmark      adam_mlp and sigmoid_mlp against the other systems
#   amlp_2_2       ladder_amlp_2_2, seeds 0-4 vmapped, tfds source
# A step starts only when its estimate (`estimate` below: seconds on one NVIDIA H200) fits in
# what is left of SECONDS, and is stopped at the deadline. The tfds source reads its decoded
# arrays from data/tfds/mnist_jax_cache/ (a run with tensorflow-datasets writes them), so that
# tensorflow-datasets need not be installed.
# --smoke: every run shrunk to seconds (2 epochs on 1,000 images, device_check --quick, a 1-epoch
# benchmark), to try the mechanics anywhere.
#
# Then, for a run: python -m mnist_jax.results save OUT/<step>/run --name=<experiment>-<platform>
set -uo pipefail
cd "$(dirname "$0")/../.."

out=${1:?usage: accelerator_runs.sh OUT SECONDS [STEP ...] [--smoke]}
budget=${2:?usage: accelerator_runs.sh OUT SECONDS [STEP ...] [--smoke]}
shift 2
smoke=0 steps=()
for arg in "$@"; do
  if [ "$arg" = "--smoke" ]; then smoke=1; else steps+=("$arg"); fi
done
[ ${#steps[@]} -gt 0 ] || steps=(ladder_tfds ladder_single amlp_seeds device_check benchmark amlp_2_2)
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
deadline=$(( $(date +%s) + budget ))
mkdir -p "$out"

declare -A estimate=([ladder_tfds]=240 [ladder_single]=200 [amlp_seeds]=240 [device_check]=300
                     [benchmark]=300 [amlp_2_2]=260)
train() {  # experiment, seed, seeds: one mnist_jax run in $work/run
  local shrink=()
  [ $smoke = 1 ] && shrink=(--config.train.epochs=2 --config.optimizer.decay_epochs=1
                            --config.data.train_subset=1000)
  "$python" -m mnist_jax.main --config="$1" --config.seed="$2" --config.num_seeds="$3" \
    --config.data.source=tfds --workdir="$work/run" --noreport "${shrink[@]}"
}
command_of() {
  case $1 in
    ladder_tfds) train best_ladder 0 5 ;;
    ladder_single) train best_ladder 0 1 ;;
    amlp_seeds) train ladder_amlp 5 5 ;;
    amlp_2_2) train ladder_amlp_2_2 0 5 ;;
    device_check)
      if [ $smoke = 1 ]; then "$python" -m experiments.benchmarks.device_check --quick --out="$work"
      else "$python" -m experiments.benchmarks.device_check --out="$work"; fi ;;
    benchmark)
      if [ $smoke = 1 ]; then
        "$python" -m experiments.benchmarks.benchmark --configs=adam_mlp --epochs=2 --repeats=1 \
          --skip_launch --systems=mnist_jax,jax_scan --out="$work"
      else
        "$python" -m experiments.benchmarks.benchmark --configs=adam_mlp,sigmoid_mlp --out="$work"
      fi ;;
  esac
}
for step in "${steps[@]}"; do
  if [ -z "${estimate[$step]:-}" ]; then
    echo "Unknown step '$step'. The steps are: ${!estimate[*]}." >&2
    exit 2
  fi
done

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv" 2>&1
"$python" -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())" \
  > "$out/versions.txt" 2>&1
for step in "${steps[@]}"; do
  left=$(( deadline - $(date +%s) ))
  need=${estimate[$step]}
  [ $smoke = 1 ] && need=10
  if [ "$left" -lt "$need" ]; then
    echo "$step: skipped, ${left} s left for an estimated ${need} s" | tee -a "$out/steps.txt"
    continue
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/accelerator_${step}_XXXX")
  started=$(date +%s)
  timeout --signal=TERM --kill-after=20 "$left" bash -c "$(declare -f train command_of); \
    python='$python' smoke=$smoke work='$work'; command_of $step" > "$out/$step.log" 2>&1
  code=$?
  echo "$step: exit $code after $(( $(date +%s) - started )) s" | tee -a "$out/steps.txt"
  mkdir -p "$out/$step"
  # Run files and reports, never checkpoints (hundreds of MB, and of no use elsewhere).
  (cd "$work" && find . -path '*checkpoints*' -prune -o -type f ! -name .lock -print |
     tar -cf - -T - 2>/dev/null) | tar -xf - -C "$out/$step"
  rm -rf "$work"
done
