"""MI-UE-G (MI-UE's game with a perturbation generator) and MI-UE's T_theta knob."""

import numpy as np
import pytest
import torch
from conftest import crash_then_resume

from unlearnable.attacks import get_attack, mi_loss
from unlearnable.attacks.mi_ue import MIUE
from unlearnable.data import load_dataset, quantize, read_poisoned
from unlearnable.data.poisoned import budget_levels
from unlearnable.errors import UnlearnableError
from unlearnable.models import model_names, register_model
from unlearnable.models.cnn import ConvNet4
from unlearnable.poison import poison_dataset

if "test-cnn-w8" not in model_names():
    register_model("test-cnn-w8")(lambda **kw: ConvNet4(width=8, **kw))

FAST = dict(model="test-cnn-w8", device="cpu", channels_last=False, batch_size=32, epochs=2, gen_width=8,
            gen_lr=1e-2)


def spy_mi_ue_gen(monkeypatch, name: str, record=lambda obj: obj) -> list:
    """Replace mi_ue_gen's class ``name`` by a subclass that appends ``record(instance)``,
    right after construction, to the returned list."""
    from unlearnable.attacks import mi_ue_gen
    made = []

    class Spy(getattr(mi_ue_gen, name)):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(record(self))

    monkeypatch.setattr(mi_ue_gen, name, Spy)
    return made


def spy_source_run(monkeypatch) -> dict:
    """Record mi-ue-g's last SourceRun under ``"run"`` (its source model, after generate)."""
    seen = {}
    spy_mi_ue_gen(monkeypatch, "SourceRun", lambda run: seen.__setitem__("run", run))
    return seen


def test_budget_on_disk_and_same_seed(tiny_npz, tmp_path):
    m = poison_dataset("mi-ue-g", str(tiny_npz), tmp_path / "out", seed=0, overrides=FAST)
    back = read_poisoned(tmp_path / "out")
    assert m["method"] == "mi-ue-g" and int(np.abs(back.delta).max()) == m["linf_255"]
    assert 0 < m["linf_255"] <= budget_levels(8 / 255)
    train = load_dataset(tiny_npz).train
    attack = get_attack("mi-ue-g").from_preset("cpu", **FAST)
    again = quantize(train.images, attack.generate(train, seed=0).delta, attack.config.eps)
    np.testing.assert_array_equal(again, back.poisoned.images)
    assert not np.array_equal(quantize(train.images, attack.generate(train, seed=1).delta, attack.config.eps), again)


def test_resume_after_crash_is_bit_identical(tiny_npz, tmp_path, monkeypatch):
    train = load_dataset(tiny_npz).train
    over = dict(FAST, epochs=3)
    full, resumed = crash_then_resume(lambda: get_attack("mi-ue-g")(**over), train, tmp_path, monkeypatch)
    assert resumed.info["resumed_from_epoch"] == 2 and len(resumed.info["history"]) == 3
    assert torch.equal(resumed.delta, full.delta)


def test_generator_lowers_the_mi_loss_of_the_source(tiny_npz, monkeypatch):
    """The poisons are trained on L_mi: against the final source model, they give a lower
    L_mi than no perturbation and than a random sign pattern of the same size."""
    train = load_dataset(tiny_npz).train
    seen = spy_source_run(monkeypatch)
    res = get_attack("mi-ue-g")(**dict(FAST, epochs=6)).generate(train, seed=0)
    model = seen["run"].model.eval()
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels)
    noise = torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0))) * res.delta.abs().mean()
    with torch.no_grad():
        loss = {k: float(mi_loss(model.features((x + d).clamp(0, 1)), y))
                for k, d in {"poison": res.delta, "none": torch.zeros_like(x), "noise": noise}.items()}
    assert loss["poison"] < loss["none"] and loss["poison"] < loss["noise"]


