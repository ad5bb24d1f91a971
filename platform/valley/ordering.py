"""Order names so that each comes after those it depends on (subsets after the subsets they exclude, arms
after the arms they start from), refusing a cycle with the loop named."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def dependency_order(deps: Mapping[str, Iterable[str]], what: str) -> list[str]:
    """Every name of `deps` after the names it depends on, otherwise in the mapping's order; a cycle raises
    ValueError("<what> in a loop: a -> b -> a")."""
    state: dict[str, str] = {}
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ValueError(f"{what} in a loop: {' -> '.join((*path, name))}")
        state[name] = "visiting"
        for other in deps.get(name, ()):
            visit(other, (*path, name))
        state[name] = "done"
        ordered.append(name)

    for name in deps:
        visit(name, ())
    return ordered
