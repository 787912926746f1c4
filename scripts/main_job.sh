#!/usr/bin/env bash
# The main job: real transfer, offline. Packaged EfficientNet-Lite0 (ImageNet weights) ->
# Fashion-MNIST with 100 training images per class (seed 0), scored on the full official
# test split (10,000 images), once with feature_extract and once with lp_ft (the
# recommended fine-tuning default).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HS=.venv/bin/headstart
$HS models --offline
[ -d data/fashion-mnist/test ] || $HS datasets fashion-mnist --per-class 100 --seed 0 --out data/fashion-mnist
for strategy in feature_extract lp_ft; do
  start=$SECONDS
  $HS fit data/fashion-mnist/train --test data/fashion-mnist/test \
      --backbone packaged:efficientnet_lite0 --strategy "$strategy" \
      --out "runs/fashion-mnist-$strategy"
  echo "$strategy: whole run $((SECONDS - start)) s wall (features, training, test evaluation)"
done
