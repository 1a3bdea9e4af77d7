"""Measures an (erased) embedded model with the held-out evaluator: Acc, FID-proxy, CLIP-proxy.

Every figure comes from fresh generations, seeded, judged by :class:`DigitStyleEvaluator`, which
never saw a generated image.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..adapter import DenoiserAdapter
from ..errors import FadeInputError
from ..files import load_safetensors
from ..metrics import erasure_score, frechet_distance
from ..prompts import PromptSet, build_prompt_set, mentions, require_mentions
from ..sampling import generate
from . import data
from .evaluator import DigitStyleEvaluator
from .model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS, EVALUATOR_FILE


@functools.cache
def load_evaluator() -> DigitStyleEvaluator:
    evaluator = DigitStyleEvaluator()
    evaluator.load_state_dict(load_safetensors(EVALUATOR_FILE))
    return evaluator.eval().requires_grad_(False)


def default_prompt_set(concepts: Sequence[str], num_prompts: int = 48, seed: int = 0, synonyms=None) -> PromptSet:
    """The embedded model's prompt pairs for digits or styles (see data.eraser_templates)."""
    concepts = list(concepts)
    for concept in concepts:
        data.concept_kind(concept)
    category = data.concept_kind(concepts[0])
    if synonyms is None:
        synonyms = {c: data.eraser_synonyms(c) for c in concepts}
    return build_prompt_set(
        concepts,
        category,
        synonyms=synonyms,
        neutral=data.eraser_neutral_words(concepts),
        templates=data.eraser_templates(category),
        num_prompts=num_prompts,
        seed=seed,
        articles=False,  # the embedded model learned its captions with "a" before every digit ("a eight")
    )


@dataclass
class Scores:
    acc_concept: float
    acc_other: float
    fid_proxy: float
    clip_proxy: float
    n_images: int
    seed: int
    per_concept: dict[str, float]

    def with_h(self, base: Scores) -> dict[str, float]:
        """These scores plus H against the base model's FID- and CLIP-proxy."""
        h = erasure_score(self.acc_concept, self.fid_proxy, self.clip_proxy, base.fid_proxy, base.clip_proxy)
        return asdict(self) | {"H": h}


class DigitsJudge:
    def __init__(
        self,
        *,
        concept_images: int = 200,
        other_images: int = 270,
        num_steps: int = DEFAULT_SAMPLING_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int = 0,
    ) -> None:
        self.evaluator = load_evaluator()
        self.concept_images = concept_images
        self.other_images = other_images
        self.num_steps = num_steps
        self.guidance = guidance
        self.seed = seed

    def concept_prompts(self, concept: str) -> list[str]:
        """By default, the concept prompts of the eraser's own prompt set (training and validation)."""
        return [p.concept_prompt for p in default_prompt_set([concept]).pairs("all")]

    def other_captions(self, concepts: Sequence[str]) -> list[data.Caption]:
        """Prompts for every (digit, style) combination that names none of the erased concepts."""
        rng = random.Random(self.seed + 7)
        combos = [
            (d, s)
            for d in range(10)
            for s in data.STYLE_NAMES
            if data.DIGIT_NAMES[d] not in concepts and s not in concepts
        ]
        return [data.random_caption(*combos[i % len(combos)], rng) for i in range(self.other_images)]

    def _generate(self, adapter: DenoiserAdapter, prompts: list[str], seed: int) -> torch.Tensor:
        return generate(adapter, prompts, seed=seed, num_steps=self.num_steps, guidance=self.guidance)

    def _is_concept(self, digit_pred: torch.Tensor, style_pred: torch.Tensor, concept: str) -> torch.Tensor:
        if data.concept_kind(concept) == "object":
            return digit_pred == data.DIGIT_NAMES.index(concept)
        return style_pred == data.STYLE_NAMES.index(concept)

    @torch.no_grad()
    def measure(
        self, adapter: DenoiserAdapter, concepts: Sequence[str], prompts: Sequence[str] | None = None
    ) -> Scores:
        """Acc on the concept prompts (``prompts`` if given, else the default set), and the other
        concepts' accuracy, FID-proxy and CLIP-proxy on the non-target prompts."""
        concepts = list(concepts)
        per_concept, n_images = {}, 0
        for concept in concepts:
            words = [concept, *data.eraser_synonyms(concept), *data.held_out_synonyms(concept)]
            if prompts is not None:
                require_mentions(prompts, words, repr(concept))
                concept_prompts = [p for p in prompts if mentions(p, words)]
            else:
                concept_prompts = self.concept_prompts(concept)
            cycled = [concept_prompts[i % len(concept_prompts)] for i in range(self.concept_images)]
            digit_pred, style_pred = self.evaluator.classify(self._generate(adapter, cycled, self.seed))
            per_concept[concept] = self._is_concept(digit_pred, style_pred, concept).float().mean().item()
            n_images += len(cycled)

        captions = self.other_captions(concepts)
        samples = self._generate(adapter, [c.text for c in captions], self.seed + 1)
        digit_pred, style_pred = self.evaluator.classify(samples)
        digits = torch.tensor([c.digit for c in captions])
        styles = torch.tensor([data.STYLE_NAMES.index(c.style) for c in captions])
        kinds = {data.concept_kind(c) for c in concepts}
        other_ok = (digit_pred == digits) if kinds == {"object"} else (style_pred == styles)
        adherent = (digit_pred == digits) & (style_pred == styles)
        fid = frechet_distance(self.evaluator.features(samples.clamp(-1, 1)), self._reference_features(tuple(concepts)))
        return Scores(
            acc_concept=sum(per_concept.values()) / len(per_concept),
            acc_other=other_ok.float().mean().item(),
            fid_proxy=fid,
            clip_proxy=adherent.float().mean().item(),
            n_images=n_images + len(captions),
            seed=self.seed,
            per_concept=per_concept,
        )

    @functools.cache
    def _reference_features(self, concepts: tuple[str, ...]) -> torch.Tensor:
        """Evaluator features of the held-out real digits, in every style, minus the erased concepts."""
        images, digits = data.real_split("evaluator_test")
        keep = torch.tensor([data.DIGIT_NAMES[d] not in concepts for d in digits.tolist()])
        rendered = [
            data.to_model_range(data.apply_style(images[keep], style))
            for style in data.STYLE_NAMES
            if style not in concepts
        ]
        with torch.no_grad():
            return self.evaluator.features(torch.cat(rendered))


def check_concepts(concepts: Sequence[str]) -> list[str]:
    concepts = [c.strip().lower() for c in concepts]
    if not concepts or any(not c for c in concepts):
        raise FadeInputError("the concept is empty; name a digit (zero .. nine) or a style (bold, thin, inverted, slanted)")
    for concept in concepts:
        data.concept_kind(concept)
    return concepts
