"""Experiment specs: one YAML file describes attacks x victims x protocols/defenses x seeds.

The file is read with ``yaml.safe_load`` and validated completely before anything runs;
every problem is one line naming where it is (``attacks[2].options.epochs: ...``). The
schema (all keys but ``attacks`` optional; docs/experiments.md has the full reference)::

    name: paper-lite
    out: runs/paper-lite                 # RUN_DIR unless --out is given
    device: auto                         # auto | cpu | cuda | cuda:N
    devices: [cuda:0, cuda:1]            # spread independent cells over these (one worker each)
    data: {name: fashion-mnist, subset: 1000, test_subset: 2000, seed: 0}   # a relative path is
                                         # looked up beside the config file first, then in the cwd
    seeds: [0, 1, 2]
    poison_seed: each                    # each: a poison per seed; first: one poison (seeds[0]) for all
    attacks:                             # "clean" (the reference) is always included
      - random
      - {method: mi-ue, label: mi-ue, preset: cpu, options: {epochs: 5, eps: 8/255}}
      - {method: mi-ue, label: mi-ue-class0, classes: [0]}
      - {method: mi-ue, label: mi-ue-50%, ratio: 0.5}
    victims:                             # a list of model names, or label -> settings
      cnn: {model: cnn, preset: cpu, options: {epochs: 8}}
    protocols:                           # label -> settings; "st" always exists
      at-4: {name: at, preset: cpu-at, options: {at_eps: 4/255}}   # preset: the victims' recipe here
    evaluate:                            # groups, each a cross product
      - {victims: [cnn, lenet-5], protocols: [st], defenses: [none]}
      - {victims: [cnn], defenses: ["jpeg:10", grayscale], attacks: [em, mi-ue]}
    mi: {estimators: [hist, ksg], slices: {default: 500, mine: 50}, max_per_class: 100,
         model: victim, seed: 0, conditional: true, covariance: true,
         cells: [{victims: [cnn]}, {victims: [lenet-5], estimators: [hist], seeds: [0]}]}
    separability: true
    report: {victim: cnn, estimator: hist}

Strings of the form ``a/b`` in option values are fractions (``8/255`` -> 0.0314), so
budgets can be written in the paper's units. Names are checked against the registries
and against the names this project knows from the paper: a known name that is not
registered in this installation (e.g. a model another part of the project has not added
yet) makes its cells *unavailable* (reported, never faked); an unknown name is an error.

One module on purpose (about 540 lines): it is the schema of one file, validated in one
pass by one checker that names the place of every problem, and each key can be followed
from the YAML to its dataclass field without leaving the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UnlearnableError
from ..units import fraction

#: Names from the paper (and the project's issues): valid in a spec even when not registered here.
KNOWN_ATTACKS = ("random", "em", "em-class", "ap", "ap-untargeted", "ntga", "ar", "rem", "sem", "gue", "tue",
                 "entf", "lsp", "ops", "mi-ue", "a-mi-ue", "mi-ue-g", "bait")
KNOWN_MODELS = ("linear", "2-nn", "3-nn", "lenet-5", "vgg-11", "resnet-18", "resnet-34", "resnet-50", "resnet-101",
                "resnet-152", "densenet-121", "wrn-34-10", "vit-b", "vit-l", "vit-h", "cnn", "cnn-small")
KNOWN_PROTOCOLS = ("st", "st-es", "at", "simclr", "cutout", "cutmix", "mixup")
KNOWN_DEFENSES = ("jpeg", "grayscale", "ueraser", "op", "dvae", "ava", "le", "cutout", "cutmix", "mixup",
                  "bdr", "blur", "noise")
ESTIMATOR_NAMES = ("hist", "hist-mm", "kde", "ksg", "mine")

#: Victim depth order for Table 13 / Figure 2 (shallow to deep); unknown models go last, in spec order.
DEPTH_ORDER = ("linear", "2-nn", "3-nn", "lenet-5", "cnn-small", "cnn", "vgg-11", "resnet-18", "resnet-34",
               "resnet-50", "resnet-101", "resnet-152", "densenet-121", "wrn-34-10", "vit-b", "vit-l", "vit-h")



@dataclass(frozen=True)
class DataSpec:
    name: str = "fashion-mnist"
    subset: int | None = None
    test_subset: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class AttackSpec:
    label: str
    method: str
    preset: str = "cpu"
    options: dict = field(default_factory=dict)
    classes: tuple | None = None  # one-class / some-class poisoning (issue 8)
    ratio: float | None = None  # partial poisoning (issue 8)


@dataclass(frozen=True)
class VictimSpec:
    label: str
    model: str
    preset: str = "cpu"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ProtocolSpec:
    label: str
    name: str
    options: dict = field(default_factory=dict)
    preset: str | None = None  # victim preset for this protocol (e.g. paper-at); None: the victim's own


@dataclass(frozen=True)
class Group:
    victims: tuple
    protocols: tuple
    defenses: tuple
    attacks: tuple | None = None  # attack labels (None: all); the clean reference always runs
    estimators: tuple | None = None  # in mi.cells only: the estimators for these cells (None: all)
    seeds: tuple | None = None  # seeds (None: all of the spec's)

    def covers(self, attack: str, victim: str, protocol: str, defense: str, seed: int) -> bool:
        return (victim in self.victims and protocol in self.protocols and defense in self.defenses
                and (self.attacks is None or attack == "clean" or attack in self.attacks)
                and (self.seeds is None or seed in self.seeds))


@dataclass(frozen=True)
class MISpec:
    estimators: tuple = ()
    slices: dict = field(default_factory=dict)  # estimator -> m
    max_per_class: int | None = 100
    model: str = "victim"  # "victim": g of the cell's own victim (the paper); "clean": g of the clean victim
    seed: int = 0
    conditional: bool = True
    covariance: bool = True
    cells: tuple | None = None  # Groups: which evaluated cells get MI (and with which estimators);
    # None: protocol st, no defense, every victim and attack, every estimator

    def estimators_for(self, attack: str, victim: str, protocol: str, defense: str, seed: int) -> tuple:
        if self.cells is None:
            return self.estimators if protocol == "st" and defense == "none" else ()
        chosen = set()
        for g in self.cells:
            if g.covers(attack, victim, protocol, defense, seed):
                chosen |= set(g.estimators or self.estimators)
        return tuple(e for e in self.estimators if e in chosen)


@dataclass(frozen=True)
class Spec:
    name: str
    data: DataSpec
    seeds: tuple
    poison_seed: str
    attacks: tuple  # AttackSpec, "clean" first
    victims: dict  # label -> VictimSpec (spec order)
    protocols: dict  # label -> ProtocolSpec (spec order)
    groups: tuple  # Group
    mi: MISpec
    separability: bool
    report: dict
    device: str = "auto"
    devices: tuple | None = None
    out: str | None = None
    source: str = ""  # the YAML text, kept for provenance
    base_dir: str = "."  # the config file's folder: relative data paths are looked up there first

    def attack(self, label: str) -> AttackSpec:
        return next(a for a in self.attacks if a.label == label)


CLEAN = AttackSpec(label="clean", method="clean")
DEFAULT_SLICES = {"hist": 2000, "hist-mm": 2000, "kde": 2000, "ksg": 2000, "mine": 100}


class _Checker:
    """Collects the location of a value so that errors read ``where: what``."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, where: str, msg: str):
        raise UnlearnableError(f"{self.origin}: {where}: {msg}" if where else f"{self.origin}: {msg}")

    def mapping(self, where, value, allowed, required=()):
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                self.fail(where, f"unknown key {k!r}{_suggest(str(k), allowed)}; allowed: {', '.join(allowed)}")
        for k in required:
            if k not in value:
                self.fail(where, f"missing key {k!r}")
        return value

    def str_(self, where, value):
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def int_(self, where, value, *, minimum=None, allow_none=False):
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(where, f"must be >= {minimum}, got {value}")
        return value

    def bool_(self, where, value):
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")
        return value

    def list_(self, where, value, *, allow_scalar=True):
        if isinstance(value, (str, int, float, dict)) and allow_scalar:
            return [value]
        if not isinstance(value, list) or not value:
            self.fail(where, f"expected a non-empty list, got {value!r}")
        return value


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def fractions(value):
    """Turn ``"a/b"`` strings (at any depth) into floats; leave everything else as it is."""
    if isinstance(value, str):
        try:
            number = fraction(value)
        except ValueError as e:
            raise UnlearnableError(str(e)) from None
        return value if number is None else number
    if isinstance(value, dict):
        return {k: fractions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fractions(v) for v in value]
    return value


