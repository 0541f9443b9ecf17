#!/usr/bin/env bash
# README command one: the smoke run on this machine's CPU, offline (under 10 minutes on 2 cores).
# Creates the virtualenv, then on the offline default corpus (the docstrings of Python's
# standard library):
#   1. trains a 2,048-piece BPE tokenizer,  2. tokenises the corpus into a token store,
#   3. pretrains configs/tiny.py and reports held-out loss against the unigram entropy, probing
#      it zero-shot on two default tasks at log-spaced steps (the paper's figure 2, right),
#   4. fine-tunes it on a default task (which standard-library package a docstring comes from),
#   5. fine-tunes the same model shape from random weights (the paper's no-pretraining ablation)
#      and without the auxiliary LM loss (the no-aux-LM ablation),
#   6. prints the three-row ablation table (the paper's table 5) and draws figure 2 (right),
#   7. samples a continuation of a prompt.
# Rerunning reuses the tokenizer and token store and resumes / skips finished runs.
# Usage: launch/local_cpu.sh [WORKDIR]   (default: workdirs/local_cpu)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/setup_venv.sh
source "$repo/launch/setup_venv.sh" ""  # no extras (not this script's WORKDIR argument)
cd "$repo"
workdir="${1:-$repo/workdirs/local_cpu}"
mkdir -p "$workdir"

# The corpus (a TFDS dataset), tokenizer and token store live in $workdir/data. A fifth of
# the modules is held out, so the fine-tuning task's validation and test modules (see
# gpt_jax/tasks/stdlib.py) are never seen in pretraining.
data=(--config.data.data_dir="$workdir/data" --config.data.validation_fraction=0.2)
task=stdlib_package
# Deviation from the paper's fine-tuning recipe (lr 6.25e-5, 3 epochs), as for pretraining
# in configs/tiny.py: a 2-layer model needs a larger step to move in a 2-minute run.
finetune=(--config "configs/finetune/$task.py" --config.optim.learning_rate=5e-4
          --config.train.num_epochs=4.0 --config.task.max_len=128 --config.train.log_every=10)

echo "[1/7] training the tokenizer of configs/tiny.py on its corpus"
gpt-jax tokenizer --config configs/tiny.py "${data[@]}"
echo "[2/7] tokenising the corpus into a token store"
gpt-jax prepare --config configs/tiny.py "${data[@]}"
echo "[3/7] pretraining configs/tiny.py in $workdir/pretrain, with zero-shot probes"
gpt-jax pretrain --config configs/tiny.py --workdir "$workdir/pretrain" "${data[@]}" \
  --config.train.zero_shot=finetune/stdlib_next_sentence,finetune/stdlib_package
if [ ! -f "$workdir/finetune/summary.json" ]; then
  echo "[4/7] fine-tuning the pretrained model on $task"
  rm -rf "$workdir/finetune"
  gpt-jax finetune "${finetune[@]}" --workdir "$workdir/finetune" --init "$workdir/pretrain"
fi
if [ ! -f "$workdir/finetune_random_init/summary.json" ]; then
  echo "[5/7] ablation 1 of 2: the same fine-tuning from random weights (no pretraining)"
  rm -rf "$workdir/finetune_random_init"
  gpt-jax finetune "${finetune[@]}" --workdir "$workdir/finetune_random_init" \
    --init "$workdir/pretrain" --config.finetune.random_init=True
fi
if [ ! -f "$workdir/finetune_no_aux_lm/summary.json" ]; then
  echo "[5/7] ablation 2 of 2: the same fine-tuning without the auxiliary LM loss (lm_coef 0)"
  rm -rf "$workdir/finetune_no_aux_lm"
  gpt-jax finetune "${finetune[@]}" --workdir "$workdir/finetune_no_aux_lm" \
    --init "$workdir/pretrain" --config.finetune.lm_coef=0.0
fi
echo "[6/7] $task: the ablation table (validation accuracy x 100) and the zero-shot curves"
python -c "import json, sys; print('  majority-class baseline %.1f' % (100 * json.load(\
open(sys.argv[1]))['majority_baseline']['validation']))" "$workdir/finetune/summary.json"
gpt-jax analysis ablations --out "$workdir/analysis" --runs "full=$workdir/finetune" \
  "no_pretraining=$workdir/finetune_random_init" "no_aux_lm=$workdir/finetune_no_aux_lm"
gpt-jax analysis zero-shot --out "$workdir/analysis" --workdirs "$workdir/pretrain"
echo "[7/7] sampling from the pretrained model"
gpt-jax sample --workdir "$workdir/pretrain" --prompt "Return the number of" \
  --max_new_tokens 40 --temperature 0.8 --top_k 40
