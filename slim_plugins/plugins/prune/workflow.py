"""The prune workflow as one object, run from ``slim_before_train``."""
import contextlib
import functools
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

from slim_plugins.errors import AdapterError, OptionError, StopRun
from slim_plugins.plugins.prune import calibrate, flops_model, latency, measure, report
from slim_plugins.plugins.prune.inventory import inventory, summary, table_text
from slim_plugins.plugins.prune.legacy import imported_sen_file
from slim_plugins.plugins.prune.model import PrunableModel, _dy2st_error, _opaque
from slim_plugins.plugins.prune.plan import PrunePlan, attach, attached, find_plan, make_plan, plan_path, replay
from slim_plugins.plugins.prune.ratios import (
    align_ratios,
    back_off,
    fixed_ratios,
    loss_at_ratio,
    plans_for_flops,
    ratios_by_loss,
    ratios_for_flops,
)
from slim_plugins.plugins.prune.sensitivity import (
    SensitivityFile,
    analyze,
    analyze_parallel,
    analyze_sharded,
    architecture_fingerprint,
    cap_for_flops,
    legacy_names,
    relative_loss,
    weights_fingerprint,
    write_json_atomic,
)


def log(message):
    sys.stderr.write(f"[slim-plugins prune] {message}\n")
    sys.stderr.flush()


def check_trained(metric, baseline):
    """Refuse a metric-driven analysis of a model that has learned nothing: every loss would be
    noise around chance, and the ratios chosen from it arbitrary."""
    if not metric.untrained(baseline):
        return
    chance = metric.chance or 0.0
    level = f", at chance ({f'{100 * chance:.4g}%' if metric.percent else f'{chance:.4g}'})" if chance > 0 else ""
    raise OptionError(
        f"the model's baseline {metric.name} is {metric.format(baseline)}{level}: it looks untrained, and "
        "sensitivities measured on it are noise", plugin="prune",
        hint=(metric.weights_hint or "load trained weights before the training starts")
        + "; or prune with fixed --prune.ratios")


def check_schedule(run, config):
    """``weights`` and ``after_epochs`` need an adapter that honoured them (hapi's); elsewhere the
    suite's own way to start from trained weights is the answer."""
    adapter = run.session.adapters.get(run.adapter)
    hint = getattr(adapter, "weights_hint", "") or "load trained weights before the training starts"
    if config.weights is not None and run.weights_loaded is None:
        raise OptionError(f"--prune.weights is for hapi scripts: the {run.adapter} adapter does not load it",
                          plugin="prune", hint=hint)
    if config.after_epochs is not None and run.epochs_done != config.after_epochs:
        raise OptionError(f"--prune.after_epochs: the {run.adapter} adapter has no epoch boundary to prune at",
                          plugin="prune", hint=hint + ", then run the train command again with the prune plugin")
    if run.weights_loaded is not None:
        log(f"loaded the trained weights {run.weights_loaded} before the analysis")
    if run.epochs_done:
        log(f"trained {run.epochs_done} epoch{'s' if run.epochs_done != 1 else ''} (prune.after_epochs): analysing "
            "and pruning now, then training on to the last epoch")


def replay_for_checkpoint(run, path):
    model = run.model
    if model is None:
        return
    found = find_plan(path)
    if found is None:
        return
    plan = PrunePlan.load(found)
    if replay(model, plan):
        log(f"rebuilt pruned shapes from {found} ({len(plan.shapes)} parameters) before loading weights")


@dataclass
class PruneResult:
    """What the prune plugin leaves in ``run.results["prune"]``: the report (also written as JSON
    by the main process, at ``report_path``)."""

    report: dict
    report_path: Optional[str] = None


def finish_report(run):
    """After training: the fine-tuned metric joins the report."""
    result = run.results.get("prune")
    report_data = result.report if result is not None else None
    metric = run.metric if report_data is not None else None
    if metric is None:
        return
    after = report_data["after_training"] = {"metric": metric(), "flops": report_data["after"]["flops"]}
    before = report_data["before"].get("metric")
    best = run.best_checkpoint
    if best is not None:
        after["best_checkpoint"] = {"path": best[0], "metric": best[1]}
    log(f"after training: {metric.name} {metric.format(after['metric'])}"
        + (f" (last epoch); the best checkpoint {best[0]}: {metric.name} {metric.format(best[1])}"
           if best is not None else "")
        + (f"; before pruning {metric.format(before)}" if before is not None else ""))
    if run.is_main_process and result.report_path:
        write_json_atomic(result.report_path, report_data)


