"""Priors made offline: a backbone trained on clean images disjoint from the protected ones.

``unlearnable pretrain`` is the attacker's first step in the prior attacks of
:mod:`unlearnable.train.prior`: it trains a model on clean data that holds none of the
protected images (for the embedded data, Fashion-MNIST training images outside the
protected subset), supervised (``st``) or self-supervised (``simclr``, labels unused), and
writes an ordinary checkpoint whose ``model.json`` carries its provenance, so every
result that starts from it can say what the prior saw. No weights are downloaded.

Disjointness is checked on the pixels: an image of the data whose bytes equal the clean
original of a protected image is dropped, whatever its index or order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..data.dataset import ImageDataset, fingerprint
from ..errors import UnlearnableError
from ..models.checkpoint import save_model

PRETRAIN_PROTOCOLS = ("st", "simclr")


def image_digests(images: np.ndarray) -> list[bytes]:
    """One digest per image of a uint8 (N, H, W, C) array (equal pixels, equal digest)."""
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in images]


def without_images(data: ImageDataset, exclude: list[np.ndarray]) -> tuple[ImageDataset, int]:
    """``data`` less every image whose pixels equal one in ``exclude`` (arrays shaped like
    ``data.images``); returns the rest, in order, and how many were dropped."""
    banned = set()
    for images in exclude:
        if images.shape[1:] != data.images.shape[1:]:
            raise UnlearnableError(f"images to exclude are {tuple(images.shape[1:])}, the data's are "
                                   f"{tuple(data.images.shape[1:])}: they cannot be the same images")
        banned.update(image_digests(images))
    keep = np.array([d not in banned for d in image_digests(data.images)], dtype=bool)
    rest = data.take(np.flatnonzero(keep))
    if len(rest) == 0:
        raise UnlearnableError("no training image is left to pretrain on once the protected images are excluded")
    return rest, int((~keep).sum())


def check_pretrain_protocol(protocol: str) -> str:
    if protocol not in PRETRAIN_PROTOCOLS:
        raise UnlearnableError(f"a prior is pretrained with protocol {' or '.join(PRETRAIN_PROTOCOLS)}, "
                               f"got {protocol!r}")
    return protocol


def provenance(*, data: str, fingerprint: str, images: int, excluded: int, exclude: list[str], subset: int | None,
               protocol: str, epochs: int, seed: int, test_acc: float) -> dict:
    """What ``model.json`` records about a prior (read back into every result started from it)."""
    return {"data": data, "data_fingerprint": fingerprint, "images": images, "excluded_images": excluded,
            "exclude": list(exclude), "subset": subset, "protocol": protocol, "epochs": epochs, "seed": seed,
            "test_acc": test_acc}


def save_prior(model, folder, data: ImageDataset, *, data_name: str, model_name: str, protocol: str, epochs: int,
               seed: int, test_acc: float, excluded: int = 0, exclude=(), subset: int | None = None) -> dict:
    """Write ``model``, trained on ``data``, as a prior checkpoint in ``folder`` with its
    provenance in ``model.json`` (what ``--init`` reads back); returns the provenance."""
    prov = provenance(data=data_name, fingerprint=fingerprint(data.images, data.labels), images=len(data),
                      excluded=excluded, exclude=[str(d) for d in exclude], subset=subset, protocol=protocol,
                      epochs=epochs, seed=seed, test_acc=test_acc)
    save_model(model, folder, name=model_name, in_channels=data.channels, num_classes=data.num_classes,
               image_size=data.image_size[0], extra={"provenance": prov})
    return prov
