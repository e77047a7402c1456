"""Protect a dataset with any registered attack and write it in the lossless format.

Generation state lives in ``OUT.partial/`` (checkpointed each epoch) until the protected
dataset is complete; then the dataset appears at ``OUT`` in one rename and the partial
folder is removed. ``resume=True`` continues from the last checkpoint of a killed run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .attacks import get_attack
from .data import load_dataset, quantize, write_poisoned
from .data.dataset import DataSplits
from .errors import UnlearnableError
from .fsutil import prepare_output_dir
from .progress import log


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def poison_dataset(method: str, data: str | DataSplits, out: str | Path, *, subset: int | None = None,
                   seed: int = 0, preset: str = "cpu", overrides: dict | None = None, resume: bool = False,
                   overwrite: bool = False) -> dict:
    """Run ``method`` on the training split of ``data`` and write the result to ``out``.

    Returns the manifest. ``overrides`` are attack config fields (e.g. ``{"eps": 8/255}``).
    """
    out = Path(out)
    attack = get_attack(method).from_preset(preset, **(overrides or {}))
    prepare_output_dir(out, overwrite)
    work = partial_dir(out)
    if work.exists() and not resume:
        if not overwrite:
            raise UnlearnableError(f"an unfinished run exists in {work}; pass --resume to continue it "
                                   f"or --overwrite to start again")
        shutil.rmtree(work)
    splits = load_dataset(data) if not isinstance(data, DataSplits) else data
    train = splits.train.stratified_subset(subset, seed) if subset else splits.train
    log(f"{method}: {len(train)} training images {train.images.shape[1:]} from {splits.name}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = attack.generate(train, seed=seed, workdir=work, resume=resume)
    gen_s = time.time() - t0
    eps = attack.config.eps
    poisoned = quantize(train.images, result.delta, eps)
    manifest = write_poisoned(
        out, train, poisoned, eps=eps, method=method, test=splits.test, overwrite=overwrite,
        l0_pixels=attack.l0_pixels(),
        manifest_extra={"seed": seed, "preset": preset, "config": result.info.get("config", {}),
                        "history": result.info.get("history", []), "data": str(splits.name),
                        "subset": subset, "timings": {"generate_s": round(gen_s, 2)},
                        "resumed_from_epoch": result.info.get("resumed_from_epoch", 0)})
    shutil.rmtree(work, ignore_errors=True)
    return manifest
