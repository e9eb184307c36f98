#!/usr/bin/env bash
# Penn Treebank end to end: prepare, train trajectories, distill ~1 % into Farzi Data,
# train Transformer students on it and on samples, and compare their test perplexity.
#
#   examples/ptb.sh                       # downloads PTB (checksums verified)
#   PTB_SOURCE=DIR examples/ptb.sh        # DIR has ptb.train.txt, ptb.valid.txt, ptb.test.txt
#   DATASET=ptb-offline PTB_SOURCE=../shared/datasets/ptb examples/ptb.sh   # the offline protocol
#
# Scale knobs (defaults: a CPU-friendly run of tens of minutes): RUNS, TRAJ_STEPS, BUDGET,
# OUTER_STEPS, INNER_STEPS, STUDENT_STEPS, MODEL_ARGS; FARZI_HOME for the workspace.
set -euo pipefail
DATASET=${DATASET:-ptb}
RUNS=${RUNS:-3}
TRAJ_STEPS=${TRAJ_STEPS:-480}
BUDGET=${BUDGET:-400x50}
OUTER_STEPS=${OUTER_STEPS:-150}
INNER_STEPS=${INNER_STEPS:-10}
STUDENT_STEPS=${STUDENT_STEPS:-1000}
MODEL_ARGS=${MODEL_ARGS:---max-len 64 --d-model 64 --n-layers 2}
SEED=${SEED:-0}
N=${BUDGET%x*}

farzictl prepare "$DATASET" ${PTB_SOURCE:+--source "$PTB_SOURCE"} --json > /dev/null
farzictl trajectories "$DATASET" --model transformer --runs "$RUNS" --every $((TRAJ_STEPS / 6 > 0 ? TRAJ_STEPS / 6 : 1)) \
    --max-steps "$TRAJ_STEPS" $MODEL_ARGS --seed "$SEED" --json > /dev/null
bundle=$(farzictl distill "$DATASET" --budget "$BUDGET" --model transformer --outer-steps "$OUTER_STEPS" \
    --inner-steps "$INNER_STEPS" --syn-batch 16 $MODEL_ARGS --seed "$SEED" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle"])')
farzictl inspect "$bundle" --json > /dev/null

printf '%-12s %12s %12s\n' data ppl_corpus ppl_sentence
for data in "$bundle" "random:$N" "head:$N" full; do
    model=$(farzictl train-student "$DATASET" --model transformer --data "$data" --max-steps "$STUDENT_STEPS" \
        $MODEL_ARGS --seed "$SEED" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
    farzictl eval "$model" --split test --json |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print("%-12s %12.2f %12.2f" % (sys.argv[1][:12], m["ppl_corpus"], m["ppl_sentence"]))' "$(basename "$data")"
done
