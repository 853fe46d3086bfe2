"""A text gridworld as a sequence task: prompt = a small grid as text, completion = a move string.

The miniature of agentic tasks (Sokoban/ALFWorld-like navigation) used for Skill-SD (Wang et
al., 2026, arXiv:2604.10674). A ``size x size`` grid (``.`` floor, ``#`` wall, ``A`` the agent,
``G`` the goal), rows joined by ``/`` and closed by ``>``::

    "A.#./.#../....#/..G.>"  ->  "DDRR"   (one of the shortest paths)

Moves are ``U D L R``. :meth:`GridworldTask.verify` simulates them: reward ``1.0`` when no move
leaves the grid or enters a wall and the agent stands on ``G`` after the last move, else ``0.0``
with a feedback text naming the failing move. Every valid path is accepted (many strategies are
valid: the point the paper makes against a single ground-truth answer).

Privileged prompt formats (a suffix between the grid and ``>``; only ever shown to a teacher,
and to the base model during its supervised warm-up so that it can read them):

* ``grid=PATH>``: ground truth, a full solution path (OPSD's privileged answer);
* ``grid~TEMPLATE>``: a skill, the run template of a path (``"DDRRD"`` -> ``"DRD"``: which
  directions in which order, not how far).

``sample`` draws grids with a seeded generator; the answer of each example is a shortest path
drawn uniformly among all shortest paths (``diverse=False``: the canonical one, the first in
``U D L R`` order). ``formats`` (``{"plain": w, "gt": w, "skill": w}``) mixes prompt formats
for the warm-up data. Registered in :data:`~distillery.sequence.tasks.TASKS` as ``gridworld``.
"""

from __future__ import annotations

from collections import deque
import torch

from ...errors import ConfigError, DataError
from . import TASKS, Example, Task, _positive_int

__all__ = ["MOVES", "GridworldTask", "Grid", "parse_grid", "run_template", "shortest_paths", "simulate", "split_prompt"]

#: Move letter -> (row step, column step).
MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
FORMATS = ("plain", "gt", "skill")


class Grid:
    """A parsed grid: ``rows`` (tuple of strings), ``agent`` and ``goal`` as ``(row, col)``."""

    def __init__(self, rows: tuple[str, ...]) -> None:
        self.rows = rows
        self.size = len(rows)
        cells = {(r, c): ch for r, row in enumerate(rows) for c, ch in enumerate(row)}
        self.agent = next(p for p, ch in cells.items() if ch == "A")
        self.goal = next(p for p, ch in cells.items() if ch == "G")

    def free(self, r: int, c: int) -> bool:
        return 0 <= r < self.size and 0 <= c < len(self.rows[r]) and self.rows[r][c] != "#"

    def text(self) -> str:
        return "/".join(self.rows)


def split_prompt(prompt: str) -> tuple[str, str | None, str | None]:
    """``(grid text, kind, payload)``: kind ``None`` (plain), ``"gt"`` or ``"skill"``."""
    if not prompt.endswith(">"):
        raise DataError(f"task gridworld: {prompt!r} is not a prompt of this task (it must end with '>').")
    body = prompt[:-1]
    for mark, kind in (("=", "gt"), ("~", "skill")):
        if mark in body:
            grid, _, payload = body.partition(mark)
            return grid, kind, payload
    return body, None, None


def parse_grid(text: str) -> Grid:
    """A :class:`Grid` from ``"row/row/..."`` (DataError if malformed)."""
    rows = tuple(text.split("/"))
    ok = (len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows) and all(set(r) <= set(".#AG") for r in rows)
          and text.count("A") == 1 and text.count("G") == 1)
    if not ok:
        raise DataError(f"task gridworld: {text!r} is not a grid (equal rows of . # A G with one A and one G).")
    return Grid(rows)


def simulate(grid: Grid, moves: str) -> tuple[float, str]:
    """Walk ``moves`` from the agent: ``(1.0, "correct")`` if every move stays on floor and the
    last position is the goal, else ``(0.0, feedback)``."""
    r, c = grid.agent
    for i, m in enumerate(moves):
        if m not in MOVES:
            return 0.0, f"move {i + 1}: {m!r} is not a move (U D L R)"
        dr, dc = MOVES[m]
        if not grid.free(r + dr, c + dc):
            what = "left the grid" if not (0 <= r + dr < grid.size and 0 <= c + dc < grid.size) else "walked into a wall"
            return 0.0, f"move {i + 1} ({m}) {what}"
        r, c = r + dr, c + dc
    if (r, c) != grid.goal:
        return 0.0, f"ended at {(r, c)}, the goal is at {grid.goal}"
    return 1.0, "correct"


