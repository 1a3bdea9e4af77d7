"""Checks of a LoRA file against the model it is applied to: its keys, its shapes, and the base
model it was made for (the family name and a fingerprint of the weights it changes).

kohya keys are ``<prefix>.lora_down.weight``, ``<prefix>.lora_up.weight`` and ``<prefix>.alpha``,
the prefix naming one Linear or Conv2d weight of the denoiser (``lora_unet_...``) or of the text
encoder (``lora_te_...``, ``lora_te1_``/``lora_te2_`` for SDXL's two). The host says which prefixes
its model has and their weight shapes; everything here is host-free.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .errors import FadeInputError

KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
FINGERPRINT_MODULES = 64  # the fingerprint covers at most this many of the LoRA's modules
FINGERPRINT_TOLERANCE = 1e-2  # relative to a module's RMS: far above any dtype's rounding (fp8 included)


def kohya_targets(module: nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    """{kohya prefix: weight shape} of every Linear and Conv2d layer in ``module``."""
    return {
        prefix + name.replace(".", "_"): tuple(layer.weight.shape)
        for name, layer in module.named_modules()
        if isinstance(layer, (nn.Linear, nn.Conv2d))
    }


def kohya_text_encoder_targets(text_encoder: nn.Module, prefix: str = "lora_te_") -> dict[str, tuple[int, ...]]:
    """Like :func:`kohya_targets` for a CLIP text encoder. kohya's keys name its layers as
    transformers 4 did (``text_model.encoder.layers...``); where the module is laid out without
    that level (transformers 5), both spellings are accepted."""
    targets = kohya_targets(text_encoder, prefix)
    if not any(key.startswith(prefix + "text_model_") for key in targets):
        targets |= {prefix + "text_model_" + key[len(prefix):]: shape for key, shape in targets.items()}
    return targets


def kohya_modules(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The kohya-format LoRA modules in a file: {prefix: {part: tensor}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, part = key.partition(".")
        if part in KOHYA_PARTS:
            modules.setdefault(prefix, {})[part] = value
    return modules


# Parts of the key names of every weight-patch format that hosts read (kohya, peft/diffusers,
# LoKr, LoHa, OFT, full and norm differences): a file with none of them is no LoRA at all.
LORA_KEY = re.compile(r"(^|[._])(lora|lokr|hada|oft|boft)[._]|\.(diff|diff_b|set_weight|w_norm|b_norm|dora_scale)$")


def require_lora(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuses a file none of whose tensors is a LoRA (or other weight-patch) weight."""
    if not any(LORA_KEY.search(key) for key in tensors):
        sample = next(iter(tensors), "nothing")
        raise FadeInputError(
            f"{Path(path).name} is not a LoRA: none of its {len(tensors)} tensors is a LoRA weight "
            f"(the first is {sample!r}); choose a LoRA file, not a model or another kind of file"
        )


