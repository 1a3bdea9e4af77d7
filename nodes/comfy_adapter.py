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

The graph's MODEL is never changed. One ModelPatcher's BaseModel is shared by every clone of it
in the graph (the checkpoint loader's MODEL, a LoraLoader's MODEL, ...), so everything FADE needs
happens on a clone of its own, the way ComfyUI's own trainer works:

- the LoRA (and the saliency probes) are weight wrappers of that clone (``add_weight_wrapper``):
  ComfyUI passes each wrapped weight through them at every forward, after the patches of earlier
  nodes (an upstream LoRA) have been applied to it, so training sees the MODEL exactly as the
  graph gave it;
- the clone is loaded through ComfyUI's model management with an estimate of the training's
  memory, and unloaded when the node is done, which puts the shared weights back as they were;
- ComfyUI loads weights under ``torch.inference_mode()``, and autograd cannot save such tensors
  for backward; while the clone is loaded, the shared parameters are seen through ordinary tensors
  over the same memory (no copy), and the very same parameter objects are put back before it is
  unloaded (:func:`ordinary_tensors`);
- gradient checkpointing wraps the blocks' forward for the duration of a forward call only.

A CLIP (its ``patcher``) or a VAE can be made trainable the same way: a clone of its patcher, and
:func:`ordinary_tensors` around the forward.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.supported_models
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..fade_core.adapter import Conditioning, DenoiserAdapter
from ..fade_core.errors import FadeInputError
from ..fade_core.lora import AttachedLora, LoraDelta, WeightFunctionLora, remove_lora

SUPPORTED_SAMPLING = (comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION, comfy.model_sampling.CONST)

# FLUX and other joint-attention transformers read the text through the text stream's fused
# q/k/v projection: the counterpart of a UNet's cross-attention keys and values.
JOINT_ATTENTION_FAMILIES = {
    "cross_attention": lambda name: name.endswith("txt_attn.qkv"),
    "attention": lambda name: ".img_attn." in name or ".txt_attn." in name or name.startswith("single_blocks."),
    "all": lambda name: True,
}

# Model families as kohya's tools name them in ``ss_base_model_version`` (sd-scripts:
# model_util.get_model_version_str_for_sd1_sd2, sdxl_model_util.MODEL_VERSION_SDXL_BASE_V1_0,
# flux_utils.MODEL_VERSION_FLUX_V1), by ComfyUI's model configuration class.
KOHYA_FAMILIES = (
    (comfy.supported_models.SDXL, "sdxl_base_v1-0"),
    (comfy.supported_models.SD20, "sd_v2"),
    (comfy.supported_models.SD15, "sd_v1"),
    (comfy.supported_models.Flux, "flux1"),
    (comfy.supported_models.SD3, "sd3"),
)

# Memory one training step adds, as a multiple of what ComfyUI estimates for an inference forward
# of the same batch (BaseModel.memory_required), measured by benchmarks/scale.py (README "Memory and
# time at full size", fp32 on the CPU): SD1.5 at 512 px 6.57 GiB against ComfyUI's 2.4 (2.7x), with
# checkpointing 2.23 (0.9x); SDXL at 1024 px with checkpointing 11.8 against 7.7 (1.5x). Rounded
# up: a guide for ComfyUI's offloading, not a bound.
TRAINING_MEMORY_FACTOR = {False: 3.0, True: 1.6}  # by gradient checkpointing


def model_family(patcher) -> str:
    """kohya's name of the model family (sd_v1, sd_v2 / sd_v2_v, sdxl_base_v1-0, flux1, sd3), or
    ComfyUI's configuration class for the others."""
    config = patcher.model.model_config
    for config_class, name in KOHYA_FAMILIES:
        if isinstance(config, config_class):
            if name == "sd_v2" and isinstance(patcher.model.model_sampling, comfy.model_sampling.V_PREDICTION):
                return "sd_v2_v"
            return name
    return type(config).__name__


