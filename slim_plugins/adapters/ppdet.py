"""The PaddleDetection adapter (paddledet 2.6): ``tools/train.py``, ``eval.py``, ``export_model.py``
and resume (``train.py -r``) run unchanged.

Patches, once ``ppdet.engine.trainer`` is imported and its targets are checked (see docs/ppdet.md),
in every process:

* ``Trainer.__init__``: reads a ``plugins:`` section of the loaded config (``-o plugins.prune.KEY=V``
  reaches it), and a legacy ``slim: Pruner`` config; records the run. When a plugin will end the
  run before training (``prune.action=show``/``analyze``), a train-mode Trainer gets a
  :class:`~slim_plugins.adapters.SkippedTrainLoader` for its TrainReader: no annotations parsed,
  no worker processes, no prefetch.
* ``Trainer.load_weights`` / ``resume_weights``: ``slim_before_load_weights`` first, then
  ``slim_after_load_weights`` (ppdet skips a tensor whose shape differs silently).
* ``ppdet.slim.build_slim_model``: a ``--slim_config`` with ``slim: Pruner`` becomes the prune
  plugin's fixed ratios instead of PaddleSlim's own pruning.

and once a plugin is enabled (or a load rebuilt pruned shapes):

* ``Trainer.train``: fires ``slim_before_train`` (model in eval mode, so tracing takes the
  inference path) before ppdet wraps DataParallel, then rebuilds ``trainer.ema`` when shapes
  changed; ``slim_after_train`` with the EMA weights applied (what ppdet saves); ``slim_on_run_end``
  whatever ends the call (the evaluation's temporary files go then).
* ``ppdet.engine.callbacks.save_model``: ``slim_on_checkpoint_save`` after every snapshot.
* ``Trainer.export``: ``slim_before_export``; works around paddledet 2.6.0's export bug.

Nothing here imports ppdet at module level: the module imports without it.
"""
import contextlib
import copy
import functools
import inspect
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from slim_plugins.adapters import Adapter, SkippedTrainLoader, parameter_shapes
from slim_plugins.errors import AdapterError, OptionError, exception_line, user_errors
from slim_plugins.hooks import hookimpl
from slim_plugins.run import EvalBatches, Metric

_MODES = {"train": "train", "eval": "eval", "test": "export"}
DEFAULT_SIZE = 640  # input side when the config names none (ppdet's usual default)


@dataclass
class PPDetState:
    """The ppdet adapter's record of a Trainer's run.

    :ivar eval_data: the eval reader and metrics built per ``max_batches`` (:class:`_EvalData`).
    :ivar tmp_dirs: temporary folders of those evaluations, removed when the run ends.
    """

    eval_data: Dict[Optional[int], Any] = field(default_factory=dict)
    tmp_dirs: List[str] = field(default_factory=list)