def _label_ok(c: _Checker, where: str, label: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._%+:-]*", label):
        c.fail(where, f"label {label!r} must be letters, digits and . _ % + : - (no spaces)")
    return label


def _attacks(c: _Checker, raw) -> tuple:
    from ..attacks import attack_names
    registered = set(attack_names())
    out, seen = [CLEAN], {"clean"}
    for i, item in enumerate(c.list_("attacks", raw, allow_scalar=False)):
        where = f"attacks[{i}]"
        if isinstance(item, str):
            item = {"method": item}
        c.mapping(where, item, ("method", "label", "preset", "options", "classes", "ratio"), required=("method",))
        method = c.str_(f"{where}.method", item["method"]).lower()
        if method == "clean":
            if len(item) > 1:
                c.fail(where, "'clean' is the reference and takes no settings")
            continue
        if method not in registered and method not in KNOWN_ATTACKS:
            c.fail(f"{where}.method", f"unknown attack {method!r}"
                   f"{_suggest(method, sorted(registered | set(KNOWN_ATTACKS)))}")
        label = _label_ok(c, f"{where}.label", c.str_(f"{where}.label", item.get("label", method)))
        if label in seen:
            c.fail(f"{where}.label", f"duplicate attack label {label!r} (give variants their own label)")
        seen.add(label)
        preset = c.str_(f"{where}.preset", item.get("preset", "cpu"))
        options = fractions(item.get("options") or {})
        c.mapping(f"{where}.options", options, tuple(options))
        classes = item.get("classes")
        if classes is not None:
            classes = tuple(c.int_(f"{where}.classes", v, minimum=0) for v in c.list_(f"{where}.classes", classes))
        ratio = item.get("ratio")
        if ratio is not None:
            ratio = fractions(ratio)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                c.fail(f"{where}.ratio", f"must be a number in (0, 1], got {item.get('ratio')!r}")
            ratio = float(ratio)
        if method in registered:  # config, preset and options are checked now, not after an hour
            from ..attacks import get_attack
            cls = get_attack(method)
            try:
                cls.from_preset(preset, **options)
            except UnlearnableError as e:
                c.fail(where, str(e))
            except (TypeError, ValueError) as e:
                c.fail(f"{where}.options", f"bad value: {e}")
        out.append(AttackSpec(label, method, preset, options, classes, ratio))
    return tuple(out)


