"""The method on the embedded model: saliency scope, preservation, the adversary, erasure."""

import copy

import pytest
import torch
from torch import nn

from fade_core.digits import attacks
from fade_core.digits.judge import DigitsJudge, default_prompt_set
from fade_core.digits.model import load_pipeline
from fade_core.errors import FadeInputError, FadeTrainingError
from fade_core.fade import FadeConfig, FadeTrainer, preservation_loss
from fade_core.lora import ADAPTER_NAME, attach_lora, lora_layers, lora_state
from fade_core.robust import HeldOutAttack, concept_judge, samples_of_names
from fade_core.saliency import Saliency, compute_saliency, select_modules
from fade_core.sampling import initial_noise, sample


def test_saliency_ranks_cross_attention_and_round_trips(adapter, tmp_path):
    prompt_set = default_prompt_set(["three"])
    saliency = compute_saliency(adapter, prompt_set, top_k=4, num_prompts=16, keep_weight_scores=True)
    assert len(saliency.module_scores) == 14  # the K and V projections of 7 cross-attention blocks
    assert all(".attn2.to_" in name for name in saliency.module_scores)
    assert saliency.selected == [name for name, _ in saliency.ranked()[:4]]
    assert saliency.weight_scores[saliency.selected[0]].shape == adapter.denoiser.get_submodule(saliency.selected[0]).weight.shape
    assert "4 of 14 modules selected" in saliency.summary()

    loaded = Saliency.load(saliency.save(tmp_path / "saliency.safetensors"))
    assert loaded.selected == saliency.selected and loaded.module_scores == saliency.module_scores
    by_mass = loaded.reselect(mass_fraction=0.5)
    mass = sum(loaded.module_scores[m] for m in by_mass.selected) / sum(loaded.module_scores.values())
    assert mass >= 0.5 and len(by_mass.selected) < 14


def test_mass_fraction_takes_the_fewest_modules():
    scores = {"a": 5.0, "b": 3.0, "c": 1.0, "d": 1.0}
    assert select_modules(scores, mass_fraction=0.5)[0] == ["a"]
    assert select_modules(scores, mass_fraction=0.8)[0] == ["a", "b"]
    assert select_modules(scores, top_k=3)[0] == ["a", "b", "c"]


def test_training_changes_only_the_salient_modules(adapter):
    prompt_set = default_prompt_set(["three"], num_prompts=16)
    saliency = compute_saliency(adapter, prompt_set, top_k=3, num_prompts=8)
    before = {k: v.clone() for k, v in adapter.denoiser.state_dict().items()}
    config = FadeConfig(steps=4, adversary_warmup=2, batch_size=4, validate_every=4, learning_rate=1e-2)
    FadeTrainer(adapter, prompt_set, saliency.selected, config).run()

    layers = dict(lora_layers(adapter.denoiser))
    assert sorted(layers) == sorted(saliency.selected)
    assert all(layer.lora_B[ADAPTER_NAME].weight.abs().sum() > 0 for layer in layers.values())
    after = adapter.denoiser.state_dict()
    for key, value in before.items():
        # peft moves each wrapped layer's own weight under "base_layer"; it must still be untouched.
        moved = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        current = after[key] if key in after else after[moved]
        assert torch.equal(current, value), key


def test_preservation_is_zero_at_the_start_and_grows_when_weights_move(adapter):
    prompt_set = default_prompt_set(["three"], num_prompts=8)
    modules = list(adapter.lora_candidates("cross_attention"))
    attach_lora(adapter, modules, rank=4, alpha=4.0, seed=0)
    cond = adapter.encode([p.neutral_prompt for p in prompt_set.train])
    z_t = torch.randn(len(prompt_set.train), 1, 8, 8)
    levels = adapter.noise_levels(10)[torch.arange(len(z_t)) % 5]

    def loss():
        return preservation_loss(adapter, adapter.predict_x0(z_t, levels, cond, 2.0), z_t, levels, cond, 2.0).item()

    assert loss() == 0.0
    with torch.no_grad():
        for _, layer in lora_layers(adapter.denoiser):
            layer.lora_B[ADAPTER_NAME].weight.normal_(0, 0.01)
    small = loss()
    with torch.no_grad():
        for _, layer in lora_layers(adapter.denoiser):
            layer.lora_B[ADAPTER_NAME].weight.mul_(10)
    assert 0.0 < small < loss()


