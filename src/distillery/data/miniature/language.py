"""A synthetic grammar and a toy "vision-language" task on digits (for LinguDistill, #40).

Language data: windows of a token stream of sentences from a small probabilistic grammar
with subject-verb number agreement across optional adjectives and prepositional phrases
("the small cats near a robot chase every bird ."). Multimodal data: an 8x8 digit image
(64 standardised pixels, the "visual features") followed by a caption that names it
("<bos> this digit is seven ."); the new input type is the image.

Every sample is one float vector ``[1 + 64 + L]`` (:func:`pack_multimodal`):
``[has_image, 64 image features (zeros without an image), L token ids]``. Labels: for a
language window, the token that follows it (next-token prediction of the window's last
position; a causal LM's ``logits`` output); ``-1`` for captions, whose targets are their
own shifted tokens (the models' ``targets`` signal).

Dataset ``grammar_vlm`` (``mode``: ``language``, ``vlm`` or ``mixture``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count
from ..uci_digits import digits

__all__ = [
    "ANSWER_POSITION",
    "BOS",
    "DIGIT_WORDS",
    "IMAGE_FEATURES",
    "PAD",
    "VOCAB",
    "grammar_vlm",
    "pack_multimodal",
    "sample_sentence",
    "unpack_multimodal",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DET = {"sg": ("a", "every", "the"), "pl": ("some", "many", "the")}
_ADJ = ("big", "small", "red", "old", "quick")
_NOUN = {"sg": ("cat", "dog", "bird", "child", "robot"), "pl": ("cats", "dogs", "birds", "children", "robots")}
_VERB = {"sg": ("sees", "likes", "finds", "chases"), "pl": ("see", "like", "find", "chase")}
_INTRANS = {"sg": ("sleeps", "runs"), "pl": ("sleep", "run")}
_PREP = ("near", "under")
_TEMPLATES = (("this", "digit", "is"), ("the", "picture", "shows"), ("the", "image", "is"))

VOCAB: tuple[str, ...] = tuple(dict.fromkeys(
    ("<pad>", "<bos>", ".")
    + _DET["sg"] + _DET["pl"] + _ADJ + _NOUN["sg"] + _NOUN["pl"] + _VERB["sg"] + _VERB["pl"]
    + _INTRANS["sg"] + _INTRANS["pl"] + _PREP + tuple(w for t in _TEMPLATES for w in t) + DIGIT_WORDS
))
TOKEN = {w: i for i, w in enumerate(VOCAB)}
PAD, BOS, DOT = TOKEN["<pad>"], TOKEN["<bos>"], TOKEN["."]
IMAGE_FEATURES = 64
#: position of the digit word in a caption: <bos> w1 w2 w3 DIGIT .
ANSWER_POSITION = 4


def pack_multimodal(has_image: torch.Tensor, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[B]``, ``[B, F]``, int ``[B, L]`` -> float ``[B, 1 + F + L]``."""
    return torch.cat([has_image.float()[:, None], features.float(), tokens.float()], dim=1)


