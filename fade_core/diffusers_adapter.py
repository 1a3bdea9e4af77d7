"""Adapter for diffusers models: a UNet2DConditionModel, a text encoder and a DDPM-family schedule.

It serves the embedded digits model and, with a VAE for :meth:`to_images`, any SD1.x-style
diffusers pipeline. Exported keys follow kohya's convention for SD UNets
(``lora_unet_<diffusers module path with underscores>``), which ComfyUI, A1111/Forge and
diffusers' ``load_lora_weights`` all read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .adapter import TEXT_ENCODER_PREFIX, Conditioning, DenoiserAdapter, per_sample


class DiffusersAdapter(DenoiserAdapter):
    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        tokenize: Callable[[Sequence[str]], torch.Tensor],
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        sample_shape: tuple[int, ...],
        model_name: str,
        images_from_samples: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sample_clip: float | None = None,
    ) -> None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction type {prediction_type!r}: use epsilon, v_prediction or sample")
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenize = tokenize
        self.alphas_cumprod = alphas_cumprod.double()
        self.prediction_type = prediction_type
        self._sample_shape = tuple(sample_shape)
        self.model_name = model_name
        self._images_from_samples = images_from_samples
        self.sample_clip = sample_clip
        self._null: Conditioning | None = None

    @property
    def denoiser(self) -> nn.Module:
        return self.unet

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        return self.encode_trainable(prompts)

    def encode_trainable(self, prompts: Sequence[str]) -> Conditioning:
        ids = self.tokenize(list(prompts)).to(self.device)
        return Conditioning({"context": self.text_encoder(ids).last_hidden_state})

    def word_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = self.tokenize(list(prompts)).to(self.device)
        config = self.text_encoder.config
        specials = torch.tensor([config.bos_token_id, config.eos_token_id, config.pad_token_id], device=ids.device)
        with torch.no_grad():
            embeddings = self.text_encoder.get_input_embeddings()(ids)
        return ids, embeddings, ~torch.isin(ids, specials)

    def encode_word_embeddings(self, ids: torch.Tensor, embeddings: torch.Tensor) -> Conditioning:
        # The encoder still needs the ids (CLIP pools at the EOS token); its embedding table's output
        # is swapped for the given rows for this one call.
        hook = self.text_encoder.get_input_embeddings().register_forward_hook(lambda module, args, output: embeddings)
        try:
            return Conditioning({"context": self.text_encoder(ids).last_hidden_state})
        finally:
            hook.remove()

    def null_conditioning(self) -> Conditioning:
        if self._null is None:
            self._null = self.encode([""])
        return self._null.to(self.device)  # the model may have moved since

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        last = len(self.alphas_cumprod) - 1
        return torch.linspace(last, 0, num_steps).round().long()

    def signal_noise(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alphas_cumprod[torch.as_tensor(level).long().to(self.alphas_cumprod.device)]
        return alpha_bar.sqrt().float(), (1.0 - alpha_bar).sqrt().float()

    def predict_x0(
        self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, guidance: float
    ) -> torch.Tensor:
        context = cond.tensors["context"]
        # the schedule's levels come from the CPU; the UNet embeds them on the sample's device
        level = torch.as_tensor(level).long().expand(x_t.shape[0])
        timesteps = level.to(x_t.device)
        if guidance == 1.0:
            output = self.unet(x_t, timesteps, encoder_hidden_states=context).sample
        else:
            null = self.null_conditioning().tensors["context"].expand_as(context)
            both = self.unet(
                torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), encoder_hidden_states=torch.cat([context, null])
            ).sample
            conditional, unconditional = both.chunk(2)
            output = unconditional + guidance * (conditional - unconditional)
        alpha, sigma = (per_sample(s, x_t) for s in self.signal_noise(level))
        if self.prediction_type == "epsilon":
            x0 = (x_t - sigma * output) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * x_t - sigma * output
        else:
            x0 = output
        return x0

    def lora_key(self, module_name: str) -> str:
        if module_name.startswith(TEXT_ENCODER_PREFIX):
            # kohya's SD1.x spelling (lora_te_text_model_encoder_layers_0_...), whichever module path
            # this transformers version gives the CLIP text model
            name = module_name.removeprefix(TEXT_ENCODER_PREFIX).removeprefix("text_model.")
            return "lora_te_text_model_" + name.replace(".", "_")
        return "lora_unet_" + module_name.replace(".", "_")

    def to_images(self, samples: torch.Tensor) -> torch.Tensor:
        if self._images_from_samples is None:
            return super().to_images(samples)
        return self._images_from_samples(samples)
