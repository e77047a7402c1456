"""Pinned outputs: small CPU runs of poison (MI-UE and two baselines), train, protect and run
leave the same bytes on disk as when the pins were taken.

A refactor must keep these green. A deliberate behaviour change updates a pin in a commit of
its own that says why (print the new digests with
``OMP_NUM_THREADS=1 python tests/pin_runs.py DIR``). The runs use one intra-op thread in a
fresh process: CPU kernels split their sums by thread count, so the bits depend on it. They
also depend on the vector instructions the kernels dispatch to (AVX-512 and AVX2 machines give
different bits for the same run: the BLAS and convolution libraries pick their kernels by the
CPU's flags), and even between two AVX-512 CPUs of different generations (the kernels' blocking
follows the core and its caches). So the pins are kept per widest vector extension the CPU
reports, as one digest set per kind of CPU they were taken on: a run passes when it leaves
exactly one of its extension's sets (every job). On a machine whose extension has no pins the
test says so and skips; on a new kind of CPU it fails with the new digests and the CPU's
family and model, and the set is added only after the same digests come from the commit the
last pins were taken at (the change under test is then not the cause)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PINS = {
    "avx512": [
        {  # the development and CI machine (AMD EPYC, AVX-512 with bf16)
            "poison-ap-untargeted": "b0532dd399749dad8d316269a6455b93c1be5ec507cfd1aa2c7e5c711dd39e6a",
            "poison-em": "f3fb399df10b245b90f3715b95659165d5fc98193634eb43b4ecddebe1ca656c",
            "poison-mi-ue": "f72dbb15b4686db08bb65df6956cf6518ee09770c5f06787fffc4c83cc2903a3",
            "protect": "6529f1bfd32ce78668f9308fac17ac9fab765b0f9e0d644fb0c5d39d3f4812ef",
            "run": "d9f1a3c285d096e85ae3322ab2ff6393066808f1bffa3edd93065efc4e26d54b",
            "train": "0cd16d5711d34ea91fe6614c32cacb2d6d7403adfacbb2ef395721202dc92954",
        },
        {  # AMD EPYC family 26 model 2 (AVX-512 with bf16, AVX-VNNI, VP2INTERSECT), taken at c411e04
            "poison-ap-untargeted": "b0532dd399749dad8d316269a6455b93c1be5ec507cfd1aa2c7e5c711dd39e6a",
            "poison-em": "b27d2ec792c751a19dd4a62f0d0d734b860c28d79a3e1a83f5a1666b9b77b53f",
            "poison-mi-ue": "7bc2b6e5170f73b57a3fa0ea3b1b0569b0b33a0ae9122c844b46e7d63f565d80",
            "protect": "6529f1bfd32ce78668f9308fac17ac9fab765b0f9e0d644fb0c5d39d3f4812ef",
            "run": "d1b22f2ccc4a7dff0fda48aba7983e97760b58c96c4082b228fcab549fbc3177",
            "train": "c68dd5ea8db31222cc80655529732ed30702cfdf9fb5b9da634439371fa9938e",
        },
    ],
    "avx2": [
        {  # an AVX2-only AMD EPYC, taken at a commit where the avx512 pins still held in CI
            "poison-ap-untargeted": "b0532dd399749dad8d316269a6455b93c1be5ec507cfd1aa2c7e5c711dd39e6a",
            "poison-em": "b27d2ec792c751a19dd4a62f0d0d734b860c28d79a3e1a83f5a1666b9b77b53f",
            "poison-mi-ue": "39aae30f793659961be74a505adac7ad744edc3c95ffe354cc86b03006f63d71",
            "protect": "6529f1bfd32ce78668f9308fac17ac9fab765b0f9e0d644fb0c5d39d3f4812ef",
            "run": "091c4cf3f122e4e50c8eb02d1734eee8b15562768921fde8373aaa403a0b37d6",
            "train": "8a01676693398edefaa1ffacee33862d37904ce6b38c6eb40ef21723771faba4",
        },
    ],
}


def cpu_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            head = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines())}


def vector_extension() -> str:
    """The widest x86 vector extension in the CPU's flags; otherwise torch's dispatch level."""
    fields = cpu_fields()
    if "flags" not in fields:
        return "torch-" + torch.backends.cpu.get_cpu_capability().lower()
    flags = set(fields["flags"].split())
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no-avx2"


def test_small_runs_leave_the_pinned_bytes(tmp_path):
    machine = vector_extension()
    if machine not in PINS:
        pytest.skip(f"no pins taken on a {machine} CPU (pinned: {', '.join(PINS)})")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("pin_runs.py")), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the set this CPU is closest to (fewest changed jobs) names what moved
    changed = min(({job: got.get(job) for job in pins if got.get(job) != pins[job]} for pins in PINS[machine]), key=len)
    cpu = cpu_fields()
    assert not changed, (f"outputs changed on this {machine} CPU (family {cpu.get('cpu family', '?')}, model "
                         f"{cpu.get('model', '?')}); new digests of the nearest pinned set: {changed}")


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
