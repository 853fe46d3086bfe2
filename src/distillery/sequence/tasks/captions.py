"""Synthetic scene captioning with contradicting captions: a task where a tiny LM hallucinates.

The miniature of PSRD (Zhang et al., 2026, "Mitigating Multimodal Hallucination via Phase-wise
Self-reward", arXiv:2604.17982): the "image" is a procedural scene, a few distinct objects
(upper-case letters) each with one colour (lower-case letters); the "caption" names the scene's
objects in a random order, one clause per object, clauses separated by ``,``::

    prompt  "Ar Bg Db="   (objects A, B, D coloured r, g, b)
    caption "Bg,Db,Ar"

Each clause is one *phase* of the caption. The training captions are noisy: with probability
``noise`` a clause is replaced by one that contradicts the scene (drawn uniformly from every
object-colour pair that is not in the scene: an object the scene does not hold, or a scene
object with another colour), so that a model trained on them names things that are not there at
a measurable rate, as LVLMs trained on web captions do. With probability ``blank`` the scene is
withheld (prompt ``"="``) and the caption describes an unseen random scene: those examples teach
the model the scene-free caption distribution that the self-evaluation of
:mod:`distillery.recipes.psrd` compares against (the "no image" reference).

Hallucination is exact, from the procedural ground truth: :meth:`CaptionTask.clause_verdicts`
marks each generated clause as hallucinated (an object not in the scene, a wrong colour, or a
malformed clause) or not; :func:`hallucination_rate` is the share of hallucinated clauses.

A config names it ``task: {name: "distillery.sequence.tasks.captions:CaptionTask", params: {...}}``
(:func:`~distillery.sequence.tasks.build_task` imports a ``"module:Class"`` task itself); once
this module is imported it is also registered as ``captions`` in
:data:`distillery.sequence.tasks.TASKS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import DataError
from . import TASKS, Example, Task, _positive_int

__all__ = ["CaptionTask", "hallucination_rate"]

OBJECT_LETTERS = "ABCDEFGHJKLMNPQR"
COLOR_LETTERS = "rgbywkop"
BLANK_PROMPT = "="


class CaptionTask(Task):
    """Captions of procedural scenes; see the module docstring.

    ``objects`` (2..16) object kinds, ``colors`` (2..8) colours, ``scene_size`` objects per scene
    (distinct, < ``objects``), ``noise`` the per-clause probability of a contradicting clause in
    the training captions, ``blank`` the probability that an example withholds the scene,
    ``shuffle`` whether captions name the objects in a random order.
    """

    name = "captions"

    def __init__(self, objects: int = 8, colors: int = 4, scene_size: int = 3, noise: float = 0.2,
                 blank: float = 0.1, shuffle: bool = False) -> None:
        self.objects = OBJECT_LETTERS[: _positive_int("objects", objects, self.name, 2, len(OBJECT_LETTERS))]
        self.colors = COLOR_LETTERS[: _positive_int("colors", colors, self.name, 2, len(COLOR_LETTERS))]
        self.scene_size = _positive_int("scene_size", scene_size, self.name, 1, len(self.objects) - 1)
        for key, value in (("noise", noise), ("blank", blank)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                from ...errors import ConfigError

                raise ConfigError(f"task {self.name}: {key} must be a number in [0, 1), got {value!r}.")
        self.noise, self.blank, self.shuffle = float(noise), float(blank), bool(shuffle)
        self.alphabet = self.objects + self.colors + " ,="

    # -- sampling ----------------------------------------------------------------------------
    def scene(self, generator: torch.Generator | None = None) -> dict[str, str]:
        """A random scene ``{object: colour}`` (insertion order = the prompt's order)."""
        order = torch.randperm(len(self.objects), generator=generator)[: self.scene_size].tolist()
        colors = torch.randint(len(self.colors), (self.scene_size,), generator=generator).tolist()
        return {self.objects[o]: self.colors[c] for o, c in zip(order, colors)}

    @staticmethod
    def prompt_of(scene: dict[str, str]) -> str:
        return " ".join(o + c for o, c in scene.items()) + "="

    def contradicting(self, scene: dict[str, str]) -> list[str]:
        """Every clause that contradicts ``scene`` (sorted)."""
        return [o + c for o in self.objects for c in self.colors if scene.get(o) != c]

    def caption(self, scene: dict[str, str], generator: torch.Generator | None = None, noise: float | None = None) -> str:
        """A caption of ``scene``: its clauses in the scene's order (a random order with
        ``shuffle``), each replaced with probability ``noise`` (default the task's) by a uniformly
        drawn contradicting clause."""
        noise = self.noise if noise is None else noise
        items = list(scene.items())
        clauses = []
        bad = self.contradicting(scene)
        order = torch.randperm(len(items), generator=generator).tolist() if self.shuffle else range(len(items))
        for i in order:
            u, j = torch.rand((), generator=generator).item(), torch.randint(len(bad), (), generator=generator).item()
            clauses.append(bad[j] if u < noise else items[i][0] + items[i][1])
        return ",".join(clauses)

    def scenes(self, n: int, generator: torch.Generator | None = None) -> list[Example]:
        """``n`` full-scene prompts with clean reference captions (the evaluation set)."""
        _positive_int("n", n, self.name)
        out = []
        for _ in range(n):
            s = self.scene(generator)
            out.append(Example(self.prompt_of(s), self.caption(s, generator, noise=0.0)))
        return out

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Example]:
        """Training examples: noisy captions, a ``blank`` share of them without the scene."""
        _positive_int("n", n, self.name)
        out = []
        for _ in range(n):
            s = self.scene(generator)
            if torch.rand((), generator=generator).item() < self.blank:
                out.append(Example(BLANK_PROMPT, self.caption(s, generator, noise=0.0)))
            else:
                out.append(Example(self.prompt_of(s), self.caption(s, generator)))
        return out

    # -- ground truth --------------------------------------------------------------------------
    def parse_scene(self, prompt: str) -> dict[str, str] | None:
        """The scene of a prompt (``None`` for the blank prompt); DataError if it is not one."""
        if prompt == BLANK_PROMPT:
            return None
        if not prompt.endswith("="):
            raise DataError(f"task {self.name}: {prompt!r} is not a prompt of this task (it must end with '=').")
        scene = {}
        for item in prompt[:-1].split(" "):
            if len(item) != 2 or item[0] not in self.objects or item[1] not in self.colors or item[0] in scene:
                raise DataError(f"task {self.name}: {prompt!r} is not a prompt of this task (bad item {item!r}).")
            scene[item[0]] = item[1]
        return scene

    def answer(self, prompt: str) -> str:
        """The clean caption in the scene's order (``""`` for the blank prompt)."""
        scene = self.parse_scene(prompt)
        return "" if scene is None else ",".join(o + c for o, c in scene.items())

    def clause_verdicts(self, prompt: str, completion: str) -> list[bool]:
        """One flag per clause of ``completion``: True where the clause is hallucinated (names an
        object the scene lacks, gives a scene object a wrong colour, or is not an object-colour
        pair). With the blank prompt only malformed clauses count. An empty completion has none."""
        scene = self.parse_scene(prompt)
        text = completion.strip()
        if not text:
            return []
        flags = []
        for clause in text.split(","):
            ok = len(clause) == 2 and clause[0] in self.objects and clause[1] in self.colors
            if ok and scene is not None:
                ok = scene.get(clause[0]) == clause[1]
            flags.append(not ok)
        return flags

    def verify(self, prompt: str, completion: str) -> tuple[float, str]:
        """1.0 when the caption names every scene object once with its colour and nothing else."""
        flags = self.clause_verdicts(prompt, completion)
        clauses = completion.strip().split(",") if completion.strip() else []
        for clause, bad in zip(clauses, flags):
            if bad:
                return 0.0, f"hallucinated clause {clause!r}"
        scene = self.parse_scene(prompt)
        if scene is None:
            return (1.0, "correct") if clauses else (0.0, "empty caption")
        named = [c[0] for c in clauses]
        if len(named) != len(set(named)):
            return 0.0, "an object is named twice"
        missing = sorted(set(scene) - set(named))
        if missing:
            return 0.0, f"missing object(s) {''.join(missing)}"
        return 1.0, "correct"


def hallucination_rate(task: CaptionTask, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, float]:
    """``{"rate": hallucinated clauses / clauses, "clauses_per_caption", "object_recall"}`` over
    the captions (``object_recall``: the share of scene objects named with their colour)."""
    bad = total = hit = objects = 0
    for prompt, text in zip(prompts, completions, strict=True):
        flags = task.clause_verdicts(prompt, text)
        bad += sum(flags)
        total += len(flags)
        scene = task.parse_scene(prompt) or {}
        named = {c for c in text.strip().split(",") if c}
        hit += sum(1 for o, c in scene.items() if o + c in named)
        objects += len(scene)
    n = max(len(prompts), 1)
    return {"rate": bad / max(total, 1), "clauses_per_caption": total / n, "object_recall": hit / max(objects, 1)}


TASKS["captions"] = CaptionTask