def test_config_is_checked():
    with pytest.raises(UnlearnableError, match="eps must be in"):
        get_attack("mi-ue-g")(eps=0.0)
    with pytest.raises(UnlearnableError, match="gen_lr"):
        get_attack("mi-ue-g")(gen_lr=0.0)
    with pytest.raises(UnlearnableError, match="source_steps"):
        MIUE(source_steps=0)


def test_mi_ue_source_steps_sets_the_source_batches_per_epoch(tiny_npz, monkeypatch):
    """T_theta: ``source_steps`` SGD batches per epoch (more than one pass when asked),
    one full pass when None (the default, as before)."""
    from unlearnable.attacks.source import SourceRun
    train = load_dataset(tiny_npz).train  # 160 images: 5 batches of 32
    calls = []
    real = SourceRun.train_pass

    def counting(self, *a, max_batches=None, **k):
        calls.append(max_batches)
        return real(self, *a, max_batches=max_batches, **k)

    monkeypatch.setattr(SourceRun, "train_pass", counting)
    base = dict(model="test-cnn-w8", device="cpu", channels_last=False, batch_size=32, epochs=2, pgd_steps=1,
                forward_chunk=32)
    MIUE(**base).generate(train, seed=0)
    assert calls == [None, None]
    calls.clear()
    MIUE(**base, source_steps=7).generate(train, seed=0)
    assert calls == [5, 2, 5, 2]


def test_class_interleaved_batches_hold_every_class_in_proportion():
    """``batches(stratify=labels)``: a permutation (every item once per epoch), seeded, and every
    batch holds each class within one of its proportional share, imbalanced classes included."""
    from unlearnable.train.loops import batches
    y = torch.tensor([0] * 500 + [1] * 300 + [2] * 100 + [3] * 7)[torch.randperm(907, generator=torch.Generator().manual_seed(1))]
    share = torch.bincount(y).double() / len(y)
    epoch = list(batches(len(y), 64, torch.Generator().manual_seed(0), "cpu", stratify=y))
    assert sorted(torch.cat(epoch).tolist()) == list(range(len(y)))
    for idx in epoch:
        counts = torch.bincount(y[idx], minlength=4).double()
        assert ((counts - share * len(idx)).abs() <= 1.0 + 1e-9).all(), counts
    again = list(batches(len(y), 64, torch.Generator().manual_seed(0), "cpu", stratify=y))
    other = list(batches(len(y), 64, torch.Generator().manual_seed(1), "cpu", stratify=y))
    assert all(torch.equal(a, b) for a, b in zip(epoch, again))
    assert not torch.equal(torch.cat(epoch), torch.cat(other))
    plain = list(batches(len(y), 64, torch.Generator().manual_seed(0), "cpu"))
    worst = max(float((torch.bincount(y[i], minlength=4).double() - share * len(i)).abs().max()) for i in plain)
    assert worst > 1.0  # what the option changes: random batches of 64 stray further than one


@pytest.mark.parametrize("method", ["mi-ue", "mi-ue-g"])
def test_balanced_batches_change_the_poison_batches(method, tiny_npz, monkeypatch):
    """``balanced_batches``: every poison batch is class-proportional (mi-ue through the source run's
    poison pass, mi-ue-g through its own loop); off by default, so the default output is unchanged."""
    from unlearnable.train import loops
    train = load_dataset(tiny_npz).train
    over = (dict(model="test-cnn-w8", device="cpu", channels_last=False, batch_size=32, epochs=1, pgd_steps=1,
                 forward_chunk=32) if method == "mi-ue" else dict(FAST, epochs=1))
    seen = []
    real = loops.class_interleaved_order

    def recording(labels, generator):
        seen.append(len(labels))
        return real(labels, generator)

    monkeypatch.setattr(loops, "class_interleaved_order", recording)
    plain = get_attack(method)(**over).generate(train, seed=0).delta
    assert seen == []
    balanced = get_attack(method)(**over, balanced_batches=True).generate(train, seed=0).delta
    assert seen == [len(train)]
    assert not torch.equal(plain, balanced)


