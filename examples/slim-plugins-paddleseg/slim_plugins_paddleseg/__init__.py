"""PaddleSeg adapter for slim-plugins, packaged outside slim-plugins (entry point group
``slim_plugins``), using only its public API.

PaddleSeg 2.8's tools (``tools/train.py``, ``tools/val.py``) build a model from a YAML
``Config`` and call ``paddleseg.core.train`` / ``paddleseg.core.evaluate``; weights load through
``paddleseg.utils.load_entire_model`` -> ``load_pretrained_model``, resume through
``paddleseg.utils.resume``. Once ``paddleseg.core`` is imported, :meth:`SegAdapter.install`
replaces:

* ``train`` (in ``paddleseg.core`` and its module): fires ``slim_before_load_weights`` for
  ``resume_model``, then ``slim_before_train`` (the prune plugin prunes here, before PaddleSeg
  wraps the model for data parallel), runs PaddleSeg's train with ``paddle.save`` watched so that
  ``slim_on_checkpoint_save`` fires before every ``<save_dir>/*/model.pdparams`` it writes
  (``iter_N/`` and ``best_model/``), then ``slim_after_train``;
* ``load_pretrained_model`` (in ``paddleseg.utils.utils`` and ``paddleseg.utils``): fires
  ``slim_before_load_weights`` first, so a pruned checkpoint's plan rebuilds the pruned shapes
  (PaddleSeg would only warn about the shapes and keep random weights).

The adapter checks the installed version and every patch target before patching anything.
"""
import functools
import inspect
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from slim_plugins import Adapter, Metric, hookimpl

SUPPORTED = ("2.8.",)
# (module, attribute) pairs the adapter patches or calls: all must exist before anything is patched
TARGETS = (("paddleseg.core", "train"), ("paddleseg.core", "evaluate"), ("paddleseg.core.train", "train"),
           ("paddleseg.core.train", "resume"), ("paddleseg.utils.utils", "load_pretrained_model"),
           ("paddleseg.utils", "load_pretrained_model"), ("paddleseg.core.val", "evaluate"))


@dataclass
class SegJob:
    """What one PaddleSeg call works on: the network, and in training what ``train`` was given."""

    model: Any
    optimizer: Optional[Any] = None
    val_dataset: Optional[Any] = None
    save_dir: Optional[str] = None
    test_config: Optional[dict] = None


class _FirstSamples:
    """The first ``count`` samples of a PaddleSeg dataset; other attributes (``num_classes``,
    ``ignore_index``) come from the dataset. PaddleSeg evaluates with batches of one."""

    def __init__(self, dataset, count):
        self._dataset, self._count = dataset, min(count, len(dataset))

    def __len__(self):
        return self._count

    def __getitem__(self, index):
        if index >= self._count:
            raise IndexError(index)
        return self._dataset[index]

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def _version():
    from importlib import metadata

    try:
        return metadata.version("paddleseg")
    except metadata.PackageNotFoundError:
        return "unknown"


def _patches(original):
    """``functools.wraps`` plus the mark that keeps :meth:`SegAdapter.install` from patching twice."""
    def mark(patched):
        patched = functools.wraps(original)(patched)
        patched._slim_patched = True
        return patched
    return mark


def _unwrap(model):
    return getattr(model, "_layers", model)


