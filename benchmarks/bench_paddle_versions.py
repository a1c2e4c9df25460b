"""Sensitivity-analysis wall time on two Paddle versions, measured in the same run.

Each job runs in a child process of the given interpreters (one venv per Paddle version, each
with slim-plugins installed), one after the other:

    python benchmarks/bench_paddle_versions.py --python A/bin/python --python B/bin/python

Jobs: one model per adapter whose suite is importable in that interpreter.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS = {"builtin": "sens_builtin_job.py"}


def run(python, script):
    proc = subprocess.run([python, os.path.join(HERE, script)], cwd=HERE, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, help="an interpreter (repeat: one per Paddle)")
    args = parser.parse_args()
    rows = []
    for adapter, script in JOBS.items():
        results = [run(py, script) for py in args.python]
        rows.append((adapter, results))
        for py, r in zip(args.python, results):
            label = r.get("paddle", "?")
            if "error" in r:
                print(f"{adapter:10s} paddle {label:8s} ERROR {r['error']}")
            else:
                print(f"{adapter:10s} paddle {label:8s} {r['model']:12s} analysis {r['analysis_seconds']:7.2f} s "
                      f"({r['evaluations']} evaluations, tracing {r['trace_seconds']:.2f} s)")
        ok = [r for r in results if "error" not in r]
        if len(ok) == 2:
            print(f"{adapter:10s} ratio {ok[0]['paddle']} / {ok[1]['paddle']}: "
                  f"{ok[0]['analysis_seconds'] / ok[1]['analysis_seconds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
