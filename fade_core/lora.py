"""LoRA on the salient modules, and its export as a kohya-format safetensors file.

Every LoRA here is kohya's: on a weight W of shape (out, in, *kernel) it adds
``(alpha / rank) * up @ down`` with ``down`` of shape (rank, in, *kernel) and ``up`` of shape
(out, rank, 1, ...). How the layers are attached is the host's business, behind
:meth:`DenoiserAdapter.attach_lora`: modules the core owns (the embedded model, diffusers) get
peft layers (:class:`PeftLora`); hosts that share one model between many users and apply
functions to its weights (ComfyUI's weight wrappers) get :class:`LoraDelta` functions gathered
in a :class:`WeightFunctionLora`. The rest of the method only sees the :class:`AttachedLora`
interface: its factors, a switch to the original model, and removal. Export writes the factors
under the keys the target loaders expect (``<prefix>.lora_down.weight``, ``.lora_up.weight``,
``.alpha``).
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .adapter import DenoiserAdapter
from .errors import FadeInputError
from .files import save_safetensors

ADAPTER_NAME = "fade"


class AttachedLora(abc.ABC):
    """The LoRA layers on an adapter's denoiser, however the host attached them."""

    @abc.abstractmethod
    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """``{module name: (down, up, scale)}``, the live (trainable) tensors; scale = alpha / rank."""

    @abc.abstractmethod
    def set_enabled(self, enabled: bool) -> None:
        """Off: the denoiser computes exactly what it computed before the LoRA was attached."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Takes the LoRA off; the denoiser is left as it was before :meth:`DenoiserAdapter.attach_lora`."""

    def parameters(self) -> list[torch.Tensor]:
        return [tensor for down, up, _ in self.factors().values() for tensor in (down, up)]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        self.set_enabled(False)
        try:
            yield
        finally:
            self.set_enabled(True)


class PeftLora(AttachedLora):
    """peft LoRA layers injected into a module the caller owns."""

    def __init__(self, module: nn.Module, module_names: Sequence[str], rank: int, alpha: float, seed: int) -> None:
        self.module = module
        # peft matches a listed name against the end of each module path; full paths match only themselves.
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(module_names), lora_dropout=0.0)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return {
            name: (layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight, float(layer.scaling[ADAPTER_NAME]))
            for name, layer in lora_layers(self.module)
        }

    def set_enabled(self, enabled: bool) -> None:
        for layer in self.module.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.enable_adapters(enabled)

    def remove(self) -> None:
        for name, layer in list(lora_layers(self.module)):
            parent_name, _, child = name.rpartition(".")
            parent = self.module.get_submodule(parent_name) if parent_name else self.module
            setattr(parent, child, layer.get_base_layer())
        # peft leaves its config on the model; a later injection would warn that it found one.
        if "peft_config" in vars(self.module):
            del self.module.peft_config


class CombinedLora(AttachedLora):
    """LoRAs on several modules of one model (the denoiser and the text encoder), as one; each
    part's module names carry its prefix."""

    def __init__(self, parts: Mapping[str, AttachedLora]) -> None:
        self.parts = dict(parts)

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return {prefix + name: factor for prefix, part in self.parts.items() for name, factor in part.factors().items()}

    def set_enabled(self, enabled: bool) -> None:
        for part in self.parts.values():
            part.set_enabled(enabled)

    def remove(self) -> None:
        for part in self.parts.values():
            part.remove()


