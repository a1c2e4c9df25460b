"""PaddleX 2.1 scripts pruned by the paddlex adapter (issue 6).

The tests train MobileNetV2 (traceable on Paddle 2.6 and 3.x; MobileNetV3's SE block is not on
3.x) from scratch on a tiny image-folder set they draw themselves, then prune it on the command
line, from PaddleX 1.3's ``train(sensitivities_file=..., eval_metric_loss=...)``, and through
the environment of a child process, and reload the pruned models with ``paddlex.load_model``.

Not here: a detector. YOLOv3 + MobileNetV1 (what PaddleX 2.1 offers offline) needs about 100
iterations at 3-6 s each on 2 CPU cores before its VOC mAP means anything, about 6 minutes,
more than this whole file may take in CI; see docs/paddlex.md for what was measured by hand.
"""
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import SCRIPTS, last_json, run_python

HAVE_PADDLEX = importlib.util.find_spec("paddlex") is not None
needs_paddlex = pytest.mark.skipif(not HAVE_PADDLEX, reason="paddlex is not installed (pip install --no-deps paddlex==2.1.0 and its real needs: see docs/paddlex.md)")
SCRIPT = os.path.join(SCRIPTS, "paddlex_shapes.py")
CLASSES = ("red", "green", "blue")
FIRST_CONV = "conv1._conv.weight"


def make_shapes_set(root, n_train=12, n_val=6, size=32, seed=0):
    """An image-folder set for pdx.datasets.ImageNet: a square, circle or triangle whose colour
    is tinted by class (so a network learns it from scratch in a few epochs)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    lists = {"train": [], "val": []}
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for split, count in (("train", n_train), ("val", n_val)):
            for i in range(count):
                image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 80, 3)))
                colour = [int(c) for c in rng.integers(40, 120, 3)]
                colour[label] = int(rng.integers(200, 256))
                r = int(rng.integers(size // 6, size // 3))
                cx, cy = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
                shape = int(rng.integers(0, 3))
                draw = ImageDraw.Draw(image)
                box = [cx - r, cy - r, cx + r, cy + r]
                if shape == 0:
                    draw.rectangle(box, fill=tuple(colour))
                elif shape == 1:
                    draw.ellipse(box, fill=tuple(colour))
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=tuple(colour))
                rel = f"{name}/{split}_{i}.jpg"
                image.save(os.path.join(root, rel), quality=95)
                lists[split].append(f"{rel} {label}")
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    for split, lines in lists.items():
        with open(os.path.join(root, f"{split}_list.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root