class PPDetAdapter(Adapter):
    name = "ppdet"
    weights_hint = "load trained weights: -o pretrain_weights=PATH (or weights=PATH)"
    modules = ("ppdet.engine.trainer",)
    distributions = ("paddledet",)
    supported = ("2.6.",)
    targets = {"ppdet.engine.trainer:Trainer.__init__": ("cfg",), "ppdet.engine.trainer:Trainer.train": (),
               "ppdet.engine.trainer:Trainer.load_weights": ("weights",),
               "ppdet.engine.trainer:Trainer.resume_weights": ("weights",),
               "ppdet.engine.trainer:Trainer.export": ("output_dir",),
               "ppdet.engine.trainer:Trainer._init_metrics": ("validate",),
               "ppdet.engine.callbacks:save_model": ("model", "optimizer", "save_dir", "save_name"),
               "ppdet.core.workspace:create": (), "ppdet.core.workspace:load_config": (),
               "ppdet.engine.trainer:create": (),
               "ppdet.optimizer:ModelEMA": ()}
    state_class = PPDetState

    def patched(self):
        from ppdet.engine.trainer import Trainer

        return bool(getattr(Trainer.train, "_slim_patched", False))

    def __init__(self):
        self.current_run = None  # the run of the latest Trainer: save_model gets no trainer

    # ------------------------------------------------------------------ patching, in stages
    def install_loading(self, session):
        """Every process: the config readers (a ``plugins:`` section, a legacy ``slim: Pruner``)
        and the weight loads."""
        from ppdet.engine.trainer import Trainer

        from slim_plugins import _boot

        if getattr(Trainer.load_weights, "_slim_patched", False):
            return
        self._patch_init(Trainer)
        self._patch_loads(Trainer)
        _boot.watcher.watch("ppdet.slim", _patch_build_slim_model)

    def install_training(self, session):
        """With a plugin on (or a pruned model loaded): train, checkpoints, export."""
        from ppdet.engine import callbacks
        from ppdet.engine.trainer import Trainer

        if getattr(Trainer.train, "_slim_patched", False):
            return
        self._patch_save_model(callbacks)
        self._patch_export(Trainer)
        self._patch_train(Trainer)  # last: patched() reads it

    def _patch_init(self, Trainer):
        """``Trainer.__init__``: the loaded config may switch plugins on; the run is recorded."""
        init, adapter = Trainer.__init__, self

        @functools.wraps(init)
        def patched_init(trainer, cfg, *args, **kwargs):
            configure_from_config(cfg)
            mode = kwargs.get("mode", args[0] if args else "train")  # Trainer(cfg, mode='train')
            with _train_reader_left_out(cfg, mode):
                init(trainer, cfg, *args, **kwargs)
            adapter.current_run = adapter.trainer_run(trainer)

        patched_init._slim_patched = True
        Trainer.__init__ = patched_init

    def _patch_loads(self, Trainer):
        """``load_weights`` / ``resume_weights``: ``slim_before_load_weights`` (a rebuilt model
        gets a new EMA), then ``slim_after_load_weights``: ppdet skips mismatched tensors silently."""
        load_weights, resume_weights, adapter = Trainer.load_weights, Trainer.resume_weights, self

        def before_load(trainer, weights):
            changed = adapter.announce_load(adapter.trainer_run(trainer), weights)
            if changed:
                _rebuild_ema(trainer)
            return changed

        def after_load(trainer, weights, exact):
            if weights is not None:
                adapter.fire(adapter.trainer_run(trainer), "slim_after_load_weights", path=str(weights), exact=exact)

        @functools.wraps(load_weights)
        def patched_load_weights(trainer, weights, *args, **kwargs):
            if getattr(trainer, "is_loaded_weights", False):  # ppdet ignores the call
                return load_weights(trainer, weights, *args, **kwargs)
            changed = before_load(trainer, weights)
            result = load_weights(trainer, weights, *args, **kwargs)
            # a pretrain load into a fresh train model may skip mismatched heads on purpose
            after_load(trainer, weights, exact=trainer.mode != "train" or changed)
            return result

        @functools.wraps(resume_weights)
        def patched_resume_weights(trainer, weights, *args, **kwargs):
            before_load(trainer, weights)
            result = resume_weights(trainer, weights, *args, **kwargs)
            after_load(trainer, weights, exact=True)
            return result

        for patched in (patched_load_weights, patched_resume_weights):
            patched._slim_patched = True
        Trainer.load_weights, Trainer.resume_weights = patched_load_weights, patched_resume_weights

    def _patch_train(self, Trainer):
        """``Trainer.train``: ``slim_before_train`` (model in eval mode: tracing takes the
        inference path) before ppdet wraps DataParallel, a new EMA when shapes changed;
        ``slim_after_train`` with the EMA weights applied; ``slim_on_run_end`` either way."""
        train, adapter = Trainer.train, self

        @functools.wraps(train)
        def patched_train(trainer, *args, **kwargs):
            run = adapter.trainer_run(trainer)
            with adapter.training(run):
                if not run.before_train_fired:
                    model = trainer.model
                    shapes = parameter_shapes(model)
                    was_training = model.training
                    model.eval()  # the train-mode forward of a detector needs ground truth
                    try:
                        with user_errors():
                            adapter.fire_before_train(run)
                    finally:
                        if was_training:
                            model.train()
                    if shapes != parameter_shapes(model):
                        _rebuild_ema(trainer)
                result = train(trainer, *args, **kwargs)
                with _ema_weights(trainer):
                    adapter.fire(run, "slim_after_train")
            return result

        patched_train._slim_patched = True
        Trainer.train = patched_train

    def _patch_save_model(self, callbacks):
        """``callbacks.save_model`` (imported there by name): ``slim_on_checkpoint_save`` for every
        weights file a snapshot writes, before the weights."""
        save_model, adapter = callbacks.save_model, self

        @functools.wraps(save_model)
        def patched_save_model(model, optimizer, save_dir, save_name, *args, **kwargs):
            run = adapter.current_run
            first = [os.path.join(save_dir, save_name)]
            if save_name == "best_model":  # PaddleDetection develop also writes best_model/model.pdparams
                first.append(os.path.join(save_dir, "best_model", "model"))
            if run is not None:  # the plans before the weights (a kill between leaves no stale plan)
                for path in first:
                    adapter.fire(run, "slim_on_checkpoint_save", path=path)
            before = _weights_files(save_dir)
            result = save_model(model, optimizer, save_dir, save_name, *args, **kwargs)
            if run is not None and save_name == "best_model":
                run.best_checkpoint = _best_checkpoint(run.handle, first[0])
            if run is not None:  # any other weights file the call wrote gets its plan too
                covered = {os.path.normpath(f) for f in first}
                for path in sorted(p for p, stamp in _weights_files(save_dir).items()
                                   if before.get(p) != stamp and os.path.normpath(p) not in covered):
                    adapter.fire(run, "slim_on_checkpoint_save", path=path)
            return result

        patched_save_model._slim_patched = True
        callbacks.save_model = patched_save_model

    def _patch_export(self, Trainer):
        """``Trainer.export``: ``slim_before_export``; works around paddledet 2.6.0's export bug."""
        export, adapter = Trainer.export, self

        @functools.wraps(export)
        def patched_export(trainer, output_dir="output_inference", *args, **kwargs):
            run = adapter.trainer_run(trainer)
            name = os.path.splitext(os.path.basename(trainer.cfg.filename))[0]
            adapter.fire(run, "slim_before_export", path=os.path.join(output_dir, name))
            _sync_reparam_channels(trainer.model)
            import ppdet.modeling.ops as ops

            with _full_graph_to_static(), pir_detection_ops(ops):
                try:
                    return export(trainer, output_dir, *args, **kwargs)
                except TypeError as exc:
                    if "multiclass_nms3" not in str(exc):
                        raise
                    import paddle

                    reason = exception_line(exc, last=True, with_type=False)
                    raise AdapterError(
                        f"paddledet {_ppdet_version()} cannot export its multiclass_nms under Paddle "
                        f"{paddle.__version__}'s new IR (PIR), pruned or not: {reason}",
                        hint="export without NMS (`-o export.nms=False`, for PP-YOLOE `-o exclude_nms=True`: "
                             "boxes and scores, NMS in your deployment), or with a PaddleDetection whose "
                             "ppdet/modeling/ops.py multiclass_nms has a PIR branch") from exc

        patched_export._slim_patched = True
        Trainer.export = patched_export

    def trainer_run(self, trainer):
        from slim_plugins.session import get_session

        return self.run_for(get_session(), trainer, mode=_MODES.get(getattr(trainer, "mode", ""), "train"))

    # ------------------------------------------------------------------ what it exposes
    def model(self, run):
        return run.handle.model

    def optimizer(self, run):
        return getattr(run.handle, "optimizer", None)

    def train_loader(self, run):
        return run.handle.loader if run.handle.mode == "train" else None

    def eval_loader(self, run):
        return _EvalData.of(run, None).loader

    def metric(self, run):
        cfg = run.handle.cfg
        if cfg.get("metric") not in ("COCO", "VOC"):
            return None
        name = "COCO bbox mAP" if cfg.metric == "COCO" else "VOC bbox mAP (%)"

        def evaluate(max_batches=None):
            return _EvalData.of(run, max_batches).evaluate(run.handle.model)

        return Metric(name, evaluate, chance=0.0, weights_hint=self.weights_hint,
                      percent=cfg.metric == "VOC")  # ppdet prints VOC mAP in %, COCO's as a fraction

    def forward_inputs(self, run, batch_size):
        import paddle

        h, w = input_size(run.handle.cfg)
        return [{
            "image": paddle.ones([batch_size, 3, h, w], dtype="float32"),
            "im_shape": paddle.to_tensor([[float(h), float(w)]] * batch_size, dtype="float32"),
            "scale_factor": paddle.ones([batch_size, 2], dtype="float32"),
        }]

    def trace_inputs(self, run):
        # PaddleSlim feeds every value of the dict as a static input and calls model(dict)
        return self.forward_inputs(run, 1)

    def trace_context(self, run):
        import ppdet.modeling.ops as ops

        return tracing_detector(run.handle.model, ops)

    def flops_rows(self, run):
        """Two-stage detectors: the RoI head runs once per RPN proposal, at most the test
        ``post_nms_top_n`` per image; the FLOPs are counted at that many (how many the RPN keeps
        depends on the weights: a handful in a freshly initialised model, the cap in a trained one)."""
        model = run.handle.model
        proposals = getattr(getattr(getattr(model, "rpn_head", None), "test_proposal", None), "post_nms_top_n", None)
        if not isinstance(proposals, int) or getattr(model, "bbox_head", None) is None:
            return None
        return {"bbox_head": proposals}

    def save_dir(self, run):
        # where this ppdet's Checkpointer writes: 2.6 save_dir/<config name>, develop save_dir itself
        for callback in getattr(run.handle, "_callbacks", None) or ():
            if type(callback).__name__ == "Checkpointer" and getattr(callback, "save_dir", None):
                return callback.save_dir
        cfg = run.handle.cfg
        return os.path.join(cfg.get("save_dir", "output"), cfg.get("filename", "model"))

    def world(self, run):
        trainer = run.handle
        if hasattr(trainer, "_nranks"):
            return int(trainer._local_rank), int(trainer._nranks)
        return None


