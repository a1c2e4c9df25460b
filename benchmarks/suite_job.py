"""What every sensitivity-timing job shares: the prepare/analyze command line, running a suite's
train command with time-stamped output, reading the timings back, and the JSON line.

A job module defines ``prepare(work)`` (make its data set and the weights to analyse under the
folder ``work``, with one interpreter) and ``analyze(work, out)`` (run the analysis into the new
folder ``out`` and return the result of :func:`result`), then calls :func:`main`:

    python benchmarks/sens_X_job.py prepare WORK     weights and data, once for all Paddle versions
    python benchmarks/sens_X_job.py analyze WORK     timed analysis; JSON on the last stdout line
    python benchmarks/sens_X_job.py                  both, in a temporary folder removed afterwards

Imports nothing heavy: bench_paddle_versions.py imports it too, outside any Paddle environment.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TESTS = os.path.join(REPO, "tests")
SCRIPTS = os.path.join(TESTS, "scripts")

# the prune plugin's log lines that delimit tracing and analysis (slim_plugins/plugins/prune/workflow.py)
TRACE_START = "[slim-plugins prune] tracing "
ANALYSIS_START = "[slim-plugins prune] sensitivity analysis of "
ANALYSIS_END = "[slim-plugins prune] analysis done: "
PRUNE_LOG = "[slim-plugins prune] "


class JobError(RuntimeError):
    pass


# ------------------------------------------------------------------ child processes
def clean_env():
    """This environment without activation or distributed variables left by a caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIM_PLUGINS", "PADDLE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ left in tests/ or benchmarks/
    return env


def run_command(args, cwd, timeout=900, python=None):
    """``python ARGS`` (this interpreter unless told) in ``cwd``; stdout and stderr merged, every
    line stamped with ``time.perf_counter()`` when it arrived. Returns ``[(t, line), ...]``;
    raises JobError with the output's end if the command fails."""
    proc = subprocess.Popen([python or sys.executable] + [str(a) for a in args], cwd=str(cwd), env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    watchdog = threading.Timer(timeout, proc.kill)  # a hung data loader ends the job, not the benchmark
    watchdog.start()
    try:
        lines = [(time.perf_counter(), line.rstrip("\n")) for line in proc.stdout]
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if rc != 0:
        tail = "\n".join(text for _, text in lines[-40:])
        raise JobError(f"exit {rc}: {' '.join(str(a) for a in args)}\n{tail}")
    return lines


def last_json(lines):
    for _, text in reversed(lines):
        if text.startswith("{"):
            return json.loads(text)
    raise JobError("no JSON line in the output")


# ------------------------------------------------------------------ what an analysis run measured
def phase_seconds(lines):
    """Wall times from the prune plugin's log: tracing (PaddleSlim trace and the inventory's
    checks, up to the next plugin line) and the analysis (its announcement to 'analysis done':
    baseline, every evaluation, the file writes)."""
    def first(prefix, after=None):
        for t, text in lines:
            if text.startswith(prefix) and (after is None or t >= after):
                return t
        raise JobError(f"no line starting {prefix!r} in the output:\n" + "\n".join(x for _, x in lines[-30:]))

    traced = first(TRACE_START)
    after_trace = next(t for t, text in lines if t > traced and text.startswith(PRUNE_LOG))
    begun = first(ANALYSIS_START, traced)
    return after_trace - traced, first(ANALYSIS_END, begun) - begun


def sensitivities(path):
    """Counts from a sensitivity file: evaluations (baseline, every recorded (group, ratio), and
    every ratio that broke the model), analysed groups, and the evaluations' summed seconds."""
    with open(path) as f:
        data = json.load(f)
    groups = data["groups"].values()
    recorded = [entry for g in groups for entry in g.get("ratios", {}).values()]
    failed = sum(1 for g in groups if g.get("failed"))
    return {"evaluations": 1 + len(recorded) + failed, "groups": len(data["groups"]),
            "metric": data["metric"]["name"], "baseline": data["metric"]["baseline"],
            "eval_seconds": (data["metric"].get("seconds") or 0.0) + sum(e["seconds"] for e in recorded)}


def analysis_options(ratios, batches=None):
    """The plugin switched on for an analysis only."""
    options = ["--plugin", "prune", "--prune.action", "analyze", "--prune.sen_ratios", ",".join(map(str, ratios))]
    if batches:
        options += ["--prune.sen_batches", str(batches)]
    return options


def result(adapter, model, lines, sen_file):
    """The job's JSON: times from the log ``lines`` and counts from the sensitivity file."""
    import paddle

    trace, analysis = phase_seconds(lines)
    return {"adapter": adapter, "model": model, "paddle": paddle.__version__, "trace_seconds": round(trace, 3),
            "analysis_seconds": round(analysis, 3), **sensitivities(sen_file)}


# ------------------------------------------------------------------ the tests' data generators
def tests_module(name):
    """A module of tests/ (its data generators), importable from a job."""
    for folder in (TESTS, SCRIPTS):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import importlib

    return importlib.import_module(name)


# ------------------------------------------------------------------ command line
def _temporaries_in(work):
    """Temporary files of this job and its commands go under ``work`` and leave with it."""
    os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
    os.environ["TMPDIR"] = os.path.join(work, "tmp")
    tempfile.tempdir = None


def main(prepare, analyze, argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("prepare", "analyze"):
        _temporaries_in(os.path.abspath(argv[1]))
    if argv and argv[0] == "prepare":
        start = time.perf_counter()
        prepare(os.path.abspath(argv[1]))
        import paddle

        print(json.dumps({"paddle": paddle.__version__, "prepare_seconds": round(time.perf_counter() - start, 3)}))
    elif argv and argv[0] == "analyze":
        work = os.path.abspath(argv[1])
        print(json.dumps(analyze(work, tempfile.mkdtemp(prefix="analysis-", dir=work))))
    elif not argv:
        work = tempfile.mkdtemp(prefix="slim-bench-")
        _temporaries_in(work)
        try:
            prepare(work)
            print(json.dumps(analyze(work, tempfile.mkdtemp(prefix="analysis-", dir=work))))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        raise SystemExit("usage: JOB.py [prepare WORK | analyze WORK]")


# ------------------------------------------------------------------ for bench_paddle_versions.py
def run_job(python, script, *args, timeout=1800):
    """Run a job step under ``python``; its JSON, or ``{"error": ...}`` with the failure's last line."""
    try:
        return last_json(run_command([os.path.join(HERE, script)] + list(args), cwd=HERE, timeout=timeout,
                                     python=python))
    except JobError as exc:
        lines = [x for x in str(exc).splitlines() if x.strip()]
        errors = [x for x in lines if re.match(r"^\w*(Error|Exception)\b", x)]
        return {"error": (errors or lines)[-1].strip(), "log": str(exc)}
