"""The graph's MODEL is never touched. After Compute Saliency and Train FADE Eraser (complete,
failed or interrupted), the MODEL given to them, and every other clone of its BaseModel, has
bit-identical weights, the same patches and no trace of the training (no peft, no weight
wrappers, no patched forwards), and renders exactly as before; a MODEL that carries an upstream
LoRA is trained on its patched weights. SD1.5- and FLUX-shaped tiny models. Needs COMFYUI_PATH.
"""

from __future__ import annotations

import pytest
import torch

from comfy_host import SKIP_REASON, comfyui_path, node_classes, start_host, tiny_clip, tiny_flux, tiny_sd15

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)]

SIZE = 64
WARMUP, STEPS = 2, 3
BUILDERS = {"sd15": tiny_sd15, "flux": tiny_flux}
# Modules an upstream LoRA (a LoraLoader before FADE) changes: some that FADE also trains, some not.
UPSTREAM_TARGETS = {
    "sd15": lambda name: name.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_q", "proj_in")),
    "flux": lambda name: name.endswith(("txt_attn.qkv", "img_attn.qkv", "linear1")),
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    pack = start_host(str(tmp_path_factory.mktemp("loras")))
    return node_classes(pack)


@pytest.fixture(scope="module")
def clip(host):
    return tiny_clip()


def with_upstream_lora(model, family: str):
    """What LoraLoader gives: a clone of the MODEL whose patches add a random LoRA."""
    import comfy.sd

    generator = torch.Generator().manual_seed(7)
    lora = {}
    for name, module in model.model.diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear) and UPSTREAM_TARGETS[family](name):
            out_features, in_features = module.weight.shape
            lora[f"diffusion_model.{name}.lora_down.weight"] = 0.3 * torch.randn((2, in_features), generator=generator)
            lora[f"diffusion_model.{name}.lora_up.weight"] = 0.3 * torch.randn((out_features, 2), generator=generator)
            lora[f"diffusion_model.{name}.alpha"] = torch.tensor(2.0)
    with torch.inference_mode():
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert patched.patches, "the upstream LoRA matched no weight"
    return patched


def conditioning(clip, model):
    from comfyui_fade.nodes.comfy_adapter import ComfyAdapter

    with torch.inference_mode():
        adapter = ComfyAdapter(model, clip, width=SIZE, height=SIZE)
        return adapter, adapter.encode(["a photo of an airplane", "a photo of a cat"])


def comfy_render(patcher, clip) -> torch.Tensor:
    """One x0 prediction the way ComfyUI's sampler makes it: load the patcher (its patches go into
    the shared weights), then the BaseModel's apply_model, under inference mode."""
    import comfy.model_management

    adapter, cond = conditioning(clip, patcher)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([patcher])
        x = torch.randn((2, *adapter.sample_shape), generator=generator)
        sigma = adapter.noise_levels(4)[1].expand(2)
        kwargs = dict(cond.tensors)
        if adapter.distilled_guidance:
            kwargs["guidance"] = torch.full((2,), 3.0)
        return patcher.model.apply_model(x, sigma, **kwargs).clone()


def snapshot(model) -> dict:
    """Everything of the shared BaseModel and of the MODEL's patcher that the nodes could change:
    the stored weights (nothing loaded), the weights ComfyUI computes when it loads this MODEL
    (its patches applied), and the patcher's patches and options."""
    import comfy.model_management

    base = model.model

    def tensors():
        return {name: t.detach().clone() for name, t in list(base.named_parameters()) + list(base.named_buffers())}

    comfy.model_management.unload_all_models()
    stored = tensors()
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
    loaded = tensors()
    comfy.model_management.unload_all_models()
    return {
        "stored": stored,
        "loaded": loaded,
        "patches": {key: [id(patch) for patch in patches] for key, patches in model.patches.items()},
        "object_patches": dict(model.object_patches),
        "weight_wrappers": {key: list(v) for key, v in model.weight_wrapper_patches.items()},
        "model_options": repr(model.model_options),
    }


