"""The projected sign-gradient engine shared by every optimisation-based attack."""

from __future__ import annotations

from typing import Callable

import torch


def project(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``delta`` onto the L-inf ball of radius ``eps`` and keep ``x + delta`` in [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp_(0, 1) - x


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, delta: torch.Tensor, *,
        steps: int, step_size: float, eps: float, minimize: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        random_start: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run ``steps`` of signed-gradient descent (or ascent) on ``loss_fn(x + delta)``.

    ``delta`` stays in fp32 whatever precision ``loss_fn`` uses inside. ``transform`` is
    applied to ``x + delta`` before the loss (expectation over transformations when it is
    random). Only the input gradient is taken: parameter gradients are neither computed
    nor accumulated.
    """
    delta = delta.detach().float()
    if random_start:
        gdev = generator.device if generator is not None else torch.device("cpu")
        noise = torch.rand(delta.shape, generator=generator, device=gdev).to(delta.device)
        delta = project(x, delta + (2 * noise - 1) * eps, eps)
    sign = -1.0 if minimize else 1.0
    for _ in range(steps):
        delta.requires_grad_(True)
        inp = x + delta
        if transform is not None:
            inp = transform(inp)
        loss = loss_fn(inp)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = project(x, delta + sign * step_size * grad.sign(), eps)
    return delta.detach()


def project_dataset(images, delta: torch.Tensor, eps: float, chunk: int = 1024) -> torch.Tensor:
    """:func:`project` for a whole dataset, in place and chunk by chunk: ``images`` uint8
    NHWC (numpy), ``delta`` float NCHW on the CPU. Returns ``delta``."""
    for i in range(0, len(delta), chunk):
        x = torch.from_numpy(images[i:i + chunk]).permute(0, 3, 1, 2).float() / 255.0
        delta[i:i + chunk] = project(x, delta[i:i + chunk], eps)
    return delta