def _victims(c: _Checker, raw, base_dir: str = ".") -> dict:
    from ..models import model_key, model_names
    from ..train.standard import VictimConfig, VICTIM_PRESETS
    registered = set(model_names())
    if isinstance(raw, list):
        raw = {str(m): {"model": m} if isinstance(m, str) else m for m in raw}
    c.mapping("victims", raw, tuple(raw))
    if not raw:
        c.fail("victims", "at least one victim is needed")
    fields = {f.name for f in dataclasses.fields(VictimConfig)} - {"model"}
    out = {}
    for label, item in raw.items():
        where = f"victims.{label}"
        _label_ok(c, where, str(label))
        if item is None:
            item = {}
        c.mapping(where, item, ("model", "preset", "options"))
        model = model_key(c.str_(f"{where}.model", item.get("model", label)))
        if model not in registered and model not in KNOWN_MODELS:
            c.fail(f"{where}.model", f"unknown model {model!r}{_suggest(model, sorted(registered | set(KNOWN_MODELS)))}")
        preset = c.str_(f"{where}.preset", item.get("preset", "cpu"))
        if preset not in VICTIM_PRESETS:
            c.fail(f"{where}.preset", f"unknown victim preset {preset!r}; choose from {', '.join(VICTIM_PRESETS)}")
        options = fractions(item.get("options") or {})
        c.mapping(f"{where}.options", options, tuple(sorted(fields)))
        if options.get("init") is not None:
            options["init"] = _checkpoint(c, f"{where}.options.init", options["init"], base_dir)
        try:
            from ..train import victim_preset
            victim_preset(preset, **{**options, "model": model})
        except UnlearnableError as e:
            c.fail(where, str(e))
        except (TypeError, ValueError) as e:
            c.fail(f"{where}.options", f"bad value: {e}")
        out[str(label)] = VictimSpec(str(label), model, preset, options)
    return out