def test_class_maps_add_a_per_class_pattern_before_the_tanh():
    from unlearnable.attacks.generator import PerturbationGenerator
    torch.manual_seed(0)
    g = PerturbationGenerator(1, width=2, levels=2, num_classes=3, map_size=(9, 7)).eval()
    x = torch.rand(2, 1, 9, 7)
    with torch.no_grad():
        same = g(x, torch.tensor([0, 1]))  # the maps start at zero
        g.class_maps[1] = 50.0
        g.class_maps[2] = -50.0
        out = g(x[:1].expand(3, -1, -1, -1), torch.tensor([0, 1, 2]))
    assert torch.equal(same[0], out[0])  # class 0's map is still zero
    assert torch.all(out[1] > 0.99) and torch.all(out[2] < -0.99)
    g.zero_grad()
    g(x, torch.tensor([0, 0])).sum().backward()
    assert g.class_maps.grad[0].abs().sum() > 0 and g.class_maps.grad[1:].abs().sum() == 0
    with pytest.raises(ValueError, match="num_classes"):
        PerturbationGenerator(1, width=2, levels=1, map_size=(9, 7))


def test_mi_ue_g_class_maps_keep_the_budget_and_change_the_poisons(tiny_npz):
    train = load_dataset(tiny_npz).train
    plain = get_attack("mi-ue-g")(**FAST).generate(train, seed=0).delta
    maps = get_attack("mi-ue-g")(**FAST, class_maps=True).generate(train, seed=0).delta
    eps = get_attack("mi-ue-g")(**FAST).config.eps
    assert maps.shape == plain.shape and 0 < maps.abs().max() <= eps + 1e-6
    assert not torch.equal(maps, plain)
    with pytest.raises(UnlearnableError, match="class_maps needs label_input"):
        get_attack("mi-ue-g")(class_maps=True, label_input=False)


def test_source_restarts_reinitialise_the_source_and_resume_bit_identically(tiny_npz, tmp_path, monkeypatch):
    """``source_restart_epochs``: a fresh source model (and SGD cycle) at every multiple of it,
    drawn from a seed of its own, so a run resumed across a restart equals an uninterrupted one."""
    from unlearnable.attacks.source import SourceRun
    train = load_dataset(tiny_npz).train
    over = dict(FAST, epochs=4, source_restart_epochs=2)
    full, resumed = crash_then_resume(lambda: get_attack("mi-ue-g")(**over), train, tmp_path, monkeypatch,
                                      crash_after=2)
    assert resumed.info["resumed_from_epoch"] == 2 and torch.equal(resumed.delta, full.delta)
    real, calls = SourceRun.restart_model, []

    def spy(run, seed, epochs):
        before = [p.detach().clone() for p in run.model.parameters()]
        real(run, seed, epochs)
        calls.append((seed, epochs, any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters())),
                      run.opt.param_groups[0]["lr"]))

    monkeypatch.setattr(SourceRun, "restart_model", spy)
    get_attack("mi-ue-g")(**dict(FAST, epochs=5, source_restart_epochs=2)).generate(train, seed=3)
    assert [c[:3] for c in calls] == [(3 * 100_003 + 2, 2, True), (3 * 100_003 + 4, 2, True)]
    assert all(c[3] == FAST.get("lr", get_attack("mi-ue-g")().config.lr) for c in calls)
    with pytest.raises(UnlearnableError, match="source_restart_epochs"):
        get_attack("mi-ue-g")(source_restart_epochs=-1)


