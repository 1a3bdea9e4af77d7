"""The four nodes inside a real ComfyUI, on tiny random SD1.5- and FLUX-architecture models.

Runs when COMFYUI_PATH names a ComfyUI checkout whose requirements are installed; skips otherwise.
"""

from __future__ import annotations

import pytest
import torch

from comfy_host import SKIP_REASON, comfyui_path, node_classes, start_host, tiny_clip, tiny_flux, tiny_sd15, tiny_sdxl

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)]

SIZE = 64  # pixels; latents of 8x8
STEPS, WARMUP = 6, 4
BUILDERS = {"sd15": tiny_sd15, "flux": tiny_flux}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    loras = tmp_path_factory.mktemp("loras")
    pack = start_host(str(loras))
    return pack, node_classes(pack), loras


@pytest.fixture(scope="module")
def clip(host):
    return tiny_clip()


def run_nodes(nodes, model, clip, prefix, **train):
    """Prompt set -> saliency -> training, under inference mode as ComfyUI executes a prompt."""
    with torch.inference_mode():
        prompt_set, preview = nodes["FADEBuildPromptSet"].execute(
            concepts="airplane", category="object", synonyms="airplane: jet, aircraft", neutral="",
            prompts_per_concept=16, seed=0,
        ).args
        saliency, summary = nodes["FADEComputeSaliency"].execute(
            model, clip, prompt_set, budget="mass_fraction", mass_fraction=1.0, top_k=16, family="cross_attention",
            prompts=4, sampling_steps=4, guidance=3.0, width=SIZE, height=SIZE, seed=0,
        ).args
        settings = dict(
            steps=STEPS, adversary_warmup=WARMUP, learning_rate=5e-3, lora_rank=2, preservation_weight=20.0,
            t0_fraction=0.5, guidance=3.0, sampling_steps=4, batch_size=2, adversary="latent",
            clip_vision_weights="none", clip_architecture="ViT-B-32", width=SIZE, height=SIZE, seed=0,
            gradient_checkpointing=False, robust_every=0, audit_samples=8, filename_prefix=prefix,
        ) | train
        erased, stats = nodes["FADETrainEraser"].execute(model, clip, prompt_set, saliency, **settings).args
    return prompt_set, preview, saliency, summary, erased, stats


def denoise(patcher, clip, seed=0):
    """One x0 prediction of a patched model, through ComfyUI's own loading (which applies patches)."""
    import comfy.model_management

    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    comfy.model_management.load_models_gpu([patcher])
    adapter = ComfyAdapter(patcher, clip, width=SIZE, height=SIZE)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *adapter.sample_shape), generator=generator)
    level = adapter.noise_levels(4)[1].expand(2)
    with torch.no_grad():
        return adapter.predict_x0(x, level, adapter.encode(["a photo of an airplane", "a photo of a cat"]), 3.0)


def test_the_pack_registers_four_v3_nodes_with_its_own_names(host):
    pack, nodes, _ = host
    assert pack.WEB_DIRECTORY == "./web"
    assert set(nodes) == {"FADEBuildPromptSet", "FADEComputeSaliency", "FADETrainEraser", "FADEApplyErasedLoRA"}
    for node in nodes.values():
        schema = node.GET_SCHEMA()
        assert schema.category == "FADE" and schema.description
        assert all(i.tooltip for i in schema.inputs if i.id in ("concepts", "steps", "lora_name"))