def save_plan_with_checkpoint(run, path):
    model = run.model
    plan = attached(model) if model is not None else None
    if plan is None or not run.is_main_process:
        return
    plan.save(plan_path(path))


class PruneWorkflow:
    def __init__(self, run, config):
        self.run = run
        self.config = config
        self.model = run.model
        if self.model is None:
            raise AdapterError("the adapter gave no model to prune", plugin="prune")
        self.save_dir = run.save_dir
        self.report = {"paddle": __import__("paddle").__version__}

    # ------------------------------------------------------------------ stages
    def execute(self):
        """Resolve the inputs, trace and list the groups, analyse, choose ratios, apply, report.
        ``action`` show and analyze end the run (:class:`StopRun`) after their stage."""
        cfg = self.config
        check_schedule(self.run, cfg)
        self._check_options()
        if attached(self.model) is not None:
            if cfg.action == "prune":
                log("the model already carries a pruning plan (resumed checkpoint): not pruning again")
                return
            # show and analyze end the run whatever the model (adapters may have left out the train loader)
            log(f"the model already carries a pruning plan (resumed checkpoint): prune.action={cfg.action} "
                "of the pruned model")
        started = time.perf_counter()
        trace_inputs = self._resolve_inputs()
        prunable, rows = self._trace(trace_inputs)
        if cfg.action == "show":
            self._show(rows)
        self.prunable = prunable
        self.before["latency"] = self._latency()
        groups = self._groups(prunable, rows)
        sfile = None
        if cfg.ratios is not None:
            ratios = {g: r for g, r in fixed_ratios(prunable, cfg.ratios).items() if g in groups}
        else:
            sfile = self._analyze(prunable, groups)
            if cfg.action == "analyze":
                log(f"analysis done: {sfile.path}; exiting as prune.action=analyze asked")
                raise StopRun("prune.action=analyze")
            ratios = self._choose(prunable, sfile, groups)
        ratios = self._effective_ratios(prunable, ratios)
        if not ratios:
            log("no group can be pruned within the given budget: training the unpruned model")
            return
        plan = self._apply(prunable, ratios)
        self._measure_metric(sfile)
        self._write_report(plan, sfile, time.perf_counter() - started)

    def _check_options(self):
        """Option combinations no single option's check sees: one way to choose ratios."""
        cfg = self.config
        modes = [k for k in ("ratios", "eval_metric_loss", "pruned_flops", "pruned_latency")
                 if getattr(cfg, k) is not None]
        if cfg.action == "prune" and not modes:
            raise OptionError(
                "the prune plugin is on but has no way to choose ratios", plugin="prune",
                hint="give one of --prune.ratios 'glob=0.3', --prune.eval_metric_loss 0.02, "
                     "--prune.pruned_flops 0.3, --prune.pruned_latency 0.3 (or --prune.action show to list groups)")
        if len(modes) > 1:
            raise OptionError(f"choose ratios one way only, got {', '.join(modes)}", plugin="prune",
                              hint="keep one of ratios, eval_metric_loss, pruned_flops, pruned_latency")
        if cfg.action == "analyze" and cfg.ratios is not None:  # it would prune and train instead
            raise OptionError("prune.action analyze runs a sensitivity analysis, which fixed prune.ratios skip",
                              plugin="prune", hint="drop --prune.ratios to analyse, or use --prune.action prune "
                                                   "to prune by the ratios and train")

    def _resolve_inputs(self):
        """The adapter's trace inputs and check inputs, and the unpruned model's shapes and figures."""
        trace_inputs = self.run.trace_inputs()
        if trace_inputs is None:
            raise AdapterError("the adapter gave neither an input spec nor example inputs", plugin="prune",
                               hint="pass inputs=[InputSpec(...)] to paddle.Model")
        self.check_inputs = self.run.forward_inputs(1)
        # one workload for every FLOPs count of this run: a two-stage detector's RoI head at a fixed row count
        self.workload = measure.Workload(self.run.flops_rows)
        self.base_shapes = {n: list(p.shape) for n, p in self.model.named_parameters()}
        self.base_fingerprint = architecture_fingerprint(self.model)
        if self.config.action != "show":  # show reports no figures: its latency alone is 12 forwards
            self.before = self._measure()
        return trace_inputs

    def _trace(self, trace_inputs):
        """The model's coupled-channel groups and the inventory of its convs."""
        cfg = self.config
        log(f"tracing {type(self.model).__name__} ({cfg.criterion})")
        with self.run.trace_context():
            prunable = PrunableModel(self.model, trace_inputs, criterion=cfg.criterion, skip=cfg.skip,
                                     mode=self.run.trace_mode)
        rows = inventory(prunable, self.check_inputs)
        if cfg.action != "show":
            self._check_training_branches(prunable, rows)
        log(summary(rows))
        self.report["convs"] = [asdict(r) for r in rows]
        return prunable, rows

    def _show(self, rows):
        """``action=show``: the inventory on stdout, then the run ends."""
        print(table_text(rows))
        print(summary(rows))
        raise StopRun("prune.action=show")

    def _groups(self, prunable, rows):
        """The groups the choice may prune; why the others are left out goes to the log."""
        groups = prunable.selected_groups()
        for row in rows:
            if row.status == "skipped" and row.reason and self.run.is_main_process:
                log(f"skip {row.weight}: {row.reason}")
        if len(groups) < len(prunable.groups) - len(prunable.unsafe):
            log(f"{len(prunable.groups) - len(prunable.unsafe) - len(groups)} groups skipped by prune.skip")
        return groups

    def _effective_ratios(self, prunable, ratios):
        """``ratios`` aligned (fixed ratios), without the groups that would keep every channel."""
        cfg = self.config
        if cfg.align and cfg.ratios is not None:
            ratios = align_ratios(ratios, {g: prunable.groups[g].channels for g in ratios}, cfg.align)
        after = prunable.channels_after(ratios)
        noop = sorted(g for g in ratios if after[g] >= prunable.groups[g].channels)
        if noop:  # e.g. 1-channel groups: any ratio keeps the one channel
            log(f"{len(noop)} groups keep all their channels at the chosen ratio: left out ({', '.join(noop[:5])}"
                + (" ...)" if len(noop) > 5 else ")"))
            ratios = {g: r for g, r in ratios.items() if g not in noop}
        return ratios

    def _apply(self, prunable, ratios):
        """Prune the model in place and attach the plan that rebuilds its shapes."""
        self._latency_reference()
        prunable.prune(ratios, optimizer=self.run.optimizer, check_inputs=self.check_inputs)
        self.after = self._measure()
        plan = make_plan(prunable, ratios, self.base_shapes, self.base_fingerprint,
                         flops={"before": self.before["flops"], "after": self.after["flops"]},
                         params={"before": self.before["params"], "after": self.after["params"]})
        attach(self.model, plan)
        return plan

    def _measure_metric(self, sfile):
        """The pruned model's metric (before fine-tuning) next to the analysis's baseline."""
        metric = self.metric = self.run.metric if sfile is not None else None
        if metric is None:
            return
        self.before["metric"] = sfile.baseline
        self.after["metric"] = metric(max_batches=self.config.sen_batches)
        self.report["metric_name"] = metric.name
        self._report_whole_model_loss(sfile.baseline, self.after["metric"])

    def _check_training_branches(self, prunable, rows):
        """Skip groups whose pruning breaks a training forward on a real batch (a branch that runs
        only with labels, which no traced program shows)."""
        forward = self.run.train_forward
        if forward is None:
            return
        broken = prunable.breaking_groups(prunable.selected_groups(), forward)
        for group, error in broken.items():
            reason = f"breaks the training forward when pruned ({error}): a branch the traced programs miss"
            prunable.unsafe[group] = reason
            for row in rows:
                if row.weight == group:
                    row.status, row.reason = "skipped", reason

    def _measure(self):
        figures = {"flops": measure.flops(self.model, self.check_inputs, self.workload),
                   "params": measure.parameters(self.model)}
        if getattr(self, "prunable", None) is not None:  # the before figures: measured once traced
            figures["latency"] = self._latency()
        return figures

    # ------------------------------------------------------------------ latency (see latency.py)
    def _latency_batch_sizes(self):
        if not hasattr(self, "latency_batch_sizes"):
            size = self.config.latency_batch_size or latency.batch_size_of(self.run.eval_loader)
            if size is None:
                log("latency at batch 1 only: the adapter gives no eval batch size "
                    "(--prune.latency_batch_size N adds one)")
            self.latency_batch_sizes = sorted({1, size or 1})
        return self.latency_batch_sizes

    def _exported(self, onnx=True):
        """The model as it is now, exported for timing in the adapter's trace context (the suite's
        export paths: a detector's NMS through Paddle 3's PIR ops); sublayers the tracer replaced
        by stand-ins (post-processing that paddle.jit.to_static cannot convert) are replaced the
        same way."""
        opaque = self.prunable.opaque

        @contextlib.contextmanager
        def context():
            with self.run.trace_context(), (_opaque(self.model, opaque, self.check_inputs) if opaque
                                            else contextlib.nullcontext()):
                yield
        if opaque and not self.report.get("latency_excludes"):
            self.report["latency_excludes"] = sorted(opaque)
            log(f"latency excludes {', '.join(sorted(opaque))}: post-processing paddle.jit.to_static cannot convert")
        return latency.Exported(self.model, self.run.forward_inputs, self.config.latency_threads, onnx=onnx,
                                log=log, context=context)

    def _latency_reference(self):
        """The unpruned model exported now, to time the pruned one alongside: both predictors
        fresh (one made before the sensitivity analysis ran slower in our measurements)."""
        self.latency_reference = None
        if self.before.get("latency") is not None:
            self.latency_reference = self._exported()

    def _latency(self):
        """Latency entries of the model as it is now, exported (see latency.py). The pruned
        model is timed in turns with the unpruned one (latency.compare), and the report's "before"
        figures are those. None (logged) when the model does not export, unless pruned_latency
        needs it."""
        cfg = self.config
        try:
            exported = self._exported()
            if getattr(self, "latency_reference", None) is None:
                return latency.timed(exported, self._latency_batch_sizes())
            sizes = self._latency_batch_sizes()
            limits = latency.seconds(cfg.latency_seconds)
            log(f"timing the pruned and the unpruned model in turns ({len(exported.engines) * len(sizes)} comparisons "
                f"of {limits['min_seconds']:g} to {limits['max_seconds']:g} s)")
            # the largest batch first: the one pruned_latency targets, timed on fresh predictors as the search did
            before, after = latency.compare(self.latency_reference, exported, sorted(sizes, reverse=True), **limits)
            before, after = (sorted(x, key=lambda e: (e["runtime"], e["batch_size"])) for x in (before, after))
            self.before["latency"] = before
            self.report["latency_timed_alongside"] = True
            return after
        except Exception as exc:  # noqa: BLE001
            source, why = _dy2st_error(exc)
            message = (f"latency not measured: paddle.jit.save or Paddle Inference failed"
                       f"{' at ' + source if source else ''}: {type(exc).__name__}: {why}")
            if cfg.pruned_latency is not None:
                raise AdapterError(message, plugin="prune",
                                   hint="pruned_latency times the exported model: use pruned_flops for a model "
                                        "that paddle.jit.save cannot export") from exc
            log(message)
            return None

    def _latency_cut(self, prunable, ratios, batch_size, target=None):
        """The latency entry (``cut`` and its interval, ``ms``) of the model pruned at ``ratios``
        (then restored), timed in turns with the unpruned model, both exported now."""
        reference = self._exported(onnx=False)
        applied = prunable.apply(ratios)
        try:
            return latency.cut_against(reference, self.model, batch_size, target,
                                       max_seconds=self.config.latency_seconds)
        finally:
            applied.restore()

    def _choose_for_latency(self, prunable, sens, limits, channels, budget_report):
        cfg = self.config
        batch_size = max(self._latency_batch_sizes())
        base = latency.entry(self.before["latency"], batch_size)
        pruned_fraction = lambda ratios: self._pruned_fraction(prunable, ratios)  # noqa: E731
        shapes = []
        try:  # the sensitivities' shape: the loss-budget plan at the target taken as a FLOPs cut
            shape, _fraction, _budget = ratios_for_flops(sens, cfg.pruned_latency, pruned_fraction, channels, cfg.align)
            shapes.append(("loss-budget plan", shape))
        except OptionError:
            pass
        shapes.append(("uniform", {g: 1.0 for g in sens}))  # every group: when the plan's groups cannot reach it
        cut_of = lambda r: self._latency_cut(prunable, r, batch_size, cfg.pruned_latency)  # noqa: E731
        align = cfg.align or latency.ALIGN
        evaluations = []
        for how, shape in shapes:  # the next shape too when this one has no plan within the tolerance (a
            # latency that jumps between neighbouring plans: Paddle 2.6.2's oneDNN, 15.6% then 57.5%)
            found, cut, timed = latency.plan_for_latency(shape, cfg.pruned_latency, cut_of, limits, channels, align)
            evaluations += [dict(e, shape=how) for e in timed]
            if found is not None and abs(cut - cfg.pruned_latency) <= latency.TOLERANCE:
                break
        reached = [e for e in evaluations if e["cut"] >= cfg.pruned_latency - latency.TOLERANCE]
        chosen = min(reached, key=lambda e: abs(e["cut"] - cfg.pruned_latency)) if reached else None
        for e in evaluations:
            log(f"pruned_latency={cfg.pruned_latency}: {e['shape']} x {e['scale']:.3f} ({e['groups']} groups): "
                f"{base['label']} {e['ms']:.3f} ms, cut {e['cut']:.1%} ({latency.interval_text(e)}) against "
                "the unpruned model timed in turns" + ("  <- chosen" if e is chosen else ""))
        if chosen is None:
            cut = max(e["cut"] for e in evaluations) if evaluations else 0.0
            raise OptionError(
                f"pruned_latency={cfg.pruned_latency} cannot be reached: pruning every analysed group as far as "
                f"the sensitivities go cuts the measured {base['label']} by {cut:.1%}", plugin="prune",
                hint="lower pruned_latency, analyse more ratios (sen_ratios up to 0.9) or a larger latency_batch_size")
        ratios, cut, how = chosen["ratios"], chosen["cut"], chosen["shape"]
        budget_report["latency"] = {
            "target": cfg.pruned_latency, "tolerance": latency.TOLERANCE, "runtime": base["runtime"],
            "batch_size": batch_size, "threads": base["threads"], "label": base["label"],
            "baseline_ms": base["ms"], "shape": how, "align": align, "cut": cut,
            **{k: chosen[k] for k in ("cut_low", "cut_high", "pairs") if k in chosen},
            "evaluations": [{k: v for k, v in e.items() if k != "ratios"} for e in evaluations]}
        return ratios

    def _sen_file_path(self):
        path = self.config.sen_file or os.path.join(self.save_dir, "sensitivities.json")
        return path if self.config.sen_analyze else imported_sen_file(path, self.save_dir)

    def _analyze(self, prunable, groups):
        cfg = self.config
        metric = self.run.metric
        if metric is None:
            raise AdapterError(
                "sensitivity analysis needs the suite's metric, and the adapter gave none", plugin="prune",
                hint="give eval data and a metric to the training, or fixed --prune.ratios")
        cap = cfg.sen_loss_cap
        if cap is None and cfg.eval_metric_loss is not None:
            cap = cfg.eval_metric_loss
        path = self._sen_file_path()
        identity = dict(model_fingerprint=architecture_fingerprint(self.model),
                        weights=weights_fingerprint(self.model), metric=metric.name, criterion=cfg.criterion,
                        max_batches=cfg.sen_batches)
        rank, world_size = self.run.world
        check = functools.partial(check_trained, metric)
        common = dict(groups=groups, ratios=cfg.sen_ratios, cap=cap, max_batches=cfg.sen_batches,
                      check_baseline=check)
        if cfg.sen_analyze:
            log(f"sensitivity analysis of {len(groups)} groups x {len(cfg.sen_ratios)} ratios -> {path}"
                + (f" (rank {rank} of {world_size} analyses its share)" if world_size > 1 else "")
                + (f" with {cfg.sen_workers} workers" if cfg.sen_workers > 1 else ""))
        if not cfg.sen_analyze:
            if not os.path.exists(path):
                raise OptionError(f"prune.sen_analyze is false but the sensitivity file {path} does not exist",
                                  plugin="prune", hint="point prune.sen_file at an existing file")
            sfile = SensitivityFile.open(path, **identity)
            sfile.adopt_legacy_names(prunable.structured)
            missing = [g for g in groups if not sfile.losses(g)]
            log(f"sen_analyze=false: using {path} as it is; {len(missing)} of {len(groups)} groups have no "
                "sensitivities there and stay unpruned")
        elif world_size > 1:
            sfile = analyze_sharded(prunable, metric, path, identity, rank=rank, world_size=world_size,
                                    workers=cfg.sen_workers, stall_timeout=cfg.sen_worker_timeout,
                                    show_progress=True, **common)
        else:
            sfile = SensitivityFile.open(path, **identity)
            sfile.adopt_legacy_names(prunable.structured)

            def run_analysis(**kwargs):
                args = dict(common, **kwargs)
                if cfg.sen_workers > 1:
                    return analyze_parallel(prunable, metric, sfile, workers=cfg.sen_workers,
                                            stall_timeout=cfg.sen_worker_timeout, **args)
                return analyze(prunable, metric, sfile, search=cfg.sen_search, **args)

            if cap is None and cfg.pruned_flops is not None and cfg.sen_search:
                common["cap"] = self._cap_for_flops(prunable, sfile, groups, run_analysis)
            run_analysis()
        if cfg.sen_analyze and sfile.baseline is not None:  # also a finished file, analysed before
            check(sfile.baseline)
        if self.run.is_main_process:
            self._record_for_sens_ratios(prunable, sfile, groups)
        self.report["baseline_metric"] = sfile.baseline
        self.report["metric_name"] = metric.name
        failed = {g: sfile.failure(g) for g in groups if sfile.failure(g)}
        for name, failure in failed.items():
            if self.run.is_main_process:
                log(f"skip group {name}: pruning it at ratio {failure['ratio']} breaks the model "
                    f"({failure['error']})")
        if failed:
            self.report["broken_groups"] = failed
        return sfile

    def _record_for_sens_ratios(self, prunable, sfile, groups):
        """What `slim-plugins sens ratios` needs without the model: per-layer FLOPs data and the
        PaddleSlim names of the groups (added to files that lack them, sen_analyze=false too)."""
        changed = False
        if not sfile.flops:
            sfile.flops = flops_model.record(prunable, self.check_inputs, groups, self.workload)
            changed = True
        names = legacy_names(prunable)
        for group in groups:
            entry = sfile.groups.get(group)
            if entry is not None and not isinstance(entry.get("legacy_name"), str) and group in names:
                entry["legacy_name"] = names[group]
                changed = True
        if changed:
            sfile.save()
    def _pruned_fraction(self, prunable, ratios):
        """The fraction of FLOPs pruning ``ratios`` removes, measured on the model (then restored)."""
        base = self.before["flops"]
        applied = prunable.apply(ratios)
        try:
            return (base - measure.flops(self.model, self.check_inputs, self.workload)) / base
        finally:
            applied.restore()

    def _whole_loss(self, prunable, baseline, ratios, recalibrate=False):
        """Relative metric loss of the whole model pruned at ``ratios`` (then restored); a plan
        that breaks the model counts as an infinite loss. With ``recalibrate``, the batch norms'
        statistics are first re-estimated on the same eval batches (then put back), as the first
        steps of fine-tuning would: candidate plans are compared on what fine-tuning starts from."""
        try:
            applied = prunable.apply(ratios)
        except Exception as exc:
            log(f"a plan of {len(ratios)} groups cannot be applied, counted as over budget: {exc}")
            return float("inf")
        try:
            evaluate = functools.partial(calibrate.recalibrated, self.model, self.run.metric) if recalibrate \
                else self.run.metric
            value = evaluate(max_batches=self.config.sen_batches)
        except Exception as exc:
            log(f"the model pruned by a plan of {len(ratios)} groups fails to evaluate, counted as over budget: {exc}")
            return float("inf")
        finally:
            applied.restore()
        return relative_loss(baseline, value)

    def _cap_for_flops(self, prunable, sfile, groups, run_analysis):
        cfg = self.config
        found = cap_for_flops(sfile, groups, cfg.sen_ratios, cfg.pruned_flops,
                              lambda r: self._pruned_fraction(prunable, r), run_analysis)
        if found is None:
            return None  # unreachable: the analysis runs uncapped and the choice says why
        cap, uniform, probe = found
        log(f"pruned_flops={cfg.pruned_flops}: uniform ratio {uniform:.3f} reaches it; every group evaluated "
            f"at {probe:g}; loss cap for the analysis {cap:.4f}")
        self.report["derived_loss_cap"] = cap
        return cap

    def _limits(self, sfile, sens):
        """The largest ratio each group may take: below the ratio that broke it, if one did."""
        top = max(self.config.sen_ratios)
        limits = {}
        for group, losses in sens.items():
            failed = sfile.failure(group)
            if failed is None:
                limits[group] = top
            else:
                limits[group] = max([r for r in losses if r < float(failed["ratio"])] or [0.0])
        return limits

    def _choose(self, prunable, sfile, groups):
        cfg = self.config
        sens = {g: l for g, l in sfile.losses().items() if g in groups and l}
        channels = {g: prunable.groups[g].channels for g in sens}
        pruned_fraction = lambda ratios: self._pruned_fraction(prunable, ratios)  # noqa: E731
        baseline = sfile.baseline
        if baseline is None and cfg.budget_rule == "model":  # an imported legacy file has none
            baseline = self.run.metric(max_batches=cfg.sen_batches)
            log(f"the sensitivity file has no baseline metric: measured {self.run.metric.format(baseline)}")
        loss_of = lambda ratios: self._whole_loss(prunable, baseline, ratios)  # noqa: E731
        budget_report = {"rule": cfg.budget_rule}
        if cfg.pruned_latency is not None:
            ratios = self._choose_for_latency(prunable, sens, self._limits(sfile, sens), channels, budget_report)
        elif cfg.pruned_flops is not None and cfg.budget_rule == "per_group":
            ratios, fraction, budget = ratios_for_flops(sens, cfg.pruned_flops, pruned_fraction, channels, cfg.align)
            why = " (below 0: only groups whose pruning raised the metric)" if budget < 0 else ""
            log(f"pruned_flops={cfg.pruned_flops}: loss budget {budget:.4f}{why} removes {fraction:.1%} of FLOPs")
            self.report["chosen_budget"] = budget
        elif cfg.pruned_flops is not None:
            recalibrated = bool(calibrate.batch_norms(self.model))
            ratios, fraction, loss, candidates = plans_for_flops(
                sens, cfg.pruned_flops, pruned_fraction,
                lambda r: self._whole_loss(prunable, baseline, r, recalibrate=True),
                self._limits(sfile, sens), channels, cfg.align)
            after = " with batch-norm statistics re-estimated" if recalibrated else ""
            for c in candidates:
                log(f"pruned_flops={cfg.pruned_flops}: plan '{c['plan']}' removes {c['fraction']:.1%} of FLOPs, "
                    f"whole-model loss{after} {c['loss']:+.4f}" + ("  <- chosen" if c["ratios"] is ratios else ""))
            budget_report["batch_norm_recalibrated"] = recalibrated
            chosen = next(c for c in candidates if c["ratios"] is ratios)
            budget_report.update(plan=chosen["plan"], whole_model_loss_chosen=loss, evaluations=len(candidates),
                                 candidates=[{k: v for k, v in c.items() if k != "ratios"} for c in candidates])
        else:
            self.report["chosen_budget"] = cfg.eval_metric_loss
            if cfg.budget_rule == "model":
                ratios, loss, scale, evaluations = back_off(sens, cfg.eval_metric_loss, loss_of, channels, cfg.align)
                first = evaluations[0]["loss"] if evaluations else 0.0
                if scale < 1:
                    log(f"eval_metric_loss={cfg.eval_metric_loss}: the per-group ratios lose {first:+.4f} on the whole "
                        f"model; backed off to per-group budgets of {scale:.3f} x {cfg.eval_metric_loss}: "
                        f"whole-model loss {loss:+.4f} ({len(evaluations)} evaluations)")
                budget_report.update(scale=scale, whole_model_loss_chosen=loss, evaluations=len(evaluations),
                                     backoff=evaluations)
            else:
                ratios = align_ratios(ratios_by_loss(sens, cfg.eval_metric_loss), channels, cfg.align)
        budget_report["per_group"] = {g: {"ratio": r, "loss": loss_at_ratio(sens[g], r)} for g, r in ratios.items()
                                      if g in sens}
        self.report["budget"] = budget_report
        if cfg.plot and self.run.is_main_process:
            missing = report.plotting_unavailable()
            if missing:
                log(missing)
            else:
                self._plots(prunable, sfile, sens, ratios)
        return ratios

    def _report_whole_model_loss(self, baseline, value):
        """The pruned model's measured loss next to the budget it was chosen for."""
        if baseline is None:  # an imported legacy file without a baseline
            return
        budget = self.report.setdefault("budget", {"rule": self.config.budget_rule})
        loss = relative_loss(baseline, value)
        budget["whole_model_loss"] = loss
        target = self.config.eval_metric_loss
        budget["within_budget"] = None if target is None else loss <= target + 1e-12
        per_group = budget.get("per_group") or {}
        worst = max((e["loss"] for e in per_group.values()), default=0.0)
        log(f"whole-model loss before fine-tuning {loss:+.4f}" + (f" (budget {target})" if target is not None else "")
            + (f"; per-group losses up to {worst:+.4f} ({len(per_group)} group{'s' if len(per_group) != 1 else ''})"
               if per_group else ""))

    def _plots(self, prunable, sfile, sens, ratios):
        """The sensitivity curves next to the sensitivity file (each group's chosen ratio marked);
        pruned FLOPs against the loss budget next to the report, over budgets that reach past
        the chosen plan's (detectors' losses run far beyond 0.1), the chosen plan marked."""
        name = sfile.data["metric"].get("name") or self.report.get("metric_name") or "metric"
        curves = os.path.splitext(sfile.path)[0] + ".png"
        report.plot_sensitivities(sens, curves, name, budget=self.config.eval_metric_loss, chosen=ratios)
        per_group = (self.report.get("budget") or {}).get("per_group") or {}
        worst = max([e["loss"] for e in per_group.values()] + [0.0])
        chosen = self.report.get("chosen_budget")
        top = max(0.1, 1.25 * max(chosen or 0.0, worst))
        points = []
        for i in range(1, 21):
            budget = top * i / 20
            points.append((budget, self._pruned_fraction(prunable, ratios_by_loss(sens, budget))))
        flops = os.path.splitext(self._report_path())[0] + ".flops.png"
        report.plot_flops_vs_budget(points, flops, name, chosen=chosen,
                                    plan=(worst, self._pruned_fraction(prunable, ratios), "chosen plan"))
        self.report["plots"] = [curves, flops]

    def _report_path(self):
        return self.config.report or os.path.join(self.save_dir, "prune_report.json")

    def _write_report(self, plan, sfile, seconds):
        held = self.workload.describe()
        if held:
            self.report["flops_rows"] = held
            rows = ", ".join(map(str, sorted(set(held["rows"].values()))))
            low = min(m[0] for m in held["measured"].values())
            high = max(m[1] for m in held["measured"].values())
            log(f"FLOPs held at {rows} rows in {len(held['rows'])} layers whose row count the data decides "
                f"({next(iter(held['rows']))} ...; measured {low}..{high}): before, after and every plan "
                "compared count the same work")
        self.report.update({
            "criterion": plan.criterion, "ratios": plan.ratios, "channels": plan.channels,
            "before": self.before, "after": self.after, "seconds": round(seconds, 2),
            "sensitivity_file": sfile.path if sfile else None,
        })
        metric = getattr(self, "metric", None)
        print(report.before_after_table(self.before, self.after,
                                        f"{self.report.get('metric_name', 'metric')} (before fine-tuning)",
                                        metric_format=metric.format if metric else None),
              file=sys.stderr)
        groups = f"{len(plan.ratios)} group{'s' if len(plan.ratios) != 1 else ''}"
        log(f"pruned {groups}: FLOPs {self.before['flops']} -> {self.after['flops']} "
            f"({(self.after['flops'] - self.before['flops']) / self.before['flops']:+.1%})")
        for line in report.latency_lines(self.before.get("latency"), self.after.get("latency")):
            log(line)
        if self.before.get("latency") and not latency.onnx_available():
            log(latency.ONNX_MISSING)
        self.run.results["prune"] = result = PruneResult(self.report)
        if not self.run.is_main_process:
            return
        self.report_path = self._report_path()
        write_json_atomic(self.report_path, self.report)
        plan.save(os.path.join(self.save_dir, "prune_plan.json"))
        result.report_path = self.report_path
