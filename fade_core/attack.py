"""An embedding-space attack on an erased model, in the spirit of UnlearnDiffAtk and of textual
inversion against erasure: the attacker keeps the erased weights but searches the text-embedding
space for a conditioning that makes the model denoise real images of the concept again.

Starting from the encoding of a prompt that names the concept, the per-token embeddings that
cross-attention reads are optimised to minimise the denoising loss on real concept samples
(x0 error with the (alpha/sigma)^2 weight, i.e. the usual noise-prediction loss), at noise levels
drawn from the sampling schedule. The result is a Conditioning to sample from.
"""

from __future__ import annotations

import torch

from .adapter import Conditioning, DenoiserAdapter
from .sampling import noise_prediction_error


def embedding_attack(
    adapter: DenoiserAdapter,
    prompt: str,
    real_samples: torch.Tensor,
    *,
    steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 1e-2,
    sampling_steps: int = 10,
    seed: int = 0,
) -> Conditioning:
    generator = torch.Generator().manual_seed(seed)
    cond = adapter.encode([prompt])
    soft = cond.tensors[adapter.context_key].detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([soft], lr=learning_rate)
    levels = adapter.noise_levels(sampling_steps)
    frozen = [p for p in adapter.denoiser.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            chosen = torch.randint(0, len(real_samples), (batch_size,), generator=generator)
            x0 = real_samples[chosen]
            level = levels[torch.randint(0, sampling_steps, (batch_size,), generator=generator)]
            x_t = adapter.add_noise(x0, torch.randn(x0.shape, generator=generator), level)
            tensors = {k: v.expand(batch_size, *v.shape[1:]) for k, v in cond.tensors.items()}
            tensors[adapter.context_key] = soft.expand(batch_size, *soft.shape[1:])
            loss = noise_prediction_error(adapter, adapter.predict_x0(x_t, level, Conditioning(tensors), 1.0), x0, level)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    tensors = dict(cond.tensors)
    tensors[adapter.context_key] = soft.detach()
    return Conditioning(tensors)
