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
    from slim_plugins import environment
    from slim_plugins.session import Session
    from slim_plugins.text import table

    hook_ok, hook_line = environment.hook_status()
    print(f"start-up hook: {hook_line}\n")
    session = Session()
    rows = []
    for name, info in sorted(session.infos.items(), key=lambda kv: (kv[1].kind, kv[0])):
        if name == "defaults":
            continue
        state = "blocked" if info.blocked else ("enabled" if session.is_enabled(name) else "")
        rows.append([info.kind, name, info.origin, info.module, state])
    print(table(rows, ["kind", "name", "from", "module", "state"]))

    patches = environment.probe_patches() if args.suites else {}
    rows = []
    for name, adapter in sorted(session.adapters.items()):
        suite = environment.suite_of(adapter)
        if suite is None:
            found, ok = ("not installed" if getattr(adapter, "distributions", ()) else "-"), "-"
        else:
            found = f"{suite[0]} {suite[1]}"
            ok = {True: "yes", False: "no", None: "unknown"}[environment.supported(adapter, suite[1])]
            if ok == "no":
                ok += f" (tested: {', '.join(p + '*' for p in getattr(adapter, 'supported', ()))})"
        probe = patches.get(name, "not checked" if not args.suites else "-")
        if isinstance(probe, dict):
            targets, without, with_plugin = probe["targets"], probe["without"], probe["with"]
        else:  # an import failure, or not checked
            targets, without, with_plugin = probe, "-", "-"
        if with_plugin in ("nothing", "not checked") and not hook_ok:
            with_plugin += " (start-up hook: see above)"
        rows.append([name, found, ok, targets, without, with_plugin])
    print()
    print(table(rows, ["adapter", "suite found", "supported", "patch targets", "patched without a plugin",
                       "with a plugin"]))

    for plugin in sorted(session.options.declared):
        options = session.options.declared[plugin]
        rows = []
        for option in options.values():
            kind = getattr(option.type, "__name__", str(option.type)).replace("to_bool", "bool")
            help_text = option.plain_help
            if option.choices and not all(str(c) in help_text for c in option.choices):
                help_text += f" (one of {', '.join(map(str, option.choices))})"
            rows.append([f"--{plugin}.{option.name}", kind, option.shown_default(), help_text])
        print(f"\noptions of {plugin} (--{plugin}.KEY VALUE, or plugins: {{{plugin}: {{KEY: VALUE}}}} in YAML):")
        print(table(rows, ["option", "type", "default", "help"]))
    if args.script:
        imported = script_imports(args.script)
        hits = [a.name for a in session.adapters.values() if a.matches(imported)]
        specific = [h for h in hits if h != "builtin"] or hits
        print(f"\n{args.script}: adapter {specific[0] if specific else 'none'}"
              + (f" (also matching: {', '.join(h for h in hits if h != specific[0])})" if len(hits) > 1 else ""))
    return 0 if hook_ok else 1


def _load(path):
    from slim_plugins.plugins.prune.sensitivity import SensitivityFile

    return SensitivityFile.load(path)


def cmd_sens_show(args):
    from slim_plugins.text import table

    sfile = _load(args.file)
    metric, baseline = sfile.metric_name, sfile.baseline
    print(f"{args.file}: "
          + (f"metric {metric}" if metric else "metric not named yet (an imported file: the first run that uses it "
                                              "names it)")
          + (f", baseline {baseline:.4f}" if baseline is not None else "")
          + (f", criterion {sfile.criterion}" if sfile.criterion else "") + f", {len(sfile.groups)} groups")
    ratios = sorted({float(r) for g in sfile.groups.values() for r in g["ratios"]})
    rows = []
    for name, losses in sfile.losses().items():
        rows.append([name] + [f"{losses[r]:+.4f}" if r in losses else "" for r in ratios])
    print(table(rows, ["group"] + [f"{r:g}" for r in ratios]))
    return 0


def cmd_sens_plot(args):
    from slim_plugins.plugins.prune import report
    from slim_plugins.plugins.prune.report import plot_sensitivities

    missing = report.plotting_unavailable()
    if missing:
        raise SlimPluginsError(missing.replace("plots skipped: ", "cannot plot: "))
    sfile = _load(args.file)
    out = args.out_option or args.out or os.path.splitext(args.file)[0] + ".png"
    plot_sensitivities(sfile.losses(), out, sfile.metric_name or "metric", budget=args.budget)
    print(out)
    return 0


