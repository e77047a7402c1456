"""``protect_folder``: protect every image of a folder, resumably, at full resolution.

For each unit of ``unit_size`` inputs (in sorted order of their relative paths):
load each image (EXIF orientation applied), area-downsample it to the working
resolution and drop the full-resolution pixels; optimise the unit's perturbations with
MI-UE against the reference set (:mod:`.engine`); then, one image at a time, reload it,
upsample its perturbation bilinearly, round, clip to the budget in whole levels and to
[0, 255] (:func:`.resample.apply_perturbation`), write it atomically and record it.
Memory is bounded by one full-resolution image plus the working-resolution unit.

Resume: a unit whose images are all finished (see :mod:`.manifest`) is skipped; any
other unit is recomputed whole, so its images come out exactly as in an uninterrupted
run, and only its unfinished images are written. Units are cut from the sorted list of
all inputs, so they do not depend on which images were finished before. Each unit's
seed is derived from the run's seed and its images' paths and hashes.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError, check_seed
from ..fsutil import atomic_path
from ..options import NOT_GIVEN
from ..progress import Reported, bar, log
from .engine import Unit, make_config, optimise_unit
from .images import FORMATS, UnreadableImage, compose, load_image, save_image
from .manifest import Manifest, output_lock, settings_key, sha256_file
from .quality import linf_255, psnr, ssim
from .reference import load_reference, to_channels
from .resample import Geometry, apply_perturbation
from .scan import Candidate, Skipped, UnsafePath, check_dirs, safe_output_path, scan_inputs


@dataclass
class ProtectResult:
    out_dir: str
    manifest: str
    protected: int  # written by this run
    already_done: int  # finished by an earlier run and left as they were
    images: int  # inputs that now have a finished output
    skipped: list[Skipped] = field(default_factory=list)  # listed with reasons; not protected
    ignored: int = 0  # files that are not images (and hidden files)
    eps_255: int = 0
    linf_255: int | None = None  # largest L-inf actually written, over the finished inputs
    mean_psnr: float | None = None
    mean_ssim: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [asdict(s) for s in self.skipped]
        return d

    def summary(self) -> str:
        def num(v, fmt):
            return "n/a" if v is None else format(v, fmt)
        lines = [f"protected {self.protected} image(s), {self.already_done} already done, "
                 f"{len(self.skipped)} skipped, {self.ignored} non-image file(s) ignored ({self.seconds:.1f} s)",
                 f"{self.images} image(s) in {self.out_dir}: L-inf used {num(self.linf_255, 'd')}/255 "
                 f"(budget {self.eps_255}/255), mean PSNR {num(self.mean_psnr, '.2f')} dB, "
                 f"mean SSIM {num(self.mean_ssim, '.4f')}",
                 f"manifest: {self.manifest}"]
        return "\n".join(lines)


def warn(msg: str) -> None:
    """A warning the user must see even with --quiet."""
    sys.stderr.write(f"unlearnable: warning: {msg}\n")


def protect_folder(in_dir, out_dir, *, strength: str = "mid", single_class: bool = False,
                   reference: str = "fashion-mnist", seed: int = 0, eps: float = NOT_GIVEN,
                   steps: int = NOT_GIVEN, epochs: int = NOT_GIVEN, unit_size: int = NOT_GIVEN,
                   working_size: int = NOT_GIVEN, reference_per_class: int = NOT_GIVEN,
                   model: str = NOT_GIVEN, device: str = "auto", bf16: bool = False, channels_last: bool = True,
                   fmt: str = "png", force_lossy: bool = False, on_progress=None) -> ProtectResult:
    """Protect every image under ``in_dir`` into ``out_dir`` (see docs/protect.md).

    ``strength`` picks a preset (low, mid, high: budget, PGD steps, epochs); ``eps`` (pixel
    units, 8/255 = 0.0314), ``steps``, ``epochs``, ``unit_size`` (images per unit),
    ``working_size``, ``reference_per_class`` and ``model`` override it (left out: the
    preset's value). Labels come from
    the top-level sub-folders unless ``single_class``. ``reference`` is a data spec for
    the other classes. ``fmt`` png (default) or tiff are lossless; jpeg and webp are lossy
    and refused unless ``force_lossy``. Returns a :class:`ProtectResult`; unreadable and
    unsafe inputs are listed in ``skipped`` rather than raised. ``on_progress(done, total)``,
    when given, is called as images are finished (``total``: the images this run protects;
    ``done`` moves in fractions of an image while a unit is optimised).
    """
    t0 = time.time()
    cfg = make_config(strength, eps=eps, steps=steps, epochs=epochs, unit_size=unit_size,
                      working_size=working_size, reference_per_class=reference_per_class, model=model,
                      device=device, bf16=bf16, channels_last=channels_last)
    if fmt not in FORMATS:
        raise UnlearnableError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    suffix, _, lossless, _ = FORMATS[fmt]
    if not lossless:
        if not force_lossy:
            raise UnlearnableError(f"`fmt` {fmt} is lossy: compression removes much of the perturbation; "
                                   f"use png (the default) or tiff, or pass `force_lossy`")
        warn(f"writing lossy {fmt}: the compression weakens the protection and the L-inf budget is not "
             f"guaranteed (the manifest records what was actually written)")
    check_seed(seed)
    in_root, out_root = check_dirs(in_dir, out_dir)
    candidates, skipped, ignored = scan_inputs(in_root, out_root, single_class=single_class, suffix=suffix)
    if not candidates and not skipped:
        raise UnlearnableError(f"no images found in {in_dir}")
    manifest = Manifest.open(out_root)
    ref = load_reference(reference, size=cfg.working_size, per_class=cfg.reference_per_class, seed=seed)
    settings = {"config": cfg.determining(), "seed": seed, "single_class": single_class, "format": fmt,
                "reference": {"spec": str(reference), "classes": ref.train.class_names,
                              "images": len(ref.train), "fingerprint": ref.fingerprint}}
    key = settings_key(settings)
    with output_lock(out_root):
        changed = sum(1 for e in manifest.entries.values() if e.get("settings") != key)
        if changed:
            log(f"{changed} image(s) in {out_dir} were protected with other settings: they will be redone")
        manifest.settings = {**settings, "key": key, "eps_255": cfg.eps_255, "strength": strength,
                             "input_dir": str(in_root)}
        manifest.save()  # from now on the folder is recognisably ours, even if the run is killed
        run = _Run(cfg, ref, manifest, out_root, fmt, key, seed, skipped, on_progress)
        try:
            run.execute(candidates)
        finally:
            result = _result(run, candidates, out_root, manifest, ignored, cfg.eps_255, time.time() - t0)
            manifest.extra = {"last_run": {k: v for k, v in result.to_dict().items() if k != "skipped"},
                              "skipped": [asdict(s) for s in skipped]}
            manifest.save()
    return result


class _Run:
    def __init__(self, cfg, ref, manifest: Manifest, out_root: Path, fmt: str, key: str, seed: int,
                 skipped: list[Skipped], on_progress=None):
        self.cfg, self.ref, self.manifest, self.out_root = cfg, ref, manifest, out_root
        self.fmt, self.key, self.seed, self.skipped = fmt, key, seed, skipped
        self.on_progress = on_progress
        self.protected = self.already_done = 0
        self.lossless = FORMATS[fmt][2]

    def execute(self, candidates: list[Candidate]) -> None:
        bs = self.cfg.unit_size
        units = [candidates[i:i + bs] for i in range(0, len(candidates), bs)]
        plan = []
        for unit in bar(units, desc="checking inputs", unit="unit"):
            shas = {}
            for c in unit:
                try:
                    shas[c.rel] = sha256_file(c.path)
                except OSError as e:
                    self.skipped.append(Skipped(c.rel, f"cannot read file: {e.strerror or e}"))
            for c in unit:
                reason = self.manifest.known_unreadable(c.rel, shas.get(c.rel))
                if reason is not None:
                    self.skipped.append(Skipped(c.rel, reason))
                    del shas[c.rel]
            unit = [c for c in unit if c.rel in shas]
            todo = {c.rel for c in unit if not self.manifest.is_done(c.rel, shas[c.rel], self.key)}
            self.already_done += len(unit) - len(todo)
            if todo:
                plan.append((unit, shas, todo))
        with Reported(sum(len(t) for _, _, t in plan), self.on_progress, desc="protect", unit="img") as pb:
            for unit, shas, todo in plan:
                self._unit(unit, shas, todo, pb)
                self.manifest.save()

    def _unit(self, unit, shas, todo, pb) -> None:
        cfg = self.cfg
        loaded = []
        for c in unit:
            try:
                img = load_image(c.path)
            except UnreadableImage as e:
                self.manifest.record_unreadable(c.rel, shas[c.rel], str(e))
                if c.rel in todo:
                    self.skipped.append(Skipped(c.rel, str(e)))
                    pb.update(1)
                continue
            geo = Geometry(img.pixels.shape[0], img.pixels.shape[1], cfg.working_size)
            loaded.append((c, geo, geo.downsample(img.pixels), img.channels))
            del img  # only the working-resolution copy is kept
        if not loaded:
            return
        channels = 3 if any(ch == 3 for *_, ch in loaded) else 1
        classes = sorted({c.label for c, *_ in loaded})
        x = np.stack([to_channels(np.clip(np.rint(xw), 0, 255).astype(np.uint8)[None], channels)[0]
                      for _, _, xw, _ in loaded])
        unit_in = Unit(x=x, labels=np.array([classes.index(c.label) for c, *_ in loaded], dtype=np.int64),
                       grey=np.array([ch == 1 for *_, ch in loaded]),
                       seen_h=np.stack([g.seen[0] for _, g, _, _ in loaded]),
                       seen_w=np.stack([g.seen[1] for _, g, _, _ in loaded]))
        n_todo = sum(1 for c, *_ in loaded if c.rel in todo)
        delta = optimise_unit(unit_in, self.ref.images(channels), self.ref.train.labels + len(classes),
                              len(classes) + self.ref.train.num_classes, cfg, seed=self._seed(loaded, shas),
                              on_epoch=lambda _: pb.update(0.5 * n_todo / cfg.epochs))
        for (c, geo, _, _), d in zip(loaded, delta):
            if c.rel in todo:
                self._write(c, geo, d, shas[c.rel])
                pb.update(0.5)

    def _seed(self, loaded, shas) -> int:
        h = hashlib.sha256(str(self.seed).encode())
        for c, *_ in loaded:
            h.update(f"\n{c.rel}\t{shas[c.rel]}".encode())
        return int.from_bytes(h.digest()[:8], "little") & (2 ** 63 - 1)

    def _write(self, c: Candidate, geo: Geometry, d: np.ndarray, sha: str) -> None:
        try:
            img = load_image(c.path)
            dest = safe_output_path(self.out_root, c.out_rel)
        except (UnreadableImage, UnsafePath) as e:
            self.skipped.append(Skipped(c.rel, str(e)))
            return
        out = apply_perturbation(img.pixels, d[..., :img.channels], geo, self.cfg.eps_255)
        try:
            with atomic_path(dest, suffix=dest.suffix) as tmp:
                save_image(compose(out, img.alpha, img.out_mode), tmp, self.fmt, img.icc_profile)
                out_sha = sha256_file(tmp)
        except (OSError, ValueError) as e:  # e.g. a mode the chosen format cannot store
            if isinstance(e, OSError) and e.errno is not None:
                raise  # the disk, not this image (no space, read-only, I/O): stop; a rerun resumes
            self.skipped.append(Skipped(c.rel, f"cannot write {self.fmt}: {e}"))
            return
        if not self.lossless:  # measure what the file holds, not what was encoded
            out = load_image(dest).pixels
        w, h = img.size
        self.manifest.record({
            "input": c.rel, "output": c.out_rel, "class": c.label, "size": [w, h], "mode": img.mode,
            "out_mode": img.out_mode, "linf_255": linf_255(out, img.pixels), "psnr": _round(psnr(out, img.pixels)),
            "ssim": _round(ssim(out, img.pixels), 6), "sha256": sha, "output_sha256": out_sha,
            "settings": self.key})
        self.protected += 1


def _round(v, nd=4):
    return None if v is None else round(float(v), nd)


def _result(run: _Run, candidates, out_root: Path, manifest: Manifest, ignored: int, eps_255: int,
            seconds: float) -> ProtectResult:
    current = {c.rel for c in candidates}
    done = [e for k, e in manifest.entries.items() if k in current and e.get("settings") == run.key]
    psnrs = [e["psnr"] for e in done if e.get("psnr") is not None]
    return ProtectResult(
        out_dir=str(out_root), manifest=str(manifest.path), protected=run.protected, already_done=run.already_done,
        images=len(done), skipped=list(run.skipped), ignored=ignored, eps_255=eps_255,
        linf_255=max((e["linf_255"] for e in done), default=None),
        mean_psnr=_round(np.mean(psnrs)) if psnrs else None,
        mean_ssim=_round(np.mean([e["ssim"] for e in done]), 6) if done else None,
        seconds=round(seconds, 2))
