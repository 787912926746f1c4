"""FMNIST 100/class seed 0, the default fit: each epoch's validation, the kept candidate and the
test accuracy, to compare two commits (or two thread counts) epoch by epoch:

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout>/src:<checkout>/benchmarks python default_trajectory.py
"""

import json
import time

from headstart import ImageClassifier

import low_data

x, y, xt, yt = low_data.target_data("fmnist100", 0)
t0 = time.perf_counter()
clf = ImageClassifier(seed=0).fit(x, y)
sec = time.perf_counter() - t0
m = clf.evaluate(xt, yt)
KEYS = ("stage", "epoch", "lr", "train_loss", "val_accuracy", "val_loss")
for h in clf.history_:
    print(json.dumps({k: h.get(k) for k in KEYS}))
print("stages", json.dumps(clf.stages_)[:1500])
print("selection", clf.metrics_.get("selection"))
print("kept", clf.best_, "test", m["accuracy"], "seconds", round(sec, 1))
