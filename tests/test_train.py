from conftest import make_learnable
from unlearnable.data.dataset import ImageDataset
from unlearnable.train import train_victim, victim_preset


def test_victim_learns_tiny_task():
    x, y = make_learnable(600, seed=1)
    train, test = ImageDataset(x[:400], y[:400], list("abcd")), ImageDataset(x[400:], y[400:], list("abcd"))
    cfg = victim_preset("cpu", epochs=4, batch_size=32, lr=0.05, augment="flip", device="cpu")
    r = train_victim(train, test, cfg, seed=0)
    assert r.test_acc > 0.9  # chance is 0.25
    assert len(r.history) == 4 and all(0 <= h["test_acc"] <= 1 for h in r.history)
    r2 = train_victim(train, test, cfg, seed=0)  # seeded: the same history
    assert r2.history == [dict(h, seconds=h2["seconds"]) for h, h2 in zip(r.history, r2.history)]


def test_paper_preset():
    cfg = victim_preset("paper-st")
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size) == ("resnet-18", 200, 0.5, 1e-4, 128)


def test_a_victim_that_learned_nothing_is_flagged_not_counted(monkeypatch):
    """A diverged (non-finite loss) or collapsed victim (training accuracy no better than the
    majority class) gets ``extra["did_not_learn"]`` and a warning; one that learned gets neither."""
    import numpy as np
    from unlearnable.train import standard
    cfg = victim_preset("cpu", epochs=2, batch_size=32, device="cpu")
    labels = np.array([0, 0, 0, 1])
    assert "majority class 75.0%" in standard.did_not_learn("v", cfg, labels, 0.75, 0.5)
    assert "final loss nan" in standard.did_not_learn("v", cfg, labels, 1.0, float("nan"))
    assert standard.did_not_learn("v", cfg, labels, 0.8, 0.5) is None
    x, y = make_learnable(200, seed=1)
    train, test = ImageDataset(x[:160], y[:160], list("abcd")), ImageDataset(x[160:], y[160:], list("abcd"))
    logged = []
    monkeypatch.setattr(standard, "log", logged.append)
    ok = train_victim(train, test, victim_preset("cpu", epochs=3, batch_size=32, lr=0.05, device="cpu"), seed=0)
    assert "did_not_learn" not in ok.extra and not logged
    blown = train_victim(train, test, victim_preset("cpu", epochs=2, batch_size=32, lr=1e8, device="cpu"),
                         seed=0, desc="victim (x)")
    assert blown.extra["did_not_learn"].startswith("victim (x): cnn did not learn")
    assert logged == [f"warning: {blown.extra['did_not_learn']}"] and blown.metrics()["did_not_learn"]