# ---------------------------------------------------------------------- configuration
def configure_from_config(cfg):
    """A ``plugins:`` section and a legacy ``slim: Pruner`` in the loaded ppdet config."""
    from slim_plugins.session import get_session

    session = get_session()
    label = f"{cfg.get('filename', 'the ppdet config')}.yml plugins:"
    section = cfg.get("plugins")
    if section:
        session.configure_from_mapping(_plain(section), label=label)
    if cfg.get("slim") == "Pruner":
        # ppdet's own Trainer would look for cfg.slim_type and PaddleSlim's pruner
        options = legacy_pruner_options(cfg.get("Pruner"), f"the Pruner section of {cfg.get('filename')}")
        session.enable("prune", options, source="yaml")
        cfg.pop("slim")


# architectures whose Trainer.__init__ reads the parsed train dataset (identities of MOT models)
_NEEDS_TRAIN_DATASET = ("JDE", "FairMOT", "DeepSORT")


@contextlib.contextmanager
def _train_reader_left_out(cfg, mode):
    """A train-mode ``Trainer.__init__`` builds the TrainReader: parses the train annotations,
    starts ``worker_num`` processes that prefetch batches. When a plugin will end the run before
    training (``prune.action=show``/``analyze``), ``create('TrainReader')`` gives a
    :class:`SkippedTrainLoader` meanwhile (one batch per epoch for the learning-rate schedule)."""
    from slim_plugins.session import get_session

    reason = get_session().stops_before_train() if str(mode).lower() == "train" else None
    if not reason or cfg.get("architecture") in _NEEDS_TRAIN_DATASET:
        yield
        return
    import ppdet.engine.trainer as module

    create = module.create

    def create_without_train_reader(name, *args, **kwargs):
        if name == "TrainReader":
            return lambda *_args, **_kwargs: SkippedTrainLoader(reason, "ppdet", "train reader")
        return create(name, *args, **kwargs)

    module.create = create_without_train_reader
    try:
        yield
    finally:
        module.create = create


