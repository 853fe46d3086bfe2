"""Tokenizers for the sequence engine: characters, two-digit chunks, and trained BPE vocabularies.

All three share one interface (:class:`Tokenizer`): ``encode(text, add_bos=False,
add_eos=False) -> list[int]``, ``decode(ids, skip_special=True) -> str``, ``vocab_size``,
``pad_id`` / ``bos_id`` / ``eos_id``, ``token(id) -> str``, ``char_spans(ids)`` and
``hf_tokenizer()`` (a ``transformers.PreTrainedTokenizerFast`` for ``save_pretrained``).

Decoding is the concatenation of the tokens' strings (no byte-level mapping, no inserted
spaces), so ``decode(encode(text)) == text`` for every text the vocabulary covers, and a
token's character span is the running sum of the lengths of the strings before it. These spans
are what cross-tokenizer alignment needs (teacher and student vocabularies compared on the same
characters, as in ULD, Boizard et al., 2024, arXiv:2402.12030).

* :class:`CharTokenizer`: one token per character of an alphabet (the procedural tasks);
* :class:`ChunkTokenizer`: runs of digits split into chunks of ``chunk`` digits from the left
  (``"12345" -> "12" "34" "5"``), every other character its own token; with the
  character tokenizer, the test pair of two different vocabularies over the same digits;
* :func:`train_bpe`: byte-pair encoding (Sennrich et al., 2016, arXiv:1508.07909) trained in
  memory with the ``tokenizers`` library on a list of texts (no download).

Special tokens (``<pad>``, ``<bos>``, ``<eos>``) take the ids 0, 1, 2 and decode to ``""`` unless
``skip_special=False``; their span is empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import ConfigError, DataError

__all__ = ["BPETokenizer", "CharTokenizer", "ChunkTokenizer", "Tokenizer", "train_bpe"]

SPECIALS = ("<pad>", "<bos>", "<eos>")


class Tokenizer:
    """Base class: a vocabulary ``id -> string`` with specials first; subclasses implement ``_split``."""

    def __init__(self, tokens: Sequence[str], specials: Sequence[str] = SPECIALS) -> None:
        specials = tuple(specials)
        if len(specials) != 3 or len(set(specials)) != 3:
            raise ConfigError(f"tokenizer: specials must be three distinct strings (pad, bos, eos), got {specials!r}.")
        vocab = list(specials) + [t for t in tokens if t not in specials]
        if len(set(vocab)) != len(vocab):
            raise ConfigError("tokenizer: the vocabulary has duplicate tokens.")
        self.specials = specials
        self.id_to_token = vocab
        self.token_to_id = {t: i for i, t in enumerate(vocab)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def token(self, i: int) -> str:
        return self.id_to_token[int(i)]

    def _split(self, text: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (optionally with ``<bos>`` first / ``<eos>`` last)."""
        ids = []
        for piece in self._split(text):
            if piece not in self.token_to_id:
                raise DataError(f"{type(self).__name__}: {piece!r} in {text[:40]!r} is not in the vocabulary.")
            ids.append(self.token_to_id[piece])
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The text of ``ids``: the tokens' strings concatenated (specials dropped unless asked)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise DataError(f"{type(self).__name__}: token id {i} outside [0, {self.vocab_size - 1}].")
            if i < 3 and skip_special:
                continue
            out.append(self.id_to_token[i])
        return "".join(out)

    def char_spans(self, ids: Iterable[int]) -> list[tuple[int, int]]:
        """``[(start, end)]`` character offsets of each token in ``decode(ids)`` (specials: empty)."""
        spans, pos = [], 0
        for i in ids:
            n = 0 if int(i) < 3 else len(self.id_to_token[int(i)])
            spans.append((pos, pos + n))
            pos += n
        return spans

    def _split_regex(self) -> str:
        """A regex whose matches are the pre-tokens (used by :meth:`hf_tokenizer`)."""
        raise NotImplementedError

    def hf_tokenizer(self):
        """A ``transformers.PreTrainedTokenizerFast`` with the same ids (WordLevel over the
        regex pieces; decoding fuses the pieces without spaces)."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as RawTokenizer

        raw = RawTokenizer(models.WordLevel(dict(self.token_to_id), unk_token=self.specials[0]))
        raw.pre_tokenizer = pre_tokenizers.Split(Regex(self._split_regex()), behavior="isolated")
        raw.decoder = decoders.Fuse()
        return _wrap(raw, self.specials)


def _wrap(raw, specials):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token=specials[0], bos_token=specials[1],
                                   eos_token=specials[2], clean_up_tokenization_spaces=False)


class CharTokenizer(Tokenizer):
    """One token per character of ``alphabet`` (ids 3..), after ``<pad>``, ``<bos>``, ``<eos>``.

    Example::

        tok = CharTokenizer("0123456789+=")
        tok.encode("12+3=", add_bos=True)   # [1, 4, 5, 13, 6, 14]
    """

    def __init__(self, alphabet: Iterable[str], specials: Sequence[str] = SPECIALS) -> None:
        chars = list(dict.fromkeys(alphabet))
        if not chars or any(len(c) != 1 for c in chars):
            raise ConfigError(f"CharTokenizer: alphabet must be a non-empty collection of single characters, got {chars[:10]!r}.")
        super().__init__(chars, specials)

    def _split(self, text: str) -> list[str]:
        return list(text)

    def _split_regex(self) -> str:
        return r"[\s\S]"


class ChunkTokenizer(Tokenizer):
    """Digit runs in chunks of ``chunk`` digits from the left, other characters one token each.

    The vocabulary holds every digit string of length 1..``chunk`` and the ``alphabet`` (other
    characters). ``ChunkTokenizer(2).encode("123+4")`` gives the tokens ``"12" "3" "+" "4"``.
    """

    def __init__(self, chunk: int = 2, alphabet: Iterable[str] = "+-=*:()[] ", specials: Sequence[str] = SPECIALS) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= 4:
            raise ConfigError(f"ChunkTokenizer: chunk must be an integer in [1, 4], got {chunk!r}.")
        self.chunk = chunk
        digits = [f"{i:0{n}d}" for n in range(1, chunk + 1) for i in range(10 ** n)]
        others = [c for c in dict.fromkeys(alphabet) if not c.isdigit()]
        super().__init__(digits + others, specials)

    def _split_regex(self) -> str:
        return rf"[0-9]{{1,{self.chunk}}}|[^0-9]"

    def _split(self, text: str) -> list[str]:
        return re.findall(rf"[0-9]{{1,{self.chunk}}}|[^0-9]", text, flags=re.DOTALL)


class BPETokenizer(Tokenizer):
    """A trained BPE vocabulary (see :func:`train_bpe`); the pieces are the model's tokens."""

    def __init__(self, raw) -> None:
        self.raw = raw
        vocab = raw.get_vocab()
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        super().__init__(tokens[3:], tokens[:3])
        if [vocab[s] for s in self.specials] != [0, 1, 2]:
            raise ConfigError("BPETokenizer: the special tokens must have ids 0, 1, 2.")

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        enc = self.raw.encode(text, add_special_tokens=False)
        if 0 in enc.ids and self.specials[0] not in text:
            raise DataError(f"BPETokenizer: {text[:40]!r} has characters outside the trained alphabet.")
        return ([self.bos_id] if add_bos else []) + list(enc.ids) + ([self.eos_id] if add_eos else [])

    def hf_tokenizer(self):
        from tokenizers import Tokenizer as RawTokenizer

        return _wrap(RawTokenizer.from_str(self.raw.to_str()), self.specials)


def train_bpe(texts: Iterable[str], vocab_size: int, *, specials: Sequence[str] = SPECIALS) -> BPETokenizer:
    """Train a BPE tokenizer in memory on ``texts`` (``tokenizers``; nothing is downloaded).

    No pre-tokenizer (merges may cross spaces; decode stays the plain concatenation), the
    initial alphabet is every character of ``texts``, an unknown character is an error at encode.
    """
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, trainers

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError("train_bpe: texts must be a non-empty list of strings.")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 4:
        raise ConfigError(f"train_bpe: vocab_size must be an integer >= 4, got {vocab_size!r}.")
    raw = RawTokenizer(models.BPE(unk_token=specials[0]))
    raw.decoder = decoders.Fuse()
    alphabet = sorted(set("".join(texts)))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=alphabet,
                                  show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(raw)
