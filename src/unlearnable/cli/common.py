"""What the commands share: argument types, the parser class and the flag groups used by
more than one command. Defined once here; each command module imports what it uses."""

from __future__ import annotations

import argparse
import sys

from ..units import finite, parse_budget


# -- argument types ----------------------------------------------------------------------

def number(text: str) -> float:
    """A finite float: NaN and infinity pass every range check, so they are refused here."""
    try:
        return finite(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def eps_255(text: str) -> float:
    """Budgets are given in 1/255 units (``8`` or ``8/255``); returned in pixel units.

    Errors speak in the flag's own unit: ``--eps 300`` is "300/255", not "1.176"."""
    try:
        eps = parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return _checked(eps, 0 < eps * 255 <= 255, f"must be in (0, 255] (1/255 units), got {text}")


def _checked(value, ok: bool, problem: str):
    """``value`` when ``ok``; otherwise argparse's one-line error saying ``problem``."""
    if not ok:
        raise argparse.ArgumentTypeError(problem)
    return value


def ratio(text: str) -> float:
    v = number(text)
    return _checked(v, 0 < v <= 1, f"must be in (0, 1]: {text}")


def _positive(value, text: str):
    return _checked(value, value > 0, f"must be positive: {text}")


def positive_number(text: str) -> float:
    return _positive(number(text), text)


def fraction(text: str) -> float:
    """A proportion such as an accuracy, 0..1."""
    v = number(text)
    return _checked(v, 0 <= v <= 1, f"must be in [0, 1]: {text}")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    return _positive(_integer(text), text)


def port(text: str) -> int:
    """A TCP port, 0 meaning any free one."""
    v = _integer(text)
    return _checked(v, 0 <= v <= 65535, f"must be 0..65535 (0: any free port), got {text}")


def seed(text: str) -> int:
    v = _integer(text)
    return _checked(v, 0 <= v < 2**63, f"must be a non-negative integer below 2^63, got {text}")


# -- the parser --------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"unlearnable: error: {message}\n")
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        """Also leave ``option_flags`` in the namespace: each destination's flag in the command
        that was parsed (``pgd_steps`` -> ``--steps``), for :func:`.boundary.guarded` to turn
        the library's parameter names into flags."""
        ns, rest = super().parse_known_args(args, namespace)
        own = {a.dest: max(a.option_strings, key=len) for a in self._actions if a.option_strings}
        ns.option_flags = {**own, **getattr(ns, "option_flags", {})}  # a sub-command's flags win
        return ns, rest


# -- flag groups -------------------------------------------------------------------------

def add_attack_flags(p):
    p.add_argument("--preset", default="cpu", help="attack preset: cpu (default), paper-cifar10, ...")
    p.add_argument("--eps", type=eps_255, help="L-inf budget in 1/255 units (default 8)")
    p.add_argument("--epochs", type=positive_int, help="generation epochs")
    p.add_argument("--steps", type=positive_int, dest="pgd_steps", help="PGD steps per batch and epoch")
    p.add_argument("--step-size", type=eps_255, help="PGD step in 1/255 units")
    p.add_argument("--batch-size", type=positive_int, help="generation batch size")
    p.add_argument("--lr", type=positive_number, help="source-model learning rate")
    p.add_argument("--model", help="source model (registry name, e.g. cnn, resnet-18)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast for the model (perturbation stays fp32)")
    p.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")


def attack_overrides(args) -> dict:
    keys = ("eps", "epochs", "pgd_steps", "step_size", "batch_size", "lr", "model", "device", "bf16", "channels_last")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def add_mi_model_flag(p, default="victim", extra=""):
    p.add_argument("--mi-model", choices=("victim", "clean"), default=default,
                   help="network g for the MI gap: victim = the victim trained on each set, the paper's g "
                        "(default; clean reference from the clean victim); clean = the clean victim for every set "
                        "(not the paper's definition)" + extra)


def add_victim_flags(p):
    from ..train import VICTIM_PRESETS
    p.add_argument("--preset", help=f"victim preset: {', '.join(sorted(VICTIM_PRESETS))}, or a family cpu|paper "
                   "(default cpu: 'cpu' for st, 'cpu-at' for at)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--lr", type=positive_number)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--augment", help="none (cpu default), crop-flip (paper), crop, flip")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the model")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--subset", type=positive_int, help="class-balanced subset of the training images (plain data specs)")
    p.add_argument("--overwrite", action="store_true")


def add_prior_flags(p):
    from ..train.prior import FINETUNE_MODES
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint's backbone (a folder written by "
                   "pretrain or train, or its model.safetensors); the head is new")
    p.add_argument("--finetune", choices=FINETUNE_MODES, help="with --init: full (default: every weight at --lr), "
                   "low-lr (backbone at --backbone-lr-scale x --lr), linear-probe (backbone frozen)")
    p.add_argument("--backbone-lr-scale", type=positive_number,
                   help="low-lr: the backbone's learning rate as a fraction of --lr (default 0.1)")
