"""Victims for a list of cells on a dataset: what ``unlearnable evaluate`` runs.

:func:`run_evaluate` trains a list of cells on a dataset (and, with ``clean``, on the clean
images too), writes ``OUT/evaluate.json`` and a Markdown table; each cell's result is its
own file, so a killed run resumes. :func:`run_victim` trains one victim (model x protocol x
defenses); ``unlearnable train`` and ``pretrain`` use it too.

Cell syntax: ``MODEL:PROTOCOL[:DEFENSES]``, e.g. ``cnn:st``, ``resnet-18:at-4``,
``cnn:st:jpeg:10``, ``cnn:at-8:cutout,grayscale``. PROTOCOL is ``st``, ``at`` (8/255) or
``at-E`` (E in 1/255 units); DEFENSES is a defense spec list (commas compose) or ``none``.
:func:`build_cells` adds the product of models, protocols and defenses to the cells.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.dataset import fingerprint
from ..errors import UnlearnableError, check_seed
from ..models import check_model_name
from .markdown import table_lines


# -- cells -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    model: str
    protocol: str  # registry name
    options: tuple = ()  # sorted (key, value) protocol options
    defenses: str = "none"  # canonical defense spec

    @property
    def label(self) -> str:
        proto = self.protocol
        opts = dict(self.options)
        if "at_eps" in opts:
            proto = f"at-{opts['at_eps'] * 255:g}"
        return f"{self.model}:{proto}:{self.defenses}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+=-]+", "_", self.label.replace(":", "__").replace(",", "+"))


def parse_cell(text: str) -> Cell:
    from ..defenses.base import canonical_defenses
    from ..train.protocols import parse_protocol
    parts = text.strip().split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UnlearnableError(f"bad cell {text!r}: expected MODEL:PROTOCOL[:DEFENSES], e.g. cnn:at-4:jpeg:10")
    protocol, options = parse_protocol(parts[1])
    return Cell(check_model_name(parts[0]), protocol, options,
                canonical_defenses(parts[2] if len(parts) == 3 else None))


def build_cells(cells=None, models=None, protocols=None, defenses=None) -> list[Cell]:
    """Explicit cells, then the product models x protocols x defenses; duplicates dropped."""
    out = [parse_cell(c) for c in (cells or [])]
    if models or protocols or defenses or not out:
        for m in models or ["cnn"]:
            for p in protocols or ["st"]:
                for d in defenses or ["none"]:
                    out.append(parse_cell(f"{m}:{p}:{d}"))
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


# -- one victim --------------------------------------------------------------------------

def run_victim(train, test, *, model: str, protocol: str, options: dict, defenses: str, preset: str | None,
               seed: int, overrides: dict, desc: str | None = None):
    """Train one victim; returns (TrainResult, preset name used, the config)."""
    from ..defenses import parse_defenses
    from ..train import get_protocol, victim_preset
    from ..train.standard import preset_name
    fn = get_protocol(protocol)
    name = preset_name(protocol, preset)
    cfg = victim_preset(name, model=model, **overrides)
    kwargs = {"desc": desc} if desc else {}
    res = fn(train, test, cfg, seed=seed, defenses=parse_defenses(defenses), options=options, **kwargs)
    return res, name, cfg


# -- many victims ------------------------------------------------------------------------

@dataclass
class Source:
    tag: str  # column name: the attack method, "clean", or the data name
    train: object
    test: object
    fingerprint: str = field(default="")


def load_sources(data: str, clean: str | None, subset: int | None, seed: int) -> list[Source]:
    """The dataset under test, and the clean reference when asked (``""``: recovered from a
    protected folder, as ``poisoned - perturbation``)."""
    from ..data import is_poisoned_dir, load_dataset, read_poisoned
    sources = []
    if is_poisoned_dir(Path(data)):
        p = read_poisoned(data)
        sources.append(Source(str(p.manifest.get("method", "protected")), p.poisoned, p.test))
        if clean == "":
            sources.append(Source("clean", p.clean, p.test))
    else:
        if clean == "":
            raise UnlearnableError(f"`clean` without a value needs a protected dataset folder as `data`, got {data}; "
                                   f"give the clean data spec: `clean` SPEC")
        s = load_dataset(data)
        sources.append(Source(s.name, s.train.stratified_subset(subset, seed) if subset else s.train, s.test))
    if clean:
        s = load_dataset(clean)
        sources.append(Source("clean", s.train.stratified_subset(subset, seed) if subset else s.train, s.test))
    for s in sources:
        if s.test is None:
            raise UnlearnableError(f"{s.tag}: the data has no test split to score victims on")
        s.fingerprint = fingerprint(s.train.images, s.train.labels)
    return sources


def _read_cell_result(path: Path) -> dict:
    """A cell's cached metrics.json, or a one-line error when it is damaged."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnlearnableError(f"cannot read the cached result {path}: {e}; delete it (or pass `overwrite`) "
                               f"to recompute") from None
    if not isinstance(prev, dict) or not isinstance(prev.get("summary"), dict) \
            or not isinstance(prev["summary"].get("test_acc"), (int, float)):
        raise UnlearnableError(f"the cached result {path} is not a cell result (no summary.test_acc); delete it "
                               f"(or pass `overwrite`) to recompute")
    return prev