def test_gen_ema_writes_the_poisons_from_the_averaged_generator_and_resumes(tiny_npz, tmp_path, monkeypatch):
    """``gen_ema``: the poisons come from an exponential moving average of the generator's
    weights (a different delta within the budget), and the average survives a resume."""
    train = load_dataset(tiny_npz).train
    over = dict(FAST, epochs=3, gen_ema=0.9)
    full, resumed = crash_then_resume(lambda: get_attack("mi-ue-g")(**over), train, tmp_path, monkeypatch)
    assert resumed.info["resumed_from_epoch"] == 2 and torch.equal(resumed.delta, full.delta)
    plain = get_attack("mi-ue-g")(**dict(FAST, epochs=3)).generate(train, seed=0).delta
    eps = get_attack("mi-ue-g")(**FAST).config.eps
    assert not torch.equal(full.delta, plain) and 0 < full.delta.abs().max() <= eps + 1e-6
    with pytest.raises(UnlearnableError, match="gen_ema"):
        get_attack("mi-ue-g")(gen_ema=1.0)


def test_gen_steps_takes_that_many_generator_steps_per_source_step(tiny_npz, monkeypatch):
    from unlearnable.attacks import mi_ue_gen
    train = load_dataset(tiny_npz).train
    calls = []
    real = mi_ue_gen.mi_loss
    monkeypatch.setattr(mi_ue_gen, "mi_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    one = get_attack("mi-ue-g")(**FAST).generate(train, seed=0).delta
    n_one = len(calls)
    two = get_attack("mi-ue-g")(**FAST, gen_steps=2).generate(train, seed=0).delta
    assert len(calls) - n_one == 2 * n_one and not torch.equal(one, two)
    with pytest.raises(UnlearnableError, match="gen_steps"):
        get_attack("mi-ue-g")(gen_steps=0)


def test_gen_ce_adds_the_source_cross_entropy_to_the_generator_loss(tiny_npz, monkeypatch):
    """``gen_ce``: with L_mi switched off (a zero loss), the generator is driven by the CE
    term alone: without it it never moves (its output stays the untrained one), with it the
    poisons change and give the final source model a lower CE than the unmoved generator's."""
    from unlearnable.attacks import mi_ue_gen
    train = load_dataset(tiny_npz).train
    monkeypatch.setattr(mi_ue_gen, "mi_loss", lambda z, *a, **k: 0.0 * z.sum())
    seen = spy_source_run(monkeypatch)
    still = get_attack("mi-ue-g")(**FAST).generate(train, seed=0).delta
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels).long()
    driven = get_attack("mi-ue-g")(**FAST, gen_ce=10.0).generate(train, seed=0).delta
    assert not torch.equal(still, driven)
    model = seen["run"].model.eval()
    eps = get_attack("mi-ue-g")(**FAST).config.eps

    def ce(delta):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model((x + delta).clamp(0, 1)), y).item()

    assert ce(driven) < ce(still)
    assert 0 < driven.abs().max() <= eps + 1e-6
    with pytest.raises(UnlearnableError, match="gen_ce"):
        get_attack("mi-ue-g")(gen_ce=-1.0)


def test_interval_poison_maps_tanh_onto_each_pixels_feasible_interval():
    from unlearnable.attacks.generator import interval_poison
    eps = 8 / 255
    x = torch.tensor([0.0, 0.01, 0.5, 0.2, 0.995, 1.0]).repeat_interleave(101)
    t = torch.linspace(-1, 1, 101).repeat(6).requires_grad_()
    xp = interval_poison(x, t, eps)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    assert torch.all(xp >= lo - 1e-7) and torch.all(xp <= hi + 1e-7)
    interior = (x >= eps) & (x <= 1 - eps)  # a full 2 eps interval: the usual x + eps * t
    torch.testing.assert_close(xp[interior], (x + eps * t)[interior])
    xp.sum().backward()
    assert torch.all(t.grad > 0)  # every pixel, black and white ones included, still moves with t
    clipped = t.detach().clone().requires_grad_()
    (x + eps * clipped).clamp(0, 1).sum().backward()
    black_neg = (x == 0) & (t.detach() < 0)
    assert black_neg.any() and torch.all(clipped.grad[black_neg] == 0)  # what the option mends
    ends = xp.detach().view(6, 101)[:, [0, -1]]
    torch.testing.assert_close(ends, torch.stack([lo.view(6, 101)[:, 0], hi.view(6, 101)[:, 0]], 1))