def legacy_pruner_options(pruner, label="the Pruner section"):
    """ppdet's ``Pruner: {criterion, pruned_params, pruned_ratios}`` -> prune plugin options."""
    pruner = dict(pruner or {})
    params = list(pruner.get("pruned_params") or [])
    ratios = list(pruner.get("pruned_ratios") or [])
    if not params:
        raise OptionError(f"{label} lists no pruned_params", plugin="prune",
                          hint="name the conv weights to prune, e.g. pruned_params: ['backbone.conv1._conv.weight']")
    if len(params) != len(ratios):
        raise OptionError(
            f"{label} has {len(params)} pruned_params but {len(ratios)} pruned_ratios", plugin="prune",
            hint="give one ratio per parameter, in the same order")
    doubles = sorted({p for p in params if params.count(p) > 1})
    if doubles:
        raise OptionError(f"{label} names {', '.join(doubles)} more than once", plugin="prune")
    options = {"ratios": {str(p): float(r) for p, r in zip(params, ratios)}}
    if pruner.get("criterion"):
        options["criterion"] = str(pruner["criterion"])
    return options


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _patch_build_slim_model(module):
    build = getattr(module, "build_slim_model", None)
    if build is None:
        raise AdapterError(f"paddledet {_ppdet_version()} has no ppdet.slim.build_slim_model, which the ppdet "
                           "adapter patches", plugin="ppdet",
                           hint="install a version the ppdet adapter supports (2.6.x), or run without --plugin")
    if getattr(build, "_slim_patched", False):
        return

    @functools.wraps(build)
    def patched_build_slim_model(cfg, slim_cfg, *args, **kwargs):
        with open(slim_cfg) as f:
            kind = _peek_slim_kind(f.read())
        if kind != "Pruner":
            return build(cfg, slim_cfg, *args, **kwargs)
        # merge the slim config as ppdet does (epochs, learning rate, pretrain_weights), and let
        # the prune plugin do the pruning: Trainer.__init__ converts the Pruner section
        from ppdet.core.workspace import load_config

        return load_config(slim_cfg)

    patched_build_slim_model._slim_patched = True
    module.build_slim_model = patched_build_slim_model


