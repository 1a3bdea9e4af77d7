"""benchmarks/empty_prompt.py: the empty prompt is counted on the erased model, outside the erasure's
wall time, and the row is saved where the benchmark reuses it (the erasure and the row's measurements replaced by stand-ins)."""

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from fade_core import bench
from fade_core.digits.model import load_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import empty_prompt  # noqa: E402


def test_the_empty_prompt_share_is_the_erased_models_and_the_row_is_reusable(tmp_path, monkeypatch):
    erased = []

    def stand_in_erase(method, concepts, seed, on_step=None):
        adapter = load_adapter()
        with torch.no_grad():  # a model far from the base one: its empty-prompt eights differ
            generator = torch.Generator().manual_seed(0)
            for parameter in adapter.denoiser.parameters():
                parameter.add_(0.2 * parameter.abs().mean() * torch.randn(parameter.shape, generator=generator))
        erased.append(method)
        return adapter, contextlib.nullcontext, {}

    events = []

    def stand_in_job(task, method, images, attack_steps, seed):  # as run_job: the clock stops before the context
        adapter, context, _ = bench.erase(method, bench.task_concepts(task), seed)
        events.append("timed")
        with context():
            events.append("measured")
        return {"acc_trained": 0.25}

    count = empty_prompt.empty_prompt_counts
    monkeypatch.setattr(empty_prompt, "empty_prompt_counts", lambda *args: events.append("counted") or count(*args))
    monkeypatch.setattr(bench, "erase", stand_in_erase)
    monkeypatch.setattr(bench, "run_job", stand_in_job)
    row = empty_prompt.measure("eight", "fade@steps=1", tmp_path)
    assert events == ["counted", "timed", "counted", "measured"]  # the base model's, then the erased one's outside the time
    assert erased == ["fade@steps=1"] and bench.erase is stand_in_erase  # the wrapper is gone again
    assert row["acc_trained"] == 0.25
    assert 0.0 <= row["empty_prompt_evaluator"] <= 1.0 and row["base_empty_prompt_evaluator"] == 0.125
    assert row["empty_prompt_evaluator"] != row["base_empty_prompt_evaluator"]
    base_styles, styles = row["base_empty_prompt_styles"], row["empty_prompt_styles"]
    assert sum(base_styles.values()) == pytest.approx(1.0) and sum(styles.values()) == pytest.approx(1.0)
    assert base_styles["bold"] == pytest.approx(0.1) and styles != base_styles  # the base model's bold share, as the concept count gives it
    settings = {"images": 100, "attack_steps": 300, "seed": 0, "prompts": bench.prompt_fingerprint("eight", 0)}
    assert bench.saved_row(tmp_path, ("eight", "fade@steps=1"), settings) == {"acc_trained": 0.25}
