"""Small CPU runs through the command line, and a SHA-256 of what each leaves on disk.

Run by ``tests/test_pins.py`` in a fresh process with one intra-op thread (CPU kernels
split their sums by thread count, so the last bits of a run depend on it):

    OMP_NUM_THREADS=1 python tests/pin_runs.py WORKDIR   # prints {job: sha256} as JSON

Every job runs in WORKDIR with relative paths. A job's digest covers every file it wrote,
by relative path: the bytes of images, arrays and weights; JSON with its timings, dates, devices
and versions left out and the work folder's path replaced (they differ between runs of the same thing), everything else kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_learnable  # noqa: E402

#: Keys whose values differ between two runs of the same job (wall times, dates, the
#: machine), dropped from JSON before hashing.
VOLATILE = {"seconds", "task_seconds", "finished_at", "started_at", "train_seconds", "generate_s", "defense_seconds",
            "write_s", "read_s", "victim_s", "timings", "device", "created", "created_utc", "date", "host", "platform", "python",
            "torch", "version", "versions", "elapsed_s", "mi_seconds", "total_seconds", "eta_s", "throughput",
            "images_per_s", "seconds_per_image", "wall_s", "load"}


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def file_digest(path: Path) -> str:
    if path.suffix in (".json", ".jsonl"):
        text = path.read_text().replace(json.dumps(str(Path.cwd()))[1:-1], "<workdir>")
        lines = text.splitlines() if path.suffix == ".jsonl" else [text]
        text = "\n".join(json.dumps(_stable(json.loads(x)), sort_keys=True) for x in lines if x.strip())
        return hashlib.sha256(text.encode()).hexdigest()
    if path.suffix == ".npz":  # the arrays, not the zip container's member dates
        with np.load(path, allow_pickle=False) as z:
            h = hashlib.sha256()
            for k in sorted(z.files):
                a = z[k]
                h.update(f"{k}:{a.dtype}:{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
            return h.hexdigest()
    if path.suffix in (".md", ".txt", ".log", ".svg", ".csv"):
        return ""  # human-readable renderings of the JSON (with timings), and logs
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        d = file_digest(p)
        if d:
            h.update(f"{p.relative_to(root).as_posix()} {d}\n".encode())
    return h.hexdigest()


def _npz(path: Path, n: int, size: int, seed: int) -> None:
    x, y = make_learnable(n, size=size, seed=seed)
    k = n * 2 // 3
    np.savez(path, x_train=x[:k], y_train=y[:k], x_test=x[k:], y_test=y[k:],
             class_names=np.array(["a", "b", "c", "d"]))


def _photos(folder: Path) -> None:
    from PIL import Image
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate([(40, 30), (33, 47), (24, 24)]):
        a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        a[h // 3: 2 * h // 3] //= 2
        Image.fromarray(a).save(folder / f"photo{i}.png")


def jobs() -> dict[str, list[str]]:
    fast = ["--epochs", "1", "--steps", "2", "--batch-size", "64", "--device", "cpu"]
    return {
        "poison-mi-ue": ["poison", "--method", "mi-ue", "--data", "tiny.npz", "--out", "p-mi-ue", *fast],
        "poison-em": ["poison", "--method", "em", "--data", "tiny.npz", "--out", "p-em", *fast],
        "poison-ap-untargeted": ["poison", "--method", "ap-untargeted", "--data", "tiny.npz", "--out", "p-ap",
                                 *fast],
        "train": ["train", "--data", "p-mi-ue", "--model", "cnn-small", "--epochs", "2", "--batch-size", "32",
                  "--device", "cpu", "--out", "t"],
        "protect": ["protect", "photos", "protected", "--reference", "ref.npz", "--epochs", "1", "--steps", "2",
                    "--working-size", "16", "--batch-size", "3", "--reference-per-class", "8", "--device", "cpu"],
        "run": ["run", "tiny.yaml", "--out", "r"],
    }


def outputs(job: str) -> str:
    return {"poison-mi-ue": "p-mi-ue", "poison-em": "p-em", "poison-ap-untargeted": "p-ap", "train": "t",
            "protect": "protected", "run": "r"}[job]


def main(workdir: str) -> None:
    import torch
    import yaml

    from unlearnable.cli import main as cli
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    os.chdir(workdir)
    _npz(Path("tiny.npz"), 240, 16, 1)
    _npz(Path("ref.npz"), 240, 16, 3)
    _photos(Path("photos"))
    spec = yaml.safe_load((root / "configs" / "tiny.yaml").read_text())
    spec["seeds"] = [0]
    Path("tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    digests = {}
    for job, argv in jobs().items():
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = out, err
        try:
            code = cli(["-q", *argv])
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        if code != 0:
            raise SystemExit(f"{job} exited {code}: {err.getvalue().strip()}")
        digests[job] = tree_digest(Path(outputs(job)))
    print(json.dumps(digests, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
