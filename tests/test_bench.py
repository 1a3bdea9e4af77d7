"""The benchmark script writes its three outputs from real measurements (a small, fast run)."""

import json

import pytest

from fade_core.bench import jobs_for, lora_modules
from fade_core.bench_tasks import DEFAULT_METHODS, DEFAULT_TASKS, METHODS, TUNING_TASK
from fade_core.cli import _bench_methods, main
from fade_core.digits.judge import default_prompt_set


def test_bench_writes_json_plot_and_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--methods", "uce", "--tasks", "five", "--images", "24", "--attack-steps", "3"]) == 0
    results = json.loads((tmp_path / "benchmarks" / "bench.json").read_text())
    rows = results["tasks"]["five"]
    assert set(rows) == {"base", "uce"}
    assert rows["base"]["acc_trained"] > 0.9  # the base model draws its fives
    assert {"acc_trained", "acc_unseen", "acc_context", "acc_embedding", "acc_inversion", "acc_discrete", "acc_other", "fid_proxy", "clip_proxy",
            "H", "H_worst", "seconds", "peak_mb"} <= set(rows["uce"])
    assert rows["uce"]["H_worst"] <= rows["uce"]["H"]  # the worst Acc of the row is at least the trained one
    assert rows["base"]["concepts"]["five"]["trained"] == rows["base"]["acc_trained"]  # one concept: its figures are the means
    assert rows["uce"]["concepts"]["five"]["context"] == rows["uce"]["acc_context"]
    assert (tmp_path / "benchmarks" / "runs" / "five__uce.json").is_file()  # kept for a resumed run
    assert (tmp_path / "benchmarks" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| uce |" in table and "python -m fade_core bench" in table


def test_bench_refuses_unknown_methods_and_concepts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--methods", "magic"]) == 2
    assert main(["bench", "--methods", "uce", "--tasks", "eleven"]) == 2
    assert "magic" in capsys.readouterr().err
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_a_method_places_its_lora_by_family(adapter):
    """``fade@family=...`` chooses where the LoRA goes; families join with +, the text encoder's
    layers all taken (the saliency ranks denoiser layers only)."""
    prompt_set = default_prompt_set(["eight"], seed=0)
    text = lora_modules(adapter, prompt_set, "text_encoder", seed=0)
    assert text == list(adapter.lora_candidates("text_encoder"))
    both = lora_modules(adapter, prompt_set, "cross_attention+text_encoder", seed=0)
    kv = [m for m in both if not m.startswith("text_encoder.")]
    assert kv and set(kv) <= set(adapter.lora_candidates("cross_attention")) and both[len(kv):] == text


def test_the_retrained_reference_runs_on_the_tuning_task_only_by_default():
    """The reference costs a full training, so a default run has it on the tuning task alone; any
    other task gets it on request (``--methods retrained``), which the command line accepts."""
    jobs = jobs_for(DEFAULT_TASKS, DEFAULT_METHODS, tuning=True)
    assert [task for task, method in jobs if method == "retrained"] == [TUNING_TASK]
    assert "retrained" not in DEFAULT_METHODS and "retrained" in METHODS
    assert not any(method == "retrained" for _, method in jobs_for(DEFAULT_TASKS, DEFAULT_METHODS, tuning=False))
    assert _bench_methods("retrained,fade") == ["retrained", "fade"]


def test_erase_lets_a_caller_measure_the_model_at_every_step():
    """bench.erase's on_step sees the erased adapter after each step, its LoRA in place (what
    benchmarks/robust_curve.py measures at its checkpoints)."""
    from fade_core.bench import erase

    seen = []

    def on_step(adapter, report):
        ups = [up for _, up, _ in adapter.lora.factors().values()]
        seen.append((report.phase, any(up.abs().sum() > 0 for up in ups)))

    erase("fade@steps=2:adversary_warmup=1:batch_size=4:validate_every=2:stop_patience=10", ["eight"], 0, on_step=on_step)
    assert seen == [("warmup", False), ("train", True), ("train", True)]


@pytest.mark.parametrize("check_on", ["attack", "attack+prompts"])
def test_a_robust_rows_training_record_has_the_held_out_attacks_shares_and_the_kept_state(monkeypatch, check_on):
    """What notes.md reads a robust row's stopping from: the held-out attack's share at each
    validation (scripted here), with robust_check_on "attack+prompts" its judge's share of the
    validation prompts' samples too, and the update whose state was kept (ESD and UCE rows have no such record)."""
    from fade_core.bench import erase
    from fade_core.robust import HeldOutAttack

    shares, prompts = iter([0.5, 0.25, 0.75]), iter([0.1, 0.3, 0.0])
    monkeypatch.setattr(HeldOutAttack, "share", lambda self: next(shares))
    monkeypatch.setattr(HeldOutAttack, "share_of", lambda self, samples, heads: next(prompts))
    tiny = ("steps=3:adversary_warmup=1:batch_size=4:validate_every=1:robust_every=1:robust_attack_steps=1:robust_warmup_steps=1:"
            f"robust_bank_size=2:robust_targets=2:robust_check_steps=1:robust_check_images=2:robust_check_on={check_on}")
    _, _, record = erase(f"fade-robust@{tiny}", ["eight"], 0)
    assert record["held_out_curve"] == [(2, 0.5), (3, 0.25), (4, 0.75)]  # steps count the warm-up step
    assert record["kept_step"] == 2 and len(record["adversary_curve"]) == 3
    assert record.get("prompt_share_curve") == (None if check_on == "attack" else [(2, 0.1), (3, 0.3), (4, 0.0)])


def test_a_kept_row_is_reused_only_with_the_prompts_it_was_measured_on(tmp_path, monkeypatch):
    from fade_core import bench

    measured = {"images": 24, "attack_steps": 0, "seed": 0, "prompts": bench.prompt_fingerprint("five", 0)}
    bench.save_row(tmp_path, ("five", "uce"), measured, {"acc_trained": 0.5})
    assert bench.saved_row(tmp_path, ("five", "uce"), measured) == {"acc_trained": 0.5}
    assert bench.prompt_fingerprint("five", 0) == measured["prompts"]  # the same prompts: reused
    assert len({measured["prompts"], bench.prompt_fingerprint("five", 1), bench.prompt_fingerprint("eight", 0)}) == 3

    drawn = bench.default_prompt_set
    monkeypatch.setattr(bench, "default_prompt_set", lambda concepts, **kw: drawn(concepts, **kw | {"num_prompts": 40}))
    redrawn = measured | {"prompts": bench.prompt_fingerprint("five", 0)}
    assert redrawn["prompts"] != measured["prompts"]
    assert bench.saved_row(tmp_path, ("five", "uce"), redrawn) is None  # another draw: measured again


def test_the_table_explains_tuning_placement_and_reference_rows_only_where_it_has_them():
    from fade_core.bench import markdown

    settings = {"workers": 2, "images": 1, "attack_steps": 1, "seed": 0}
    plain = markdown({"settings": settings, "tasks": {"eight": {"base": {}, "fade": {}}}}, "cmd")
    assert "Tuning budget" not in plain and "Placements" not in plain and "**retrained**" not in plain
    full = markdown({"settings": settings, "tasks": {"eight": {"base": {}, "fade@steps=300": {}, "fade@family=attention": {},
                                                               "retrained": {}}}}, "cmd")
    assert "Tuning budget" in full and "Placements" in full and "**retrained**" in full


def test_a_methods_settings_parse_numbers_true_and_false_and_keep_other_words():
    from fade_core.bench_tasks import method_settings

    assert method_settings("fade-robust@steps=200:learning_rate=0.002:removal_unconditional_grad=false:family=all") == {
        "steps": 200, "learning_rate": 0.002, "removal_unconditional_grad": False, "family": "all"}
    assert method_settings("fade@removal_unconditional_grad=True") == {"removal_unconditional_grad": True}
