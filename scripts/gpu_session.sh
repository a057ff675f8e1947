#!/usr/bin/env bash
# One lent-GPU session, stage by stage (docs/gpu.md has the recipe). Each device call runs, from the repository's
# root on the GPU machine, `scripts/gpu_session.sh STAGE [STAGE ...]`; what must come back goes to $OUT.
#
#   part NN      append .gpu/parts/p.NN to /tmp/s.gguf (part 00 starts the file afresh)
#   wheels       install the carried wheels (.whl, and .whl-eval where carried) into /tmp/site
#   model        check the GGUF's sha256 and convert it into $FLASHSPEC_CACHE (/tmp/flashspec)
#   tests        `make test-gpu`, its log as $OUT/pytest.txt
#   bench T S    scripts/bench_gpu.py --sections S (e.g. a,d), every step ending within T seconds of this
#                call's start, with the real SmolLM2 once converted; $OUT/gpu.tgz
#   smollm2 P    scripts/gpu_smollm2.sh P (train, main, bandit, replay, policies, rest: the SmolLM2 study in parts), its log in $OUT
#   drafters NN [last]  append the carried piece .gpu/drafters/drafters.tgz.NN (what `weights` sent back);
#                after the last, unpack them where gpu_smollm2.sh's stages read them (outputs/smollm2_models)
#   weights      the drafters gpu_smollm2.sh trained, as $OUT/drafters.tgz.NN (15 MB pieces: at most 8 files
#                of 16 MiB come back from a call), to carry back in a later session
#
# COMMIT (the commit measured) must be set for tests and bench, and should be for smollm2 (run.json records it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?run this on the device machine, where OUT is set}
GGUF=/tmp/s.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
export FLASHSPEC_CACHE=/tmp/flashspec PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD  # the wheels (stage wheels), and flashspec for the scripts
export FLASHSPEC_COMMIT=${COMMIT:-}  # run.json's git_commit: this copy's .git may be stale
MODEL=$FLASHSPEC_CACHE/smollm2-135m-instruct

log() { echo "[gpu_session $(date -u +%H:%M:%S) +${SECONDS}s] $*"; }

append() {  # append PIECE FILE NN: piece 00 starts FILE afresh, the others add to it
  if [ "$3" = 00 ]; then cat "$1" > "$2"; else cat "$1" >> "$2"; fi
}

while [ $# -gt 0 ]; do
  stage=$1
  shift
  case $stage in
    part)
      append ".gpu/parts/p.$1" "$GGUF" "$1"
      log "$GGUF: $(stat -c %s $GGUF) bytes"
      shift ;;
    wheels)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        $(ls .whl-eval/*.whl 2>/dev/null)
      log "wheels installed" ;;
    model)
      echo "$GGUF_SHA  $GGUF" | sha256sum -c
      python3 scripts/fetch_smollm2.py --gguf $GGUF
      log "model converted" ;;
    tests)
      make test-gpu PYTHON="timeout -s INT 480 python3" COMMIT="${COMMIT:?}" GPU_LOG="$OUT/pytest.txt" \
        > "$OUT/make_test_gpu.txt" 2>&1 || log "make test-gpu exited $?"
      tail -3 "$OUT/pytest.txt" || true ;;
    bench)  # bench T SECTIONS
      smollm2=(); [ -f "$MODEL/config.json" ] && smollm2=(--smollm2 "$MODEL")
      python3 scripts/bench_gpu.py --out "$OUT/gpu" --commit "${COMMIT:?}" "${smollm2[@]}" --sections "$2" \
        --deadline-s $(($1 - SECONDS)) || log "bench exited $?"
      tar czf "$OUT/gpu.tgz" -C "$OUT" gpu && rm -r "$OUT/gpu"
      shift 2 ;;
    smollm2)
      OUT=$OUT bash scripts/gpu_smollm2.sh "$1" 2>&1 | tee "$OUT/smollm2_$1_log.txt" | tail -25
      shift ;;
    drafters)  # drafters NN [last]: append .gpu/drafters/drafters.tgz.NN; with `last`, unpack them into outputs/
      append ".gpu/drafters/drafters.tgz.$1" /tmp/drafters.tgz "$1"
      shift
      if [ "${1:-}" = last ]; then
        mkdir -p outputs && tar xzf /tmp/drafters.tgz -C outputs && log "drafters: $(ls outputs/smollm2_models)"
        shift
      fi ;;
    weights)  # the drafters gpu_smollm2.sh trained, for a later session to carry back (docs/gpu.md)
      tar czf - -C outputs smollm2_models | split -b 15000000 -d - "$OUT/drafters.tgz."
      log "weights: $(du -ch "$OUT"/drafters.tgz.* | tail -1 | cut -f1)" ;;
    *) echo "gpu_session.sh: unknown stage '$stage' (part, wheels, model, tests, bench, smollm2, drafters, weights)" >&2
       exit 2 ;;
  esac
done
log "done"
