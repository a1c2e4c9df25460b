"""The PaddleSeg adapter, from its installed wheel, found through its ``slim_plugins`` entry point.

PaddleSeg 2.8.0's own ``paddleseg.core.train`` / ``evaluate`` run unchanged (``seg_tool.py``, a
trimmed copy of its tools/train.py and tools/val.py) on a synthetic set drawn here: 64x64 images
with two coloured rectangles, label PNGs, PaddleSeg's ``image label`` file lists.
"""
import os
import random
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from slim_plugins.testing import check_adapter

pytest_plugins = ["slim_plugins.testing"]

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(HERE, "seg_tool.py")
COLOURS = [(220, 40, 40), (40, 200, 60)]
RATIOS = "db.convs.1.*=0.5,db.convs.3.*=0.5,sb.stage4.1.conv.0.*=0.25"
CONFIG = """\
batch_size: 4
iters: 40
train_dataset:
  type: Dataset
  dataset_root: {root}
  train_path: {root}/train.txt
  num_classes: 3
  mode: train
  transforms:
    - type: Normalize
val_dataset:
  type: Dataset
  dataset_root: {root}
  val_path: {root}/val.txt
  num_classes: 3
  mode: val
  transforms:
    - type: Normalize
optimizer:
  type: SGD
  momentum: 0.9
  weight_decay: 4.0e-5
lr_scheduler:
  type: PolynomialDecay
  learning_rate: 0.05
  end_lr: 0
  power: 0.9
loss:
  types:
    - type: DiceLoss  # PaddleSeg 2.8's cross-entropy losses mix int64 and float32: Paddle 3 refuses
  coef: [1, 1, 1, 1, 1]
model:
  type: BiSeNetV2
  num_classes: 3
"""


def entry_point():
    """The adapter's ``slim_plugins`` entry point (the only way these tests find it)."""
    found = [ep for ep in metadata.entry_points(group="slim_plugins") if ep.name == "paddleseg"]
    assert found, "no slim_plugins entry point 'paddleseg': pip install examples/slim-plugins-paddleseg"
    return found[0]


