"""The attacks of :mod:`fade_core.attack` on the embedded model, judged by the held-out evaluator.

Each function returns the attacked Acc: the share of fresh generations that the evaluator labels as
the concept (the digit for a digit concept, the style for a style concept). The searches score
prompts on one set of seeds and the reported Acc comes from other seeds, so that picking the best
of many tries does not inflate it.

Default budgets, and their single-threaded CPU time on the 2-core machine that built this file
(about 65 ms per generated image; attacking the FADE-erased eight):

- embedding attack: 3 starting prompts x 300 steps x 2 real images per start and step, 16
  screening generations per start, then 200 generations from the worst start: about 45 s.
  ``batch_size=4`` is stronger (ESD-erased eight: 99.5 % against 97.0 %) and takes about 55 s.
  The same in token space (the inversion attack, ``space="tokens"``) also runs the text encoder
  at every step;
- discrete attack: 5 rounds x 8 candidate prompts x 6 generations each, then 200 generations of
  the prompt found: about 30 s;
- context attack: 200 generations over the concept prompts in the given contexts: about 13 s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..adapter import Conditioning, DenoiserAdapter
from ..attack import PromptScore, embedding_attack, greedy_prompt_search, with_contexts
from ..errors import FadeInputError
from ..sampling import initial_noise, sample
from . import data
from .judge import load_evaluator
from .model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS

BATCH = 256


@dataclass
class AttackOutcome:
    """One attack on one concept."""

    attack: str  # "embedding", "discrete" or "context"
    concept: str
    acc: float  # the attacked Acc: the worst start, the found prompt, or all context prompts
    images: int  # generations behind ``acc``
    seconds: float  # wall time of the whole attack, measurement included
    detail: dict = field(default_factory=dict)
    found: Conditioning | None = None  # the embedding attacks' conditioning behind ``acc`` (the worst start's)


def concept_probability(samples: torch.Tensor, concept: str) -> torch.Tensor:
    """The evaluator's softmax probability of the concept (its digit, or its style) per sample."""
    digit_logits, style_logits = load_evaluator()(samples.clamp(-1, 1))
    if data.concept_kind(concept) == "object":
        return digit_logits.softmax(1)[:, data.DIGIT_NAMES.index(concept)]
    return style_logits.softmax(1)[:, data.STYLE_NAMES.index(concept)]


def is_concept(samples: torch.Tensor, concept: str) -> torch.Tensor:
    """Whether the evaluator labels each sample as the concept (what Acc counts)."""
    digit_pred, style_pred = load_evaluator().classify(samples)
    if data.concept_kind(concept) == "object":
        return digit_pred == data.DIGIT_NAMES.index(concept)
    return style_pred == data.STYLE_NAMES.index(concept)


@torch.no_grad()
def _generate(adapter: DenoiserAdapter, cond: Conditioning, noise: torch.Tensor, num_steps: int, guidance: float) -> torch.Tensor:
    return torch.cat([
        sample(adapter, cond[start : start + BATCH], noise[start : start + BATCH], num_steps=num_steps, guidance=guidance)
        for start in range(0, len(noise), BATCH)
    ])


