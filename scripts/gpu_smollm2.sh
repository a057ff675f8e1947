#!/usr/bin/env bash
# The SmolLM2-135M-Instruct GPU session (issues 12 and 16) at reduced size, in three calls of at most 8.5 minutes
# (all three fit the session's 30 minutes with the machine's start), each packing what it measured into one tar
# under $OUT (scripts/pack_results.py); tables and figures are made afterwards from the unpacked tars, off the GPU
# (scripts/smollm2_report.py, scripts/bandit_report.py):
#   bash scripts/gpu_smollm2.sh main     # train the drafters (h100 preset, 20 s each), then smollm2_main's AR
#                                        # and each arm fixed at gamma 4; 4 prompts (shuffled, seed 0) per dataset
#   bash scripts/gpu_smollm2.sh train    # the drafters alone (what bandit and rest need when main did not run)
#   bash scripts/gpu_smollm2.sh bandit   # bandit_study_gpu: 4 policies x 2 scopes x seeds 0,1, then AR and
#                                        # each arm fixed, on the first 32 prompts of the mix (16 tune, 16 held out)
#   bash scripts/gpu_smollm2.sh replay   # bandit_study_gpu's replay (scripts/bandit_replay.py collect): every arm's
#                                        # draft and verdict at every step of the first 32 prompts, and the cost
#                                        # model, timed on the GPU; the policies are then played off the GPU
#                                        # (simulate, then scripts/bandit_report.py), free of the wall clock's noise
#   bash scripts/gpu_smollm2.sh policies # smollm2_main's UCB1, Thompson and Hedge over all arms (rest's first half)
#   bash scripts/gpu_smollm2.sh rest     # smollm2_main's UCB1, Thompson and Hedge over all arms at gamma [2,4,8],
#                                        # and transformers' baselines (static cache, assisted, prompt lookup)
# Every stage runs under `timeout`: a slow one loses its last runs (complete runs are kept, and relaunching
# resumes), never the call. Each sweep is one process per part, not experiment=smollm2_main's whole product:
# Hydra composes every job of a product twice (about 0.5 s each on two CPU cores), and the full product has
# 1920 jobs of which 152 measure something.
# Budget (an estimate, not yet timed on the GPU): the engine decodes SmolLM2 at ~810 tok/s autoregressively on
# the H200 (results/gpu/summary.md), so 256 tokens take ~0.3 s; a run adds ~3 s of start (model load, arms,
# CUDA-graph capture: the compiled layer is reused by every later model of the same shape in the process,
# checked on the CPU) and 3 warm-up prompts (~2 s); each process adds ~40 s (imports, first compile, the AR
# baseline of each prompt, timed once per process). main: training <= 200 s, then 28 runs of ~6.5 s; bandit: 16 +
# 7 runs of ~13 s (32 prompts each); rest: 12 runs of ~8 s, then transformers' 12 (eager generate at an assumed
# ~100 tok/s: ~2.5 s per answer, 8 answers per run with the warm-up).
# Sizes and time boxes come from the environment (defaults: the GPU session); a CPU dry run, e.g.:
#   HARDWARE=cpu LIMIT=1 MIX_LIMIT=3 NEW=8 SCALE=10 TRAIN="--preset tiny --prompts chat --time-budget-s 3" \
#       OUT=/tmp/out bash scripts/gpu_smollm2.sh main
set -uo pipefail
set -f  # no filename expansion: unquoted overrides such as gamma=[2,4,8] reach Hydra as written
cd "$(dirname "$0")/.."
STAGE=${1:-}
HARDWARE=${HARDWARE:-cuda}
LIMIT=${LIMIT:-4}            # prompts per smollm2_main dataset
MIX_LIMIT=${MIX_LIMIT:-32}   # prompts of the bandit mix (a multiple of 16: as many tune as held-out)
NEW=${NEW:-256}              # new tokens per answer
SCALE=${SCALE:-1}            # multiplies every time box
OUT=${OUT:?set OUT to the folder the tar goes to}
MODELS=${MODELS:-outputs/smollm2_models}  # git-ignored: the device machine keeps it between calls
PYTHON=${PYTHON:-python3}    # the GPU image has python3
EXTRA=${EXTRA:-}             # more overrides for every sweep (a dry run: dataset=alpaca)
TRAIN_S=${TRAIN_S:-20}       # training seconds per drafter (data and evaluation take ~120 s more; 0: train none)
TRAIN=${TRAIN:---preset h100 --time-budget-s $TRAIN_S --tau-prompts 4}
TRAINED=${TRAINED:-draft,medusa,eagle,streaming}  # which drafters `train` trains (e.g. eagle alone, for longer)
MAIN_BOX=${MAIN_BOX:-300}    # seconds for smollm2_main's AR and fixed-arm runs
MAIN_SWEEP=${MAIN_SWEEP:-bandit=none,fixed}  # which of them (e.g. "bandit=none,fixed bandit.arm=2,3": the trees)
MAIN_GAMMA=${MAIN_GAMMA:-4}  # their gamma (a sweep: 2,8)
POLICY_BOX=${POLICY_BOX:-130}  # seconds for smollm2_main's learning policies (stages policies and rest)
POLICY_GAMMA=${POLICY_GAMMA:-gamma=[2,4,8]}  # their gamma: a list lets the policy pick it per step
TARGET=${FLASHSPEC_CACHE:-$HOME/.cache/flashspec}/smollm2-135m-instruct
MAIN=outputs/experiments/smollm2_main
MIX=outputs/experiments/bandit_study_gpu
REPLAY=outputs/experiments/bandit_replay_gpu
DRAFTERS="draft_model=$MODELS/flashspec-draft medusa_model=$MODELS/flashspec-medusa \
eagle_model=$MODELS/flashspec-eagle streaming_model=$MODELS/flashspec-streaming"
COMMON="hardware=$HARDWARE max_new_tokens=$NEW progress=false target.model=$TARGET $DRAFTERS $EXTRA"
SMOL="experiment=smollm2_main $COMMON dataset.limit=$LIMIT dataset.seed=0 hydra.sweep.dir=$MAIN"
BANDIT="experiment=bandit_study_gpu $COMMON dataset.limit=$MIX_LIMIT hydra.sweep.dir=$MIX bandit.costs=$MIX/costs.json"

