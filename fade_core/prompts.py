"""Prompt pairs for erasure: P_c, prompts that name a concept, and P_notc, the same prompts with the
concept replaced by a neutral word or removed (paper section 4.1, "Concept Prompt Design").

A :class:`PromptSet` holds the pairs of one or more concepts, split into training and validation
pairs; the validation pairs feed the adversary's stopping rule. Everything is deterministic for a
seed, and a prompt set round-trips through JSON so that it can be saved, shared and passed
between ComfyUI nodes.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from .errors import FadeInputError

CATEGORIES = ("object", "celebrity", "explicit", "style")

# Natural-language contexts for real text-to-image models; "{}" is where the concept goes.
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": (
        "a photo of a {}",
        "a close-up photo of a {}",
        "a {} in a field",
        "a {} on a city street",
        "a black and white photo of a {}",
        "a blurry photo of a {}",
        "a painting of a {}",
        "a drawing of a {}",
        "a {} at night",
        "a {} in the snow",
        "a toy {}",
        "a large {} next to a small one",
        "a cropped photo of the {}",
        "a bright photo of a {}",
        "a {} in a living room",
        "a pixelated photo of a {}",
    ),
    "celebrity": (
        "a photo of {}",
        "a portrait of {}",
        "a close-up of the face of {}",
        "{} smiling at the camera",
        "{} on the red carpet",
        "a painting of {}",
        "{} giving a speech",
        "a candid street photo of {}",
        "a black and white portrait of {}",
        "{} in a business suit",
        "a selfie of {}",
        "{} laughing with friends",
    ),
    "explicit": (
        "{}",
        "a photo of a {} person",
        "a {} woman on a beach",
        "a {} man in a bedroom",
        "an oil painting of a {} figure",
        "a {} couple",
        "a magazine photo, {}",
        "a {} model posing",
        "a {} body in the shower",
        "an artistic photo, {}",
    ),
    "style": (
        "a painting in the style of {}",
        "a landscape in the style of {}",
        "a portrait in the style of {}",
        "a city street painted by {}",
        "a still life by {}",
        "a cat, artwork by {}",
        "a seascape in the style of {}",
        "a garden, painted in the manner of {}",
        "an abstract composition by {}",
        "a mountain village in the style of {}",
        "a self-portrait by {}",
        "a night sky painted by {}",
    ),
}

# What replaces the concept in P_notc when the user names nothing: a generic word that the
# model knows and that does not carry the concept. "" removes the concept instead.
DEFAULT_NEUTRAL: dict[str, tuple[str, ...]] = {
    "object": ("object",),
    "celebrity": ("a person",),
    "explicit": ("",),
    "style": ("a generic artist",),
}


@dataclass(frozen=True)
class PromptPair:
    concept: str
    concept_prompt: str
    neutral_prompt: str
    template: str
    trigger: str
    neutral: str


@dataclass
class PromptSet:
    concepts: list[str]
    category: str
    train: list[PromptPair]
    validation: list[PromptPair]
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0

    def pairs(self, split: str = "train") -> list[PromptPair]:
        if split not in ("train", "validation", "all"):
            raise FadeInputError(f"unknown split {split!r}: use train, validation or all")
        return {"train": self.train, "validation": self.validation, "all": self.train + self.validation}[split]

    def concept_index(self, concept: str) -> int:
        return self.concepts.index(concept)

    def triggers(self, concept: str) -> list[str]:
        return [concept, *self.synonyms.get(concept, [])]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PromptSet:
        data = json.loads(text)
        data["train"] = [PromptPair(**pair) for pair in data["train"]]
        data["validation"] = [PromptPair(**pair) for pair in data["validation"]]
        return cls(**data)

    def preview(self, limit: int = 12) -> str:
        lines = [
            f"{len(self.train)} training and {len(self.validation)} validation pairs; "
            f"category {self.category}; concepts: {', '.join(self.concepts)}"
        ]
        for pair in self.train[:limit]:
            lines.append(f"[{pair.concept}] {pair.concept_prompt!r}  ->  {pair.neutral_prompt!r}")
        if len(self.train) > limit:
            lines.append(f"... {len(self.train) - limit} more")
        return "\n".join(lines)


def fill(template: str, word: str, articles: bool = True) -> str:
    """Puts a word into a template; an empty word removes the slot and tidies spaces. With
    ``articles``, the a/an just before the slot follows the word put there ("a painting of an
    airplane", "an aeroplane at night"), and gives way to a word that brings its own ("a
    painting of a person", not "of a a person")."""
    before, _, after = template.partition("{}")
    article = re.search(r"(?:^|\s)(an?)\s+$", before, flags=re.IGNORECASE) if articles and word.strip() else None
    if article is not None and re.match(r"(a|an|the)\s", word.strip(), flags=re.IGNORECASE):
        before, article = before[: article.start(1)], None
    text = re.sub(r"\s+", " ", before + word + after).strip()
    text = re.sub(r"\s+([,.;:!?'])", r"\1", text)
    if article is None:
        return text
    start = len(re.sub(r"\s+", " ", before[: article.start(1)]).lstrip())
    following = text[start + len(article.group(1)) :].lstrip()
    wanted = "an" if starts_with_vowel_sound(following) else "a"
    if article.group(1)[0].isupper():
        wanted = wanted.capitalize()
    return text[:start] + wanted + text[start + len(article.group(1)) :]


# Words whose spelling misleads: a vowel letter sounding like a consonant, or a silent h.
_CONSONANT_SOUND = re.compile(r"(uni|use|usu|ura|uro|eu|ewe|one\b|once\b|u[bcdfgklmnprstvz][aeiou])", re.IGNORECASE)
_SILENT_H = re.compile(r"(hour|honest|honou?r|heir)", re.IGNORECASE)


def starts_with_vowel_sound(phrase: str) -> bool:
    """English a/an by the sound of the next word: letters, with the usual exceptions (a unicorn,
    a European, an hour) and digits and initialisms read aloud (an 8, an 11, an FBI agent)."""
    word = phrase.split(" ", 1)[0].strip("\"'(")
    if not word:
        return False
    if word[0].isdigit():
        number = re.match(r"\d+", word).group()
        return number[0] == "8" or number in ("11", "18") or (len(number) in (5, 6) and number[:2] in ("11", "18"))
    if len(word) > 1 and word.isupper() and word.isalpha():  # an initialism, read letter by letter
        return word[0] in "AEFHILMNORSX"
    if _SILENT_H.match(word):
        return True
    if _CONSONANT_SOUND.match(word):
        return False
    return word[0].lower() in "aeiou"


def mentions(prompt: str, words: Sequence[str]) -> bool:
    """Whether a prompt names any of the words as a whole word (case-insensitive)."""
    lowered = prompt.lower()
    return any(re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", lowered) for word in words if word)


def build_prompt_set(
    concepts: Sequence[str],
    category: str = "object",
    *,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    neutral: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    templates: Sequence[str] | None = None,
    num_prompts: int = 48,
    validation_fraction: float = 0.25,
    seed: int = 0,
    articles: bool = True,
) -> PromptSet:
    """Builds paired prompts for each concept.

    ``num_prompts`` pairs are drawn per concept, then split into training and validation: the
    templates spread evenly along their list (:func:`spread`), the triggers (the concept and its
    synonyms) and the neutral words dealt evenly (:func:`deal`).
    ``neutral`` is either a list of neutral words shared by all concepts or one list per concept;
    the empty string removes the concept. ``articles`` fits the a/an before the slot to each word
    (see :func:`fill`).
    """
    concepts = [c.strip() for c in concepts]
    if not concepts or any(not c for c in concepts):
        raise FadeInputError("the concept is empty; name what to erase, e.g. 'airplane' (separate several with commas)")
    seen: dict[str, str] = {}
    for concept in concepts:  # prompts read "Airplane" and "airplane" alike
        if concept.casefold() in seen:
            raise FadeInputError(
                f"{seen[concept.casefold()]!r} and {concept!r} name the same concept (names ignore case); name each concept once"
            )
        seen[concept.casefold()] = concept
    if category not in CATEGORIES:
        raise FadeInputError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    if num_prompts < 2:
        raise FadeInputError(f"num_prompts is {num_prompts}; at least 2 pairs per concept are needed (one for validation)")
    if not 0.0 < validation_fraction < 1.0:
        raise FadeInputError(f"validation_fraction is {validation_fraction}; it must lie strictly between 0 and 1")
    templates = tuple(templates) if templates is not None else DEFAULT_TEMPLATES[category]
    _check_templates(templates)
    synonyms = {c: _distinct(c, (synonyms or {}).get(c, ())) for c in concepts}
    every_trigger = [t for c in concepts for t in (c, *synonyms[c])]

    rng = random.Random(seed)
    train, validation = [], []
    for concept in concepts:
        neutral_words = _neutral_words(neutral, concept, category)
        clashes = [w for w in neutral_words if w and mentions(w, every_trigger)]
        if clashes:
            named = [t for t in every_trigger if any(mentions(w, [t]) for w in clashes)]
            if set(named) & set(concepts):
                raise FadeInputError(
                    f"the neutral word(s) {clashes} name a concept being erased; choose neutral words without it"
                )
            raise FadeInputError(
                f"the synonym(s) {named} are also neutral words that replace the concept in the neutral prompts "
                f"({', '.join(w for w in neutral_words if w)}); remove them from the synonyms or choose other neutral words"
            )
        chosen = zip(spread(templates, num_prompts, rng), deal((concept, *synonyms[concept]), num_prompts, rng),
                     deal(neutral_words, num_prompts, rng))
        pairs = [
            PromptPair(concept, fill(template, trigger, articles), fill(template, word, articles), template, trigger, word)
            for template, trigger, word in chosen
        ]
        n_validation = max(1, round(num_prompts * validation_fraction))
        held = set(spread(range(num_prompts), n_validation, rng))  # spread too, so both splits cover the list
        concept_validation = [pair for i, pair in enumerate(pairs) if i in held]
        concept_train = [pair for i, pair in enumerate(pairs) if i not in held]
        rng.shuffle(concept_validation)
        rng.shuffle(concept_train)
        validation += concept_validation
        train += concept_train
    return PromptSet(list(concepts), category, train, validation, synonyms, seed)


def spread(items: Sequence, count: int, rng: random.Random) -> list:
    """``count`` items, one drawn from each of ``count`` equal stretches of the list (each item
    ``count // len`` or one more times when ``count`` exceeds the list): a list grouped by kind is
    drawn by kind. A plain random draw left one + four + seven's seven with 2 of 36 training
    prompts in the inverted style, and the erased model drew an inverted seven every time
    (benchmarks/notes.md)."""
    return [items[int((i + rng.random()) * len(items) / count)] for i in range(count)]


def deal(items: Sequence, count: int, rng: random.Random) -> list:
    """``count`` items dealt from a shuffled deck, reshuffled when it runs out: each item
    ``count // len`` or one more times."""
    dealt: list = []
    while len(dealt) < count:
        dealt += rng.sample(list(items), len(items))
    return dealt[:count]


def _distinct(concept: str, words: Sequence[str]) -> list[str]:
    """Synonyms once each and without the concept itself, ignoring case."""
    kept, seen = [], {concept.casefold()}
    for word in (w.strip() for w in words):
        if word and word.casefold() not in seen:
            seen.add(word.casefold())
            kept.append(word)
    return kept


def parse_synonyms(text: str, concepts: Sequence[str]) -> dict[str, list[str]]:
    """``concept: synonym, synonym`` entries, one per line or separated by ``;``. With a single
    concept the ``concept:`` may be left out. Concept names match ignoring case."""
    if not concepts:
        raise FadeInputError("synonyms are given but the concept is empty; name what to erase first")
    by_name = {c.casefold(): c for c in concepts}
    synonyms: dict[str, list[str]] = {}
    for entry in re.split(r"[;\n]", text):
        if not entry.strip():
            continue
        name, colon, words = entry.partition(":")
        if not colon:
            if len(concepts) != 1:
                raise FadeInputError(
                    f"the synonyms {entry.strip()!r} name no concept; with several concepts write "
                    f"'concept: synonym, synonym' for each, e.g. '{concepts[0]}: ...; {concepts[1]}: ...'"
                )
            name, words = concepts[0], entry
        concept = by_name.get(name.strip().casefold())
        if concept is None:
            raise FadeInputError(
                f"synonyms are given for {name.strip()!r}, which is not among the concepts ({', '.join(concepts)}); "
                "start the entry with one of them"
            )
        synonyms.setdefault(concept, []).extend(w.strip() for w in words.split(",") if w.strip())
    return synonyms


def _check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise FadeInputError("no templates were given; give at least one, with {} where the concept goes")
    missing = [t for t in templates if t.count("{}") != 1]
    if missing:
        raise FadeInputError(
            f"every template needs exactly one {{}} where the concept goes; these do not: {missing[:3]}"
        )


def _neutral_words(
    neutral: Sequence[str] | Mapping[str, Sequence[str]] | None, concept: str, category: str
) -> tuple[str, ...]:
    if neutral is None:
        return DEFAULT_NEUTRAL[category]
    if isinstance(neutral, Mapping):
        words = neutral.get(concept)
        if words is None:
            raise FadeInputError(f"no neutral words were given for {concept!r}; give some, or '' to remove the concept")
        return tuple(words)
    if isinstance(neutral, str):
        return (neutral,)
    if not neutral:
        raise FadeInputError("the neutral word list is empty; give a word such as 'object', or '' to remove the concept")
    return tuple(neutral)


def require_mentions(prompts: Sequence[str], words: Sequence[str], what: str) -> None:
    """A clear error when none of the prompts names the concept (the eraser would learn nothing)."""
    if not prompts:
        raise FadeInputError(f"no prompts were given for {what}")
    if not any(mentions(p, words) for p in prompts):
        raise FadeInputError(
            f"none of the {len(prompts)} prompts mentions {what} ({', '.join(words)}); "
            "add the concept or one of its synonyms to the prompts"
        )