def _checkpoint(c: _Checker, where: str, value, base_dir: str) -> str:
    """A prior's path, looked up beside the config file first, then in the cwd; it must exist now."""
    from ..models.checkpoint import checkpoint_files
    path = Path(c.str_(where, value))
    if not path.is_absolute() and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    try:
        checkpoint_files(path)
    except UnlearnableError as e:
        c.fail(where, str(e))
    return str(path)


def _protocols(c: _Checker, raw) -> dict:
    out = {"st": ProtocolSpec("st", "st")}
    if raw is None:
        return out
    if isinstance(raw, list):
        raw = {str(p): {"name": p} for p in raw}
    c.mapping("protocols", raw, tuple(raw))
    for label, item in raw.items():
        where = f"protocols.{label}"
        _label_ok(c, where, str(label))
        item = item or {}
        c.mapping(where, item, ("name", "options", "preset"))
        name = c.str_(f"{where}.name", item.get("name", label)).lower()
        preset = item.get("preset")
        if preset is not None:
            from ..train.standard import VICTIM_PRESETS
            preset = c.str_(f"{where}.preset", preset)
            if preset not in VICTIM_PRESETS:
                c.fail(f"{where}.preset", f"unknown victim preset {preset!r}; choose from {', '.join(VICTIM_PRESETS)}")
        from ..train.protocols import protocol_names
        if name not in protocol_names() and name not in KNOWN_PROTOCOLS:
            c.fail(f"{where}.name", f"unknown protocol {name!r}"
                   f"{_suggest(name, sorted(set(protocol_names()) | set(KNOWN_PROTOCOLS)))}")
        options = fractions(item.get("options") or {})
        c.mapping(f"{where}.options", options, tuple(options))
        out[str(label)] = ProtocolSpec(str(label), name, options, preset)
    return out


def canonical_defense(c: _Checker, where: str, spec) -> str:
    """A defense spec as a normalised string: ``"none"`` or ``"name[:arg],..."`` (order kept)."""
    from ..defenses import defense_names, parse_defenses
    text = "none" if spec in (None, "", "none") else str(spec).strip()
    if text == "none":
        return text
    parts = [p.strip() for p in text.split(",")]
    registered = set(defense_names())
    for p in parts:
        name = p.partition(":")[0].strip().lower()
        if not name:
            c.fail(where, f"empty defense in {text!r}")
        if name not in registered and name not in KNOWN_DEFENSES:
            c.fail(where, f"unknown defense {name!r}{_suggest(name, sorted(registered | set(KNOWN_DEFENSES)))}")
    if all(p.partition(":")[0].strip().lower() in registered for p in parts):
        try:  # arguments of registered defenses are checked now
            parse_defenses(text)
        except UnlearnableError as e:
            c.fail(where, str(e))
    return ",".join(p.partition(":")[0].strip().lower() + (":" + p.partition(":")[2].strip() if ":" in p else "")
                    for p in parts)