@pytest.mark.slow
def test_adversary_separates_the_base_model_and_training_drives_it_toward_chance(adapter):
    prompt_set = default_prompt_set(["seven"])
    saliency = compute_saliency(adapter, prompt_set, top_k=14)
    config = FadeConfig(steps=150, validate_every=150)
    trainer = FadeTrainer(adapter, prompt_set, saliency.selected, config)
    trainer.pretrain_adversary()
    base_adversary = copy.deepcopy(trainer.adversary)
    assert trainer.validation_accuracy() > 0.9  # D tells the base model's sevens from other digits
    trainer.train()
    # The adversary that knew the base model's sevens can no longer tell the erased model's
    # "seven" samples from its other digits.
    assert trainer.validation_accuracy(base_adversary) < 0.65


def test_a_text_encoder_lora_trains_through_the_prompts(adapter):
    prompt_set = default_prompt_set(["three"], num_prompts=8)
    modules = list(adapter.lora_candidates("text_encoder"))
    assert len(modules) == 4 * 6 and all(m.startswith("text_encoder.encoder.layers.") for m in modules)
    before = adapter.encode(["a handwritten 3"]).tensors["context"]
    config = FadeConfig(steps=3, adversary_warmup=1, batch_size=4, validate_every=3, learning_rate=1e-2, stop_patience=10)
    result = FadeTrainer(adapter, prompt_set, modules, config).run()
    assert result.steps_done == 3
    assert all(up.abs().sum() > 0 for _, up, _ in adapter.lora.factors().values())
    assert (adapter.encode(["a handwritten 3"]).tensors["context"] - before).abs().max() > 0


def test_the_robust_extension_attacks_between_updates_and_trains_on_its_bank(adapter):
    """robust_every > 0: a bank of soft prompts is attacked against the base model before the LoRA
    moves and again every robust_every updates; concept trajectories then start from it."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    modules = list(adapter.lora_candidates("cross_attention"))
    config = FadeConfig(steps=4, adversary_warmup=1, batch_size=4, validate_every=4, sampling_steps=4, stop_patience=10,
                        robust_every=2, robust_attack_steps=2, robust_warmup_steps=2, robust_bank_size=4, robust_targets=8,
                        robust_check_steps=1, robust_check_images=2,
                        robust_share=1.0)
    trainer = FadeTrainer(adapter, prompt_set, modules, config)
    bank = trainer.adversarial
    assert bank is not None and bank.size == 4
    warmed = bank.values.clone()
    calls = []
    original = bank.attack
    bank.attack = lambda steps: calls.append(steps) or original(steps)
    result = trainer.run()
    assert calls == [2, 2]  # after updates 2 and 4
    assert [r.step - config.adversary_warmup for r in result.history if r.attack_loss is not None] == [2, 4]
    assert not torch.equal(bank.values, warmed)  # the attack moved the bank
    assert result.steps_done == 4 and all(torch.isfinite(t).all() for t in result.lora.values())
    assert any(t.abs().sum() > 0 for k, t in result.lora.items() if k.endswith(".up"))


@pytest.mark.parametrize("family", ["cross_attention", "text_encoder"])
def test_empty_prompt_slots_count_in_the_removal_loss_but_do_not_train_the_adversary(adapter, family):
    """empty_prompt_share: a share of the concept trajectories comes from the empty prompt (what an
    embedding that reads as nothing draws); D never learns that those samples are the concept."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=6, adversary_warmup=1, batch_size=8, validate_every=6, sampling_steps=4, stop_patience=10,
                        empty_prompt_share=0.5, learning_rate=1e-2)
    trainer = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates(family)), config)
    pool = trainer.pool
    assert 0 < int(pool.empty.sum()) < 8
    empty_context = adapter.encode([""]).tensors["context"][0]
    context = pool.concept_cond.tensors["context"]
    assert all(torch.equal(context[i], empty_context) == bool(e) for i, e in enumerate(pool.empty.tolist()))
    judged = []
    original = trainer._update_adversary

    def spy(x_c, x_notc, heads):
        judged.append((len(x_c), int((~pool.empty).sum())))
        return original(x_c, x_notc, heads)

    trainer._update_adversary = spy
    removal = []
    trainer.callback = lambda report: report.loss_removal is not None and removal.append(report.loss_removal)
    result = trainer.run()
    assert all(seen == labelled for seen, labelled in judged) and any(seen < 8 for seen, _ in judged)
    assert result.steps_done == 6 and len(removal) == 6 and all(torch.isfinite(torch.tensor(removal)))
    with pytest.raises(FadeInputError, match="empty_prompt_share"):
        FadeConfig(empty_prompt_share=1.0).check()


