"""Exploration behind depth-before-width (trtprune.searching.depth): ResNet-56 on `cpu`, blocks only.

``python bench/explore_depth.py zoo``: the dense ResNet-20, -32 and -56 and ResNet-56 keeping the first 5, 4 or 3
blocks of each stage, measured side by side on `cpu`, and the proxy of the three shallowed ResNet-56.

``TRTPRUNE_DATA=... python bench/explore_depth.py [EPOCHS]`` (default 4): scores each of ResNet-56's
residual blocks 1..8 of each stage by the proxy drop when it alone is removed (BatchNorm re-estimated on 10
batches of 100, top-1 on 2,000 held-out training images), measures the time one block of each stage saves,
removes blocks by drop per ms until the network measures at or below 0.5x of the dense one (each step measured
next to the dense model), prints the proxy of the result, fine-tunes it EPOCHS epochs (distilled from the dense
model, the library's defaults) and measures it against the dense model again. It prints; it writes nothing.
The product's search differs in one respect: it stops one block *above* the budget and lets the channel
search spend the rest.
"""

import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from torch import nn

from trtprune import api
from trtprune.metrics import top1_torch
from trtprune.sources.datasets import load_split
from trtprune.sources.images import as_images
from trtprune.sources.weights import load_model, resolve_weights
from trtprune.training.proxy import adaptive_bn_top1, held_out, recalibrate_bn

data = os.environ.get("TRTPRUNE_DATA") or "../shared/data"
TARGET = 0.5


def get(name):
    m, spec = load_model(name, resolve_weights(name, None, data))
    return m.eval(), spec


train = load_split(data, "train")
test = load_split(data, "test")
m56, spec = get("resnet56")
cal, val = held_out(train)
val2k = as_images(val).take(0, 2000)


def proxy(m):
    m = copy.deepcopy(m)
    recalibrate_bn(m, cal, spec.mean, spec.std, batches=10)
    return top1_torch(m, val2k, spec.mean, spec.std, desc="p")


def drop_set(model, which):
    m = copy.deepcopy(model)
    for s, i in which:
        getattr(m, f"layer{s}")[i] = nn.Identity()
    return m


if sys.argv[1:2] == ["zoo"]:
    variants = {"resnet56": m56, "resnet20": get("resnet20")[0], "resnet32": get("resnet32")[0]}
    for k in (5, 4, 3):
        variants[f"resnet56 keeping {k} blocks per stage"] = drop_set(
            m56, [(s, i) for s in (1, 2, 3) for i in range(k, 9)]
        )
    tmp = Path(tempfile.mkdtemp())
    for i, m in enumerate(variants.values()):
        api.export(m, tmp / f"{i}.onnx", (3, 32, 32))
    timings = api.measure([tmp / f"{i}.onnx" for i in range(len(variants))], "cpu")
    for (name, m), t in zip(variants.items(), timings):
        print(name, f"{t.median_ms:.3f} ms", f"{t.median_ms / timings[0].median_ms:.3f}x", flush=True)
        if "keeping" in name:  # the proxy as trtprune.training.proxy.adaptive_bn_top1 computes it
            print("  proxy", adaptive_bn_top1(copy.deepcopy(m), train, spec.mean, spec.std), flush=True)
    sys.exit(0)
EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 4

t0 = time.time()
base = proxy(m56)
cands = [(s, i) for s in (1, 2, 3) for i in range(1, 9)]
sens = {}
for c in cands:
    sens[c] = base - proxy(drop_set(m56, [c]))
    print("sens", c, round(sens[c], 2), flush=True)
print("sensitivity s", time.time() - t0, flush=True)
order = sorted(cands, key=lambda c: sens[c])
tmp = Path(tempfile.mkdtemp())
api.export(m56, tmp / "dense.onnx", (3, 32, 32))
# latency per removed block by stage: measure one-block-removed models
one = {s: drop_set(m56, [(s, 8)]) for s in (1, 2, 3)}
for s, m in one.items():
    api.export(m, tmp / f"one{s}.onnx", (3, 32, 32))
tm = api.measure([tmp / "dense.onnx"] + [tmp / f"one{s}.onnx" for s in (1, 2, 3)], "cpu")
dense = tm[0].median_ms
save = {s: dense - tm[s].median_ms for s in (1, 2, 3)}
print("dense", dense, "block saving ms", save, flush=True)
# greedy by sensitivity per ms saved
order = sorted(cands, key=lambda c: sens[c] / max(save[c[0]], 1e-3))
chosen, pred = [], dense
for c in order:
    if pred <= TARGET * dense:
        break
    chosen.append(c)
    pred -= save[c[0]]
while True:
    m = drop_set(m56, chosen)
    api.export(m, tmp / "pruned.onnx", (3, 32, 32))
    t = api.measure([tmp / "dense.onnx", tmp / "pruned.onnx"], "cpu")
    r = t[1].median_ms / t[0].median_ms
    print("chosen", chosen, "ratio", r, flush=True)
    if r <= TARGET:
        break
    chosen.append(order[len(chosen)])
print("proxy of pruned", proxy(m), flush=True)
recs = api.finetune(m, train, test, epochs=EPOCHS, teacher=m56, mean=spec.mean, std=spec.std)
print(json.dumps(recs), flush=True)
api.export(m, tmp / "pruned.onnx", (3, 32, 32))
t = api.measure([tmp / "dense.onnx", tmp / "pruned.onnx"], "cpu")
print("final ratio", t[1].median_ms / t[0].median_ms, t, flush=True)
