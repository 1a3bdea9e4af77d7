"""The embedded model's vocabulary: contexts, and the split between what the eraser sees and what
only the measurement sees."""

import random
import re

from fade_core.digits import data, vocabulary
from fade_core.digits.judge import default_prompt_set


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_contexts_are_many_and_name_no_concept():
    words = set().union(*map(_words, data.CONTEXT_PHRASES))
    assert len(set(data.CONTEXT_PHRASES)) == len(data.CONTEXT_PHRASES) >= 150
    assert len(words) >= 300
    concept_words = {w for names in data.DIGIT_SYNONYMS.values() for w in names}
    concept_words |= {w for names in data.STYLE_SYNONYMS.values() for w in names}
    assert not words & concept_words
    assert not any(ch.isdigit() for phrase in data.CONTEXT_PHRASES for ch in phrase)
    for phrase in data.CONTEXT_PHRASES:
        assert data.parse_prompt(f"a handwritten 8, {phrase}") == (8, "plain")


def test_held_out_contexts_are_a_third_of_phrases_and_of_words():
    eraser, held_out = set(data.ERASER_CONTEXTS), set(data.HELD_OUT_CONTEXTS)
    assert not eraser & held_out and eraser | held_out == set(data.CONTEXT_PHRASES)
    assert len(held_out) >= len(data.CONTEXT_PHRASES) / 3
    all_words = set().union(*map(_words, data.CONTEXT_PHRASES))
    only_held_out = set().union(*map(_words, held_out)) - set().union(*map(_words, eraser))
    assert len(only_held_out) >= len(all_words) / 3
    assert set(data.PINNED_HELD_OUT_CONTEXTS) <= held_out
    # The split is a pure function of its seed: the same on every machine and every import.
    assert vocabulary._split_contexts() == (data.ERASER_CONTEXTS, data.HELD_OUT_CONTEXTS)


def _contexts_in(prompt: str) -> set[str]:
    return {c for c in data.CONTEXT_PHRASES if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", prompt)}


def test_the_eraser_sees_only_eraser_contexts_and_every_one_of_them():
    for category in ("object", "style"):
        templates = data.eraser_templates(category)
        seen = set().union(*(_contexts_in(t) for t in templates))
        # A held-out phrase may occur inside a longer eraser phrase ("a photo" in "stock photo" does
        # not, but "grey" could): count only contexts that are not part of another one found.
        maximal = {c for c in seen if not any(c != other and c in other for other in seen)}
        assert maximal <= set(data.ERASER_CONTEXTS), maximal - set(data.ERASER_CONTEXTS)
        assert set(data.ERASER_CONTEXTS) <= seen
        assert any(not _contexts_in(t) for t in templates)  # and bare templates
    prompt_set = default_prompt_set(["eight"], num_prompts=200)
    assert sum(bool(_contexts_in(p.concept_prompt)) for p in prompt_set.pairs("all")) > 100


def test_held_out_context_prompts_name_the_concept_in_held_out_contexts():
    for concept in ("eight", "bold"):
        prompts = data.held_out_context_prompts(concept, 60, seed=3)
        assert prompts == data.held_out_context_prompts(concept, 60, seed=3)
        for prompt in prompts:
            digit, style = data.parse_prompt(prompt)
            if concept == "eight":
                assert digit == 8
            else:
                assert style == "bold"
            found = _contexts_in(prompt)
            assert found and found & set(data.HELD_OUT_CONTEXTS), prompt


def test_captions_carry_contexts_and_keep_their_labels():
    rng = random.Random(0)
    captions = [data.random_caption(d, s, rng) for d in range(10) for s in data.STYLE_NAMES for _ in range(5)]
    with_context = [c for c in captions if _contexts_in(c.text)]
    assert 0.6 < len(with_context) / len(captions) < 0.9
    for caption in captions:
        assert data.parse_prompt(caption.text) == (caption.digit, caption.style)
