"""Visual programs over digit grids: a vision tool, a small program DSL, a random program sampler,
an executor, a label verifier and a rationale converter (the data pipeline of VPD).

Hu, Stretcu, Lu, Viswanathan, Hata, Luo, Krishna & Fuxman, 2024, "Visual Program Distillation:
Distilling Tools and Programmatic Reasoning into Vision-Language Models" (CVPR 2024),
arXiv:2312.03052. VPD's data synthesis has four steps: an LLM samples several candidate
programs for a (image, question) pair; each is executed with vision tools; a program whose result
matches the human label is kept (the others are filtered out); the kept program's execution trace
is rewritten as a chain-of-thought rationale, on which the VLM is instruction-tuned.

The miniature's parts, all seeded and deterministic:

* a "grid image" of ``cells`` cells (default 4), ``digits`` of them holding a digit image of
  scikit-learn's bundled 8x8 digits, the others empty (``_``);
* the vision tool (:func:`digit_tool`): a softmax-regression classifier on the 64 pixels, trained
  once (seed 0) on half of the digits; the scenes draw their images from the other half, so the
  tool makes real mistakes (about 5%);
* the questions: ``S`` ("the sum of the digits"), ``M`` ("the largest digit": a comparison) and
  ``Ck`` ("how many digits are greater than k"), labelled from the digits' *true* classes;
* the DSL (:class:`Program`): a left fold over the cells with one of the ops ``add`` (running
  sum), ``max``, ``min`` (running extremum), ``gt<k>`` / ``lt<k>`` (running count of digits
  above / below ``k``); an empty cell leaves the running value unchanged;
* the random program sampler (:func:`sample_programs`): ops drawn uniformly, the threshold of a
  counting op read from the question (the sampler is a stand-in for the LLM: it knows the DSL,
  not which program answers the question);
* the executor (:func:`execute`): runs a program on the tool's outputs, returning its trace (the
  running value after every cell) and result;
* the verifier: a program is kept when its result equals the label (:func:`synthesize`; the
  first of ``candidates`` sampled programs that verifies). A scene where the tool erred is usually
  dropped; a wrong program whose result happens to equal the label is kept ("spurious", counted);
* the rationale converter (:func:`rationale_text`): ``"add:3>3,_>3,5>8,_>8=8"``, the op, then
  per cell the tool's output and the running value after it, then the answer: every step is
  local (the previous value and one cell), the form in which a longer composition is more steps
  of the same kind.

The student reads the question and the tool's outputs as tokens (``"S:3_5_="``: the tool's
classes, ``_`` for an empty cell) and must compose them. :class:`DigitGridTask` (task
``digit_grid`` of :mod:`distillery.sequence.tasks`) samples VPD-filtered training examples with a
rationale + answer completion (``completion: rationale``) or the answer alone (``answer``).
Its :meth:`~DigitGridTask.verify` reads the text after the last ``=`` and compares it with the
canonical program's result on the tool's outputs visible in the prompt (what a student that reads
those outputs can know); :meth:`~DigitGridTask.scenes` also gives the true label of unfiltered
test scenes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError, DataError
from . import TASKS, Example, Task, _positive_int, compare_answer

__all__ = [
    "OPS",
    "QUESTIONS",
    "DigitGridTask",
    "DigitTool",
    "Program",
    "Scene",
    "canonical_program",
    "digit_tool",
    "execute",
    "label_of",
    "parse_prompt",
    "rationale_text",
    "sample_programs",
    "synthesize",
]

EMPTY = "_"
#: Question codes: ``S`` sum, ``M`` largest digit, ``C`` count of digits greater than ``k``.
QUESTIONS = ("S", "M", "C")
#: The DSL's ops (a counting op carries a threshold: ``gt3``, ``lt3``).
OPS = ("add", "max", "min", "gt", "lt")


@dataclass(frozen=True)
class Program:
    """A fold over the grid's cells: ``op`` in :data:`OPS` and the threshold ``k`` of ``gt`` / ``lt``."""

    op: str
    k: int | None = None

    @property
    def name(self) -> str:
        return f"{self.op}{self.k}" if self.op in ("gt", "lt") else self.op


def execute(program: Program, cells: list[int | None]) -> tuple[list[int], int]:
    """Run ``program`` on the cells' values (``None``: empty): ``(trace, result)``, the running
    value after every cell and the final value. The running value starts at 0 (``min`` takes
    the first digit as it is); an empty cell keeps it."""
    value, trace, started = 0, [], False
    for c in cells:
        if c is not None:
            if program.op == "add":
                value = value + c
            elif program.op == "max":
                value = max(value, c)
            elif program.op == "min":
                value = min(value, c) if started else c
            elif program.op == "gt":
                value = value + int(c > program.k)
            elif program.op == "lt":
                value = value + int(c < program.k)
            else:
                raise DataError(f"visual program: unknown op {program.op!r} (ops: {OPS}).")
            started = True
        trace.append(value)
    return trace, value


