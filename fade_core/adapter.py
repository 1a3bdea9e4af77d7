"""The one interface between the FADE method and a host's text-to-image model.

Every host (the embedded diffusers model, ComfyUI's MODEL/CLIP pair, a diffusers pipeline) is
wrapped in a :class:`DenoiserAdapter`. The method only ever sees:

- conditioning, made from prompts (:meth:`encode`), as an opaque batch of tensors;
- the denoiser module, which may receive a LoRA, and the names of its candidate layers;
- a schedule of noise levels and, for each level, the signal and noise scales ``alpha, sigma``
  with ``x_t = alpha * x0 + sigma * noise``; that covers variance-preserving (eps and v) models
  and rectified flow (``alpha = 1 - sigma``) alike;
- one differentiable prediction of the clean sample x0, guidance included (:meth:`predict_x0`);
- the device the model computes on (:attr:`device`), where the method keeps every tensor of its loop;
- a LoRA on named modules (:meth:`attach_lora`) and the gradient of a loss with respect to named
  weights (:meth:`weight_probes`), attached however the host allows without changing the model
  for anyone else;
- where a host exposes them, the text encoder's input embeddings of a prompt's words
  (:meth:`word_embeddings`, :meth:`encode_word_embeddings`), for the attacks and the robust
  extension in token space.

Everything else (sampling, saliency, the adversary, training, export) is written once against
this interface.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import FadeInputError

if TYPE_CHECKING:
    from .lora import AttachedLora


@dataclass(frozen=True)
class Conditioning:
    """A batch of host conditioning: named tensors whose first dimension is the prompt index."""

    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, index: torch.Tensor | slice | Sequence[int]) -> Conditioning:
        if not isinstance(index, (torch.Tensor, slice)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return Conditioning({key: value[index] for key, value in self.tensors.items()})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        keys = parts[0].tensors.keys()
        return Conditioning({key: torch.cat([part.tensors[key] for part in parts]) for key in keys})

    def detach(self) -> Conditioning:
        return Conditioning({key: value.detach() for key, value in self.tensors.items()})

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning({key: value.to(device) for key, value in self.tensors.items()})


class DenoiserAdapter(abc.ABC):
    """A text-to-image model as FADE needs to see it. Subclasses wrap one host each."""

    #: A readable identity of the base model, written into exported LoRA metadata.
    model_name: str = "unknown"
    #: Pixel-space models know their range: the sampler clips x0 predictions to +-this value
    #: (as diffusers' DDIM ``clip_sample`` does). Latent models leave it None.
    sample_clip: float | None = None
    #: The conditioning tensor that cross-attention reads (per-token text embeddings).
    context_key: str = "context"
    #: The LoRA that :func:`fade_core.lora.attach_lora` attached, if any.
    lora: AttachedLora | None = None
    #: The text encoder, where this host lets a LoRA go into it too (its modules are LoRA candidates
    #: of the "text_encoder" family, named with :data:`TEXT_ENCODER_PREFIX`); None: the denoiser only.
    text_encoder: nn.Module | None = None
    #: True where guidance is an input of the model (FLUX's distilled guidance) rather than classifier-free
    #: guidance, ``u + g (c - u)`` over a conditional and an unconditional (empty-prompt) prediction.
    distilled_guidance: bool = False

    @property
    def device(self) -> torch.device:
        """Where the model computes; the method keeps its loop's tensors (noise, trajectories,
        adversary, LoRA) there."""
        return next(self.denoiser.parameters()).device

    @property
    @abc.abstractmethod
    def denoiser(self) -> nn.Module:
        """The module that LoRA layers are injected into, and whose names they carry."""

    @property
    @abc.abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample in the denoiser's space (latents, or pixels for pixel models)."""

    @abc.abstractmethod
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for each prompt, without gradient."""

    @abc.abstractmethod
    def noise_levels(self, num_steps: int) -> torch.Tensor:
        """The sampling schedule in host units (timesteps, sigmas), from pure noise to clean."""

    @abc.abstractmethod
    def signal_noise(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` at each noise level, so that ``x_t = alpha * x0 + sigma * noise``."""

    @abc.abstractmethod
    def predict_x0(
        self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, guidance: float
    ) -> torch.Tensor:
        """One differentiable x0 prediction, with classifier-free or distilled guidance."""

    #: Module families a LoRA may be restricted to, as name tests. "cross_attention" holds the
    #: projections that read the text (the paper finds the concept's saliency there); hosts whose
    #: names differ (FLUX's joint attention) override this.
    families: dict[str, Callable[[str], bool]] = {
        "cross_attention": lambda name: ".attn2." in name and name.rsplit(".", 1)[-1] in ("to_k", "to_v"),
        "attention": lambda name: ".attn1." in name or ".attn2." in name,
        "all": lambda name: True,
    }

    def lora_candidates(self, family: str = "all") -> dict[str, nn.Module]:
        """Linear and Conv2d layers of :attr:`denoiser` in a family, by module name; the family
        "text_encoder" holds the linear layers of :attr:`text_encoder`, named with its prefix."""
        if family == TEXT_ENCODER_FAMILY and self.text_encoder is not None:
            return {
                TEXT_ENCODER_PREFIX + name: module
                for name, module in self.text_encoder.named_modules()
                if isinstance(module, nn.Linear)
            }
        if family not in self.families:
            choices = [*self.families, *([TEXT_ENCODER_FAMILY] if self.text_encoder is not None else [])]
            raise FadeInputError(f"unknown module family {family!r}; choose one of {', '.join(choices)}")
        accepts = self.families[family]
        return {
            name: module
            for name, module in self.denoiser.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and accepts(name)
        }

    @property
    def trains_text_encoder(self) -> bool:
        """Whether the attached LoRA reaches into the text encoder: then prompts are encoded anew,
        with gradient, wherever the current model reads them (:meth:`encode_trainable`)."""
        return self.lora is not None and any(name.startswith(TEXT_ENCODER_PREFIX) for name in self.lora.factors())

    def encode_trainable(self, prompts: Sequence[str]) -> Conditioning:
        """Conditioning for each prompt through the current text encoder, with gradient."""
        raise FadeInputError(f"{type(self).__name__} cannot train its text encoder; choose a denoiser module family")

    def word_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompts' token ids, the text encoder's input embeddings for them, and a mask of the
        positions that hold words (not BOS, EOS or padding): what a textual-inversion file replaces."""
        raise FadeInputError(f"{type(self).__name__} does not expose its text encoder's input embeddings")

    def encode_word_embeddings(self, ids: torch.Tensor, embeddings: torch.Tensor) -> Conditioning:
        """Conditioning read by the current text encoder from the given input embeddings (one row per
        token of ``ids``), with gradient."""
        raise FadeInputError(f"{type(self).__name__} does not expose its text encoder's input embeddings")

    def encode_soft_words(
        self, ids: torch.Tensor, embeddings: torch.Tensor, words: torch.Tensor, soft: torch.Tensor
    ) -> Conditioning:
        """:meth:`encode_word_embeddings` with ``soft`` rows at the word positions (``words``, as
        :meth:`word_embeddings` marks them) and the tokenizer's ``embeddings`` for BOS, EOS and
        padding, which a textual-inversion file cannot change."""
        return self.encode_word_embeddings(ids, torch.where(words.unsqueeze(-1), soft, embeddings))

    @abc.abstractmethod
    def lora_key(self, module_name: str) -> str:
        """The exported LoRA key prefix for a denoiser module, as the target loaders expect it."""

    def to_images(self, samples: torch.Tensor) -> torch.Tensor:
        """Samples to images in [0, 1], shape (N, C, H, W). Latent models decode here."""
        raise NotImplementedError(f"{type(self).__name__} cannot turn samples into images")

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.signal_noise(level)
        return per_sample(alpha, x0) * x0 + per_sample(sigma, x0) * noise

    def freeze(self) -> None:
        """Freezes the denoiser (and the text encoder); LoRA layers bring their own trainable parameters."""
        self.denoiser.requires_grad_(False)
        if self.text_encoder is not None:
            self.text_encoder.requires_grad_(False)

    def attach_lora(self, module_names: Sequence[str], rank: int, alpha: float, seed: int) -> AttachedLora:
        """Puts LoRA layers on the named modules of :attr:`denoiser` (and of :attr:`text_encoder`,
        for names with its prefix). This default injects peft layers into the modules themselves,
        for models the caller owns; a host whose model is shared attaches them its own way. Call
        it through :func:`fade_core.lora.attach_lora`."""
        from .lora import CombinedLora, PeftLora

        text = [name.removeprefix(TEXT_ENCODER_PREFIX) for name in module_names if name.startswith(TEXT_ENCODER_PREFIX)]
        denoiser = [name for name in module_names if not name.startswith(TEXT_ENCODER_PREFIX)]
        parts = {}
        if denoiser:
            parts[""] = PeftLora(self.denoiser, denoiser, rank, alpha, seed)
        if text:
            parts[TEXT_ENCODER_PREFIX] = PeftLora(self.text_encoder, text, rank, alpha, seed)
        return parts[""] if list(parts) == [""] else CombinedLora(parts)

    @contextlib.contextmanager
    def weight_probes(self, module_names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Inside the block, tensors whose gradient is the gradient of the model's output with
        respect to each named module's weight. This default hands out the weights themselves,
        with gradients switched on for the block."""
        modules = dict(self.denoiser.named_modules())
        weights = {name: modules[name].weight for name in module_names}
        flags = {name: weight.requires_grad for name, weight in weights.items()}
        for weight in weights.values():
            weight.requires_grad_(True)
        try:
            yield weights
        finally:
            for name, weight in weights.items():
                weight.requires_grad_(flags[name])


TEXT_ENCODER_FAMILY = "text_encoder"
TEXT_ENCODER_PREFIX = "text_encoder."


def per_sample(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
    return scale.reshape(-1, *([1] * (like.dim() - 1))) if scale.dim() else scale