class SegAdapter(Adapter):
    name = "paddleseg"
    modules = ("paddleseg.core",)
    distributions = ("paddleseg",)
    supported = SUPPORTED

    def __init__(self):
        self._runs = weakref.WeakKeyDictionary()  # model -> run

    def patched(self):
        core = sys.modules.get("paddleseg.core")
        return bool(getattr(getattr(core, "train", None), "_slim_patched", False))

    # ------------------------------------------------------------------ patching
    def check_targets(self):
        """Raise one AdapterError naming paddleseg, its version and the first missing patch target."""
        import importlib

        from slim_plugins.errors import AdapterError

        version = _version()
        for module_name, attr in TARGETS:
            try:
                module = importlib.import_module(module_name) if module_name not in sys.modules \
                    else sys.modules[module_name]
            except ImportError:
                module = None
            if module is None or not callable(getattr(module, attr, None)):
                raise AdapterError(
                    f"paddleseg {version} has no {module_name}.{attr}, which the PaddleSeg adapter patches",
                    plugin=self.name,
                    hint=f"install a supported paddleseg ({', '.join(s + 'x' for s in SUPPORTED)}), "
                         "or run without --plugin")

    def install(self, session):
        if self.patched():
            return
        self.check_targets()  # imports the target modules
        core = sys.modules["paddleseg.core"]
        train_module = sys.modules["paddleseg.core.train"]
        utils_module = sys.modules["paddleseg.utils.utils"]
        utils_package = sys.modules["paddleseg.utils"]

        train = self._wrap_train(train_module.train)
        core.train = train
        train_module.train = train  # the module's own name, for scripts that import it from there
        load = self._wrap_load(utils_module.load_pretrained_model)
        utils_module.load_pretrained_model = load  # load_entire_model looks it up here at call time
        utils_package.load_pretrained_model = load

    def _wrap_train(self, train):
        adapter = self
        signature = inspect.signature(train)

        @_patches(train)
        def patched_train(*args, **kwargs):
            import paddle

            from slim_plugins import get_session

            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = bound.arguments
            model = _unwrap(given["model"])
            job = SegJob(model, given["optimizer"], given["val_dataset"], given["save_dir"], given["test_config"])
            run = adapter.run_for(get_session(), job, "train")
            if given["resume_model"] is not None:
                adapter.fire(run, "slim_before_load_weights", path=given["resume_model"])
            adapter.fire(run, "slim_before_train")
            save = paddle.save
            save_dir = os.path.abspath(given["save_dir"])

            @functools.wraps(save)
            def watched_save(obj, path, *save_args, **save_kwargs):
                path_text = os.path.abspath(str(path))
                if os.path.basename(path_text) == "model.pdparams" and path_text.startswith(save_dir + os.sep):
                    adapter.fire(run, "slim_on_checkpoint_save", path=path_text[: -len(".pdparams")])
                return save(obj, path, *save_args, **save_kwargs)

            paddle.save = watched_save
            try:
                result = train(*bound.args, **bound.kwargs)
            finally:
                paddle.save = save
            adapter.fire(run, "slim_after_train")
            return result

        return patched_train

    def _wrap_load(self, load_pretrained_model):
        adapter = self

        @_patches(load_pretrained_model)
        def patched_load_pretrained_model(model, pretrained_model, *args, **kwargs):
            from slim_plugins import get_session

            if pretrained_model is not None and "://" not in str(pretrained_model):
                run = adapter.run_for(get_session(), SegJob(_unwrap(model)), "eval")
                adapter.fire(run, "slim_before_load_weights", path=pretrained_model)
            return load_pretrained_model(model, pretrained_model, *args, **kwargs)

        return patched_load_pretrained_model

    def run_for(self, session, job, mode="train"):
        """One run per model and session: the train call after a load sees the load's run."""
        run = self._runs.get(job.model)
        if run is None or run.session is not session:
            run = self.new_run(session, handle=job, mode=mode)
            self._runs[job.model] = run
        elif job.optimizer is not None:  # train() after the model's own pretrained load
            run.handle, run.mode = job, mode
        return run

    # ------------------------------------------------------------------ what it exposes
    def model(self, run):
        return run.handle.model

    def optimizer(self, run):
        return run.handle.optimizer

    def save_dir(self, run):
        return run.handle.save_dir

    def _image_shape(self, run):
        dataset = run.handle.val_dataset
        if dataset is None or len(dataset) == 0:
            return None
        return list(dataset[0]["img"].shape)

    def input_spec(self, run):
        shape = self._image_shape(run)
        if shape is None:
            return None
        from paddle.static import InputSpec

        return [InputSpec([None] + shape, "float32", "x")]

    def forward_inputs(self, run, batch_size):
        shape = self._image_shape(run)
        if shape is None:
            return None
        import paddle

        return [paddle.rand([batch_size] + shape, dtype="float32")]

    def eval_loader(self, run):
        return run.handle.val_dataset

    def metric(self, run):
        dataset = run.handle.val_dataset
        if dataset is None:
            return None

        def evaluate(max_batches=None):
            from paddleseg.core.val import evaluate as seg_evaluate

            from slim_plugins.errors import AdapterError

            data = dataset if max_batches is None else _FirstSamples(dataset, max_batches)
            if len(data) == 0:
                raise AdapterError("the PaddleSeg val_dataset has no sample to evaluate", plugin=self.name)
            model = run.handle.model
            was_training = model.training
            try:
                miou = seg_evaluate(model, data, print_detail=False, **(run.handle.test_config or {}))[0]
            finally:  # evaluate leaves the model in eval mode
                model.train() if was_training else model.eval()
            return float(miou)

        return Metric("mIoU", evaluate, chance=None,
                      weights_hint="load trained weights: model.pretrained in the config, or --model_path")


adapter = SegAdapter()


@hookimpl
def slim_register_adapters(register):
    register(adapter)
