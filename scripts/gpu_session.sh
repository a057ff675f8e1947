#!/usr/bin/env bash
# One lent-GPU session, stage by stage (docs/gpu.md has the recipe). Each device call runs, from the repository's
# root on the GPU machine, `scripts/gpu_session.sh STAGE [STAGE ...]`; what must come back goes to $OUT.
#
#   part NN      append .gpu/parts/p.NN to /tmp/s.gguf (part 00 starts the file afresh)
#   wheels       install the carried wheels (.whl, and .whl-eval where carried) into /tmp/site
#   model        check the GGUF's sha256 and convert it into $FLASHSPEC_CACHE (/tmp/flashspec)
#   tests        `make test-gpu`, its log as $OUT/pytest.txt
#   bench T      scripts/bench_gpu.py, every step ending within T seconds of this call's start; $OUT/gpu.tgz
#   train S      the SmolLM2 drafters, S seconds of training each, into results/models/smollm2; their tau
#                record, configs and log as $OUT/train.tgz, everything with the weights as $OUT/drafters.tgz.NN
#                (15 MB pieces: at most 8 files of 16 MiB come back from a call)
#   study ...    python run.py -m experiment=smollm2_main hardware=cuda ...; $OUT/smollm2_main.tgz
#   bandit ...   python run.py -m experiment=bandit_study_gpu hardware=cuda ..., then its report;
#                $OUT/bandit_study_gpu.tgz
#
# COMMIT (the commit measured) must be set for tests and bench. Stages after `study` or `bandit` take the
# rest of the command line as Hydra overrides, so put them last.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?run this on the device machine, where OUT is set}
GGUF=/tmp/s.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
export FLASHSPEC_CACHE=/tmp/flashspec PYTHONUNBUFFERED=1
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
MODEL=$FLASHSPEC_CACHE/smollm2-135m-instruct

log() { echo "[gpu_session $(date -u +%H:%M:%S) +${SECONDS}s] $*"; }

pack() {  # pack NAME DIR: DIR's files but model weights, as $OUT/NAME.tgz
  tar czf "$OUT/$1.tgz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' -C "$(dirname "$2")" \
    "$(basename "$2")"
  log "packed $2 as $OUT/$1.tgz ($(du -h "$OUT/$1.tgz" | cut -f1))"
}

while [ $# -gt 0 ]; do
  stage=$1
  shift
  case $stage in
    part)
      op=">>"; [ "$1" = 00 ] && op=">"
      eval "cat .gpu/parts/p.$1 $op $GGUF"
      log "$GGUF: $(stat -c %s $GGUF) bytes"
      shift ;;
    wheels)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        $(ls .whl-eval/*.whl 2>/dev/null) && export PYTHONPATH=/tmp/site
      log "wheels installed" ;;
    model)
      echo "$GGUF_SHA  $GGUF" | sha256sum -c
      python3 scripts/fetch_smollm2.py --gguf $GGUF
      log "model converted" ;;
    tests)
      make test-gpu PYTHON="timeout -s INT 420 python3" COMMIT="${COMMIT:?}" GPU_LOG="$OUT/pytest.txt" \
        > "$OUT/make_test_gpu.txt" 2>&1 || log "make test-gpu exited $?"
      tail -3 "$OUT/pytest.txt" || true ;;
    bench)
      python3 scripts/bench_gpu.py --out "$OUT/gpu" --commit "${COMMIT:?}" --smollm2 "$MODEL" \
        --deadline-s $(($1 - SECONDS)) || log "bench exited $?"
      tar czf "$OUT/gpu.tgz" -C "$OUT" gpu && rm -r "$OUT/gpu"
      shift ;;
    train)
      python3 scripts/train_drafters.py --target "$MODEL" --drafters draft,medusa,eagle,streaming --preset h100 \
        --time-budget-s "$1" --out results/models/smollm2 > /tmp/train_log.txt 2>&1 || log "training exited $?"
      tail -15 /tmp/train_log.txt
      cp /tmp/train_log.txt results/models/smollm2/
      pack train results/models/smollm2  # tau.json, tau.md, the log, the drafters' configs
      tar czf - -C results/models smollm2 | split -b 15000000 -d - "$OUT/drafters.tgz."  # weights too
      shift ;;
    study)
      python3 run.py -m experiment=smollm2_main hardware=cuda progress=false "$@" > "$OUT/study_log.txt" 2>&1 \
        || log "study exited $?"
      tail -20 "$OUT/study_log.txt"
      pack smollm2_main outputs/experiments/smollm2_main
      break ;;
    bandit)
      python3 run.py -m experiment=bandit_study_gpu hardware=cuda progress=false "$@" > "$OUT/bandit_log.txt" 2>&1 \
        || log "bandit exited $?"
      tail -20 "$OUT/bandit_log.txt"
      python3 scripts/bandit_report.py outputs/experiments/bandit_study_gpu || log "bandit report exited $?"
      pack bandit_study_gpu outputs/experiments/bandit_study_gpu
      break ;;
    *) echo "gpu_session.sh: unknown stage '$stage' (part, wheels, model, tests, bench, train, study, bandit)" >&2
       exit 2 ;;
  esac
done
log "done"
