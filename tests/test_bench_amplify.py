"""bench/amplify_poisons.py: scaling a written perturbation keeps the budget and the pixel range."""

import numpy as np
from conftest import load_bench

amplify_poisons = load_bench("amplify_poisons")


def test_amplify_rounds_clips_to_the_budget_and_the_pixel_range():
    clean = np.array([[0, 0, 100, 100, 250, 3]], dtype=np.uint8)
    delta = np.array([[3, 5, -3, 6, 5, -3]], dtype=np.int16)  # as written: clean + delta in [0, 255]
    assert np.array_equal(amplify_poisons.amplify(clean, delta, 1.0, 8), (clean + delta).astype(np.uint8))
    out = amplify_poisons.amplify(clean, delta, 2.0, 8)
    assert out.dtype == np.uint8
    assert out.tolist() == [[6, 8, 94, 108, 255, 0]]  # 2x, then the 8-level budget, then [0, 255]
    assert amplify_poisons.amplify(clean, delta, 1.25, 8).tolist() == [[4, 6, 96, 108, 255, 0]]  # rounded to the nearest level


def test_budget_use_splits_black_pixels_from_the_object():
    clean = np.array([0, 0, 50, 50], dtype=np.uint8)
    images = np.array([4, 0, 47, 55], dtype=np.uint8)
    assert amplify_poisons.budget_use(clean, images) == {"mean_abs_bg_255": 2.0, "mean_abs_obj_255": 4.0}
