"""DDP (gloo, 2 CPU processes) against the same sharded arithmetic in one process."""

import pytest
import torch

from conftest import make_learnable
from unlearnable import distributed as D
from unlearnable import sharding as S
from unlearnable.attacks import get_attack
from unlearnable.data import ImageDataset
from unlearnable.errors import UnlearnableError
from unlearnable.train import victim_preset
from unlearnable.train.ddp import train_victim_ddp

CLASSES = ["a", "b", "c", "d"]
# 100 images in batches of 48: the last batch has 4, so one PGD shard is empty and the
# training shards are uneven in the middle of a pass (48 = 24 + 24, 4 = 2 + 2).
MIUE = dict(model="cnn-small", epochs=2, batch_size=48, pgd_steps=2, step_size=2 / 255, forward_chunk=16,
            device="cpu")


def _data():
    x, y = make_learnable(150, seed=3)
    return ImageDataset(x[:100], y[:100], CLASSES), ImageDataset(x[100:], y[100:], CLASSES)


def test_shard_bounds():
    assert S.train_shards(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert S.pgd_shards(100, 2, 16) == [(0, 64), (64, 100)]  # whole 16-row chunks: 4 + 3
    assert S.pgd_shards(4, 2, 16) == [(0, 4), (4, 4)]
    for b in range(1, 40):
        for w in (1, 2, 3):
            for split in ([S.train_shards(b, w)] if b >= w else []) + [S.pgd_shards(b, w, 5)]:
                assert split[0][0] == 0 and split[-1][1] == b
                assert all(s1 == e0 for (_, e0), (s1, _) in zip(split, split[1:]))
    with pytest.raises(UnlearnableError, match="cannot be split over 3 shards"):
        S.train_shards(2, 3)


def test_one_shard_is_the_plain_run():
    train, _ = _data()
    cfg = get_attack("mi-ue").from_preset("cpu", **MIUE).config
    assert S.sharding_for(cfg) is None
    with pytest.raises(UnlearnableError, match="shards must be positive"):
        get_attack("mi-ue").from_preset("cpu", **MIUE, shards=0)


@pytest.fixture
def one_thread():
    """The twin must use the ranks' thread count: CPU kernels split sums by thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ddp_two_gloo_ranks_equal_one_process_with_two_shards(tmp_path, one_thread):
    train, test = _data()
    vcfg = victim_preset("cpu", model="cnn-small", epochs=2, batch_size=32, augment="crop-flip", device="cpu")
    poisons, victim = tmp_path / "delta.pt", tmp_path / "victim.pt"
    D.spawn_local(2, D.run_all, [(D.generate_to_file, ("mi-ue", "cpu", MIUE, train, 0, str(poisons))),
                                 (D.train_to_file, (train, test, vcfg, 0, str(victim)))], threads=1)
    # generation: MI-UE min-min, source-model gradients all-reduced, poisons all-gathered
    ddp = torch.load(poisons, weights_only=True)
    one = get_attack("mi-ue").from_preset("cpu", **MIUE, shards=2).generate(train, seed=0).delta
    assert ddp.shape == one.shape and ddp.abs().max() > 0
    assert torch.equal(ddp, one)
    # victim training: same weights (BatchNorm buffers included) and the same history
    got = torch.load(victim, weights_only=True)
    ref = train_victim_ddp(train, test, vcfg, seed=0, shards=2)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(got["state"][k], v), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(got["history"]) == strip(ref.history)
    assert got["train_acc"] == ref.train_acc


def test_sharded_victim_that_learned_nothing_is_flagged(monkeypatch):
    """The DDP path flags a collapsed victim as train_victim does (one warning, written by
    the writer rank), and leaves a victim that learned unflagged."""
    from unlearnable.train import standard
    train, test = _data()
    logged = []
    monkeypatch.setattr(standard, "log", logged.append)  # both paths warn through flag_did_not_learn
    ok = train_victim_ddp(train, test, victim_preset("cpu", model="cnn-small", epochs=3, batch_size=32, lr=0.05,
                                                     device="cpu"), seed=0, shards=2)
    assert "did_not_learn" not in ok.extra and not logged
    blown = train_victim_ddp(train, test, victim_preset("cpu", model="cnn-small", epochs=2, batch_size=32, lr=1e8,
                                                        device="cpu"), seed=0, shards=2, desc="victim (d)")
    assert blown.extra["did_not_learn"].startswith("victim (d): cnn-small did not learn")
    assert logged == [f"warning: {blown.extra['did_not_learn']}"] and blown.metrics()["did_not_learn"]
