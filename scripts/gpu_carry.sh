#!/usr/bin/env bash
# Split SmolLM2's GGUF file for the GPU machine, one part per upload, and print the device calls of a session
# (docs/gpu.md has the recipe; scripts/gpu_session.sh runs the stages on the machine).
#
#   scripts/gpu_carry.sh [GGUF]
#
# Every upload carries the tracked files; the 64 MiB left over holds one part. The first call also carries
# the wheels the GPU image lacks (.whl, .whl-eval: see docs/gpu.md), so its part is smaller; the machine keeps
# them in /tmp/site for the later calls, as long as each call starts within 30 s of the last one's end.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FLASHSPEC_CACHE:-$HOME/.cache/flashspec}
GGUF=${1:-$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf}
LIMIT=$((64 * 1024 * 1024))
MARGIN=${MARGIN:-3000000}  # room for files added before the session (1 MB was too little on 2026-12-02)
[ -f "$GGUF" ] || { echo "error: $GGUF does not exist: run python scripts/fetch_smollm2.py first" >&2; exit 1; }
ls .whl/*.whl >/dev/null 2>&1 || { echo "error: no wheels in .whl/: docs/gpu.md says which to download" >&2; exit 1; }

size() { du -cb "$@" 2>/dev/null | tail -1 | cut -f1 || true; }  # a missing folder counts 0
tracked=$(git ls-files -z | du --files0-from=- -cb | tail -1 | cut -f1)
wheels=$(size .whl .whl-eval)
first=$((LIMIT - tracked - wheels - MARGIN))
rest=$((LIMIT - tracked - MARGIN))
total=$(stat -c %s "$GGUF")
[ "$first" -gt 0 ] || { echo "error: the tracked files and wheels leave no room for a part" >&2; exit 1; }
n=$(( (total - first + rest - 1) / rest ))  # parts after the first

rm -rf .gpu/parts && mkdir -p .gpu/parts
head -c "$first" "$GGUF" > .gpu/parts/p.00
tail -c +$((first + 1)) "$GGUF" > .gpu/parts/rest
split -n "$n" -d -a 2 --numeric-suffixes=1 .gpu/parts/rest .gpu/parts/p.
rm .gpu/parts/rest
echo "# $((n + 1)) parts; tracked files $((tracked / 1000000)) MB, wheels $((wheels / 1000000)) MB, first part" \
  "$((first / 1000000)) MB, the others $(( (total - first) / n / 1000000 )) MB"
echo "# Make the calls back to back (the machine forgets /tmp 30 s after a command ends); COMMIT=the commit tested."
echo "run(carry=[\".whl\", \".gpu/parts/p.00\"], command=\"COMMIT=\$C scripts/gpu_session.sh part 00 wheels\")"
for i in $(seq -f %02g 1 $((n - 1))); do
  echo "run(carry=[\".gpu/parts/p.$i\"], command=\"scripts/gpu_session.sh part $i\")"
done
pieces=(.gpu/drafters/drafters.tgz.*)  # drafters a session trained (gpu_session.sh weights): carried, not retrained
if [ -e "${pieces[0]}" ]; then
  for i in "${!pieces[@]}"; do
    tail=""; [ "$i" -eq $((${#pieces[@]} - 1)) ] && tail=" last"
    echo "run(carry=[\"${pieces[$i]}\"], command=\"scripts/gpu_session.sh drafters ${pieces[$i]##*.}$tail\")"
  done
  echo "# then skip the train call below: the carried drafters are used"
fi
last=$(printf %02d "$n")
echo "run(carry=[\".gpu/parts/p.$last\"], command=\"COMMIT=\$C scripts/gpu_session.sh part $last model tests\")"
echo "run(command=\"COMMIT=\$C TRAIN_S=30 scripts/gpu_session.sh smollm2 train weights\")  # unless carried back"
echo "run(command=\"COMMIT=\$C scripts/gpu_session.sh smollm2 replay\")"
echo "run(command=\"COMMIT=\$C TRAIN_S=0 scripts/gpu_session.sh smollm2 main\")"
echo "run(command=\"COMMIT=\$C TRAIN_S=0 scripts/gpu_session.sh smollm2 bandit\")"
echo "run(command=\"COMMIT=\$C TRAIN_S=0 scripts/gpu_session.sh smollm2 rest\")"
