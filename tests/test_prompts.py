import re
from collections import Counter

import pytest

from fade_core.digits.judge import default_prompt_set
from fade_core.errors import FadeInputError
from fade_core.prompts import CATEGORIES, PromptSet, build_prompt_set, fill, mentions, require_mentions


def _differ_only_in(pair):
    """The concept prompt with its trigger swapped for the neutral word is the neutral prompt, up
    to the article before the slot (a/an, or none where the neutral word brings one)."""
    swapped = re.sub(rf"(?<!\w){re.escape(pair.trigger)}(?!\w)", pair.neutral, pair.concept_prompt, count=1)

    def articles_alike(text):
        text = re.sub(r"\b(an?) (an?|the) ", r"\2 ", " ".join(text.split()), flags=re.IGNORECASE)
        return re.sub(r"\ban\b", "a", text)

    return articles_alike(swapped) == articles_alike(pair.neutral_prompt)


@pytest.mark.parametrize("category", CATEGORIES)
def test_pairs_differ_only_in_the_concept(category):
    prompt_set = build_prompt_set(["Van Gogh"], category, synonyms={"Van Gogh": ["Vincent van Gogh"]},
                                  neutral=["a painter"], num_prompts=40, seed=3)
    for pair in prompt_set.pairs("all"):
        assert mentions(pair.concept_prompt, [pair.trigger])
        assert not mentions(pair.neutral_prompt, ["Van Gogh"])
        assert _differ_only_in(pair), pair


def test_removal_leaves_a_tidy_prompt():
    prompt_set = build_prompt_set(["nude"], "explicit", neutral=[""], num_prompts=30)
    for pair in prompt_set.pairs("all"):
        assert "nude" not in pair.neutral_prompt
        assert "  " not in pair.neutral_prompt and pair.neutral_prompt == pair.neutral_prompt.strip()


def test_synonyms_contexts_and_split_are_seeded():
    first = build_prompt_set(["airplane"], synonyms={"airplane": ["jet", "aircraft"]}, num_prompts=40, seed=1)
    again = build_prompt_set(["airplane"], synonyms={"airplane": ["jet", "aircraft"]}, num_prompts=40, seed=1)
    other = build_prompt_set(["airplane"], synonyms={"airplane": ["jet", "aircraft"]}, num_prompts=40, seed=2)
    assert first == again and first != other
    assert {p.trigger for p in first.pairs("all")} == {"airplane", "jet", "aircraft"}
    assert len({p.template for p in first.pairs("all")}) >= 10
    assert len(first.validation) == 10 and len(first.train) == 30
    assert not {p.concept_prompt for p in first.validation} <= {p.concept_prompt for p in first.train}


def test_templates_triggers_and_neutral_words_are_drawn_evenly():
    templates = [f"picture {i} of a {{}}" for i in range(7)]
    prompt_set = build_prompt_set(["airplane"], synonyms={"airplane": ["jet"]}, neutral=["car", "boat", "train"],
                                  templates=templates, num_prompts=30, seed=5)
    pairs = prompt_set.pairs("all")
    for field, choices in (("template", templates), ("trigger", ["airplane", "jet"]), ("neutral", ["car", "boat", "train"])):
        counts = Counter(getattr(p, field) for p in pairs)
        assert set(counts) == set(choices) and max(counts.values()) - min(counts.values()) <= 1, (field, counts)


def test_each_style_gets_its_share_of_every_digits_prompts():
    # A plain random draw gave one + four + seven's seven 2 inverted prompts out of 36 for training,
    # and the erased model kept drawing inverted sevens.
    for seed in range(3):
        prompt_set = default_prompt_set(["one", "four", "seven"], seed=seed)
        for concept in prompt_set.concepts:
            templates = [p.template for p in prompt_set.train if p.concept == concept]
            for style in ("bold", "thin", "inverted", "slanted"):
                share = sum(f"{style} " in t or f", {style}" in t for t in templates) / len(templates)
                assert 0.08 <= share <= 0.3, (seed, concept, style, share)


def test_several_concepts_and_json_round_trip():
    prompt_set = build_prompt_set(["cat", "dog"], num_prompts=10)
    assert {p.concept for p in prompt_set.train} == {"cat", "dog"}
    assert PromptSet.from_json(prompt_set.to_json()) == prompt_set
    assert "cat" in prompt_set.preview()


def test_embedded_digit_prompts_use_other_digits_as_neutral():
    prompt_set = default_prompt_set(["three", "seven"])
    for pair in prompt_set.pairs("all"):
        assert not mentions(pair.neutral_prompt, ["three", "3", "seven", "7"])
        assert _differ_only_in(pair)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(concepts=[""]), "concept is empty"),
        (dict(concepts=["  "]), "concept is empty"),
        (dict(concepts=[]), "concept is empty"),
        (dict(concepts=["cat"], category="animal"), "unknown category"),
        (dict(concepts=["cat"], templates=["a photo of a dog"]), "exactly one {}"),
        (dict(concepts=["cat"], neutral=["a cat toy"]), "name a concept being erased"),
        (dict(concepts=["cat"], num_prompts=1), "at least 2"),
    ],
)
def test_bad_prompt_input_is_named(kwargs, message):
    with pytest.raises(FadeInputError, match=re.escape(message)):
        build_prompt_set(**kwargs)


def test_prompts_that_never_name_the_concept_are_refused():
    with pytest.raises(FadeInputError, match="none of the 2 prompts mentions"):
        require_mentions(["a dog", "a cat"], ["airplane", "jet"], "'airplane'")
    require_mentions(["a dog", "a jet in the sky"], ["airplane", "jet"], "'airplane'")


@pytest.mark.parametrize(("template", "word", "expected"), [
    ("a painting of a {}", "airplane", "a painting of an airplane"),
    ("a {} at night", "aeroplane", "an aeroplane at night"),
    ("a photo of a {}", "jet", "a photo of a jet"),
    ("an oil painting of a {} figure", "nude", "an oil painting of a nude figure"),
    ("a {} couple", "erotic", "an erotic couple"),
    ("a photo of a {}", "unicorn", "a photo of a unicorn"),
    ("a photo of a {}", "hourglass", "a photo of an hourglass"),
    ("A {} in the snow", "owl", "An owl in the snow"),
    ("a {} person", "", "a person"),
    ("a painting of a {}", "a painter", "a painting of a painter"),
])
def test_the_article_before_the_slot_fits_the_word(template, word, expected):
    assert fill(template, word) == expected


def test_no_prompt_of_a_built_set_has_a_wrong_article():
    prompt_set = build_prompt_set(["airplane"], synonyms={"airplane": ["aeroplane", "jet", "aircraft"]}, num_prompts=64)
    for pair in prompt_set.pairs("all"):
        for prompt in (pair.concept_prompt, pair.neutral_prompt):
            assert not re.search(r"\ba (airplane|aeroplane|aircraft|object)\b", prompt), prompt
            assert not re.search(r"\ban (jet)\b", prompt), prompt
