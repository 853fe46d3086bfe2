"""Self-revision on a verifiable task: a reviser prompt built from a response and its binary reward.

SD-Zero (He, Kaur, Bhaskar, Yang, Liu, Ri, Fowl, Panigrahi, Chen & Arora, 2026, "Self-Distillation
Zero: Self-Revision Turns Binary Rewards into Dense Supervision", arXiv:2604.12002) trains one
model in two roles: a *generator* answers the prompt; a *reviser* reads the prompt, the
generator's response and its binary reward (never the reference answer) and writes an improved
response. This module holds the two task-level parts the sequence engine needs for that:

* :class:`RevisionAdditionTask` (``addition_revision``; in a config
  ``task: {name: "distillery.sequence.tasks.revision:RevisionAdditionTask"}``): multi-digit addition
  whose examples are, with probability ``revise``, *reviser* examples
  ``"a+b=" + attempt + mark -> sum`` (``mark`` ``Y`` when the attempt is right, ``N`` when it is
  wrong), else ordinary generator examples ``"a+b=" -> sum``. Wrong attempts are the sum with
  ``flips`` digits changed (half of them by +-1, a carry slip; half to another random digit).
  It teaches a base model both roles by plain fine-tuning (the miniature's stand-in for the
  paper's self-revision training phase [inferred: the paper builds that phase from the model's
  own revisions; here the attempts are synthetic corruptions]). With ``revise=0`` it samples
  generator prompts only, with the same alphabet (hence the same token ids) as with ``revise>0``.
* :func:`reviser_prompt`: the privileged prompt function
  (``teacher.privileged.prompt: distillery.sequence.tasks.revision:reviser_prompt``):
  ``prompt + response + mark(reward)``. The engine's teacher then scores the generator's own
  response tokens after that text, i.e. ``p_reviser(y_t | x, y, r, y_<t)``, the dense targets
  SD-Zero distils into ``p_generator(y_t | x, y_<t)``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import ConfigError, DataError
from . import TASKS, AdditionTask, Example

__all__ = ["MARK_RIGHT", "MARK_WRONG", "RevisionAdditionTask", "corrupt_answer", "mark_of", "reviser_prompt"]

MARK_RIGHT = "Y"
MARK_WRONG = "N"


def mark_of(reward: float | None) -> str:
    """``Y`` for reward 1 (a verified-correct response), ``N`` otherwise (the binary reward as text)."""
    if reward is None:
        raise ConfigError("teacher.privileged.prompt reviser_prompt needs the verifier's reward of the response: use it "
                          "with mode on_policy (the supervised modes have no reward).")
    return MARK_RIGHT if float(reward) >= 1.0 else MARK_WRONG


def reviser_prompt(example: Example, completion: str, reward: float | None, feedback: str | None) -> str:
    """SD-Zero's reviser context: the prompt, the generator's response and its reward mark
    (``"123+456=" + "975" + "Y"``; the reference answer and the feedback text are not shown)."""
    return example.prompt + completion.strip() + mark_of(reward)


def corrupt_answer(answer: str, flips: int, generator: torch.Generator | None = None) -> str:
    """``answer`` with ``flips`` distinct digit positions changed (each to a different digit:
    +-1 mod 10 with probability 1/2, else uniform over the other nine)."""
    digits = list(answer)
    flips = min(int(flips), len(digits))
    order = torch.randperm(len(digits), generator=generator).tolist()[:flips]
    for i in order:
        d = int(digits[i])
        if int(torch.randint(2, (1,), generator=generator)) == 0:
            step = 1 if int(torch.randint(2, (1,), generator=generator)) == 0 else 9
        else:
            step = 1 + int(torch.randint(9, (1,), generator=generator))
        digits[i] = str((d + step) % 10)
    return "".join(digits)


class RevisionAdditionTask(AdditionTask):
    """Addition with generator and reviser examples; see the module docstring.

    ``digits``, ``reverse``: as :class:`~distillery.sequence.tasks.AdditionTask`;
    ``revise``: the share of reviser examples; ``correct_share``: among reviser examples, the
    share whose attempt is right (mark ``Y``); ``flips``: wrong digits of a wrong attempt.
    """

    name = "addition_revision"
    alphabet = AdditionTask.alphabet + MARK_WRONG + MARK_RIGHT

    def __init__(self, digits: int = 3, reverse: bool = True, revise: float = 0.5, correct_share: float = 0.5,
                 flips: int = 1) -> None:
        super().__init__(digits, reverse)
        for key, value in (("revise", revise), ("correct_share", correct_share)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"task {self.name}: {key} must be a number in [0, 1], got {value!r}.")
        if isinstance(flips, bool) or not isinstance(flips, int) or flips < 1:
            raise ConfigError(f"task {self.name}: flips must be an integer >= 1, got {flips!r}.")
        self.revise, self.correct_share, self.flips = float(revise), float(correct_share), flips

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[Example]:
        out = super().sample(n, generator)
        if self.revise <= 0.0:
            return out
        mixed = []
        for ex in out:
            if float(torch.rand((), generator=generator)) < self.revise:
                right = float(torch.rand((), generator=generator)) < self.correct_share
                attempt = ex.answer if right else corrupt_answer(ex.answer, self.flips, generator)
                mixed.append(Example(ex.prompt + attempt + mark_of(1.0 if right else 0.0), ex.answer))
            else:
                mixed.append(ex)
        return mixed

    def split(self, prompt: str) -> tuple[str, str | None, str | None]:
        """``(question, attempt, mark)`` of a prompt (``attempt``, ``mark`` None for a generator prompt)."""
        m = re.fullmatch(r"(\d+\+\d+=)(.*)([NY])", prompt, flags=re.DOTALL)
        if m is not None:
            return m.group(1), m.group(2), m.group(3)
        return self._parse(r"(\d+\+\d+=)", prompt).group(1), None, None

    def answer(self, prompt: str) -> str:
        try:
            question, _, _ = self.split(prompt)
        except DataError:
            raise DataError(f"task {self.name}: {prompt!r} is neither 'a+b=' nor 'a+b=<attempt>N|Y'.") from None
        return super().answer(question)


TASKS.setdefault(RevisionAdditionTask.name, RevisionAdditionTask)

#: The task's config name, usable before this module is imported.
TASK_KIND = f"{__name__}:RevisionAdditionTask"
#: The reviser prompt's config name.
REVISER_PROMPT = f"{__name__}:reviser_prompt"


def task_spec(**params: Any) -> dict[str, Any]:
    """``{"name": TASK_KIND, "params": params}``: a config's ``data.task``."""
    return {"name": TASK_KIND, "params": dict(params)}
