"""The audit of an erased model: can a fresh adversary still tell its concept samples from its
neutral ones?

The adversary that trained alongside the LoRA is the weakest possible judge of the result: the LoRA
was optimised to fool exactly it. The audit trains a new one, from scratch and with its own seed
(the latent CNN of :mod:`fade_core.adversary`), on samples the erased model draws from fresh noise
for the prompt set's concept prompts (label 1) and neutral prompts (label 0), and measures its
accuracy on held-out samples drawn the same way, with a 95 % Clopper-Pearson interval.

What the accuracy means. Any classifier's accuracy on a balanced mix of two distributions is at
most (1 + TV) / 2, with TV their total variation; so an adversary of held-out accuracy a shows
TV >= 2a - 1 between the erased model's concept and neutral output distributions (for several
concepts: the mean of the per-concept TVs, since each concept has its own head). It is a LOWER
bound, equal to TV only for a Bayes-optimal adversary: an audit near chance says this adversary
found no difference, not that none exists.

Every held-out sample is an independent draw (its own prompt pair, drawn uniformly, and its own
noise), so the number it gets right is binomial and the Clopper-Pearson interval is exact for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.stats import binomtest

from .adapter import DenoiserAdapter
from .adversary import build_adversary, fit_adversary
from .errors import FadeInputError
from .prompts import PromptSet
from .sampling import initial_noise, sample

#: Added to the caller's seed for every random stream of the audit, so that an audit given the
#: training seed still draws noise the training never used.
SEED_OFFSET = 7919

NOTE = (
    "a fresh adversary, trained from scratch on the erased model's own concept vs neutral samples (fresh noise), "
    "reached this accuracy a on held-out samples; TV >= 2a - 1 between the concept and neutral output "
    "distributions is a lower bound, equal to TV only for a Bayes-optimal adversary"
)


@dataclass
class AuditResult:
    accuracy: float  # on the held-out samples
    ci_low: float  # 95 % Clopper-Pearson interval of the accuracy
    ci_high: float
    n: int  # held-out samples judged (half concept, half neutral)
    correct: int
    train_samples: int  # samples the adversary learned from (half concept, half neutral)
    train_accuracy: float  # on its own training samples: far above ``accuracy`` means it memorised
    seed: int
    seconds: float

    @property
    def tv_lower_bound(self) -> float:
        """max(0, 2a - 1): TV is at least this, for the measured accuracy a."""
        return max(0.0, 2.0 * self.accuracy - 1.0)

    @property
    def tv_lower_bound_ci95(self) -> float:
        """max(0, 2 * ci_low - 1): TV is at least this with 95 % confidence."""
        return max(0.0, 2.0 * self.ci_low - 1.0)

    def metadata(self) -> dict[str, object]:
        """What an exported LoRA records about the audit."""
        return {
            "fade_audit_accuracy": round(self.accuracy, 4),
            "fade_audit_ci95": [round(self.ci_low, 4), round(self.ci_high, 4)],
            "fade_audit_n": self.n,
            "fade_audit_train_samples": self.train_samples,
            "fade_audit_seed": self.seed,
            "fade_tv_lower_bound": round(self.tv_lower_bound, 4),
            "fade_tv_lower_bound_ci95": round(self.tv_lower_bound_ci95, 4),
            "fade_audit_note": NOTE,
        }

    def summary(self) -> str:
        return (
            f"audit: a fresh adversary tells concept from neutral samples with accuracy {self.accuracy:.3f} "
            f"(95 % CI {self.ci_low:.3f}-{self.ci_high:.3f}, n {self.n}); TV >= {self.tv_lower_bound:.3f}"
        )


def audit(
    adapter: DenoiserAdapter,
    prompt_set: PromptSet,
    *,
    samples: int = 128,
    held_out_fraction: float = 0.5,
    guidance: float,
    sampling_steps: int,
    adversary_steps: int = 300,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    generation_batch: int = 256,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Audits the model as the adapter holds it now (LoRA included).

    ``samples`` generations of each class (concept and neutral), each from a prompt pair drawn
    uniformly from all of the prompt set's pairs and its own noise; ``held_out_fraction`` of them are
    judged, the rest train the adversary for ``adversary_steps`` Adam steps. Generations run
    ``generation_batch`` at a time (a host passes what its training forward holds). ``progress``
    is called with (done, total) units of work (a generation batch, an adversary step) as they end;
    a host stops the audit by raising from it.
    """
    started = time.perf_counter()
    pairs = prompt_set.pairs("all")
    if not pairs:
        raise FadeInputError("the prompt set has no pairs to audit with; build it with some prompts")
    held_out = round(samples * held_out_fraction)
    if samples < 2 or not 0 < held_out < samples:
        raise FadeInputError(
            f"samples ({samples}) and held_out_fraction ({held_out_fraction}) leave no samples to train or to judge; "
            "use at least 2 samples and a fraction strictly between 0 and 1"
        )
    if adversary_steps < 1 or batch_size < 1:
        raise FadeInputError(f"adversary_steps ({adversary_steps}) and batch_size ({batch_size}) must be at least 1")
    generator = torch.Generator().manual_seed(seed + SEED_OFFSET)

    # Concept and neutral samples from independent draws of pairs and noise.
    concept_pairs = torch.randint(0, len(pairs), (samples,), generator=generator).tolist()
    neutral_pairs = torch.randint(0, len(pairs), (samples,), generator=generator).tolist()
    prompts = [pairs[i].concept_prompt for i in concept_pairs] + [pairs[i].neutral_prompt for i in neutral_pairs]
    heads = torch.tensor([prompt_set.concept_index(pairs[i].concept) for i in concept_pairs + neutral_pairs])
    labels = torch.cat([torch.ones(samples), torch.zeros(samples)])
    noise = initial_noise(adapter, 2 * samples, generator)
    step = max(1, generation_batch)
    starts = range(0, len(prompts), step)
    total_work = len(starts) + adversary_steps
    report = progress or (lambda done, total: None)
    batches = []
    with torch.no_grad():
        for done, i in enumerate(starts, 1):
            encoded = adapter.encode(prompts[i : i + step])
            batches.append(sample(adapter, encoded, noise[i : i + step], num_steps=sampling_steps, guidance=guidance))
            report(done, total_work)
    images = torch.cat(batches)
    if not torch.isfinite(images).all():
        raise FadeInputError("the model produced non-finite samples; the audit cannot judge them (is the LoRA broken?)")

    # The first samples - held_out of each class train, the rest are judged.
    is_train = torch.cat([torch.arange(samples) < samples - held_out] * 2)
    adversary = build_adversary("latent", adapter.sample_shape, len(prompt_set.concepts), seed=seed + SEED_OFFSET)
    adversary = adversary.to(images.device)

    def on_step(adversary_step: int) -> None:
        if adversary_step % 10 == 0 or adversary_step == adversary_steps:
            report(len(starts) + adversary_step, total_work)

    fit_adversary(
        adversary, images[is_train], heads[is_train], labels[is_train], steps=adversary_steps, batch_size=batch_size,
        learning_rate=learning_rate, generator=generator, on_step=on_step,
    )

    with torch.no_grad():
        def right(mask: torch.Tensor) -> torch.Tensor:
            logits = adversary(images[mask]).gather(1, heads[mask].to(images.device)[:, None]).squeeze(1)
            return ((logits > 0).float().cpu() == labels[mask]).sum()

        correct = int(right(~is_train))
        train_accuracy = right(is_train).item() / int(is_train.sum())
    n = 2 * held_out
    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="exact")
    return AuditResult(
        accuracy=correct / n,
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        n=n,
        correct=correct,
        train_samples=2 * (samples - held_out),
        train_accuracy=train_accuracy,
        seed=seed,
        seconds=time.perf_counter() - started,
    )
