#!/usr/bin/env bash
# Run a ttc_jax launch script on every host of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh --name=ttc-v4 --zone=us-central2-b --type=v4-16 \
#       --script=launch/search.py --args="--config=experiments/search.py --out=results/beam.jsonl" \
#       --results=results [--create] [--delete] [--dry-run]
#
# Steps: (1) create the TPU VM (with --create, or when it does not exist yet), (2) copy
# this checkout to every worker, (3) install it (pip install -e .), (4) run the script on
# all workers at once (--worker=all; every process calls ttc_jax.parallel.initialize(),
# which detects the slice, and only process 0 writes), (5) copy --results back from
# worker 0, (6) delete the VM with --delete. --dry-run prints every command (each line
# starts with "+ ") and runs none.
set -euo pipefail

NAME=""
ZONE="us-central2-b"
TYPE="v4-8"
VERSION="tpu-ubuntu2204-base"
PROJECT=""
SCRIPT="launch/search.py"
ARGS=""
RESULTS="results"
REMOTE_DIR="ttc_jax"
CREATE="auto"
DELETE=0
DRY=0
SPOT=0

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF
options:
  --name=NAME          TPU VM name (required)
  --zone=ZONE          default $ZONE
  --type=TYPE          accelerator type, default $TYPE (v4-16 and up: several hosts)
  --version=VERSION    TPU software version, default $VERSION
  --project=PROJECT    gcloud project (default: gcloud's configured one)
  --script=PATH        launch script to run on all workers, default $SCRIPT
  --args="..."         arguments for the script
  --results=DIR        folder to bring back from worker 0, default $RESULTS
  --create             always create the VM; --no-create: it must exist
  --spot               create a spot VM
  --delete             delete the VM at the end
  --dry-run            print the commands, run nothing
EOF
}

for arg in "$@"; do
  case "$arg" in
    --name=*) NAME="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --type=*) TYPE="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --script=*) SCRIPT="${arg#*=}" ;;
    --args=*) ARGS="${arg#*=}" ;;
    --results=*) RESULTS="${arg#*=}" ;;
    --create) CREATE=1 ;;
    --no-create) CREATE=0 ;;
    --spot) SPOT=1 ;;
    --delete) DELETE=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option ${arg%%=*}; see $0 --help" >&2; exit 2 ;;
  esac
done

if [[ -z "$NAME" ]]; then
  echo "--name=NAME is required (the TPU VM to create or use); see $0 --help" >&2
  exit 2
fi
if [[ ! -f "$SCRIPT" && $DRY -eq 0 ]]; then
  echo "--script=$SCRIPT does not exist; run from the repository root" >&2
  exit 2
fi

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project="$PROJECT")

run() {  # print the command; run it unless --dry-run
  echo "+ $*"
  if [[ $DRY -eq 0 ]]; then "$@"; fi
}

exists() {
  [[ $DRY -eq 0 ]] && "${GCLOUD[@]}" describe "$NAME" "${COMMON[@]}" >/dev/null 2>&1
}

# 1. create (or reuse)
if [[ "$CREATE" == 1 ]] || { [[ "$CREATE" == auto ]] && ! exists; }; then
  extra=()
  [[ $SPOT -eq 1 ]] && extra+=(--spot)
  run "${GCLOUD[@]}" create "$NAME" "${COMMON[@]}" --accelerator-type="$TYPE" \
    --version="$VERSION" ${extra[@]+"${extra[@]}"}
fi

# 2. copy the code (a tarball of the checkout, without virtualenvs, results, workdirs)
TARBALL="/tmp/${NAME}-ttc_jax.tar.gz"
run tar czf "$TARBALL" --exclude=.venv --exclude=.git --exclude=workdirs \
  --exclude="$RESULTS" --exclude=__pycache__ .
run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:~/ttc_jax.tar.gz" "${COMMON[@]}" --worker=all
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all \
  --command="mkdir -p ~/$REMOTE_DIR && tar xzf ~/ttc_jax.tar.gz -C ~/$REMOTE_DIR"

# 3. install (jax[tpu] brings libtpu; the repo pins jax itself)
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all \
  --command="cd ~/$REMOTE_DIR && python3 -m pip install -q -e . 'jax[tpu]==0.10.2'"

# 4. run on every host at once; process 0 writes
run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all \
  --command="cd ~/$REMOTE_DIR && python3 $SCRIPT $ARGS"

# 5. bring the results back from worker 0 (the writer)
if [[ $DRY -eq 0 ]]; then mkdir -p "$RESULTS/$NAME"; fi
run "${GCLOUD[@]}" scp --recurse "$NAME:~/$REMOTE_DIR/$RESULTS" "./$RESULTS/$NAME" \
  "${COMMON[@]}" --worker=0

# 6. delete
if [[ $DELETE -eq 1 ]]; then
  run "${GCLOUD[@]}" delete "$NAME" "${COMMON[@]}" --quiet
fi
