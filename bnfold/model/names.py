"""New names for what a fold creates, unique across the whole model (subgraphs and functions
included: two branches that both get a new bias must not collide)."""

from __future__ import annotations


class NameAllocator:
    """Hands out names unique across the whole model, subgraphs and functions included."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        #: per base, the suffix to try first: names are only ever added to ``taken``, so the
        #: ones below it are still taken (the same names as counting from 1, without the walk)
        self._next: dict[str, int] = {}

    def new(self, base: str) -> str:
        k = self._next.get(base, 0)
        name = base if k == 0 else f"{base}_{k}"
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        self._next[base] = k + 1
        return name