class ComfyAdapter(DenoiserAdapter):
    context_key = "c_crossattn"

    def __init__(self, model, clip, *, width: int = 512, height: int = 512, vae=None, scheduler: str = "simple",
                 gradient_checkpointing: bool = False):
        if model is None or clip is None:
            raise FadeInputError("connect both MODEL and CLIP from your checkpoint loader")
        self.patcher = model.clone()  # every change FADE makes lives here, never on the graph's MODEL
        self.base = self.patcher.model
        self.clip = clip
        self.vae = vae
        self.scheduler = scheduler
        self.gradient_checkpointing = gradient_checkpointing
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
        self.model_name = model_family(model)
        self.is_unet = isinstance(self.base.diffusion_model, UNetModel)
        if not self.is_unet:
            self.families = JOINT_ATTENTION_FAMILIES
        self._batch_rows = 1
        self._loaded = False
        self._ordinary: contextlib.ExitStack | None = None
        # The empty prompt's conditioning: CFG's unconditional half, and it shows whether the model
        # takes a distilled guidance value instead (FLUX).
        self.null = self.encode([""])
        self.distilled_guidance = "guidance" in self.null.tensors
        self._diffusers_names: dict[str, str] | None = None

    # -- lifetime: load through ComfyUI's model management, unload when done ---------------------

    def __enter__(self) -> ComfyAdapter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def plan_batch(self, rows: int) -> None:
        """The largest batch one forward will see, for the memory estimate given to ComfyUI."""
        self._batch_rows = max(1, rows)

    def memory_estimate(self) -> float:
        """Bytes of activations one training step needs beyond the weights: ComfyUI's own estimate
        for an inference forward of the batch, times a measured factor for training."""
        shape = [self._batch_rows, *self._sample_shape]
        return self.base.memory_required(shape) * TRAINING_MEMORY_FACTOR[self.gradient_checkpointing]

    def load(self) -> None:
        """Loads the clone (its weight wrappers and the graph's patches) onto the load device,
        letting ComfyUI make room for the estimated memory, then shows autograd the loaded
        weights as ordinary tensors. Called again whenever the clone's wrappers changed."""
        self._restore_tensors()
        comfy.model_management.load_models_gpu([self.patcher], memory_required=self.memory_estimate())
        self._loaded = True
        self._ordinary = contextlib.ExitStack()
        self._ordinary.enter_context(ordinary_tensors(self.base))

    def _restore_tensors(self) -> None:
        if self._ordinary is not None:
            self._ordinary.close()
            self._ordinary = None

    def close(self) -> None:
        """Unloads the clone: ComfyUI puts the shared weights back as the graph's MODEL has them
        and frees the memory; the clone's wrappers go with it."""
        remove_lora(self)
        self._restore_tensors()
        if self._loaded:
            for loaded in list(comfy.model_management.current_loaded_models):
                if loaded.model is self.patcher:
                    loaded.model_unload()
                    comfy.model_management.current_loaded_models.remove(loaded)
            self._loaded = False
        comfy.model_management.soft_empty_cache()

    # -- the adapter interface -----------------------------------------------------------------------

    @property
    def denoiser(self) -> nn.Module:
        return self.base.diffusion_model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

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
        sigma = torch.as_tensor(level, dtype=torch.float32).reshape(-1).cpu()
        ones, zeros = torch.ones(sigma.numel(), 1), torch.zeros(sigma.numel(), 1)
        sampling = self.base.model_sampling
        with torch.inference_mode(False):  # model_sampling's buffers may be inference tensors
            alpha = sampling.noise_scaling(sigma, zeros.clone(), ones.clone()).reshape(-1)
            scale = sampling.noise_scaling(sigma, ones.clone(), zeros.clone()).reshape(-1)
        return alpha.float().cpu(), scale.float().cpu()

    def predict_x0(self, x_t: torch.Tensor, level: torch.Tensor, cond: Conditioning, guidance: float) -> torch.Tensor:
        if not self._loaded:
            self.load()
        sigma = torch.as_tensor(level, dtype=torch.float32).reshape(-1).expand(x_t.shape[0]).to(self.device)
        kwargs = {key: _ordinary(value.to(self.device)) for key, value in cond.tensors.items()}
        kwargs["transformer_options"] = dict(self.patcher.model_options.get("transformer_options", {}))
        x = _ordinary(x_t.to(self.device))
        with self._forward_context():
            if self.distilled_guidance:
                kwargs["guidance"] = torch.full((x.shape[0],), float(guidance), device=self.device)
                x0 = self.base.apply_model(x, sigma, **kwargs)
            elif guidance == 1.0:
                x0 = self.base.apply_model(x, sigma, **kwargs)
            else:
                null = self.null.tensors
                both = {key: (_cat_repeating([value, null[key].to(self.device).expand(value.shape[0], *value.shape[1:])])
                              if key in null else value)
                        for key, value in kwargs.items()}
                conditional, unconditional = self.base.apply_model(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
                x0 = unconditional + guidance * (conditional - unconditional)
        return x0.float().to(x_t.device)

    def attach_lora(self, module_names: Sequence[str], rank: int, alpha: float, seed: int) -> AttachedLora:
        """Weight wrappers on this adapter's clone: ComfyUI applies them after the graph's own
        patches, so the LoRA trains on the MODEL as the graph gave it."""
        modules = dict(self.denoiser.named_modules())
        generator = torch.Generator().manual_seed(seed)
        deltas = {name: LoraDelta(modules[name].weight.shape, rank, alpha, device=self.device, generator=generator)
                  for name in module_names}
        self._add_weight_wrappers(deltas)
        return WeightFunctionLora(deltas, detach=lambda: self._remove_weight_wrappers(deltas))

    @contextlib.contextmanager
    def weight_probes(self, module_names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """A zero tensor added to each named weight through a weight wrapper of the clone: its
        gradient is the weight's gradient, and the shared weight is never asked for one."""
        modules = dict(self.denoiser.named_modules())
        probes = {name: _ZeroProbe(modules[name].weight.shape, self.device) for name in module_names}
        self._add_weight_wrappers(probes)
        try:
            yield {name: probe.delta for name, probe in probes.items()}
        finally:
            self._remove_weight_wrappers(probes)

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
        with ordinary_tensors(decoder):
            pixels = decoder.decode(latents.to(next(decoder.parameters()).dtype))
        return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).to(samples.device)

    # -- ComfyUI specifics --------------------------------------------------------------------------

    def _add_weight_wrappers(self, functions: dict[str, nn.Module]) -> None:
        for name, function in functions.items():
            self.patcher.add_weight_wrapper(f"diffusion_model.{name}.weight", function)
        self._loaded = False  # the clone's patches changed: ComfyUI reloads it at the next forward

    def _remove_weight_wrappers(self, functions: dict[str, nn.Module]) -> None:
        """Off the clone, and off the shared modules too: ComfyUI clears a module's wrappers only
        when it next loads a model there, and until then the graph's MODEL would still run them."""
        modules = dict(self.denoiser.named_modules())
        for name, function in functions.items():
            key = f"diffusion_model.{name}.weight"
            remaining = [f for f in self.patcher.weight_wrapper_patches.get(key, []) if f is not function]
            if remaining:
                self.patcher.weight_wrapper_patches[key] = remaining
            else:
                self.patcher.weight_wrapper_patches.pop(key, None)
            module = modules[name]
            if any(f is function for f in getattr(module, "weight_function", [])):
                module.weight_function = [f for f in module.weight_function if f is not function]
        self._loaded = False

    def _forward_context(self):
        """What a forward with gradients needs: checkpointed blocks if asked for, and (FLUX)
        activations kept safe from in-place adds."""
        if not torch.is_grad_enabled():
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        if self.gradient_checkpointing:
            stack.enter_context(checkpointed_blocks(self.denoiser))
        elif not self.is_unet:
            # FLUX's blocks add into their residual stream in place (``x += ...``) after a
            # LayerNorm has saved it for backward, which autograd refuses. Saving a copy of each
            # activation (never of a parameter) keeps the values backward needs. Checkpointed
            # blocks get fresh inputs instead (see checkpointed_blocks).
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(_copy_activation, _unchanged))
        return stack

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


