"""ComfyUI's MODEL (a ModelPatcher), CLIP and optional VAE behind fade_core's adapter interface.

One x0 prediction covers every family ComfyUI knows, because ``BaseModel.apply_model`` already
returns the denoised sample through the model's own ``model_sampling`` (eps, v or flow). The
conventions this adapter relies on, read from ComfyUI's comfy/model_sampling.py and model_base.py:

- ComfyUI's noise level is sigma, and ``model_sampling.noise_scaling(sigma, noise, x0)`` forms
  x_t; probing it with (noise=0, x0=1) and (noise=1, x0=0) gives the adapter's ``(alpha, sigma)``
  for any parameterisation (alpha = 1 for eps/v, 1 - sigma for flow).
- Conditioning goes through ``BaseModel.extra_conds``, which adds what each family needs
  (SDXL's ADM vector, FLUX's pooled vector and distilled guidance).
- Samples live in the model's space: ``process_latent_in`` has been applied (as ComfyUI's sampler
  does), so decoding needs ``process_latent_out`` first.
- Prompts run under ``torch.inference_mode()``; training needs ordinary tensors, so
  :meth:`ComfyAdapter.make_trainable` swaps inference-mode parameters for equal ordinary ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..fade_core.adapter import Conditioning, DenoiserAdapter
from ..fade_core.errors import FadeInputError

SUPPORTED_SAMPLING = (comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION, comfy.model_sampling.CONST)

# FLUX and other joint-attention transformers read the text through the text stream's fused
# q/k/v projection: the counterpart of a UNet's cross-attention keys and values.
JOINT_ATTENTION_FAMILIES = {
    "cross_attention": lambda name: name.endswith("txt_attn.qkv"),
    "attention": lambda name: ".img_attn." in name or ".txt_attn." in name or name.startswith("single_blocks."),
    "all": lambda name: True,
}


class ComfyAdapter(DenoiserAdapter):
    context_key = "c_crossattn"

    def __init__(self, model, clip, *, width: int = 512, height: int = 512, vae=None, scheduler: str = "simple"):
        if model is None or clip is None:
            raise FadeInputError("connect both MODEL and CLIP from your checkpoint loader")
        comfy.model_management.load_models_gpu([model])  # puts patches from earlier nodes into the weights
        self.patcher = model
        self.base = model.model
        self.clip = clip
        self.vae = vae
        self.scheduler = scheduler
        self.device = model.load_device
        sampling = self.base.model_sampling
        if not isinstance(sampling, SUPPORTED_SAMPLING):
            raise FadeInputError(
                f"{type(self.base).__name__} predicts with {type(sampling).__name__}; FADE handles eps-, v- and "
                "flow-prediction models (SD1.x, SD2.x, SDXL, SD3, FLUX)"
            )
        latent = self.base.latent_format
        factor = getattr(latent, "spacial_downscale_ratio", 8)
        if width % factor or height % factor:
            raise FadeInputError(f"width and height must be multiples of {factor} for this model; got {width}x{height}")
        self._sample_shape = (latent.latent_channels, height // factor, width // factor)
        self.width, self.height = width, height
        self.model_name = type(self.base).__name__
        self.is_unet = isinstance(self.base.diffusion_model, UNetModel)
        if not self.is_unet:
            self.families = JOINT_ATTENTION_FAMILIES
        # The empty prompt's conditioning: CFG's unconditional half, and it shows whether the model
        # takes a distilled guidance value instead (FLUX).
        self.null = self.encode([""])
        self.distilled_guidance = "guidance" in self.null.tensors
        self._diffusers_names: dict[str, str] | None = None

    # -- the adapter interface -----------------------------------------------------------------------

    @property
    def denoiser(self) -> nn.Module:
        return self.base.diffusion_model

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._sample_shape

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        parts = [self._extra_conds(*self._encode_one(prompt)) for prompt in prompts]
        return Conditioning({key: _cat_repeating([part[key] for part in parts]) for key in parts[0]})

    def noise_levels(self, num_steps: int) -> torch.Tensor:
        sigmas = comfy.samplers.calculate_sigmas(self.base.model_sampling, self.scheduler, num_steps)
        return sigmas[:-1].float().cpu()  # the trailing 0 is the clean end, which the sampler reaches by itself

    def signal_noise(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.as_tensor(level, dtype=torch.float32).reshape(-1)
        ones, zeros = torch.ones(sigma.numel(), 1), torch.zeros(sigma.numel(), 1)
        sampling = self.base.model_sampling
        alpha = sampling.noise_scaling(sigma, zeros.clone(), ones.clone()).reshape(-1)
        scale = sampling.noise_scaling(sigma, ones.clone(), zeros.clone()).reshape(-1)
        return alpha.float().cpu(), scale.float().cpu()

    def predict_x0(self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, guidance: float) -> torch.Tensor:
        sigma = torch.as_tensor(level, dtype=torch.float32).reshape(-1).expand(x_t.shape[0])
        kwargs = {key: value.to(self.device) for key, value in cond.tensors.items()}
        x = x_t.to(self.device)
        sigma = sigma.to(self.device)
        with self._activations_kept():
            if self.distilled_guidance:
                kwargs["guidance"] = torch.full((x.shape[0],), float(guidance), device=self.device)
                x0 = self.base.apply_model(x, sigma, **kwargs)
            elif guidance == 1.0:
                x0 = self.base.apply_model(x, sigma, **kwargs)
            else:
                null = self.null.tensors
                both = {key: _cat_repeating([value, null[key].to(self.device).expand(value.shape[0], *value.shape[1:])])
                        for key, value in kwargs.items()}
                conditional, unconditional = self.base.apply_model(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
                x0 = unconditional + guidance * (conditional - unconditional)
        return x0.float().to(x_t.device)

    def _activations_kept(self):
        """FLUX's blocks add into their residual stream in place (``x += ...``) after a LayerNorm
        has saved it for backward, which autograd refuses. Saving a copy of each activation
        (never of a parameter) keeps the values backward needs; UNets need no such thing."""
        if self.is_unet or not torch.is_grad_enabled():
            return contextlib.nullcontext()
        return torch.autograd.graph.saved_tensors_hooks(_copy_activation, _unchanged)

    def lora_key(self, module_name: str) -> str:
        """kohya keys: diffusers module names for SD-family UNets (what A1111/Forge, diffusers and
        ComfyUI read), the model's own module names elsewhere (FLUX's ``double_blocks_0_...``,
        which ComfyUI reads directly and diffusers converts)."""
        if self.is_unet:
            if self._diffusers_names is None:
                mapping = comfy.utils.unet_to_diffusers(self.base.model_config.unet_config)
                self._diffusers_names = {
                    ldm.removesuffix(".weight"): diffusers.removesuffix(".weight")
                    for diffusers, ldm in mapping.items()
                    if ldm.endswith(".weight")
                }
            if module_name not in self._diffusers_names:
                raise FadeInputError(f"{module_name} has no diffusers name; restrict the LoRA to attention modules")
            module_name = self._diffusers_names[module_name]
        return "lora_unet_" + module_name.replace(".", "_")

    def to_images(self, samples: torch.Tensor) -> torch.Tensor:
        """Differentiable decoding (the CLIP-feature adversary needs gradients through it)."""
        if self.vae is None:
            raise FadeInputError("decoding needs the checkpoint's VAE: connect it to the node")
        latents = self.base.process_latent_out(samples.to(self.device))
        decoder = self.vae.first_stage_model
        pixels = decoder.decode(latents.to(next(decoder.parameters()).dtype))
        return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).to(samples.device)

    # -- ComfyUI specifics --------------------------------------------------------------------------

    def make_trainable(self) -> None:
        """Replaces parameters and buffers made under inference mode (every prompt's default in
        ComfyUI) by equal ordinary tensors; autograd refuses to save inference tensors."""
        modules = [self.base] + ([self.vae.first_stage_model] if self.vae is not None else [])
        with torch.inference_mode(False):
            for root in modules:
                for module in root.modules():
                    for name, parameter in list(module.named_parameters(recurse=False)):
                        if parameter.is_inference():
                            module._parameters[name] = nn.Parameter(parameter.clone(), requires_grad=parameter.requires_grad)
                    for name, buffer in list(module.named_buffers(recurse=False)):
                        if buffer.is_inference():
                            module._buffers[name] = buffer.clone()

    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, dict]:
        tokens = self.clip.tokenize(prompt)
        output = self.clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond = output.pop("cond")
        return cond, output

    def _extra_conds(self, cond: torch.Tensor, extra: dict) -> dict[str, torch.Tensor]:
        noise = torch.zeros((1, *self._sample_shape))
        conds = self.base.extra_conds(
            cross_attn=cond, noise=noise, device=torch.device("cpu"),
            width=self.width, height=self.height, target_width=self.width, target_height=self.height,
            **extra,
        )
        # Ordinary tensors (not inference-mode ones), so that autograd may save them.
        with torch.inference_mode(False):
            return {key: value.cond.detach().clone().cpu() for key, value in conds.items() if isinstance(value.cond, torch.Tensor)}


def _copy_activation(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if isinstance(tensor, nn.Parameter) else tensor.clone()


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _cat_repeating(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenates along the batch; token sequences of different lengths are repeated up to
    their least common multiple, as ComfyUI batches cross-attention conditioning."""
    if tensors[0].dim() >= 3 and len({t.shape[1] for t in tensors}) > 1:
        length = math.lcm(*(t.shape[1] for t in tensors))
        tensors = [t.repeat(1, length // t.shape[1], *([1] * (t.dim() - 2))) for t in tensors]
    return torch.cat(tensors)

