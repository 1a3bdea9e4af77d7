"""Attacks on an erased model: the measuring instrument for whether an erasure holds.

None of these runs during training; they look for a way to bring the erased concept back that the
eraser never saw.

- :func:`embedding_attack`, in the spirit of UnlearnDiffAtk and of textual inversion against
  erasure: the attacker keeps the erased weights but searches the text-embedding space for a
  conditioning that makes the model denoise real images of the concept again. Starting from the
  encoding of prompts that name the concept, the per-token embeddings that cross-attention reads
  are optimised to minimise the denoising loss on real concept samples (x0 error with the
  (alpha/sigma)^2 weight, i.e. the usual noise-prediction loss), at noise levels drawn from the
  sampling schedule. Several starting prompts are optimised side by side, so that the caller can
  keep the worst case. In token space (``space="tokens"``) the same search moves only the input
  embeddings of the prompt's words and reads them through the erased model's own text encoder:
  a textual-inversion embedding, which is what a ComfyUI or A1111 user can load and share, and
  the only kind of attack that an edit of the text encoder can stand against.
- :func:`greedy_prompt_search`, a discrete attack: words inserted into, or replacing words of, a
  prompt, kept whenever they raise a score the caller computes (for example the evaluator's
  probability of the concept on generations from the prompt).
- :func:`context_attack`: concept prompts with context phrases the eraser never saw, put before or
  after them.

Everything here is host-free and deterministic for a seed; the scores come from a callable, so the
same search serves any model and any judge.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .adapter import Conditioning, DenoiserAdapter
from .errors import FadeInputError
from .sampling import noise_prediction_error

#: ``score(prompts)``: one number per prompt, higher meaning more of the concept (for example the
#: mean probability an evaluator gives the concept on a few seeded generations from each prompt).
PromptScore = Callable[[list[str]], torch.Tensor]


def embedding_attack(
    adapter: DenoiserAdapter,
    prompts: str | Sequence[str],
    real_samples: torch.Tensor | Sequence[torch.Tensor],
    *,
    steps: int = 300,
    batch_size: int = 2,
    learning_rate: float = 1e-2,
    sampling_steps: int = 10,
    seed: int = 0,
    space: str = "context",
    initial: torch.Tensor | None = None,
) -> Conditioning:
    """Soft conditionings optimised to denoise ``real_samples``, one row per starting prompt.
    ``real_samples`` is one tensor for every start, or a list with one tensor per start (starts
    aimed at different concepts share the model calls).

    ``space`` is what the attacker may change. "context": the per-token states that cross-attention
    reads, every position free (an attacker who feeds the denoiser any conditioning tensor).
    "tokens": the text encoder's input embeddings of the prompt's words, read through the erased
    model's text encoder (a textual-inversion embedding, the kind of file that ComfyUI's
    ``embedding:`` syntax and A1111 load in place of words); it needs a host that exposes them
    (:meth:`DenoiserAdapter.word_embeddings`).

    Start i draws its own minibatches (real samples, noise levels, noise; ``batch_size`` per step)
    from seed ``seed + i`` and keeps its own embeddings: it ends exactly where it would alone with
    that seed. The starts are batched together only to share the model calls. Their own streams
    matter: from nearby encodings, the same minibatches would move every start in step (Adam's
    steps are nearly sign steps) and the starts would find one conditioning, not several.
    ``result[i]`` is the conditioning found from ``prompts[i]``.

    ``initial``, if given, is where the soft tensors start instead of the prompts' own encodings
    (context space: a context tensor such as an earlier result's, one row per prompt): an attack
    that goes on from where an earlier one ended, against a model that has moved since.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise FadeInputError("the embedding attack needs at least one starting prompt that names the concept")
    per_start = list(real_samples) if isinstance(real_samples, (list, tuple)) else [real_samples] * len(prompts)
    if len(per_start) != len(prompts):
        raise FadeInputError(
            f"the embedding attack got {len(per_start)} sets of samples for {len(prompts)} starting prompts; give one per start"
        )
    if any(len(samples) == 0 for samples in per_start):
        raise FadeInputError("the embedding attack needs real samples of the concept to denoise; none were given")
    if steps < 0 or batch_size < 1:
        raise FadeInputError(f"steps ({steps}) must be 0 or more and batch_size ({batch_size}) at least 1")
    if space not in ("context", "tokens"):
        raise FadeInputError(f"unknown attack space {space!r}: use 'context' or 'tokens'")
    if initial is not None and space != "context":
        raise FadeInputError("the embedding attack starts from an initial tensor in context space only; give space='context'")
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    cond = adapter.encode(prompts)
    if space == "tokens":
        ids, embeddings, words = adapter.word_embeddings(prompts)
        soft = embeddings.detach().clone().requires_grad_(True)

        def context() -> torch.Tensor:
            return adapter.encode_soft_words(ids, embeddings, words, soft).tensors[adapter.context_key]
    else:
        start = cond.tensors[adapter.context_key] if initial is None else initial.to(cond.tensors[adapter.context_key])
        if start.shape != cond.tensors[adapter.context_key].shape:
            raise FadeInputError(
                f"the embedding attack's initial context has shape {tuple(start.shape)}; give one of "
                f"{tuple(cond.tensors[adapter.context_key].shape)}, a row per starting prompt"
            )
        soft = start.detach().clone().requires_grad_(True)
        context = lambda: soft  # noqa: E731
    optimizer = torch.optim.Adam([soft], lr=learning_rate)
    levels = adapter.noise_levels(sampling_steps)
    frozen = [p for p in adapter.denoiser.parameters() if p.requires_grad]
    if adapter.text_encoder is not None:
        frozen += [p for p in adapter.text_encoder.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            x0, level, noise = [], [], []
            for generator, samples in zip(generators, per_start):  # rows i * batch_size ... belong to start i
                x0.append(samples[torch.randint(0, len(samples), (batch_size,), generator=generator)])
                level.append(levels[torch.randint(0, sampling_steps, (batch_size,), generator=generator)])
                noise.append(torch.randn(x0[-1].shape, generator=generator))
            # drawn on the CPU (the generators'), computed on the model's device
            x0, level, noise = torch.cat(x0).to(adapter.device), torch.cat(level), torch.cat(noise).to(adapter.device)
            tensors = {k: v.repeat_interleave(batch_size, dim=0) for k, v in cond.tensors.items()}
            tensors[adapter.context_key] = context().repeat_interleave(batch_size, dim=0)
            prediction = adapter.predict_x0(adapter.add_noise(x0, noise, level), level, Conditioning(tensors), 1.0)
            # The sum of each start's mean loss: every start gets the gradient it would get alone.
            loss = len(prompts) * noise_prediction_error(adapter, prediction, x0, level)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            found = context().detach()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return Conditioning(dict(cond.tensors) | {adapter.context_key: found})


@dataclass
class PromptSearchResult:
    prompt: str  # the best prompt found
    score: float  # its score
    history: list[float] = field(default_factory=list)  # best score before round 1, then after each round
    prompts: list[str] = field(default_factory=list)  # the best prompt at the same moments
    evaluations: int = 0  # prompts scored, the start included


def greedy_prompt_search(
    score: PromptScore,
    start_prompt: str,
    vocabulary: Sequence[str],
    *,
    rounds: int = 5,
    candidates: int = 8,
    protected: Sequence[str] = (),
    seed: int = 0,
) -> PromptSearchResult:
    """Greedy search over word edits of a prompt that maximises ``score``.

    Each round draws ``candidates`` distinct edits of the current best prompt, each either a
    vocabulary word inserted at a random place (the front and the end included) or a word of the
    prompt replaced by one; all are scored in one call, and the best replaces the current prompt
    when it scores higher. Words in ``protected`` (for example the concept's name, to keep the
    prompt about the concept) are never replaced. A score callable with fixed seeds (the same
    noise for every prompt) makes rounds comparable and the search deterministic; the score of
    the result is then biased upward by the selection, so measure the found prompt again on
    fresh seeds.
    """
    words = [w.strip() for w in vocabulary if w.strip()]
    if not words:
        raise FadeInputError("the prompt search needs a vocabulary: give at least one candidate word")
    if rounds < 1 or candidates < 1:
        raise FadeInputError(f"rounds ({rounds}) and candidates ({candidates}) must be at least 1")
    if not start_prompt.strip():
        raise FadeInputError("the prompt search needs a start prompt that names the concept")
    rng = random.Random(seed)
    keep = {w.lower() for w in protected}
    best = " ".join(start_prompt.split())
    best_score = _scores(score, [best])[0]
    result = PromptSearchResult(best, best_score, [best_score], [best], 1)
    for _ in range(rounds):
        proposals = _edits(best, words, keep, candidates, rng)
        if not proposals:
            break
        values = _scores(score, proposals)
        result.evaluations += len(proposals)
        top = max(range(len(proposals)), key=values.__getitem__)
        if values[top] > best_score:
            best, best_score = proposals[top], values[top]
        result.history.append(best_score)
        result.prompts.append(best)
    result.prompt, result.score = best, best_score
    return result


def _edits(prompt: str, vocabulary: list[str], protected: set[str], count: int, rng: random.Random) -> list[str]:
    """Up to ``count`` distinct prompts, each one word insertion or replacement away from ``prompt``."""
    tokens = prompt.split()
    replaceable = [i for i, token in enumerate(tokens) if token.lower().strip(",.;:!?") not in protected]
    found: dict[str, None] = {}
    for _ in range(20 * count):
        if len(found) == count:
            break
        word = rng.choice(vocabulary)
        if replaceable and rng.random() < 0.5:
            edited = list(tokens)
            edited[rng.choice(replaceable)] = word
        else:
            position = rng.randint(0, len(tokens))
            edited = tokens[:position] + [word] + tokens[position:]
        candidate = " ".join(edited)
        if candidate != prompt:
            found.setdefault(candidate)
    return list(found)


def _scores(score: PromptScore, prompts: list[str]) -> list[float]:
    values = torch.as_tensor(score(prompts)).detach().float().reshape(-1)
    if values.numel() != len(prompts):
        raise FadeInputError(f"the score callable returned {values.numel()} values for {len(prompts)} prompts; it must return one per prompt")
    return values.tolist()


def with_contexts(prompts: Sequence[str], contexts: Sequence[str]) -> list[str]:
    """Each context phrase after a concept prompt (``"<prompt>, <context>"``) and before one
    (``"<context>, <prompt>"``); the prompts are cycled over the contexts, so every phrase is tried
    in both places and the list stays twice as long as ``contexts``."""
    prompts = [p.strip() for p in prompts if p.strip()]
    contexts = [c.strip() for c in contexts if c.strip()]
    if not prompts or not contexts:
        raise FadeInputError("the context attack needs concept prompts and context phrases; one of the lists is empty")
    out = []
    for i, context in enumerate(contexts):
        out.append(f"{prompts[(2 * i) % len(prompts)]}, {context}")
        out.append(f"{context}, {prompts[(2 * i + 1) % len(prompts)]}")
    return out


@dataclass
class ContextAttackResult:
    prompts: list[str]
    scores: list[float]

    @property
    def mean_score(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def worst_prompt(self) -> str:
        """The prompt that scored highest: the context that brings most of the concept back."""
        return self.prompts[max(range(len(self.scores)), key=self.scores.__getitem__)]


def context_attack(score: PromptScore, prompts: Sequence[str], contexts: Sequence[str]) -> ContextAttackResult:
    """Scores every concept prompt in every held-out context (see :func:`with_contexts`)."""
    attacked = with_contexts(prompts, contexts)
    return ContextAttackResult(attacked, _scores(score, attacked))
