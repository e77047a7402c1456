"""The estimators' common interface (:class:`MIEstimator`), the slice layout and the
thread settings they share.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ...errors import UnlearnableError


def gaussian_mi(rho) -> np.ndarray:
    """Closed form for a bivariate Gaussian with correlation ``rho``: -1/2 ln(1 - rho^2)."""
    rho = np.asarray(rho, dtype=np.float64)
    return -0.5 * np.log1p(-rho * rho)


def _as_slices(u, v) -> tuple[np.ndarray, np.ndarray, bool]:
    u, v = np.asarray(u), np.asarray(v)
    single = u.ndim == 1
    if single:
        u, v = u[None, :], v[None, :]
    if u.ndim != 2 or u.shape != v.shape:
        raise UnlearnableError(f"u and v must both be (m, n) arrays of the same shape, got {u.shape} and {v.shape}")
    if u.shape[1] < 2:
        raise UnlearnableError(f"need at least 2 samples per slice, got {u.shape[1]}")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise UnlearnableError("u and v must be finite (NaN or inf found)")
    return u, v, single


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Rows to mean 0, standard deviation 1 (constant rows stay constant at 0)."""
    x = x - x.mean(dim=1, keepdim=True)
    sd = x.std(dim=1, keepdim=True, unbiased=False)
    return x / torch.where(sd > 0, sd, torch.ones_like(sd))


def default_jobs() -> int:
    """Worker threads for estimators: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run torch single-threaded inside each worker: parallelism comes from the workers.

    (Intra-op threads on a busy machine spin-wait on descheduled peers; independent
    workers over chunks of slices degrade gracefully instead.)
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class MIEstimator:
    """Base class: subclasses implement :meth:`_estimate` on an (m, n) chunk of slices.

    ``n_jobs`` worker threads process chunks of ``chunk`` slices in parallel (numpy and
    torch release the GIL); results do not depend on ``n_jobs``.
    """

    name = "base"
    #: slices processed per vectorised chunk (bounds peak memory)
    chunk = 128
    n_jobs: int | None = None
    _param_names: tuple[str, ...] = ()

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self._param_names}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def estimate(self, u, v) -> np.ndarray:
        """Per-slice MI in nats: ``u``, ``v`` of shape (m, n) -> (m,) (a float for 1-D input)."""
        u, v, single = _as_slices(u, v)
        m = u.shape[0]
        out = np.empty(m, dtype=np.float64)
        starts = list(range(0, m, self.chunk))

        def work(a):
            out[a:a + self.chunk] = self._estimate(u[a:a + self.chunk], v[a:a + self.chunk], a // self.chunk)

        jobs = min(len(starts), self.n_jobs or default_jobs())
        with _torch_threads(1):
            if jobs <= 1:
                for a in starts:
                    work(a)
            else:
                with ThreadPoolExecutor(jobs) as ex:
                    list(ex.map(work, starts))
        return float(out[0]) if single else out

    def fit(self, u, v) -> "MIEstimator":
        self.mi_ = self.estimate(u, v)
        return self

    def _estimate(self, u: np.ndarray, v: np.ndarray, chunk_index: int) -> np.ndarray:
        raise NotImplementedError


# --------------------------------------------------------------------------- histogram
