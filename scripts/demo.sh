#!/usr/bin/env bash
# The main job end to end on CPU, on embedded data only (no downloads), in a few minutes:
#   synthetic JFT-like corpus -> pretrain a small NFNet -> fine-tune on real digits (shipped in scikit-learn)
#   -> the same budget from scratch (the baseline) -> export a SavedModel in TF Serving's layout
#   -> serve it over TF Serving's REST API -> query it.
# Everything goes to $DEMO_DIR (default: ./runs/demo); re-running starts from scratch.
# --verbose (or KERAS_NFNET_VERBOSE=1) also shows TensorFlow's own start-up and INFO lines.
for arg in "$@"; do
  case "$arg" in
    --verbose) export KERAS_NFNET_VERBOSE=1 ;;
    *) echo "usage: bash scripts/demo.sh [--verbose]" >&2; exit 2 ;;
  esac
done
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DEMO_DIR="${DEMO_DIR:-$ROOT/runs/demo}"
rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
STARTED=$(date +%s)
step() { printf '\n=== %s\n' "$*"; }
# The fine-tuning recipe, shared by the fine-tuned run and its from-scratch baseline: the digits fill the frame
# and a mirrored digit is another digit, so no Inception crop and no flip; the evaluation view is then the whole
# image at the training resolution (crop fraction 1).
RECIPE=(--config=finetune --config.corpus="$DEMO_DIR/digits" --config.image_size=32 --config.epochs=15
        --config.global_batch_size=32 --config.crop=false --config.flip=false --config.base_learning_rate=1.6
        --config.agc_clip=0.04 --config.warmup_epochs=0.5 --config.sam_rho=0)

step "1/7 synthetic JFT-like corpus (multi-label, long-tailed, held-out split)"
python datasets/make_synthetic.py --out "$DEMO_DIR/synthetic" --num_images 2048 --num_holdout 256 \
  --num_classes 20 --image_size 32

step "2/7 pretrain the S0 NFNet (AGC + Nesterov SGD, model.fit, checkpoints, TensorBoard)"
python -m keras_nfnet.jobs.pretrain --workdir="$DEMO_DIR/pretrain" --config=cpu_tiny \
  --config.corpus="$DEMO_DIR/synthetic" --config.variant=S0 --config.epochs=2 --config.eval_every_steps=64

step "3/7 fine-tune on scikit-learn's real handwritten digits at 32 px (new 10-class head)"
python datasets/make_digits.py --out "$DEMO_DIR/digits"
python -m keras_nfnet.jobs.finetune "${RECIPE[@]}" --config.source="$DEMO_DIR/pretrain" --workdir="$DEMO_DIR/finetune"

step "4/7 the same budget from scratch (random initialisation): the baseline"
python -m keras_nfnet.jobs.finetune "${RECIPE[@]}" --config.from_scratch --config.variant=S0 \
  --workdir="$DEMO_DIR/scratch"

step "5/7 export for TF Serving (the model's evaluation view goes into the graph)"
python trainers/export.py --finetune_workdir="$DEMO_DIR/finetune" --base_dir="$DEMO_DIR/serving" --model_name=digits

step "6/7 serve on 127.0.0.1 and query it with the whole test split (the first 4 predictions shown)"
PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python trainers/serve.py --model_base_path="$DEMO_DIR/serving/digits" --rest_api_port="$PORT" \
  > "$DEMO_DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PORT/v1/models/digits"
for _ in $(seq 120); do
  python -c "import urllib.request; urllib.request.urlopen('$URL', timeout=2)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$DEMO_DIR/serve.log"; echo "server exited" >&2; exit 1; }
  sleep 1
done
python trainers/query.py --url="$URL" --corpus="$DEMO_DIR/digits" --split=test --count=0 --show=4 \
  | tee "$DEMO_DIR/query.txt"
kill -TERM $SERVER && wait $SERVER || true
trap - EXIT

step "7/7 summary"
python - "$DEMO_DIR" "$(( $(date +%s) - STARTED ))" <<'PY'
import json, sys
d, seconds = sys.argv[1], int(sys.argv[2])
ft_result = json.load(open(f"{d}/finetune/result.json"))
ft, sc = ft_result["metrics"], json.load(open(f"{d}/scratch/result.json"))["metrics"]
print(f"{ft['variant']} on the digits test split ({ft['eval_examples']} images; evaluation view: {ft['eval_image_size']} px, "
      f"crop fraction {ft['crop_fraction']:g}; {ft_result['step']} steps of {ft_result['config']['global_batch_size']}):")
print(f"  fine-tuned from the pretrained checkpoint: top-1 raw {ft['top1']:.3f}, EMA {ft['top1_ema']:.3f}")
print(f"  from scratch, same budget:                 top-1 raw {sc['top1']:.3f}, EMA {sc['top1_ema']:.3f}")
best_ft, best_sc = max(ft['top1'], ft['top1_ema']), max(sc['top1'], sc['top1_ema'])
if best_ft > best_sc:
    verdict = f"pretraining helped: +{best_ft - best_sc:.3f} top-1 over training from scratch"
elif best_ft < best_sc:
    verdict = (f"pretraining did not help here: from scratch is {best_sc - best_ft:.3f} top-1 better (the synthetic "
               "pretraining corpus is not like digits)")
else:
    verdict = "pretraining made no difference in top-1 here"
print(f"  {verdict}")
served = open(f"{d}/query.txt").read().strip().splitlines()[-1]
exported = "EMA" if ft["best_weights"] == "ema" else "raw"
print(f"  served by the local TF-Serving-compatible server ({exported} weights): {served}")
print(f"demo time: {seconds // 60} min {seconds % 60} s")
print(f"TensorBoard logs:  tensorboard --logdir {d}   (pretrain, fine-tune and scratch runs)")
print(f"SavedModel:        {d}/serving/digits")
PY
