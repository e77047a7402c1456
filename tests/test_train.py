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