class EventRecorder:
    """Stands in for ComfyUI's PromptServer: keeps what the nodes send to the web view."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_all_four_nodes_run_and_comfyui_loads_the_lora(host, clip, family, monkeypatch):
    import comfy.model_management
    import folder_paths
    import nodes as comfy_nodes
    import server
    from comfyui_fade.fade_core.lora import lora_layers

    _, nodes, loras = host
    recorder = EventRecorder()
    monkeypatch.setattr(server.PromptServer, "instance", recorder, raising=False)
    model = BUILDERS[family]()
    before = denoise(model, clip)
    prompt_set, preview, saliency, summary, erased, stats = run_nodes(nodes, model, clip, f"fade/{family}")
    assert "airplane" in preview and ("jet" in preview or "aircraft" in preview)
    assert saliency.selected and saliency.selected[0] in summary
    assert "TV >=" in stats and "audit" in stats
    progress = [data for event, data in recorder.events if event == "fade.progress"]
    assert [p["step"] for p in progress] == [5, 10]  # every 5 steps, and at the final validation
    assert progress[-1]["validation_accuracy"] is not None and progress[-1]["loss_removal"] is not None

    # The graph's model is given back untouched: no LoRA layers left, the same predictions.
    assert not list(lora_layers(model.model.diffusion_model))
    assert torch.equal(denoise(model, clip), before)

    written = [name for name in folder_paths.get_filename_list("loras") if name.startswith(f"fade/{family}")]
    assert written == [f"fade/{family}_00001.safetensors"]
    from comfyui_fade.fade_core.files import read_safetensors_metadata

    metadata = read_safetensors_metadata(loras / written[0])
    kohya_family = {"sd15": "sd_v1", "flux": "flux1"}[family]  # what kohya's tools write and read
    assert metadata["ss_base_model_version"] == metadata["fade_base_model"] == kohya_family
    erased_output = denoise(erased, clip)
    assert (erased_output - before).abs().max() > 1e-6  # the eraser changed the model

    # ComfyUI's own LoraLoader reproduces the Train node's MODEL, and so does Apply Erased LoRA.
    with torch.inference_mode():
        loaded, _ = comfy_nodes.LoraLoader().load_lora(model, clip, written[0], 1.0, 0.0)
        applied, _, erasure = nodes["FADEApplyErasedLoRA"].execute(model, written[0], 1.0).args
    assert torch.allclose(denoise(loaded, clip), erased_output, atol=1e-5)
    assert torch.allclose(denoise(applied, clip), erased_output, atol=1e-5)
    assert "airplane" in erasure and "audit_accuracy" in erasure and "tv_lower_bound" in erasure
    comfy.model_management.unload_all_models()


def test_a_model_the_pack_cannot_handle_is_named(host, clip):
    import comfy.model_sampling
    from comfyui_fade.fade_core.errors import FadeInputError
    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    model = tiny_sd15()
    model.model.model_sampling = comfy.model_sampling.ModelSamplingDiscrete()  # no prediction type mixed in
    with pytest.raises(FadeInputError, match="BaseModel predicts with ModelSamplingDiscrete"):
        ComfyAdapter(model, clip, width=SIZE, height=SIZE)


def test_apply_refuses_other_formats_and_names_outside_the_loras_folder(host):
    from comfyui_fade.fade_core.errors import FadeInputError

    _, nodes, loras = host
    (loras / "old.ckpt").write_bytes(b"not loaded")
    model = tiny_sd15()
    with pytest.raises(FadeInputError, match="safetensors"):
        nodes["FADEApplyErasedLoRA"].execute(model, "old.ckpt", 1.0)
    with pytest.raises(FadeInputError, match="outside|not a file inside"):
        nodes["FADEApplyErasedLoRA"].execute(model, "../escape.safetensors", 1.0)
    with pytest.raises(FadeInputError, match="outside"):
        run_nodes(nodes, model, tiny_clip(), "../../escape")


def test_an_interrupt_keeps_the_last_good_lora_and_leaves_no_half_file(host, clip):
    import comfy.model_management
    import comfy.utils
    from comfyui_fade.fade_core.lora import lora_layers

    _, nodes, loras = host
    model = tiny_sd15()

    def interrupt_after_two_training_steps(value, total, preview, node_id=None):
        if value == WARMUP + 2:
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_after_two_training_steps)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run_nodes(nodes, model, clip, "fade/interrupted")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
    files = sorted(p.name for p in (loras / "fade").iterdir() if p.name.startswith("interrupted"))
    assert files == ["interrupted_00001-interrupted.safetensors"]  # the last good LoRA, no complete file
    assert not [p for p in loras.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not list(lora_layers(model.model.diffusion_model))


def test_flux_lora_gradients_match_finite_differences(host, clip):
    """FLUX's in-place residual adds must not corrupt the gradients the LoRA learns from."""
    from comfyui_fade.fade_core.lora import attach_lora
    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    model = tiny_flux()
    with torch.inference_mode(False), torch.enable_grad(), ComfyAdapter(model, clip, width=SIZE, height=SIZE) as adapter:
        names = [n for n in adapter.lora_candidates("attention") if n.startswith(("double_blocks", "single_blocks"))]
        parameters = attach_lora(adapter, names, rank=2, alpha=2.0, seed=0)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in parameters:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        x = torch.randn((2, *adapter.sample_shape), generator=generator)
        weights = torch.randn((2, *adapter.sample_shape), generator=generator)
        level = adapter.noise_levels(4)[1].expand(2)
        cond = adapter.encode(["a photo of an airplane", "a cat"])

        def loss() -> torch.Tensor:
            return (adapter.predict_x0(x, level, cond, 3.5).double() * weights).sum()

        checked = 0
        for parameter in parameters[:6]:
            (grad,) = torch.autograd.grad(loss(), parameter)
            index = tuple(int(i) for i in torch.nonzero(grad.abs() == grad.abs().max())[0])
            step = 1e-2
            with torch.no_grad():
                parameter[index] += step
                upper = loss().item()
                parameter[index] -= 2 * step
                lower = loss().item()
                parameter[index] += step
            numeric = (upper - lower) / (2 * step)
            assert numeric == pytest.approx(grad[index].item(), rel=2e-2, abs=1e-4)
            checked += 1
    assert checked == 6


def test_model_families_carry_kohyas_names(host):
    from comfyui_fade.nodes.comfy_adapter import model_family

    assert model_family(tiny_sd15()) == "sd_v1"
    assert model_family(tiny_sdxl()) == "sdxl_base_v1-0"
    assert model_family(tiny_flux()) == "flux1"