def test_mi_ue_g_interval_output_spends_the_budget_on_black_pixels(tiny_npz, monkeypatch):
    """On black pixels the clipped output writes 0 wherever the generator is negative (about
    half of them at the start); the interval output writes a positive change there. The
    generator is trained through the map (every weight moves)."""
    import copy

    from unlearnable.data import ImageDataset
    made = spy_mi_ue_gen(monkeypatch, "PerturbationGenerator", lambda net: (net, copy.deepcopy(net.state_dict())))
    base = load_dataset(tiny_npz).train
    images = base.images.copy()
    images[:, :6] = 0  # a black band, as Fashion-MNIST's background
    train = ImageDataset(images, base.labels, base.class_names)
    over = dict(FAST, epochs=1)
    clipped = get_attack("mi-ue-g")(**over).generate(train, seed=0).delta
    interval = get_attack("mi-ue-g")(**over, interval_output=True).generate(train, seed=0).delta
    net, start = made[-1]
    weights = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    assert weights and all(not torch.equal(net.state_dict()[k], start[k]) for k in weights)
    eps = get_attack("mi-ue-g")(**over).config.eps
    black = torch.from_numpy(images == 0).permute(0, 3, 1, 2)
    assert 0 < interval.abs().max() <= eps + 1e-6 and torch.all(interval[black] >= 0)
    zero_clipped, zero_interval = (clipped[black] == 0).float().mean(), (interval[black] == 0).float().mean()
    assert zero_clipped > 0.2 and zero_interval < 0.05, (zero_clipped, zero_interval)
    # The interior is the same map: with the interval output off the option changes nothing.
    assert torch.equal(get_attack("mi-ue-g")(**over, interval_output=False).generate(train, seed=0).delta, clipped)


def test_restarts_keep_the_game_with_the_lowest_final_mi_loss(tiny_npz):
    from unlearnable.attacks.mi_ue_gen import RESTART_SEED_STRIDE
    train = load_dataset(tiny_npz).train
    res = get_attack("mi-ue-g")(**FAST, restarts=3).generate(train, seed=5)
    singles = [get_attack("mi-ue-g")(**FAST).generate(train, seed=5 + r * RESTART_SEED_STRIDE) for r in range(3)]
    finals = [s.info["history"][-1]["mi_loss"] for s in singles]
    assert [r["seed"] for r in res.info["restarts"]] == [5, 5 + RESTART_SEED_STRIDE, 5 + 2 * RESTART_SEED_STRIDE]
    assert [r["final_mi_loss"] for r in res.info["restarts"]] == finals
    assert len(set(finals)) == 3 and res.info["kept_restart"] == int(np.argmin(finals))
    assert torch.equal(res.delta, singles[int(np.argmin(finals))].delta)
    # One restart is the plain game, its info unchanged.
    one = get_attack("mi-ue-g")(**FAST, restarts=1).generate(train, seed=5)
    assert torch.equal(one.delta, singles[0].delta) and "restarts" not in one.info
    with pytest.raises(UnlearnableError, match="restarts must be >= 1"):
        get_attack("mi-ue-g")(restarts=0)


def test_restarts_resume_after_a_crash_in_the_second_game(tiny_npz, tmp_path, monkeypatch):
    train = load_dataset(tiny_npz).train
    # epochs 2: the first game saves twice, the crash comes after the second game's first epoch
    full, resumed = crash_then_resume(lambda: get_attack("mi-ue-g")(**FAST, restarts=2), train, tmp_path,
                                      monkeypatch, crash_after=3)
    assert (tmp_path / "restart-1" / "checkpoint.pt").is_file()
    assert resumed.info["restarts"] == full.info["restarts"] and resumed.info["kept_restart"] == full.info["kept_restart"]
    assert torch.equal(resumed.delta, full.delta)


