"""benchmarks/robust_states.py: which saved states it finds, and which state each ranking keeps under
the keep rule's tie-breaks (made-up figures; no model runs here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import robust_states  # noqa: E402


def test_the_states_of_one_run_are_found_in_update_order(tmp_path):
    for name in ("three_fade-robust@a=1_seed1_100", "three_fade-robust@a=1_seed1_20", "three_fade-robust@a=1_seed2_20",
                 "three_fade-robust_seed1_20", "eight_fade-robust@a=1_seed1_20", "three_fade-robust@a=1_seed1_x"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    found = robust_states.state_files(tmp_path, "three", "fade-robust@a=1", 1)
    assert list(found) == [20, 100]
    assert found[100].name == "three_fade-robust@a=1_seed1_100.safetensors"
    (tmp_path / "three_fade-robust@p=a_b_seed1_10.safetensors").write_bytes(b"")  # robust_curve.py's '/' -> '_'
    assert list(robust_states.state_files(tmp_path, "three", "fade-robust@p=a/b", 1)) == [10]


def kept(lines: list[str]) -> dict[str, str]:
    return {line.split(" | ")[2]: line.split(" | ")[3] for line in lines[2:]}


def test_each_ranking_keeps_its_best_state_with_the_keep_rules_tie_breaks():
    # updates 100-400: the run's check, FADE's adversary on the validation prompts, the neutral drift,
    # and the check's judge on the trained prompts
    figures = {100: (0.1, 0.5, 0.2, 0.0), 200: (0.05, 0.9, 0.1, 0.0), 300: (0.05, 0.5, 0.3, 0.15), 400: (0.05, 0.5, 0.3, 0.02)}
    results = {"m": {"1": {str(u): {"plain_evaluator": 0.0, "plain_judge": judge} for u, (_, _, _, judge) in figures.items()}}}
    curves = {"m": {"1": {"steps": [{"update": u, "held_out_attack": check, "validation_accuracy": d, "neutral_drift": drift}
                                     for u, (check, d, drift, _) in figures.items()],
                          "checks": [{"update": u, "acc_trained": 0.0, "acc_context": 0.0} for u in figures]}}}
    rows = kept(robust_states.kept_states("three", results, curves).splitlines())
    # the check ties 200, 300 and 400; 200's adversary is above chance, 300 and 400 tie on drift: the later one
    assert rows["the run's own check (32 per start)"] == "400"
    # with the judge's share the scores part: 200 0.05, 400 0.07, 100 0.1, 300 0.2; the adversary only breaks ties
    assert rows["the run's check plus the judge on the trained prompts"] == "200"
    assert rows["the larger of the two"] == "400"  # 200 and 400 at 0.05, 300 at 0.15: the tie-breaks again
    results["m"]["1"]["400"]["plain_judge"] = 0.2  # now its trained prompts give the concept back too
    rows = kept(robust_states.kept_states("three", results, curves).splitlines())
    assert rows["the run's own check (32 per start)"] == "400"
    assert rows["the larger of the two"] == "200"
    assert "the check at its larger sample" not in rows  # measured without attacks: no larger check to rank by
    assert robust_states.kept_states("three", results, {}).count("\n") == 1  # no curve: a table without rows


def test_the_chained_check_is_ranked_apart_from_the_larger_check():
    figures = {100: (0.1, 0.3, 0.0), 200: (0.3, 0.1, 0.5)}  # the run's check, the larger check, the chained check
    results = {"m": {"1": {str(u): {"plain_evaluator": 0.0, "plain_judge": 0.0, "check_32": check, "check_128": larger,
                                    "check_chain_100_seconds": 9.0, "check_chain_100": chained}
                           for u, (check, larger, chained) in figures.items()}}}
    curves = {"m": {"1": {"steps": [{"update": u, "held_out_attack": check, "validation_accuracy": 0.5, "neutral_drift": 0.1}
                                     for u, (check, _, _) in figures.items()],
                          "checks": [{"update": u, "acc_trained": 0.0, "acc_context": 0.0} for u in figures]}}}
    assert robust_states.larger_check(results["m"]["1"]["100"]) == "check_128"
    rows = kept(robust_states.kept_states("three", results, curves).splitlines())
    assert rows["the run's own check (32 per start)"] == "100"
    assert rows["the check at its larger sample"] == "200"
    assert rows["the check chained from the state before"] == "100"
