"""Pinned outputs: small CPU runs of poison (MI-UE and two baselines), train, protect and run
leave the same bytes on disk as when the pins were taken.

A refactor must keep these green. A deliberate behaviour change updates a pin in a commit of
its own that says why (print the new digests with
``OMP_NUM_THREADS=1 python tests/pin_runs.py DIR``). The runs use one intra-op thread in a
fresh process: CPU kernels split their sums by thread count, so the bits depend on it. They
also depend on the vector instructions the kernels dispatch to (AVX-512 and AVX2 machines give
different bits for the same run: the BLAS and convolution libraries pick their kernels by the
CPU's flags), so the pins are kept per widest vector extension the CPU reports; on a machine
with no pins taken the test says so and skips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PINS = {
    "avx512": {  # the development and CI machine (AMD EPYC, AVX-512 with bf16)
        "poison-ap-untargeted": "b0532dd399749dad8d316269a6455b93c1be5ec507cfd1aa2c7e5c711dd39e6a",
        "poison-em": "f3fb399df10b245b90f3715b95659165d5fc98193634eb43b4ecddebe1ca656c",
        "poison-mi-ue": "f72dbb15b4686db08bb65df6956cf6518ee09770c5f06787fffc4c83cc2903a3",
        "protect": "6529f1bfd32ce78668f9308fac17ac9fab765b0f9e0d644fb0c5d39d3f4812ef",
        "run": "d9f1a3c285d096e85ae3322ab2ff6393066808f1bffa3edd93065efc4e26d54b",
        "train": "0cd16d5711d34ea91fe6614c32cacb2d6d7403adfacbb2ef395721202dc92954",
    },
    "avx2": {  # an AVX2-only AMD EPYC, taken at a commit where the avx512 pins still held in CI
        "poison-ap-untargeted": "b0532dd399749dad8d316269a6455b93c1be5ec507cfd1aa2c7e5c711dd39e6a",
        "poison-em": "b27d2ec792c751a19dd4a62f0d0d734b860c28d79a3e1a83f5a1666b9b77b53f",
        "poison-mi-ue": "39aae30f793659961be74a505adac7ad744edc3c95ffe354cc86b03006f63d71",
        "protect": "6529f1bfd32ce78668f9308fac17ac9fab765b0f9e0d644fb0c5d39d3f4812ef",
        "run": "091c4cf3f122e4e50c8eb02d1734eee8b15562768921fde8373aaa403a0b37d6",
        "train": "8a01676693398edefaa1ffacee33862d37904ce6b38c6eb40ef21723771faba4",
    },
}


def vector_extension() -> str:
    """The widest x86 vector extension in the CPU's flags; otherwise torch's dispatch level."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "torch-" + torch.backends.cpu.get_cpu_capability().lower()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no-avx2"


def test_small_runs_leave_the_pinned_bytes(tmp_path):
    machine = vector_extension()
    if machine not in PINS:
        pytest.skip(f"no pins taken on a {machine} CPU (pinned: {', '.join(PINS)})")
    pins = PINS[machine]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("pin_runs.py")), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    changed = {job: got[job] for job in pins if got.get(job) != pins[job]}
    assert not changed, f"outputs changed on this {machine} CPU (new digests): {changed}"


def test_the_digest_ignores_timings_and_the_work_folder_but_not_values(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    from pin_runs import tree_digest
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    for d, secs in ((a, 1.5), (b, 7.25)):
        d.mkdir()
        (d / "m.json").write_text(json.dumps({"acc": 0.5, "seconds": secs, "out": str(tmp_path / "x"),
                                              "timings": {"generate_s": secs}}))
        (d / "w.bin").write_bytes(b"\x00\x01")
    assert tree_digest(a) == tree_digest(b)
    (b / "m.json").write_text(json.dumps({"acc": 0.51, "seconds": 1.5, "out": str(tmp_path / "x")}))
    assert tree_digest(a) != tree_digest(b)
    (b / "m.json").write_text((a / "m.json").read_text())
    (b / "w.bin").write_bytes(b"\x00\x02")
    assert tree_digest(a) != tree_digest(b)
