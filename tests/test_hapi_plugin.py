"""An unchanged hapi training script, run with and without `--plugin prune` (issue: core)."""
import os

import numpy as np
import paddle
import pytest

from conftest import SCRIPTS, last_json

SCRIPT = os.path.join(SCRIPTS, "hapi_digits.py")
UNPRUNED = {"0.weight": [32, 1, 3, 3], "3.weight": [64, 32, 3, 3], "7.weight": [64, 64, 3, 3]}


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    from conftest import run_python

    out = tmp_path_factory.mktemp("pruned")
    proc = run_python([SCRIPT, str(out), "--epochs", "2", "--plugin", "prune",
                       "--prune.ratios", "0.weight=0.5,3.*=0.25"], cwd=str(out))
    return out, proc


def test_without_plugin_the_script_is_untouched(tmp_path, python):
    proc = python([SCRIPT, str(tmp_path), "--epochs", "1"], cwd=str(tmp_path))
    shapes = last_json(proc.stdout)["shapes"]
    for name, shape in UNPRUNED.items():
        assert shapes[name] == shape
    assert "slim-plugins" not in proc.stderr
    assert not os.path.exists(tmp_path / "final.prune.json")


def test_with_plugin_the_trained_model_is_the_pruned_one(pruned_run):
    out, proc = pruned_run
    result = last_json(proc.stdout)
    shapes = result["shapes"]
    assert shapes["0.weight"] == [16, 1, 3, 3]          # 32 * (1 - 0.5)
    assert shapes["3.weight"] == [48, 16, 3, 3]         # 64 * (1 - 0.25), inputs follow conv 0
    assert shapes["7.weight"] == [64, 48, 3, 3]
    assert not any(k.endswith("_backup") for k in shapes), "PaddleSlim backup buffers leaked"
    saved = paddle.load(str(out / "final.pdparams"))
    assert list(saved["0.weight"].shape) == [16, 1, 3, 3]
    assert not any("backup" in k for k in saved)
    assert os.path.exists(out / "final.prune.json")
    assert "pruned 2 groups" in proc.stderr
    assert result["acc"] > 0.5


def test_fresh_process_rebuilds_shapes_before_load(pruned_run, python):
    out, proc = pruned_run
    trained_acc = last_json(proc.stdout)["acc"]
    loaded = python([SCRIPT, str(out), "--load", "--export"], cwd=str(out))
    result = last_json(loaded.stdout)
    assert result["shapes"]["0.weight"] == [16, 1, 3, 3]
    assert result["acc"] == pytest.approx(trained_acc, abs=1e-9)
    assert "rebuilt pruned shapes" in loaded.stderr
    # the exported inference model has the pruned shapes and runs
    layer = paddle.jit.load(str(out / "inference"))
    logits = layer(paddle.to_tensor(np.zeros([2, 1, 8, 8], dtype="float32")))
    assert list(logits.shape) == [2, 10]


def test_hook_order_of_a_hapi_run(slim_session, hook_recorder, tmp_path):
    import paddle.nn as nn
    from paddle.static import InputSpec

    net = nn.Sequential(nn.Conv2D(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model = paddle.Model(net, inputs=[InputSpec([None, 1, 8, 8], "float32", "x")])
    model.prepare(paddle.optimizer.SGD(parameters=net.parameters()), nn.CrossEntropyLoss())
    data = paddle.io.TensorDataset([paddle.zeros([4, 1, 8, 8]), paddle.zeros([4, 1], dtype="int64")])
    model.fit(data, batch_size=2, epochs=1, verbose=0, save_dir=str(tmp_path), save_freq=1)
    model.load(str(tmp_path / "final"))
    model.save(str(tmp_path / "inference"), training=False)
    assert hook_recorder.names() == [
        "slim_before_train", "slim_on_checkpoint_save", "slim_on_checkpoint_save", "slim_after_train",
        "slim_before_load_weights", "slim_before_export"]
    run = hook_recorder.calls[0][1]
    assert run.adapter == "builtin" and run.model is net