def make_set(root, split, count, rng, size=64):
    from PIL import Image

    os.makedirs(os.path.join(root, split), exist_ok=True)
    lines = []
    for i in range(count):
        image = np.full((size, size, 3), 30, np.uint8) + np.array(rng.choices(range(20), k=3), np.uint8)
        label = np.zeros((size, size), np.uint8)
        for cls, colour in enumerate(COLOURS, start=1):
            w, h = rng.randint(14, 28), rng.randint(14, 28)
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            image[y:y + h, x:x + w] = colour
            label[y:y + h, x:x + w] = cls
        Image.fromarray(image).save(os.path.join(root, split, f"{i}.jpg"), quality=95)
        Image.fromarray(label).save(os.path.join(root, split, f"{i}.png"))
        lines.append(f"{split}/{i}.jpg {split}/{i}.png")
    with open(os.path.join(root, f"{split}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def seg_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    rng = random.Random(0)
    make_set(str(root / "data"), "train", 32, rng)
    make_set(str(root / "data"), "val", 8, rng)
    path = root / "config.yml"
    path.write_text(CONFIG.format(root=root / "data"))
    return path


def tool(*args, cwd):
    env = dict(os.environ)
    for var in [v for v in env if v.startswith("SLIM_PLUGINS_")]:
        del env[var]
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def miou(proc):
    return float([line for line in proc.stdout.splitlines() if line.startswith("mIoU=")][-1].split("=")[1])


def test_listed_from_its_entry_point_as_an_installed_wheel():
    ep = entry_point()
    assert ep.value == "slim_plugins_paddleseg"
    module = ep.load()
    assert "site-packages" in module.__file__ and HERE not in module.__file__, module.__file__
    cli = os.path.join(os.path.dirname(sys.executable), "slim-plugins")
    out = subprocess.run([cli, "list"], capture_output=True, text=True, timeout=120).stdout
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("adapter ")}
    assert "entry point of slim-plugins-paddleseg" in rows["paddleseg"], out
    suite = [line for line in out.splitlines() if line.startswith("paddleseg ")]
    assert suite and "paddleseg 2.8.0" in suite[0] and "installed" in suite[0], out


def test_adapter_answers_and_fires_the_lifecycle(seg_config, tmp_path, slim_session, hook_recorder):
    """In process: check_adapter on a PaddleSeg model, then 2 iterations of paddleseg's train."""
    module = entry_point().load()
    slim_session.register_adapter(module.adapter)
    slim_session.install_adapter(module.adapter)
    sys.path.insert(0, HERE)
    try:
        import seg_tool  # noqa: F401  (PaddleSeg 2.8's metric on Paddle 3, as the tool runs it)
    finally:
        sys.path.remove(HERE)
    import paddle
    import paddleseg.core
    from paddleseg.cvlibs import Config, SegBuilder

    paddle.set_device("cpu")
    cfg = Config(str(seg_config), opts=["iters=2"])
    builder = SegBuilder(cfg)
    model, optimizer, val = builder.model, builder.optimizer, builder.val_dataset
    assert paddleseg.core.train._slim_patched
    run = slim_session.new_run("paddleseg", handle=module.SegJob(model, optimizer, val, str(tmp_path)))
    assert check_adapter(run)
    first, again = run.metric(max_batches=2), run.metric(max_batches=2)
    assert first == again and 0.0 <= first <= 1.0
    paddleseg.core.train(model, builder.train_dataset, val_dataset=val, optimizer=optimizer,
                         save_dir=str(tmp_path / "out"), iters=2, batch_size=2, save_interval=1,
                         log_iters=10 ** 9, losses=builder.loss)
    names = hook_recorder.names()
    assert names[0] == "slim_before_train" and names[-1] == "slim_after_train", names
    saved = sorted(kw["path"] for name, _run, kw in hook_recorder.calls if name == "slim_on_checkpoint_save")
    out = str(tmp_path / "out")
    assert os.path.join(out, "iter_1", "model") in saved and os.path.join(out, "iter_2", "model") in saved, saved
    assert all(p.startswith(out) and os.path.isfile(p + ".pdparams") for p in saved), saved


def test_missing_patch_target_is_one_adapter_error(monkeypatch):
    import paddleseg.core  # noqa: F401  (its train attribute is the function, not the module)

    from slim_plugins.errors import AdapterError

    module = entry_point().load()
    monkeypatch.delattr(sys.modules["paddleseg.core.train"], "resume")
    with pytest.raises(AdapterError) as info:
        module.SegAdapter().check_targets()
    message = str(info.value)
    assert "\n" not in message
    assert f"paddleseg {metadata.version('paddleseg')}" in message and "paddleseg.core.train.resume" in message


def test_pruned_training_reloads_with_the_same_miou(seg_config, tmp_path):
    """Train without the plugin; fine-tune from it with fixed ratios; a fresh eval process
    replays the plan saved with the checkpoint and scores exactly what training ended with."""
    tool("train", "--config", seg_config, "--save_dir", tmp_path / "base", "--save_interval", 40, cwd=tmp_path)
    base = tmp_path / "base" / "iter_40" / "model.pdparams"
    assert base.is_file() and not (tmp_path / "base" / "iter_40" / "model.prune.json").exists()

    pruned = tool("train", "--config", seg_config, "--save_dir", tmp_path / "pruned", "--save_interval", 10,
                  "-o", "iters=20", f"model.pretrained={base}",
                  "--plugin", "prune", "--prune.ratios", RATIOS, cwd=tmp_path)
    assert "[slim-plugins prune] pruned 3 groups" in pruned.stdout + pruned.stderr
    for folder in ("iter_10", "iter_20", "best_model"):
        assert (tmp_path / "pruned" / folder / "model.prune.json").is_file(), folder
    trained = miou(pruned)
    assert trained > 0.5

    checkpoint = tmp_path / "pruned" / "iter_20" / "model.pdparams"
    reloaded = tool("val", "--config", seg_config, "--model_path", checkpoint, cwd=tmp_path)
    assert "rebuilt pruned shapes" in reloaded.stdout + reloaded.stderr
    assert miou(reloaded) == trained
    # without the plan, PaddleSeg skips the pruned tensors (a warning each) and scores less
    blocked = tool("val", "--config", seg_config, "--model_path", checkpoint, "--plugin", "no:prune", cwd=tmp_path)
    assert miou(blocked) != trained
