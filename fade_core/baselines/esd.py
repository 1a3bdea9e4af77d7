"""ESD, Erased Stable Diffusion (Gandikota et al., 2023), as a baseline behind FADE's interface.

The model is fine-tuned so that, for the concept prompt c, it predicts what the frozen model
predicts with negative guidance away from c:

    target = x0*(x_t, null) - eta * (x0*(x_t, c) - x0*(x_t, null))

on states x_t that the model being erased samples itself for c (the authors' recipe). The paper
states it for noise predictions; at a fixed x_t the noise prediction is (x_t - alpha x0) / sigma,
so the same objective in x0 terms carries the weight (alpha / sigma)^2 per step, which keeps it
faithful for every parameterisation.
The update goes through a LoRA on the same salient modules as FADE, so that both methods get the
same adapter budget; ESD-x (cross-attention only) is the default family of the saliency step.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..adapter import DenoiserAdapter
from ..errors import FadeInputError, FadeTrainingError
from ..lora import attach_lora, lora_disabled, lora_state
from ..prompts import PromptSet
from ..sampling import initial_noise, noise_prediction_error, trajectory_states


@dataclass
class EsdConfig:
    steps: int = 200  # the authors' default iterations
    negative_guidance: float = 2.0  # eta, the authors' default
    batch_size: int = 8
    lora_rank: int = 4
    lora_alpha: float = 4.0
    learning_rate: float = 2e-3
    guidance: float = 2.0  # CFG of the states the model samples for itself
    sampling_steps: int = 10
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.sampling_steps < 1:
            raise FadeInputError("steps, batch_size and sampling_steps must be at least 1")
        if self.negative_guidance <= 0:
            raise FadeInputError(f"negative_guidance (eta) is {self.negative_guidance}; it must be positive")


@dataclass
class EsdResult:
    lora: dict[str, torch.Tensor]
    losses: list[float]
    seconds: float


def esd_target(adapter: DenoiserAdapter, x_t, level, concept, null, eta: float) -> torch.Tensor:
    """The frozen model's prediction guided away from the concept."""
    with torch.no_grad(), lora_disabled(adapter):
        unconditional = adapter.predict_x0(x_t, level, null, 1.0)
        conditional = adapter.predict_x0(x_t, level, concept, 1.0)
    return unconditional - eta * (conditional - unconditional)


def erase_esd(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    salient_modules: Sequence[str],
    config: EsdConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> EsdResult:
    """Trains the ESD LoRA in place (the adapter's denoiser keeps it) and returns its weights."""
    cfg = config or EsdConfig()
    cfg.check()
    started = time.time()
    rng = random.Random(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    parameters = attach_lora(adapter, salient_modules, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
    optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate)
    prompts = [pair.concept_prompt for pair in prompt_set.pairs("train")]
    concept_cond = adapter.encode(prompts)
    null = adapter.encode([""])
    levels = adapter.noise_levels(cfg.sampling_steps)
    losses = []
    for step in range(1, cfg.steps + 1):
        chosen = torch.tensor([rng.randrange(len(prompts)) for _ in range(cfg.batch_size)])
        concept = concept_cond[chosen]
        k = rng.randrange(cfg.sampling_steps)
        noise = initial_noise(adapter, cfg.batch_size, generator)
        x_t = trajectory_states(adapter, concept, noise, num_steps=cfg.sampling_steps, guidance=cfg.guidance, at_steps=[k])[k]
        level = levels[k].expand(cfg.batch_size)
        nulls = null[torch.zeros(cfg.batch_size, dtype=torch.long)]
        target = esd_target(adapter, x_t, level, concept, nulls, cfg.negative_guidance)
        loss = noise_prediction_error(adapter, adapter.predict_x0(x_t, level, concept, 1.0), target, level)
        if not torch.isfinite(loss):
            raise FadeTrainingError(f"the ESD loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    return EsdResult(lora_state(adapter), losses, time.time() - started)
