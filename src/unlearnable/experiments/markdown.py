"""The one Markdown table writer of the reports (demo, compare, evaluate, run's tables)."""

from __future__ import annotations


def table_lines(head, rows) -> list[str]:
    """``head`` and ``rows`` (sequences of cells, shown with ``str``) as Markdown lines, every
    column padded to its widest cell so that the raw text reads as a table too."""
    cells = [[str(c) for c in r] for r in [head, *rows]]
    w = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return [line(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, cells[1:])]


def final_acc_cell(acc: float, did_not_learn) -> str:
    """A victim's final-epoch accuracy, marked when it learned nothing (chance, not protection;
    ``did_not_learn`` is train.standard.did_not_learn's reason or a falsy value)."""
    return f"{100 * acc:.2f}%" + (" (victim did not learn)" if did_not_learn else "")