def test_with_removal_unconditional_grad_off_the_removal_loss_moves_the_conditional_prediction_only(adapter, monkeypatch):
    """removal_unconditional_grad=False: the concept side's guided x0 keeps its value, and its gradient
    is the guidance scale times the conditional prediction's, where the joint one also carries (1 - g)
    times the unconditional's, which L_rem would push toward the concept; a factor between scales that
    share."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=1, adversary_warmup=0, batch_size=4, validate_every=1, sampling_steps=4, guidance=2.0,
                        removal_unconditional_grad=False)
    trainer = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config)
    _, steps, state, _ = trainer.pool.current()
    levels, cond = trainer.levels[steps], trainer.pool.concept_cond
    weights = list(trainer.lora_parameters)

    def gradient(prediction):
        return torch.cat([g.flatten() for g in torch.autograd.grad(prediction.sum(), weights)])

    spared = trainer._guided_through_conditional(state, levels, cond)
    joint = adapter.predict_x0(state, levels, cond, 2.0)
    assert torch.allclose(spared, joint, atol=1e-5)
    through_spared, through_joint = gradient(spared), gradient(joint)
    through_conditional = gradient(adapter.predict_x0(state, levels, cond, 1.0))
    assert torch.allclose(through_spared, 2.0 * through_conditional, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(through_joint, through_spared, rtol=1e-3, atol=1e-6)
    trainer.config.removal_unconditional_grad = 0.5  # halfway: the gradient is the mean of the two
    halfway = trainer._guided_through_conditional(state, levels, cond)
    assert torch.equal(halfway, spared)
    assert torch.allclose(gradient(halfway), (through_joint + through_spared) / 2, rtol=1e-3, atol=1e-6)
    trainer.config.removal_unconditional_grad = False

    calls = []
    monkeypatch.setattr(trainer, "_guided_through_conditional", lambda *a: calls.append(1) or FadeTrainer._guided_through_conditional(trainer, *a))
    trainer.run()
    assert calls  # the training step took that path
    monkeypatch.setattr(adapter, "distilled_guidance", True, raising=False)
    assert not trainer._removal_rescales_unconditional  # guidance is an input there: nothing to spare
    for refused in ("no", float("nan")):
        with pytest.raises(FadeInputError, match="removal_unconditional_grad"):
            FadeConfig(removal_unconditional_grad=refused).check()


def test_pooled_preservation_sees_only_the_gaps_block_averages(adapter):
    """pool k: a gap whose k x k block averages are zero costs nothing; a gap that is constant on each
    block costs what the full comparison charges."""
    attach_lora(adapter, list(adapter.lora_candidates("cross_attention")), rank=4, alpha=4.0, seed=0)
    cond = adapter.encode(["a digit"] * 3)
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(3, 1, 8, 8, generator=generator)
    levels = adapter.noise_levels(10)[:3]
    with torch.no_grad():
        original = adapter.predict_x0(z_t, levels, cond, 2.0)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0  # zero mean on every 2 x 2 block
    blocks = torch.randn(3, 1, 2, 2, generator=generator).repeat_interleave(4, -1).repeat_interleave(4, -2)  # constant on each 4 x 4 block

    def loss(gap, pool):
        return preservation_loss(adapter, original + gap, z_t, levels, cond, 2.0, pool=pool).item()

    assert loss(0.3 * checker.expand(3, 1, 8, 8), 0) > 1.0
    for pool in (1, 2, 4):
        assert loss(0.3 * checker.expand(3, 1, 8, 8), pool) == pytest.approx(0.0, abs=1e-6)
    assert loss(blocks, 2) == pytest.approx(loss(blocks, 0), rel=1e-5)
    assert loss(blocks, 1) < loss(blocks, 2)  # the mean alone sees less of it
    for refused in (-1, 1.5, True):
        with pytest.raises(FadeInputError, match="preservation_unconditional_pool"):
            FadeConfig(preservation_unconditional_pool=refused).check()


def test_preservation_unconditional_also_holds_the_empty_prompts_prediction_at_the_neutral_states(adapter, monkeypatch):
    """L_pres with preservation_unconditional w: the guided gap on the neutral prompts, plus w times the
    gap of the unconditional prediction (guidance 1) at the same early neutral states."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=1, adversary_warmup=0, batch_size=6, validate_every=1, sampling_steps=4, t0_fraction=0.5,
                        guidance=2.0, preservation_unconditional=0.5)
    trainer = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config)
    with torch.no_grad():
        for _, layer in lora_layers(adapter.denoiser):
            layer.lora_B[ADAPTER_NAME].weight.normal_(0, 0.05)
    pairs, steps, _, neutral_state = trainer.pool.current()
    early = steps < trainer.preserved_steps
    assert 0 < int(early.sum()) < len(steps)  # both kinds of slot, so the test sees the cutoff
    state, levels = neutral_state[early], trainer.levels[steps][early]
    neutral, empty = trainer._neutral_cond[pairs[early]], trainer._empty_cond[[0] * int(early.sum())]
    with torch.no_grad():
        guided_gap = preservation_loss(adapter, adapter.predict_x0(state, levels, neutral, 2.0), state, levels, neutral, 2.0)
        unconditional_gap = preservation_loss(adapter, adapter.predict_x0(state, levels, empty, 1.0), state, levels, empty, 1.0)
    assert unconditional_gap > 0
    report = trainer._step(0, training=True)
    assert report.loss_preservation == pytest.approx((guided_gap + 0.5 * unconditional_gap).item(), rel=1e-4)
    monkeypatch.setattr(adapter, "distilled_guidance", True, raising=False)
    calls = []
    monkeypatch.setattr(adapter, "predict_x0", lambda *a: calls.append(a[3]) or type(adapter).predict_x0(adapter, *a))
    trainer._step(1, training=True)
    assert 1.0 not in calls  # guidance is an input there: samples never use u, so nothing holds it
    for refused in (-1.0, float("inf"), "yes"):
        with pytest.raises(FadeInputError, match="preservation_unconditional"):
            FadeConfig(preservation_unconditional=refused).check()


