"""Training from Python with the C++ trainer: the same run directory and files
as `normlab train` / `normlab eval` (docs/training.md), not a new framework.

    import normlab
    model = normlab.Model.from_spec("flatten, linear(128), layernorm, relu, linear(10)")
    history = model.train(out_dir="out/py", epochs=1, limit_train=6000)
    print(model.evaluate())          # {'loss': ..., 'accuracy': ..., 'correct': ..., 'count': ...}
    model.save("my-model.safetensors")
    again = normlab.Model.load("my-model.safetensors")

Model specs and presets are the CLI's (docs/model-spec.md). The data directory
is found as the CLI finds it (NORMLAB_DATA, <repo>/../shared/data, <repo>/data,
/usr/share/datasets) with <repo> the source tree holding the current directory;
or pass data_dir. Errors (a bad spec, missing data, a bad option) are
ValueError with the CLI's message.
"""

from __future__ import annotations

import os
import shutil

from . import _normlab

__all__ = ["Model", "default_data_dir"]


def _repo_dir() -> str:
    """The normlab source tree holding the current directory, or ''."""
    d = os.path.abspath(os.getcwd())
    while True:
        if os.path.isfile(os.path.join(d, "include", "normlab", "data.hpp")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return ""
        d = parent


def default_data_dir(dataset: str = "mnist") -> str:
    """Where the CLI would read `dataset` from (ValueError listing the places tried)."""
    return _normlab.default_data_dir(dataset, _repo_dir())


class Model:
    """A model spec and, once trained or loaded, its model.safetensors file."""

    def __init__(self, spec: str, path: str | None = None):
        self.spec = spec
        self.path = path  # model.safetensors (PyTorch state_dict keys) or checkpoint.safetensors
        self.run_dir = None
        self.history: list[dict] = []

    @classmethod
    def from_spec(cls, spec: str) -> "Model":
        """A model to train: a spec such as "flatten, linear(64), layernorm, relu,
        linear(10)" or a preset name ("seed001", ...)."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"Model.from_spec: spec must be a non-empty string, got {spec!r}")
        return cls(spec)

    @classmethod
    def load(cls, path: str) -> "Model":
        """A model.safetensors or checkpoint.safetensors written by normlab (its spec
        is in the file's metadata)."""
        return cls(_normlab.model_spec_of(os.fspath(path)), os.fspath(path))

    def train(self, out_dir: str = "out/train", *, epochs: int = 1, batch_size: int = 128,
              optimizer: str = "adam", lr: float | None = None,
              weight_decay: float | None = None, momentum: float | None = None, seed: int = 0,
              limit_train: int = 0, limit_test: int = 0, dataset: str = "mnist",
              data_dir: str | None = None, resume: str | None = None, wn_init: str = "pytorch",
              weight_norm_keys: str = "legacy", on_epoch=None) -> list[dict]:
        """`normlab train` with these options; writes out_dir/{metrics.jsonl, loss.png,
        accuracy.png, model.safetensors, checkpoint.safetensors} and returns the
        metrics of every epoch (dicts as metrics.jsonl's lines). on_epoch(epoch,
        train_loss, train_accuracy, test_loss, test_accuracy) is called after each epoch.
        A fresh run starts from the spec's initialization (as the CLI); to continue
        a run pass resume=<out_dir>/checkpoint.safetensors."""
        data = data_dir if data_dir is not None else default_data_dir(dataset)
        self.history = _normlab.run_training(
            self.spec, os.fspath(data), dataset, int(epochs), int(batch_size), optimizer, lr,
            weight_decay, momentum, int(seed), int(limit_train), int(limit_test),
            os.fspath(out_dir), os.fspath(resume) if resume else "", wn_init, weight_norm_keys,
            on_epoch)
        self.run_dir = os.fspath(out_dir)
        self.path = os.path.join(self.run_dir, "model.safetensors")
        return self.history

    def evaluate(self, split: str = "test", *, batch_size: int = 1000, dataset: str = "mnist",
                 data_dir: str | None = None) -> dict:
        """`normlab eval`: {'loss', 'accuracy', 'correct', 'count'} on the split."""
        if self.path is None:
            raise ValueError("Model.evaluate: the model has no weights yet; train() or load() it")
        data = data_dir if data_dir is not None else default_data_dir(dataset)
        return _normlab.evaluate_file(self.path, self.spec, os.fspath(data), split,
                                      int(batch_size))

    def save(self, path: str) -> str:
        """Copies model.safetensors (PyTorch state_dict keys, the spec in its metadata) to path."""
        if self.path is None:
            raise ValueError("Model.save: the model has no weights yet; train() or load() it")
        if os.path.abspath(path) != os.path.abspath(self.path):
            shutil.copyfile(self.path, path)
        return os.fspath(path)

    def __repr__(self):
        return f"normlab.Model({self.spec!r}, path={self.path!r})"
