#!/usr/bin/env bash
# Bring your own text corpus: one sequence per line, whitespace tokens.
#
#   examples/byo-text.sh TRAIN.txt [VALID.txt TEST.txt]
#
# Without VALID/TEST, 10 % of TRAIN is held out for each. Distills the corpus and compares a
# Transformer LM trained on Farzi Data with one trained on the full corpus. Knobs: NAME,
# VOCAB_SIZE, BUDGET, OUTER_STEPS, RUNS, TRAJ_STEPS, STUDENT_STEPS, MODEL_ARGS.
set -euo pipefail
TRAIN=${1:?usage: $0 TRAIN.txt [VALID.txt TEST.txt]}
NAME=${NAME:-my-corpus}
VOCAB_SIZE=${VOCAB_SIZE:-2000}
RUNS=${RUNS:-3}
TRAJ_STEPS=${TRAJ_STEPS:-300}
BUDGET=${BUDGET:-100x30}
OUTER_STEPS=${OUTER_STEPS:-200}
STUDENT_STEPS=${STUDENT_STEPS:-800}
MODEL_ARGS=${MODEL_ARGS:---max-len 64}

farzictl prepare text --name "$NAME" --train "$TRAIN" ${2:+--valid "$2"} ${3:+--test "$3"} --vocab-size "$VOCAB_SIZE" --json
farzictl trajectories "$NAME" --runs "$RUNS" --max-steps "$TRAJ_STEPS" --every $((TRAJ_STEPS / 10 > 0 ? TRAJ_STEPS / 10 : 1)) \
    $MODEL_ARGS --json > /dev/null
bundle=$(farzictl distill "$NAME" --budget "$BUDGET" --outer-steps "$OUTER_STEPS" $MODEL_ARGS --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle"])')
for data in "$bundle" full; do
    model=$(farzictl train-student "$NAME" --data "$data" --max-steps "$STUDENT_STEPS" $MODEL_ARGS --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
    farzictl eval "$model" --json | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sys.argv[1], "ppl_corpus", round(m["ppl_corpus"], 2))' "$(basename "$data")"
done