# the robust extension at its smallest: one-step attacks, a bank of 4, two images per held-out start
ROBUST_TINY = dict(robust_attack_steps=1, robust_warmup_steps=1, robust_bank_size=4, robust_targets=4, robust_check_steps=1,
                   robust_check_images=2)


def test_the_empty_prompt_anchor_holds_the_unconditional_prediction_to_the_anchor_target(adapter, monkeypatch):
    """robust_empty_anchor: that share of the anchor loss's entries is the empty prompt as it started
    (the bank's attacked entries have moved away from it), so the LoRA learns the target there too."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=2, adversary_warmup=1, batch_size=4, validate_every=2, sampling_steps=4,
                        robust_every=1, **ROBUST_TINY)
    trainer = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config)
    bank = trainer.adversarial
    empty_context = adapter.encode([""]).tensors["context"][0]
    read = []
    predict = adapter.predict_x0
    monkeypatch.setattr(adapter, "predict_x0", lambda x, level, cond, guidance: read.append(cond.tensors["context"]) or predict(x, level, cond, guidance))

    def anchored(share: float) -> list[bool]:
        read.clear()
        loss = bank.anchor_loss(4, trainer._neutral_anchors, trainer._concept_anchors, "negative_guidance", share)
        assert torch.isfinite(loss) and loss.requires_grad
        return [torch.equal(row, empty_context) for row in read[-1]]  # the last call: the LoRA's own prediction

    assert anchored(1.0) == [True] * 4
    assert anchored(0.5)[:2] == [True, True]
    assert not any(anchored(0.0))  # the warm-up round moved every entry
    with pytest.raises(FadeInputError, match="robust_empty_anchor"):
        FadeConfig(robust_empty_anchor=1.5).check()


@pytest.mark.parametrize("robust_every", [0, 1])
def test_plain_fade_stops_at_chance_and_the_robust_extension_does_not(adapter, robust_every, monkeypatch):
    """stop_accuracy 1.0 counts every validation as chance: plain FADE stops after stop_patience
    validations, a robust run goes on while its held-out attack still finds the concept (here it
    always finds half), since D at chance says nothing of what an attack finds."""
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: 0.5)
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    modules = list(adapter.lora_candidates("cross_attention"))
    config = FadeConfig(steps=3, adversary_warmup=1, batch_size=4, validate_every=1, sampling_steps=4, stop_accuracy=1.0,
                        stop_patience=1, robust_every=robust_every, **ROBUST_TINY)
    result = FadeTrainer(adapter, prompt_set, modules, config).run()
    assert (result.steps_done, result.stopped_at_chance) == ((1, True) if robust_every == 0 else (3, False))


@pytest.mark.parametrize("robust_every", [0, 2])
def test_a_robust_run_also_checks_after_each_attack_round_before_its_first_validation(adapter, robust_every, monkeypatch):
    """validate_every 4, 7 updates: plain FADE validates after updates 4 and 7 (the last); a robust run
    with a round every 2 updates also after 2, and after no later round but at the regular validations."""
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: 0.5)
    config = FadeConfig(steps=7, adversary_warmup=1, batch_size=4, validate_every=4, sampling_steps=4, stop_patience=10,
                        robust_every=robust_every, **ROBUST_TINY)
    result = FadeTrainer(adapter, default_prompt_set(["eight"], num_prompts=8), list(adapter.lora_candidates("cross_attention")),
                         config).run()
    validated = [r.step - config.adversary_warmup for r in result.history if r.validation_accuracy is not None]
    checked = [r.step - config.adversary_warmup for r in result.history if r.held_out_attack is not None]
    assert validated == ([4, 7] if robust_every == 0 else [2, 4, 7])
    assert checked == ([] if robust_every == 0 else [2, 4, 7])


@pytest.mark.parametrize(("shares", "stops_after"), [([0.5, 0.2, 0.4, 0.3], 4), ([0.5, 0.04, 0.4, 0.3], 2)])
def test_a_robust_run_keeps_the_state_its_held_out_attack_judged_best_and_stops_once_that_attack_fails(
    adapter, monkeypatch, shares, stops_after
):
    """The held-out attack's share of concept samples, at each validation, scripted: the run keeps
    the state of the lowest (update 2), holds it in the adapter at the end, and stops as soon as
    the share is at most robust_stop_share (0.05)."""
    scripted = iter(shares)
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: next(scripted))
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=4, adversary_warmup=1, batch_size=4, validate_every=1, sampling_steps=4, robust_every=1,
                        robust_stop_share=0.05, **ROBUST_TINY)
    states = {}

    def record(report):
        if report.phase == "train":
            states[report.step - config.adversary_warmup] = lora_state(adapter)

    result = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config, callback=record).run()
    assert (result.steps_done, result.kept_step, result.held_out_attack) == (stops_after, 2, shares[1])
    assert [r.held_out_attack for r in result.history if r.phase == "train"] == shares[:stops_after]
    now = lora_state(adapter)
    assert all(torch.equal(now[name], states[2][name]) and torch.equal(result.lora[name], states[2][name]) for name in now)
    if stops_after > 2:  # the last state differs: the adapter was put back to the kept one
        assert not all(torch.equal(now[name], states[stops_after][name]) for name in now)


@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_with_lora_average_decay_validations_judge_and_a_run_keeps_the_moving_average(adapter, decay):
    """The state each validation's callback sees, the live LoRA after each update (taken from the
    optimiser's step) and the result: with the average on, what validations see after the first
    update is not the live LoRA, and the run returns what its last validation saw."""
    config = FadeConfig(steps=3, adversary_warmup=1, batch_size=4, validate_every=1, sampling_steps=4, lora_average_decay=decay,
                        stop_patience=99)
    validated, live = [], []

    def record(report):
        if report.phase == "train":
            validated.append(lora_state(adapter))

    trainer = FadeTrainer(adapter, default_prompt_set(["eight"], num_prompts=8), list(adapter.lora_candidates("cross_attention")),
                          config, callback=record)
    step = trainer.model_optimizer.step
    trainer.model_optimizer.step = lambda *args, **kwargs: (step(*args, **kwargs), live.append(lora_state(adapter)))[0]
    result = trainer.run()
    same = lambda a, b: all(torch.equal(a[name], b[name]) for name in a)  # noqa: E731
    assert len(validated) == len(live) == 3 and same(result.lora, validated[-1])
    # the average of the first update alone is that update
    assert [same(seen, now) for seen, now in zip(validated, live)] == [True, decay == 0.0, decay == 0.0]


def test_with_robust_stop_patience_a_robust_run_stops_only_after_that_many_low_checks_in_a_row(adapter, monkeypatch):
    """Shares scripted: at most robust_stop_share (0.05) after updates 2, 4 and 5; with a patience of
    2 the low check at 2 alone does not stop the run, the ones at 4 and 5 do."""
    shares = [0.5, 0.04, 0.4, 0.03, 0.02, 0.3]
    scripted = iter(shares)
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: next(scripted))
    config = FadeConfig(steps=6, adversary_warmup=1, batch_size=4, validate_every=1, sampling_steps=4, robust_every=1,
                        robust_stop_share=0.05, robust_stop_patience=2, **ROBUST_TINY)
    result = FadeTrainer(adapter, default_prompt_set(["eight"], num_prompts=8), list(adapter.lora_candidates("cross_attention")),
                         config).run()
    assert (result.steps_done, result.kept_step, result.held_out_attack) == (5, 5, 0.02)


@pytest.mark.parametrize(("check_on", "stops_after", "kept"), [("attack", 2, 2), ("attack+prompts", 4, 4)])
def test_with_robust_check_on_attack_and_prompts_a_state_is_scored_by_the_larger_of_the_attack_and_the_prompts_share(
    adapter, monkeypatch, check_on, stops_after, kept
):
    """Both shares scripted. The attack finds nothing at update 2, where the judge still calls 40 % of
    the validation concept samples concept: the attack alone keeps update 2 and stops there; with the
    prompts counted the score there is 0.4, and the run goes on to update 4, the first state where
    both are at most robust_stop_share (0.05), and keeps it."""
    attack, prompts = iter([0.5, 0.0, 0.2, 0.02, 0.3]), iter([0.3, 0.4, 0.1, 0.0, 0.0])
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: next(attack))
    monkeypatch.setattr(HeldOutAttack, "share_of", lambda self, samples, heads: next(prompts))
    config = FadeConfig(steps=5, adversary_warmup=1, batch_size=4, validate_every=1, sampling_steps=4, robust_every=1,
                        robust_stop_share=0.05, robust_check_on=check_on, **ROBUST_TINY)
    result = FadeTrainer(adapter, default_prompt_set(["eight"], num_prompts=8), list(adapter.lora_candidates("cross_attention")),
                         config).run()
    assert (result.steps_done, result.kept_step) == (stops_after, kept)
    assert result.held_out_attack == {2: 0.0, 4: 0.02}[kept]  # the attack's own share, as the LoRA's metadata says
    recorded = [r.prompt_share for r in result.history if r.phase == "train"]
    assert recorded == ([None] * 2 if check_on == "attack" else [0.3, 0.4, 0.1, 0.0])


def test_the_prompts_share_is_the_worst_concepts_share_of_its_samples_that_the_judge_calls_that_concept():
    """A judge scripted to return each sample's own value as its logit on every head: concept 0 owns
    samples 0-1 (1 of 2 called concept), concept 1 samples 2-4 (1 of 3); over all samples 2 of 5."""
    held_out = object.__new__(HeldOutAttack)
    held_out.judge = lambda x: x.expand(len(x), 2)
    samples = torch.tensor([[1.0], [-1.0], [-1.0], [1.0], [-1.0]])
    assert held_out.share_of(samples, torch.tensor([0, 0, 1, 1, 1])) == 0.5


def test_an_unknown_robust_check_on_is_refused_with_the_values_that_work():
    with pytest.raises(FadeInputError, match="robust_check_on is 'prompts'; use 'attack' or 'attack\\+prompts'"):
        FadeConfig(robust_check_on="prompts").check()


def test_a_tie_of_the_held_out_attack_goes_to_a_state_with_d_at_chance_then_to_the_least_neutral_drift(adapter, monkeypatch):
    """Updates 2-4 tie on the held-out attack (scripted); D's validation accuracy (scripted, the
    samples are real) is far above chance at update 2, so the tie goes to 3 or 4, whichever moved
    the neutral validation samples less."""
    scripted = iter([0.5, 0.25, 0.25, 0.25])
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: next(scripted))
    measure = FadeTrainer.validation_accuracy
    accuracies = iter([0.5, 0.95, 0.5, 0.5])  # updates 1-4
    monkeypatch.setattr(FadeTrainer, "validation_accuracy",
                        lambda self, adversary=None, samples=None: (measure(self, adversary, samples), next(accuracies))[1])
    config = FadeConfig(steps=4, adversary_warmup=1, batch_size=4, validate_every=1, sampling_steps=4, robust_every=1,
                        learning_rate=3e-3, **ROBUST_TINY)
    trainer = FadeTrainer(adapter, default_prompt_set(["eight"], num_prompts=8), list(adapter.lora_candidates("cross_attention")),
                          config)
    result = trainer.run()
    drift = {r.step - config.adversary_warmup: r.neutral_drift for r in result.history if r.phase == "train"}
    assert all(value > 0 for value in drift.values())  # the LoRA moved the neutral samples
    assert result.kept_step == min((3, 4), key=drift.get)
    assert drift[2] < drift[result.kept_step]  # the least drift alone would have kept update 2
    assert trainer.chance_band < 0.95


def test_the_held_out_attack_starts_from_the_concepts_names_and_finds_each_concept_in_the_base_model(adapter):
    """Its starts are each concept's names alone and the empty prompt (training only ever fills the
    names into templates); judged per concept head by its own judge, the base model draws each
    concept from its names: the worst start's share is high."""
    prompt_set = default_prompt_set(["eight", "three"], num_prompts=24)
    held_out = HeldOutAttack(adapter, prompt_set, steps=0, images=8, targets=32, sampling_steps=10,
                             guidance=2.0, seed=0, space="context")
    assert held_out.starts == [["eight", "8", ""], ["three", "3", ""]]
    assert not {s for starts in held_out.starts for s in starts} & {p.concept_prompt for p in prompt_set.train}
    assert [len(t) for t in held_out.targets] == [32, 32]
    assert attacks.is_concept(held_out.targets[0], "eight").float().mean() >= 0.75  # the base model's picture of each name
    assert held_out.share() >= 0.75


