"""benchmarks/scale.py's report: FLUX.1's per-block extrapolation and the memory plan are the
arithmetic the README states (no ComfyUI needed: the figures here are made up)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scale  # noqa: E402


def run(model, size, checkpointing, blocks=None, parameters=1e9, step=2.0, seconds=10.0):
    return {"model": model, "size": size, "batch": 1, "dtype": "fp32", "checkpointing": checkpointing,
            "flux_blocks": list(blocks) if blocks else None, "parameters": parameters, "weights_gb": parameters * 4 / 2**30,
            "device": "cpu", "seconds_per_step": seconds, "first_step_s": seconds, "peak_gb": 1.0, "step_extra_gb": step}


def flux(double, single):
    # fixed 100 M, 1 GiB, 5 s; a double block 300 M, 0.2 GiB, 20 s; a single block 100 M, 0.1 GiB, 10 s
    return run("flux", 512, True, (double, single), parameters=1e8 + 3e8 * double + 1e8 * single,
               step=1.0 + 0.2 * double + 0.1 * single, seconds=5.0 + 20 * double + 10 * single)


def test_flux_is_extrapolated_per_block_by_least_squares():
    assert scale.flux_per_block([flux(1, 1), flux(2, 1)]) is None  # two runs cannot separate three terms
    full = scale.flux_per_block([flux(1, 1), flux(2, 1), flux(1, 2), flux(4, 1)])
    assert full["parameters"] == pytest.approx(1e8 + 3e8 * 19 + 1e8 * 38)
    assert full["step_extra_gb"] == pytest.approx(1.0 + 0.2 * 19 + 0.1 * 38)
    assert full["seconds_per_step_per_single"] == pytest.approx(10.0) and full["runs"] == 4


def test_the_plan_scales_with_tokens_and_precision():
    results = [run("sd15", 512, True, parameters=2**30 / 4, step=2.0)]  # 1 GiB of fp32 weights
    rows = {(r[0], r[1]): r for r in scale.plan_rows(results)}
    # 512 px measured: 1 + 2 GiB in fp32, 0.5 + 1 in bf16; 1024 px: 4x the step memory
    assert rows[("SD1.5", "512")][4:6] == ["3.0", "1.5"] and rows[("SD1.5", "512")][3] == "measured"
    assert rows[("SD1.5", "1024")][4:6] == ["9.0", "4.5"] and rows[("SD1.5", "1024")][3] == "from 512 px"
    assert rows[("SD1.5", "1024")][7] == "8 GB"
    assert "| SD1.5 | 512 | fp32 | on |" in scale.readme_section(results)
