"""Deterministic DDIM sampling over any :class:`DenoiserAdapter`.

The sampler works in x0-space: at each level the adapter predicts x0, the implied noise is
recovered from ``x_t = alpha * x0 + sigma * noise``, and both are re-combined at the next level.
With ``alpha = 1 - sigma`` this is the Euler step of rectified flow, so one sampler serves every
parameterisation.

Steps are indexed from 0 (pure noise) to ``num_steps - 1`` (nearly clean). FADE's preservation
cut-off T0 is a fraction of that index range counted from step 0, the high-noise end.
"""

from __future__ import annotations

import torch

from .adapter import Conditioning, DenoiserAdapter, per_sample


def initial_noise(adapter: DenoiserAdapter, count: int, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise on the model's device, drawn on the CPU from a CPU generator so that
    a seed gives the same noise on every device."""
    return torch.randn((count, *adapter.sample_shape), generator=generator).to(adapter.device)


def ddim_step(
    adapter: DenoiserAdapter, x_t: torch.Tensor, x0: torch.Tensor, level: torch.Tensor, next_level: torch.Tensor | None
) -> torch.Tensor:
    if next_level is None:
        return x0
    alpha, sigma = (per_sample(s, x_t) for s in adapter.signal_noise(level))
    noise = (x_t - alpha * x0) / sigma
    return adapter.add_noise(x0, noise, next_level)


@torch.no_grad()
def trajectory_states(
    adapter: DenoiserAdapter,
    cond: Conditioning,
    noise: torch.Tensor,
    *,
    num_steps: int,
    guidance: float,
    at_steps: list[int],
) -> dict[int, torch.Tensor]:
    """The states x_t of the sampling trajectory at the given step indices, without gradient.

    Step k's state is the input of the model at step k (``k = 0`` is the scaled initial noise,
    ``k = num_steps`` the final sample).
    """
    levels = adapter.noise_levels(num_steps)
    x = adapter.add_noise(torch.zeros_like(noise), noise, levels[0].expand(noise.shape[0]))
    states = {}
    for i in range(max(at_steps) + 1):
        if i in at_steps:
            states[i] = x
        if i == num_steps:
            break
        level = levels[i].expand(noise.shape[0])
        x0 = adapter.predict_x0(x, level, cond, guidance)
        if adapter.sample_clip is not None:
            x0 = x0.clamp(-adapter.sample_clip, adapter.sample_clip)
        next_level = levels[i + 1].expand(noise.shape[0]) if i + 1 < num_steps else None
        x = ddim_step(adapter, x, x0, level, next_level)
    return states


def sample(
    adapter: DenoiserAdapter, cond: Conditioning, noise: torch.Tensor, *, num_steps: int, guidance: float
) -> torch.Tensor:
    """Final samples from the given initial noise."""
    return trajectory_states(adapter, cond, noise, num_steps=num_steps, guidance=guidance, at_steps=[num_steps])[num_steps]


def noise_prediction_error(
    adapter: DenoiserAdapter, x0: torch.Tensor, x0_target: torch.Tensor, level: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of x0 predictions weighted by (alpha / sigma)^2 per sample: at a fixed
    x_t that is exactly the error of the implied noise predictions, the usual diffusion loss."""
    alpha, sigma = adapter.signal_noise(level)
    return (per_sample((alpha / sigma) ** 2, x0) * (x0 - x0_target) ** 2).mean()


def preservation_steps(num_steps: int, t0_fraction: float) -> range:
    """Step indices inside the preservation window: the first ``t0_fraction`` of the trajectory,
    counted from pure noise. At least one step, so that a tiny fraction still preserves something."""
    if not 0.0 < t0_fraction <= 1.0:
        raise ValueError(f"t0_fraction must be in (0, 1], got {t0_fraction}; it is the share of sampling steps, from the noisy end, whose predictions on neutral prompts are preserved")
    return range(max(1, round(num_steps * t0_fraction)))


@torch.no_grad()
def generate(
    adapter: DenoiserAdapter,
    prompts: list[str],
    *,
    seed: int,
    num_steps: int,
    guidance: float,
    batch_size: int = 256,
) -> torch.Tensor:
    """Final samples for each prompt; sample i always starts from the same noise for a seed."""
    generator = torch.Generator().manual_seed(seed)
    noise = initial_noise(adapter, len(prompts), generator)
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        cond = adapter.encode(chunk).to(adapter.device)
        outputs.append(sample(adapter, cond, noise[start : start + len(chunk)], num_steps=num_steps, guidance=guidance))
    return torch.cat(outputs)
