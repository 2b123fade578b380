#!/usr/bin/env bash
# The proof's learned stages on one GPU (experiment=gpu): fleet -> tokenizer -> its eval ->
# tokenize -> world model -> its eval (or the stages named in STAGES), then the scoreboard as
# one JSON line.
#   bash benchmarks/gpu_stages.sh RUN_DIR [EXPERIMENT] [overrides...]
# Each stage is capped (STAGE_TIMEOUT_<stage> seconds, else 600; none past DEADLINE, epoch
# seconds) so a slow one cannot eat the rest; stage metrics, images and the two checkpoints
# are copied to $OUT (when set) as they land.
# TOKENIZE_CPU_RANKS=N encodes on N single-thread CPU ranks (ddp_spawn) instead of the GPU, as
# the first H100 run did when one process decoding the H.264 shards bounded tokenize; tokenize
# now decodes in data.num_workers loader processes (12 in experiment=gpu), not yet timed there.
set -uo pipefail
run_dir=${1:?run dir}; exp=${2:-gpu}; shift 2 || shift $#
out=${OUT:-}
py=${PYTHON:-python3}
# STAGES="bc rl rollout eval_policy export" (space-separated pipeline stage names) picks others
read -r -a stages <<< "${STAGES:-fleet train_tokenizer eval_tokenizer tokenize train_world_model eval_world_model}"
collect() {
  [ -n "$out" ] || return 0
  tar -czf "$out/gpu_run.tgz.part" --exclude='*.tar' --exclude='*.ckpt' --exclude='tokens' --exclude='shards' \
      -C "$(dirname "$run_dir")" "$(basename "$run_dir")" 2>/dev/null && mv "$out/gpu_run.tgz.part" "$out/gpu_run.tgz"
}
for s in "${stages[@]}"; do
  var="STAGE_TIMEOUT_$s"; t=${!var:-600}
  if [ -n "${DEADLINE:-}" ]; then  # epoch seconds by which every stage must have ended
    left=$(( DEADLINE - $(date +%s) )); [ "$left" -lt "$t" ] && t=$left
    [ "$t" -le 5 ] && { echo "=== $s skipped: past DEADLINE"; continue; }
  fi
  echo "=== $s (timeout ${t}s) $(date +%T)"
  extra=(); envs=()
  if [ "$s" = tokenize ] && [ -n "${TOKENIZE_CPU_RANKS:-}" ]; then
    extra=(trainer.accelerator=cpu "trainer.devices=$TOKENIZE_CPU_RANKS" trainer.strategy=ddp_spawn trainer.precision=32-true)
    envs=(OMP_NUM_THREADS=1)
  fi
  env "${envs[@]}" timeout -k 10 "$t" "$py" -m drivegpt pipeline experiment="$exp" run_dir="$run_dir" "stages=[$s]" \
    logger=none "$@" "${extra[@]}" 2>&1 | tail -n 25
  echo "=== $s rc=${PIPESTATUS[0]} $(date +%T)"
  collect
done
"$py" benchmarks/learning.py --run-dir "$run_dir" | tee ${out:+"$out/learning.json"}
collect
