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
from .sampling import ddim_step, initial_noise, preservation_steps, sample, trajectory_states


@dataclass
class FadeConfig:
    steps: int = 300  # N: LoRA updates after the warm-up
    adversary_warmup: int = 60  # D updates on the base model's own samples before the LoRA moves
    batch_size: int = 12  # prompt pairs per step
    lora_rank: int = 4
    lora_alpha: float = 4.0
    learning_rate: float = 4e-3  # LoRA
    adversary_learning_rate: float = 1e-3
    replay_size: int = 512  # earlier samples that D keeps training on (0: none)
    preservation_weight: float = 20.0  # lambda
    t0_fraction: float = 0.5  # L_pres on this share of the sampling steps, from the noisy end
    guidance: float = 2.0  # omega, for every sample and prediction in the loop
    sampling_steps: int = 10  # length of the trajectories the loop samples
    adversary: str = "latent"  # "latent" or "clip"
    removal: str = "adversary"  # L_rem; "l2" is the paper's Table 2 ablation (no adversary in the loss)
    validate_every: int = 50
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
        if self.removal not in ("adversary", "l2"):
            raise FadeInputError(f"removal is {self.removal!r}; use 'adversary' (FADE) or 'l2' (the ablation)")
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
        # Random numbers come from a CPU generator (the same on every device); every tensor of
        # the loop itself lives on the model's device.
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.device = adapter.device

        # Line 3 and line 9: only the salient modules can change, through the LoRA.
        self.lora_parameters = attach_lora(
            adapter, salient_modules, self.config.lora_rank, self.config.lora_alpha, self.config.seed
        )
        self.adversary = (adversary or build_adversary(
            self.config.adversary, adapter.sample_shape, len(prompt_set.concepts), seed=self.config.seed
        )).to(self.device)
        self.model_optimizer = torch.optim.Adam(self.lora_parameters, lr=self.config.learning_rate)
        self.adversary_optimizer = torch.optim.Adam(
            [p for p in self.adversary.parameters() if p.requires_grad], lr=self.config.adversary_learning_rate
        )
        self.levels = adapter.noise_levels(self.config.sampling_steps)
        self.preserved_steps = len(preservation_steps(self.config.sampling_steps, self.config.t0_fraction))
        self.last_good = lora_state(adapter)
        # Lines 1-2: the prompt sets, encoded once (the text encoder never changes).
        self.train_pairs = prompt_set.pairs("train")
        self._concept_cond = adapter.encode([p.concept_prompt for p in self.train_pairs]).to(self.device)
        self._neutral_cond = adapter.encode([p.neutral_prompt for p in self.train_pairs]).to(self.device)
        self._heads = torch.tensor([prompt_set.concept_index(p.concept) for p in self.train_pairs], device=self.device)
        self._validation = self._validation_batch(prompt_set.pairs("validation"))
        self.pool = PairTrajectories(self, self.config.batch_size)
        self.replay = ReplayBuffer(self.config.replay_size)
        self.adversary.train()
        self.history: list[StepReport] = []
        self.started = time.time()

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> FadeResult:
        self.pretrain_adversary()
        return self.train()

    def pretrain_adversary(self) -> None:
        """D learns on the base model's own samples before the LoRA moves (paper 4.3)."""
        for step in range(1, self.config.adversary_warmup + 1):
            self._report(self._step(step, training=False))

    def train(self) -> FadeResult:
        """Alternating D and LoRA updates until N steps or until D stays at chance."""
        cfg = self.config
        at_chance, validation_accuracy, steps_done = 0, float("nan"), 0
        for steps_done in range(1, cfg.steps + 1):
            report = self._step(cfg.adversary_warmup + steps_done, training=True)
            if steps_done % cfg.validate_every == 0 or steps_done == cfg.steps:
                validation_accuracy = report.validation_accuracy = self.validation_accuracy()
                self.last_good = lora_state(self.adapter)
                at_chance = at_chance + 1 if validation_accuracy <= cfg.stop_accuracy else 0
            self._report(report)
            if at_chance >= cfg.stop_patience:
                break
        return FadeResult(
            lora=lora_state(self.adapter),
            steps_done=steps_done,
            validation_accuracy=validation_accuracy,
            stopped_at_chance=at_chance >= cfg.stop_patience,
            history=self.history,
            seconds=time.time() - self.started,
        )

    def _report(self, report: StepReport) -> None:
        report.elapsed = time.time() - self.started
        self.history.append(report)
        if self.callback is not None:
            self.callback(report)

    def _step(self, step: int, training: bool) -> StepReport:
        cfg = self.config
        # Lines 5-6: the pool's pairs, each at its own step k of a trajectory that the current
        # model samples without gradient; one x0 prediction there, differentiable when training.
        pairs, steps, concept_state, neutral_state = self.pool.current()
        on_device = pairs.to(self.device)
        concept_cond, neutral_cond = self._concept_cond[on_device], self._neutral_cond[on_device]
        heads, levels = self._heads[on_device], self.levels[steps]
        with torch.set_grad_enabled(training):
            x0 = self.adapter.predict_x0(
                torch.cat([concept_state, neutral_state]), torch.cat([levels, levels]),
                Conditioning.cat([concept_cond, neutral_cond]), cfg.guidance,
            )
        x_c, x_notc = x0.chunk(2)

        # Line 7: the adversary learns to tell x_c from x_notc.
        loss_adversary, accuracy = self._update_adversary(x_c.detach(), x_notc.detach(), heads)
        total = cfg.adversary_warmup + cfg.steps
        report = StepReport(step, total, "train" if training else "warmup", loss_adversary, accuracy)
        if training:
            # Line 8: fool the (fixed) adversary, and keep the early trajectory of neutral prompts.
            if cfg.removal == "adversary":
                logits = self.adversary(x_c).gather(1, heads[:, None]).squeeze(1)
                loss_removal = F.softplus(logits).mean()  # -log(1 - sigmoid(logit))
            else:  # the ablation's surrogate: pull x_c onto its neutral twin
                loss_removal = (x_c - x_notc.detach()).pow(2).flatten(1).mean(1).mean()
            early = (steps < self.preserved_steps).to(self.device)
            loss_preservation = preservation_loss(
                self.adapter, x_notc[early], neutral_state[early], levels[early], neutral_cond[early], cfg.guidance
            )
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
        self.pool.advance(x_c.detach(), x_notc.detach())
        return report

    def _update_adversary(self, x_c: torch.Tensor, x_notc: torch.Tensor, heads: torch.Tensor) -> tuple[float, float]:
        """One BCE step of D on this batch, plus an equal batch replayed from earlier steps.

        The replay (a reservoir over the whole run, the base model's samples included) keeps D
        from forgetting what the concept looked like, so the LoRA cannot fool it by drifting back
        to the concept once D has moved on: the mode hopping of GAN training.
        """
        replayed = self.replay.draw(len(heads), self.generator)
        self.replay.add(x_c, x_notc, heads, self.generator)
        if replayed is not None:
            x_c, x_notc, heads = (torch.cat([now, then]) for now, then in zip((x_c, x_notc, heads), replayed))
        logits = self.adversary(torch.cat([x_c, x_notc])).gather(1, torch.cat([heads, heads])[:, None]).squeeze(1)
        targets = torch.cat([torch.ones(len(x_c)), torch.zeros(len(x_notc))]).to(self.device)
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        if not torch.isfinite(loss):
            raise FadeTrainingError(f"the adversary's loss became {loss.item()}; lower adversary_learning_rate")
        self.adversary_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.adversary_optimizer.step()
        accuracy = ((logits > 0).float() == targets).float().mean().item()
        return loss.item(), accuracy

    # -- validation ------------------------------------------------------------------------------

    def _validation_batch(self, pairs: list[PromptPair]):
        repeats = self.config.validation_repeats
        pairs = [p for p in pairs for _ in range(repeats)]
        concept = self.adapter.encode([p.concept_prompt for p in pairs]).to(self.device)
        neutral = self.adapter.encode([p.neutral_prompt for p in pairs]).to(self.device)
        heads = torch.tensor([self.prompt_set.concept_index(p.concept) for p in pairs], device=self.device)
        noise = initial_noise(self.adapter, len(pairs), torch.Generator().manual_seed(self.config.seed + 1))
        return concept, neutral, heads, noise

    @torch.no_grad()
    def validation_accuracy(self, adversary: nn.Module | None = None) -> float:
        """D's accuracy on fresh final samples for the validation pairs: 0.5 is chance.
        ``adversary`` judges instead of the live D (for example a copy taken before training)."""
        if adversary is None:
            adversary = self.adversary
        concept, neutral, heads, noise = self._validation
        cond = Conditioning.cat([concept, neutral])
        samples = sample(self.adapter, cond, torch.cat([noise, noise]), num_steps=self.config.sampling_steps, guidance=self.config.guidance)
        mode = adversary.training
        adversary.eval()
        logits = adversary(samples).gather(1, torch.cat([heads, heads])[:, None]).squeeze(1)
        adversary.train(mode)
        targets = torch.cat([torch.ones(len(heads)), torch.zeros(len(heads))]).to(self.device)
        return ((logits > 0).float() == targets).float().mean().item()