def _peek_slim_kind(text):
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    data = yaml.load(text, Loader=_Loader) or {}
    return data.get("slim") if isinstance(data, dict) else None


def _best_checkpoint(trainer, path):
    """``(path, best mAP)`` as ppdet's Checkpointer measured it before saving ``best_model``."""
    for callback in getattr(trainer, "_callbacks", None) or ():
        if type(callback).__name__ == "Checkpointer" and getattr(callback, "best_ap", None) is not None:
            return path, float(callback.best_ap)
    return None


def _weights_files(save_dir):
    """``{checkpoint prefix: (mtime, size)}`` of the .pdparams files in ``save_dir`` and its
    direct subdirectories."""
    found = {}
    save_dir = str(save_dir)
    if not os.path.isdir(save_dir):
        return found
    for entry in os.scandir(save_dir):
        entries = [entry]
        if entry.is_dir():
            try:
                entries = list(os.scandir(entry.path))
            except OSError:
                continue
        for e in entries:
            if e.is_file() and e.name.endswith(".pdparams"):
                stat = e.stat()
                found[e.path[: -len(".pdparams")]] = (stat.st_mtime_ns, stat.st_size)
    return found


# ---------------------------------------------------------------------- model helpers
def _rebuild_ema(trainer):
    """ModelEMA holds zeros_like copies of the old shapes: build a new one (reset() keeps them)."""
    if not getattr(trainer, "use_ema", False) or getattr(trainer, "ema", None) is None:
        return
    from ppdet.optimizer import ModelEMA

    cfg = trainer.cfg
    trainer.ema = ModelEMA(
        trainer.model, decay=cfg.get("ema_decay", 0.9998), ema_decay_type=cfg.get("ema_decay_type", "threshold"),
        cycle_epoch=cfg.get("cycle_epoch", -1), ema_black_list=cfg.get("ema_black_list", None),
        ema_filter_no_grad=cfg.get("ema_filter_no_grad", False))


@contextlib.contextmanager
def _ema_weights(trainer):
    """The EMA weights in ``trainer.model`` meanwhile: what ppdet's checkpoints hold."""
    ema = getattr(trainer, "ema", None) if getattr(trainer, "use_ema", False) else None
    if ema is None or ema.step == 0:
        yield
        return
    model = trainer.model
    saved = copy.deepcopy(model.state_dict())
    epoch, cycle = ema.epoch, ema.cycle_epoch
    ema.cycle_epoch = -1  # apply() must not count an epoch or reset the averages
    try:
        model.set_dict(ema.apply())
    finally:
        ema.epoch, ema.cycle_epoch = epoch, cycle
    try:
        yield
    finally:
        model.set_dict(saved)


