"""The adversary D_phi: a concept detector with one logit per concept (paper 4.1, multi-concept 6.2).

Two kinds:

- :class:`LatentAdversary`, a small CNN that reads samples in the denoiser's own space (latents,
  or pixels for pixel models); cheap, and needs no decoder.
- :class:`ClipFeatureAdversary`, linear heads on the image features of an open_clip vision tower
  whose weights come from a file the user names (no download); the tower stays frozen and the
  gradient flows through it to the images.

Both return logits of shape (N, num_concepts); ``sigmoid(logit)`` is D(x), the probability that
the concept is present.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import FadeInputError


class LatentAdversary(nn.Module):
    def __init__(self, in_channels: int, num_concepts: int, width: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.heads = nn.Linear(8 * width, num_concepts)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(samples))


class ClipFeatureAdversary(nn.Module):
    """Heads on frozen open_clip image features. ``to_images`` maps samples to [0, 1] images."""

    def __init__(
        self,
        vision_tower: nn.Module,
        image_size: int,
        feature_dim: int,
        num_concepts: int,
        to_images: Callable[[torch.Tensor], torch.Tensor],
        mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
        std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711),
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower.eval().requires_grad_(False)
        self.image_size = image_size
        self.to_images = to_images
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.heads = nn.Linear(feature_dim, num_concepts)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        images = self.to_images(samples)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        # Resized and normalised in torch, not by CLIP's PIL preprocessing, so gradients flow.
        images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        features = self.vision_tower((images - self.mean) / self.std)
        return self.heads(F.normalize(features, dim=-1))

    def train(self, mode: bool = True) -> ClipFeatureAdversary:
        super().train(mode)
        self.vision_tower.eval()
        return self


def load_clip_vision_tower(model_name: str, weights: str | Path | None, model_config: dict | None = None):
    """An open_clip visual tower: a named architecture (or a custom config) with weights from a
    local safetensors file. Returns (tower, image_size, feature_dim)."""
    import open_clip

    from .files import load_safetensors

    if model_config is not None:
        model = open_clip.CLIP(**model_config)
    else:
        try:
            model = open_clip.create_model(model_name, pretrained=None)
        except RuntimeError as error:
            raise FadeInputError(f"open_clip does not know the model {model_name!r}: {error}") from None
    if weights is not None:
        state = load_safetensors(weights)
        visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")} or state
        try:
            missing, _ = model.visual.load_state_dict(visual, strict=False)
        except RuntimeError as error:  # shapes that differ
            missing = [str(error).splitlines()[-1].strip()]
        if missing:
            raise FadeInputError(
                f"{Path(weights).name} does not fit the {model_name} vision tower ({len(missing)} problems, "
                f"for example {missing[0]}); give the weights of that architecture"
            )
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model.visual, int(size), int(model.visual.output_dim)


def fit_adversary(
    adversary: nn.Module,
    samples: torch.Tensor,
    heads: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> nn.Module:
    """Trains ``adversary`` from where it is on a fixed set of samples: ``steps`` Adam steps of BCE
    between its logit for each sample's head and the sample's label (1: concept), on ``batch_size``
    samples drawn with ``generator`` and passed through ``augment`` if given. Returns it in eval
    mode; ``on_step(step)`` is called after each step (a host stops the training by raising)."""
    optimizer = torch.optim.Adam(adversary.parameters(), lr=learning_rate)
    adversary.train()
    heads, labels = heads.to(samples.device), labels.to(samples.device)
    with torch.enable_grad():
        for step in range(1, steps + 1):
            chosen = torch.randint(0, len(samples), (min(batch_size, len(samples)),), generator=generator).to(samples.device)
            batch = samples[chosen] if augment is None else augment(samples[chosen])
            logits = adversary(batch).gather(1, heads[chosen, None]).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, labels[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step)
    return adversary.eval()


def build_adversary(
    kind: str,
    sample_shape: tuple[int, ...],
    num_concepts: int,
    *,
    to_images: Callable[[torch.Tensor], torch.Tensor] | None = None,
    clip_model: str = "ViT-B-32",
    clip_weights: str | Path | None = None,
    clip_config: dict | None = None,
    seed: int = 0,
) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "latent":
            return LatentAdversary(sample_shape[0], num_concepts)
        if kind == "clip":
            if to_images is None:
                raise FadeInputError("the CLIP adversary judges images: give it the decoder (a VAE in ComfyUI)")
            if clip_weights is None and clip_config is None:
                raise FadeInputError(
                    "the CLIP adversary needs vision weights: name a local open_clip .safetensors file "
                    "(nothing is downloaded), or use the latent adversary"
                )
            tower, size, dim = load_clip_vision_tower(clip_model, clip_weights, clip_config)
            return ClipFeatureAdversary(tower, size, dim, num_concepts, to_images)
    raise FadeInputError(f"unknown adversary {kind!r}; choose 'latent' or 'clip'")
