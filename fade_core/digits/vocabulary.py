"""The embedded model's prompt vocabulary: its digits, styles, templates and what the eraser sees.

Plain Python (no torch), so that the command line can check a concept before it loads anything.

Captions put the digit in contexts that do not change the image ("on a napkin", "black and white",
"with a pencil"), as people type them into a real text-to-image model: the base model learns every
context word, and the eraser sees only part of the contexts (see "What the eraser sees" below).
"""

from __future__ import annotations

import random
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


# Context phrases: what people add around the subject of a prompt. None of them names a digit or a
# style (no number words, numerals, roman numerals or style synonyms), so the image a caption asks
# for is the same with or without its contexts: the real scan in its style.
CONTEXT_PHRASES: tuple[str, ...] = (
    # surfaces and materials
    "on a napkin", "on lined paper", "on graph paper", "on a chalkboard", "on a whiteboard",
    "on a sticky note", "on an envelope", "on a crumpled receipt", "on brown cardboard", "on a paper bag",
    "on a brick wall", "on wooden planks", "carved in granite", "on a concrete sidewalk", "on the back of a postcard",
    "on a yellow legal pad", "on tracing paper", "on old parchment", "on a torn page", "on a wrinkled sheet",
    "on stretched canvas", "in a leather notebook", "on a coffee cup", "on a fogged car window", "traced in the sand",
    "in fresh snow", "on a bathroom mirror", "on a slate tile", "on a cereal box", "on a plaster ceiling",
    "on white paper", "on a school desk", "on a pizza box", "stitched on a pillow", "on a marble floor",
    "etched into glass", "on a metal sign", "on a plastic ruler", "on a banana peel", "on a dusty shelf",
    # tools and media
    "with a pencil", "with a ballpoint pen", "with a fountain pen", "with a felt marker", "with white chalk",
    "with a wax crayon", "in charcoal", "with a paintbrush", "in blue ink", "with a feather quill",
    "with a neon highlighter", "in red lipstick", "with a twig", "with a fingertip", "with spray paint",
    "in watercolor", "in soft pastels", "with a stylus on a tablet", "in graphite", "with a laser printer",
    "typed on a typewriter", "with a rubber stamp", "in acrylic paint", "with glitter glue", "in toothpaste",
    # colours and tones
    "black and white", "in dark blue", "in emerald green", "purple", "golden", "silver",
    "bright orange", "pastel pink", "chocolate brown", "grey", "turquoise", "crimson",
    "beige and cream", "navy", "violet", "teal", "ivory", "scarlet", "amber", "maroon", "olive",
    "monochrome", "sepia toned", "in vivid colors", "muted tones",
    # photography
    "a photo", "high resolution", "low resolution", "sharp focus", "soft focus",
    "close-up", "macro shot", "film grain", "overexposed", "underexposed",
    "vintage photograph", "polaroid snapshot", "dslr camera", "studio lighting", "natural daylight",
    "long exposure", "wide angle lens", "top view", "seen from above", "award winning photo",
    "stock photo", "blurry", "grainy", "photocopy", "screenshot", "compressed jpeg",
    "highly detailed", "cinematic", "shallow depth of field", "flash photography",
    # drawing and craft words
    "line art", "a doodle", "sketchbook page", "an illustration", "calligraphy",
    "hand lettering", "vector graphic", "clip art", "cartoon", "minimalist",
    "flat design", "an engraving", "woodcut print", "copper etching", "stencil",
    "graffiti", "tattoo design", "embroidery", "cross stitch", "mosaic tiles",
    "origami", "pixel art", "neon sign", "chalk art", "ink wash",
    # places
    "in a classroom", "at the office", "in a library", "in a kitchen", "at the train station",
    "in a museum", "at a bakery", "in the garden", "at the beach", "in a hospital",
    "in the desert", "in a forest", "on a farm", "downtown", "at school",
    "in the attic", "in a laboratory", "at a cafe", "in a bank", "in a factory",
    "on a spaceship", "under the sea", "in a castle", "at the airport", "in a prison cell",
    # adjectives and manner
    "beautiful", "tiny", "huge", "old", "brand new",
    "messy", "neat", "careful", "quick", "elegant",
    "clumsy", "childish", "professional", "ancient", "modern",
    "famous", "simple", "perfect", "ugly", "lovely",
    "scribbled in a hurry", "very carefully", "by a child", "by a doctor", "by an artist",
    # time and weather
    "at night", "at dawn", "in the rain", "on a sunny day", "in winter",
    "during summer", "on a foggy morning", "at sunset", "in autumn", "at midnight",
    # purposes and objects
    "for homework", "on a birthday card", "on a price tag", "on a house plate", "on a football jersey",
    "on a lottery ticket", "on a calendar", "on a clock face", "on a license plate", "on a math test",
    "on a shopping list", "on a bus ticket", "on a wedding invitation", "on a treasure map", "on a medicine bottle",
)

# Where a context goes: after the caption or before it, with a comma, a colon, brackets, a full
# stop, a dash or nothing, so that word order and punctuation vary as they do in typed prompts.
CONTEXT_PLACEMENTS = ("{t}, {c}", "{t} {c}", "{c}, {t}", "{c}: {t}", "{t} ({c})", "{t}. {c}", "{t} - {c}")
CAPTION_CONTEXT_PROBABILITY = 0.75  # captions with at least one context ...
CAPTION_SECOND_CONTEXT_PROBABILITY = 0.25  # ... of which this share have a second one


def with_context(text: str, context: str, placement: str) -> str:
    return placement.format(t=text, c=context)


