"""benchmarks/attack_budget.py: its table (made-up figures; no model runs here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attack_budget  # noqa: E402


def test_the_table_orders_budgets_by_size_soft_prompt_first_and_leaves_unmeasured_cells_blank():
    results = {
        "fade-robust": {"kept_step": 400, "attacks": {"context_1000": {"acc": 0.46}, "context_300": {"acc": 0.03},
                                                       "tokens_300": {"acc": 0.12}}},
        "retrained": {"kept_step": None, "attacks": {"context_300": {"acc": 0.11}}},
    }
    lines = attack_budget.table(results).splitlines()
    assert lines[0] == ("| method | kept update | soft prompt 300 steps % | soft prompt 1000 steps % | inversion 300 steps % |")
    assert lines[2] == "| fade-robust | 400 | 3 | 46 | 12 |"
    assert lines[3] == "| retrained |  | 11 |  |  |"
