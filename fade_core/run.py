"""The one run-and-export path: the command line's ``erase`` and the ComfyUI Train node both train
and write their LoRA through :func:`erase_and_export`.

Before it starts, the caller has checked the settings (``FadeConfig.check``) and reserved the
output (``LoraOutput``), both before loading any model. Here, before the first training step: the
rank against the chosen modules, and the disk space for the LoRA. Then:

- a complete run is audited (:mod:`fade_core.audit`: a fresh adversary on the erased model's own
  samples) and written, audit included, to the reserved name (never replacing a file unless asked);
- an interrupted run keeps the LoRA trained so far in ``<name>-interrupted``, with the full record
  (settings, modules, steps done, status); if the LoRA never moved, it says so and writes nothing;
  interrupted during the audit, it keeps the trained LoRA there, marked as not audited;
- a diverged run keeps the LoRA of the last validation in ``<name>-diverged``, or says there was none;
- a failed write puts the LoRA in the temporary folder and names it in the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .adapter import DenoiserAdapter
from .audit import AuditResult, audit
from .config import FadeConfig, setting_name
from .errors import FadeExportError, FadeInputError, FadeInterrupted, FadeTrainingError
from .fade import FadeResult, FadeTrainer, StepReport, erasure_metadata
from .lora import library_versions, lora_file_contents, lora_state
from .lora_file import base_fingerprint
from .outputs import LoraOutput
from .prompts import PromptSet

HEADER_BYTES_PER_MODULE = 1024  # keys, the module list and the fingerprint in the header, generously


@dataclass
class Erasure:
    result: FadeResult
    audit: AuditResult
    path: Path
    lora: dict[str, torch.Tensor]  # the kohya tensors written to ``path``


def module_widths(adapter: DenoiserAdapter, modules: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(inputs, outputs) of each chosen module that can take a LoRA."""
    layers = adapter.lora_candidates()
    widths = {}
    for name in modules:
        layer = layers.get(name)
        if isinstance(layer, nn.Linear):
            widths[name] = (layer.in_features, layer.out_features)
        elif isinstance(layer, nn.Conv2d):
            widths[name] = (layer.in_channels * math.prod(layer.kernel_size) // layer.groups, layer.out_channels)
    return widths


def check_rank(adapter: DenoiserAdapter, modules: Sequence[str], rank: int) -> None:
    """A LoRA's rank cannot exceed the width of a module it changes (it would only add weights)."""
    widths = module_widths(adapter, modules)
    if not widths:
        return  # attach_lora names the unknown modules
    narrowest = min(widths, key=lambda name: min(widths[name]))
    width = min(widths[narrowest])
    if rank > width:
        raise FadeInputError(
            f"{setting_name('lora_rank')} is {rank}, but the chosen module {narrowest} is only {width} wide; "
            f"use {width} or less (4 to 16 is usual)"
        )


def lora_bytes(adapter: DenoiserAdapter, modules: Sequence[str], rank: int) -> int:
    widths = module_widths(adapter, modules)
    return sum(4 * rank * (inputs + outputs) + HEADER_BYTES_PER_MODULE for inputs, outputs in widths.values()) + 65536


def erase_and_export(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    modules: Sequence[str],
    config: FadeConfig,
    output: LoraOutput,
    *,
    base_model: str,
    adversary: nn.Module | None = None,
    callback: Callable[[StepReport], None] | None = None,
    audit_progress: Callable[[int, int], None] | None = None,
    interrupts: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> Erasure:
    """Trains FADE's LoRA on ``modules`` and writes it to ``output``; the adapter's denoiser keeps
    the LoRA (the caller removes it when the host shares the model).

    ``base_model`` names the model family in the file (checked when the LoRA is applied).
    ``callback`` sees every training step, ``audit_progress`` the audit's (done, total) work.
    ``interrupts`` are the exceptions by which the host stops a run; they become
    :class:`FadeInterrupted`, raised from the original. A divergence is a
    :class:`FadeTrainingError`, a failed write a :class:`FadeExportError`, each naming what was saved."""
    config.check()
    check_rank(adapter, modules, config.lora_rank)
    output.require_space(lora_bytes(adapter, modules, config.lora_rank))
    layers = adapter.lora_candidates()
    record = {
        "fade_base_model": base_model,
        "fade_base_fingerprint": base_fingerprint({m: layers[m].weight for m in modules if m in layers}),
        "fade_versions": library_versions(),
    }

    def save(state, status: str, steps_done: int, validation_accuracy: float | None, stopped: bool = False,
             audit_record: dict[str, str] | None = None, held_out_attack: float | None = None):
        metadata = record | erasure_metadata(
            prompt_set, config, modules, status=status, steps_done=steps_done,
            validation_accuracy=validation_accuracy, stopped_at_chance=stopped, held_out_attack=held_out_attack,
        ) | (audit_record or {})
        tensors, header = lora_file_contents(adapter, metadata, state)
        path = output.write(lambda temporary: save_file(tensors, str(temporary), metadata=header), status)
        return path, tensors

    trainer = None
    try:
        trainer = FadeTrainer(adapter, prompt_set, modules, config, adversary=adversary, callback=callback)
        result = trainer.run()
    except interrupts as stop:
        raise _interrupted(trainer, config, save) from stop
    except FadeTrainingError as error:
        raise _diverged(trainer, error, save) from error
    try:
        audited = audit(adapter, prompt_set, samples=config.audit_samples, guidance=config.guidance,
                        sampling_steps=config.sampling_steps, generation_batch=2 * config.batch_size, seed=config.seed, progress=audit_progress)
    except interrupts as stop:
        raise _interrupted_in_audit(result, save) from stop
    path, tensors = save(result.lora, "complete", result.kept_step, result.validation_accuracy, result.stopped_at_chance,
                         audited.metadata(), result.held_out_attack)
    return Erasure(result, audited, path, tensors)


def _interrupted(trainer: FadeTrainer | None, config: FadeConfig, save) -> FadeInterrupted:
    if trainer is None or trainer.steps_done == 0:
        if trainer is None:
            where = "before training began"
        elif len(trainer.history) < config.adversary_warmup:
            where = f"in the adversary's warm-up ({len(trainer.history)} of {config.adversary_warmup} steps)"
        else:
            where = "in the first LoRA update"
        return FadeInterrupted(f"interrupted {where}, before the LoRA changed: no LoRA was saved")
    done = trainer.steps_done
    current = lora_state(trainer.adapter)
    held_out = None
    if trainer.adversarial is not None and trainer.last_good_step:  # a robust run keeps its best-judged state
        state, steps, accuracy, held_out = trainer.last_good, trainer.last_good_step, trainer.last_validation_accuracy, trainer.kept_attack_share
    elif all(torch.isfinite(t).all() for t in current.values()):
        state, steps, accuracy = current, done, trainer.last_validation_accuracy if trainer.last_good_step == done else None
    elif trainer.last_good_step:
        state, steps, accuracy = trainer.last_good, trainer.last_good_step, trainer.last_validation_accuracy
    else:
        return FadeInterrupted(f"interrupted after {done} LoRA updates whose weights are not finite; no LoRA was saved")
    try:
        path, _ = save(state, "interrupted", steps, accuracy, held_out_attack=held_out)
    except FadeExportError as error:
        return FadeInterrupted(f"interrupted after {done} of {config.steps} LoRA updates; {error}", error.saved)
    if held_out is not None:
        what = f"the state its held-out attack judged best (after {steps} LoRA updates)"
    else:
        what = "the LoRA trained so far" + ("" if accuracy is not None else " (not validated yet)")
    return FadeInterrupted(f"interrupted after {done} of {config.steps} LoRA updates; {what} is in {path}", path)


def _interrupted_in_audit(result: FadeResult, save) -> FadeInterrupted:
    """Training ended, the audit did not: the trained LoRA is kept under the interrupted name (a
    complete file always carries its audit), and its metadata says why the audit is missing."""
    where = f"interrupted in the audit, after all {result.steps_done} LoRA updates"
    try:
        path, _ = save(result.lora, "interrupted", result.kept_step, result.validation_accuracy, result.stopped_at_chance,
                       {"fade_audit_note": "not audited: the run was interrupted during the audit, after training ended"},
                       result.held_out_attack)
    except FadeExportError as error:
        return FadeInterrupted(f"{where}; {error}", error.saved)
    return FadeInterrupted(f"{where}; the trained LoRA, without its audit, is in {path}", path)


def _diverged(trainer: FadeTrainer | None, error: FadeTrainingError, save) -> FadeTrainingError:
    if trainer is None or trainer.last_good_step == 0:
        first = next(n for n in range(1, trainer.config.steps + 1) if trainer.validates_after(n)) if trainer else 0
        return FadeTrainingError(
            f"{error}; no LoRA was saved: none was validated yet (the first validation comes after {first} LoRA updates)"
        )
    try:
        path, _ = save(trainer.last_good, "diverged", trainer.last_good_step, trainer.last_validation_accuracy)
    except FadeExportError as failed:
        return FadeTrainingError(f"{error}; {failed}", failed.saved)
    return FadeTrainingError(
        f"{error}; the LoRA of the last validation (after {trainer.last_good_step} LoRA updates) is in {path}", path
    )