def _sync_reparam_channels(model):
    """Re-parameterizable blocks (PP-YOLOE's and RT-DETR's RepVggBlock, MobileOne) keep their
    channel counts in ``ch_in``/``ch_out`` and build the fused conv of ``convert_to_deploy`` (run by
    ``export``) from them: after pruning they must be the convs' own counts, or the fused kernel
    does not fit."""
    for layer in model.sublayers(include_self=True):
        if not (hasattr(layer, "convert_to_deploy") and isinstance(getattr(layer, "ch_in", None), int)
                and isinstance(getattr(layer, "ch_out", None), int)):
            continue
        if hasattr(layer, "conv1") and hasattr(getattr(layer, "conv1"), "conv"):  # RepVggBlock
            first = last = layer.conv1.conv
        elif hasattr(layer, "depth_conv") and hasattr(layer, "point_conv"):  # MobileOneBlock
            first, last = layer.depth_conv[0].conv, layer.point_conv[0].conv
        else:
            continue
        layer.ch_in = int(first.weight.shape[1]) * int(getattr(first, "_groups", 1) or 1)
        layer.ch_out = int(last.weight.shape[0])


def input_size(cfg):
    """(H, W) the model runs at: TestReader.inputs_def.image_shape, else the eval Resize."""
    shape = (cfg.get("TestReader") or {}).get("inputs_def", {}).get("image_shape")
    if shape and len(shape) >= 2 and all(d and d > 0 for d in shape[-2:]):
        return int(shape[-2]), int(shape[-1])
    for transform in (cfg.get("EvalReader") or {}).get("sample_transforms", []) or []:
        if isinstance(transform, dict) and "Resize" in transform:
            size = transform["Resize"].get("target_size")
            if isinstance(size, int):
                return size, size
            if size:
                return int(size[0]), int(size[-1])
    return DEFAULT_SIZE, DEFAULT_SIZE


def _ppdet_version():
    from importlib import metadata

    try:
        return metadata.version("paddledet")
    except metadata.PackageNotFoundError:
        return "(from a source checkout)"


@contextlib.contextmanager
def _full_graph_to_static():
    """paddledet 2.6.0's Trainer.export calls ``paddle.jit.to_static(model)`` and then reads
    ``.forward.main_program``, which Paddle >= 2.6 allows only with ``full_graph=True`` (fixed
    upstream after the 2.6.0 wheel). Default ``full_graph=True`` while exporting."""
    import paddle

    to_static = paddle.jit.to_static
    try:  # Paddle 2.6 takes it through **kwargs
        params = inspect.signature(to_static).parameters
        accepts = "full_graph" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        accepts = False
    if not accepts:
        yield
        return

    @functools.wraps(to_static)
    def full_graph(*args, **kwargs):
        kwargs.setdefault("full_graph", True)
        return to_static(*args, **kwargs)

    paddle.jit.to_static = full_graph
    try:
        yield
    finally:
        paddle.jit.to_static = to_static


# RPNHead.export_onnx is left alone: its single-image path indexes a 0-D shape (fails on Paddle >= 2.6)
_SINGLE_IMAGE_FLAGS = {"RCNNBox": ("export_onnx",), "BBoxPostProcess": ("export_eb",)}


@contextlib.contextmanager
def tracing_detector(model, ops):
    """What a ppdet-style detector (paddledet 2.6, PaddleX 2's copy of it) needs to become a
    program on both Paddle versions, without changing what the network computes up to NMS: the
    detection ops through Paddle's PIR API (:func:`pir_detection_ops`), and the suite's own
    export paths where Paddle 3 cannot convert the default one (a Python loop over the images of a
    batch): ``RCNNBox.export_onnx`` decodes the boxes of one image (we trace one image), and
    ``BBoxPostProcess.export_eb`` leaves out the rescaling of the boxes NMS kept. Both read boxes,
    never channels. The training forward needs ground truth the trace inputs lack: ``get_loss``
    fails at once instead of after seconds of conversion."""
    flags, seen = [], set()

    def visit(owner, depth):  # layers, and the plain objects they hold (post_process.decode ...)
        if id(owner) in seen or depth > 3:
            return
        seen.add(id(owner))
        for name in _SINGLE_IMAGE_FLAGS.get(type(owner).__name__, ()):
            if isinstance(getattr(owner, name, None), bool):
                flags.append((owner, name))
        for value in vars(owner).values():
            if hasattr(value, "__dict__") and not callable(getattr(value, "numpy", None)) and not isinstance(
                    value, type) and type(value).__module__.split(".")[0] in ("ppdet", "paddlex"):
                visit(value, depth + 1)

    for layer in model.sublayers(include_self=True):
        visit(layer, 0)
    saved = [(owner, name, getattr(owner, name)) for owner, name in flags]
    own = vars(model).get("get_loss")

    def get_loss(*_args, **_kwargs):  # fail at once, not after converting the whole network
        raise RuntimeError("a detector's training forward needs ground-truth boxes, which tracing does not have")

    try:
        for owner, name in flags:
            setattr(owner, name, True)
        if hasattr(model, "get_loss"):
            model.get_loss = get_loss
        with pir_detection_ops(ops):
            yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        vars(model).pop("get_loss", None)
        if own is not None:
            model.get_loss = own


