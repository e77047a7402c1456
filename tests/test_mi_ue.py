import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from unlearnable.attacks import MIUE, get_attack
from unlearnable.data import load_dataset, read_poisoned
from unlearnable.errors import UnlearnableError
from unlearnable.poison import poison_dataset

TINY = dict(epochs=2, batch_size=64, pgd_steps=3, step_size=2 / 255, lr=0.05, device="cpu")


def test_generate_budget_and_determinism(tiny_npz):
    train = load_dataset(tiny_npz).train
    a = MIUE(**TINY).generate(train, seed=3)
    b = MIUE(**TINY).generate(train, seed=3)
    c = MIUE(**TINY).generate(train, seed=4)
    assert torch.equal(a.delta, b.delta)
    assert not torch.equal(a.delta, c.delta)
    assert a.delta.abs().max() <= 8 / 255 + 1e-7
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    assert (x + a.delta).min() >= -1e-7 and (x + a.delta).max() <= 1 + 1e-7
    assert a.delta.abs().max() > 0
    assert len(a.info["history"]) == 2


def test_pgd_on_mi_loss_lowers_it(tiny_npz):
    """With a fixed source model, the PGD engine lowers L_mi on the batch it perturbs."""
    from unlearnable.attacks import mi_loss, pgd
    from unlearnable.models import build_model
    train = load_dataset(tiny_npz).train
    torch.manual_seed(0)
    model = build_model("cnn", 1, 4, 16).eval()
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels)
    loss = lambda inp: mi_loss(model.features(inp), y)  # noqa: E731
    delta = pgd(loss, x, torch.zeros_like(x), steps=5, step_size=1 / 255, eps=8 / 255)
    with torch.no_grad():
        assert loss(x + delta) < loss(x) - 0.01
    assert delta.abs().max() <= 8 / 255 + 1e-7


def test_poison_writes_standard_output(tiny_npz, tmp_path):
    m = poison_dataset("mi-ue", str(tiny_npz), tmp_path / "out", seed=0, overrides=TINY)
    assert m["method"] == "mi-ue" and m["eps_255"] == pytest.approx(8) and 0 < m["linf_255"] <= 8
    back = read_poisoned(tmp_path / "out")
    assert int(np.abs(back.delta).max()) == m["linf_255"]
    assert not (tmp_path / "out.partial").exists()
    assert len(m["history"]) == 2 and m["seed"] == 0


def test_unknown_method_and_bad_eps():
    with pytest.raises(UnlearnableError, match="unknown method"):
        get_attack("mi-uee")
    for eps in (0.0, -1 / 255, 1.5):
        with pytest.raises(UnlearnableError, match="eps must be in"):
            MIUE(eps=eps)


def test_resume_after_kill_is_bit_identical(tiny_npz, tmp_path):
    """Kill a run (SIGKILL) after its first checkpoint, resume it, compare with a clean run."""
    args = ["--method", "mi-ue", "--data", str(tiny_npz), "--epochs", "6", "--batch-size", "32",
            "--steps", "4", "--step-size", "2", "--lr", "0.05", "--device", "cpu", "--seed", "5"]
    cmd = [sys.executable, "-m", "unlearnable.cli", "-q", "poison", *args]
    env = {**os.environ, "UNLEARNABLE_QUIET": "1", "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckpt = tmp_path / "killed.partial" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not killed.exists()  # no partial output at OUT
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= epoch < 6

    # Without --resume the unfinished run is reported, not silently discarded.
    r = subprocess.run(cmd + ["--out", str(killed)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr

    r = subprocess.run(cmd + ["--out", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    full = tmp_path / "full"
    r = subprocess.run(cmd + ["--out", str(full)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = read_poisoned(killed), read_poisoned(full)
    assert a.manifest["resumed_from_epoch"] >= 1 and b.manifest["resumed_from_epoch"] == 0
    np.testing.assert_array_equal(a.delta, b.delta)
    np.testing.assert_array_equal(a.poisoned.images, b.poisoned.images)
    assert a.manifest["history"] == [dict(h, seconds=h2["seconds"]) for h, h2 in
                                     zip(b.manifest["history"], a.manifest["history"])]


def test_paper_presets_match_appendix_e4():
    c = MIUE.from_preset("paper-cifar10").config
    assert (c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay, c.lr_min) == \
        ("resnet-18", 100, 512, 0.5, 0.9, 1e-4, 1e-6)
    assert (c.pgd_steps, c.tau, c.zeta, c.train_augment, c.crop_padding) == (10, 0.1, 0.1, "crop-flip", 4)
    assert c.step_size * 255 == pytest.approx(0.2) and c.eps * 255 == pytest.approx(8)
    i = MIUE.from_preset("paper-imagenet").config
    assert (i.epochs, i.pgd_steps) == (50, 10) and i.step_size * 255 == pytest.approx(0.4)
