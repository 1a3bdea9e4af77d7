"""benchmarks/seed_spread.py's table: each training seed's row and the spread over every
(training seed, attack seed) measurement (made-up figures; no training here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import seed_spread  # noqa: E402


def row(soft, fid=150.0):
    return {"acc_trained": 0.01, "acc_context": 0.02, "acc_other": 1.0, "fid_proxy": fid, "seconds": 600.0,
            "acc_embedding": {str(seed): acc for seed, acc in zip((0, 10, 20), soft)}}


def test_the_table_gives_each_seed_and_the_spread_over_all_measurements():
    lines = seed_spread.table({"methods": {"fade-robust": {"0": row([0.7, 0.8, 0.6]), "1": row([0.0, 0.1, 0.2], fid=140.0)}}}).splitlines()
    assert lines[2].split(" | ")[1:6] == ["0", "1", "2", "150.0", "70 / 80 / 60"]
    assert lines[2].split(" | ")[6] == "70"
    assert lines[3].split(" | ")[5:7] == ["0 / 10 / 20", "10"]
    # all six figures: 0-80 %, mean 40 %, sample sd sqrt(5800 / 5) = 34.1 %
    assert lines[4].split(" | ")[1] == "all" and lines[4].split(" | ")[5:7] == ["0-80", "40 (sd 34)"]


@pytest.mark.parametrize("arguments, message", [
    (["--methods", "fade-robustt"], "unknown ['fade-robustt']"),
    (["--train-seeds", "0", "--attack-seeds", "0"], "at least two seeds"),
    (["--train-seeds", "zero"], "comma-separated whole numbers"),
])
def test_bad_arguments_are_refused_before_any_work(monkeypatch, capsys, arguments, message):
    monkeypatch.setattr(sys, "argv", ["seed_spread.py", *arguments])
    with pytest.raises(SystemExit) as exit_:
        seed_spread.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_results_measured_with_other_settings_are_not_overwritten(monkeypatch, capsys, tmp_path):
    (tmp_path / "benchmarks").mkdir()
    earlier = tmp_path / "benchmarks" / "seed_spread_five.json"
    earlier.write_text('{"task": "five", "settings": {"images": 100, "attack_steps": 300, "attack_seeds": [0, 10, 20]}, "methods": {}}\n')
    monkeypatch.setattr(seed_spread, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["seed_spread.py", "--task", "five", "--images", "50"])
    with pytest.raises(SystemExit) as exit_:
        seed_spread.main()
    assert exit_.value.code == 2 and "other settings" in capsys.readouterr().err
    assert '"images": 100' in earlier.read_text()