@contextlib.contextmanager
def pir_detection_ops(ops):
    """paddledet 2.6.0's ``ops.multiclass_nms`` / ``ops.matrix_nms`` (and PaddleX 2's copy, with
    ``ops.yolo_box``) build their op with the old static API only (``LayerHelper.append_op``),
    which Paddle 3's PIR programs refuse: ``to_static`` fails on every detector's eval forward.
    While the model is traced, ``ops`` (the suite's ``modeling/ops.py`` module) builds the same ops
    through Paddle's PIR API, as later PaddleDetection releases do; the program is the inference
    program, NMS included. Nothing changes on the old IR (Paddle 2.6) or in dygraph."""
    import paddle

    in_pir = getattr(paddle.framework, "in_pir_mode", None)
    saved = {name: getattr(ops, name, None) for name in ("multiclass_nms", "matrix_nms", "yolo_box")}
    if in_pir is None or saved["multiclass_nms"] is None:
        yield
        return
    multiclass, matrix, yolo = saved["multiclass_nms"], saved["matrix_nms"], saved["yolo_box"]

    @paddle.jit.not_to_static
    def multiclass_nms(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold=0.3,
                       normalized=True, nms_eta=1.0, background_label=-1, return_index=False,
                       return_rois_num=True, rois_num=None, name=None):
        if not in_pir():
            return multiclass(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized,
                              nms_eta, background_label, return_index, return_rois_num, rois_num, name)
        out, index, nms_rois_num = paddle._C_ops.multiclass_nms3(
            bboxes, scores, rois_num, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized, nms_eta,
            background_label)
        return out, nms_rois_num if return_rois_num else None, index if return_index else None

    @paddle.jit.not_to_static
    def matrix_nms(bboxes, scores, score_threshold, post_threshold, nms_top_k, keep_top_k, use_gaussian=False,
                   gaussian_sigma=2.0, background_label=0, normalized=True, return_index=False,
                   return_rois_num=True, name=None):
        if not in_pir() or matrix is None:
            return matrix(bboxes, scores, score_threshold, post_threshold, nms_top_k, keep_top_k, use_gaussian,
                          gaussian_sigma, background_label, normalized, return_index, return_rois_num, name)
        out, index, rois_num = paddle.vision.ops.matrix_nms(
            bboxes, scores, score_threshold, post_threshold, nms_top_k, keep_top_k, use_gaussian, gaussian_sigma,
            background_label, normalized, return_index=True, return_rois_num=True)
        return out, rois_num if return_rois_num else None, index if return_index else None

    @paddle.jit.not_to_static
    def yolo_box(x, origin_shape, anchors, class_num, conf_thresh, downsample_ratio, clip_bbox=True, scale_x_y=1.0,
                 name=None):
        if not in_pir():
            return yolo(x, origin_shape, anchors, class_num, conf_thresh, downsample_ratio, clip_bbox, scale_x_y,
                        name)
        return paddle.vision.ops.yolo_box(x, origin_shape, anchors, class_num, conf_thresh, downsample_ratio,
                                          clip_bbox=clip_bbox, scale_x_y=scale_x_y)

    ops.multiclass_nms = multiclass_nms
    if matrix is not None:
        ops.matrix_nms = matrix_nms
    if yolo is not None:
        ops.yolo_box = yolo_box
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is not None:
                setattr(ops, name, value)