def run_evaluate(out, *, data: str, cells: list[Cell], clean: str | None = None, subset: int | None = None,
                 preset: str | None = None, seed: int = 0, overrides: dict | None = None,
                 overwrite: bool = False) -> dict:
    """Train every cell on every source; skip cells whose result file already exists."""
    from ..data import spec_path
    from ..fsutil import check_output_folder, is_empty_dir, tool_output_kind, write_json
    from ..progress import log
    t0 = time.time()
    out = Path(out)
    check_seed(seed)
    check_output_folder(out, [spec_path(data), spec_path(clean or None), (overrides or {}).get("init")])
    if out.is_dir() and not is_empty_dir(out) and tool_output_kind(out) is None and not (out / "cells").is_dir():
        raise UnlearnableError(f"output folder {out} is not empty and is not an evaluation written by unlearnable; "
                               f"choose another")
    overrides = dict(overrides or {})
    sources = load_sources(data, clean, subset, seed)
    rows = []
    total = len(cells) * len(sources)
    done = 0
    for cell in cells:
        row = {"cell": cell.label, "model": cell.model, "protocol": cell.protocol, "options": dict(cell.options),
               "defenses": cell.defenses, "results": {}}
        for src in sources:
            done += 1
            path = out / "cells" / src.tag / cell.slug / "metrics.json"
            settings = {"cell": cell.label, "data_fingerprint": src.fingerprint, "seed": seed, "preset": preset,
                        "overrides": overrides}
            if path.is_file() and not overwrite:
                prev = _read_cell_result(path)
                if prev.get("settings") != settings:
                    raise UnlearnableError(f"{path}: made with other data or settings; use another `out`, "
                                           f"or `overwrite` to recompute")
                log(f"[{done}/{total}] {src.tag} {cell.label}: done before, skipped")
                row["results"][src.tag] = prev["summary"]
                continue
            log(f"[{done}/{total}] {src.tag} {cell.label}")
            res, preset_used, _ = run_victim(src.train, src.test, model=cell.model, protocol=cell.protocol,
                                             options=dict(cell.options), defenses=cell.defenses, preset=preset,
                                             seed=seed, overrides=overrides, desc=f"{src.tag} {cell.label}")
            summary = {"test_acc": res.test_acc, **res.best(), "train_acc": res.train_acc,
                       "seconds": round(res.seconds, 2)}
            if "robust_test_acc" in res.extra.get("at", {}):
                summary["robust_test_acc"] = res.extra["at"]["robust_test_acc"]
            write_json(path, {"settings": settings, "summary": summary, "preset": preset_used, **res.metrics()})
            row["results"][src.tag] = summary
        rows.append(row)
    tags = [s.tag for s in sources]
    for row in rows:
        if "clean" in tags and len(tags) > 1:
            row["gap"] = round(row["results"]["clean"]["test_acc"] - row["results"][tags[0]]["test_acc"], 5)
    result = {"data": data, "clean": clean, "sources": {s.tag: {"train_images": len(s.train),
                                                               "test_images": len(s.test)} for s in sources},
              "seed": seed, "preset": preset or "cpu", "overrides": overrides, "rows": rows,
              "seconds": round(time.time() - t0, 2)}
    result["table"] = format_table(result)
    write_json(out / "evaluate.json", result)
    return result


def format_table(result: dict) -> str:
    """Final-epoch accuracy per source, then the data under test's best epoch (what an
    attacker who early-stops on clean labels gets), the gap and the time."""
    tags = list(result["sources"])
    head = ["model", "protocol", "defenses"] + [f"{t} acc" for t in tags] + [f"{tags[0]} best epoch"]
    if "clean" in tags and len(tags) > 1:
        head.append("gap")
    head.append("time")
    rows = []
    for row in result["rows"]:
        proto = row["cell"].split(":")[1]
        cells = [row["model"], proto, row["defenses"]]
        cells += [f"{100 * row['results'][t]['test_acc']:.2f}%" for t in tags]
        first = row["results"][tags[0]]
        cells.append(f"{100 * first['best_test_acc']:.2f}% (ep {first['best_epoch']})" if "best_epoch" in first
                     else "-")
        if "gap" in row:
            cells.append(f"{100 * row['gap']:.2f} pts")
        cells.append(f"{sum(row['results'][t]['seconds'] for t in tags):.0f} s")
        rows.append(cells)
    return "\n".join(table_lines(head, rows))
