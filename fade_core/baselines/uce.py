"""UCE, Unified Concept Editing (Gandikota et al., 2024), as a baseline behind FADE's interface.

A closed-form edit of every cross-attention key and value projection W, with no training:

    W' = (sum_e W c*_e c_e^T + lam_p sum_p W c_p c_p^T + lam W) (sum_e c_e c_e^T + lam_p sum_p c_p c_p^T + lam I)^-1

c_e are the text encoder's token embeddings of prompts naming the concept, c*_e those of the same
prompts with the neutral word (position by position, so W maps the concept's tokens to where the
neutral word's tokens went), and c_p the embeddings of prompts to preserve (other concepts),
which keep their own images W c_p. The lam terms are a ridge toward W itself (the form usually
printed has lam I on the right only, which would also shrink W where no prompt constrains it).
Every token position is used: in a causal text encoder the positions after the concept word carry
it too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..adapter import DenoiserAdapter
from ..errors import FadeInputError
from ..prompts import PromptSet


@dataclass
class UceConfig:
    preserve_weight: float = 1.0  # lam_p
    regularisation: float = 0.1  # lam: keeps the edit close to W where the prompts say nothing


@dataclass
class UceResult:
    deltas: dict[str, torch.Tensor]  # W' - W, by module name
    seconds: float


def _token_matrix(adapter: DenoiserAdapter, prompts: Sequence[str]) -> torch.Tensor:
    """(d, N*L): every token embedding of every prompt, as columns."""
    context = adapter.encode(prompts).tensors[adapter.context_key]
    return context.reshape(-1, context.shape[-1]).T.double()


def edit_uce(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    preserve_prompts: Sequence[str],
    module_names: Sequence[str] | None = None,
    config: UceConfig | None = None,
) -> UceResult:
    """The closed-form edit of the cross-attention key/value projections (``module_names``, by
    default the adapter's cross_attention family). The weights are not changed: see :func:`applied`."""
    cfg = config or UceConfig()
    started = time.time()
    modules = adapter.lora_candidates("cross_attention")
    names = list(module_names) if module_names is not None else list(modules)
    if not names:
        raise FadeInputError("UCE edits cross-attention key/value projections, and this model has none")
    pairs = prompt_set.pairs("train") + prompt_set.pairs("validation")
    concept = _token_matrix(adapter, [p.concept_prompt for p in pairs])
    neutral = _token_matrix(adapter, [p.neutral_prompt for p in pairs])
    preserve = _token_matrix(adapter, list(preserve_prompts)) if preserve_prompts else concept[:, :0]
    dim = concept.shape[0]
    gram = concept @ concept.T + cfg.preserve_weight * preserve @ preserve.T + cfg.regularisation * torch.eye(dim, dtype=torch.float64, device=concept.device)
    deltas = {}
    for name in names:
        weight = modules[name].weight.detach().double()
        if weight.shape[1] != dim:
            raise FadeInputError(f"{name} does not read the text embeddings (input width {weight.shape[1]}, not {dim})")
        # The regularisation term keeps W itself: lam W I on the left, lam I on the right.
        right = weight @ neutral @ concept.T + cfg.preserve_weight * weight @ preserve @ preserve.T + cfg.regularisation * weight
        edited = torch.linalg.solve(gram, right.T).T  # right @ gram^-1, gram being symmetric
        deltas[name] = (edited - weight).to(modules[name].weight.dtype)
    return UceResult(deltas, time.time() - started)


@contextlib.contextmanager
def applied(adapter: DenoiserAdapter, deltas: dict[str, torch.Tensor]) -> Iterator[None]:
    """The edited model for the duration of the block; the original weights come back after."""
    modules = dict(adapter.denoiser.named_modules())
    originals = {name: modules[name].weight.detach().clone() for name in deltas}
    with torch.no_grad():
        for name, delta in deltas.items():
            modules[name].weight.add_(delta)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, original in originals.items():
                modules[name].weight.copy_(original)  # exactly, not by subtracting again


def delta_as_lora(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors (up, down) of a weight change, for export as a LoRA."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(delta.dtype), (root[:, None] * vh[:rank]).to(delta.dtype)
