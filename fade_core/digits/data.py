"""Real handwritten digits, rendering styles and the prompt vocabulary of the embedded model.

The images are scikit-learn's bundled copy of the UCI handwritten digits (1,797 real 8x8 scans).
They are split once, by a fixed seed, into three disjoint parts so that nothing the evaluator is
trained or tested on was ever seen by the generator:

- ``generator``: trains the text-to-image model;
- ``evaluator_train``: trains the evaluator that measures every figure;
- ``evaluator_test``: the evaluator's test set and the real reference for the FID-proxy.

Styles are deterministic transformations of the real images, so a "bold seven" is a real seven,
thickened; they play the part of the paper's art styles.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import kornia
import numpy as np
import torch

from ..errors import FadeInputError

SPLIT_SEED = 20251127
SPLIT_FRACTIONS = {"generator": 0.6, "evaluator_train": 0.25, "evaluator_test": 0.15}

DIGIT_SYNONYMS: dict[int, tuple[str, ...]] = {
    0: ("zero", "0", "nought"),
    1: ("one", "1", "i"),
    2: ("two", "2", "ii"),
    3: ("three", "3", "iii"),
    4: ("four", "4", "iv"),
    5: ("five", "5", "v"),
    6: ("six", "6", "vi"),
    7: ("seven", "7", "vii"),
    8: ("eight", "8", "viii"),
    9: ("nine", "9", "ix"),
}
DIGIT_NAMES = tuple(words[0] for words in DIGIT_SYNONYMS.values())

# "plain" is the absence of a style; its words let a prompt say so explicitly.
STYLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "regular", "normal"),
    "bold": ("bold", "thick", "heavy"),
    "thin": ("thin", "light", "fine"),
    "inverted": ("inverted", "negative", "reversed"),
    "slanted": ("slanted", "italic", "oblique"),
}
STYLE_NAMES = tuple(STYLE_SYNONYMS)

# Templates the generator is trained on. "{d}" is a digit word, "{s}" a style word.
DIGIT_TEMPLATES = (
    "a handwritten {d}",
    "the digit {d}",
    "number {d}",
    "a picture of the number {d}",
    "{d}",
    "an image of a {d}",
    "a scanned {d}",
    "the numeral {d}",
    "a drawing of a {d}",
    "a {d} written by hand",
    "digit {d} on paper",
    "a sketch of the number {d}",
)
STYLED_TEMPLATES = (
    "a {s} {d}",
    "the digit {d}, {s}",
    "a {s} handwritten {d}",
    "number {d} in {s} style",
    "{s} {d}",
    "a {d} drawn in {s} strokes",
    "an image of a {s} {d}",
    "the {s} numeral {d}",
)


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


def random_caption(digit: int, style: str, rng: random.Random) -> Caption:
    """One training caption for a (digit, style) pair, drawn over templates and synonyms."""
    digit_word = rng.choice(DIGIT_SYNONYMS[digit])
    if style == "plain" and rng.random() < 0.6:
        text = rng.choice(DIGIT_TEMPLATES).format(d=digit_word)
    else:
        text = rng.choice(STYLED_TEMPLATES).format(d=digit_word, s=rng.choice(STYLE_SYNONYMS[style]))
    return Caption(text, digit, style)


# --- What the eraser sees, and what it never sees -------------------------------------------------
# The base model is trained on every template and synonym above. The eraser's prompt sets use only
# part of them; the rest are paraphrases that measure whether an erasure generalises.
HELD_OUT_DIGIT_TEMPLATES = ("a {d} written by hand", "digit {d} on paper", "a sketch of the number {d}")
HELD_OUT_STYLED_TEMPLATES = ("an image of a {s} {d}", "the {s} numeral {d}")


def concept_kind(concept: str) -> str:
    """'object' for a digit name, 'style' for a style name; a clear error for anything else."""
    if concept in DIGIT_NAMES:
        return "object"
    if concept in STYLE_NAMES and concept != "plain":
        return "style"
    raise FadeInputError(
        f"the embedded model does not know {concept!r}; its concepts are the digits "
        f"{', '.join(DIGIT_NAMES)} and the styles {', '.join(s for s in STYLE_NAMES if s != 'plain')}"
    )


def eraser_synonyms(concept: str) -> list[str]:
    """Synonyms given to the eraser by default: the numeral for a digit, the second word for a style.
    The third synonym of each (roman numerals; 'heavy', 'fine', ...) stays held out."""
    if concept_kind(concept) == "object":
        return [DIGIT_SYNONYMS[DIGIT_NAMES.index(concept)][1]]
    return [STYLE_SYNONYMS[concept][1]]


def held_out_synonyms(concept: str) -> list[str]:
    if concept_kind(concept) == "object":
        return [DIGIT_SYNONYMS[DIGIT_NAMES.index(concept)][2]]
    return [STYLE_SYNONYMS[concept][2]]


def eraser_templates(category: str) -> tuple[str, ...]:
    """Templates with one "{}" slot for the concept, in many contexts (styles for digits, digits for
    styles), drawn only from the templates the eraser may see."""
    digit_templates = [t for t in DIGIT_TEMPLATES if t not in HELD_OUT_DIGIT_TEMPLATES]
    styled_templates = [t for t in STYLED_TEMPLATES if t not in HELD_OUT_STYLED_TEMPLATES]
    if category == "object":
        plain = [t.format(d="{}") for t in digit_templates]
        styled = [t.format(d="{}", s=words[0]) for t in styled_templates for words in STYLE_SYNONYMS.values()]
        return tuple(plain + styled)
    if category == "style":
        return tuple(t.format(d=digit, s="{}") for t in styled_templates for digit in DIGIT_NAMES)
    raise FadeInputError(f"the embedded model has no {category!r} concepts; use object (digits) or style")


def eraser_neutral_words(concepts: list[str]) -> dict[str, list[str]]:
    """Neutral replacements: the digits not being erased, or the explicit 'no style' words."""
    kinds = {concept_kind(c) for c in concepts}
    if kinds == {"object"}:
        others = [d for d in DIGIT_NAMES if d not in concepts]
        return {c: others for c in concepts}
    if kinds == {"style"}:
        return {c: list(STYLE_SYNONYMS["plain"]) for c in concepts}
    raise FadeInputError("erase digits and styles in separate runs: one prompt set has one category")


def parse_prompt(prompt: str) -> tuple[int | None, str | None]:
    """The digit and the style a prompt names, as the embedded model's vocabulary reads it."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    digit = next((d for w in words for d, names in DIGIT_SYNONYMS.items() if w in names), None)
    style = next((s for w in words for s, names in STYLE_SYNONYMS.items() if w in names), None)
    if style is None and digit is not None:
        style = "plain"
    return digit, style
