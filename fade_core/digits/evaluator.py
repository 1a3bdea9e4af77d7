"""The judge of every figure on the embedded model: a small CNN that names the digit and the style.

It is trained only on the ``evaluator_train`` split of the real digits, rendered in every style,
never on generated images, and tested on ``evaluator_test``. Its penultimate features are the
feature space of the FID-proxy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .data import STYLE_NAMES, apply_style, real_split, to_model_range


class DigitStyleEvaluator(nn.Module):
    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.feature_dim),
            nn.ReLU(),
        )
        self.digit_head = nn.Linear(self.feature_dim, 10)
        self.style_head = nn.Linear(self.feature_dim, len(STYLE_NAMES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the model's [-1, 1] range, shape (N, 1, 8, 8), on any device (the evaluator
        stays where it was loaded)."""
        return self.trunk(images.to(self.digit_head.weight.device))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        return self.digit_head(feats), self.style_head(feats)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(digit, style index) labels for images in [-1, 1]."""
        digit_logits, style_logits = self(images.clamp(-1, 1))
        return digit_logits.argmax(1), style_logits.argmax(1)


def styled_split(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A real split rendered in every style: images in [-1, 1], digit labels, style labels."""
    images, digits = real_split(name)
    rendered, digit_labels, style_labels = [], [], []
    for style_index, style in enumerate(STYLE_NAMES):
        rendered.append(to_model_range(apply_style(images, style)))
        digit_labels.append(digits)
        style_labels.append(torch.full_like(digits, style_index))
    return torch.cat(rendered), torch.cat(digit_labels), torch.cat(style_labels)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shifts of up to one pixel and light noise: generated digits are never perfectly centred."""
    n = images.shape[0]
    # Pad with each image's own background (black, or white for inverted digits), never a border cue.
    background = torch.where(images[:, :, 0, :].mean(dim=(1, 2)) > 0, 1.0, -1.0)[:, None, None, None]
    padded = F.pad(images - background, (1, 1, 1, 1)) + background
    dx = torch.randint(0, 3, (n,), generator=generator)
    dy = torch.randint(0, 3, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, None, :, None].expand(n, 1, 8, 10)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, None, :].expand(n, 1, 8, 8)
    shifted = shifted.gather(3, cols)
    noise = 0.1 * torch.randn(images.shape, generator=generator)
    return (shifted + noise).clamp(-1, 1)


def train_evaluator(steps: int = 3000, seed: int = 0, progress: bool = True) -> DigitStyleEvaluator:
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, digits, styles = styled_split("evaluator_train")
    model = DigitStyleEvaluator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in tqdm(range(steps), desc="evaluator", disable=not progress):
        idx = torch.randint(0, images.shape[0], (128,), generator=generator)
        digit_logits, style_logits = model(_augment(images[idx], generator))
        loss = F.cross_entropy(digit_logits, digits[idx]) + F.cross_entropy(style_logits, styles[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def real_test_accuracy(model: DigitStyleEvaluator) -> dict[str, float]:
    images, digits, styles = styled_split("evaluator_test")
    digit_pred, style_pred = model.classify(images)
    report = {
        "digit_accuracy": (digit_pred == digits).float().mean().item(),
        "style_accuracy": (style_pred == styles).float().mean().item(),
    }
    for index, style in enumerate(STYLE_NAMES):
        mask = styles == index
        report[f"style_accuracy/{style}"] = (style_pred[mask] == index).float().mean().item()
        report[f"digit_accuracy/{style}"] = (digit_pred[mask] == digits[mask]).float().mean().item()
    return report
