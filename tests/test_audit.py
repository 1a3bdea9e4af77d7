"""The audit: a fresh adversary on the model's own samples. It must see a concept that is still
there, find nothing when the concept is truly gone, and repeat itself for a seed."""

import pytest

from fade_core.audit import audit
from fade_core.digits.judge import default_prompt_set
from fade_core.digits.model import DEFAULT_GUIDANCE, DEFAULT_SAMPLING_STEPS
from fade_core.errors import FadeInputError
from fade_core.lora import attach_lora

BUDGET = dict(samples=96, guidance=DEFAULT_GUIDANCE, sampling_steps=DEFAULT_SAMPLING_STEPS, adversary_steps=200)


def test_the_audit_sees_a_concept_that_nothing_erased(adapter):
    prompt_set = default_prompt_set(["eight"], num_prompts=16)
    base = audit(adapter, prompt_set, seed=0, **BUDGET)
    assert base.n == 96 and base.train_samples == 96
    assert base.accuracy > 0.9 and base.ci_low > 0.8 and base.ci_low <= base.accuracy <= base.ci_high

    # A LoRA that erases nothing (peft starts its up-projection at zero) draws the base model's
    # samples, so a fresh adversary judges them exactly as it judged the base model's.
    attach_lora(adapter, list(adapter.lora_candidates("cross_attention")), rank=4, alpha=4.0, seed=0)
    untouched = audit(adapter, prompt_set, seed=0, **BUDGET)
    assert (untouched.correct, untouched.train_accuracy) == (base.correct, base.train_accuracy)

    meta = untouched.metadata()
    assert meta["fade_audit_accuracy"] == round(untouched.accuracy, 4)
    assert meta["fade_audit_ci95"] == [round(untouched.ci_low, 4), round(untouched.ci_high, 4)]
    assert meta["fade_audit_n"] == 96
    assert meta["fade_tv_lower_bound"] == round(2 * untouched.accuracy - 1, 4)
    assert "lower bound" in meta["fade_audit_note"] and "Bayes-optimal" in meta["fade_audit_note"]


def test_the_audit_is_at_chance_when_the_concept_is_gone_and_repeats_for_a_seed(adapter):
    """Concept prompts encoded exactly as their neutral twins: a perfect erasure."""
    prompt_set = default_prompt_set(["eight"], num_prompts=16)
    twin = {p.concept_prompt: p.neutral_prompt for p in prompt_set.pairs("all")}
    encode = adapter.encode
    adapter.encode = lambda prompts: encode([twin.get(p, p) for p in prompts])

    gone = audit(adapter, prompt_set, seed=0, **BUDGET)
    assert gone.ci_low < 0.5 < gone.ci_high
    assert gone.tv_lower_bound == max(0.0, 2 * gone.accuracy - 1) and gone.tv_lower_bound_ci95 == 0.0

    seen = []
    again = audit(adapter, prompt_set, seed=0, progress=lambda done, total: seen.append((done, total)), **BUDGET)
    assert (again.correct, again.train_accuracy, again.ci_low) == (gone.correct, gone.train_accuracy, gone.ci_low)
    # progress: one generation batch (192 prompts) and the adversary's 200 steps, reported every 10
    assert seen[0] == (1, 201) and seen[-1] == (201, 201) and len(seen) == 1 + 20
    assert all(a < b for (a, _), (b, _) in zip(seen, seen[1:]))


def test_the_audit_refuses_budgets_that_leave_nothing_to_judge(adapter):
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    with pytest.raises(FadeInputError, match="held_out_fraction"):
        audit(adapter, prompt_set, samples=4, held_out_fraction=1.0, guidance=2.0, sampling_steps=2)
