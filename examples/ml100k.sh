#!/usr/bin/env bash
# MovieLens-100k end to end: prepare, train SASRec trajectories, distill 50 sequences of
# length 50, train SASRec students on Farzi Data and on samples, and compare HR@10 / HR@100.
#
#   examples/ml100k.sh                     # downloads ML-100k from GroupLens
#   ML100K_SOURCE=DIR examples/ml100k.sh   # DIR has u.data (and u.item for titles)
#
# Scale knobs: RUNS, TRAJ_STEPS, BUDGET, OUTER_STEPS, INNER_STEPS, STUDENT_STEPS, MODEL_ARGS.
set -euo pipefail
RUNS=${RUNS:-3}
TRAJ_STEPS=${TRAJ_STEPS:-240}
BUDGET=${BUDGET:-50x50}
OUTER_STEPS=${OUTER_STEPS:-300}
INNER_STEPS=${INNER_STEPS:-10}
STUDENT_STEPS=${STUDENT_STEPS:-600}
MODEL_ARGS=${MODEL_ARGS:---max-len 50 --d-model 64 --n-layers 2}
SEED=${SEED:-0}
N=${BUDGET%x*}

farzictl prepare ml-100k ${ML100K_SOURCE:+--source "$ML100K_SOURCE"} --json > /dev/null
farzictl trajectories ml-100k --model sasrec --runs "$RUNS" --every $((TRAJ_STEPS / 12 > 0 ? TRAJ_STEPS / 12 : 1)) \
    --max-steps "$TRAJ_STEPS" --lr 2e-3 $MODEL_ARGS --seed "$SEED" --json > /dev/null
bundle=$(farzictl distill ml-100k --budget "$BUDGET" --model sasrec --outer-steps "$OUTER_STEPS" \
    --inner-steps "$INNER_STEPS" --syn-batch 16 $MODEL_ARGS --seed "$SEED" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle"])')
farzictl inspect "$bundle" --dataset ml-100k --sequences 1 --positions 5

printf '%-24s %8s %8s\n' data hr@10 hr@100
for data in "$bundle" "random:$N" "head:$N" full; do
    model=$(farzictl train-student ml-100k --model sasrec --data "$data" --max-steps "$STUDENT_STEPS" --lr 2e-3 \
        --eval-every 10 --patience 15 $MODEL_ARGS --seed "$SEED" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
    farzictl eval "$model" --split test --json |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print("%-24s %8.2f %8.2f" % (sys.argv[1][:24], m["hr@10"], m["hr@100"]))' "$(basename "$data")"
done