def canonical_program(question: str, k: int | None = None) -> Program:
    """The program that answers a question: ``S`` -> add, ``M`` -> max, ``C`` -> gt k."""
    if question == "S":
        return Program("add")
    if question == "M":
        return Program("max")
    if question == "C":
        return Program("gt", k)
    raise DataError(f"visual program: unknown question {question!r} (questions: {QUESTIONS}).")


def label_of(question: str, k: int | None, true_cells: list[int | None]) -> int:
    """The question's label from the digits' true classes (the "human annotation")."""
    return execute(canonical_program(question, k), true_cells)[1]


def rationale_text(program: Program, cells: list[int | None], trace: list[int], result: int) -> str:
    """The program's execution as a rationale: the op, then per cell the tool's output (``_``:
    empty) and the running value after it, then the answer: ``"add:3>3,_>3,5>8,_>8=8"``."""
    steps = ",".join(f"{EMPTY if c is None else c}>{v}" for c, v in zip(cells, trace))
    return f"{program.name}:{steps}={result}"


def sample_programs(question: str, k: int | None, n: int, generator: torch.Generator | None = None) -> list[Program]:
    """``n`` candidate programs drawn by the random sampler: ops uniform over :data:`OPS`; a
    counting op takes the question's number (``k``), or a uniform threshold in 1..8 if it has none."""
    out = []
    for op_i, k_draw in zip(torch.randint(len(OPS), (n,), generator=generator).tolist(),
                            torch.randint(1, 9, (n,), generator=generator).tolist()):
        op = OPS[op_i]
        out.append(Program(op, (k if k is not None else k_draw) if op in ("gt", "lt") else None))
    return out


@dataclass(frozen=True)
class Scene:
    """One grid: the image indices of the pool (``None``: empty cell), their true classes, the
    tool's classes, the question and its label."""

    images: tuple[int | None, ...]
    true: tuple[int | None, ...]
    seen: tuple[int | None, ...]
    question: str
    k: int | None
    label: int

    @property
    def prompt(self) -> str:
        q = self.question + ("" if self.k is None else str(self.k))
        return f"{q}:{''.join(EMPTY if c is None else str(c) for c in self.seen)}="

    @property
    def tool_correct(self) -> bool:
        return self.true == self.seen


def parse_prompt(prompt: str) -> tuple[str, int | None, list[int | None]]:
    """``"C4:3_5_="`` -> ``("C", 4, [3, None, 5, None])`` (DataError if not a grid prompt)."""
    import re

    m = re.fullmatch(r"([SMC])(\d?):([0-9_]+)=", prompt)
    if m is None or (m.group(1) == "C") != bool(m.group(2)):
        raise DataError(f"task digit_grid: {prompt!r} is not a grid prompt (e.g. 'S:3_5_=' or 'C4:3_5_=').")
    k = int(m.group(2)) if m.group(2) else None
    return m.group(1), k, [None if ch == EMPTY else int(ch) for ch in m.group(3)]


class DigitTool(torch.nn.Module):
    """The vision tool: softmax regression ``(N, 64) -> (N, 10)`` logits on 8x8 digits in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Classes ``(N,)`` of images ``(N, 8, 8)`` or ``(N, 64)``."""
        return self.forward(x).argmax(-1)