NO_FLOPS_HINT = ("run the train command once more with --prune.sen_file FILE --prune.sen_analyze false "
                 "--prune.action analyze (and the analysis's --prune.sen_batches): it adds them and evaluates nothing")


def plan_from_file(sfile, eval_metric_loss=None, pruned_flops=None):
    """The ratios a train run with the same option would choose from ``sfile``, as channel-exact
    ratios (pruned channels / channels, 4 decimals: the same channels in every suite's rounding);
    returns ``(ratios, kept, budget, flops)``, ``flops`` None when the file has no FLOPs data."""
    from slim_plugins.errors import SensitivityFileError
    from slim_plugins.plugins.prune import flops_model
    from slim_plugins.plugins.prune.ratios import ratios_by_loss, ratios_for_flops

    groups = sfile.groups
    sens = {g: losses for g, losses in sfile.losses().items() if losses}
    channels = {g: groups[g].get("channels") for g in sens}
    data = sfile.flops
    if data and not all(channels.values()):
        data = None
    if pruned_flops is not None:
        if not data:
            raise SensitivityFileError(
                f"{sfile.path} records no per-layer FLOPs, so --pruned-flops needs the model", plugin="prune",
                hint="give --eval-metric-loss instead, or " + NO_FLOPS_HINT)
        total = data["total"]
        raw, _, budget = ratios_for_flops(
            sens, pruned_flops, lambda r: 1 - flops_model.estimate(data, channels, r) / total)
    else:
        raw, budget = ratios_by_loss(sens, eval_metric_loss), eval_metric_loss
    ratios, kept = {}, {}
    for group, ratio in raw.items():
        n = channels.get(group)
        if not n:  # an imported file: no channel counts, ratios as chosen
            ratios[group] = round(ratio, 4)
            continue
        pruned = min(n - 1, int(round(n * ratio)))
        if pruned > 0:
            ratios[group] = round(pruned / n, 4)
            kept[group] = [n - pruned, n]
    flops = None
    if data:
        after = flops_model.estimate(data, channels, ratios)
        flops = {"before": data["total"], "after": after, "pruned": round(1 - after / data["total"], 4)}
    return ratios, kept, budget, flops


def legacy_ratios(sfile, ratios):
    """``{PaddleSlim global name: ratio}``, or an error that says how to get the names."""
    from slim_plugins.errors import SensitivityFileError

    groups = sfile.groups
    missing = [g for g in ratios if not isinstance(groups[g].get("legacy_name"), str)
               and groups[g].get("legacy_name") is not True]
    if missing:
        raise SensitivityFileError(
            f"{sfile.path} records no PaddleSlim name for {len(missing)} groups ({', '.join(missing[:3])}"
            + (" ...)" if len(missing) > 3 else ")"), plugin="prune",
            hint="files written before slim-plugins recorded legacy_name lack them: " + NO_FLOPS_HINT)
    return {(g if groups[g]["legacy_name"] is True else groups[g]["legacy_name"]): r for g, r in ratios.items()}


def cmd_sens_ratios(args):
    from slim_plugins.plugins.prune.report import human

    sfile = _load(args.file)
    ratios, kept, budget, flops = plan_from_file(sfile, args.eval_metric_loss, args.pruned_flops)
    how = (f"--pruned-flops {args.pruned_flops:g}" if args.pruned_flops is not None
           else f"--eval-metric-loss {args.eval_metric_loss:g}")
    if flops:
        flops_line = (f"FLOPs {human(flops['before'])} -> {human(flops['after'])} (-{flops['pruned']:.1%}), "
                      "from the per-layer FLOPs the analysis recorded")
    else:
        flops_line = f"FLOPs: this file records none (the model is needed; {NO_FLOPS_HINT})"
    summary = f"{len(ratios)} groups pruned, loss budget {budget:.4g}; {flops_line}"
    if args.format == "json":
        print(json.dumps({"file": args.file, "chosen_by": how.lstrip("-"), "budget": round(budget, 6),
                          "ratios": ratios, "kept_channels": kept, "flops": flops,
                          **({} if flops else {"flops_note": flops_line})}, indent=1))
        return 0
    named = legacy_ratios(sfile, ratios)
    if args.format == "paddleslim":  # what FilterPruner.prune_vars(ratios, axis=[0]) takes
        print(json.dumps(named, indent=1))
        print(summary, file=sys.stderr)
        return 0
    criterion = sfile.criterion or "l1_norm"
    lines = [f"# slim-plugins sens ratios {args.file} {how}", f"# {summary}"]
    if criterion not in ("l1_norm", "fpgm"):
        lines.append(f"# criterion {criterion}: slim-plugins' ppdet adapter takes it, ppdet's own Pruner "
                     "only l1_norm and fpgm")
    lines += ["slim: Pruner", "Pruner:", f"  criterion: {criterion}",
              "  pruned_params: [" + ", ".join(f"'{n}'" for n in named) + "]",
              "  pruned_ratios: [" + ", ".join(f"{r:g}" for r in named.values()) + "]",
              "  print_params: false"]
    print("\n".join(lines))
    return 0


