"""The demo: MI-UE on a Fashion-MNIST subset, victims on clean and protected data.

Data flow as everywhere: data -> attack -> protected dataset on disk -> victim -> report.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data import load_dataset, read_poisoned
from ..fsutil import prepare_output_dir, write_json
from ..poison import poison_dataset
from ..progress import log
from ..train import train_victim, victim_preset


def run_demo(out: str | Path, *, data: str = "fashion-mnist", subset: int = 5000, seed: int = 0,
             method: str = "mi-ue", preset: str = "cpu", victim: str = "cpu", victim_epochs: int | None = None,
             attack_overrides: dict | None = None, overwrite: bool = False) -> dict:
    t0 = time.time()
    out = prepare_output_dir(out, overwrite)
    splits = load_dataset(data)
    train = splits.train.stratified_subset(subset, seed)
    vcfg = victim_preset(victim, epochs=victim_epochs)

    log(f"[1/3] protecting {len(train)} images with {method}")
    poisoned_dir = out / "poisoned"
    from ..data.dataset import DataSplits
    manifest = poison_dataset(method, DataSplits(train, splits.test, splits.name), poisoned_dir, seed=seed,
                              preset=preset, overrides=attack_overrides, overwrite=True)
    protected = read_poisoned(poisoned_dir)  # what a data user would scrape: the files on disk

    log(f"[2/3] victim {vcfg.model} on clean data")
    clean = train_victim(train, splits.test, vcfg, seed=seed, desc="victim (clean)")
    log(f"[3/3] victim {vcfg.model} on protected data")
    pois = train_victim(protected.poisoned, protected.test, vcfg, seed=seed, desc="victim (protected)")

    log("measuring sliced MI between clean and protected features (victim trained on clean data)")
    mi = measure_mi_gap(clean.model, protected, seed=seed)

    results = {
        "data": splits.name, "subset": len(train), "test_size": len(splits.test), "seed": seed,
        "method": method, "preset": preset, "eps_255": manifest["eps_255"], "linf_255": manifest["linf_255"],
        "victim": vcfg.model, "victim_epochs": vcfg.epochs,
        "clean_acc": clean.test_acc, "poisoned_acc": pois.test_acc,
        "acc_gap": round(clean.test_acc - pois.test_acc, 5),
        "poisoned_train_acc": pois.train_acc, "mi": mi,
        "times": {"generate_s": manifest["timings"]["generate_s"], "victim_clean_s": round(clean.seconds, 2),
                  "victim_poisoned_s": round(pois.seconds, 2)},
        "history": {"clean": clean.history, "poisoned": pois.history, "generation": manifest.get("history", [])},
        "attack_config": manifest.get("config", {}), "victim_config": clean.config,
    }
    results["seconds"] = round(time.time() - t0, 2)
    write_json(out / "results.json", results)
    return results


def measure_mi_gap(model, protected, *, seed: int = 0, estimators=("hist", "ksg"), slices: int = 500) -> dict:
    """Class-conditional sliced MI of g(X) with itself (the clean reference) and with g(X'),
    and the MI gap, for each estimator; same directions on both sides."""
    from ..measure import mi_gap, paired_features, sliced_mi
    zc, zp = paired_features(model, protected.clean, protected.poisoned)
    labels = protected.clean.labels
    out = {}
    for est in estimators:
        ref = sliced_mi(zc, zc, labels, estimator=est, m=slices, seed=seed)
        res = sliced_mi(zc, zp, labels, estimator=est, m=slices, seed=seed)
        gap = mi_gap(ref, res)
        out[est] = {"clean": round(ref.mean, 5), "poisoned": round(res.mean, 5), "gap": round(gap["gap"], 5),
                    "se": round(gap.get("se_paired", gap["se"]), 5), "m": slices,
                    "n_per_class": int(min(res.n_per_class.values())), "params": res.params}
    return out


def format_table(r: dict) -> str:
    rows = [
        ("training data", "test acc", "gap", "time"),
        ("clean", f"{100 * r['clean_acc']:.2f}%", "-", f"{r['times']['victim_clean_s']:.0f} s"),
        (f"{r['method']} (eps {r['eps_255']:g}/255, L-inf written {r['linf_255']}/255)",
         f"{100 * r['poisoned_acc']:.2f}%", f"{100 * r['acc_gap']:.2f} pts",
         f"{r['times']['generate_s']:.0f} s gen + {r['times']['victim_poisoned_s']:.0f} s"),
    ]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    line = lambda row: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (x + 2) for x in w) + "|"
    head = (f"{r['data']}: {r['subset']} training images, victim {r['victim']} ({r['victim_epochs']} epochs), "
            f"accuracy on the full {r['test_size']}-image clean test set")
    mi_lines = [f"sliced MI of clean vs protected features ({e}, m={v['m']}, n={v['n_per_class']}/class, nats): "
                f"clean {v['clean']:.4f}, protected {v['poisoned']:.4f}, gap {v['gap']:.4f} +- {v['se']:.4f}"
                for e, v in r.get("mi", {}).items()]
    return "\n".join([head, line(rows[0]), sep, line(rows[1]), line(rows[2]), *mi_lines,
                      f"total wall time {r['seconds']:.0f} s"])
