"""Inside ComfyUI: a second Cancel never replaces the first, an interrupted LoRA carries the full
record, a LoRA linked into the loras folder is followed as ComfyUI's list follows it, and the Apply
node says how many modules matched and when it applied a LoRA made for another model.
Needs COMFYUI_PATH."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import SKIP_REASON, comfyui_path, node_classes, start_host, tiny_clip, tiny_sd15

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)]

WARMUP = 2
SD15_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # a 32x64 weight
SD15_MODULE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    loras = tmp_path_factory.mktemp("loras")
    return node_classes(start_host(str(loras))), loras


def sd15_lora(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"{SD15_KEY}.lora_down.weight": 0.1 * torch.randn((2, 64), generator=generator),
            f"{SD15_KEY}.lora_up.weight": 0.1 * torch.randn((32, 2), generator=generator),
            f"{SD15_KEY}.alpha": torch.tensor(2.0)}


STEPS = 5


def after_two_updates(value: int, total: int) -> bool:
    return total == WARMUP + STEPS and value == WARMUP + 2


def in_the_audit():
    """The first progress report after the training bar is full: the audit's."""
    trained = False

    def when(value: int, total: int) -> bool:
        nonlocal trained
        if total == WARMUP + STEPS and value == total:
            trained = True
            return False
        return trained
    return when


def cancelled_run(nodes, model, clip, prefix: str, cancel_when=after_two_updates) -> None:
    import comfy.model_management
    import comfy.utils

    def cancel(value, total, preview, node_id=None):
        if cancel_when(value, total):
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel)
    try:
        with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            prompt_set, _ = nodes["FADEBuildPromptSet"].execute(
                concepts="airplane", category="object", synonyms="", neutral="", prompts_per_concept=8, seed=0).args
            saliency, _ = nodes["FADEComputeSaliency"].execute(
                model, clip, prompt_set, budget="top_k", mass_fraction=1.0, top_k=2, family="cross_attention", prompts=2,
                sampling_steps=2, guidance=3.0, width=64, height=64, seed=0).args
            nodes["FADETrainEraser"].execute(
                model, clip, prompt_set, saliency, steps=STEPS, adversary_warmup=WARMUP, learning_rate=5e-3, lora_rank=2,
                preservation_weight=20.0, t0_fraction=0.5, guidance=3.0, sampling_steps=2, batch_size=2, adversary="latent",
                clip_vision_weights="none", clip_architecture="ViT-B-32", width=64, height=64, seed=0, gradient_checkpointing=False,
                robust_every=0, audit_samples=8, filename_prefix=prefix)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)


def test_a_second_cancel_keeps_the_first_and_both_carry_the_full_record(host):
    from comfyui_fade.fade_core.files import read_safetensors_metadata

    nodes, loras = host
    model, clip = tiny_sd15(), tiny_clip()
    cancelled_run(nodes, model, clip, "fade/cancel")
    first = (loras / "fade" / "cancel_00001-interrupted.safetensors").read_bytes()
    cancelled_run(nodes, model, clip, "fade/cancel")
    assert sorted(p.name for p in (loras / "fade").iterdir()) == [
        "cancel_00001-interrupted.safetensors", "cancel_00002-interrupted.safetensors"]
    assert (loras / "fade" / "cancel_00001-interrupted.safetensors").read_bytes() == first
    metadata = read_safetensors_metadata(loras / "fade" / "cancel_00002-interrupted.safetensors")
    assert metadata["fade_status"] == "interrupted" and json.loads(metadata["fade_steps_done"]) == 3  # the cancel is seen at the next step
    assert metadata["fade_category"] == "object" and json.loads(metadata["fade_concepts"]) == ["airplane"]
    assert len(json.loads(metadata["fade_modules"])) == 2 and json.loads(metadata["fade_hyperparameters"])["lora_rank"] == 2
    assert metadata["fade_base_model"] == "sd_v1" and len(json.loads(metadata["fade_base_fingerprint"])) == 2


def test_a_cancel_during_the_audit_keeps_the_trained_lora_marked_as_not_audited(host):
    from comfyui_fade.fade_core.files import read_safetensors_metadata

    nodes, loras = host
    cancelled_run(nodes, tiny_sd15(), tiny_clip(), "fade/audit_cancel", cancel_when=in_the_audit())
    assert sorted(p.name for p in (loras / "fade").glob("audit_cancel*")) == ["audit_cancel_00001-interrupted.safetensors"]
    metadata = read_safetensors_metadata(loras / "fade" / "audit_cancel_00001-interrupted.safetensors")
    assert metadata["fade_status"] == "interrupted" and json.loads(metadata["fade_steps_done"]) == STEPS
    assert metadata["fade_audit_note"].startswith("not audited") and "fade_audit_accuracy" not in metadata


def test_a_lora_linked_into_the_folder_is_applied_and_names_still_cannot_escape(host, tmp_path):
    from comfyui_fade.fade_core.errors import FadeInputError

    nodes, loras = host
    elsewhere = tmp_path / "shared" / "erased.safetensors"
    elsewhere.parent.mkdir()
    save_file(sd15_lora(), str(elsewhere))
    (loras / "linked.safetensors").symlink_to(elsewhere)
    (loras / "linked-folder").symlink_to(elsewhere.parent, target_is_directory=True)
    model = tiny_sd15()
    for name in ("linked.safetensors", "linked-folder/erased.safetensors"):
        with torch.inference_mode():
            applied, _, text = nodes["FADEApplyErasedLoRA"].execute(model, name, 1.0, False).args
        assert "modules matched: 1 of 1" in text
        assert applied.patches  # the LoRA is in the returned MODEL
    with pytest.raises(FadeInputError, match="points outside"):
        nodes["FADEApplyErasedLoRA"].execute(model, "linked-folder/../../shared/erased.safetensors", 1.0, False)


def test_apply_reports_partial_matches_and_a_lora_accepted_from_another_base_model(host):
    nodes, loras = host
    partial = sd15_lora() | {f"lora_unet_no_such_block.{part}": value for part, value in
                             (("lora_down.weight", torch.zeros(2, 8)), ("lora_up.weight", torch.zeros(8, 2)), ("alpha", torch.tensor(2.0)))}
    save_file(partial, str(loras / "partial.safetensors"))
    save_file(sd15_lora(), str(loras / "other-sd15.safetensors"),
              metadata={"fade_method": "FADE", "fade_status": "complete", "fade_base_model": "sd_v1",
                        "fade_base_fingerprint": json.dumps({SD15_MODULE: [0.0, 5.0]})})
    model = tiny_sd15()
    with torch.inference_mode():
        _, _, text = nodes["FADEApplyErasedLoRA"].execute(model, "partial.safetensors", 1.0, False).args
        assert "modules matched: 1 of 2" in text
        applied, _, text = nodes["FADEApplyErasedLoRA"].execute(model, "other-sd15.safetensors", 0.5, True).args
    assert "warning: it was made for another sd_v1 model" in text and "applied anyway (accept_other_base_model)" in text
    assert "modules matched: 1 of 1" in text and applied.patches