def cmd_sens_merge(args):
    from slim_plugins.plugins.prune.merge import merge_files

    merged = merge_files(args.inputs, args.out)
    print(f"{args.out}: {len(merged.groups)} groups from {len(args.inputs)} files")
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
    lst.add_argument("--no-suites", dest="suites", action="store_false",
                     help="do not import the installed suites in a fresh interpreter to check their patches")
    lst.set_defaults(func=cmd_list)

    sens_parser = sub.add_parser("sens", help="sensitivity-file tools: show, plot, ratios, merge, import",
                                 description="Tools for the sensitivity files the prune plugin writes "
                                             "(<save_dir>/sensitivities.json by default).")
    sens = sens_parser.add_subparsers(dest="sens_command", required=True, metavar="COMMAND")
    show = sens.add_parser("show", help="print a sensitivity file as a table: relative metric loss per group and ratio")
    show.add_argument("file", help="a slim-plugins sensitivity file (JSON)")
    show.set_defaults(func=cmd_sens_show)
    plot = sens.add_parser("plot", help="PNG of the sensitivity curves (needs matplotlib: slim-plugins[plot])")
    plot.add_argument("file", help="a slim-plugins sensitivity file (JSON)")
    plot.add_argument("out", nargs="?", help="the PNG to write (default: FILE with .png)")
    plot.add_argument("--out", dest="out_option", metavar="OUT", help="the same as the positional OUT")
    plot.add_argument("--budget", type=float, help="draw this metric-loss budget as a line")
    plot.set_defaults(func=cmd_sens_plot)
    ratios = sens.add_parser(
        "ratios", help="the ratios a budget or FLOPs target chooses, in slim-plugins, ppdet or PaddleSlim terms",
        description="Print the ratios the prune plugin would choose from FILE, and the FLOPs they leave.")
    ratios.add_argument("file", help="a slim-plugins sensitivity file (JSON)")
    how = ratios.add_mutually_exclusive_group(required=True)
    how.add_argument("--eval-metric-loss", type=float, metavar="X",
                     help="per group, the largest ratio whose relative metric loss stays within X")
    how.add_argument("--pruned-flops", type=float, metavar="Y",
                     help="ratios that remove the fraction Y of the FLOPs (needs the FLOPs the analysis recorded)")
    ratios.add_argument("--format", choices=("json", "ppdet", "paddleslim"), default="json",
                        help="json: structured names, kept channels and FLOPs; ppdet: a `slim: Pruner` config for "
                             "ppdet's --slim_config; paddleslim: {global name: ratio} for FilterPruner.prune_vars")
    ratios.set_defaults(func=cmd_sens_ratios)
    merge = sens.add_parser("merge", help="join sensitivity files of the same model (ranks, machines, runs)")
    merge.add_argument("out", help="the merged file to write")
    merge.add_argument("inputs", nargs="+", help="sensitivity files of the same model, weights and criterion")
    merge.set_defaults(func=cmd_sens_merge)
    imp = sens.add_parser("import", help="convert a PaddleSlim/PaddleX pickle safely (no code runs)")
    imp.add_argument("pickle", help="a PaddleSlim sensitivities pickle or PaddleX *.sensi.data")
    imp.add_argument("out", help="the slim-plugins sensitivity file (JSON) to write")
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