def check_lora(
    path: str | Path, tensors: Mapping[str, torch.Tensor], targets: Mapping[str, Sequence[int]], *,
    model: str, every_module: bool = True,
) -> list[str]:
    """The prefixes of ``tensors`` (a kohya LoRA read from ``path``) that fit ``targets``.

    Refuses a file with no LoRA modules, an incomplete module, a module whose shapes do not fit
    the model's weight, and a file none of whose modules the model has (with ``every_module``,
    one that names any module the model lacks). ``model`` names the model in messages."""
    name = Path(path).name
    require_lora(path, tensors)
    modules = kohya_modules(tensors)
    if not modules:
        sample = next(iter(tensors))
        raise FadeInputError(
            f"{name} is not a LoRA in kohya format (lora_down/lora_up weights; its first tensor is {sample!r}); "
            "choose a LoRA exported in kohya format, such as FADE writes"
        )
    for prefix, parts in modules.items():
        missing = [p for p in ("lora_down.weight", "lora_up.weight") if p not in parts]
        if missing:
            raise FadeInputError(f"{name} is incomplete: module {prefix} lacks its {missing[0]}; write or download it again")
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        if down.dim() < 2 or up.dim() < 2 or down.shape[0] != up.shape[1]:
            raise FadeInputError(
                f"{name} is damaged: module {prefix} has lora_down {tuple(down.shape)} and lora_up {tuple(up.shape)}, "
                "whose ranks differ; write or download it again"
            )
    unknown = [p for p in modules if p not in targets]
    if len(unknown) == len(modules):
        raise FadeInputError(
            f"none of the {len(modules)} modules of {name} exists in {model} (the first is {unknown[0]}); "
            f"it was made for another model: choose a LoRA made for {model}"
        )
    if every_module and unknown:
        raise FadeInputError(
            f"{len(unknown)} of the {len(modules)} modules of {name} do not exist in {model} (the first is {unknown[0]}); "
            f"it was made for another model: choose a LoRA made for {model}"
        )
    wrong = []
    for prefix, parts in modules.items():
        if prefix not in targets:
            continue
        target = tuple(targets[prefix])
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        changed = (up.shape[0], *down.shape[1:])
        if len(target) != len(changed) and len(target) == 4 and len(changed) == 2:
            changed = (*changed, 1, 1)
        if changed != target:
            wrong.append((prefix, changed, target))
    if wrong:
        prefix, changed, target = wrong[0]
        raise FadeInputError(
            f"{name} does not fit {model}: its module {prefix} changes a {_shape(changed)} weight where the model has "
            f"{_shape(target)} ({len(wrong)} of {len(modules)} modules differ); it was made for another model: "
            f"choose a LoRA made for {model}"
        )
    return [p for p in modules if p in targets]


# -- the base model ---------------------------------------------------------------------------------


def base_fingerprint(weights: Mapping[str, torch.Tensor]) -> dict[str, list[float]]:
    """{module: [mean, RMS]} of the base weights a LoRA changes (at most FINGERPRINT_MODULES of
    them, by name). Statistics rather than a hash, so that the same model loaded in another
    precision (fp16, bf16, fp8) still matches, while another model's weights do not."""
    chosen = sorted(weights)[:FINGERPRINT_MODULES]
    return {name: _statistics(weights[name]) for name in chosen}


def base_model_problem(
    metadata: Mapping[str, str], family: str, weight_of: Callable[[str], torch.Tensor | None]
) -> str | None:
    """Why a LoRA (its ``metadata``) was not made for this model, or None when nothing says so.

    ``family`` names this model as the LoRA's ``fade_base_model`` would; ``weight_of(module)``
    gives this model's weight of a module (None if it has no such module)."""
    made_for = metadata.get("fade_base_model")
    if made_for and made_for != family:
        return f"it was made for {made_for}, and this model is {family}"
    try:
        recorded = json.loads(metadata.get("fade_base_fingerprint") or "{}")
    except ValueError:
        return None
    differing, missing = [], []
    for module, (mean, rms) in recorded.items():
        weight = weight_of(module)
        if weight is None:
            missing.append(module)
            continue
        now_mean, now_rms = _statistics(weight)
        scale = max(rms, 1e-12)
        if abs(now_rms - rms) > FINGERPRINT_TOLERANCE * scale or abs(now_mean - mean) > FINGERPRINT_TOLERANCE * scale:
            differing.append((module, rms, now_rms))
    if missing:
        return f"this model has no module {missing[0]} ({len(missing)} of the {len(recorded)} modules it changes are missing)"
    if differing:
        module, rms, now = differing[0]
        return (
            f"it was made for another {family} model: the weights it changes differ from this model's "
            f"({len(differing)} of {len(recorded)} modules; {module} has RMS {now:.4g} here, {rms:.4g} there)"
        )
    return None


def _statistics(weight: torch.Tensor) -> list[float]:
    values = weight.detach().to(device="cpu", dtype=torch.float64)
    return [_rounded(values.mean().item()), _rounded(values.pow(2).mean().sqrt().item())]


def _rounded(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(s) for s in shape)