def test_the_held_out_judge_tells_each_concept_from_its_neutral_prompts_on_fresh_samples(adapter):
    """concept_judge learns from the base model's samples; on samples it never saw (other noise), head
    h calls most of concept h's samples concept, and few of its neutral prompts' samples or of the
    other concept's samples (eight and three look alike)."""
    prompt_set = default_prompt_set(["eight", "three"], num_prompts=24)
    generator = torch.Generator().manual_seed(0)
    names = [samples_of_names(adapter, prompt_set, c, 32, generator, sampling_steps=10, guidance=2.0) for c in prompt_set.concepts]
    judge = concept_judge(adapter, prompt_set, names, generator, sampling_steps=10, guidance=2.0, seed=0)
    fresh = torch.Generator().manual_seed(1)
    concept_samples, neutral_samples = [], []
    for concept in prompt_set.concepts:
        pairs = [p for p in prompt_set.pairs("all") if p.concept == concept][:16]
        with torch.no_grad():
            concept_samples.append(sample(adapter, adapter.encode([p.concept_prompt for p in pairs]),
                                          initial_noise(adapter, 16, fresh), num_steps=10, guidance=2.0))
            neutral_samples.append(sample(adapter, adapter.encode([p.neutral_prompt for p in pairs]),
                                          initial_noise(adapter, 16, fresh), num_steps=10, guidance=2.0))
    for head in range(2):
        with torch.no_grad():
            called = lambda x: (judge(x)[:, head] > 0).float().mean().item()  # noqa: E731
            assert called(concept_samples[head]) >= 0.75
            assert called(neutral_samples[head]) <= 0.25
            assert called(concept_samples[1 - head]) <= 0.1


