"""Prompt/completion data for the sequence engine: JSONL files, tokenisation, and the collate.

File format: TRL's "prompt-completion" standard format, one JSON object per line,
``{"prompt": "...", "completion": "..."}`` (the keys are configurable). Blank lines are skipped.
TRL's conversational form (lists of ``{"role", "content"}`` messages) needs a chat template
and is not read here: such a line is a :class:`~distillery.errors.DataError`.

:func:`collate` turns tokenised ``(prompt_ids, completion_ids)`` pairs into a
:class:`SequenceBatch` (the Hugging Face convention for causal-LM labels):

* ``input_ids``: ``(B, L)``, prompt then completion tokens, padded with ``pad_id`` on the right
  (training) or the left (``padding_side="left"``, as for generation);
* ``labels``: ``(B, L)``, ``labels[b, t] = input_ids[b, t]`` on completion tokens and ``-100``
  on prompt tokens and padding: the loss is taken on completion tokens only. The logits at
  position ``t - 1`` predict ``labels[:, t]`` (:func:`completion_token_nll` does the shift);
* ``attention_mask``: ``(B, L)``, ``1`` on tokens, ``0`` on padding;
* ``position_ids``: ``(B, L)``, positions from the mask (what the models of
  :mod:`distillery.sequence.models` compute themselves; given for other consumers).

Packing (``pack=True``): examples are placed greedily, in order, into rows of ``max_length``
tokens (first fit); then ``attention_mask`` holds the *segment id* ``1, 2, ...`` of each
example in its row (``0`` on padding), every segment's positions restart at ``0``, and the LMs of
:mod:`~distillery.sequence.models` let a token attend only to earlier tokens of its own segment
(a block-diagonal causal mask). A packed batch therefore gives the same per-token losses as the
unpacked one (tested). The first token of every segment gets the label ``-100`` (nothing before
it in its segment predicts it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError
from .models import positions_from_mask

__all__ = [
    "IGNORE_INDEX",
    "PromptCompletion",
    "SequenceBatch",
    "collate",
    "completion_token_nll",
    "read_prompt_completion_jsonl",
    "tokenize_examples",
]

#: Label of tokens without a loss (prompt, padding), the value ``F.cross_entropy`` ignores.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptCompletion:
    """One example: the ``prompt`` text and the ``completion`` text to learn."""

    prompt: str
    completion: str


def read_prompt_completion_jsonl(path, *, prompt_key: str = "prompt", completion_key: str = "completion"
                                 ) -> list[PromptCompletion]:
    """Read a JSONL file of ``{prompt_key: str, completion_key: str}`` objects.

    A missing file, a line that is not JSON or not an object, a missing or non-string field and
    an empty completion raise :class:`~distillery.errors.DataError` naming the file and line.
    An empty prompt is allowed (unconditional generation); an empty file is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such prompt/completion JSONL file.")
    out: list[PromptCompletion] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object with {prompt_key!r} and {completion_key!r}, "
                                f"got {type(obj).__name__}.")
            values = []
            for key in (prompt_key, completion_key):
                if key not in obj:
                    raise DataError(f"{where}: missing field {key!r} (fields present: {sorted(obj)}).")
                if not isinstance(obj[key], str):
                    raise DataError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__} "
                                    "(conversational message lists are not supported).")
                values.append(obj[key])
            if not values[1]:
                raise DataError(f"{where}: empty completion in field {completion_key!r}.")
            out.append(PromptCompletion(*values))
    if not out:
        raise DataError(f"{path}: no examples (the file is empty).")
    return out


def tokenize_examples(examples: Iterable[PromptCompletion], tokenizer, *, add_bos: bool = True,
                      add_eos: bool = True) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, completion_ids)`` per example: ``<bos>`` before the prompt and ``<eos>`` after
    the completion (as asked), each text encoded on its own so the boundary is exact."""
    return [(tokenizer.encode(ex.prompt, add_bos=add_bos), tokenizer.encode(ex.completion, add_eos=add_eos))
            for ex in examples]


@dataclass
class SequenceBatch:
    """A collated batch (see the module docstring): ``input_ids``, ``attention_mask``, ``labels``,
    ``position_ids``, all int64 ``(B, L)``; ``packed`` says whether the mask holds segment ids."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    position_ids: Tensor
    packed: bool = False

    @property
    def completion_mask(self) -> Tensor:
        """Bool ``(B, L)``: the tokens that carry a loss."""
        return self.labels != IGNORE_INDEX

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                             self.position_ids.to(device), self.packed)


def collate(examples: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_id: int, padding_side: str = "right",
            max_length: int | None = None, pack: bool = False) -> SequenceBatch:
    """Collate ``(prompt_ids, completion_ids)`` pairs into a :class:`SequenceBatch`.

    ``max_length``: the row length for packing (required with ``pack=True``), otherwise a limit
    (an example longer than it is a DataError naming its index; nothing is truncated silently).
    Without packing, rows are as long as the longest example.
    """
    if padding_side not in ("right", "left"):
        raise ConfigError(f"collate: padding_side must be 'right' or 'left', got {padding_side!r}.")
    if not examples:
        raise DataError("collate: no examples.")
    if pack and max_length is None:
        raise ConfigError("collate: pack=True needs max_length (the length of a packed row).")
    seqs = []
    for i, (prompt, completion) in enumerate(examples):
        if len(completion) == 0:
            raise DataError(f"collate: example {i} has an empty completion.")
        ids = list(prompt) + list(completion)
        if max_length is not None and len(ids) > max_length:
            raise DataError(f"collate: example {i} has {len(ids)} tokens, more than max_length={max_length}.")
        labels = [IGNORE_INDEX] * len(prompt) + list(completion)
        labels[0] = IGNORE_INDEX
        seqs.append((ids, labels))
    rows: list[list[tuple[list[int], list[int]]]] = [[s] for s in seqs]
    if pack:
        rows = []
        for s in seqs:
            for row in rows:
                if sum(len(x[0]) for x in row) + len(s[0]) <= max_length:
                    row.append(s)
                    break
            else:
                rows.append([s])
    length = max_length if pack else max(sum(len(x[0]) for x in row) for row in rows)
    b = len(rows)
    input_ids = torch.full((b, length), int(pad_id), dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    for r, row in enumerate(rows):
        ids = [t for x in row for t in x[0]]
        lab = [t for x in row for t in x[1]]
        seg = [k + 1 for k, x in enumerate(row) for _ in x[0]]
        start = length - len(ids) if padding_side == "left" else 0
        input_ids[r, start:start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[r, start:start + len(ids)] = torch.tensor(lab, dtype=torch.long)
        mask[r, start:start + len(ids)] = torch.tensor(seg if pack else [1] * len(ids), dtype=torch.long)
    return SequenceBatch(input_ids, mask, labels, positions_from_mask(mask), packed=pack)


def completion_token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token negative log-likelihood ``(B, L)`` of ``labels`` under next-token ``logits (B, L, V)``.

    ``nll[b, t] = -log softmax(logits[b, t - 1])[labels[b, t]]`` where ``labels[b, t] != -100``,
    ``0`` elsewhere (and at ``t = 0``). Sum over the completion mask and divide by its count for
    the usual mean loss.
    """
    if logits.ndim != 3 or logits.shape[:2] != labels.shape:
        raise ShapeError(f"completion_token_nll: logits (B, L, V) and labels (B, L) must match, got "
                         f"{list(logits.shape)} and {list(labels.shape)}.")
    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float() if logits.dtype in (torch.float16, torch.bfloat16)
                          else logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    return F.pad(nll, (1, 0))
