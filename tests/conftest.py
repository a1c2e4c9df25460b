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
