#!/usr/bin/env bash
# Pretrains a config on a Cloud TPU VM or pod slice: create (or reuse) it, ship and install
# this checkout on every worker, run the config on all workers, stream their logs.
# One script for a single VM (v5litepod-8) and a pod slice (v5litepod-64): gcloud's
# --worker=all addresses every host of either, and JAX finds its peers on TPU VMs itself.
# Run with --help for the steps and flags; --print shows the commands without running them.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name=""
zone=""
project=""
accelerator=""
runtime=""
config=""
workdir=""
spot=0
delete_after=0
print_only=0
prepare=0
gpt_jax_flags=()

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE \
         --config CONFIG --workdir gs://BUCKET/PATH [options] [-- GPT_JAX_FLAGS...]

Runs `gpt-jax pretrain --config CONFIG --workdir gs://BUCKET/PATH GPT_JAX_FLAGS...` on
every worker of a TPU VM or pod slice. Steps, in order:

  1. create or reuse the TPU:
       gcloud compute tpus tpu-vm describe NAME --zone ZONE
       (only if that fails) gcloud compute tpus tpu-vm create NAME --zone ZONE
         --accelerator-type TYPE --version RUNTIME [--spot]
  2. package this checkout as it is (edits and new files included, git-ignored files not):
       git ls-files --cached --others --exclude-standard | tar -czf TMP/gpt_jax.tar.gz -T -
  3. copy the package to every worker:
       gcloud compute tpus tpu-vm scp TMP/gpt_jax.tar.gz NAME:~/gpt_jax.tar.gz --worker=all
  4. install on every worker (a fresh ~/gpt_jax, a venv ~/gpt_jax_venv, pip install ".[tpu]"):
       gcloud compute tpus tpu-vm ssh NAME --worker=all --command "...tar -xzf...pip install..."
  5. run the config on all workers, streaming their output here (and to ~/gpt_jax_run.log
     on each worker):
       gcloud compute tpus tpu-vm ssh NAME --worker=all --command "gpt-jax pretrain ..."
     with --prepare, the data steps first, on all workers together (each tokenises its
     share of the token store's shards into the data_dir bucket; both steps reuse what
     exists, so a prepared corpus costs a check):
       "gpt-jax tokenizer ... && gpt-jax prepare ... && gpt-jax pretrain ..."
  6. (with --delete) delete the TPU:
       gcloud compute tpus tpu-vm delete NAME --zone ZONE --quiet

Required:
  --name NAME               TPU VM / pod slice name (created if it does not exist)
  --zone ZONE               e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p)
  --accelerator-type TYPE   v4-8, v5litepod-8, v5litepod-64, v5p-8, v6e-8, ...
  --config CONFIG           config file relative to the repository, e.g. configs/gpt1_v5e_8.py
  --workdir gs://BUCKET/PATH  where every worker writes checkpoints, logs and metrics

Options:
  --project PROJECT         gcloud project (default: gcloud's configured project)
  --version RUNTIME         TPU software version (default by generation: tpu-ubuntu2204-base
                            for v4, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p,
                            v2-alpha-tpuv6e for v6e)
  --spot                    create a Spot TPU (cheaper; may be preempted; runs resume)
  --delete                  delete the TPU when the run ends
  --prepare                 train the tokenizer and build the token store first, on all
                            workers (pass --config.data.data_dir=gs://BUCKET/data after --;
                            the data steps get the --config.* flags only)
  --print                   print the commands of every step instead of running them
  -h, --help                this help
  -- GPT_JAX_FLAGS...       passed to gpt-jax, e.g. --config.train.num_steps=1000

Check a config on this machine before paying for a slice (needs libtpu, no TPU):
  gpt-jax pretrain --config configs/gpt1_v5e_8.py --dry_run --topology v5e:2x4
EOF
}

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --name | --zone | --project | --accelerator-type | --version | --config | --workdir)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;
  esac
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator-type) accelerator="$2"; shift 2 ;;
    --version) runtime="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --delete) delete_after=1; shift ;;
    --prepare) prepare=1; shift ;;
    --print) print_only=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; gpt_jax_flags=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ -n "$name" ] || die "--name is required (see --help)"
[ -n "$zone" ] || die "--zone is required (see --help)"
[ -n "$accelerator" ] || die "--accelerator-type is required, e.g. v5litepod-8 (see --help)"
[ -n "$config" ] || die "--config is required, e.g. configs/gpt1_v5e_8.py (see --help)"
[ -f "$repo/$config" ] || die "--config $config is not a file in $repo"
case "$workdir" in
  gs://?*) ;;
  *) die "--workdir must be a gs:// bucket path every worker can reach, got '${workdir}'" ;;