@pytest.mark.parametrize("target", ["negative_guidance", "neutral"])
def test_the_anchor_loss_pulls_bank_predictions_of_the_concept_to_the_base_model_without_it(adapter, target):
    """negative_guidance: the base model's prediction for the bank's own conditioning less the
    concept's direction (concept prompt minus neutral prompt, as ESD's target); neutral: the base
    model's prediction for the neutral prompt. Checked on the model calls the loss makes, with a
    LoRA that has moved, so that the erased prediction differs from the base model's."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=1, adversary_warmup=1, batch_size=4, sampling_steps=4, robust_every=1, robust_attack_steps=1,
                        robust_warmup_steps=1, robust_bank_size=4, robust_targets=4, robust_anchor_target=target,
                        robust_check_steps=1, robust_check_images=2)
    trainer = FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("cross_attention")), config)
    with torch.no_grad():
        for _, up, _ in adapter.lora.factors().values():
            up.normal_(0, 0.05)
    neutral, concept = trainer._neutral_anchors[0][[0]], trainer._concept_anchors[0][[0]]
    calls, original = [], adapter.predict_x0

    def recorded(x_t, level, cond, guidance):
        out = original(x_t, level, cond, guidance)
        context = cond.tensors["context"]
        kind = ("neutral" if torch.equal(context[0], neutral.tensors["context"][0])
                else "concept" if torch.equal(context[0], concept.tensors["context"][0]) else "bank")
        calls.append((kind, torch.is_grad_enabled(), out.detach()))
        return out

    adapter.predict_x0 = recorded
    try:
        loss = trainer.adversarial.anchor_loss(3, [neutral], [concept], target)
    finally:
        del adapter.predict_x0
    by_kind = {(kind, grad): out for kind, grad, out in calls}
    erased = by_kind[("bank", True)]
    if target == "neutral":
        assert [kind for kind, _, _ in calls] == ["neutral", "bank"]
        expected = by_kind[("neutral", False)]
    else:
        assert sorted(kind for kind, _, _ in calls) == ["bank", "bank", "concept", "neutral"]
        base = by_kind[("bank", False)]
        assert not torch.allclose(base, erased)  # the LoRA has moved
        expected = base - (by_kind[("concept", False)] - by_kind[("neutral", False)])
    assert torch.allclose(loss, (erased - expected).pow(2).flatten(1).sum(1).mean())


def test_the_robust_attack_in_token_space_reads_its_words_through_the_text_encoder_being_trained(adapter):
    """robust_space "tokens" (AdvUnlearn's setting): the bank holds word embeddings; the slots that
    start from it are read anew by the text encoder, so its LoRA learns from them too."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    modules = list(adapter.lora_candidates("text_encoder"))
    config = FadeConfig(steps=2, adversary_warmup=1, batch_size=4, validate_every=2, sampling_steps=4, stop_patience=10,
                        robust_every=1, robust_attack_steps=2, robust_warmup_steps=2, robust_bank_size=4, robust_targets=8,
                        robust_check_steps=1, robust_check_images=2,
                        robust_share=1.0, robust_space="tokens", robust_anchor_weight=0.0)
    trainer = FadeTrainer(adapter, prompt_set, modules, config)
    bank = trainer.adversarial
    assert bank.values.shape[-1] == adapter.text_encoder.config.hidden_size and bank.words.any()
    starts = bank.start_values[bank.origins]
    assert not torch.equal(bank.values[bank.words[bank.origins]], starts[bank.words[bank.origins]])  # the warm-up moved the words
    assert torch.equal(bank.values[~bank.words[bank.origins]], starts[~bank.words[bank.origins]])  # BOS, EOS, padding stay
    read = bank.read(bank.origins, bank.values)
    assert read.tensors["context"].requires_grad  # through the text encoder's LoRA
    concept, _ = trainer._read_by_current_text_encoder(trainer.pool.pairs, trainer.pool.concept_cond)
    assert concept.tensors["context"].requires_grad
    from_words = bank.read(trainer.pool.bank_origins, trainer.pool.bank_values).tensors["context"]
    from_prompts = adapter.encode([trainer.train_pairs[i].concept_prompt for i in trainer.pool.pairs.tolist()]).tensors["context"]
    assert torch.allclose(concept.tensors["context"], from_words, atol=1e-6)
    assert not torch.allclose(concept.tensors["context"], from_prompts, atol=1e-3)
    result = trainer.run()
    assert result.steps_done == 2 and any(t.abs().sum() > 0 for k, t in result.lora.items() if k.endswith(".up"))


def test_a_bank_of_both_kinds_grows_half_its_entries_as_words_and_hands_the_trainer_what_the_text_encoder_reads(adapter):
    """robust_space "context+tokens": half the entries are soft contexts, half word embeddings that
    the (frozen) text encoder reads after every round; the trainer sees contexts only."""
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    modules = list(adapter.lora_candidates("cross_attention"))
    config = FadeConfig(steps=2, adversary_warmup=1, batch_size=4, validate_every=2, sampling_steps=4, stop_patience=10,
                        robust_every=1, robust_attack_steps=2, robust_warmup_steps=2, robust_bank_size=4, robust_targets=8,
                        robust_check_steps=1, robust_check_images=2, robust_share=1.0, robust_space="context+tokens")
    trainer = FadeTrainer(adapter, prompt_set, modules, config)
    bank = trainer.adversarial
    context, words = bank.parts
    assert (context.space, context.size, words.space, words.size) == ("context", 2, "tokens", 2)
    assert bank.values.shape == (4, *adapter.encode(["x"]).tensors["context"].shape[1:])
    assert torch.equal(bank.values[:2], context.values)
    ids, starts, positions = words.ids[words.origins], words.start_values[words.origins], words.words[words.origins]
    with torch.no_grad():
        read = adapter.encode_soft_words(ids, starts, positions, words.values).tensors["context"]
        unmoved = adapter.encode_soft_words(ids, starts, positions, starts).tensors["context"]
    assert torch.allclose(bank.values[2:], read)
    assert not torch.allclose(read, unmoved, atol=1e-4)  # the warm-up round moved the words
    before = bank.values.clone()
    result = trainer.run()
    assert trainer.held_out.space == "context"  # the check attacks in context space, the stronger attacker
    assert not torch.equal(bank.values, before)  # both parts moved on and were gathered again
    assert result.steps_done == 2 and any(t.abs().sum() > 0 for k, t in result.lora.items() if k.endswith(".up"))


def test_a_bank_of_both_kinds_refuses_a_text_encoder_that_trains(adapter):
    prompt_set = default_prompt_set(["eight"], num_prompts=8)
    config = FadeConfig(steps=1, robust_every=1, robust_space="context+tokens", **ROBUST_TINY)
    with pytest.raises(FadeInputError, match="context\\+tokens.*text encoder"):
        FadeTrainer(adapter, prompt_set, list(adapter.lora_candidates("text_encoder")), config)
