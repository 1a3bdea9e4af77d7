"""The method on a CUDA device, as the Train node runs it on a user's GPU.

The loop draws its random numbers on the CPU (the same on every device) and keeps the model's
tensors on the model's device, so a seed gives the same run on both up to the device's arithmetic.
These tests put the embedded model on the GPU and compare with the CPU where the result is
deterministic. They need a GPU and skip without one (CI has none).
"""

import pytest
import torch
from safetensors.torch import load_file

from fade_core.baselines import EsdConfig, UceConfig, edit_uce, erase_esd
from fade_core.digits import attacks
from fade_core.digits.judge import DigitsJudge, default_prompt_set
from fade_core.digits.model import load_pipeline, make_adapter
from fade_core.fade import FadeConfig, FadeTrainer
from fade_core.outputs import LoraOutput
from fade_core.run import erase_and_export

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none: run it where a GPU is)")

TINY = dict(adversary_warmup=1, batch_size=4, validate_every=2, sampling_steps=4, stop_patience=10)


def on_gpu(adapter):
    adapter.unet.to("cuda")
    adapter.text_encoder.to("cuda")
    return adapter


def first_update(adapter, config):
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    trainer = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config)
    return trainer.run().history


def test_one_fade_update_on_the_gpu_computes_what_it_computes_on_the_cpu():
    config = lambda: FadeConfig(steps=1, **TINY)  # noqa: E731
    cpu = first_update(make_adapter(load_pipeline()), config())
    gpu = first_update(on_gpu(make_adapter(load_pipeline())), config())
    assert [r.phase for r in gpu] == ["warmup", "train"]
    for ours, theirs in zip(gpu, cpu):
        # convolutions may run in TF32 on the GPU: equal to about 1e-3, not bit for bit
        assert ours.loss_adversary == pytest.approx(theirs.loss_adversary, rel=2e-2)
    assert gpu[1].loss_removal == pytest.approx(cpu[1].loss_removal, rel=2e-2)


def test_the_robust_extension_in_token_space_trains_the_text_encoder_on_the_gpu(adapter):
    adapter = on_gpu(adapter)
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    modules = list(adapter.lora_candidates("cross_attention")) + list(adapter.lora_candidates("text_encoder"))
    config = FadeConfig(steps=3, **TINY, robust_every=1, robust_attack_steps=2, robust_warmup_steps=2,
                        robust_bank_size=4, robust_targets=4, robust_space="tokens", robust_check_steps=1,
                        robust_check_images=2)
    result = FadeTrainer(adapter, prompt_set, modules, config).run()
    assert result.steps_done == 3
    assert [r.attack_loss is not None for r in result.history if r.phase == "train"] == [True] * 3
    factors = adapter.lora.factors()
    assert any(name.startswith("text_encoder.") for name in factors)
    assert all(up.is_cuda and torch.isfinite(up).all() and up.abs().sum() > 0 for _, up, _ in factors.values())


def test_erase_and_export_with_the_audit_on_the_gpu_writes_a_lora_that_loads(adapter, tmp_path):
    adapter = on_gpu(adapter)
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=2, **TINY, audit_samples=8)
    with LoraOutput.named(tmp_path, "gpu") as output:
        erasure = erase_and_export(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config, output,
                                   base_model="fade-digits")
    tensors = load_file(str(erasure.path))
    assert tensors and all(t.device.type == "cpu" and torch.isfinite(t).all() for t in tensors.values())
    assert erasure.audit.n == 8


def test_the_baselines_on_the_gpu():
    prompt_set = default_prompt_set(["three"], num_prompts=8)
    preserve = ["a handwritten 5", "the digit seven"]
    cpu = edit_uce(make_adapter(load_pipeline()), prompt_set, preserve, config=UceConfig()).deltas
    gpu = edit_uce(on_gpu(make_adapter(load_pipeline())), prompt_set, preserve, config=UceConfig()).deltas
    for name, delta in gpu.items():
        assert delta.is_cuda
        torch.testing.assert_close(delta.cpu(), cpu[name], rtol=2e-2, atol=1e-4)
    adapter = on_gpu(make_adapter(load_pipeline()))
    erase_esd(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), EsdConfig(steps=2))


def test_the_judge_and_the_attacks_measure_a_model_on_the_gpu(adapter):
    adapter = on_gpu(adapter)
    scores = DigitsJudge(concept_images=8, other_images=8, seed=0).measure(adapter, ["eight"])
    assert scores.acc_concept >= 0.5  # nothing erased: the base model draws its eight
    outcome = attacks.embedding_attack_accuracy(adapter, "eight", steps=2, images=8, seed=0)
    assert 0.0 <= outcome.acc <= 1.0 and outcome.images > 0