esac
if [ -z "$runtime" ]; then
  case "$accelerator" in
    v4-*) runtime='tpu-ubuntu2204-base' ;;
    v5litepod-* | v5e-*) runtime='v2-alpha-tpuv5-lite' ;;
    v5p-*) runtime='v2-alpha-tpuv5' ;;
    v6e-*) runtime='v2-alpha-tpuv6e' ;;
    *) die "no default --version for accelerator type $accelerator; pass --version" ;;
  esac
fi

tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[ -n "$project" ] && where+=(--project "$project")

# One word as it would be typed into a shell: bare when safe, else single-quoted.
quote() {
  local squote="'"
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//$squote/$squote\\$squote$squote}"
  fi
}

# Prints a command, ready to paste into a shell; runs it too unless --print.
run() {
  local word line="+"
  for word in "$@"; do
    line+=" $(quote "$word")"
  done
  echo "$line"
  [ "$print_only" = 1 ] || "$@"
}

# The same for a pipeline, given as one bash command line.
run_shell() {
  echo "+ $1"
  [ "$print_only" = 1 ] || bash -c "$1"
}

step() {
  echo "[$1/6] $2"
}

step 1 "create or reuse TPU $name ($accelerator, $runtime) in $zone"
create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$accelerator"
        --version "$runtime")
[ "$spot" = 1 ] && create+=(--spot)
if [ "$print_only" = 1 ]; then
  run "${tpu[@]}" describe "$name" "${where[@]}"
  echo "  (only if it does not exist)"
  run "${create[@]}"
elif run "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "  reusing the existing TPU $name"
else
  run "${create[@]}"
fi

step 2 "package this checkout"
package_dir="$(mktemp -d)"
trap 'rm -rf "$package_dir"' EXIT
package="$package_dir/gpt_jax.tar.gz"
# The files as they are now, edits and new files included, minus what git ignores
# (virtualenvs, workdirs).
run_shell "cd $(quote "$repo") && git ls-files -z --cached --others --exclude-standard \
| tar --null --ignore-failed-read -czf $(quote "$package") -T -"

step 3 "copy the package to every worker"
run "${tpu[@]}" scp "$package" "$name:~/gpt_jax.tar.gz" "${where[@]}" --worker=all

step 4 "install gpt_jax[tpu] on every worker"
install='set -e
rm -rf ~/gpt_jax && mkdir -p ~/gpt_jax && tar -xzf ~/gpt_jax.tar.gz -C ~/gpt_jax
if [ ! -x ~/gpt_jax_venv/bin/python ]; then
  python3 -m venv ~/gpt_jax_venv || {
    sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv ~/gpt_jax_venv; }
fi
~/gpt_jax_venv/bin/pip install --quiet --upgrade pip
~/gpt_jax_venv/bin/pip install --quiet -e ~/gpt_jax"[tpu]"'
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$install"

step 5 "run $config on every worker, workdir $workdir"
# One shell word per argument, quoted as a shell reads it back.
command_line() {
  local word line=""
  for word in "$@"; do
    line+=" $(quote "$word")"
  done
  printf '%s' "$line"
}
# shellcheck disable=SC2088  # the tilde is for the worker's shell to expand
gpt_jax='~/gpt_jax_venv/bin/gpt-jax'
config_flags=()
for word in ${gpt_jax_flags[@]+"${gpt_jax_flags[@]}"}; do
  [[ "$word" == --config.* ]] && config_flags+=("$word")
done
steps="$gpt_jax$(command_line pretrain --config "$config" --workdir "$workdir" \
  ${gpt_jax_flags[@]+"${gpt_jax_flags[@]}"})"
if [ "$prepare" = 1 ]; then
  data_flags="$(command_line --config "$config" ${config_flags[@]+"${config_flags[@]}"})"
  steps="$gpt_jax tokenizer$data_flags && $gpt_jax prepare$data_flags && $steps"
fi
# pipefail keeps gpt-jax's exit status through tee.
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "set -o pipefail; cd ~/gpt_jax && { $steps ; } 2>&1 | tee ~/gpt_jax_run.log"

if [ "$delete_after" = 1 ]; then
  step 6 "delete TPU $name"
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
else
  step 6 "keep TPU $name (it bills until deleted: ${tpu[*]} delete $name --zone $zone)"
fi
