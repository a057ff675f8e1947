#!/usr/bin/env bash
# Carry SmolLM2's GGUF file to the GPU machine, one part per upload (docs/gpu.md has the recipe).
#
#   WORK='python3 run.py target=smollm2 hardware=cuda bandit=none' scripts/gpu_carry.sh [GGUF]
#
# Splits GGUF (default: the one scripts/fetch_smollm2.py keeps in the cache) into .gpu/parts/ (git-ignored)
# and prints one device call per part: each appends its part to /tmp/smollm2.gguf on the machine; the last
# also carries .gpu/wheels (the `gguf` wheel transformers reads GGUF with, which the GPU image lacks, plus
# any wheel put there, e.g. hydra-core's), installs them, checks the sha256, converts the file (no registry
# needed there) and runs $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FLASHSPEC_CACHE:-$HOME/.cache/flashspec}
GGUF=${1:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}
PART_SIZE=${PART_SIZE:-20M}
DEST=/tmp/smollm2.gguf
WORK=${WORK:-python3 run.py target=smollm2 hardware=cuda bandit=none}
LIMIT=$((64 * 1024 * 1024))
[ -f "$GGUF" ] || { echo "error: $GGUF does not exist: run python scripts/fetch_smollm2.py first" >&2; exit 1; }

rm -rf .gpu/parts && mkdir -p .gpu/parts .gpu/wheels
ls .gpu/wheels/gguf-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps "gguf>=0.10" -d .gpu/wheels
split -b "$PART_SIZE" -d -a 2 "$GGUF" .gpu/parts/smollm2.gguf.
sha=$(sha256sum "$GGUF" | cut -d' ' -f1)
tracked=$(git ls-files -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
parts=(.gpu/parts/smollm2.gguf.*)
largest=$(du -b "${parts[0]}" | cut -f1)
echo "# ${#parts[@]} parts; upload = tracked files ($((tracked / 1000000)) MB) + one part ($((largest / 1000000)) MB)"
if [ $((tracked + largest)) -gt $LIMIT ]; then
  echo "error: tracked files + one part exceed 64 MiB: lower PART_SIZE (e.g. PART_SIZE=10M)" >&2
  exit 1
fi
echo "# Make the calls back to back: the machine forgets /tmp 30 s after a command ends."
last=$((${#parts[@]} - 1))
for i in "${!parts[@]}"; do
  p=${parts[$i]}
  op=$([ "$i" -eq 0 ] && echo ">" || echo ">>")  # the first part starts the file afresh
  cmd="cat $p $op $DEST && ls -l $DEST"
  if [ "$i" -eq "$last" ]; then
    cmd="cat $p >> $DEST && echo '$sha  $DEST' | sha256sum -c && python3 -m pip install -q --no-deps"
    cmd="$cmd --no-index .gpu/wheels/*.whl && export FLASHSPEC_CACHE=/tmp/flashspec"
    cmd="$cmd && python3 scripts/fetch_smollm2.py --gguf $DEST && $WORK"
    echo "run(carry=[\"$p\", \".gpu/wheels\"], command=\"$cmd\")"
  else
    echo "run(carry=[\"$p\"], command=\"$cmd\")"
  fi
done
