"""The package's import graph: no cycles between modules, and the library never reaches up.

Every ``import`` and ``from ... import`` of every module is read from its source (imports
inside functions included: they run too, only later), so a cycle hidden by a deferred
import is still one."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Modules every layer may use.
BASE = {"unlearnable", "unlearnable.errors", "unlearnable.fsutil", "unlearnable.options", "unlearnable.progress",
        "unlearnable.runtime", "unlearnable.sharding", "unlearnable.units"}
#: The library's packages; each may use BASE and the packages listed for it.
LIBRARY = {
    "data": set(),
    "models": {"data"},
    "attacks": {"data", "models", "train"},
    "train": {"data", "models", "attacks", "defenses"},
    "defenses": {"data", "models", "train"},
    "measure": {"data", "models", "train"},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "unlearnable").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known, tree: ast.AST | None = None) -> set[str]:
    """The package modules ``name`` imports (a submodule when the name imported is one);
    ``tree``: only the imports inside this part of the module's syntax tree."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree if tree is not None else ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "unlearnable"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "unlearnable":
                target = node.module
            else:
                continue
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, mods) for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_reader_sees_deferred_and_relative_imports():
    edges = graph()
    assert "unlearnable.attacks.source" in edges["unlearnable.attacks.mi_ue"]
    assert "unlearnable.sharding" in edges["unlearnable.attacks.source"]
    # an import inside a function body counts
    assert "unlearnable.experiments.cells" in edges["unlearnable.experiments.runner"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_the_library_never_imports_the_layers_above_it():
    wrong = []
    for mod, targets in graph().items():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] not in LIBRARY:
            continue
        allowed = {parts[1]} | LIBRARY[parts[1]]
        for t in targets:
            tp = t.split(".")
            if t in BASE or (len(tp) > 1 and tp[1] in allowed):
                continue
            wrong.append(f"{mod} -> {t}")
    assert not wrong, "library modules import higher layers:\n" + "\n".join(sorted(wrong))


#: The command-line package: the only place that parses arguments.
CLI = "unlearnable.cli"
#: ``torchrun -m unlearnable.distributed``: a library module whose ``main`` hands over to the CLI.
ALIAS, ALIAS_TARGET = "unlearnable.distributed", "unlearnable.cli.distributed"


def in_cli(mod: str) -> bool:
    return mod == CLI or mod.startswith(CLI + ".")


def imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_only_the_cli_parses_arguments():
    mods = modules()
    assert imports_argparse(mods["unlearnable.cli.common"])  # the reader sees it where it is
    wrong = sorted(m for m, p in mods.items() if not in_cli(m) and imports_argparse(p))
    assert not wrong, "argparse imported outside unlearnable.cli:\n" + "\n".join(wrong)


def test_the_library_never_imports_the_cli():
    mods, edges = modules(), graph()
    assert ALIAS_TARGET in edges[ALIAS]  # the reader sees the alias's deferred import
    wrong = [f"{m} -> {t}" for m, targets in edges.items() if not in_cli(m) and m != ALIAS
             for t in targets if in_cli(t)]
    # the alias: only ``main`` may import the CLI, and only its torchrun command line
    tree = ast.parse(mods[ALIAS].read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1
    tree.body = [n for n in tree.body if n is not mains[0]]
    wrong += [f"{ALIAS} (outside main) -> {t}" for t in imports(ALIAS, mods[ALIAS], mods, tree) if in_cli(t)]
    wrong += [f"{ALIAS}.main -> {t}" for t in imports(ALIAS, mods[ALIAS], mods, mains[0])
              if in_cli(t) and t != ALIAS_TARGET]
    assert not wrong, "library modules import the CLI:\n" + "\n".join(sorted(wrong))


def _flag_literals(path: Path) -> list[str]:
    """String literals (docstrings excluded) in ``path`` that spell a command-line flag."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and re.search(r"(^|\s|\()--[a-z]", n.value)]


def test_library_messages_name_parameters_not_flags():
    """The library knows no command line: a message names the caller's parameter in backticks."""
    pkg = SRC / "unlearnable"
    offenders = {str(p.relative_to(pkg)): hits for p in sorted(pkg.rglob("*.py"))
                 if "cli" not in p.relative_to(pkg).parts and (hits := _flag_literals(p))}
    assert not offenders, offenders


def test_the_cli_prints_the_flag_of_a_parameter_named_in_a_library_message(tiny_npz, tmp_path, capsys):
    from unlearnable.cli import main
    from unlearnable.cli.boundary import as_flags
    from unlearnable.errors import UnlearnableError
    from unlearnable.poison import parse_classes

    with pytest.raises(UnlearnableError, match="^`classes`: unknown class 'nope'"):
        parse_classes("nope", ["a", "b"])
    code = main(["poison", "--method", "random", "--data", str(tiny_npz), "--out", str(tmp_path / "o"),
                 "--classes", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "error: --classes: unknown class 'nope'" in err and "`" not in err
    assert as_flags("use `pgd_steps` or `overwrite`, not `nothing`",
                    {"pgd_steps": "--steps", "overwrite": "--overwrite"}) == "use --steps or --overwrite, not `nothing`"
