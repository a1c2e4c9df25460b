"""Run a suite's train script with a plugin that scores the adapter's metric four times.

usage: metric_twice.py BATCHES SCRIPT ARGS...
SCRIPT runs as ``__main__`` with ARGS (as its user runs it). When training is about to start, the
adapter's own metric is evaluated twice on the first BATCHES batches and twice on all of them,
printed as JSON on the last stdout line, and the process exits 0 before any training step.
"""
import json
import runpy
import sys

from slim_plugins.hooks import hookimpl
from slim_plugins.session import get_session


class MetricTwice:
    def __init__(self, batches):
        self.batches = batches

    @hookimpl
    def slim_before_train(self, run):
        metric = run.metric
        limited = [metric(max_batches=self.batches), metric(max_batches=self.batches)]
        full = [metric(), metric()]
        chance = getattr(metric, "chance", None)
        print(json.dumps({"name": metric.name, "limited": limited, "all": full, "chance": chance}))
        sys.stdout.flush()
        raise SystemExit(0)


def main():
    batches, script, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    session = get_session()
    session.pm.register(MetricTwice(batches), name="metric-twice")
    session.activate_adapters()  # a plugin of its own: the suite's train entry must fire the hooks
    sys.argv = [script] + args
    sys.path.insert(0, __import__("os").path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
