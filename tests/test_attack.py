"""The attacks that measure an erasure: the search improves what it maximises, everything is
deterministic for a seed, and on the base model (nothing erased) every attack finds the concept."""

import pytest
import torch

from fade_core.attack import embedding_attack, greedy_prompt_search, with_contexts
from fade_core.digits import data
from fade_core.digits.attacks import (
    concept_scorer,
    context_attack_accuracy,
    discrete_attack_accuracy,
    embedding_attack_accuracy,
    real_concept_samples,
)
from fade_core.errors import FadeInputError

TARGETS = {"red", "round", "shiny"}
VOCABULARY = ["red", "round", "shiny", "dull", "flat", "grey", "square", "wet", "cold", "tall"]


def toy_score(prompts):
    """Counts target words, minus a little per word, so that only target words pay."""
    return torch.tensor([sum(w in TARGETS for w in p.split()) - 0.1 * len(p.split()) for p in prompts])


def test_greedy_search_raises_a_toy_score_and_keeps_protected_words():
    result = greedy_prompt_search(toy_score, "a cold apple", VOCABULARY, rounds=8, candidates=10, protected=["apple"], seed=3)
    assert result.history[0] == pytest.approx(-0.3)
    assert result.score > result.history[0] + 1.5  # at least two target words found
    assert all(later >= earlier for earlier, later in zip(result.history, result.history[1:]))
    assert result.history[-1] == result.score and result.prompts[-1] == result.prompt
    assert "apple" in result.prompt.split()
    assert result.evaluations <= 1 + 8 * 10


def test_greedy_search_is_deterministic_for_a_seed():
    runs = [greedy_prompt_search(toy_score, "a cold apple", VOCABULARY, rounds=4, candidates=5, seed=s) for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0].prompts != runs[2].prompts  # another seed, another path


def test_search_and_contexts_refuse_bad_input():
    with pytest.raises(FadeInputError, match="vocabulary"):
        greedy_prompt_search(toy_score, "a cold apple", [" "])
    with pytest.raises(FadeInputError, match="one per prompt"):
        greedy_prompt_search(lambda prompts: torch.zeros(1), "a cold apple", VOCABULARY)
    with pytest.raises(FadeInputError, match="empty"):
        with_contexts(["a 3"], [])


def test_context_phrases_go_after_and_before_the_prompts():
    prompts = with_contexts(["a 3", "the digit three"], ["on a napkin", "in ink", "black and white"])
    assert prompts == [
        "a 3, on a napkin", "on a napkin, the digit three",
        "a 3, in ink", "in ink, the digit three",
        "a 3, black and white", "black and white, the digit three",
    ]


def test_embedding_attack_is_seeded_and_each_start_is_optimised_as_if_alone(adapter):
    real = real_concept_samples("eight")
    starts = ["a handwritten eight", "the digit 8"]
    joint = embedding_attack(adapter, starts, real, steps=4, batch_size=3, seed=5)
    again = embedding_attack(adapter, starts, real, steps=4, batch_size=3, seed=5)
    alone = embedding_attack(adapter, starts[1], real, steps=4, batch_size=3, seed=6)  # start 1 draws from seed + 1
    context = joint.tensors["context"]
    assert len(joint) == 2 and torch.equal(context, again.tensors["context"])
    assert torch.allclose(context[1:], alone.tensors["context"], atol=1e-5)
    assert not torch.allclose(context, adapter.encode(starts).tensors["context"])  # the attack moved them
    assert all(not p.requires_grad for p in adapter.denoiser.parameters())  # the model stays as it was


def test_embedding_attack_aims_each_start_at_its_own_samples_when_given_one_set_per_start(adapter):
    """A list of sample sets, one per start: start i denoises its own set, ending where it would
    alone aimed at that set (starts for several concepts share the model calls)."""
    eights, threes = real_concept_samples("eight"), real_concept_samples("three")
    starts = ["a handwritten eight", "a handwritten three"]
    joint = embedding_attack(adapter, starts, [eights, threes], steps=4, batch_size=3, seed=5).tensors["context"]
    first = embedding_attack(adapter, starts[0], eights, steps=4, batch_size=3, seed=5).tensors["context"]
    second = embedding_attack(adapter, starts[1], threes, steps=4, batch_size=3, seed=6).tensors["context"]
    # batched and alone round differently (up to 1.6e-5 seen); aimed elsewhere, a start moves by ~1e-2
    assert torch.allclose(joint, torch.cat([first, second]), atol=1e-4)
    aimed_at_eights = embedding_attack(adapter, starts[1], eights, steps=4, batch_size=3, seed=6).tensors["context"]
    assert not torch.allclose(second, aimed_at_eights, atol=1e-4)
    with pytest.raises(FadeInputError, match="one per start"):
        embedding_attack(adapter, starts, [eights], steps=1)


