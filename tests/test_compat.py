"""Paddle 2.6 / 3.x compatibility (issue 7): what compat.tracing() changes for PaddleSlim exists only
inside it; the user's training and export around it run on Paddle's own functions and IR."""
import importlib
import os

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest

from slim_plugins import compat
from slim_plugins.plugins.prune.model import PrunableModel


def snapshot():
    """Every function compat may swap, where it may swap it, plus the IR and graph mode."""
    names = list(compat._OLD_IR_UNARY) + list(compat._OLD_IR_BINARY) + ["matmul"]
    seen = {}
    for home in compat._OLD_IR_HOMES:
        module = importlib.import_module(home)
        for name in names:
            seen[(home, name)] = getattr(module, name, None)
    variable = paddle.base.framework.Variable
    for name in names:
        seen[("Variable", name)] = vars(variable).get(name)
    seen["pir"] = paddle.framework.use_pir_api() if hasattr(paddle.framework, "use_pir_api") else None
    seen["dynamic"] = paddle.in_dynamic_mode()
    return seen


class SqueezeExcite(nn.Layer):
    """LCNet / MobileNetV3 style: the functional calls (sigmoid, multiply, matmul) that Paddle 3
    accepts only as PIR values."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2D(16)
        self.se1 = nn.Conv2D(16, 4, 1)
        self.se2 = nn.Conv2D(4, 16, 1)
        self.conv2 = nn.Conv2D(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        w = F.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        x = paddle.multiply(x, w)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1).flatten(1)
        return paddle.matmul(x, self.fc.weight) + self.fc.bias


def test_tracing_puts_back_every_function_and_the_ir():
    before = snapshot()
    with compat.tracing():
        inside = snapshot()
    assert snapshot() == before
    if compat.PADDLE_3:
        changed = [k for k in before if k not in ("pir", "dynamic") and inside[k] is not before[k]]
        assert ("paddle", "sigmoid") in changed and ("paddle", "multiply") in changed
        assert inside["pir"] is False and before["pir"] is True  # old IR only inside
    with pytest.raises(RuntimeError, match="inside"):
        with compat.tracing():
            raise RuntimeError("inside")
    assert snapshot() == before  # also after a failure while tracing


def test_traced_model_trains_and_exports_with_paddles_own_ir(tmp_path):
    paddle.seed(3)
    net = SqueezeExcite()
    before = snapshot()
    pm = PrunableModel(net, [1, 3, 16, 16])
    assert snapshot() == before
    assert "conv1.weight" in pm.groups  # traced through sigmoid / multiply / matmul
    pm.prune({"conv1.weight": 0.5}, check_inputs=[paddle.randn([2, 3, 16, 16])])
    assert list(net.conv1.weight.shape) == [8, 3, 3, 3] and list(net.se1.weight.shape) == [4, 8, 1, 1]
    # the user's training step after pruning
    opt = paddle.optimizer.Adam(parameters=net.parameters(), learning_rate=1e-3)
    x, y = paddle.randn([4, 3, 16, 16]), paddle.to_tensor([[0], [1], [2], [3]], dtype="int64")
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert np.isfinite(float(loss))
    # and the user's export: PIR program on Paddle 3, old-IR program on 2.6
    net.eval()
    path = str(tmp_path / "se")
    paddle.jit.save(net, path, input_spec=[paddle.static.InputSpec([None, 3, 16, 16], "float32")])
    assert os.path.exists(path + (".json" if compat.PADDLE_3 else ".pdmodel"))
    loaded = paddle.jit.load(path)
    loaded.eval()
    probe = paddle.randn([2, 3, 16, 16])
    np.testing.assert_allclose(loaded(probe).numpy(), net(probe).numpy(), rtol=1e-4, atol=1e-5)