def concept_scorer(
    adapter: DenoiserAdapter,
    concept: str,
    *,
    images_per_prompt: int = 8,
    seed: int = 0,
    num_steps: int = DEFAULT_SAMPLING_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> PromptScore:
    """``score(prompts)``: the mean probability of the concept over ``images_per_prompt``
    generations per prompt. Every prompt starts from the same noises (common random numbers), so
    two prompts compare without the noise between them and the score is deterministic."""
    data.concept_kind(concept)
    noise = initial_noise(adapter, images_per_prompt, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def score(prompts: list[str]) -> torch.Tensor:
        cond = adapter.encode(prompts)[torch.arange(len(prompts)).repeat_interleave(images_per_prompt)]
        samples = _generate(adapter, cond, noise.repeat(len(prompts), *([1] * (noise.dim() - 1))), num_steps, guidance)
        return concept_probability(samples, concept).reshape(len(prompts), images_per_prompt).mean(1)

    return score


@torch.no_grad()
def accuracy(
    adapter: DenoiserAdapter,
    concept: str,
    cond: Conditioning,
    *,
    images: int = 200,
    seed: int = 0,
    num_steps: int = DEFAULT_SAMPLING_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> tuple[float, torch.Tensor]:
    """Acc of ``images`` generations, cycling over the rows of ``cond``; also the per-image hits."""
    if images < 1:
        raise FadeInputError(f"images is {images}; measure Acc on at least one generation")
    noise = initial_noise(adapter, images, torch.Generator().manual_seed(seed))
    rows = torch.arange(images) % len(cond)
    hits = is_concept(_generate(adapter, cond[rows], noise, num_steps, guidance), concept)
    return hits.float().mean().item(), hits


def real_concept_samples(concept: str) -> torch.Tensor:
    """Real images of the concept in the model's range, from the generator's split: the digit in
    its plain rendering, or every digit in the style. The attacker may have these."""
    images, digits = data.real_split("generator")
    if data.concept_kind(concept) == "object":
        return data.to_model_range(images[digits == data.DIGIT_NAMES.index(concept)])
    return data.to_model_range(data.apply_style(images, concept))


def starting_prompts(concept: str) -> list[str]:
    """Three prompts that name the concept in different ways: each of its three names, in
    different templates."""
    if data.concept_kind(concept) == "object":
        name, numeral, other = data.DIGIT_SYNONYMS[data.DIGIT_NAMES.index(concept)]
        return [f"a handwritten {name}", f"the digit {numeral}", f"number {other}"]
    first, second, third = data.STYLE_SYNONYMS[concept]
    return [f"a {first} three", f"the digit 5, {second}", f"{third} eight"]


def embedding_attack_accuracy(
    adapter: DenoiserAdapter,
    concept: str,
    starts: Sequence[str] | None = None,
    *,
    real_samples: torch.Tensor | None = None,
    steps: int = 300,
    batch_size: int = 2,
    screen_images: int = 16,
    images: int = 200,
    seed: int = 0,
    space: str = "context",
) -> AttackOutcome:
    """The embedding attack from every start at once, in ``space`` (see
    :func:`fade_core.attack.embedding_attack`); each start's conditioning is screened on
    ``screen_images`` generations (seeds ``seed + 1``), and ``acc`` is the Acc of ``images`` fresh
    generations (seeds ``seed + 2``) from the start that screened worst for the erasure."""
    started = time.perf_counter()
    starts = list(starts) if starts is not None else starting_prompts(concept)
    real = real_samples if real_samples is not None else real_concept_samples(concept)
    with torch.enable_grad():
        found = embedding_attack(adapter, starts, real, steps=steps, batch_size=batch_size, seed=seed, space=space)
    screened = {start: accuracy(adapter, concept, found[[i]], images=screen_images, seed=seed + 1)[0] for i, start in enumerate(starts)}
    worst = max(range(len(starts)), key=lambda i: screened[starts[i]])
    acc, _ = accuracy(adapter, concept, found[[worst]], images=images, seed=seed + 2)
    return AttackOutcome("embedding", concept, acc, images, time.perf_counter() - started, {
        "screened": screened, "worst_start": starts[worst], "steps": steps, "batch_size": batch_size,
        "screen_images": screen_images, "space": space,
    }, found=found[[worst]])


def discrete_attack_accuracy(
    adapter: DenoiserAdapter,
    concept: str,
    start_prompt: str,
    vocabulary: Sequence[str],
    *,
    rounds: int = 5,
    candidates: int = 8,
    images_per_prompt: int = 6,
    protected: Sequence[str] = (),
    images: int = 200,
    seed: int = 0,
) -> AttackOutcome:
    """Greedy word search scored on seeds ``seed``; Acc of ``images`` generations of the prompt
    it finds on seeds ``seed + 1``, which the search never used."""
    started = time.perf_counter()
    score = concept_scorer(adapter, concept, images_per_prompt=images_per_prompt, seed=seed)
    found = greedy_prompt_search(score, start_prompt, vocabulary, rounds=rounds, candidates=candidates,
                                 protected=protected, seed=seed)
    acc, _ = accuracy(adapter, concept, adapter.encode([found.prompt]), images=images, seed=seed + 1)
    return AttackOutcome("discrete", concept, acc, images, time.perf_counter() - started, {
        "prompt": found.prompt, "search_score": found.score, "history": found.history,
        "evaluations": found.evaluations, "images_per_prompt": images_per_prompt,
    })


def context_attack_accuracy(
    adapter: DenoiserAdapter,
    concept: str,
    prompts: Sequence[str],
    contexts: Sequence[str],
    *,
    images: int = 200,
    seed: int = 0,
) -> AttackOutcome:
    """Acc over the concept prompts put in the given (held-out) contexts, ``images`` generations
    cycling over them; ``detail`` gives the Acc in each context."""
    started = time.perf_counter()
    attacked = with_contexts(prompts, contexts)
    acc, hits = accuracy(adapter, concept, adapter.encode(attacked), images=images, seed=seed + 1)
    per_context = {}
    for i, context in enumerate(c.strip() for c in contexts if c.strip()):
        shown = hits[(torch.arange(images) % len(attacked)) // 2 == i]
        if len(shown):
            per_context[context] = shown.float().mean().item()
    return AttackOutcome("context", concept, acc, images, time.perf_counter() - started,
                         {"prompts": len(attacked), "per_context": per_context})