def shortest_paths(grid: Grid, limit: int = 10_000) -> list[str]:
    """Every shortest path from the agent to the goal, in ``U D L R`` (lexicographic move)
    order; ``[]`` if the goal is unreachable. At most ``limit`` paths."""
    dist = {grid.goal: 0}
    queue = deque([grid.goal])
    while queue:  # BFS distances to the goal
        r, c = queue.popleft()
        for dr, dc in MOVES.values():
            q = (r + dr, c + dc)
            if grid.free(*q) and q not in dist:
                dist[q] = dist[(r, c)] + 1
                queue.append(q)
    if grid.agent not in dist:
        return []
    out: list[str] = []

    def walk(p: tuple[int, int], prefix: str) -> None:
        if len(out) >= limit:
            return
        if p == grid.goal:
            out.append(prefix)
            return
        for m in "UDLR":
            dr, dc = MOVES[m]
            q = (p[0] + dr, p[1] + dc)
            if dist.get(q) == dist[p] - 1:
                walk(q, prefix + m)

    walk(grid.agent, "")
    return out


def run_template(path: str) -> str:
    """The run template of a move string: consecutive repeats collapsed (``"DDRRD"`` -> ``"DRD"``)."""
    return "".join(m for i, m in enumerate(path) if i == 0 or path[i - 1] != m)


class GridworldTask(Task):
    """Navigate a text grid; see the module docstring. ``size`` (3..8), ``walls`` (number of
    wall cells), ``min_path`` / ``max_path`` (shortest-path length bounds), ``diverse``,
    ``formats``."""

    name = "gridworld"
    alphabet = ".#AG/>=~UDLR"

    def __init__(self, size: int = 4, walls: int = 3, min_path: int = 2, max_path: int = 6, diverse: bool = True,
                 formats: dict[str, float] | None = None) -> None:
        self.size = _positive_int("size", size, self.name, 3, 8)
        self.walls = _positive_int("walls", walls, self.name, 0, size * size - 2)
        self.min_path = _positive_int("min_path", min_path, self.name, 1)
        self.max_path = _positive_int("max_path", max_path, self.name, self.min_path)
        self.diverse = bool(diverse)
        formats = {"plain": 1.0} if formats is None else formats
        if not isinstance(formats, dict) or not formats or set(formats) - set(FORMATS):
            raise ConfigError(f"task gridworld: formats must map some of {FORMATS} to weights, got {formats!r}.")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in formats.values()) \
                or sum(formats.values()) <= 0:
            raise ConfigError(f"task gridworld: formats weights must be non-negative numbers with a positive sum, got {formats!r}.")
        self.formats = {k: float(v) for k, v in formats.items()}

    def _grid(self, generator: torch.Generator | None) -> tuple[Grid, list[str]]:
        n = self.size
        for _ in range(10_000):
            cells = torch.randperm(n * n, generator=generator).tolist()
            a, g, walls = cells[0], cells[1], set(cells[2:2 + self.walls])
            rows = tuple("".join("A" if i * n + j == a else "G" if i * n + j == g else "#" if i * n + j in walls else "."
                                 for j in range(n)) for i in range(n))
            grid = Grid(rows)
            paths = shortest_paths(grid)
            if paths and self.min_path <= len(paths[0]) <= self.max_path:
                return grid, paths
        raise ConfigError(f"task gridworld: no grid with a path of {self.min_path}..{self.max_path} moves found "
                          f"(size {n}, walls {self.walls}).")

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Example]:
        _positive_int("n", n, self.name)
        kinds = list(self.formats)
        weights = torch.tensor([self.formats[k] for k in kinds])
        out = []
        for _ in range(n):
            grid, paths = self._grid(generator)
            path = paths[int(torch.randint(len(paths), (1,), generator=generator))] if self.diverse else paths[0]
            kind = kinds[int(torch.multinomial(weights, 1, generator=generator))] if len(kinds) > 1 else kinds[0]
            suffix = {"plain": "", "gt": "=" + path, "skill": "~" + run_template(path)}[kind]
            out.append(Example(grid.text() + suffix + ">", path))
        return out

    def answer(self, prompt: str) -> str:
        """The canonical shortest path (first in U D L R order); with a skill suffix the first
        shortest path that follows the template, with a ground-truth suffix that path if valid."""
        text, kind, payload = split_prompt(prompt)
        grid = parse_grid(text)
        paths = shortest_paths(grid)
        if not paths:
            raise DataError(f"task gridworld: the goal of {prompt!r} cannot be reached.")
        if kind == "gt" and simulate(grid, payload or "")[0] == 1.0:
            return payload or ""
        if kind == "skill":
            return next((p for p in paths if run_template(p) == payload), paths[0])
        return paths[0]

    def verify(self, prompt: str, completion: str) -> tuple[float, str]:
        text, _, _ = split_prompt(prompt)
        return simulate(parse_grid(text), completion.strip())


TASKS["gridworld"] = GridworldTask
