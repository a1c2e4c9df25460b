"""Run a PaddleOCR tool unchanged and record the lifecycle hooks it fired.

usage: ppocr_tool.py HOOKS_JSON PATH/TO/tools/TOOL.py -c cfg.yml [-o ...]
The hook names, in order, are written to HOOKS_JSON when the tool exits.
"""
import atexit
import json
import runpy
import sys

from slim_plugins.session import get_session
from slim_plugins.testing import HookRecorder

hooks_file, tool = sys.argv[1], sys.argv[2]
recorder = HookRecorder()
get_session().pm.register(recorder, name="test-recorder")
atexit.register(lambda: json.dump(recorder.names(), open(hooks_file, "w")))
sys.argv = sys.argv[2:]
runpy.run_path(tool, run_name="__main__")