def unpack_multimodal(x: torch.Tensor, features: int = IMAGE_FEATURES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float ``[B, 1 + F + L]`` -> ``(has_image bool [B], features [B, F], tokens int64 [B, L])``."""
    return x[:, 0] > 0.5, x[:, 1:1 + features], x[:, 1 + features:].round().long()


def _np(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _noun_phrase(rng: np.random.Generator, num: str, allow_pp: bool) -> list[str]:
    words = [_np(rng, _DET[num])]
    if rng.random() < 0.5:
        words.append(_np(rng, _ADJ))
    words.append(_np(rng, _NOUN[num]))
    if allow_pp and rng.random() < 0.3:
        words += [_np(rng, _PREP)] + _noun_phrase(rng, _np(rng, ("sg", "pl")), False)
    return words


def sample_sentence(rng: np.random.Generator) -> list[str]:
    """One sentence: NP(num) VP(num) '.', the verb agreeing with the subject's number."""
    num = _np(rng, ("sg", "pl"))
    words = _noun_phrase(rng, num, True)
    if rng.random() < 0.6:
        words += [_np(rng, _VERB[num])] + _noun_phrase(rng, _np(rng, ("sg", "pl")), True)
    else:
        words.append(_np(rng, _INTRANS[num]))
    return words + ["."]


def _language(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.empty((n, seq_len + 1), dtype=np.int64)
    for i in range(n):
        words = ["<bos>"]
        while len(words) < seq_len + 1:
            words += sample_sentence(rng)
        tokens[i] = [TOKEN[w] for w in words[: seq_len + 1]]
    return tokens[:, :seq_len], tokens[:, seq_len]


def _captions(n: int, seq_len: int, pool_x: np.ndarray, pool_y: np.ndarray, rng: np.random.Generator):
    pick = rng.integers(0, len(pool_y), size=n)
    tokens = np.full((n, seq_len), PAD, dtype=np.int64)
    for i, j in enumerate(pick):
        words = ["<bos>", *_TEMPLATES[int(rng.integers(len(_TEMPLATES)))], DIGIT_WORDS[int(pool_y[j])], "."]
        tokens[i, : len(words)] = [TOKEN[w] for w in words]
    return pool_x[pick], tokens


@DATASETS.register("grammar_vlm")
def grammar_vlm(
    mode: str = "mixture",
    n_train: int = 4000,
    n_test: int = 1000,
    seq_len: int = 24,
    language_fraction: float = 0.5,
    seed: int = 0,
) -> DataSplits:
    """Language windows and/or digit captions packed as ``[1 + 64 + seq_len]`` floats.

    ``mode``: ``"language"`` (grammar windows only), ``"vlm"`` (captions of digit images
    only) or ``"mixture"`` (a ``language_fraction`` of windows, the rest captions, shuffled).
    ``num_classes`` is the vocabulary size. Captions use the digits train images for the
    train split and the held-out ones for the test split.
    """
    if mode not in ("language", "vlm", "mixture"):
        raise ConfigError(f"grammar_vlm: mode must be 'language', 'vlm' or 'mixture', got {mode!r}.")
    n_train, n_test = _check_count(n_train, "n_train", 1), _check_count(n_test, "n_test", 1)
    seq_len = _check_count(seq_len, "seq_len", ANSWER_POSITION + 2)
    if not 0.0 <= float(language_fraction) <= 1.0:
        raise ConfigError(f"grammar_vlm: language_fraction must be in [0, 1], got {language_fraction!r}.")
    frac = {"language": 1.0, "vlm": 0.0}.get(mode, float(language_fraction))
    base = digits()
    rng = np.random.default_rng(seed)

    def split(n: int, pool) -> ArrayDataset:
        n_lang = round(frac * n)
        lang_tokens, lang_next = _language(n_lang, seq_len, rng)
        img, cap_tokens = _captions(n - n_lang, seq_len, *pool, rng)
        x = np.zeros((n, 1 + IMAGE_FEATURES + seq_len), dtype=np.float32)
        x[:n_lang, 1 + IMAGE_FEATURES:] = lang_tokens
        x[n_lang:, 0] = 1.0
        x[n_lang:, 1:1 + IMAGE_FEATURES] = img
        x[n_lang:, 1 + IMAGE_FEATURES:] = cap_tokens
        y = np.concatenate([lang_next, np.full(n - n_lang, -1, dtype=np.int64)])
        order = rng.permutation(n)
        return ArrayDataset(x[order], y[order])

    pool_tr = base.train.x.numpy().reshape(len(base.train), 64), base.train.y.numpy()
    pool_te = base.test.x.numpy().reshape(len(base.test), 64), base.test.y.numpy()
    return DataSplits(
        train=split(n_train, pool_tr),
        test=split(n_test, pool_te),
        unlabeled=None,
        num_classes=len(VOCAB),
        input_shape=(1 + IMAGE_FEATURES + seq_len,),
        name=f"grammar_vlm[{mode}]",
        class_names=VOCAB,
        info={"mode": mode, "seq_len": seq_len, "language_fraction": frac, "seed": seed},
    )
