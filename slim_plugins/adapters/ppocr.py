"""The PaddleOCR adapter: PaddleOCR 2.x's own ``tools/train.py``, ``tools/eval.py`` and
``tools/export_model.py``, unchanged.

PaddleOCR's tools bind ``load_model`` / ``save_model`` by name when they import them, so the
functions are replaced in ``ppocr.utils.save_load`` right after that module executes (the import
watcher calls :meth:`PaddleOCRAdapter.install`), and rebound in the modules that took them
earlier. Every wrapper binds its arguments by signature (``config``, ``model``, ``optimizer`` ...
by name, checked before patching):

* ``load_model`` (every process): reads the config's ``plugins:`` section, fires
  ``slim_before_load_weights`` (the prune plugin rebuilds pruned shapes), loads, fires
  ``slim_after_load_weights`` (PaddleOCR would only warn about a tensor whose shape differs and
  keep random weights), and in training (an optimizer is given, a plugin on) fires
  ``slim_before_train``: weights are loaded, the optimizer has not stepped, and
  ``paddle.DataParallel`` has not wrapped the model yet.
* ``ppocr.data.build_dataloader`` (every process; the adapter is installed when ``ppocr.data``
  has executed, before tools/train.py binds the function): reads the config's ``plugins:``
  section, and when a plugin will end the run before training (``prune.action=show``/``analyze``)
  gives a :class:`~slim_plugins.adapters.SkippedTrainLoader` for ``Train``: no label file read.

Once a plugin is enabled (or a load rebuilt pruned shapes):

* ``save_model(...)``: fires ``slim_on_checkpoint_save`` for every checkpoint prefix it writes.
* ``tools.program.train`` and ``ppocr.utils.export_model.export_single_model`` are looked up at
  call time by PaddleOCR; they are wrapped at the first ``load_model``, which every tool calls
  before them: ``slim_after_train`` and ``slim_on_run_end``, and ``slim_before_export``.

This module imports nothing from PaddleOCR (or Paddle) at import time.
"""
import functools
import inspect
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from slim_plugins.adapters import Adapter, SkippedTrainLoader, fixed_order_loader
from slim_plugins.errors import AdapterError, exception_line
from slim_plugins.hooks import hookimpl
from slim_plugins.run import EvalBatches, Metric

SAVE_LOAD = "ppocr.utils.save_load"
DATA = "ppocr.data"
EXPORT = "ppocr.utils.export_model"
PROGRAM = "tools.program"

# Algorithms whose forward takes the labels (``model(images, data=batch[1:])``), as
# tools/program.py's train() lists them. Their training forward cannot run on an image alone,
# so PaddleSlim traces them in eval mode.
EXTRA_INPUT_ALGORITHMS = frozenset({
    "SRN", "NRTR", "SAR", "SEED", "SVTR", "SVTR_LCNet", "SPIN", "VisionLAN", "RobustScanner", "RFL",
    "DRRG", "SATRN", "SVTR_HGNet", "ParseQ", "CPPD"})
# Eval transforms that fix the input size, and the default trace size per model type
_RESIZE_TRANSFORMS = ("RecResizeImg", "SVTRRecResizeImg", "RecConAug", "DetResizeForTest")
_DEFAULT_SHAPES = {"det": [3, 640, 640], "rec": [3, 32, 100], "cls": [3, 48, 192]}


@dataclass
class OcrJob:
    """What one PaddleOCR tool works on, as seen from ``load_model``.

    :ivar config: the merged PaddleOCR config (YAML plus ``-o`` overrides).
    :ivar model: the network (never a ``DataParallel`` wrapper).
    :ivar optimizer: the optimizer in training, None in eval and export.
    """

    config: dict
    model: Any
    optimizer: Optional[Any] = None


@dataclass
class OcrState:
    """The ppocr adapter's record of a run.

    :ivar train_batch: the first Train batch (for :meth:`PaddleOCRAdapter.train_forward`).
    :ivar eval_objects: the Eval loader, post-process and metric, built once.
    """

    train_batch: Optional[Any] = None
    eval_objects: Optional[Tuple[Any, Any, Any]] = None