def _group(c: _Checker, where: str, raw, victims: dict, protocols: dict, attacks: tuple = (),
           estimators: tuple | None = None, seeds: tuple = ()) -> Group:
    keys = ("victims", "protocols", "defenses", "attacks", "seeds")
    keys += ("estimators",) if estimators is not None else ()
    c.mapping(where, raw, keys)
    vs = [str(v) for v in c.list_(f"{where}.victims", raw.get("victims", list(victims)))]
    for v in vs:
        if v not in victims:
            c.fail(f"{where}.victims", f"{v!r} is not defined under victims{_suggest(v, victims)}")
    ps = [str(p) for p in c.list_(f"{where}.protocols", raw.get("protocols", ["st"]))]
    for p in ps:
        if p not in protocols:
            c.fail(f"{where}.protocols", f"{p!r} is not defined under protocols{_suggest(p, protocols)}")
    ds = [canonical_defense(c, f"{where}.defenses", d) for d in c.list_(f"{where}.defenses",
                                                                         raw.get("defenses", ["none"]))]
    labels = [a.label for a in attacks]
    ats = None
    if "attacks" in raw:
        ats = [str(a) for a in c.list_(f"{where}.attacks", raw["attacks"])]
        for a in ats:
            if a not in labels:
                c.fail(f"{where}.attacks", f"{a!r} is not an attack label{_suggest(a, labels)}")
        ats = tuple(dict.fromkeys(ats))
    ests = None
    if estimators is not None and "estimators" in raw:
        ests = [str(e).lower() for e in c.list_(f"{where}.estimators", raw["estimators"])]
        for e in ests:
            if e not in estimators:
                c.fail(f"{where}.estimators", f"{e!r} is not among mi.estimators ({', '.join(estimators)})")
        ests = tuple(dict.fromkeys(ests))
    sds = None
    if "seeds" in raw:
        sds = [c.int_(f"{where}.seeds", x) for x in c.list_(f"{where}.seeds", raw["seeds"])]
        for x in sds:
            if x not in seeds:
                c.fail(f"{where}.seeds", f"{x} is not one of the spec's seeds {list(seeds)}")
        sds = tuple(dict.fromkeys(sds))
    return Group(tuple(dict.fromkeys(vs)), tuple(dict.fromkeys(ps)), tuple(dict.fromkeys(ds)), ats, ests, sds)


def _mi(c: _Checker, raw, victims, protocols, attacks, seeds) -> MISpec:
    if raw is None or raw is False:
        return MISpec()
    c.mapping("mi", raw, ("estimators", "slices", "max_per_class", "model", "seed", "conditional", "covariance",
                          "cells"))
    ests = [c.str_("mi.estimators", e).lower() for e in c.list_("mi.estimators", raw.get("estimators", ["hist"]))]
    for e in ests:
        if e not in ESTIMATOR_NAMES:
            c.fail("mi.estimators", f"unknown estimator {e!r}{_suggest(e, ESTIMATOR_NAMES)}; "
                   f"choose from {', '.join(ESTIMATOR_NAMES)}")
    sl = raw.get("slices", {})
    if isinstance(sl, int) and not isinstance(sl, bool):
        sl = {"default": sl}
    c.mapping("mi.slices", sl, ("default", *ESTIMATOR_NAMES))
    slices = {}
    for e in ests:
        m = sl.get(e, sl.get("default", DEFAULT_SLICES[e]))
        slices[e] = c.int_(f"mi.slices.{e}", m, minimum=1)
    model = c.str_("mi.model", raw.get("model", "victim"))
    if model not in ("victim", "clean"):
        c.fail("mi.model", f"must be 'victim' (the cell's own victim, the paper) or 'clean', got {model!r}")
    cells = None
    if "cells" in raw:
        groups = raw["cells"] if isinstance(raw["cells"], list) else [raw["cells"]]
        cells = tuple(_group(c, f"mi.cells[{i}]", g, victims, protocols, attacks, tuple(ests), seeds)
                      for i, g in enumerate(c.list_("mi.cells", groups)))
    return MISpec(tuple(dict.fromkeys(ests)), slices,
                  c.int_("mi.max_per_class", raw.get("max_per_class", 100), minimum=2, allow_none=True), model,
                  c.int_("mi.seed", raw.get("seed", 0)), c.bool_("mi.conditional", raw.get("conditional", True)),
                  c.bool_("mi.covariance", raw.get("covariance", True)), cells)


