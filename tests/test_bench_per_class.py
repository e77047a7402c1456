"""bench/per_class.py: the confusion, the group sinks and the poisons' per-class structure."""

import numpy as np
import pytest
from conftest import load_bench

per_class = load_bench("per_class")


NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def test_sinks_name_the_class_a_group_is_sent_to():
    labels = np.repeat(np.arange(10), 4)
    group = per_class.class_groups(NAMES)
    # every garment goes to dress, footwear to its own class, except one sneaker sent to a sandal
    pred = np.where(np.isin(labels, [0, 2, 3, 4, 6]), 3, labels)
    pred[labels == 7] = [7, 7, 7, 5]
    conf = per_class.confusion(labels, pred, 10)
    assert conf.sum() == len(labels) and conf[0, 3] == 4 and conf[7, 5] == 1
    s = per_class.sinks(conf, group, NAMES)
    assert s["garment"] == {"class": "dress", "share": 1.0}
    assert s["footwear"] == {"class": "sandal", "share": round(5 / 12, 4)} and s["trouser"] == {"class": "trouser", "share": 1.0}


def test_class_groups_refuse_other_datasets():
    with pytest.raises(SystemExit, match="airplane"):
        per_class.class_groups(NAMES[:9] + ["airplane"])


def test_a_class_wise_pattern_has_share_and_ncm_one_and_noise_does_not():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    clean = rng.integers(20, 230, (60, 4, 4, 1)).astype(np.uint8)
    patterns = rng.integers(-8, 9, (3, 4, 4, 1))
    classwise = (clean.astype(np.int16) + patterns[labels]).astype(np.uint8)
    got = per_class.poison_structure(clean, classwise, labels, 3)
    assert got["share"] == pytest.approx([1.0] * 3) and got["ncm"] == [1.0] * 3
    noisy = (clean.astype(np.int16) + rng.integers(-8, 9, clean.shape)).astype(np.uint8)
    got = per_class.poison_structure(clean, noisy, labels, 3)
    assert max(got["share"]) < 0.3 and min(got["ncm"]) < 1.0