def add_contexts(text: str, rng: random.Random, contexts: tuple[str, ...]) -> str:
    """A caption with zero, one or two contexts around it, as the base model is trained on."""
    if rng.random() >= CAPTION_CONTEXT_PROBABILITY:
        return text
    count = 2 if rng.random() < CAPTION_SECOND_CONTEXT_PROBABILITY else 1
    for context in rng.sample(contexts, count):
        text = with_context(text, context, rng.choice(CONTEXT_PLACEMENTS))
    return text


# --- What the eraser sees, and what it never sees -------------------------------------------------
# The base model is trained on every template, synonym and context above. The eraser's prompt sets
# use only part of them; the rest measure whether an erasure generalises to what users type:
# - templates: three plain and two styled templates are held out (paraphrases);
# - synonyms: the third name of each concept (roman numerals; "heavy", "fine", ...) is held out;
# - contexts: 40 % of the context phrases (88 of 220), drawn by a seeded shuffle, are held out.
#   The three contexts that brought an erased digit back on the first embedded model ("black and
#   white", "a photo", "on white paper") are held out by construction, so that the benchmark keeps
#   measuring exactly them. 116 of the 331 distinct context words (35 %) occur only in held-out
#   phrases; shared words are function words and a few nouns ("paper", "ink", "photo").
#   tests/test_digits_data.py checks these figures.
HELD_OUT_DIGIT_TEMPLATES = ("a {d} written by hand", "digit {d} on paper", "a sketch of the number {d}")
HELD_OUT_STYLED_TEMPLATES = ("an image of a {s} {d}", "the {s} numeral {d}")
CONTEXT_SPLIT_SEED = 20261128
HELD_OUT_CONTEXT_FRACTION = 0.4
PINNED_HELD_OUT_CONTEXTS = ("black and white", "a photo", "on white paper")
ERASER_CONTEXTS_PER_TEMPLATE = 8  # each eraser template also appears in this many eraser contexts


def _split_contexts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rest = [c for c in CONTEXT_PHRASES if c not in PINNED_HELD_OUT_CONTEXTS]
    random.Random(CONTEXT_SPLIT_SEED).shuffle(rest)
    held_out = set(PINNED_HELD_OUT_CONTEXTS) | set(rest[: round(len(CONTEXT_PHRASES) * HELD_OUT_CONTEXT_FRACTION) - len(PINNED_HELD_OUT_CONTEXTS)])
    return (
        tuple(c for c in CONTEXT_PHRASES if c not in held_out),
        tuple(c for c in CONTEXT_PHRASES if c in held_out),
    )


ERASER_CONTEXTS, HELD_OUT_CONTEXTS = _split_contexts()


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
    """Templates with one "{}" slot for the concept (styles around digits, digits around styles),
    drawn only from the templates the eraser may see, each bare and in
    ``ERASER_CONTEXTS_PER_TEMPLATE`` eraser contexts (seeded), so that every eraser context occurs."""
    digit_templates = [t for t in DIGIT_TEMPLATES if t not in HELD_OUT_DIGIT_TEMPLATES]
    styled_templates = [t for t in STYLED_TEMPLATES if t not in HELD_OUT_STYLED_TEMPLATES]
    # Grouped by style (digits) or by digit (styles), so that a prompt set, which draws evenly along
    # the list (prompts.spread), has each style or digit in its share of prompts.
    if category == "object":
        plain = [t.format(d="{}") for t in digit_templates]
        bare = plain + [t.format(d="{}", s=words[0]) for words in STYLE_SYNONYMS.values() for t in styled_templates]
    elif category == "style":
        bare = [t.format(d=digit, s="{}") for digit in DIGIT_NAMES for t in styled_templates]
    else:
        raise FadeInputError(f"the embedded model has no {category!r} concepts; use object (digits) or style")
    rng = random.Random(CONTEXT_SPLIT_SEED)
    # Contexts are dealt out in rounds of a shuffled deck, so that every eraser context occurs.
    deck: list[str] = []
    templates = []
    for template in bare:
        templates.append(template)
        for _ in range(ERASER_CONTEXTS_PER_TEMPLATE):
            if not deck:
                deck = rng.sample(ERASER_CONTEXTS, len(ERASER_CONTEXTS))
            templates.append(with_context(template, deck.pop(), rng.choice(CONTEXT_PLACEMENTS)))
    return tuple(templates)


def concept_names(concept: str) -> list[str]:
    """Every name of a concept: its own, the eraser's synonym and the held-out synonym."""
    return [concept, *eraser_synonyms(concept), *held_out_synonyms(concept)]


def held_out_context_prompts(concept: str, count: int, seed: int = 0) -> list[str]:
    """Prompts that name the concept in contexts the eraser never saw: every template and every
    name of the concept, each prompt with one or two held-out contexts (seeded)."""
    rng = random.Random(f"{seed}:{concept}")
    names = concept_names(concept)
    prompts = []
    for _ in range(count):
        if concept_kind(concept) == "object":
            style = rng.choice(STYLE_NAMES)
            if style == "plain" and rng.random() < 0.6:
                text = rng.choice(DIGIT_TEMPLATES).format(d=rng.choice(names))
            else:
                text = rng.choice(STYLED_TEMPLATES).format(d=rng.choice(names), s=rng.choice(STYLE_SYNONYMS[style]))
        else:
            text = rng.choice(STYLED_TEMPLATES).format(d=rng.choice(rng.choice(list(DIGIT_SYNONYMS.values()))), s=rng.choice(names))
        count_contexts = 2 if rng.random() < CAPTION_SECOND_CONTEXT_PROBABILITY else 1
        for context in rng.sample(HELD_OUT_CONTEXTS, count_contexts):
            text = with_context(text, context, rng.choice(CONTEXT_PLACEMENTS))
        prompts.append(text)
    return prompts


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
        articles=False,  # the embedded model learned its captions with "a" before every digit ("a eight")
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
