"""Which weights carry the concept: summed absolute gradients of a concept loss (paper 4.2, 4.3).

The concept loss is the gap between the model's x0 predictions for a concept prompt and for its
neutral twin, at noise levels along the model's own samples of the concept. Its gradient is
accumulated as |grad| per weight over the concept prompts; a module's score is the sum over its
weights. FADE trains a LoRA only on the modules chosen from that ranking.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapter import DenoiserAdapter
from .errors import FadeInputError
from .files import load_safetensors, read_safetensors_metadata, save_safetensors
from .prompts import PromptSet
from .sampling import initial_noise, sample


@dataclass
class Saliency:
    """Scores of every candidate module, and the modules chosen for the LoRA."""

    module_scores: dict[str, float]
    module_sizes: dict[str, int]
    selected: list[str]
    criterion: str
    weight_scores: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.module_scores.items(), key=lambda item: item[1], reverse=True)

    def summary(self, limit: int = 15) -> str:
        total = sum(self.module_scores.values()) or 1.0
        chosen = set(self.selected)
        lines = [
            f"{len(self.selected)} of {len(self.module_scores)} modules selected ({self.criterion}), "
            f"{sum(self.module_sizes[m] for m in self.selected):,} of {sum(self.module_sizes.values()):,} weights, "
            f"{sum(self.module_scores[m] for m in self.selected) / total:.1%} of the saliency mass"
        ]
        for rank, (name, score) in enumerate(self.ranked()[:limit], start=1):
            mark = "*" if name in chosen else " "
            lines.append(f"{mark}{rank:3d}. {score / total:6.2%}  {name}")
        return "\n".join(lines)

    def reselect(self, top_k: int | None = None, mass_fraction: float | None = None) -> Saliency:
        selected, criterion = select_modules(self.module_scores, top_k=top_k, mass_fraction=mass_fraction)
        return Saliency(self.module_scores, self.module_sizes, selected, criterion, self.weight_scores)

    def save(self, path: str | Path) -> Path:
        metadata = {
            "module_scores": json.dumps(self.module_scores),
            "module_sizes": json.dumps(self.module_sizes),
            "selected": json.dumps(self.selected),
            "criterion": self.criterion,
        }
        tensors = self.weight_scores or {"_empty": torch.zeros(0)}
        return save_safetensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | Path) -> Saliency:
        metadata = read_safetensors_metadata(path)
        try:
            scores = json.loads(metadata["module_scores"])
            sizes = json.loads(metadata["module_sizes"])
            selected = json.loads(metadata["selected"])
            criterion = metadata["criterion"]
        except KeyError as missing:
            raise FadeInputError(f"{path} is not a saliency file (no {missing} in its metadata)") from None
        weights = {k: v for k, v in load_safetensors(path).items() if k != "_empty"}
        return cls(scores, sizes, selected, criterion, weights)


def check_budget(top_k: int | None, mass_fraction: float | None) -> None:
    if (top_k is None) == (mass_fraction is None):
        raise FadeInputError("give exactly one saliency budget: top_k (a number of modules) or mass_fraction (0 to 1)")
    if top_k is not None and top_k < 1:
        raise FadeInputError(f"top_k is {top_k}; select at least one module")
    if mass_fraction is not None and not 0.0 < mass_fraction <= 1.0:  # NaN fails this too
        raise FadeInputError(f"mass_fraction is {mass_fraction}; use a share of the saliency in (0, 1], such as 0.9")


def select_modules(
    scores: dict[str, float], *, top_k: int | None = None, mass_fraction: float | None = None
) -> tuple[list[str], str]:
    """The top-k modules, or the fewest modules that hold ``mass_fraction`` of the total score."""
    check_budget(top_k, mass_fraction)
    ranked = sorted(scores, key=scores.get, reverse=True)
    if top_k is not None:
        return ranked[:top_k], f"top_k={top_k}"
    total, running, chosen = sum(scores.values()), 0.0, []
    for name in ranked:
        chosen.append(name)
        running += scores[name]
        if running >= mass_fraction * total:
            break
    return chosen, f"mass_fraction={mass_fraction}"


def compute_saliency(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    *,
    top_k: int | None = None,
    mass_fraction: float | None = None,
    num_prompts: int = 32,
    batch_size: int = 16,
    num_sampling_steps: int = 10,
    guidance: float = 1.0,
    family: str = "cross_attention",
    keep_weight_scores: bool = False,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Saliency:
    """Ranks the denoiser's Linear/Conv2d layers by their summed |gradient| of the concept gap.

    ``family`` limits the candidates: "cross_attention" (default; the text-reading projections,
    where the paper finds the concept), "attention", or "all". ``progress`` is called with
    (done, total) after every batch.
    """
    check_budget(top_k, mass_fraction)  # before any work, like every other setting
    if num_prompts < 1 or batch_size < 1 or num_sampling_steps < 1:
        raise FadeInputError(
            f"prompts {num_prompts}, batch size {batch_size} and sampling steps {num_sampling_steps} must each be 1 or more"
        )
    if not math.isfinite(guidance):
        raise FadeInputError(f"guidance is {guidance}; use a finite CFG scale (usually 1 to 10)")
    modules = adapter.lora_candidates(family)
    if not modules:
        raise FadeInputError(f"the denoiser has no {family} modules to rank; choose another family")
    pairs = prompt_set.pairs("train")
    rng = random.Random(seed)
    chosen = [pairs[rng.randrange(len(pairs))] for _ in range(num_prompts)]
    generator = torch.Generator().manual_seed(seed)
    levels = adapter.noise_levels(num_sampling_steps)

    # Every prompt is encoded before the denoiser runs: a host may have to unload one model to
    # load the other.
    concepts = adapter.encode([p.concept_prompt for p in chosen]).to(adapter.device)
    neutrals = adapter.encode([p.neutral_prompt for p in chosen]).to(adapter.device)
    sums: dict[str, torch.Tensor] = {}
    with adapter.weight_probes(list(modules)) as probes:
        batches = range(0, len(chosen), batch_size)
        for done, start in enumerate(batches, start=1):
            batch = chosen[start : start + batch_size]
            concept, neutral = concepts[start : start + batch_size], neutrals[start : start + batch_size]
            noise = initial_noise(adapter, len(batch), generator)
            # The model's own picture of the concept, re-noised at a random step of its trajectory.
            x0 = sample(adapter, concept, noise, num_steps=num_sampling_steps, guidance=guidance)
            step = torch.randint(0, num_sampling_steps, (len(batch),), generator=generator)
            fresh = torch.randn(x0.shape, generator=generator).to(x0.device)
            x_t = adapter.add_noise(x0, fresh, levels[step])
            gap = adapter.predict_x0(x_t, levels[step], concept, 1.0) - adapter.predict_x0(x_t, levels[step], neutral, 1.0)
            loss = gap.pow(2).flatten(1).sum(1).mean()
            grads = torch.autograd.grad(loss, list(probes.values()), allow_unused=True)
            for name, grad in zip(probes, grads):
                if grad is not None:
                    magnitude = grad.detach().abs().float()
                    sums[name] = sums[name] + magnitude if name in sums else magnitude
            if progress is not None:
                progress(done, len(batches))
    sums = {name: sums.get(name, torch.zeros(module.weight.shape)) for name, module in modules.items()}

    scores = {name: float(total.sum()) for name, total in sums.items()}
    sizes = {name: module.weight.numel() for name, module in modules.items()}
    if not any(scores.values()):
        raise FadeInputError(
            "every saliency score is zero: the concept and neutral prompts give the same predictions; "
            "check that the model knows the concept and that the prompts differ"
        )
    selected, criterion = select_modules(scores, top_k=top_k, mass_fraction=mass_fraction)
    weight_scores = {name: total.cpu() for name, total in sums.items()} if keep_weight_scores else {}
    return Saliency(scores, sizes, selected, criterion, weight_scores)
