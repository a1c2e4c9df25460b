"""Adapters trust nothing about the suite they patch: the installed version and every patch
target are checked before anything is patched, and a suite that changed stops a command that
asked for a plugin with one line naming the suite, its version and what is missing."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import SCRIPTS, clean_env
from slim_plugins.adapters.builtin import HapiAdapter
from slim_plugins.errors import AdapterError

# registered before the adapter's own import callback: the suite module runs, then loses a piece
CHANGE_SUITE = """
import runpy, sys
from slim_plugins import _boot
module, change = sys.argv[1], sys.argv[2]
_boot.watcher.callbacks.setdefault(module, []).insert(0, lambda m: exec(change, {"m": m}))
sys.argv = sys.argv[3:]
{run}
"""
RUN_SCRIPT = 'runpy.run_path(sys.argv[0], run_name="__main__")'


def changed_suite(module, change, args, run=RUN_SCRIPT, env=None, cwd=None):
    code = CHANGE_SUITE.replace("{run}", run)
    return subprocess.run([sys.executable, "-c", code, module, change] + list(args), cwd=cwd,
                          env=clean_env(env), capture_output=True, text=True, timeout=300)


def one_error_line(proc):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("slim-plugins:")]
    assert len(ours) == 1, proc.stderr[-3000:]
    return ours[0]


def test_a_missing_hapi_target_is_one_line_before_anything_runs(tmp_path):
    from importlib import metadata

    import paddle

    proc = changed_suite("paddle.hapi.model", "del m.Model.save",
                         [os.path.join(SCRIPTS, "hapi_digits.py"), str(tmp_path), "--epochs", "1",
                          "--plugin", "prune", "--prune.ratios", "0.weight=0.5"], cwd=str(tmp_path))
    line = one_error_line(proc)
    dist = "paddlepaddle-gpu" if "gpu" in line else "paddlepaddle"
    assert line.startswith(f"slim-plugins: error: [builtin] {dist} {metadata.version(dist)} has no "
                           "paddle.hapi.model.Model.save, which the builtin adapter patches; hint:"), line
    assert paddle.__version__ in line
    assert not list(tmp_path.iterdir())  # nothing trained, nothing saved


def test_an_unsupported_version_is_refused_with_the_versions_tested():
    class Future(HapiAdapter):
        supported = ("9.",)

    with pytest.raises(AdapterError, match=r"\[builtin\] paddlepaddle\S* \S+ is not a version the builtin adapter "
                                           r"supports; hint: install a version the builtin adapter supports \(9\.x\)"):
        Future().verify()
    HapiAdapter().verify()  # the installed Paddle is one


needs_ppocr = pytest.mark.skipif(not any(
    os.path.isdir(os.path.join(p, "unstructured_paddleocr", "ppocr")) for p in sys.path if os.path.isdir(p)),
    reason="unstructured-paddleocr is not installed")


@needs_ppocr
def test_a_ppocr_load_model_with_renamed_parameters_is_refused_by_name():
    """The PaddleOCR wrappers bind ``config``, ``model``, ``optimizer`` by name: a suite whose
    ``load_model`` calls them otherwise is refused before patching, not misread by position."""
    rename = ("f = m.load_model\n"
              "def load_model(cfg, net, optimizer=None, model_type='det'): return f(cfg, net, optimizer, model_type)\n"
              "m.load_model = load_model")
    run = "from slim_plugins.adapters.ppocr import adapter; adapter.import_suite(); print('imported')"
    proc = changed_suite("ppocr.utils.save_load", rename, [], run=run, env={"SLIM_PLUGINS": "prune"})
    line = one_error_line(proc)
    assert "[ppocr] unstructured-paddleocr 2.10" in line and \
        "ppocr.utils.save_load.load_model has no parameter 'config', which the ppocr adapter binds by name" in line
    # no plugin asked for: the suite imports and runs as it is, with one line saying why we are off
    proc = changed_suite("ppocr.utils.save_load", rename, [],
                         run=run + "; from ppocr.utils import save_load as s; "
                                   "print(getattr(s.load_model, '_slim_patched', False))")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["imported", "False"]
    assert "slim-plugins: not active in this process (AdapterError: [ppocr]" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("ppdet") is None, reason="paddledet is not installed")
def test_ppdet_missing_save_model_is_refused_naming_it():
    run = "import ppdet.engine.trainer; print('imported')"
    proc = changed_suite("ppdet.engine.callbacks", "del m.save_model", [], run=run, env={"SLIM_PLUGINS": "prune"})
    line = one_error_line(proc)
    assert line.startswith("slim-plugins: error: [ppdet] paddledet 2.6.0 has no ppdet.engine.callbacks.save_model, "
                           "which the ppdet adapter patches; hint: install a version the ppdet adapter supports "
                           "(2.6.x), or run without --plugin"), line
