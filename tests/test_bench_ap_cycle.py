"""bench/ap_cycle.py: the relabelling makes the registry's ``y + shift`` the intended target."""

import numpy as np

from conftest import load_bench

ap_cycle = load_bench("ap_cycle")


def _images():
    """Six classes of 2x2 images whose means sit on a line at 0, 1, 10, 12, 30 and 33: the
    nearest pairs are (0, 1), (2, 3), (4, 5), and the nearest-mean walk from 0 is 0..5."""
    centres = np.array([0.0, 1.0, 10.0, 12.0, 30.0, 33.0])
    labels = np.repeat(np.array([3, 0, 5, 1, 4, 2]), 4)  # class c has centre centres[c] below
    rng = np.random.default_rng(0)
    images = centres[labels][:, None, None] + rng.normal(0, 0.01, (len(labels), 2, 2))
    return images, labels


def _through_relabelling(kind):
    """Where the registry's target ``(position + shift) mod K`` lands, in true classes."""
    images, labels = _images()
    position, shift, target = ap_cycle.target_classes(kind, images, labels)
    k = len(position)
    inverse = np.argsort(position)
    return {c: int(inverse[(position[c] + shift) % k]) for c in range(k)}, target


def test_pairs_swap_the_nearest_classes():
    landed, target = _through_relabelling("nearest-pairs")
    assert landed == target == {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4}


def test_cycle_walks_to_the_nearest_unvisited_mean():
    landed, target = _through_relabelling("nearest-mean")
    assert landed == target == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 0}


def test_shift_is_the_registry_target():
    landed, target = _through_relabelling("shift")
    assert landed == target == {c: (c + 1) % 6 for c in range(6)}
