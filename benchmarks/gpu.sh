#!/usr/bin/env bash
# The benchmarks at paper shapes on one NVIDIA GPU, in about 8 minutes (sized
# for an H200), and one paper-scale halfcheetah_highdim task iteration of the
# driver; everything lands in one JSON file.
#
#   bash benchmarks/gpu.sh               # GPU: installs jax[cuda12]==0.10.2
#   bash benchmarks/gpu.sh --cpu-smoke   # CPU, reduced sizes, no install
#
# Steps (each under its own time limit; one that fails or runs out is
# recorded with its exit status and the run goes on):
#   virtual_training  benchmarks/virtual_training.py (paper shapes; --quick)
#   alpha_sweep       benchmarks/alpha_sweep.py, 6 α vmapped against 6 runs
#                     (halfcheetah_highdim at the smoke preset: its 2 task
#                     iterations × 3 repeats × 12 members at a larger preset
#                     do not fit the 8 minutes; --cpu-smoke: lq smoke --quick)
#   real_rollout      benchmarks/real_rollout.py, halfcheetah_highdim, hopper2d
#                     and ant2d with the generalized and mjx pipelines,
#                     50 × 200 = 10 000 steps per call (the paper's samples
#                     per stage); --quick: hopper2d, generalized, 16 × 200
#   task_iteration    python -m experiments.run --env=halfcheetah_highdim
#                     --stop_after=1 (the paper preset; --cpu-smoke: smoke
#                     preset, horizon 20), with --nophase_progress; its
#                     compile time and the first task iteration's run time
#                     are the driver's own lines
# The compilation cache is a fresh directory, so compile times are cold.
# Environment: PYTHON (default python), OUT (default
# benchmarks/results/gpu.json, or $TMPDIR/admrl_jax_gpu_cpu_smoke.json with
# --cpu-smoke), KEEP (a directory to keep the step logs in).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --cpu-smoke) MODE=cpu-smoke ;;
  '') ;;
  *) echo "usage: bash benchmarks/gpu.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
LOGS=${KEEP:-$TMP/logs}
mkdir -p "$LOGS"
export ADMRL_JAX_CACHE_DIR=$TMP/jax_cache
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this tree's packages

if [[ $MODE == gpu ]]; then
  OUT=${OUT:-benchmarks/results/gpu.json}
  "$PY" -m pip install --quiet "jax[cuda12]==0.10.2" || exit 1
  "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' || {
    echo "error: jax does not see a GPU after installing jax[cuda12]" >&2
    exit 1; }
  VT_ARGS=(--env=hopper2d)
  AS_ARGS=(--env=halfcheetah_highdim --preset=smoke)
  RR_ARGS=(--families=halfcheetah_highdim,hopper2d,ant2d
           --pipelines=generalized,mjx --n_envs=50 --horizon=200)
  RUN_ARGS=(--env=halfcheetah_highdim --preset=paper)
  LIMITS=(60 100 90 150)  # seconds per step: under 7 minutes with the install
else
  OUT=${OUT:-${TMPDIR:-/tmp}/admrl_jax_gpu_cpu_smoke.json}
  VT_ARGS=(--quick)
  AS_ARGS=(--quick)
  RR_ARGS=(--quick)
  RUN_ARGS=(--env=halfcheetah_highdim --preset=smoke --horizon=20)
  LIMITS=(300 300 300 400)
fi

# step NAME LIMIT_S COMMAND...: runs it, records rc and wall time.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  echo "[gpu.sh] $name: $*" >&2
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s%N)
  echo "$name $rc $(( (t1 - t0) / 1000000 )) $limit" >>"$TMP/steps.txt"
  [[ $rc == 0 ]] || { echo "[gpu.sh] $name: exit $rc; log tail:" >&2;
                      tail -5 "$LOGS/$name.log" >&2; }
}

WALL0=$(date +%s)
step virtual_training "${LIMITS[0]}" "$PY" benchmarks/virtual_training.py \
  "${VT_ARGS[@]}" --out="$TMP/virtual_training.json"
step alpha_sweep "${LIMITS[1]}" "$PY" benchmarks/alpha_sweep.py \
  "${AS_ARGS[@]}" --out="$TMP/alpha_sweep.json"
step real_rollout "${LIMITS[2]}" "$PY" benchmarks/real_rollout.py \
  "${RR_ARGS[@]}" --out="$TMP/real_rollout.json"
step task_iteration "${LIMITS[3]}" "$PY" -m experiments.run \
  "${RUN_ARGS[@]}" --stop_after=1 --nophase_progress \
  --workdir="$TMP/cheetah"

"$PY" - "$MODE" "$TMP" "$LOGS" "$OUT" "$WALL0" <<'EOF'
"""Gathers the steps' results into one JSON file."""
import datetime, json, os, re, sys, time
mode, tmp, logs, out, wall0 = sys.argv[1:]
import jax
result = dict(meta=dict(
    mode=mode, date=datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'), jax_version=jax.__version__,
    device=str(jax.devices()[0]), device_count=jax.device_count(),
    wall_s=round(time.time() - float(wall0), 1)), steps={})
with open(os.path.join(tmp, 'steps.txt')) as f:
  for line in f:
    name, rc, wall, limit = line.split()
    entry = dict(rc=int(rc), wall_s=round(int(wall) / 1000, 1),
                 limit_s=int(limit), timed_out=rc in ('124', '137'))
    path = os.path.join(tmp, f'{name}.json')
    if os.path.exists(path):
      with open(path) as g:
        entry['result'] = json.load(g)
    with open(os.path.join(logs, f'{name}.log')) as g:
      log = g.read()
    if name == 'task_iteration':
      compiled = re.search(r'compiled in ([0-9.]+)s', log)
      done = re.search(r'task 1/\d+ done in ([0-9.]+)s', log)
      entry['compile_s'] = compiled and float(compiled.group(1))
      entry['run_s'] = done and float(done.group(1))
    if int(rc):
      entry['log_tail'] = log[-2000:]
    result['steps'][name] = entry
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, 'w') as f:
  json.dump(result, f, indent=2)
print(json.dumps({k: {n: {f: v for f, v in e.items() if f != 'result'}
                      for n, e in result['steps'].items()}
                  if k == 'steps' else v for k, v in result.items()},
                 indent=2))
print(f'wrote {out}')
EOF