def test_embedding_attack_goes_on_from_an_initial_context(adapter):
    """``initial`` is where the soft tensors start: zero steps give it back unchanged, more steps move
    on from it (not from the prompts' encodings); a tensor of another shape, or token space, is refused."""
    real = real_concept_samples("eight")
    starts = ["a handwritten eight", "the digit 8"]
    first = embedding_attack(adapter, starts, real, steps=4, batch_size=3, seed=5).tensors["context"]
    unchanged = embedding_attack(adapter, starts, real, steps=0, seed=5, initial=first).tensors["context"]
    assert torch.equal(unchanged, first)
    onwards = embedding_attack(adapter, starts, real, steps=4, batch_size=3, seed=5, initial=first).tensors["context"]
    afresh = embedding_attack(adapter, starts, real, steps=8, batch_size=3, seed=5).tensors["context"]
    assert not torch.allclose(onwards, first) and not torch.allclose(onwards, afresh, atol=1e-4)
    with pytest.raises(FadeInputError, match="a row per starting prompt"):
        embedding_attack(adapter, starts, real, steps=1, initial=first[:1])
    with pytest.raises(FadeInputError, match="context space only"):
        embedding_attack(adapter, starts, real, steps=1, initial=first, space="tokens")


def test_the_inversion_attack_changes_only_the_words_input_embeddings(adapter):
    """In token space the attacker edits what a textual-inversion file holds: the input rows of the
    prompt's words. CLIP's text encoder is causal, so the state at BOS cannot move; every state
    from the first word on does. With no steps the conditioning is the prompts' own."""
    real = real_concept_samples("eight")
    starts = ["a handwritten eight", "the digit 8"]
    encoded = adapter.encode(starts).tensors["context"]
    unmoved = embedding_attack(adapter, starts, real, steps=0, space="tokens").tensors["context"]
    assert torch.allclose(unmoved, encoded, atol=1e-6)
    found = embedding_attack(adapter, starts, real, steps=4, batch_size=3, seed=5, space="tokens").tensors["context"]
    assert torch.allclose(found[:, 0], encoded[:, 0], atol=1e-6)
    assert (found[:, 1:] - encoded[:, 1:]).abs().amax(dim=-1).min() > 1e-4
    assert torch.equal(found, embedding_attack(adapter, starts, real, steps=4, batch_size=3, seed=5, space="tokens").tensors["context"])
    assert all(not p.requires_grad for p in adapter.text_encoder.parameters())
    with pytest.raises(FadeInputError, match="space"):
        embedding_attack(adapter, starts, real, steps=1, space="pixels")


def test_the_scorer_gives_the_concept_its_probability(adapter):
    score = concept_scorer(adapter, "eight", images_per_prompt=6, seed=0)
    values = score(["a handwritten eight", "a handwritten two"])
    assert values.shape == (2,)
    assert values[0] > 0.9 and values[1] < 0.1
    assert torch.equal(values, score(["a handwritten eight", "a handwritten two"]))


def test_every_attack_finds_the_concept_on_the_base_model(adapter):
    """Nothing is erased, so each attack must report the concept nearly always; small budgets."""
    starts = ["a handwritten eight", "number viii"]
    embedding = embedding_attack_accuracy(adapter, "eight", starts, steps=10, batch_size=4, screen_images=8, images=24)
    assert set(embedding.detail["screened"]) == set(starts) and embedding.detail["worst_start"] in starts
    assert embedding.acc >= 0.9
    inversion = embedding_attack_accuracy(adapter, "eight", starts, steps=10, batch_size=4, screen_images=8, images=24, space="tokens")
    assert inversion.acc >= 0.9 and inversion.detail["space"] == "tokens"

    vocabulary = sorted({w for t in data.DIGIT_TEMPLATES for w in t.replace("{d}", "").split()})
    discrete = discrete_attack_accuracy(adapter, "eight", "the digit eight", vocabulary, rounds=2, candidates=4,
                                        images_per_prompt=4, protected=["eight"], images=24)
    assert discrete.acc >= 0.9 and "eight" in discrete.detail["prompt"].split()
    repeat = discrete_attack_accuracy(adapter, "eight", "the digit eight", vocabulary, rounds=2, candidates=4,
                                      images_per_prompt=4, protected=["eight"], images=24)
    assert (repeat.acc, repeat.detail) == (discrete.acc, discrete.detail)

    context = context_attack_accuracy(adapter, "bold", ["a bold 3", "the digit 7, thick"], ["on paper", "in ink"], images=24)
    assert context.acc >= 0.9 and set(context.detail["per_context"]) == {"on paper", "in ink"}
