"""Overhead of the training loop: ``train_epoch`` against a bare forward+backward+step loop.

Prints one JSON line. For each model (the default CNN on 28x28 grey images, CIFAR
ResNet-18 on 32x32 colour images) it times, in the same run and interleaved, one epoch
over the same shuffled batches:
  - loop: ``unlearnable.train.loops.train_epoch`` (uint8 gather and conversion on the
    device, loss/accuracy bookkeeping, progress callback), as victims and source models run it;
  - bare: the same optimiser and model on pre-built float batches: zero_grad, forward,
    cross-entropy, backward, step, nothing else.
``ratio`` = median loop epoch time / median bare epoch time (goal <= 1.1), from process CPU
time on the CPU (robust to other load on a shared machine; ``ratio_wall`` from wall time)
and from wall time on CUDA. Also times one
epoch with each batch defense (cutout, cutmix, mixup) against the plain loop for the
first model, to show that they are cheap tensor ops. The data is random: only speed is
measured. About 2 minutes of CPU time with one thread.

    python bench/train_speed.py [--models cnn,resnet-18] [--images 1024,128] [--batch 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from unlearnable.defenses import parse_defenses
from unlearnable.models import build_model
from unlearnable.runtime import make_generator, prepare_model, to_model_input
from unlearnable.train.loops import TensorData, batches, train_epoch

SHAPES = {"cnn": (1, 28), "resnet-18": (3, 32)}


def bare_epoch(model, opt, xs, ys, channels_last):
    model.train()
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(to_model_input(x, channels_last)), y)
        loss.backward()
        opt.step()


def timed(fn, device):
    """(wall seconds, process CPU seconds) of ``fn()``; CPU time is what a shared machine's
    load disturbs least, so it gives the CPU ratio (wall time is reported too)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w, c = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - w, time.process_time() - c


def bench_model(name, n, batch, repeats, device, with_defenses):
    c, s = SHAPES[name]
    torch.manual_seed(0)
    model = prepare_model(build_model(name, c, 10, s), device, True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    data = TensorData(torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, device=device),
                      torch.randint(0, 10, (n,), device=device))
    seed = 1
    order = list(batches(n, batch, make_generator(seed), device))  # the batches train_epoch will draw
    xs = [data.batch(i)[0].contiguous(memory_format=torch.channels_last) for i in order]
    ys = [data.y[i] for i in order]
    loop = lambda extra=(): train_epoch(model, opt, data, batch_size=batch, generator=make_generator(seed),  # noqa
                                        channels_last=True, on_batch=lambda: None, batch_defenses=extra)
    bare = lambda: bare_epoch(model, opt, xs, ys, True)  # noqa: E731
    defenses = {spec: parse_defenses(spec) for spec in ("cutout", "cutmix:1", "mixup")} if with_defenses else {}
    loop(), bare()  # warm-up
    times = {"loop": [], "bare": [], **{k: [] for k in defenses}}
    for _ in range(repeats):  # interleaved, so drift in machine load hits all alike
        times["loop"].append(timed(loop, device))
        times["bare"].append(timed(bare, device))
        for k, d in defenses.items():
            times[k].append(timed(lambda: loop(d), device))
    use = 0 if device.type == "cuda" else 1  # the ratio from wall time on CUDA, CPU time on the CPU
    med = {k: statistics.median(t[use] for t in v) for k, v in times.items()}
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    out = {f"{name}_epoch_s": {k: round(v, 3) for k, v in med.items()},
           f"{name}_ratio": round(med["loop"] / med["bare"], 3),
           f"{name}_ratio_wall": round(wall["loop"] / wall["bare"], 3), f"{name}_images": n}
    if defenses:
        out[f"{name}_defense_ratio"] = {k: round(med[k] / med["loop"], 3) for k in defenses}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,resnet-18")
    ap.add_argument("--images", default="1024,128", help="images per epoch, one per model")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = {"batch": args.batch, "repeats": args.repeats, "device": args.device, "clock": "cpu" if
           args.device == "cpu" else "wall", "threads": torch.get_num_threads(),
           "load_1min": round(os.getloadavg()[0], 2)}
    t0 = time.time()
    for i, (name, n) in enumerate(zip(args.models.split(","), [int(v) for v in args.images.split(",")])):
        out.update(bench_model(name, n, args.batch, args.repeats, torch.device(args.device), with_defenses=i == 0))
    out["bench_s"] = round(time.time() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
