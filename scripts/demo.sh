#!/usr/bin/env bash
# The main job end to end on CPU, on embedded data only (no downloads), in a few minutes:
#   synthetic JFT-like corpus -> pretrain a tiny NFNet -> fine-tune on real digits (shipped in scikit-learn)
#   -> export a SavedModel in TF Serving's layout -> serve it over TF Serving's REST API -> query it.
# Everything goes to $DEMO_DIR (default: ./runs/demo); re-running starts from scratch.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DEMO_DIR="${DEMO_DIR:-$ROOT/runs/demo}"
rm -rf "$DEMO_DIR" && mkdir -p "$DEMO_DIR"
step() { printf '\n=== %s\n' "$*"; }

step "1/6 synthetic JFT-like corpus (multi-label, long-tailed, held-out split)"
python datasets/make_synthetic.py --out "$DEMO_DIR/synthetic" --num_images 2048 --num_holdout 256 \
  --num_classes 20 --image_size 32

step "2/6 pretrain a tiny NFNet (AGC + Nesterov SGD, model.fit, checkpoints, TensorBoard)"
python trainers/pretrain.py --workdir "$DEMO_DIR/pretrain" \
  --config "trainers/configs/cpu_tiny.py:corpus=$DEMO_DIR/synthetic,epochs=2"

step "3/6 fine-tune on scikit-learn's real handwritten digits at 64 px (new 10-class head)"
python datasets/make_digits.py --out "$DEMO_DIR/digits"
python trainers/finetune.py --source="$DEMO_DIR/pretrain" --corpus="$DEMO_DIR/digits" --workdir="$DEMO_DIR/finetune" \
  --image_size=64 --eval_image_size=64 --epochs=6 --global_batch_size=32 --crop=false --flip=false \
  --base_learning_rate=1.6 --agc_clip=0.04 --warmup_epochs=0.5 --sam_rho=0

step "4/6 export for TF Serving"
python trainers/export.py --finetune_workdir="$DEMO_DIR/finetune" --base_dir="$DEMO_DIR/serving" --model_name=digits

step "5/6 serve on 127.0.0.1 and query"
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
python trainers/query.py --url="$URL" --corpus="$DEMO_DIR/digits" --split=test --count=4
kill -TERM $SERVER && wait $SERVER || true
trap - EXIT

step "6/6 summary"
python - "$DEMO_DIR" <<'PY'
import json, sys
d = sys.argv[1]
r = json.load(open(f"{d}/finetune/results.json"))
print(f"fine-tuned top-1 on the digits test split: raw {r['top1']:.3f}, EMA {r['top1_ema']:.3f} (top-5 {r['top5']:.3f})")
print(f"TensorBoard logs:  tensorboard --logdir {d}   (pretrain and fine-tune runs)")
print(f"SavedModel:        {d}/serving/digits")
PY
