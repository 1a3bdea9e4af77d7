"""FADE, Algorithm 1 of the paper: adversarial concept erasure with trajectory preservation.

    Require: model M_theta (through a DenoiserAdapter), concept prompts P_c and their neutral
             twins P_notc (a PromptSet), the salient modules (a Saliency), guidance omega,
             preservation weight lambda.

    attach a LoRA to the salient modules only                         (line 3, line 9)
    for i = 1 .. warmup + N:
        draw a batch of pairs (y_c, y_notc)                           (line 5)
        sample their trajectories with the current model, without
        gradient, to a random step k; take one differentiable x0
        prediction there: x_c, and x_notc                            (line 6)
        update D on BCE(D(x_c), 1) + BCE(D(x_notc), 0)                (line 7)
        after the warm-up, update the LoRA on                         (line 8)
            L_rem  = -log(1 - D(x_c))
            L_pres = |x0_theta(z_t, y_notc) - x0_orig(z_t, y_notc)|^2
                     at a step t inside the first T0 fraction of the trajectory
            L      = L_rem + lambda * L_pres
        every few steps: D's accuracy on validation pairs; stop once it stays near chance.

Two choices the paper leaves open, made explicit here:

- T0 is ``t0_fraction``, a share of the sampling steps counted from pure noise: with 10 steps and
  0.5, L_pres covers steps 0-4, the high-noise half where the layout of an image is decided.
- L_pres compares x0 predictions (not noise predictions), so that one loss serves eps-, v- and
  flow-prediction models; at a fixed x_t the two differ only by a per-step factor.

The D warm-up is the paper's "pre-train D_phi for a few epochs on initial outputs" (4.3): the
same loop with the model updates switched off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .adapter import Conditioning, DenoiserAdapter
from .adversary import build_adversary
from .errors import FadeInputError, FadeTrainingError
from .lora import attach_lora, lora_disabled, lora_state, tv_bound
from .prompts import PromptPair, PromptSet
from .sampling import initial_noise, preservation_steps, sample, trajectory_states


@dataclass
class FadeConfig:
    steps: int = 300  # N: LoRA updates after the warm-up
    adversary_warmup: int = 60  # D updates on the base model's own samples before the LoRA moves
    batch_size: int = 16  # prompt pairs per step
    lora_rank: int = 4
    lora_alpha: float = 4.0
    learning_rate: float = 1e-3  # LoRA
    adversary_learning_rate: float = 1e-3
    preservation_weight: float = 1.0  # lambda
    t0_fraction: float = 0.5  # L_pres on this share of the sampling steps, from the noisy end
    guidance: float = 2.0  # omega, for every sample and prediction in the loop
    sampling_steps: int = 10  # length of the trajectories the loop samples
    adversary: str = "latent"  # "latent" or "clip"
    validate_every: int = 25
    validation_repeats: int = 2  # samples per validation pair
    stop_accuracy: float = 0.55  # D's validation accuracy counted as chance
    stop_patience: int = 2  # consecutive validations at chance before stopping
    seed: int = 0

    def check(self) -> None:
        positive = ("steps", "batch_size", "lora_rank", "sampling_steps", "validate_every", "validation_repeats", "stop_patience")
        for name in positive:
            if getattr(self, name) < 1:
                raise FadeInputError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if self.adversary_warmup < 0:
            raise FadeInputError("adversary_warmup must be 0 or more")
        if self.learning_rate <= 0 or self.adversary_learning_rate <= 0:
            raise FadeInputError("learning rates must be positive")
        if self.preservation_weight < 0:
            raise FadeInputError("preservation_weight (lambda) must be 0 or more")
        if not 0.0 < self.t0_fraction <= 1.0:
            raise FadeInputError(
                f"t0_fraction is {self.t0_fraction}; it is the share of sampling steps, from pure noise, "
                "whose neutral predictions are preserved, so it must be in (0, 1]"
            )
        if not 0.5 <= self.stop_accuracy <= 1.0:
            raise FadeInputError("stop_accuracy must be between 0.5 (chance) and 1")


@dataclass
class StepReport:
    """What each step reports to the callback (progress bars, the web chart)."""

    step: int
    total: int
    phase: str  # "warmup" or "train"
    loss_adversary: float
    adversary_accuracy: float  # on this step's batch
    loss_removal: float | None = None
    loss_preservation: float | None = None
    validation_accuracy: float | None = None  # on validation pairs, when measured this step
    elapsed: float = 0.0


@dataclass
class FadeResult:
    lora: dict[str, torch.Tensor] = field(repr=False)
    steps_done: int
    validation_accuracy: float
    stopped_at_chance: bool
    history: list[StepReport]
    seconds: float

    @property
    def tv_bound(self) -> float:
        return tv_bound(self.validation_accuracy)

    def metadata(self, prompt_set: PromptSet, config: FadeConfig, saliency_modules: Sequence[str]) -> dict[str, object]:
        """What an exported LoRA records about how it was made."""
        return {
            "fade_method": "FADE",
            "fade_concepts": prompt_set.concepts,
            "fade_category": prompt_set.category,
            "fade_synonyms": prompt_set.synonyms,
            "fade_hyperparameters": asdict(config),
            "fade_modules": list(saliency_modules),
            "fade_steps_done": self.steps_done,
            "fade_final_adversary_accuracy": round(self.validation_accuracy, 4),
            "fade_tv_bound": round(self.tv_bound, 4),
            "fade_tv_bound_note": "TV <= 2a - 1 holds for a Bayes-optimal adversary of accuracy a (paper section 5)",
            "fade_stopped_at_chance": self.stopped_at_chance,
        }


class FadeTrainer:
    """Runs Algorithm 1. ``last_good`` always holds the newest LoRA weights known to be finite,
    so a caller can save them when the run is interrupted or fails."""

    def __init__(
        self,
        adapter: DenoiserAdapter,
        prompt_set: PromptSet,
        salient_modules: Sequence[str],
        config: FadeConfig | None = None,
        *,
        adversary: nn.Module | None = None,
        callback: Callable[[StepReport], None] | None = None,
    ) -> None:
        self.config = config or FadeConfig()
        self.config.check()
        if not prompt_set.train or not prompt_set.validation:
            raise FadeInputError("the prompt set needs training and validation pairs; build it with more prompts")
        self.adapter = adapter
        self.prompt_set = prompt_set
        self.callback = callback
        self.random = random.Random(self.config.seed)
        self.generator = torch.Generator().manual_seed(self.config.seed)

        # Line 3 and line 9: only the salient modules can change, through the LoRA.
        self.lora_parameters = attach_lora(
            adapter, salient_modules, self.config.lora_rank, self.config.lora_alpha, self.config.seed
        )
        self.adversary = adversary or build_adversary(
            self.config.adversary, adapter.sample_shape, len(prompt_set.concepts), seed=self.config.seed
        )
        self.model_optimizer = torch.optim.Adam(self.lora_parameters, lr=self.config.learning_rate)
        self.adversary_optimizer = torch.optim.Adam(
            [p for p in self.adversary.parameters() if p.requires_grad], lr=self.config.adversary_learning_rate
        )
        self.levels = adapter.noise_levels(self.config.sampling_steps)
        self.preserved_steps = preservation_steps(self.config.sampling_steps, self.config.t0_fraction)
        self.last_good = lora_state(adapter.denoiser)
        # Lines 1-2: the prompt sets, encoded once (the text encoder never changes).
        self.train_pairs = prompt_set.pairs("train")
        self._concept_cond = adapter.encode([p.concept_prompt for p in self.train_pairs])
        self._neutral_cond = adapter.encode([p.neutral_prompt for p in self.train_pairs])
        self._heads = torch.tensor([prompt_set.concept_index(p.concept) for p in self.train_pairs])
        self._validation = self._validation_batch(prompt_set.pairs("validation"))

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> FadeResult:
        cfg = self.config
        total = cfg.adversary_warmup + cfg.steps
        history: list[StepReport] = []
        started = time.time()
        at_chance, validation_accuracy, steps_done = 0, float("nan"), 0
        self.adversary.train()
        for step in range(1, total + 1):
            training = step > cfg.adversary_warmup
            report = self._step(step, total, training)
            if training:
                steps_done += 1
                if steps_done % cfg.validate_every == 0 or steps_done == cfg.steps:
                    validation_accuracy = self.validation_accuracy()
                    report.validation_accuracy = validation_accuracy
                    self.last_good = lora_state(self.adapter.denoiser)
                    at_chance = at_chance + 1 if validation_accuracy <= cfg.stop_accuracy else 0
            report.elapsed = time.time() - started
            history.append(report)
            if self.callback is not None:
                self.callback(report)
            if at_chance >= cfg.stop_patience:
                break
        if steps_done == 0:
            validation_accuracy = self.validation_accuracy()
        return FadeResult(
            lora=lora_state(self.adapter.denoiser),
            steps_done=steps_done,
            validation_accuracy=validation_accuracy,
            stopped_at_chance=at_chance >= cfg.stop_patience,
            history=history,
            seconds=time.time() - started,
        )

    def _step(self, step: int, total: int, training: bool) -> StepReport:
        cfg = self.config
        # Line 5: a batch of prompt pairs.
        index = torch.tensor([self.random.randrange(len(self.train_pairs)) for _ in range(cfg.batch_size)])
        concept_cond, neutral_cond, heads = self._concept_cond[index], self._neutral_cond[index], self._heads[index]

        # Line 6: the current model's own trajectories, without gradient, to a random step k;
        # then one x0 prediction there (differentiable for the concept prompts).
        removal_step = self.random.randrange(cfg.sampling_steps)
        preserve_step = self.random.choice(self.preserved_steps)
        noise = initial_noise(self.adapter, cfg.batch_size, self.generator)
        pair_cond = Conditioning.cat([concept_cond, neutral_cond])
        states = trajectory_states(
            self.adapter, pair_cond, torch.cat([noise, noise]), num_steps=cfg.sampling_steps,
            guidance=cfg.guidance, at_steps=[removal_step, preserve_step],
        )
        concept_state, neutral_state = states[removal_step].chunk(2)
        level = self.levels[removal_step].expand(cfg.batch_size)
        with torch.set_grad_enabled(training):
            x_c = self.adapter.predict_x0(concept_state, level, concept_cond, cfg.guidance)
        with torch.no_grad():
            x_notc = self.adapter.predict_x0(neutral_state, level, neutral_cond, cfg.guidance)

        # Line 7: the adversary learns to tell x_c from x_notc.
        loss_adversary, accuracy = self._update_adversary(x_c.detach(), x_notc, heads)
        report = StepReport(step, total, "train" if training else "warmup", loss_adversary, accuracy)
        if not training:
            return report

        # Line 8: the model learns to fool the (fixed) adversary and to keep its early trajectory.
        logits = self.adversary(x_c).gather(1, heads[:, None]).squeeze(1)
        loss_removal = F.softplus(logits).mean()  # -log(1 - sigmoid(logit))
        loss_preservation = self._preservation_loss(states[preserve_step].chunk(2)[1], preserve_step, neutral_cond)
        loss = loss_removal + cfg.preservation_weight * loss_preservation
        if not torch.isfinite(loss):
            raise FadeTrainingError(
                f"the loss became {loss.item()} at step {step} (removal {loss_removal.item()}, preservation "
                f"{loss_preservation.item()}); lower the learning rate or the guidance. The last good LoRA is kept."
            )
        # Line 9: the optimiser holds only the LoRA on the salient modules.
        self.model_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.model_optimizer.step()
        self.adversary_optimizer.zero_grad(set_to_none=True)  # D stayed fixed in line 8
        report.loss_removal = loss_removal.item()
        report.loss_preservation = loss_preservation.item()
        return report

    def _update_adversary(self, x_c: torch.Tensor, x_notc: torch.Tensor, heads: torch.Tensor) -> tuple[float, float]:
        logits = self.adversary(torch.cat([x_c, x_notc])).gather(1, torch.cat([heads, heads])[:, None]).squeeze(1)
        targets = torch.cat([torch.ones(len(x_c)), torch.zeros(len(x_notc))])
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        if not torch.isfinite(loss):
            raise FadeTrainingError(f"the adversary's loss became {loss.item()}; lower adversary_learning_rate")
        self.adversary_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.adversary_optimizer.step()
        accuracy = ((logits > 0).float() == targets).float().mean().item()
        return loss.item(), accuracy

    def _preservation_loss(self, z_t: torch.Tensor, step: int, neutral_cond) -> torch.Tensor:
        level = self.levels[step].expand(z_t.shape[0])
        with torch.no_grad(), lora_disabled(self.adapter.denoiser):
            original = self.adapter.predict_x0(z_t, level, neutral_cond, self.config.guidance)
        current = self.adapter.predict_x0(z_t, level, neutral_cond, self.config.guidance)
        return (current - original).pow(2).flatten(1).sum(1).mean()

    # -- validation ------------------------------------------------------------------------------

    def _validation_batch(self, pairs: list[PromptPair]):
        repeats = self.config.validation_repeats
        pairs = [p for p in pairs for _ in range(repeats)]
        concept = self.adapter.encode([p.concept_prompt for p in pairs])
        neutral = self.adapter.encode([p.neutral_prompt for p in pairs])
        heads = torch.tensor([self.prompt_set.concept_index(p.concept) for p in pairs])
        noise = initial_noise(self.adapter, len(pairs), torch.Generator().manual_seed(self.config.seed + 1))
        return concept, neutral, heads, noise

    @torch.no_grad()
    def validation_accuracy(self) -> float:
        """D's accuracy on fresh final samples for the validation pairs: 0.5 is chance."""
        concept, neutral, heads, noise = self._validation
        cond = Conditioning.cat([concept, neutral])
        samples = sample(self.adapter, cond, torch.cat([noise, noise]), num_steps=self.config.sampling_steps, guidance=self.config.guidance)
        self.adversary.eval()
        logits = self.adversary(samples).gather(1, torch.cat([heads, heads])[:, None]).squeeze(1)
        self.adversary.train()
        targets = torch.cat([torch.ones(len(heads)), torch.zeros(len(heads))])
        return ((logits > 0).float() == targets).float().mean().item()


def erase(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    salient_modules: Sequence[str],
    config: FadeConfig | None = None,
    **kwargs,
) -> FadeResult:
    """Runs FADE; the adapter's denoiser keeps the trained LoRA (the erased model)."""
    return FadeTrainer(adapter, prompt_set, salient_modules, config, **kwargs).run()