def _arguments(signature, args, kwargs):
    """A wrapper's arguments by name, defaults included: PaddleOCR's functions may gain or move
    parameters; the adapter's targets say which names it needs."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _module(name):
    module = sys.modules.get(name)
    if module is None:
        import importlib

        module = importlib.import_module(name)
    return module


def _chance(config):
    """A text-direction classifier's accuracy by chance (1 / labels); detection hmean and
    recognition accuracy: 0."""
    if config["Architecture"].get("model_type") != "cls":
        return 0.0
    labels = (config.get("PostProcess") or {}).get("label_list") or []
    return 1.0 / len(labels) if len(labels) > 1 else None


def _patches(original):
    """Decorator for a wrapper of ``original``: ``functools.wraps`` plus the mark that stops
    :meth:`PaddleOCRAdapter.install` from wrapping twice."""
    def mark(patched):
        patched = functools.wraps(original)(patched)
        patched._slim_patched = True
        return patched
    return mark


# what Paddle 3 raises when PaddleOCR's default export rebuilds a model under the old IR
_OLD_IR_EXPORT_FAILURES = ("must be Value, but got Variable", "Unknown place type")


def _old_ir_export_error(exc, config):
    """An AdapterError saying how to export when ``exc`` is PaddleOCR's default (old-IR) export
    failing on Paddle 3, pruned model or not; None for any other failure."""
    import paddle

    if config.get("Global", {}).get("export_with_pir") or not any(m in str(exc) for m in _OLD_IR_EXPORT_FAILURES):
        return None
    reason = exception_line(exc, last=True, with_type=False)
    return AdapterError(
        f"PaddleOCR's default export rebuilds the model under the old IR, which Paddle {paddle.__version__} "
        f"cannot do for this model, pruned or not: {reason}", plugin="ppocr",
        hint="export a PIR program: add `-o Global.export_with_pir=True` (writes inference.json; "
             "Paddle Inference on CPU then needs config.disable_mkldnn())")


def _sync_rep_layer_channels(model):
    """PPLCNetV3's ``LearnableRepLayer`` (PP-OCRv4 det and rec) keeps its channel counts in
    ``in_channels``/``out_channels``/``groups`` and builds the fused conv (and the identity
    branch's kernel) of ``rep()``, which export runs, from them: after pruning they must be the
    convs' own counts, or the fused kernel does not fit."""
    for layer in _unwrap(model).sublayers(include_self=True):
        branches = getattr(layer, "conv_kxk", None)
        if not (hasattr(layer, "rep") and hasattr(layer, "in_channels") and branches
                and hasattr(branches[0], "conv")) or getattr(layer, "is_repped", False):
            continue
        conv = branches[0].conv
        layer.groups = int(getattr(conv, "_groups", 1) or 1)
        layer.in_channels = int(conv.weight.shape[1]) * layer.groups
        layer.out_channels = int(conv.weight.shape[0])
        if hasattr(layer, "id_tensor"):  # the identity kernel, cached at the old width
            del layer.id_tensor


def _unwrap(model):
    return getattr(model, "_layers", model)


class PaddleOCRAdapter(Adapter):
    name = "ppocr"
    weights_hint = "load trained weights: -o Global.pretrained_model=PATH"
    modules = (SAVE_LOAD, DATA)  # ppocr.data: tools/train.py binds build_dataloader before it imports save_load
    distributions = ("unstructured-paddleocr", "paddleocr")
    supported = ("2.10.",)
    targets = {f"{SAVE_LOAD}:load_model": ("config", "model", "optimizer"),
               f"{SAVE_LOAD}:save_model": ("model", "optimizer", "model_path", "config", "prefix")}
    state_class = OcrState

    def import_suite(self):
        """PaddleOCR's tools put the folder holding ``ppocr/`` on ``sys.path``: so does this."""
        import importlib.util

        if importlib.util.find_spec("ppocr") is None:
            from importlib import metadata

            for dist, folder in (("unstructured-paddleocr", "unstructured_paddleocr"), ("paddleocr", "paddleocr")):
                try:
                    root = str(metadata.distribution(dist).locate_file(folder))
                except metadata.PackageNotFoundError:
                    continue
                if os.path.isdir(os.path.join(root, "ppocr")):
                    sys.path.append(root)
                    break
        super().import_suite()

    def patched(self):
        return bool(getattr(sys.modules[SAVE_LOAD].save_model, "_slim_patched", False))

    def __init__(self):
        self._runs = weakref.WeakKeyDictionary()  # model -> run (a deep copy does not carry it)
        self._configured = set()  # ids of configs whose plugins: section was applied

    def matches(self, imported_modules):
        return "ppocr" in imported_modules

    # ------------------------------------------------------------------ patching
    def install_loading(self, session):
        """Every process: ``load_model`` (the config's ``plugins:`` section, weight loads) and
        ``build_dataloader`` (no Train loader for a run a plugin ends before training)."""
        from slim_plugins import _boot

        _boot.watcher.watch(DATA, self._patch_build_dataloader)  # now if imported, else when it is
        save_load = self._save_load()
        if getattr(save_load.load_model, "_slim_patched", False):
            return
        save_load.load_model = self._wrap_load_model(save_load.load_model)
        self._rebind("load_model", save_load)

    def install_training(self, session):
        """With a plugin on (or a pruned model loaded): checkpoints, train, export."""
        save_load = self._save_load()
        if not getattr(save_load.save_model, "_slim_patched", False):
            save_load.save_model = self._wrap_save_model(save_load.save_model)
        self._rebind("save_model", save_load)
        self._patch_late_bound()

    @staticmethod
    def _save_load():
        return _module(SAVE_LOAD)

    @staticmethod
    def _rebind(attr, save_load):
        """Modules that bound the original by name before the patch (tools/program.py imports
        ``save_model``, a custom script's import order may come first)."""
        for module_name in (EXPORT, PROGRAM):
            module = sys.modules.get(module_name)
            if module is not None and getattr(module, attr, None) is not None \
                    and not getattr(getattr(module, attr), "_slim_patched", False):
                setattr(module, attr, getattr(save_load, attr))

    def _patch_late_bound(self):
        """Wrap what PaddleOCR looks up at call time: ``tools.program.train`` and
        ``ppocr.utils.export_model.export_single_model`` (once their modules have executed)."""
        program = sys.modules.get(PROGRAM)
        if program is not None and callable(getattr(program, "train", None)) \
                and hasattr(program, "preprocess") and not getattr(program.train, "_slim_patched", False):
            self._check_parameters(f"{PROGRAM}.train", program.train, ("config", "model", "optimizer"))
            program.train = self._wrap_train(program.train)
        export = sys.modules.get(EXPORT)
        if export is not None and callable(getattr(export, "export_single_model", None)) \
                and not getattr(export.export_single_model, "_slim_patched", False):
            self._check_parameters(f"{EXPORT}.export_single_model", export.export_single_model,
                                   ("model", "save_path", "config"))
            export.export_single_model = self._wrap_export(export.export_single_model)

    def _check_parameters(self, label, func, names):
        from slim_plugins.adapters import missing_parameters

        lacking = missing_parameters(func, names)
        if lacking:
            found = self.suite_version()
            suite = f"{found[0]} {found[1]}" if found else "PaddleOCR (version unknown)"
            raise AdapterError(f"{suite}: {label} has no parameter {lacking[0]!r}, which the ppocr adapter binds "
                               "by name", plugin=self.name,
                               hint="install a version the ppocr adapter supports (2.10.x), or run without --plugin")

    def _wrap_load_model(self, load_model):
        adapter = self
        signature = inspect.signature(load_model)

        @_patches(load_model)
        def patched_load_model(*args, **kwargs):
            from slim_plugins.session import get_session

            # a slim-plugins error raised here ends the tool with one line and exit 2
            # (slim_plugins.errors.install_excepthook)
            given = _arguments(signature, args, kwargs)
            config, model, optimizer = given["config"], given["model"], given["optimizer"]
            session = get_session()
            adapter.configure(session, config)
            if getattr(adapter, "_active", False):
                adapter._patch_late_bound()
            mode = "train" if optimizer is not None else "eval"
            run = adapter.run_for(session, config, model, optimizer, mode)
            path = adapter.weights_path(config)
            if path:
                adapter.announce_load(run, path)
            result = load_model(*args, **kwargs)
            if path:
                exact = bool((config.get("Global") or {}).get("checkpoints"))
                adapter.fire(run, "slim_after_load_weights", path=str(path), exact=exact)
            if optimizer is not None and getattr(adapter, "_active", False):
                try:  # weights loaded, no step yet, no DataParallel: where the prune plugin prunes
                    adapter.fire_before_train(run)
                except BaseException as exc:  # e.g. SystemExit after an analysis: the run ends here
                    adapter.end_run(run, exc)
                    raise
            return result

        return patched_load_model

    def _patch_build_dataloader(self, data):
        """Runs inside the import of ``ppocr.data``: a ``build_dataloader`` that is not the one this
        adapter knows is left alone (the Train loader is then built, as without the adapter)."""
        from slim_plugins.adapters import missing_parameters

        build_dataloader = getattr(data, "build_dataloader", None)
        if not callable(build_dataloader) or getattr(build_dataloader, "_slim_patched", False) \
                or missing_parameters(build_dataloader, ("config", "mode")):
            return
        data.build_dataloader = self._wrap_build_dataloader(build_dataloader)

    def _wrap_build_dataloader(self, build_dataloader):
        """tools/train.py builds the Train loader (its dataset reads every label file) before the
        model: for a run a plugin ends before training (``prune.action=show``/``analyze``) it gets a
        :class:`SkippedTrainLoader` instead. The config's ``plugins:`` section is read first."""
        adapter = self
        signature = inspect.signature(build_dataloader)

        @_patches(build_dataloader)
        def patched_build_dataloader(*args, **kwargs):
            given = _arguments(signature, args, kwargs)
            if given["mode"] == "Train" and isinstance(given["config"], dict):
                from slim_plugins.session import get_session

                session = get_session()
                adapter.configure(session, given["config"])
                reason = session.stops_before_train()
                if reason:
                    return SkippedTrainLoader(reason, adapter.name, "Train loader")
            return build_dataloader(*args, **kwargs)

        patched_build_dataloader._slim_original = build_dataloader
        return patched_build_dataloader

    def _wrap_save_model(self, save_model):
        adapter = self
        signature = inspect.signature(save_model)

        @_patches(save_model)
        def patched_save_model(*args, **kwargs):
            given = _arguments(signature, args, kwargs)
            model_path, prefix = given["model_path"], given["prefix"]
            # the plans before the weights: a kill in between leaves no new weights with an old plan
            run = adapter.current_run_for(given["config"], given["model"], given["optimizer"], "train")
            adapter.fire(run, "slim_on_checkpoint_save", path=os.path.join(model_path, prefix))
            if prefix == "best_accuracy":  # save_model writes best_model/model.* as well
                adapter.fire(run, "slim_on_checkpoint_save", path=os.path.join(model_path, "best_model", "model"))
                extra = given.get("kwargs") or {}  # save_model(..., **kwargs): best_model_dict among them
                best_dict = given.get("best_model_dict") or extra.get("best_model_dict") or {}
                best = best_dict.get(given["config"]["Metric"].get("main_indicator"))
                if best is not None:
                    run.best_checkpoint = (os.path.join(model_path, prefix), float(best))
            return save_model(*args, **kwargs)

        return patched_save_model

    def _wrap_train(self, train):
        adapter = self
        signature = inspect.signature(train)

        @_patches(train)
        def patched_train(*args, **kwargs):
            given = _arguments(signature, args, kwargs)
            run = adapter.current_run_for(given["config"], given["model"], given["optimizer"], "train")
            with adapter.training(run):
                result = train(*args, **kwargs)
                adapter.fire(run, "slim_after_train")
            return result

        return patched_train

    def _wrap_export(self, export_single_model):
        adapter = self
        signature = inspect.signature(export_single_model)

        @_patches(export_single_model)
        def patched_export_single_model(*args, **kwargs):
            given = _arguments(signature, args, kwargs)
            config = given["config"]
            run = adapter.current_run_for(config, given["model"], None, "export")
            adapter.fire(run, "slim_before_export", path=given["save_path"])
            _sync_rep_layer_channels(given["model"])
            try:
                return export_single_model(*args, **kwargs)
            except (TypeError, ValueError) as exc:
                error = _old_ir_export_error(exc, config)
                if error is None:
                    raise
                raise error from exc

        return patched_export_single_model

    # ------------------------------------------------------------------ runs and config
    def current_run_for(self, config, model, optimizer, mode):
        """:meth:`run_for` in the current session."""
        from slim_plugins.session import get_session

        return self.run_for(get_session(), config, model, optimizer, mode)

    def run_for(self, session, config, model, optimizer=None, mode="train"):
        model = _unwrap(model)
        run = self._runs.get(model)
        if run is None or run.session is not session:
            run = self.new_run(session, handle=OcrJob(config, model, optimizer), mode=mode)
            self._runs[model] = run
        elif optimizer is not None and run.handle.optimizer is None:
            run.handle.optimizer = optimizer
        return run

    def configure(self, session, config):
        """Apply the ``plugins:`` section of the merged config (``-o plugins.prune.KEY=V`` included)."""
        key = (id(session), id(config))
        if key in self._configured:
            return
        self._configured.add(key)
        section = config.get("plugins") if isinstance(config, dict) else None
        if section:
            session.configure_from_mapping(section, label="the plugins: section of the PaddleOCR config")

    @staticmethod
    def weights_path(config):
        """What ``load_model`` loads: ``Global.checkpoints``, else ``Global.pretrained_model``."""
        glob = config.get("Global") or {}
        return glob.get("checkpoints") or glob.get("pretrained_model") or None

    # ------------------------------------------------------------------ what it exposes
    def model(self, run):
        return run.handle.model

    def optimizer(self, run):
        return run.handle.optimizer

    def save_dir(self, run):
        return (run.handle.config.get("Global") or {}).get("save_model_dir")

    def trace_mode(self, run):
        config = run.handle.config
        algorithm = config["Architecture"].get("algorithm")
        if algorithm in EXTRA_INPUT_ALGORITHMS and self.train_targets(config) is None:
            return "eval"
        return "train"

    def trace_inputs(self, run):
        """An image, plus dummy labels for a multi-head recogniser: its SAR / NRTR branch reads
        the backbone's output only in training, so only a train-mode trace shows what it couples."""
        config = run.handle.config
        targets = self.train_targets(config)
        if targets is None:
            return None
        import paddle

        return [paddle.zeros([1] + self.image_shape(config), dtype="float32"), targets]

    @staticmethod
    def train_targets(config, batch_size=1):
        """``batch[1:]`` of a ``MultiHead`` recogniser's training batch (``label_ctc``, the SAR or
        NRTR label, ``length``, ``valid_ratio``), as zeros/ones of the right dtypes; None for
        other models, whose labels this adapter does not make."""
        arch = config["Architecture"]
        if arch.get("algorithm") not in EXTRA_INPUT_ALGORITHMS or (arch.get("Head") or {}).get("name") != "MultiHead":
            return None
        import paddle

        length = int((config.get("Global") or {}).get("max_text_length") or 25)
        return [paddle.zeros([batch_size, length], dtype="int64"), paddle.zeros([batch_size, length], dtype="int64"),
                paddle.ones([batch_size], dtype="int64"), paddle.ones([batch_size], dtype="float32")]

    def input_spec(self, run):
        from paddle.static import InputSpec

        return [InputSpec([None] + self.image_shape(run.handle.config), "float32", "x")]

    @staticmethod
    def image_shape(config):
        """``[C, H, W]`` of the images the Eval transforms produce (for tracing and FLOPs)."""
        arch = config["Architecture"]
        for transform in (config.get("Eval") or {}).get("dataset", {}).get("transforms") or []:
            name, args = next(iter(transform.items()))
            args = args or {}
            if name in _RESIZE_TRANSFORMS and args.get("image_shape"):
                shape = [int(d) for d in args["image_shape"]]
                return shape if len(shape) == 3 else [3] + shape
        return list(_DEFAULT_SHAPES.get(arch.get("model_type"), [3, 640, 640]))

    def eval_loader(self, run):
        return self._eval_objects(run)[0]

    def train_forward(self, run):
        """``model(images, data=batch[1:])`` on the first Train batch, as tools/program.py trains:
        heads that need labels (MultiHead's SAR/NRTR) run only this way. None for a model whose
        training forward reads the image alone (DB, CRNN, a classifier): the train-mode trace ran
        that forward already, and the Train set stays unread (``prune.action analyze``)."""
        config = run.handle.config
        arch = config["Architecture"]
        if not config.get("Train") or not (arch.get("model_type") in ("table", "kie")
                                           or arch.get("algorithm") in EXTRA_INPUT_ALGORITHMS):
            return None

        def forward():
            import paddle
            from ppocr.utils.logging import get_logger

            state = self.state(run)
            if state.train_batch is None:
                build = _module(DATA).build_dataloader
                build = getattr(build, "_slim_original", build)  # the real one, whatever the action
                device = paddle.set_device(paddle.get_device())
                # one batch: no worker processes prefetching more
                train = dict(config["Train"], loader=dict(config["Train"].get("loader") or {}, num_workers=0))
                loader = build(dict(config, Train=train), "Train", device, get_logger())
                state.train_batch = next(iter(loader))
            batch = state.train_batch
            model = run.handle.model
            if arch.get("model_type") == "kie":
                model(batch)
            else:
                model(batch[0], data=batch[1:])

        return forward

    def _eval_objects(self, run):
        """The Eval loader, post-process and metric, built from the config as tools/eval.py does."""
        state = self.state(run)
        objects = state.eval_objects
        if objects is None:
            import paddle
            from ppocr.data import build_dataloader
            from ppocr.metrics import build_metric
            from ppocr.postprocess import build_post_process
            from ppocr.utils.logging import get_logger

            config = run.handle.config
            if not config.get("Eval"):
                return None, None, None
            device = paddle.set_device(paddle.get_device())
            loader = build_dataloader(config, "Eval", device, get_logger())
            post_process = build_post_process(config["PostProcess"], config["Global"])
            objects = (loader, post_process, build_metric(config["Metric"]))
            state.eval_objects = objects
        return objects

    def metric(self, run):
        config = run.handle.config
        if not config.get("Eval") or not config.get("Metric"):
            return None
        arch = config["Architecture"]
        name = config["Metric"].get("main_indicator", "metric")

        def evaluate(max_batches=None):
            program = sys.modules.get(PROGRAM)
            if program is None:
                import importlib

                program = importlib.import_module(PROGRAM)
            loader, post_process, eval_class = self._eval_objects(run)
            data = EvalBatches(fixed_order_loader(loader), max_batches, "the Eval dataset")
            model = run.handle.model
            was_training = model.training
            try:
                result = program.eval(model, data, post_process, eval_class, arch.get("model_type"),
                                      arch.get("algorithm") in EXTRA_INPUT_ALGORITHMS)
            finally:  # program.eval always leaves the model in train mode
                model.train() if was_training else model.eval()
            data.check()
            return float(result[eval_class.main_indicator])

        return Metric(name, evaluate, chance=_chance(config),
                      weights_hint=self.weights_hint)


adapter = PaddleOCRAdapter()


@hookimpl
def slim_register_adapters(register):
    register(adapter)
