"""The baselines learn what their papers say they learn."""

import pytest
import torch
from torch.nn import functional as F

from fade_core.baselines import EsdConfig, UceConfig, applied, delta_as_lora, edit_uce, erase_esd, esd_target
from fade_core.digits.judge import default_prompt_set
from fade_core.lora import lora_disabled
from fade_core.sampling import initial_noise, trajectory_states



@pytest.mark.slow
def test_esd_moves_the_concept_prediction_toward_the_negatively_guided_target(adapter):
    prompt_set = default_prompt_set(["three"])
    concept = adapter.encode([p.concept_prompt for p in prompt_set.pairs("validation")[:6]])
    null = adapter.encode([""] * 6)
    generator = torch.Generator().manual_seed(3)
    x_t = trajectory_states(adapter, concept, initial_noise(adapter, 6, generator), num_steps=10, guidance=2.0, at_steps=[4])[4]
    level = adapter.noise_levels(10)[4].expand(6)

    with torch.no_grad():
        base_target = esd_target(adapter, x_t, level, concept, null, eta=2.0)
        base_gap = F.mse_loss(adapter.predict_x0(x_t, level, concept, 1.0), base_target).item()
    modules = list(adapter.lora_candidates("cross_attention"))
    result = erase_esd(adapter, prompt_set, modules, EsdConfig(steps=60, batch_size=4, learning_rate=3e-3))
    with torch.no_grad():
        with lora_disabled(adapter):  # the frozen model and its target are unchanged
            assert torch.allclose(esd_target(adapter, x_t, level, concept, null, eta=2.0), base_target)
        gap = F.mse_loss(adapter.predict_x0(x_t, level, concept, 1.0), base_target).item()
    # measured: 0.75 of the base gap after 60 steps (at 1e-3 0.85 on these prompts, 0.77 on the earlier prompt draw)
    assert gap < 0.85 * base_gap
    assert len(result.losses) == 60 and set(result.lora) == {f"{m}.{part}" for m in modules for part in ("down", "up")}


def test_uce_is_the_least_squares_edit_it_claims_to_be(adapter):
    prompt_set = default_prompt_set(["three"])
    preserve = ["a handwritten 5", "the digit seven", "number 1", "a bold 8"]
    config = UceConfig(preserve_weight=1.0, regularisation=0.1)
    result = edit_uce(adapter, prompt_set, preserve, config=config)
    assert set(result.deltas) == set(adapter.lora_candidates("cross_attention"))
    pairs = prompt_set.pairs("train") + prompt_set.pairs("validation")

    def tokens(prompts):
        context = adapter.encode(prompts).tensors["context"]
        return context.reshape(-1, context.shape[-1]).T.double()

    concept, neutral, kept = tokens([p.concept_prompt for p in pairs]), tokens([p.neutral_prompt for p in pairs]), tokens(preserve)
    modules = dict(adapter.denoiser.named_modules())
    generator = torch.Generator().manual_seed(0)
    for name, delta in result.deltas.items():
        original = modules[name].weight.detach().double()

        def objective(weight):
            return ((weight @ concept - original @ neutral).pow(2).sum()
                    + config.preserve_weight * (weight @ kept - original @ kept).pow(2).sum()
                    + config.regularisation * (weight - original).pow(2).sum()).item()

        edited = original + delta.double()
        assert objective(edited) < 0.9 * objective(original)
        for _ in range(3):  # the closed form is the minimum: any nudge makes it worse
            nudge = 1e-3 * torch.randn(original.shape, generator=generator, dtype=torch.float64)
            assert objective(edited) <= objective(edited + nudge)

    weights = {name: modules[name].weight.detach().clone() for name in result.deltas}
    with applied(adapter, result.deltas):
        assert all(not torch.equal(modules[name].weight, weights[name]) for name in result.deltas)
    assert all(torch.equal(modules[name].weight, weights[name]) for name in result.deltas)
    delta = next(iter(result.deltas.values()))
    up, down = delta_as_lora(delta, rank=min(delta.shape))
    assert torch.allclose(up @ down, delta, atol=1e-5)
