"""The ``slim-plugins`` command: demo, list, and the sensitivity-file tools."""
import argparse
import ast
import json
import os
import sys

from slim_plugins.errors import SlimPluginsError, report


def cmd_demo(args):
    from slim_plugins.demo import run_demo

    result = run_demo(report_path=args.report, quick=args.quick, budget=args.eval_metric_loss,
                      workdir=args.workdir)
    return 0 if result["after"]["flops"] < result["before"]["flops"] else 1


def script_imports(path):
    """Top-level module names a script imports (read, not run)."""
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def cmd_list(args):
    from slim_plugins.text import table
    from slim_plugins.session import Session

    session = Session()
    rows = []
    for name, info in sorted(session.infos.items(), key=lambda kv: (kv[1].kind, kv[0])):
        if name == "defaults":
            continue
        state = "blocked" if info.blocked else ("enabled" if session.is_enabled(name) else "")
        rows.append([info.kind, name, info.origin, info.module, state])
    print(table(rows, ["kind", "name", "from", "module", "state"]))
    if args.script:
        imported = script_imports(args.script)
        hits = [a.name for a in session.adapters.values() if a.matches(imported)]
        specific = [h for h in hits if h != "builtin"] or hits
        print(f"\n{args.script}: adapter {specific[0] if specific else 'none'}"
              + (f" (also matching: {', '.join(h for h in hits if h != specific[0])})" if len(hits) > 1 else ""))
    return 0


def _load(path):
    from slim_plugins.plugins.prune.sensitivity import SensitivityFile

    return SensitivityFile.load(path)


def cmd_sens_show(args):
    from slim_plugins.text import table

    sfile = _load(args.file)
    d = sfile.data
    print(f"{args.file}: metric {d['metric']['name']} baseline {d['metric']['baseline']}, "
          f"criterion {d['criterion']}, {len(d['groups'])} groups")
    ratios = sorted({float(r) for g in d["groups"].values() for r in g["ratios"]})
    rows = []
    for name, losses in sfile.losses().items():
        rows.append([name] + [f"{losses[r]:+.4f}" if r in losses else "" for r in ratios])
    print(table(rows, ["group"] + [f"{r:g}" for r in ratios]))
    return 0


def cmd_sens_plot(args):
    from slim_plugins.plugins.prune.report import plot_sensitivities

    sfile = _load(args.file)
    out = args.out or os.path.splitext(args.file)[0] + ".png"
    plot_sensitivities(sfile.losses(), out, sfile.data["metric"]["name"] or "metric", budget=args.budget)
    print(out)
    return 0


def cmd_sens_ratios(args):
    from slim_plugins.plugins.prune.ratios import ratios_by_loss

    ratios = ratios_by_loss(_load(args.file).losses(), args.eval_metric_loss)
    print(json.dumps(ratios, indent=1))
    return 0


def cmd_sens_merge(args):
    from slim_plugins.plugins.prune.merge import merge_files

    merged = merge_files(args.inputs, args.out)
    print(f"{args.out}: {len(merged.data['groups'])} groups from {len(args.inputs)} files")
    return 0


def cmd_sens_import(args):
    from slim_plugins.plugins.prune.legacy import load_legacy, to_sensitivity_json
    from slim_plugins.plugins.prune.sensitivity import write_json_atomic

    losses = load_legacy(args.pickle)
    write_json_atomic(args.out, to_sensitivity_json(losses, os.path.basename(args.pickle)))
    print(f"{args.out}: {len(losses)} groups imported from {args.pickle}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="slim-plugins", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train, analyse, prune and fine-tune a CNN on scikit-learn digits")
    demo.add_argument("--report", help="write the figures as JSON here (and a PNG beside it)")
    demo.add_argument("--quick", action="store_true", help="fewer epochs and ratios (under a minute)")
    demo.add_argument("--eval-metric-loss", type=float, default=None,
                      help="relative accuracy-loss budget of the ratio choice (default 0.1)")
    demo.add_argument("--workdir", help="where checkpoints and the sensitivity file go (default: a temp dir)")
    demo.set_defaults(func=cmd_demo)

    lst = sub.add_parser("list", help="plugins and adapters, where they come from, which adapter a script uses")
    lst.add_argument("--script", help="a train script: say which adapter matches it")
    lst.set_defaults(func=cmd_list)

    sens = sub.add_parser("sens", help="sensitivity files").add_subparsers(dest="sens_command", required=True)
    show = sens.add_parser("show", help="print a sensitivity file as a table")
    show.add_argument("file")
    show.set_defaults(func=cmd_sens_show)
    plot = sens.add_parser("plot", help="PNG of the sensitivity curves")
    plot.add_argument("file")
    plot.add_argument("--out")
    plot.add_argument("--budget", type=float)
    plot.set_defaults(func=cmd_sens_plot)
    ratios = sens.add_parser("ratios", help="ratios for a metric-loss budget")
    ratios.add_argument("file")
    ratios.add_argument("--eval-metric-loss", type=float, required=True)
    ratios.set_defaults(func=cmd_sens_ratios)
    merge = sens.add_parser("merge", help="join sensitivity files of the same model")
    merge.add_argument("out")
    merge.add_argument("inputs", nargs="+")
    merge.set_defaults(func=cmd_sens_merge)
    imp = sens.add_parser("import", help="convert a PaddleSlim/PaddleX pickle safely")
    imp.add_argument("pickle")
    imp.add_argument("out")
    imp.set_defaults(func=cmd_sens_import)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SlimPluginsError as exc:
        report(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
