import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("UNLEARNABLE_QUIET", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def load_bench(name):
    """A script of ``bench/`` as a module (bench scripts import ``tune_mi_ue`` beside them)."""
    bench = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def make_learnable(n=200, size=16, channels=1, classes=4, seed=0):
    """Images whose class is a bright horizontal band at one of ``classes`` heights, plus
    noise (invariant to horizontal flips)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.integers(0, 60, size=(n, size, size, channels)).astype(np.int16)
    h = max(1, size // classes)
    for c in range(classes):
        x[y == c, c * h:(c + 1) * h, :, :] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture
def tiny_npz(tmp_path):
    """A small learnable dataset in the .npz format (train 160 / test 80, 16x16 grey, 4 classes)."""
    x, y = make_learnable(240, seed=1)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:],
             class_names=np.array(["a", "b", "c", "d"]))
    return path


def crash_then_resume(make_attack, train, workdir, monkeypatch, *, crash_after=2, seed=2):
    """Run ``make_attack()`` uninterrupted, then again with a crash right after its
    ``crash_after``-th checkpoint save, then resume it: returns (full, resumed) results."""
    from unlearnable.attacks.base import Checkpoint
    full = make_attack().generate(train, seed=seed)
    real_save, calls = Checkpoint.save, []

    def crashing_save(self, state):
        real_save(self, state)
        calls.append(1)
        if len(calls) == crash_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        make_attack().generate(train, seed=seed, workdir=workdir)
    monkeypatch.setattr(Checkpoint, "save", real_save)
    return full, make_attack().generate(train, seed=seed, workdir=workdir, resume=True)


def spy_mi_models(monkeypatch, module):
    """Record which networks ``module`` trains (by progress label), which it hands to
    :meth:`MIGapMeter.measure` as g, and which give the clean reference; returns the three
    (dict desc -> model, list, list), filled as the code under test runs."""
    from unlearnable.measure.gaps import MIGapMeter
    trained, measured, references = {}, [], []
    real_train, real_measure, real_for_model = module.train_victim, MIGapMeter.measure, MIGapMeter.for_model.__func__

    def train_spy(*a, **k):
        res = real_train(*a, **k)
        trained[k["desc"]] = res.model
        return res

    def measure_spy(self, model, poisoned):
        measured.append(model)
        return real_measure(self, model, poisoned)

    def for_model_spy(cls, model, clean, **k):
        references.append(model)
        return real_for_model(cls, model, clean, **k)

    monkeypatch.setattr(module, "train_victim", train_spy)
    monkeypatch.setattr(MIGapMeter, "measure", measure_spy)
    monkeypatch.setattr(MIGapMeter, "for_model", classmethod(for_model_spy))
    return trained, measured, references
