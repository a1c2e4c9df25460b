"""Installs the one-line ``slim_plugins.pth`` start-up hook with the package; the metadata is in
pyproject.toml.

The hook is what lets an unchanged ``python tools/train.py ... --plugin prune`` work: Python runs
``.pth`` lines at start-up, before the train script parses its arguments. The line is cheap: it
imports nothing beyond ``slim_plugins._boot`` (no paddle, no pluggy).

A wheel gets it from ``build_py``. An editable install (``pip install -e .``, PEP 660) does not
run ``build_py``'s outputs outside packages into site-packages, so the editable wheel gets the
file added after setuptools built it.
"""
import base64
import glob
import hashlib
import os
import warnings
import zipfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "slim_plugins.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithStartupHook(build_py):
    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


def add_to_wheel(wheel, name, data):
    """Rewrite ``wheel`` with ``name`` at its root and a matching RECORD line."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rewritten = wheel + ".tmp"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                content = content.rstrip(b"\n") + f"\n{name},sha256={digest},{len(data)}\n".encode()
            if item.filename != name:
                dst.writestr(item, content)
        dst.writestr(name, data)
    os.replace(rewritten, wheel)


class EditableWithStartupHook(editable_wheel):
    def run(self):
        with warnings.catch_warnings():  # setuptools' general advice on every editable install
            warnings.filterwarnings("ignore", message=r"\s*Editable installation")
            super().run()
        with open(os.path.join(HERE, PTH), "rb") as f:
            data = f.read()
        for wheel in glob.glob(os.path.join(self.dist_dir, "slim_plugins-*.whl")):
            add_to_wheel(wheel, PTH, data)


setup(cmdclass={"build_py": BuildWithStartupHook, "editable_wheel": EditableWithStartupHook})
