"""Real handwritten digits and their rendering styles, for the embedded model (its prompt
vocabulary is in :mod:`.vocabulary`, re-exported here).

The images are scikit-learn's bundled copy of the UCI handwritten digits (1,797 real 8x8 scans).
They are split once, by a fixed seed, into three disjoint parts so that nothing the evaluator is
trained or tested on was ever seen by the generator:

- ``generator``: trains the text-to-image model;
- ``evaluator_train``: trains the evaluator that measures every figure;
- ``evaluator_test``: the evaluator's test set and the real reference for the FID-proxy.

Styles are deterministic transformations of the real images, so a "bold seven" is a real seven,
thickened; they play the part of the paper's art styles. Captions put them in contexts that do
not change the image (see :mod:`.vocabulary`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import kornia
import numpy as np
import torch

from ..errors import FadeInputError
from .vocabulary import (  # noqa: F401  (the vocabulary, as data.X, for the modules that render captions)
    CONTEXT_PHRASES,
    DIGIT_NAMES,
    DIGIT_SYNONYMS,
    DIGIT_TEMPLATES,
    ERASER_CONTEXTS,
    HELD_OUT_CONTEXTS,
    HELD_OUT_DIGIT_TEMPLATES,
    HELD_OUT_STYLED_TEMPLATES,
    STYLE_NAMES,
    STYLE_SYNONYMS,
    STYLED_TEMPLATES,
    PINNED_HELD_OUT_CONTEXTS,
    add_contexts,
    concept_kind,
    concept_names,
    eraser_neutral_words,
    eraser_synonyms,
    eraser_templates,
    held_out_context_prompts,
    held_out_synonyms,
    parse_prompt,
    with_context,
)

SPLIT_SEED = 20251127
SPLIT_FRACTIONS = {"generator": 0.6, "evaluator_train": 0.25, "evaluator_test": 0.15}


def load_real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float images in [0, 1], shape (N, 1, 8, 8), and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return images, torch.from_numpy(bunch.target.astype(np.int64))


def split_indices() -> dict[str, torch.Tensor]:
    """Stratified, seeded split of the digit indices into the three disjoint parts."""
    _, labels = load_real_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[int]] = {name: [] for name in SPLIT_FRACTIONS}
    for digit in range(10):
        idx = np.flatnonzero(labels.numpy() == digit)
        rng.shuffle(idx)
        n_gen = round(len(idx) * SPLIT_FRACTIONS["generator"])
        n_eval = round(len(idx) * SPLIT_FRACTIONS["evaluator_train"])
        parts["generator"] += idx[:n_gen].tolist()
        parts["evaluator_train"] += idx[n_gen : n_gen + n_eval].tolist()
        parts["evaluator_test"] += idx[n_gen + n_eval :].tolist()
    return {name: torch.tensor(sorted(idx)) for name, idx in parts.items()}


def real_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_real_digits()
    idx = split_indices()[name]
    return images[idx], labels[idx]


def apply_style(images: torch.Tensor, style: str) -> torch.Tensor:
    """Render images in [0, 1] of shape (N, 1, 8, 8) in one of STYLE_NAMES."""
    if style == "plain":
        return images
    if style == "bold":
        return (images * 1.8).clamp(0, 1)
    if style == "thin":
        # Keeps the stroke cores and drops their soft edges: at 8x8 an erosion would erase digits.
        return images.pow(3)
    if style == "inverted":
        return 1.0 - images
    if style == "slanted":
        shear = torch.tensor([[-0.25, 0.0]]).expand(images.shape[0], 2)
        return kornia.geometry.transform.shear(images, shear, align_corners=False).clamp(0, 1)
    raise FadeInputError(f"unknown style {style!r}; the embedded model knows {', '.join(STYLE_NAMES)}")


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the model's [-1, 1] pixel range."""
    return images * 2.0 - 1.0


def from_model_range(samples: torch.Tensor) -> torch.Tensor:
    return ((samples + 1.0) / 2.0).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Caption:
    text: str
    digit: int
    style: str


def random_caption(
    digit: int, style: str, rng: random.Random, contexts: tuple[str, ...] = CONTEXT_PHRASES
) -> Caption:
    """One caption for a (digit, style) pair, drawn over templates, synonyms and ``contexts``
    (by default every context phrase: the base model is trained on all of them)."""
    digit_word = rng.choice(DIGIT_SYNONYMS[digit])
    if style == "plain" and rng.random() < 0.6:
        text = rng.choice(DIGIT_TEMPLATES).format(d=digit_word)
    else:
        text = rng.choice(STYLED_TEMPLATES).format(d=digit_word, s=rng.choice(STYLE_SYNONYMS[style]))
    return Caption(add_contexts(text, rng, contexts) if contexts else text, digit, style)
