"""Sensitivity-analysis wall time on two Paddle versions, measured in the same run.

Each job runs in child processes of the given interpreters (one venv per Paddle version, each
with slim-plugins installed), one after the other:

    python benchmarks/bench_paddle_versions.py --python A/bin/python --python B/bin/python [--job ppdet] [--repeat 2]

Jobs: one model per adapter (sens_<adapter>_job.py). A job makes its data set and the weights to
analyse in a temporary folder once, with the first interpreter that can (so every Paddle version
analyses the same model on the same data), then each interpreter runs the suite's train command
with ``--plugin prune --prune.action analyze``. Times come from the plugin's log lines as they
arrive: tracing (PaddleSlim trace and inventory checks) and the analysis (baseline, every
evaluation, file writes); evaluations and their summed time from the sensitivity file.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # nothing generated stays in benchmarks/
from suite_job import clean_env, run_job  # noqa: E402

JOBS = {"builtin": "sens_builtin_job.py", "ppdet": "sens_ppdet_job.py", "ppocr": "sens_ppocr_job.py",
        "paddlex": "sens_paddlex_job.py"}


def paddle_version(python):
    proc = subprocess.run([python, "-c", "import paddle; print(paddle.__version__)"], capture_output=True, text=True,
                          env=clean_env())
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else python


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def tail(result, lines=12):
    return "\n".join("    " + x for x in result.get("log", "").splitlines()[-lines:])


def run_adapter(adapter, script, pythons, labels, log, repeat=1):
    """Prepare once (the first interpreter that can), analyse with each ``repeat`` times; the
    fastest analysis per interpreter."""
    work = tempfile.mkdtemp(prefix=f"slim-bench-{adapter}-")
    try:
        prepared, failures = None, []
        for python, label in zip(pythons, labels):
            prepared = run_job(python, script, "prepare", work)
            if "error" not in prepared:
                break
            failures.append(f"{adapter} prepare on paddle {label}: {prepared['error']}")
            log(failures[-1] + "\n" + tail(prepared))
        else:
            return None, [{"error": "no interpreter could prepare"} for _ in pythons], failures
        log(f"{adapter}: prepared with paddle {prepared['paddle']} in {prepared['prepare_seconds']:.1f} s "
            f"(load {load()})")
        results = [None] * len(pythons)
        for _ in range(repeat):  # interpreters take turns: a burst of load elsewhere hits both alike
            for i, (python, label) in enumerate(zip(pythons, labels)):
                if results[i] is not None and "error" in results[i]:
                    continue
                r = run_job(python, script, "analyze", work)
                if "error" in r:
                    failures.append(f"{adapter} analyze on paddle {label}: {r['error']}")
                    log(failures[-1] + "\n" + tail(r))
                else:
                    log(f"{adapter}: paddle {label} analysis {r['analysis_seconds']:.1f} s (load {load()})")
                if results[i] is None or "error" in r or r["analysis_seconds"] < results[i]["analysis_seconds"]:
                    results[i] = r
        return prepared, results, failures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(rows, labels):
    head = ["adapter", "model", "evaluations"]
    for label in labels:
        head += [f"{label} trace s", f"{label} analysis s", f"{label} s/eval"]
    if len(labels) == 2:
        head.append(f"analysis {labels[0]}/{labels[1]}")
    body = []
    for adapter, results in rows:
        ok = [r for r in results if "error" not in r]
        model = ok[0]["model"] if ok else "-"
        evals = "/".join(sorted({str(r["evaluations"]) for r in ok})) or "-"
        line = [adapter, model, evals]
        for r in results:
            if "error" in r:
                line += ["ERROR", "ERROR", "-"]
            else:
                line += [f"{r['trace_seconds']:.2f}", f"{r['analysis_seconds']:.2f}",
                         f"{r['analysis_seconds'] / r['evaluations']:.3f}"]
        if len(labels) == 2:
            both = len(ok) == 2
            line.append(f"{results[0]['analysis_seconds'] / results[1]['analysis_seconds']:.2f}" if both else "-")
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    out = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |" for line in [head] + body]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True, help="an interpreter (repeat: one per Paddle)")
    parser.add_argument("--job", action="append", choices=sorted(JOBS), help="only these adapters (repeat)")
    parser.add_argument("--repeat", type=int, default=1, help="analyses per interpreter and job; the fastest counts")
    args = parser.parse_args()
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    labels = [paddle_version(p) for p in args.python]
    log(f"interpreters: {', '.join(f'{p} (paddle {v})' for p, v in zip(args.python, labels))}; load {load()}")
    rows, failures = [], []
    for adapter in args.job or list(JOBS):
        _, results, failed = run_adapter(adapter, JOBS[adapter], args.python, labels, log, args.repeat)
        rows.append((adapter, results))
        failures += failed
    print(table(rows, labels))
    print(f"load average at the end: {load()} (1, 5, 15 min); {os.cpu_count()} CPUs; "
          f"total wall time {time.perf_counter() - started:.0f} s")
    for failure in failures:
        print("ERROR " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