def preservation_loss(
    adapter: DenoiserAdapter,
    current: torch.Tensor,
    z_t: torch.Tensor,
    levels: torch.Tensor,
    neutral_cond: Conditioning,
    guidance: float,
) -> torch.Tensor:
    """L_pres: squared gap between the current x0 predictions on neutral prompts (``current``, with
    gradient) and the original model's at the same states, summed over pixels, mean over samples."""
    if len(z_t) == 0:
        return torch.zeros((), device=current.device)
    with torch.no_grad(), lora_disabled(adapter):
        original = adapter.predict_x0(z_t, levels, neutral_cond, guidance)
    return (current - original).pow(2).flatten(1).sum(1).mean()


class ReplayBuffer:
    """A uniform sample (reservoir) of every (x_c, x_notc, head) triple the adversary has seen."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self.items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, x_c: torch.Tensor, x_notc: torch.Tensor, heads: torch.Tensor, generator: torch.Generator) -> None:
        for item in zip(x_c, x_notc, heads):
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(item)
            else:
                slot = int(torch.randint(0, self.seen, (1,), generator=generator))
                if slot < self.capacity:
                    self.items[slot] = item

    def draw(self, count: int, generator: torch.Generator):
        if not self.items or count == 0:
            return None
        picks = torch.randint(0, len(self.items), (count,), generator=generator).tolist()
        return tuple(torch.stack([self.items[i][k] for i in picks]) for k in range(3))


class PairTrajectories:
    """The x_c / x_notc trajectories that the loop samples, one DDIM step per training step.

    Each slot holds a prompt pair and two trajectories from the same initial noise, one for the
    concept prompt and one for its neutral twin. Slots start staggered over the schedule, so
    every batch holds states of every noise level; a slot that reaches the end restarts with a
    new pair and fresh noise. Sampling thus costs one model evaluation per training step, and
    the states always come from a model at most ``sampling_steps`` updates old.
    """

    def __init__(self, trainer: FadeTrainer, size: int) -> None:
        self.trainer = trainer
        cfg = trainer.config
        self.num_steps = cfg.sampling_steps
        self.pairs = self._draw_pairs(size)
        self.steps = torch.arange(size) * self.num_steps // size
        noise = initial_noise(trainer.adapter, size, trainer.generator)
        on_device = self.pairs.to(trainer.device)
        cond = Conditioning.cat([trainer._concept_cond[on_device], trainer._neutral_cond[on_device]])
        states = trajectory_states(
            trainer.adapter, cond, torch.cat([noise, noise]), num_steps=self.num_steps,
            guidance=cfg.guidance, at_steps=sorted(set(self.steps.tolist())),
        )
        both = torch.stack([states[k][i] for k, i in zip(self.steps.tolist() * 2, range(2 * size))])
        self.concept, self.neutral = both.chunk(2)

    def _draw_pairs(self, count: int) -> torch.Tensor:
        rng = self.trainer.random
        return torch.tensor([rng.randrange(len(self.trainer.train_pairs)) for _ in range(count)], dtype=torch.long)

    def current(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.pairs, self.steps, self.concept, self.neutral

    @torch.no_grad()
    def advance(self, x0_concept: torch.Tensor, x0_neutral: torch.Tensor) -> None:
        adapter, levels = self.trainer.adapter, self.trainer.levels
        x0 = torch.cat([x0_concept, x0_neutral])
        if adapter.sample_clip is not None:
            x0 = x0.clamp(-adapter.sample_clip, adapter.sample_clip)
        steps = torch.cat([self.steps, self.steps])
        following = levels[(steps + 1).clamp(max=self.num_steps - 1)]
        moved = ddim_step(adapter, torch.cat([self.concept, self.neutral]), x0, levels[steps], following)
        self.concept, self.neutral = moved.chunk(2)
        self.steps = self.steps + 1
        finished = self.steps >= self.num_steps
        if finished.any():
            count = int(finished.sum())
            noise = initial_noise(adapter, count, self.trainer.generator)
            start = adapter.add_noise(torch.zeros_like(noise), noise, levels[0].expand(count))
            on_device = finished.to(start.device)
            self.concept[on_device], self.neutral[on_device] = start, start
            self.pairs[finished] = self._draw_pairs(count)
            self.steps[finished] = 0


def erase(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    salient_modules: Sequence[str],
    config: FadeConfig | None = None,
    **kwargs,
) -> FadeResult:
    """Runs FADE; the adapter's denoiser keeps the trained LoRA (the erased model)."""
    return FadeTrainer(adapter, prompt_set, salient_modules, config, **kwargs).run()
