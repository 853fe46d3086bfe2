"""Procedural text tasks with verifiers, for on-policy and self-distillation of small LMs.

The core tasks are defined here; the papers' miniature tasks live beside them in this package
(``revision``: SD-Zero, ``gridworld``: Skill-SD, ``visual_programs``: VPD, ``captions``: PSRD,
``contrast``: VC-STaR) and a config names any of them as ``module:Class``
(``distillery.sequence.tasks.gridworld:GridworldTask``).

Each task samples :class:`Example` ``(prompt, answer)`` pairs from a seeded ``torch.Generator``
and verifies any completion: ``verify(prompt, completion) -> (reward, feedback)`` with reward
``1.0`` for a correct completion and ``0.0`` otherwise, and a feedback text that names the first
wrong position (the "verifier hook" of the sequence engine: SD-Zero's binary reward, Skill-SD's
feedback). Surrounding whitespace of the completion is ignored. ``alphabet`` lists every
character a prompt or answer can contain (for a :class:`~distillery.sequence.tokenizers.CharTokenizer`).

* ``addition`` (``digits``): ``"123+456="`` -> ``"579"``, the setting of SD-Zero's miniature
  (multi-digit addition; ``reverse=True`` writes the answer least-significant digit first, the
  order in which a left-to-right model can carry, Lee et al., 2023, arXiv:2307.03381);
* ``sorting`` (``length``): ``"31524>"`` -> ``"12345"``;
* ``dyck`` (``kinds``, ``length``, ``max_depth``): an unfinished prefix of a Dyck word -> the
  brackets that close it (``"([()="`` -> ``"])"``); any completion that makes the whole word
  balanced is accepted, the reference answer is the shortest;
* ``program`` (``length``, ``max_ops``): a list of digits and a composition of ``rev`` (reverse),
  ``inc`` (+1 mod 10), ``dbl`` (x2 mod 10) applied left to right: ``"inc rev:312="`` -> ``"324"``.

:func:`build_task` builds one from ``{"kind": NAME, "params": {...}}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError, DataError

__all__ = ["TASKS", "AdditionTask", "DyckTask", "Example", "ProgramTask", "SortingTask", "Task", "build_task",
           "compare_answer"]


@dataclass(frozen=True)
class Example:
    """A task instance: the ``prompt`` text and its reference ``answer`` (the completion to learn)."""

    prompt: str
    answer: str


def compare_answer(expected: str, got: str) -> tuple[float, str]:
    """Exact-match reward and feedback naming the first wrong position (1-based, from the left)."""
    got = got.strip()
    if got == expected:
        return 1.0, "correct"
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            return 0.0, f"wrong at position {i + 1}: expected {e!r}, got {g!r}"
    if len(got) < len(expected):
        return 0.0, f"too short: position {len(got) + 1} onwards is missing"
    return 0.0, f"too long: unexpected characters from position {len(expected) + 1}"


def _positive_int(name: str, value: Any, task: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"task {task}: {name} must be an integer {bound}, got {value!r}.")
    return value


def _randint(high: int, generator: torch.Generator | None, size: int = 1) -> list[int]:
    return torch.randint(high, (size,), generator=generator).tolist()


class Task:
    """Base class: ``sample(n, generator)``, ``answer(prompt)``, ``verify(prompt, completion)``."""

    name = "task"
    alphabet = ""

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Example]:
        """``n`` examples drawn with ``generator`` (same state -> same examples)."""
        _positive_int("n", n, self.name)
        out = []
        for _ in range(n):
            prompt = self._prompt(generator)
            out.append(Example(prompt, self.answer(prompt)))
        return out

    def _prompt(self, generator) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def answer(self, prompt: str) -> str:  # pragma: no cover - abstract
        """The reference answer of a prompt of this task (DataError if it is not one)."""
        raise NotImplementedError

    def verify(self, prompt: str, completion: str) -> tuple[float, str]:
        """``(reward in {0, 1}, feedback)`` for ``completion`` of ``prompt``."""
        return compare_answer(self.answer(prompt), completion)

    def _parse(self, pattern: str, prompt: str) -> re.Match:
        m = re.fullmatch(pattern, prompt)
        if m is None:
            raise DataError(f"task {self.name}: {prompt!r} is not a prompt of this task.")
        return m


class AdditionTask(Task):
    """``a+b=`` with operands of up to ``digits`` digits -> the decimal sum (optionally reversed)."""

    name = "addition"
    alphabet = "0123456789+="

    def __init__(self, digits: int = 3, reverse: bool = False) -> None:
        self.digits = _positive_int("digits", digits, self.name, 1, 18)
        self.reverse = bool(reverse)

    def _prompt(self, generator) -> str:
        a, b = _randint(10 ** self.digits, generator, 2)
        return f"{a}+{b}="

    def answer(self, prompt: str) -> str:
        m = self._parse(r"(\d+)\+(\d+)=", prompt)
        total = str(int(m.group(1)) + int(m.group(2)))
        return total[::-1] if self.reverse else total


class SortingTask(Task):
    """``length`` digits then ``>`` -> the digits in ascending order."""

    name = "sorting"
    alphabet = "0123456789>"

    def __init__(self, length: int = 5) -> None:
        self.length = _positive_int("length", length, self.name, 1, 64)

    def _prompt(self, generator) -> str:
        return "".join(map(str, _randint(10, generator, self.length))) + ">"

    def answer(self, prompt: str) -> str:
        return "".join(sorted(self._parse(r"(\d+)>", prompt).group(1)))


_BRACKETS = ("()", "[]", "{}")


class DyckTask(Task):
    """Close an unfinished Dyck prefix over ``kinds`` bracket pairs; see the module docstring."""

    name = "dyck"

    def __init__(self, kinds: int = 2, length: int = 8, max_depth: int = 4) -> None:
        self.kinds = _positive_int("kinds", kinds, self.name, 1, len(_BRACKETS))
        self.length = _positive_int("length", length, self.name, 1, 64)
        self.max_depth = _positive_int("max_depth", max_depth, self.name, 1)
        self.pairs = _BRACKETS[: self.kinds]
        self.alphabet = "".join(self.pairs) + "="

    def _prompt(self, generator) -> str:
        stack: list[str] = []
        out = []
        for _ in range(self.length):  # a random walk: open when empty, else open or close by a coin
            if not stack or (len(stack) < self.max_depth and _randint(2, generator)[0] == 0):
                pair = self.pairs[_randint(self.kinds, generator)[0]]
                stack.append(pair[1])
                out.append(pair[0])
            else:
                out.append(stack.pop())
        if not stack:  # the last step closed everything: reopen so that there is something to close
            pair = self.pairs[_randint(self.kinds, generator)[0]]
            out.append(pair[0])
        return "".join(out) + "="

    def _stack(self, prompt: str) -> list[str]:
        body = self._parse(r"(.*)=", prompt).group(1)
        closers = {p[0]: p[1] for p in self.pairs}
        stack = []
        for ch in body:
            if ch in closers:
                stack.append(closers[ch])
            elif stack and ch == stack[-1]:
                stack.pop()
            else:
                raise DataError(f"task {self.name}: {prompt!r} is not a prompt of this task (not a Dyck prefix).")
        return stack

    def answer(self, prompt: str) -> str:
        return "".join(reversed(self._stack(prompt)))

    def verify(self, prompt: str, completion: str) -> tuple[float, str]:
        stack = self._stack(prompt)
        closers = {p[0]: p[1] for p in self.pairs}
        for i, ch in enumerate(completion.strip()):
            if ch in closers:
                stack.append(closers[ch])
            elif stack and ch == stack[-1]:
                stack.pop()
            else:
                want = repr(stack[-1]) if stack else "nothing (the word is already balanced)"
                return 0.0, f"wrong at position {i + 1}: expected {want}, got {ch!r}"
        if stack:
            return 0.0, f"too short: {len(stack)} bracket(s) still open, next expected {stack[-1]!r}"
        return 1.0, "correct"


_OPS = {
    "rev": lambda xs: xs[::-1],
    "inc": lambda xs: [(x + 1) % 10 for x in xs],
    "dbl": lambda xs: [(2 * x) % 10 for x in xs],
}


class ProgramTask(Task):
    """A tiny list DSL: ``"op op ...:digits="`` -> the digits after the ops, applied left to right."""

    name = "program"
    alphabet = "0123456789:= " + "".join(sorted(set("".join(_OPS))))

    def __init__(self, length: int = 4, max_ops: int = 3) -> None:
        self.length = _positive_int("length", length, self.name, 1, 32)
        self.max_ops = _positive_int("max_ops", max_ops, self.name, 1, 16)

    def _prompt(self, generator) -> str:
        names = sorted(_OPS)
        n_ops = 1 + _randint(self.max_ops, generator)[0]
        ops = [names[i] for i in _randint(len(names), generator, n_ops)]
        digits = "".join(map(str, _randint(10, generator, self.length)))
        return " ".join(ops) + ":" + digits + "="

    def answer(self, prompt: str) -> str:
        m = self._parse(r"([a-z ]+):(\d+)=", prompt)
        xs = [int(c) for c in m.group(2)]
        for op in m.group(1).split():
            if op not in _OPS:
                raise DataError(f"task {self.name}: unknown op {op!r} in {prompt!r} (ops: {sorted(_OPS)}).")
            xs = _OPS[op](xs)
        return "".join(map(str, xs))


TASKS: dict[str, type[Task]] = {"addition": AdditionTask, "sorting": SortingTask, "dyck": DyckTask,
                                "program": ProgramTask}


def _task_class(kind: Any) -> type[Task] | None:
    """A registered task, or for ``"module:Class"`` that :class:`Task` subclass (imported, so a
    task defined outside this module needs no import before the config is read)."""
    if not isinstance(kind, str):
        return None
    if kind in TASKS:
        return TASKS[kind]
    if ":" not in kind:
        return None
    import importlib

    module, _, name = kind.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task: cannot load {kind!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task: {kind!r} is not a subclass of distillery.sequence.tasks.Task.")
    return cls


def build_task(spec: dict[str, Any]) -> Task:
    """A task from ``{"kind": "addition" | "sorting" | "dyck" | "program" | "module:Class",
    "params": {...}}``."""
    cls = _task_class(spec.get("kind")) if isinstance(spec, dict) else None
    if cls is None:
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise ConfigError(f"task: kind must be one of {sorted(TASKS)} or 'module:Class', got {kind!r}.")
    bad = sorted(set(spec) - {"kind", "params"})
    if bad:
        raise ConfigError(f"task: unknown key(s) {bad}; allowed: kind, params.")
    params = spec.get("params") or {}
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"task {spec['kind']}: bad params {sorted(params)}: {exc}") from None
