"""The embedded model's prompt vocabulary: its digits, styles, templates and what the eraser sees.

Plain Python (no torch), so that the command line can check a concept before it loads anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..errors import FadeInputError
from ..prompts import PromptSet, build_prompt_set

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


def default_prompt_set(
    concepts: Sequence[str], num_prompts: int = 48, seed: int = 0, synonyms: Mapping[str, Sequence[str]] | None = None
) -> PromptSet:
    """The embedded model's prompt pairs for digits or styles (see :func:`eraser_templates`)."""
    concepts = check_concepts(concepts)
    category = concept_kind(concepts[0])
    if synonyms is None:
        synonyms = {c: eraser_synonyms(c) for c in concepts}
    check_synonyms(synonyms)
    return build_prompt_set(
        concepts,
        category,
        synonyms=synonyms,
        neutral=eraser_neutral_words(concepts),
        templates=eraser_templates(category),
        num_prompts=num_prompts,
        seed=seed,
    )


def check_concepts(concepts: Sequence[str]) -> list[str]:
    """The concepts in the model's spelling (lower case); a clear error for one it does not know."""
    given = [c.strip() for c in concepts]
    if not given or any(not c for c in given):
        raise FadeInputError("the concept is empty; name a digit (zero .. nine) or a style (bold, thin, inverted, slanted)")
    seen: dict[str, str] = {}
    for concept in given:
        if concept.lower() in seen:
            raise FadeInputError(
                f"{seen[concept.lower()]!r} and {concept!r} name the same concept (names ignore case); name each concept once"
            )
        seen[concept.lower()] = concept
    concepts = list(seen)
    for concept in concepts:
        concept_kind(concept)
    return concepts


def named_concepts(text: str) -> set[str]:
    """The digits and style words (``plain`` included) that the model reads in a text."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    digits = {DIGIT_NAMES[d] for w in words for d, names in DIGIT_SYNONYMS.items() if w in names}
    return digits | {s for w in words for s, names in STYLE_SYNONYMS.items() if w in names}


def check_synonyms(synonyms: Mapping[str, Sequence[str]]) -> None:
    """A synonym must not name another digit or style: the eraser would erase that one too, and
    the neutral prompts (the other digits, or the plain style) would contain the concept."""
    for concept, words in synonyms.items():
        for word in words:
            others = sorted(named_concepts(word) - {concept})
            if others:
                usual = [w for w in _synonyms_of(concept) if w != concept]
                raise FadeInputError(
                    f"the synonym {word!r} given for {concept!r} names {' and '.join(others)} to the embedded model; "
                    f"give other names of {concept} only, such as {' or '.join(usual)}"
                )


def _synonyms_of(concept: str) -> tuple[str, ...]:
    if concept_kind(concept) == "object":
        return DIGIT_SYNONYMS[DIGIT_NAMES.index(concept)]
    return STYLE_SYNONYMS[concept]