box() {  # box SECONDS COMMAND...: interrupt (as Ctrl-C does) after SECONDS x SCALE, kill 30 s later
  local seconds=$(($1 * SCALE))
  shift
  echo "== $(date +%T) up to ${seconds} s: $*"
  timeout -s INT -k 30 "$seconds" "$@" || echo "== stage ended with status $? (124: its time box)"
}

pack() {  # pack NAME FOLDER...: the tar of what this call measured
  $PYTHON scripts/pack_results.py "$OUT/$1.tar.xz" "${@:2}"
}

train() {  # the drafters, unless TRAIN_S=0 (then those already in $MODELS)
  if [ "$TRAIN_S" -gt 0 ]; then
    local count=$(($(tr -cd , <<< "$TRAINED" | wc -c) + 1))
    box $((count * TRAIN_S + 120)) $PYTHON scripts/train_drafters.py --target "$TARGET" \
      --drafters "$TRAINED" $TRAIN --out "$MODELS"
  else
    echo "== TRAIN_S=0: the drafters already in $MODELS (carried back: scripts/gpu_session.sh drafters)"
  fi
}

policies() {  # smollm2_main's learning policies over all arms, within POLICY_BOX seconds
  box "$POLICY_BOX" $PYTHON run.py -m $SMOL method=flashspec bandit=ucb1,thompson,hedge bandit.arm=0 $POLICY_GAMMA \
    bandit.costs=$MAIN/costs.json  # UCB1's cost model: measured once, then read by every dataset's run
}

case $STAGE in
  train)
    train ;;
  main)
    train
    box "$MAIN_BOX" $PYTHON run.py -m $SMOL method=flashspec $MAIN_SWEEP gamma=$MAIN_GAMMA
    pack smollm2_main "$MAIN" "$MODELS" ;;
  bandit)
    box 300 $PYTHON run.py -m $BANDIT sampling.seed=0,1 bandit.arm=0
    box 150 $PYTHON run.py -m $BANDIT bandit=none,fixed sampling.seed=0 bandit.scope=request
    pack bandit_study_gpu "$MIX" ;;
  replay)
    box 420 $PYTHON scripts/bandit_replay.py collect "$REPLAY" experiment=bandit_study_gpu $COMMON \
      dataset.limit=$MIX_LIMIT
    pack bandit_replay_gpu "$REPLAY" ;;
  policies)
    policies
    pack smollm2_main_policies "$MAIN" ;;
  rest)
    policies
    box 320 $PYTHON run.py -m $SMOL method=hf_eager,hf_static,hf_assisted,hf_prompt_lookup bandit=none bandit.arm=0 gamma=4
    pack smollm2_main_rest "$MAIN" ;;
  *)
    echo "usage: OUT=<folder> bash scripts/gpu_smollm2.sh train|main|bandit|replay|policies|rest" >&2
    exit 2 ;;
esac