def parse_spec(raw, origin: str = "config", source: str = "", base_dir: str = ".") -> Spec:
    """Validate a loaded YAML mapping and return the resolved :class:`Spec`."""
    c = _Checker(origin)
    if raw is None:
        c.fail("", "the file is empty")
    c.mapping("", raw, ("name", "out", "device", "devices", "data", "seeds", "poison_seed", "attacks", "victims",
                        "protocols", "evaluate", "mi", "separability", "report"), required=("attacks",))
    d = raw.get("data", {}) or {}
    if isinstance(d, str):
        d = {"name": d}
    c.mapping("data", d, ("name", "subset", "test_subset", "seed"))
    data = DataSpec(c.str_("data.name", d.get("name", "fashion-mnist")),
                    c.int_("data.subset", d.get("subset"), minimum=1, allow_none=True),
                    c.int_("data.test_subset", d.get("test_subset"), minimum=1, allow_none=True),
                    c.int_("data.seed", d.get("seed", 0)))
    seeds = tuple(c.int_("seeds", s) for s in c.list_("seeds", raw.get("seeds", [0])))
    if len(set(seeds)) != len(seeds):
        c.fail("seeds", f"repeated seed in {list(seeds)}")
    if any(isinstance(s, int) and s < 0 for s in seeds):
        c.fail("seeds", f"seeds must be non-negative integers, got {list(seeds)}")
    poison_seed = c.str_("poison_seed", raw.get("poison_seed", "each"))
    if poison_seed not in ("each", "first"):
        c.fail("poison_seed", f"must be 'each' (a poison per seed) or 'first' (one poison, seeds[0]), got {poison_seed!r}")
    attacks = _attacks(c, raw["attacks"])
    victims = _victims(c, raw.get("victims", ["cnn"]), base_dir)
    protocols = _protocols(c, raw.get("protocols"))
    groups_raw = raw.get("evaluate", [{}])
    groups = tuple(_group(c, f"evaluate[{i}]", g, victims, protocols, attacks, seeds=seeds)
                   for i, g in enumerate(c.list_("evaluate", groups_raw)))
    mi = _mi(c, raw.get("mi"), victims, protocols, attacks, seeds)
    sep = c.bool_("separability", raw.get("separability", True))
    rep = raw.get("report", {}) or {}
    c.mapping("report", rep, ("victim", "protocol", "estimator"))
    report = {"victim": str(rep.get("victim", next(iter(groups[0].victims)))),
              "protocol": str(rep.get("protocol", "st")),
              "estimator": str(rep.get("estimator", mi.estimators[0] if mi.estimators else "hist"))}
    if report["victim"] not in victims:
        c.fail("report.victim", f"{report['victim']!r} is not defined under victims")
    if report["protocol"] not in protocols:
        c.fail("report.protocol", f"{report['protocol']!r} is not defined under protocols")
    if mi.estimators and report["estimator"] not in mi.estimators:
        c.fail("report.estimator", f"{report['estimator']!r} is not among mi.estimators")
    device = c.str_("device", raw.get("device", "auto"))
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", device):
        c.fail("device", f"use auto, cpu, cuda or cuda:N, got {device!r}")
    devices = raw.get("devices")
    if devices is not None:
        devices = tuple(c.str_("devices", x) for x in c.list_("devices", devices))
        for x in devices:
            if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", x):
                c.fail("devices", f"use cpu, cuda or cuda:N, got {x!r}")
    out = raw.get("out")
    if out is not None:
        out = c.str_("out", out)
    name = str(raw.get("name") or Path(origin).stem)
    return Spec(name=name, data=data, seeds=seeds, poison_seed=poison_seed, attacks=attacks, victims=victims,
                protocols=protocols, groups=groups, mi=mi, separability=sep, report=report, device=device,
                devices=devices, out=out, source=source, base_dir=str(base_dir))


def load_spec(path: str | Path) -> Spec:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnableError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnlearnableError(f"{path}: not a text file (an experiment spec is YAML)") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UnlearnableError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_spec(raw, origin=str(path), source=text, base_dir=str(path.parent))
