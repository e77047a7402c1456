"""The demo: MI-UE-G (MI-UE's game and loss, a generator for the poisons) on a Fashion-MNIST
subset, victims on clean and protected data (``method="mi-ue"``: the paper's algorithm).

Data flow as everywhere: data -> attack -> protected dataset on disk -> victim -> report.
The sliced MI gap is measured as in the paper by default: g is the victim trained on the
protected images, the clean reference comes from the clean victim (``mi_model``, see
:mod:`unlearnable.measure.gaps`).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..attacks import get_attack
from ..data import load_dataset, read_poisoned, spec_path
from ..fsutil import prepare_output_dir, write_json
from ..measure.gaps import G_DESCRIPTIONS, G_SHORT, MIGapMeter, check_mi_model
from ..errors import check_seed
from ..poison import poison_dataset
from ..progress import log
from ..train import best_epoch, train_victim, victim_preset
from .markdown import final_acc_cell, table_lines

#: the demo's sliced MI: the paper's histogram and the nearly unbiased KSG, 500 direction pairs
MI_ESTIMATORS = ("hist", "ksg")
MI_SLICES = 500


def run_demo(out: str | Path, *, data: str = "fashion-mnist", subset: int = 5000, seed: int = 0,
             method: str = "mi-ue-g", preset: str = "cpu", victim: str = "cpu", victim_epochs: int | None = None,
             attack_overrides: dict | None = None, mi_model: str = "victim", overwrite: bool = False) -> dict:
    """Protect ``subset`` training images with ``method``, train a victim on the clean and
    on the protected images, and measure the sliced MI gap.

    ``mi_model`` picks g (:mod:`unlearnable.measure.gaps`): ``victim`` (default, the
    paper's) uses the victim trained on the protected set, ``clean`` the clean victim; the
    clean reference SMI(g(X); g(X)) always comes from the clean victim.
    """
    t0 = time.time()
    check_mi_model(mi_model)
    check_seed(seed)
    get_attack(method).from_preset(preset, **(attack_overrides or {}))  # refuse a bad method or option first
    out = prepare_output_dir(out, overwrite, inputs=[spec_path(data)])
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

    log(f"measuring sliced MI between clean and protected features, g = {G_SHORT[mi_model]}")
    meter = MIGapMeter.for_model(clean.model, protected.clean, estimators=MI_ESTIMATORS, slices=MI_SLICES, seed=seed)
    mi = meter.measure(pois.model if mi_model == "victim" else clean.model, protected.poisoned)
    clean_best, clean_best_ep = best_epoch(clean.history)
    pois_best, pois_best_ep = best_epoch(pois.history)

    results = {
        "data": splits.name, "subset": len(train), "test_size": len(splits.test), "seed": seed,
        "method": method, "preset": preset, "eps_255": manifest["eps_255"], "linf_255": manifest["linf_255"],
        "victim": vcfg.model, "victim_epochs": vcfg.epochs,
        "clean_acc": clean.test_acc, "poisoned_acc": pois.test_acc,
        "acc_gap": round(clean.test_acc - pois.test_acc, 5),
        "clean_best_acc": clean_best, "clean_best_epoch": clean_best_ep,
        "poisoned_best_acc": pois_best, "poisoned_best_epoch": pois_best_ep,
        "poisoned_train_acc": pois.train_acc,
        # a victim that learned nothing (train.standard.did_not_learn) is chance, not protection
        "clean_did_not_learn": clean.extra.get("did_not_learn"),
        "poisoned_did_not_learn": pois.extra.get("did_not_learn"),
        "mi_model": mi_model, "mi_g": G_DESCRIPTIONS[mi_model], "mi": mi,
        "times": {"generate_s": manifest["timings"]["generate_s"], "victim_clean_s": round(clean.seconds, 2),
                  "victim_poisoned_s": round(pois.seconds, 2)},
        "history": {"clean": clean.history, "poisoned": pois.history, "generation": manifest.get("history", [])},
        "attack_config": manifest.get("config", {}), "victim_config": clean.config,
    }
    results["seconds"] = round(time.time() - t0, 2)
    write_json(out / "results.json", results)
    return results


def format_table(r: dict) -> str:
    """The accuracy table (final epoch counts; the best epoch beside it), the MI lines
    naming g, and the wall time."""
    def best(side):
        acc, ep = r.get(f"{side}_best_acc"), r.get(f"{side}_best_epoch")
        return "-" if acc is None else f"{100 * acc:.2f}% (ep {ep})"
    rows = [
        ("training data", "test acc (final)", "best epoch", "gap", "time"),
        ("clean", final_acc_cell(r["clean_acc"], r.get("clean_did_not_learn")), best("clean"), "-",
         f"{r['times']['victim_clean_s']:.0f} s"),
        (f"{r['method']} (eps {r['eps_255']:g}/255, L-inf written {r['linf_255']}/255)",
         final_acc_cell(r["poisoned_acc"], r.get("poisoned_did_not_learn")), best("poisoned"),
         f"{100 * r['acc_gap']:.2f} pts", f"{r['times']['generate_s']:.0f} s gen + {r['times']['victim_poisoned_s']:.0f} s"),
    ]
    head = (f"{r['data']}: {r['subset']} training images, victim {r['victim']} ({r['victim_epochs']} epochs), "
            f"accuracy on the full {r['test_size']}-image clean test set")
    g = G_SHORT[r.get("mi_model", "clean")]  # results written before mi_model existed used the clean victim
    mi_lines = [f"sliced MI ({e}, m={v['m']}, n={v['n_per_class']}/class, nats), g = {g}: "
                f"clean ref {v['clean']:.4f}, protected {v['poisoned']:.4f}, gap {v['gap']:.4f} +- {v['se']:.4f}"
                for e, v in r.get("mi", {}).items()]
    return "\n".join([head, *table_lines(rows[0], rows[1:]), *mi_lines,
                      f"total wall time {r['seconds']:.0f} s"])