def test_within_class_share_is_zero_for_a_class_wise_pattern_and_matches_the_readable_form():
    from unlearnable.attacks.mi_ue_gen import within_class_share
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 1, 3])
    patterns = torch.randn(4, 1, 5, 5, generator=g)
    assert within_class_share(patterns[y], y, 4).item() == pytest.approx(0.0, abs=1e-6)
    d = torch.randn(6, 1, 5, 5, generator=g)
    readable = sum(((d[i] - d[y == y[i]].mean(0)) ** 2).sum() for i in range(6)) / (d ** 2).sum()
    assert within_class_share(d, y, 4).item() == pytest.approx(readable.item(), rel=1e-5)
    assert 0.3 < readable < 1  # noise: most of the energy is not the class mean


def test_class_consistency_makes_each_class_closer_to_one_pattern():
    """On noise images the plain game's poisons vary within a class; with the consistency
    term in the generator's loss their within-class share of the energy falls well below
    the plain game's. The budget holds."""
    from unlearnable.attacks.mi_ue_gen import within_class_share
    from unlearnable.data import ImageDataset
    rng = np.random.default_rng(0)
    train = ImageDataset(rng.integers(0, 256, (128, 16, 16, 1), dtype=np.uint8), np.arange(128) % 4,
                         ["a", "b", "c", "d"])
    y = torch.from_numpy(train.labels).long()
    over = dict(FAST, epochs=4)  # by then the plain generator's output depends on the image
    plain = get_attack("mi-ue-g")(**over).generate(train, seed=0).delta
    pushed = get_attack("mi-ue-g")(**over, class_consistency=1.0).generate(train, seed=0).delta
    before, after = within_class_share(plain, y, 4), within_class_share(pushed, y, 4)
    assert after < 0.5 * before, (before, after)
    eps = get_attack("mi-ue-g")(**FAST).config.eps
    assert 0 < pushed.abs().max() <= eps + 1e-6
    with pytest.raises(UnlearnableError, match="class_consistency"):
        get_attack("mi-ue-g")(class_consistency=-1.0)


def test_nearest_partners_pair_the_closest_class_means_and_swap():
    from unlearnable.attacks.partners import class_mean_distances, nearest_partners
    centres = torch.tensor([0.0, 1.0, 10.0, 12.0, 30.0])  # class c's images sit around centres[c]
    y = torch.arange(5).repeat_interleave(3)
    x = (centres[y] + torch.tensor([-0.1, 0.0, 0.1]).repeat(5)).view(-1, 1, 1, 1)
    dist = class_mean_distances(x, y, 5)
    assert dist[0, 1].item() == pytest.approx(1.0) and dist[2, 3].item() == pytest.approx(4.0)
    assert nearest_partners(x[:12], y[:12], 4).tolist() == [1, 0, 3, 2]
    # odd K: the class left over (30) takes its nearest class (12), which keeps its own partner
    assert nearest_partners(x, y, 5).tolist() == [1, 0, 3, 2, 3]
    # greedy, closest pair first: 1-2 (distance 1) beats 0-1 (2), so 0 pairs with 3
    line = torch.tensor([0.0, 2.0, 3.0, 7.0]).view(-1, 1, 1, 1)
    assert nearest_partners(line, torch.arange(4), 4).tolist() == [3, 2, 1, 0]


PARTNER = dict(partner_model="linear", partner_epochs=3)