class LoraDelta(nn.Module):
    """One LoRA as a function of the weight it changes: ``W -> W + scale * up @ down``.

    For hosts that pass each weight through functions before using it (ComfyUI's weight
    wrappers). The factors stay in float32 whatever the model's dtype; the change is cast to
    the weight's dtype at use, and gradients flow back through that cast. Initialised as peft
    initialises its layers (Kaiming-uniform ``down``, zero ``up``), so the model starts unchanged.
    """

    def __init__(self, weight_shape: Sequence[int], rank: int, alpha: float, *, device=None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        out_features, in_features, *kernel = weight_shape
        down = torch.empty(rank, in_features, *kernel)
        bound = 1.0 / math.sqrt(math.prod(down.shape[1:]))  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and peft
        down.uniform_(-bound, bound, generator=generator)
        self.down = nn.Parameter(down.to(device))
        self.up = nn.Parameter(torch.zeros(out_features, rank, *([1] * len(kernel)), device=device))
        self.scale = alpha / rank
        self.enabled = True

    def delta(self) -> torch.Tensor:
        return self.scale * (self.up.flatten(1) @ self.down.flatten(1))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return weight + self.delta().reshape(weight.shape).to(weight.dtype)


class WeightFunctionLora(AttachedLora):
    """:class:`LoraDelta` functions that a host applies to the named weights; ``detach`` is the
    host's way to take them off again."""

    def __init__(self, deltas: Mapping[str, LoraDelta], detach: Callable[[], None]) -> None:
        self.deltas = dict(deltas)
        self._detach = detach

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return {name: (delta.down, delta.up, delta.scale) for name, delta in self.deltas.items()}

    def set_enabled(self, enabled: bool) -> None:
        for delta in self.deltas.values():
            delta.enabled = enabled

    def remove(self) -> None:
        self._detach()


def attach_lora(
    adapter: DenoiserAdapter, module_names: Sequence[str], rank: int, alpha: float, seed: int
) -> list[nn.Parameter]:
    """Attaches a LoRA to exactly the named modules (see :meth:`DenoiserAdapter.attach_lora`);
    returns its trainable parameters."""
    if rank < 1:
        raise FadeInputError(f"LoRA rank is {rank}; use 1 or more (4 to 16 is usual)")
    candidates = adapter.lora_candidates()
    if adapter.text_encoder is not None:
        candidates |= adapter.lora_candidates("text_encoder")
    unknown = [name for name in module_names if name not in candidates]
    if unknown:
        raise FadeInputError(f"these modules cannot receive a LoRA (not Linear/Conv2d layers of the denoiser): {unknown[:5]}")
    if not module_names:
        raise FadeInputError("no modules were selected for the LoRA; raise the saliency budget (top_k or mass_fraction)")
    if adapter.lora is not None:
        raise FadeInputError("this model already carries a FADE LoRA; remove it first")
    adapter.freeze()
    adapter.lora = adapter.attach_lora(list(module_names), rank, alpha, seed)
    parameters = adapter.lora.parameters()
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def lora_layers(module: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """peft's LoRA layers in a module (those :class:`PeftLora` injected)."""
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
            yield name, layer


def _attached(adapter: DenoiserAdapter) -> AttachedLora:
    if adapter.lora is None:
        raise FadeInputError("there is no LoRA on this model: train first")
    return adapter.lora


def remove_lora(adapter: DenoiserAdapter) -> None:
    """Takes the LoRA off, leaving the denoiser as it was before :func:`attach_lora`. Hosts that
    share one model between graphs (ComfyUI) need this. Nothing happens when none is attached."""
    if adapter.lora is not None:
        adapter.lora.remove()
        adapter.lora = None


@contextlib.contextmanager
def lora_disabled(adapter: DenoiserAdapter) -> Iterator[None]:
    """The original model: the LoRA contributes nothing inside this block."""
    if adapter.lora is None:
        yield
        return
    with adapter.lora.disabled():
        yield


def lora_state(adapter: DenoiserAdapter) -> dict[str, torch.Tensor]:
    """A copy of the LoRA weights in memory, by module name (to keep the last good result)."""
    state = {}
    for name, (down, up, _) in _attached(adapter).factors().items():
        state[f"{name}.down"] = down.detach().clone()
        state[f"{name}.up"] = up.detach().clone()
    return state


def load_lora_state(adapter: DenoiserAdapter, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, (down, up, _) in _attached(adapter).factors().items():
            down.copy_(state[f"{name}.down"])
            up.copy_(state[f"{name}.up"])


def kohya_state_dict(adapter: DenoiserAdapter, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The LoRA as ``{key.lora_down.weight, key.lora_up.weight, key.alpha}`` tensors."""
    out = {}
    for name, (down, up, scale) in _attached(adapter).factors().items():
        key = adapter.lora_key(name)
        if state:
            down, up = state[f"{name}.down"], state[f"{name}.up"]
        rank = down.shape[0]
        out[f"{key}.lora_down.weight"] = down.detach().float().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = up.detach().float().cpu().contiguous()
        # kohya scales by alpha / rank.
        out[f"{key}.alpha"] = torch.tensor(float(scale * rank))
    return out


def lora_file_contents(
    adapter: DenoiserAdapter, metadata: Mapping[str, object], state: Mapping[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The kohya tensors and the safetensors header of the LoRA. ``metadata`` values that are not
    strings are stored as JSON."""
    tensors = kohya_state_dict(adapter, state)
    if not tensors:
        raise FadeInputError("there is no LoRA to export: train first")
    rank = next(v for k, v in tensors.items() if k.endswith("lora_down.weight")).shape[0]
    alpha = next(v for k, v in tensors.items() if k.endswith(".alpha")).item()
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": adapter.model_name,
    }
    header |= {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    return tensors, header


def export_lora(
    adapter: DenoiserAdapter,
    path: str | Path,
    metadata: Mapping[str, object],
    state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Writes the LoRA atomically (replacing a file of that name: see fade_core.outputs for runs)."""
    tensors, header = lora_file_contents(adapter, metadata, state)
    return save_safetensors(tensors, path, header)


def library_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {}
    for package in ("torch", "peft", "diffusers", "transformers", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    from . import __version__

    versions["fade_core"] = __version__
    return versions