@functools.lru_cache(maxsize=4)
def digit_tool(seed: int = 0, steps: int = 300) -> dict[str, Any]:
    """Train the tool once per process (``seed``; full-batch Adam, ``steps`` steps) on a seeded
    half of scikit-learn's digits; returns ``{"tool", "pool_true" (M,), "pool_seen" (M,),
    "pool_accuracy"}``: the other half (the scene pool), its true classes and the tool's."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    fit, pool = perm[: len(x) // 2], perm[len(x) // 2:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tool = DigitTool()
    opt = torch.optim.Adam(tool.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tool(x[fit]), y[fit]).backward()
        opt.step()
    tool.eval()
    seen = tool.predict(x[pool])
    return {"tool": tool, "pool_true": y[pool].tolist(), "pool_seen": seen.tolist(),
            "pool_accuracy": float((seen == y[pool]).float().mean())}


def synthesize(scene: Scene, candidates: int, generator: torch.Generator | None = None
               ) -> tuple[Program, list[int], int] | None:
    """VPD's steps 1-3 on one scene: sample ``candidates`` programs, execute each on the tool's
    outputs, keep the first whose result equals the label; ``None`` if none verifies."""
    for program in sample_programs(scene.question, scene.k, candidates, generator):
        trace, result = execute(program, list(scene.seen))
        if result == scene.label:
            return program, trace, result
    return None


class DigitGridTask(Task):
    """Questions over digit grids, VPD-filtered (see the module docstring).

    Args:
        cells: grid cells (1..9).
        digits: non-empty cells per grid (1..cells): the composition's length.
        questions: the question codes to draw from (``S``, ``M``, ``C``).
        completion: ``rationale`` (the kept program's rationale then the answer) or ``answer``.
        candidates: programs the sampler draws per scene (VPD's candidate programs).
        tool_seed: the seed of the tool and of the pool split.
    """

    name = "digit_grid"
    alphabet = "0123456789_:=,>SMCadmxingtl"  # digits, layout, question codes, the ops' letters

    def __init__(self, cells: int = 4, digits: int = 2, questions: list[str] | tuple[str, ...] = QUESTIONS,
                 completion: str = "rationale", candidates: int = 8, tool_seed: int = 0) -> None:
        self.cells = _positive_int("cells", cells, self.name, 1, 9)
        self.digits = _positive_int("digits", digits, self.name, 1, self.cells)
        bad = [q for q in questions if q not in QUESTIONS] if isinstance(questions, (list, tuple)) else [questions]
        if bad or not questions:
            raise ConfigError(f"task {self.name}: questions must be a non-empty list of {list(QUESTIONS)}, got {questions!r}.")
        self.questions = tuple(questions)
        if completion not in ("rationale", "answer"):
            raise ConfigError(f"task {self.name}: completion must be 'rationale' or 'answer', got {completion!r}.")
        self.completion = completion
        self.candidates = _positive_int("candidates", candidates, self.name, 1, 1000)
        self.tool_seed = _positive_int("tool_seed", tool_seed, self.name, 0)
        self.stats: dict[str, int] = {}

    # -- scenes ------------------------------------------------------------------------------
    def _scene(self, generator: torch.Generator | None) -> Scene:
        tool = digit_tool(self.tool_seed)
        where = torch.randperm(self.cells, generator=generator)[: self.digits].tolist()
        picks = torch.randint(len(tool["pool_true"]), (self.digits,), generator=generator).tolist()
        images: list[int | None] = [None] * self.cells
        for cell, img in zip(where, picks):
            images[cell] = img
        question = self.questions[int(torch.randint(len(self.questions), (1,), generator=generator))]
        k = int(torch.randint(1, 9, (1,), generator=generator)) if question == "C" else None
        true = tuple(None if i is None else tool["pool_true"][i] for i in images)
        seen = tuple(None if i is None else tool["pool_seen"][i] for i in images)
        return Scene(tuple(images), true, seen, question, k, label_of(question, k, list(true)))

    def scenes(self, n: int, generator: torch.Generator | None = None) -> list[Scene]:
        """``n`` unfiltered scenes (a test set: prompt, the tool's view and the true label)."""
        _positive_int("n", n, self.name)
        return [self._scene(generator) for _ in range(n)]

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Example]:
        """``n`` VPD-filtered examples: scenes are drawn until ``n`` have a verified program.
        ``self.stats`` counts the scenes drawn, kept, kept with a tool error, and kept with a
        spurious program (not the question's canonical one)."""
        _positive_int("n", n, self.name)
        out: list[Example] = []
        stats = {"drawn": 0, "kept": 0, "kept_tool_error": 0, "spurious": 0}
        while len(out) < n:
            if stats["drawn"] >= 50 * n + 1000:
                raise DataError(f"task {self.name}: only {len(out)} of {stats['drawn']} scenes had a verified program; "
                                f"raise candidates (now {self.candidates}).")
            scene = self._scene(generator)
            stats["drawn"] += 1
            found = synthesize(scene, self.candidates, generator)
            if found is None:
                continue
            program, trace, result = found
            stats["kept"] += 1
            stats["kept_tool_error"] += int(not scene.tool_correct)
            stats["spurious"] += int(program != canonical_program(scene.question, scene.k))
            text = rationale_text(program, list(scene.seen), trace, result) if self.completion == "rationale" else str(result)
            out.append(Example(scene.prompt, text))
        self.stats = stats
        return out

    def answer(self, prompt: str) -> str:
        """The canonical program's rationale (or result) on the tool's outputs in ``prompt``."""
        q, k, cells = parse_prompt(prompt)
        if len(cells) != self.cells:
            raise DataError(f"task {self.name}: {prompt!r} has {len(cells)} cells, this task {self.cells}.")
        program = canonical_program(q, k)
        trace, result = execute(program, cells)
        return rationale_text(program, cells, trace, result) if self.completion == "rationale" else str(result)

    def verify(self, prompt: str, completion: str) -> tuple[float, str]:
        """Reward 1 when the text after the completion's last ``=`` (all of it if none) is the
        canonical program's result on the prompt's tool outputs."""
        q, k, cells = parse_prompt(prompt)
        expected = str(execute(canonical_program(q, k), cells)[1])
        return compare_answer(expected, final_answer(completion))


def final_answer(completion: str) -> str:
    """The answer of a completion: the text after its last ``=`` (all of it if it has none)."""
    return completion.strip().rsplit("=", 1)[-1].strip()


TASKS["digit_grid"] = DigitGridTask
