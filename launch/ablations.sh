#!/usr/bin/env bash
# The paper's table 5: four fine-tuning variants per task, then the ablation table.
#   full            the pretrained Transformer, with the auxiliary LM loss
#   no_pretraining  the same shape from random weights (finetune.random_init)
#   no_aux_lm       the pretrained Transformer without the auxiliary LM loss (lm_coef 0)
#   lstm            the pretrained LSTM baseline (model.arch=lstm), with the auxiliary LM loss
# Usage: launch/ablations.sh TRANSFORMER_WORKDIR LSTM_WORKDIR OUT [TASK ...]
#   (default tasks: cola sst2 mrpc stsb qqp mnli qnli rte; prepare their TFDS data first,
#   see docs/finetuning.md). Extra gpt-jax finetune flags go in $FINETUNE_FLAGS.
# Each run lands in OUT/VARIANT/TASK; finished runs (summary.json) are skipped on a rerun.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0"
  exit 2
fi
transformer="$1" lstm="$2" out="$3"
shift 3
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(cola sst2 mrpc stsb qqp mnli qnli rte)
read -r -a extra <<< "${FINETUNE_FLAGS:-}"

run() {  # run VARIANT TASK FLAGS...
  local variant="$1" task="$2" dir="$out/$1/$2"
  shift 2
  if [ ! -f "$dir/summary.json" ]; then
    echo "fine-tuning $task: $variant"
    rm -rf "$dir"
    gpt-jax finetune --config "finetune/$task" --workdir "$dir" "$@" ${extra[@]+"${extra[@]}"}
  fi
  runs+=("$variant=$dir")
}

runs=()
for task in "${tasks[@]}"; do
  run full "$task" --init "$transformer"
  run no_pretraining "$task" --init "$transformer" --config.finetune.random_init=True
  run no_aux_lm "$task" --init "$transformer" --config.finetune.lm_coef=0.0
  run lstm "$task" --init "$lstm" --config.model.arch=lstm
done
gpt-jax analysis ablations --out "$out/analysis" --runs "${runs[@]}"
