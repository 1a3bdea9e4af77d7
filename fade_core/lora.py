"""LoRA on the salient modules (peft), and its export as a kohya-format safetensors file.

peft injects the low-rank layers; this module only chooses where, switches them off to query the
original model, and writes them out under the keys the target loaders expect
(``<prefix>.lora_down.weight``, ``<prefix>.lora_up.weight``, ``<prefix>.alpha``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
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


def attach_lora(
    adapter: DenoiserAdapter, module_names: Sequence[str], rank: int, alpha: float, seed: int
) -> list[nn.Parameter]:
    """Injects a LoRA into exactly the named modules; returns its trainable parameters."""
    if rank < 1:
        raise FadeInputError(f"LoRA rank is {rank}; use 1 or more (4 to 16 is usual)")
    candidates = adapter.lora_candidates()
    unknown = [name for name in module_names if name not in candidates]
    if unknown:
        raise FadeInputError(f"these modules cannot receive a LoRA (not Linear/Conv2d layers of the denoiser): {unknown[:5]}")
    if not module_names:
        raise FadeInputError("no modules were selected for the LoRA; raise the saliency budget (top_k or mass fraction)")
    adapter.freeze()
    # peft matches a listed name against the end of each module path; full paths match only themselves.
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(module_names), lora_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(config, adapter.denoiser, adapter_name=ADAPTER_NAME)
    parameters = []
    for _, layer in lora_layers(adapter.denoiser):
        parameters += [layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def lora_layers(module: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A:
            yield name, layer


def remove_lora(module: nn.Module) -> None:
    """Puts every LoRA-wrapped layer's original module back, leaving ``module`` as it was before
    :func:`attach_lora`. Hosts that share one model between graphs (ComfyUI) need this."""
    for name, layer in list(lora_layers(module)):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())


@contextlib.contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """The original model: every LoRA layer passes its input through the frozen base layer alone."""
    layers = [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the LoRA weights in memory, by module name (to keep the last good result)."""
    state = {}
    for name, layer in lora_layers(module):
        state[f"{name}.down"] = layer.lora_A[ADAPTER_NAME].weight.detach().clone()
        state[f"{name}.up"] = layer.lora_B[ADAPTER_NAME].weight.detach().clone()
    return state


def load_lora_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, layer in lora_layers(module):
            layer.lora_A[ADAPTER_NAME].weight.copy_(state[f"{name}.down"])
            layer.lora_B[ADAPTER_NAME].weight.copy_(state[f"{name}.up"])


def kohya_state_dict(adapter: DenoiserAdapter, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The LoRA as ``{key.lora_down.weight, key.lora_up.weight, key.alpha}`` tensors."""
    out = {}
    for name, layer in lora_layers(adapter.denoiser):
        key = adapter.lora_key(name)
        down = state[f"{name}.down"] if state else layer.lora_A[ADAPTER_NAME].weight
        up = state[f"{name}.up"] if state else layer.lora_B[ADAPTER_NAME].weight
        rank = down.shape[0]
        out[f"{key}.lora_down.weight"] = down.detach().float().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = up.detach().float().cpu().contiguous()
        # kohya scales by alpha / rank; peft's scaling holds that same ratio.
        out[f"{key}.alpha"] = torch.tensor(float(layer.scaling[ADAPTER_NAME] * rank))
    return out


def tv_bound(adversary_accuracy: float) -> float:
    """Paper section 5: a Bayes-optimal adversary's accuracy a on balanced classes gives
    TV(P(X|c), P(X|not c)) = 2a - 1. For a trained, not optimal, adversary this is the value
    the paper reports as the bound; an accuracy below one half is read as its mirror image."""
    return abs(2.0 * adversary_accuracy - 1.0)


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
