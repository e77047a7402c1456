"""bench/selection_signal.py: scoring the source on the clean images leaves the game's poisons as they were."""

import torch
from conftest import load_bench
from test_mi_ue_gen import FAST

from unlearnable.attacks import get_attack
from unlearnable.attacks.source import SourceRun
from unlearnable.data import load_dataset

selection_signal = load_bench("selection_signal")


def test_scored_game_has_the_plain_games_poisons(tiny_npz, monkeypatch):
    train = load_dataset(tiny_npz).train
    attack = get_attack("mi-ue-g").from_preset("cpu", **FAST)
    plain = attack.generate(train, seed=3)
    monkeypatch.setattr(SourceRun, "save", selection_signal.scoring_save(SourceRun.save))
    scored = attack.generate(train, seed=3)
    assert torch.equal(plain.delta, scored.delta)  # no random number drawn, no BatchNorm statistic moved
    accs = [row["source_clean_acc"] for row in scored.info["history"]]
    assert len(accs) == FAST["epochs"] and all(0.0 <= a <= 1.0 for a in accs)
    assert all("source_clean_acc" not in row for row in plain.info["history"])
