import json
import os
import subprocess
import sys

import pytest

import slim_plugins
from slim_plugins import compat  # noqa: F401  zlib before paddle (Paddle 2.6)

pytest_plugins = ["slim_plugins.testing"]

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")
REPO = os.path.dirname(HERE)


def foreign_slim_plugins():
    """Where this process and a child process import slim_plugins from, if not this working tree:
    with a wheel installed, the start-up hook loads the installed copy before pytest runs, and
    the tests would test it instead of the edits."""
    child = subprocess.run([sys.executable, "-c", "import slim_plugins; print(slim_plugins.__file__)"],
                           cwd=os.path.dirname(REPO), capture_output=True, text=True, timeout=120)
    found = {"this process": slim_plugins.__file__, "a child process": child.stdout.strip() or child.stderr.strip()}
    return {who: path for who, path in found.items()
            if not os.path.realpath(path).startswith(os.path.realpath(REPO) + os.sep)}


def pytest_configure(config):
    foreign = foreign_slim_plugins()
    if foreign:
        raise pytest.UsageError(
            f"the tests would test a slim_plugins outside this working tree ({REPO}): "
            + "; ".join(f"{who} imports {path}" for who, path in foreign.items())
            + ". Install the tree editable (`pip install -e .`, as scripts/test-env.sh does) or run with "
              f"PYTHONPATH={REPO}")


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per core, at most 4 (each runs suite trainings in child processes of
    its own: more would only trade CPU for memory)."""
    return max(1, min(os.cpu_count() or 1, 4))


# The longest test files (`pytest --durations`: together over half of the suite's time), started
# first: a worker that took one of them last would still be running it long after the others end.
SLOWEST_FIRST = ("test_ppdet_adapter.py", "test_ppocr_adapter.py", "test_paddlex_adapter.py", "test_hapi_plugin.py",
                 "test_paddlex_detector.py", "test_graph_flagship_det.py", "test_crash_safety.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def digits_cnn(width=16, epochs=6):
    """The demo's DigitsNet trained on all of scikit-learn's digits (8 x 8): ``(net in eval mode,
    images [N, 1, 8, 8], labels as a numpy array)``."""
    import paddle
    from sklearn.datasets import load_digits

    from slim_plugins.demo import DigitsNet

    paddle.seed(0)
    digits = load_digits()
    x = paddle.to_tensor((digits.images.astype("float32") / 16.0)[:, None])
    y = paddle.to_tensor(digits.target.astype("int64"))
    net = DigitsNet(width=width)
    opt = paddle.optimizer.Adam(learning_rate=0.01, parameters=net.parameters())
    for _ in range(epochs):
        for i in range(0, len(digits.target), 64):
            paddle.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
            opt.clear_grad()
    net.eval()
    return net, x, digits.target


def clean_env(extra=None):
    """This environment without activation (SLIM_PLUGINS*) or distributed (PADDLE_*) variables a
    caller left, plus ``extra``: what a user's fresh shell would give a command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIM_PLUGINS", "PADDLE_"))}
    env.update(extra or {})
    return env


def run_python(args, cwd, env=None, timeout=600):
    """Run ``python ARGS`` in a fresh process; returns the CompletedProcess (asserts rc 0)."""
    full_env = dict(os.environ)
    for var in ("SLIM_PLUGINS", "SLIM_PLUGINS_OPTIONS", "SLIM_PLUGINS_CONFIG"):
        full_env.pop(var, None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\n"
                                  f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


def write_paddlex_lists(root, classes, lists):
    """PaddleX's dataset files: labels.txt and ``{split}_list.txt`` from ``{split: [lines]}``."""
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    for split, lines in lists.items():
        with open(os.path.join(root, f"{split}_list.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


def train_paddlex_script(tmp_path_factory, name, script, dataset, epochs, pretrain=None, *extra):
    """``python SCRIPT DATASET OUT --epochs N [--pretrain W] EXTRA...`` in a new folder ``name``
    (a PaddleX training script as users run it); returns ``(out, proc)``."""
    out = tmp_path_factory.mktemp(name)
    args = [script, dataset, str(out), "--epochs", str(epochs)]
    args += ["--pretrain", str(pretrain)] if pretrain else []
    return out, run_python(args + list(extra), cwd=str(out))


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture
def python():
    return run_python


def paddle_inference(folder, stem, feeds):
    """Run the model exported as ``folder/stem.{json|pdmodel}`` + ``stem.pdiparams`` in Paddle
    Inference on CPU (oneDNN off: Paddle 3.3.1's oneDNN executor rejects some PIR attributes).
    ``feeds``: ``{input name: array}`` (a superset of the inputs the export kept), or one array for
    the first input. Returns the outputs."""
    import paddle.inference as pi

    from slim_plugins import compat as compat_

    model_file = f"{stem}.json" if (folder / f"{stem}.json").exists() else f"{stem}.pdmodel"
    config = pi.Config(str(folder / model_file), str(folder / f"{stem}.pdiparams"))
    config.disable_gpu()
    if compat_.PADDLE_3:
        config.disable_mkldnn()
    predictor = pi.create_predictor(config)
    names = predictor.get_input_names()
    for name in names if isinstance(feeds, dict) else names[:1]:  # the inputs the export kept
        predictor.get_input_handle(name).copy_from_cpu(feeds[name] if isinstance(feeds, dict) else feeds)
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]