class _ZeroProbe(nn.Module):
    """A weight wrapper that adds a zero tensor, so that its gradient is the weight's."""

    def __init__(self, shape: Sequence[int], device) -> None:
        super().__init__()
        self.delta = torch.zeros(shape, device=device, requires_grad=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta.to(weight.dtype)


@contextlib.contextmanager
def ordinary_tensors(root: nn.Module) -> Iterator[None]:
    """Inside the block, every inference-mode parameter and buffer under ``root`` is replaced by
    an ordinary tensor over the same memory (nothing is copied), so that autograd may save it for
    backward; on leaving, the original objects are put back, whatever happened inside. Tensors
    saved by the graph keep pointing at the same memory, which nobody writes to meanwhile."""
    swapped: list[tuple[nn.Module, str, bool, torch.Tensor]] = []
    views: dict[int, torch.Tensor] = {}
    try:
        with torch.inference_mode(False):
            for module in root.modules():
                for kind, table in (("parameter", module._parameters), ("buffer", module._buffers)):
                    for name, tensor in list(table.items()):
                        if tensor is None or not tensor.is_inference():
                            continue
                        if id(tensor) not in views:
                            view = torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
                                tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
                            views[id(tensor)] = nn.Parameter(view, requires_grad=False) if kind == "parameter" else view
                        swapped.append((module, name, kind == "parameter", tensor))
                        table[name] = views[id(tensor)]
        yield
    finally:
        for module, name, is_parameter, tensor in reversed(swapped):
            (module._parameters if is_parameter else module._buffers)[name] = tensor


def checkpoint_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The modules whose activations gradient checkpointing recomputes: a transformer's blocks
    (every module of its top-level ModuleLists); for a UNet, the layers of its input, middle and
    output blocks (ResBlocks, SpatialTransformers, ...). A UNet's forward runs each of its
    TimestepEmbedSequential blocks by calling the block's layers one by one
    (``forward_timestep_embed``), never the block's own forward, so the layers are what can be
    wrapped."""
    blocks = [block for child in denoiser.children() if isinstance(child, nn.ModuleList) for block in child]
    middle = getattr(denoiser, "middle_block", None)
    if isinstance(middle, nn.Module):
        blocks.append(middle)
    return [layer for block in blocks for layer in (block if isinstance(block, nn.Sequential) else (block,))]


@contextlib.contextmanager
def checkpointed_blocks(denoiser: nn.Module) -> Iterator[None]:
    """Each block's forward runs under torch.utils.checkpoint for the duration of the block:
    its activations are recomputed in backward instead of kept. The override is an instance
    attribute that is removed (or the previous one restored) on leaving; backward recomputes
    through the saved function, not through the module attribute."""
    saved = []
    try:
        for block in checkpoint_blocks(denoiser):
            saved.append((block, block.__dict__.get("forward")))
            block.forward = functools.partial(_checkpointed_call, block.forward)
        yield
    finally:
        for block, previous in reversed(saved):
            if previous is None:
                del block.forward
            else:
                block.forward = previous


def _checkpointed_call(forward, *args, **kwargs):
    # The caller goes on changing its options dict (ComfyUI's transformer_options: the block
    # index) after the call; the recomputation in backward must see it as it was.
    kwargs = {key: dict(value) if isinstance(value, dict) else value for key, value in kwargs.items()}
    args = tuple(dict(value) if isinstance(value, dict) else value for value in args)
    return torch.utils.checkpoint.checkpoint(_with_fresh_inputs, forward, *args, use_reentrant=False, **kwargs)


def _with_fresh_inputs(forward, *args, **kwargs):
    """FLUX's blocks add into their inputs in place; recomputation needs the inputs unchanged."""
    fresh = lambda value: value.clone() if isinstance(value, torch.Tensor) and value.is_floating_point() else value  # noqa: E731
    return forward(*(fresh(a) for a in args), **{key: fresh(value) for key, value in kwargs.items()})


def _ordinary(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor made under inference mode (an input encoded there) cannot join a graph; a copy can."""
    if tensor.is_inference():
        with torch.inference_mode(False):
            return tensor.clone()
    return tensor


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
