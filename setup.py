"""Installs slim_plugins plus the one-line ``slim_plugins.pth`` startup hook.

The hook is what lets an unchanged ``python tools/train.py ... --plugin prune`` work: Python runs
``.pth`` lines at start-up, before the train script parses its arguments. The line is cheap: it
imports nothing beyond ``slim_plugins._boot`` (no paddle, no pluggy).
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "slim_plugins.pth"


class BuildWithStartupHook(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        self.copy_file(os.path.join(here, PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildWithStartupHook})