def assert_no_trace(model) -> None:
    """Right after a node: nothing of FADE is left on the shared BaseModel."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = model.model
    assert not hasattr(base.diffusion_model, "peft_config")
    for name, module in base.named_modules():
        assert not isinstance(module, BaseTunerLayer), name
        assert not getattr(module, "weight_function", []) and not getattr(module, "bias_function", []), name
        assert "forward" not in vars(module), name  # no checkpointing override left behind
    for name, tensor in list(base.named_parameters()) + list(base.named_buffers()):
        assert not tensor.requires_grad, name


def assert_untouched(model, before: dict) -> None:
    after = snapshot(model)
    for state in ("stored", "loaded"):
        assert after[state].keys() == before[state].keys()
        for name, tensor in before[state].items():
            assert after[state][name].dtype == tensor.dtype and torch.equal(after[state][name], tensor), (state, name)
    for key in ("patches", "object_patches", "weight_wrappers", "model_options"):
        assert after[key] == before[key], key


def run_saliency_and_training(nodes, model, clip, prefix, **train):
    with torch.inference_mode():
        prompt_set, _ = nodes["FADEBuildPromptSet"].execute(
            concepts="airplane", category="object", synonyms="", neutral="", prompts_per_concept=8, seed=0,
        ).args
        saliency, _ = nodes["FADEComputeSaliency"].execute(
            model, clip, prompt_set, budget="top_k", mass_fraction=1.0, top_k=4, family="cross_attention",
            prompts=2, sampling_steps=3, guidance=3.0, width=SIZE, height=SIZE, seed=0,
        ).args
        settings = dict(
            steps=STEPS, adversary_warmup=WARMUP, learning_rate=1e-2, lora_rank=2, preservation_weight=1.0,
            t0_fraction=0.5, guidance=3.0, sampling_steps=3, batch_size=2, adversary="latent",
            clip_vision_weights="none", clip_architecture="ViT-B-32", width=SIZE, height=SIZE, seed=0,
            gradient_checkpointing=False, robust_every=0, audit_samples=8, filename_prefix=prefix,
        ) | train
        return nodes["FADETrainEraser"].execute(model, clip, prompt_set, saliency, **settings).args


class Stop(RuntimeError):
    pass


@pytest.mark.parametrize("ending", ["complete", "error", "interrupt"])
@pytest.mark.parametrize("upstream", ["plain", "upstream_lora"])
@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_training_leaves_the_graphs_model_untouched(host, clip, family, upstream, ending):
    import comfy.model_management
    import comfy.utils

    plain = BUILDERS[family]()
    graph_model = with_upstream_lora(plain, family) if upstream == "upstream_lora" else plain
    renders = {"plain": comfy_render(plain, clip), "graph": comfy_render(graph_model, clip)}
    if upstream == "upstream_lora":
        assert not torch.equal(renders["plain"], renders["graph"])  # the upstream LoRA does something
    before = {"plain": snapshot(plain), "graph": snapshot(graph_model)}

    def stop_during_training(value, total, preview, node_id=None):
        if value == WARMUP + 2:
            if ending == "interrupt":
                comfy.model_management.interrupt_current_processing(True)
            else:
                raise Stop("a failure in the middle of training")

    if ending != "complete":
        comfy.utils.set_progress_bar_global_hook(stop_during_training)
    erased = None
    try:
        if ending == "complete":
            erased, stats = run_saliency_and_training(host, graph_model, clip, f"untouched/{family}_{upstream}",
                                                      gradient_checkpointing=upstream == "upstream_lora")
            assert "TV >=" in stats and "audit" in stats
        else:
            expected = comfy.model_management.InterruptProcessingException if ending == "interrupt" else Stop
            with pytest.raises(expected):
                run_saliency_and_training(host, graph_model, clip, f"untouched/{family}_{upstream}_{ending}")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)

    # The MODEL the nodes were given, and the plain one it came from, are as they were...
    assert_no_trace(graph_model)
    assert_untouched(graph_model, before["graph"])
    assert_untouched(plain, before["plain"])
    assert torch.equal(comfy_render(graph_model, clip), renders["graph"])
    assert torch.equal(comfy_render(plain, clip), renders["plain"])
    if erased is not None:  # ... while the erased MODEL differs, and rendering it changes neither.
        assert not torch.equal(comfy_render(erased, clip), renders["graph"])
        assert torch.equal(comfy_render(graph_model, clip), renders["graph"])
        assert_untouched(graph_model, before["graph"])
    comfy.model_management.unload_all_models()


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_the_adapter_trains_on_the_weights_the_upstream_lora_patched(host, clip, family):
    """With gradients on (ordinary tensors, weight wrappers), the adapter's prediction is ComfyUI's
    own prediction of the patched MODEL, not of the plain one."""
    from comfyui_fade.fade_core.lora import attach_lora

    plain = BUILDERS[family]()
    graph_model = with_upstream_lora(plain, family)
    expected = comfy_render(graph_model, clip)
    adapter, cond = conditioning(clip, graph_model)
    names = list(adapter.lora_candidates("cross_attention"))[:2]
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad(), adapter:
        parameters = attach_lora(adapter, names, rank=2, alpha=2.0, seed=0)  # up starts at zero: no change
        x = torch.randn((2, *adapter.sample_shape), generator=generator)
        sigma = adapter.noise_levels(4)[1].expand(2)
        predicted = adapter.predict_x0(x, sigma, cond, 3.0 if adapter.distilled_guidance else 1.0)  # as comfy_render
        predicted.sum().backward()
        assert all(p.grad is not None for p in parameters)
    assert torch.allclose(predicted, expected.float(), atol=1e-5)
    assert not torch.allclose(predicted, comfy_render(plain, clip).float(), atol=1e-3)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_gradient_checkpointing_gives_the_same_gradients(host, clip, family):
    from comfyui_fade.fade_core.lora import attach_lora

    grads = {}
    for checkpointing in (False, True):
        model = BUILDERS[family]()
        adapter, cond = conditioning(clip, model)
        adapter.gradient_checkpointing = checkpointing
        generator = torch.Generator().manual_seed(0)
        with torch.inference_mode(False), torch.enable_grad(), adapter:
            names = list(adapter.lora_candidates("attention"))
            parameters = attach_lora(adapter, names, rank=2, alpha=2.0, seed=0)
            with torch.no_grad():
                for p in parameters:
                    p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            x = torch.randn((2, *adapter.sample_shape), generator=generator)
            sigma = adapter.noise_levels(4)[1].expand(2)
            adapter.predict_x0(x, sigma, cond, 3.0).pow(2).sum().backward()
            grads[checkpointing] = [p.grad.clone() for p in parameters]
            assert not [m for m in model.model.modules() if "forward" in vars(m)]
    assert len(grads[True]) == len(grads[False]) > 4
    for with_checkpoints, without in zip(grads[True], grads[False]):  # equal up to float rounding: recomputed, not kept
        assert (with_checkpoints - without).norm() <= 1e-5 * without.norm()


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_a_bfloat16_model_trains_a_float32_lora(host, clip, family):
    """The model stays in its own dtype; the LoRA is float32 and gets finite gradients through it."""
    from comfyui_fade.fade_core.lora import attach_lora

    model = BUILDERS[family](torch.bfloat16)
    adapter, cond = conditioning(clip, model)
    x = torch.randn((2, *adapter.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(False), torch.enable_grad(), adapter:
        parameters = attach_lora(adapter, list(adapter.lora_candidates("cross_attention")), rank=2, alpha=2.0, seed=0)
        with torch.no_grad():
            for p in parameters:
                p.normal_(0, 0.1)
        predicted = adapter.predict_x0(x, adapter.noise_levels(4)[1].expand(2), cond, 3.0)
        predicted.float().pow(2).mean().backward()
        assert {p.dtype for p in parameters} == {torch.float32}
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in parameters)
        assert torch.isfinite(predicted).all()
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_gradient_checkpointing_keeps_fewer_activations_for_backward(host, clip, family, monkeypatch):
    """Counts the bytes of activations an x0 prediction keeps for backward (parameters aside):
    with checkpointing only the blocks' inputs stay; the rest is recomputed in backward."""
    from comfyui_fade.fade_core.lora import attach_lora
    from comfyui_fade.nodes import comfy_adapter

    saved = 0

    def count(tensor):
        nonlocal saved
        if not isinstance(tensor, torch.nn.Parameter):
            saved += tensor.numel() * tensor.element_size()
        return tensor

    copy_activation = comfy_adapter._copy_activation  # FLUX's hook without checkpointing; it sees what is kept
    monkeypatch.setattr(comfy_adapter, "_copy_activation", lambda tensor: copy_activation(count(tensor)))
    kept = {}
    for checkpointing in (False, True):
        adapter, cond = conditioning(clip, BUILDERS[family]())
        adapter.gradient_checkpointing = checkpointing
        x = torch.randn((2, *adapter.sample_shape), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(False), torch.enable_grad(), adapter:
            attach_lora(adapter, list(adapter.lora_candidates("cross_attention")), rank=2, alpha=2.0, seed=0)
            saved = 0
            with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
                adapter.predict_x0(x, adapter.noise_levels(4)[1].expand(2), cond, 3.0)
            kept[checkpointing] = saved
    assert kept[True] < 0.5 * kept[False], kept


def test_a_second_training_gives_no_peft_warning(host, clip, caplog):
    model = tiny_sd15()
    for run in range(2):
        run_saliency_and_training(host, model, clip, f"untouched/twice_{run}")
    assert "peft_config" not in caplog.text
