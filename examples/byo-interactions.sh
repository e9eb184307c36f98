#!/usr/bin/env bash
# Bring your own interaction log: any CSV/TSV/parquet with user, item and time columns.
#
#   examples/byo-interactions.sh LOG.csv [USER_COL ITEM_COL TIME_COL]
#
# Prepares it as dataset NAME (default: my-interactions), distills it, and compares a SASRec
# student on Farzi Data with one on the full log. Knobs: NAME, BUDGET, OUTER_STEPS, RUNS,
# TRAJ_STEPS, STUDENT_STEPS, MODEL_ARGS.
set -euo pipefail
LOG=${1:?usage: $0 LOG.csv [USER_COL ITEM_COL TIME_COL]}
NAME=${NAME:-my-interactions}
RUNS=${RUNS:-3}
TRAJ_STEPS=${TRAJ_STEPS:-200}
BUDGET=${BUDGET:-50x50}
OUTER_STEPS=${OUTER_STEPS:-200}
STUDENT_STEPS=${STUDENT_STEPS:-500}
MODEL_ARGS=${MODEL_ARGS:---max-len 50}

farzictl prepare interactions --name "$NAME" --path "$LOG" \
    --user-col "${2:-user}" --item-col "${3:-item}" --time-col "${4:-time}" --json
farzictl trajectories "$NAME" --runs "$RUNS" --max-steps "$TRAJ_STEPS" --every $((TRAJ_STEPS / 10 > 0 ? TRAJ_STEPS / 10 : 1)) \
    $MODEL_ARGS --json > /dev/null
bundle=$(farzictl distill "$NAME" --budget "$BUDGET" --outer-steps "$OUTER_STEPS" $MODEL_ARGS --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle"])')
for data in "$bundle" full; do
    model=$(farzictl train-student "$NAME" --data "$data" --max-steps "$STUDENT_STEPS" $MODEL_ARGS --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
    farzictl eval "$model" --json | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sys.argv[1], "HR@10", round(m["hr@10"], 2))' "$(basename "$data")"
done