# ---------------------------------------------------------------------- evaluation
class _EvalData:
    """ppdet's eval reader and metric for the first ``max_batches`` batches, built once per run.

    A local, non-collective evaluation of ``trainer.model`` in this process (ranks of a
    distributed run analyse different groups). COCOeval scores against every image of the
    annotation file, so a limited evaluation gets a trimmed copy of the file: the exact metric
    of those images.
    """

    def __init__(self, run, max_batches):
        from ppdet.core.workspace import create

        trainer = run.handle
        cfg = trainer.cfg
        self.max_batches = max_batches
        self.tmp = tempfile.mkdtemp(prefix="slim_ppdet_eval_")
        adapter.state(run).tmp_dirs.append(self.tmp)  # removed by slim_on_run_end, whatever ends the run
        dataset = copy.copy(create("EvalDataset")())  # never change the dataset ppdet shares
        batch_size = cfg.EvalReader["batch_size"]
        if max_batches and cfg.metric == "COCO":
            dataset.check_or_download_dataset()
            dataset.anno_path = self._trimmed_annotations(dataset.get_anno(), max_batches * batch_size)
        import paddle

        sampler = paddle.io.BatchSampler(dataset, batch_size=batch_size)
        if cfg.metric == "VOC":
            cfg["EvalReader"]["collate_batch"] = False
        reader = create("EvalReader")(dataset, cfg.worker_num, batch_sampler=sampler)
        # ppdet's reader returns itself from iter() and keeps one iterator: an evaluation that
        # stops after max_batches would leave the next one starting part-way. Iterate its
        # DataLoader afresh each time instead, and drop the iterator the reader started (its
        # reader thread must not outlive this process's forks).
        self.loader = reader.dataloader
        reader.loader = None
        # ppdet builds metrics from the config: swap ours in for the call, then restore
        saved_metrics, saved_ds = trainer._metrics, cfg.get("EvalDataset")
        had_output, saved_output = "output_eval" in cfg, cfg.get("output_eval")
        cfg["EvalDataset"], cfg["output_eval"] = dataset, self.tmp  # bbox.json not into the CWD
        try:
            with _quiet_ppdet():
                trainer._init_metrics(validate=True)
            self.metrics = trainer._metrics
        finally:
            trainer._metrics = saved_metrics
            cfg["EvalDataset"] = saved_ds
            if had_output:
                cfg["output_eval"] = saved_output
            else:
                cfg.pop("output_eval", None)
        if not self.metrics:
            raise AdapterError(f"ppdet built no metric for metric: {cfg.metric}", plugin="ppdet")

    @classmethod
    def of(cls, run, max_batches):
        cache = adapter.state(run).eval_data
        if max_batches not in cache:
            cache[max_batches] = cls(run, max_batches)
        return cache[max_batches]

    def _trimmed_annotations(self, path, images):
        with open(path) as f:
            anno = json.load(f)
        keep = sorted(anno["images"], key=lambda im: im["id"])[:images]
        ids = {im["id"] for im in keep}
        anno["images"] = keep
        anno["annotations"] = [a for a in anno.get("annotations", []) if a["image_id"] in ids]
        trimmed = os.path.join(self.tmp, "annotations.json")
        with open(trimmed, "w") as f:
            json.dump(anno, f)
        return trimmed  # absolute: os.path.join(dataset_dir, absolute) is the absolute path

    def evaluate(self, model):
        import paddle

        was_training = model.training
        model.eval()
        try:
            with paddle.no_grad(), _quiet_ppdet():
                batches = EvalBatches(self.loader, self.max_batches, "ppdet's EvalDataset")
                for data in batches:
                    outs = model(data)
                    for metric in self.metrics:
                        metric.update(data, outs)
                batches.check()
                for metric in self.metrics:
                    metric.accumulate()
                results = self.metrics[0].get_results()
        finally:
            for metric in self.metrics:
                metric.reset()
            if was_training:
                model.train()
        stats = results.get("bbox") if isinstance(results, dict) else None
        if stats is None or len(stats) == 0:
            return 0.0  # COCOMetric gives {} when the model found no box at all
        return float(stats[0])


@contextlib.contextmanager
def _quiet_ppdet():
    """COCOeval prints its table and ppdet logs at INFO on every evaluation: hundreds of them in
    a sensitivity analysis."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("ppdet")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def cleanup(run):
    state = adapter.state(run)
    state.eval_data.clear()
    while state.tmp_dirs:
        shutil.rmtree(state.tmp_dirs.pop(), ignore_errors=True)


adapter = PPDetAdapter()


@hookimpl
def slim_register_adapters(register):
    register(adapter)


@hookimpl(trylast=True)
def slim_on_run_end(run, error):
    if run.adapter == adapter.name:  # after the plugins' own hooks
        cleanup(run)