def test_partner_term_aims_the_poisons_at_each_class_partner(tiny_npz, monkeypatch):
    """``partner_weight``: with L_mi switched off (a zero loss) the generator is driven by the
    partner term alone: without it it never moves, with it the poisons give the frozen
    clean-trained partner model a lower cross-entropy towards each class's partner than the
    unmoved generator's. The partners and the budget are reported and kept."""
    from unlearnable.attacks import mi_ue_gen
    train = load_dataset(tiny_npz).train
    monkeypatch.setattr(mi_ue_gen, "mi_loss", lambda z, *a, **k: 0.0 * z.sum())
    nets = []
    real = mi_ue_gen.clean_trained_model
    monkeypatch.setattr(mi_ue_gen, "clean_trained_model", lambda *a, **k: nets.append(real(*a, **k)) or nets[-1])
    still = get_attack("mi-ue-g")(**FAST).generate(train, seed=0).delta
    assert nets == []  # weight 0: no partner model is trained
    res = get_attack("mi-ue-g")(**FAST, **PARTNER, partner_weight=10.0).generate(train, seed=0)
    (net,) = nets
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels).long()
    partner = torch.tensor(res.info["partners"])
    assert sorted(partner.tolist()) == [0, 1, 2, 3] and torch.equal(partner[partner], torch.arange(4))

    def ce(delta):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(net((x + delta).clamp(0, 1)), partner[y]).item()

    assert ce(res.delta) < ce(still)
    assert 0 < res.delta.abs().max() <= get_attack("mi-ue-g")(**FAST).config.eps + 1e-6


def test_partner_refinement_lowers_the_partner_loss_within_the_budget(tiny_npz, monkeypatch):
    """``partner_refine_steps`` without the generator's term: the game is the plain one (its
    streams are seeded after the partner model is trained), then per-image PGD moves each
    poison so that the frozen partner model's cross-entropy towards the partner falls, inside
    the budget and the pixel range. A refinement that ignored the target would not lower it."""
    from unlearnable.attacks import mi_ue_gen
    train = load_dataset(tiny_npz).train
    nets = []
    real = mi_ue_gen.clean_trained_model
    monkeypatch.setattr(mi_ue_gen, "clean_trained_model", lambda *a, **k: nets.append(real(*a, **k)) or nets[-1])
    plain = get_attack("mi-ue-g")(**FAST).generate(train, seed=0)
    refined = get_attack("mi-ue-g")(**FAST, **PARTNER, partner_refine_steps=5).generate(train, seed=0)
    (net,) = nets
    assert refined.info["history"] == [{**h, "seconds": r["seconds"]} for h, r in
                                       zip(plain.info["history"], refined.info["history"])]
    x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(train.labels).long()
    partner = torch.tensor(refined.info["partners"])

    def ce(delta):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(net(x + delta), partner[y]).item()

    eps = get_attack("mi-ue-g")(**FAST).config.eps
    assert ce(refined.delta) < ce(plain.delta)
    assert not torch.equal(refined.delta, plain.delta) and refined.delta.abs().max() <= eps + 1e-6
    assert (x + refined.delta).min() >= 0 and (x + refined.delta).max() <= 1


def test_partner_term_resumes_bit_identically(tiny_npz, tmp_path, monkeypatch):
    train = load_dataset(tiny_npz).train
    over = dict(FAST, **PARTNER, epochs=3, partner_weight=1.0)
    full, resumed = crash_then_resume(lambda: get_attack("mi-ue-g")(**over), train, tmp_path, monkeypatch)
    assert resumed.info["resumed_from_epoch"] == 2 and torch.equal(resumed.delta, full.delta)
    assert resumed.info["partners"] == full.info["partners"]


@pytest.mark.parametrize("bad, match", [({"partner_weight": -1.0}, "partner_weight"),
                                        ({"partner_epochs": 0}, "partner_epochs"),
                                        ({"partner_refine_steps": -1}, "partner_refine_steps"),
                                        ({"partner_model": "no-such-net"}, "partner_model")])
def test_partner_config_is_checked(bad, match):
    with pytest.raises(UnlearnableError, match=match):
        get_attack("mi-ue-g")(**bad)
