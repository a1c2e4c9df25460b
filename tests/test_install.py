"""Installation (issue 14 item 1): an editable install has the start-up hook, `slim-plugins list`
says when the hook is missing or stale, and the tests refuse to test a copy that is not this tree."""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO, SCRIPTS, clean_env
from slim_plugins import environment


def test_the_hook_file_is_the_line_list_checks_for():
    with open(os.path.join(REPO, environment.HOOK_FILE)) as f:
        assert f.read().strip() == environment.HOOK_LINE


def test_the_tests_refuse_a_slim_plugins_from_outside_the_tree(tmp_path):
    # what a wheel in site-packages does: slim_plugins is imported (by the start-up hook) before
    # pytest runs; here a copy next to the launcher is imported first
    shutil.copytree(os.path.join(REPO, "slim_plugins"), tmp_path / "slim_plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "launch.py").write_text(
        "import os, sys\nimport slim_plugins\nimport pytest\n"
        f"os.chdir({REPO!r})\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_install.py', '-k', 'hook_file_is']))\n")
    env = clean_env({"PYTHONPATH": str(tmp_path)})
    proc = subprocess.run([sys.executable, str(tmp_path / "launch.py")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "the tests would test a slim_plugins outside this working tree" in proc.stdout + proc.stderr
    assert str(tmp_path / "slim_plugins") in proc.stdout + proc.stderr


def _dependency_folder(root):
    """This environment's site-packages without slim-plugins and pip: the new environment reuses
    paddle and the suites from it instead of downloading them again."""
    site = sysconfig.get_paths()["purelib"]
    deps = root / "deps"
    deps.mkdir()
    for name in os.listdir(site):
        lowered = name.lower()
        if lowered.startswith(("slim_plugins", "slim-plugins", "__editable__", "pip", "__pycache__")) \
                or lowered.endswith(".pth"):
            continue
        os.symlink(os.path.join(site, name), deps / name)
    return deps


@pytest.mark.slow
def test_editable_install_runs_an_unchanged_hapi_script_with_the_plugin(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(target, "reuse-dependencies.pth"), "w") as f:
        f.write(str(_dependency_folder(tmp_path)) + "\n")
    env = clean_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.pop("PYTHONPATH", None)  # the new environment alone decides what is imported
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO], env=env,
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert os.path.isfile(os.path.join(target, environment.HOOK_FILE))  # PEP 660 install, with the hook

    where = subprocess.run([python, "-c", "import slim_plugins; print(slim_plugins.__file__)"], env=env,
                           cwd=str(tmp_path), capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.realpath(where) == os.path.realpath(os.path.join(REPO, "slim_plugins", "__init__.py"))

    run = subprocess.run([python, os.path.join(SCRIPTS, "hapi_digits.py"), str(tmp_path / "out"), "--epochs", "1",
                          "--plugin", "prune", "--prune.ratios", "3.weight=0.5"], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "pruned 1 group:" in run.stderr
    assert '"3.weight": [32, 32, 3, 3]' in run.stdout  # 64 output channels, half pruned

    slim = str(venv / "bin" / "slim-plugins")
    listing = subprocess.run([slim, "list", "--no-suites"], env=env, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0 and "start-up hook: ok" in listing.stdout, listing.stdout + listing.stderr

    hook = os.path.join(target, environment.HOOK_FILE)
    with open(hook, "w") as f:
        f.write("import slim_plugins.boot_of_an_old_version\n")
    listing = subprocess.run([slim, "list", "--no-suites"], env=env, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 1 and "start-up hook: stale" in listing.stdout and "pip install -e ." in listing.stdout

    os.unlink(hook)
    listing = subprocess.run([slim, "list", "--no-suites"], env=env, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 1 and "start-up hook: missing" in listing.stdout
    assert "refuses --plugin" in listing.stdout and "pip install -e ." in listing.stdout
