"""Latency cut against FLOPs cut in Paddle Inference on CPU, one model per suite, and
``--prune.pruned_latency 0.3`` reached against the measured baseline.

For each suite the job of bench_paddle_versions.py prepares the data set and trained weights
(``sens_<adapter>_job.py prepare``); then the suite's own train command runs three times with the
plugin: uniform ratios 0.3 and 0.5 on every prunable group (``--prune.ratios '*=R'``) and
``--prune.pruned_latency 0.3``. Every figure comes from the run's own report: FLOPs before/after,
and the latency of the exported model in Paddle Inference (CPU, 1 thread) at batch 1 and at the
eval batch size, all measured in that run.

The latency cuts are those of the run's report: the pruned and the unpruned export run in turns,
one run each at a time (1 thread: each timed by the process's CPU time, which leaves out the waits
for a core other jobs hold), and the cut is one minus the median ratio of those pairs, with its 95%
interval (slim_plugins/plugins/prune/latency.py, ``compare``); the search's own figure for the
chosen plan is shown next to the report's re-measurement.

    python benchmarks/bench_latency.py [--job builtin --job ppdet ...] [--prepared DIR]

``--prepared DIR``: data and weights already made by ``sens_<job>_job.py prepare DIR/<job>`` (kept
afterwards); without it each job prepares into a temporary folder.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # nothing generated stays in benchmarks/
import suite_job  # noqa: E402

TARGET = 0.3


def _builtin(work, out, options):
    script = os.path.join(suite_job.HERE, "sens_builtin_job.py")
    return [script, "train", out, "--epochs", "1", "--pretrain", os.path.join(work, "base", "final")] + options


def _ppdet(work, out, options):
    import sens_ppdet_job as job

    weights = os.path.join(work, "base", job.NAME, "model_final")
    return [job.TOOLS, "train", "-c", job.CONFIG, "-o", "epoch=1", f"save_dir={out}",
            f"pretrain_weights={weights}"] + options


def _ppocr(work, out, options):
    import sens_ppocr_job as job

    return [job._tests().tool("train.py"), "-c", "det.yml", "-o", "Global.epoch_num=1", f"Global.save_model_dir={out}",
            f"Global.pretrained_model={os.path.join(work, 'det_base', 'latest')}"] + options


def _paddlex(work, out, options):
    import sens_paddlex_job as job

    return [job.SCRIPT, os.path.join(work, "shapes"), out, "--epochs", "1", "--pretrain",
            os.path.join(work, "base", "best_model", "model.pdparams")] + options


COARSE = ["--prune.sen_ratios", "0.3,0.6", "--prune.sen_batches", "4"]
JOBS = {  # adapter: (job module, model, train command, sensitivity options for pruned_latency)
    "builtin": ("sens_builtin_job", "DigitsNet", _builtin, ["--prune.sen_ratios", "0.2,0.4,0.6,0.8"]),
    "ppdet": ("sens_ppdet_job", "PicoDet-s", _ppdet, COARSE),
    "ppocr": ("sens_ppocr_job", "DB-MobileNetV3", _ppocr, COARSE),
    "paddlex": ("sens_paddlex_job", "MobileNetV2", _paddlex, ["--prune.sen_ratios", "0.2,0.4,0.6"]),
}
EXTRA = {"paddlex": ["--prune.latency_batch_size", "6"]}  # the PaddleX adapter gives datasets, not batch sizes:
# the script evaluates 6 a batch


def run(adapter, command, work, name, options):
    out = os.path.join(work, name)
    os.makedirs(out)
    report = os.path.join(out, "report.json")
    started = time.perf_counter()
    suite_job.run_command(command(work, out, ["--plugin", "prune", "--prune.plot", "false", "--prune.report", report]
                                  + options), cwd=work, timeout=1800)
    with open(report) as f:
        data = json.load(f)
    data["wall_seconds"] = time.perf_counter() - started
    return data


def row(adapter, model, how, data):
    before, after = data["before"], data["after"]
    out = {"adapter": adapter, "model": model, "plan": how,
           "flops_cut": 1 - after["flops"] / before["flops"], "latency": []}
    after_by = {(e["batch_size"], e["runtime"]): e for e in after.get("latency") or ()}
    for e in before.get("latency") or ():
        a = after_by.get((e["batch_size"], e["runtime"]))
        cut = a and (a["cut"] if "cut" in a else 1 - a["ms"] / e["ms"])
        out["latency"].append({"label": e["label"], "runtime": e["runtime"], "batch_size": e["batch_size"],
                               "before_ms": e["ms"], "after_ms": a and a["ms"], "cut": cut,
                               "cut_low": a and a.get("cut_low"), "cut_high": a and a.get("cut_high"),
                               "pairs": a and a.get("pairs")})
    searched = (data.get("budget") or {}).get("latency")
    if searched:
        out["search"] = {k: searched.get(k) for k in ("target", "cut", "cut_low", "cut_high", "batch_size", "label",
                                                      "baseline_ms", "runtime")}
        out["search"]["evaluations"] = len(searched["evaluations"])
        again = next((e for e in out["latency"] if e["batch_size"] == searched["batch_size"]
                      and e["runtime"] == searched["runtime"]), None)
        out["search"]["remeasured_cut"] = again and again["cut"]
    out["wall_seconds"] = round(data.get("wall_seconds", 0), 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", action="append", choices=sorted(JOBS), help="default: all four")
    parser.add_argument("--prepared", help="folder with one prepared folder per job (sens_<job>_job.py prepare)")
    parser.add_argument("--target-only", action="store_true", help="only the pruned_latency run")
    args = parser.parse_args()
    rows = []
    for adapter in args.job or list(JOBS):
        module, model, command, sens = JOBS[adapter]
        job = __import__(module)
        prepared = args.prepared and os.path.abspath(os.path.join(args.prepared, adapter))
        work = tempfile.mkdtemp(prefix=f"slim-latency-{adapter}-", dir=prepared)
        try:
            started = time.perf_counter()
            if prepared:
                for name in os.listdir(prepared):  # the runs' commands find data and weights where prepare put them
                    if not os.path.exists(os.path.join(work, name)):
                        os.symlink(os.path.join(prepared, name), os.path.join(work, name))
            else:
                job.prepare(work)
            print(f"{adapter}: prepared in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            plans = [(f"uniform {r}", ["--prune.ratios", f"*={r}"]) for r in (0.3, 0.5)]
            plans.append((f"pruned_latency {TARGET}", ["--prune.pruned_latency", str(TARGET)] + sens))
            plans = plans[-1:] if args.target_only else plans
            for i, (how, options) in enumerate(plans):
                try:
                    rows.append(row(adapter, model, how, run(adapter, command, work, f"run{i}",
                                                             options + EXTRA.get(adapter, []))))
                except suite_job.JobError as exc:
                    rows.append({"adapter": adapter, "model": model, "plan": how, "error": str(exc)[-600:]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(report(rows))
    print(json.dumps(rows))


def report(rows):
    import paddle

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    lines = [f"Paddle {paddle.__version__}, latency of the exported model on CPU, 1 thread (load average at the end: "
             f"{load}); cut: paired runs' median ratio [95% interval]", "",
             "| suite | model | plan | FLOPs cut | runtime | latency batch 1 (ms) | cut | latency eval batch (ms) "
             "| cut |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['adapter']} | {r['model']} | {r['plan']} | error: {r['error'].splitlines()[-1][:80]} |")
            continue
        for runtime in dict.fromkeys(e["runtime"] for e in r["latency"]):
            cells = [r["adapter"], r["model"], r["plan"], f"{r['flops_cut']:.1%}", runtime]
            lat = sorted((e for e in r["latency"] if e["runtime"] == runtime), key=lambda e: e["batch_size"])
            for e in (lat + lat)[:2] if len(lat) == 1 else lat[:2]:
                cells += [f"{e['before_ms']:.3f} → {e['after_ms']:.3f} (batch {e['batch_size']})", _cut(e)]
            lines.append("| " + " | ".join(cells) + " |")
    for r in rows:
        s = r.get("search")
        if s:
            again = s["remeasured_cut"]
            lines.append(f"\n{r['adapter']}: pruned_latency {s['target']} at {s['label']}: the search measured "
                         f"{_cut(s)} ({s['evaluations']} plans timed against the unpruned model); the report "
                         f"re-measured {again:.1%}: {abs(again - s['target']):.1%} from the target "
                         f"({'within' if abs(again - s['target']) <= 0.05 else 'NOT within'} 5%)")
    return "\n".join(lines)


def _cut(e):
    if e.get("cut_low") is None:
        return f"{e['cut']:.1%}"
    return f"{e['cut']:.1%} [{e['cut_low']:.1%}, {e['cut_high']:.1%}]"


if __name__ == "__main__":
    main()
