"""Nothing is lost: outputs are reserved so that runs never share or replace a file, a failed write
keeps the LoRA in the temporary folder, an interrupted or diverged run keeps its LoRA with the full
record (or says that there is none), and leftovers of ended runs are cleared."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from fade_core.cli import main
from fade_core.config import FadeConfig
from fade_core.digits.model import MODEL_NAME, load_pipeline
from fade_core.digits.vocabulary import default_prompt_set
from fade_core.errors import FadeExportError, FadeInputError, FadeInterrupted, FadeTrainingError
from fade_core.fade import FadeTrainer
from fade_core.files import load_safetensors, owner_tag, read_safetensors_metadata, remove_stale_partials
from fade_core.lora_file import check_lora, kohya_targets
from fade_core.outputs import LoraOutput
from fade_core.run import erase_and_export

MODULES = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"]
TINY = dict(steps=3, adversary_warmup=1, batch_size=2, sampling_steps=2, validate_every=1, validation_repeats=1, audit_samples=8,
            stop_patience=10)  # never stops early at chance, so that every run takes its 3 steps


def write_bytes(data: bytes):
    return lambda temporary: Path(temporary).write_bytes(data)


def dead_owner() -> str:
    """The owner tag of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{owner_tag().partition('-')[0]}-{child.pid}"


# -- reservations ---------------------------------------------------------------------------------


def test_numbers_skip_every_result_and_every_live_reservation(tmp_path):
    for name in ("p_00001.safetensors", "p_00002-interrupted.safetensors", "p_00003-diverged.safetensors"):
        (tmp_path / name).write_bytes(b"earlier")
    first = LoraOutput.numbered(tmp_path, "p")
    second = LoraOutput.numbered(tmp_path, "p")
    assert (first.path.name, second.path.name) == ("p_00004.safetensors", "p_00005.safetensors")
    first.release()  # nothing written: the number is free again
    with LoraOutput.numbered(tmp_path, "p") as again:
        assert again.path.name == "p_00004.safetensors"
    second.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "p_00001.safetensors", "p_00002-interrupted.safetensors", "p_00003-diverged.safetensors"]


def _reserve_and_write(folder: str, barrier, results) -> None:
    barrier.wait()
    with LoraOutput.numbered(folder, "race") as output:
        results.append(output.write(write_bytes(b"mine"), "interrupted").name)


def test_runs_started_at_once_never_share_a_number(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Manager().list()
    workers = [context.Process(target=_reserve_and_write, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert sorted(results) == [f"race_{n:05d}-interrupted.safetensors" for n in range(1, 7)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no marker, no partial left


def test_a_named_output_is_refused_while_another_run_holds_it_and_replaced_only_when_asked(tmp_path):
    with LoraOutput.named(tmp_path, "erased") as holder:
        with pytest.raises(FadeInputError, match=r"another run \(process \d+\) is writing .*erased.safetensors"):
            LoraOutput.named(tmp_path, "erased", overwrite=True)
        holder.write(write_bytes(b"first"))
    with pytest.raises(FadeInputError, match="already exists; choose another file name, or pass --overwrite"):
        LoraOutput.named(tmp_path, "erased")
    with LoraOutput.named(tmp_path, "erased", overwrite=True) as output:
        output.write(write_bytes(b"second"))
    assert (tmp_path / "erased.safetensors").read_bytes() == b"second"


def test_an_interrupted_result_never_replaces_an_earlier_one(tmp_path):
    for content in (b"first", b"second", b"third"):
        with LoraOutput.named(tmp_path, "erased") as output:
            output.write(write_bytes(content), "interrupted")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "erased-interrupted.safetensors": b"first", "erased-interrupted-2.safetensors": b"second",
        "erased-interrupted-3.safetensors": b"third"}


def test_leftovers_of_ended_runs_are_cleared_and_live_ones_kept(tmp_path):
    gone = dead_owner()
    (tmp_path / f".fade-{gone}-abc123.partial").write_bytes(b"half a LoRA")
    (tmp_path / ".p_00001.safetensors.reserved").write_text(gone)
    live = tmp_path / f".fade-{owner_tag()}-def456.partial"
    live.write_bytes(b"being written")
    with LoraOutput.numbered(tmp_path, "p") as output:
        assert output.path.name == "p_00001.safetensors"  # the ended run's reservation no longer holds it
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    assert remove_stale_partials(tmp_path) == []


def test_a_failed_write_keeps_the_result_in_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with LoraOutput.named(tmp_path / "out", "erased") as output:
        output.path.mkdir()  # something took the name while the run trained
        with pytest.raises(FadeExportError) as failed:
            output.write(write_bytes(b"the trained LoRA"))
    message = str(failed.value)
    assert "\n" not in message and "could not write the trained LoRA to" in message
    assert f"it is kept in {failed.value.saved}" in message
    assert failed.value.saved.parent == tmp_path / "tmp" and failed.value.saved.read_bytes() == b"the trained LoRA"


def test_no_space_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(FadeInputError, match="is full .* free some space or choose another --output-dir"):
        LoraOutput.named(tmp_path, "erased", names=("--output-dir", "--out"))
    assert not list(tmp_path.iterdir())


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a read-only mount reports
    with pytest.raises(FadeInputError, match="is not writable .* choose another --output-dir"):
        LoraOutput.named(tmp_path, "erased", names=("--output-dir", "--out"))


# -- the run-and-export path, on the embedded model ----------------------------------------------------


def erase(adapter, output, callback=None, **config):
    prompt_set = default_prompt_set(["three"], num_prompts=4)
    return erase_and_export(adapter, prompt_set, MODULES, FadeConfig(**(TINY | config)), output,
                            base_model=MODEL_NAME, callback=callback)


def stop_at(step: int, exception=KeyboardInterrupt):
    def callback(report):
        if report.step == step:
            raise exception()
    return callback


def assert_full_record(path: Path, status: str, steps: int) -> None:
    metadata = read_safetensors_metadata(path)
    assert metadata["fade_status"] == status
    assert json.loads(metadata["fade_steps_done"]) == steps
    assert json.loads(metadata["fade_modules"]) == MODULES
    assert json.loads(metadata["fade_concepts"]) == ["three"] and metadata["fade_category"] == "object"
    assert json.loads(metadata["fade_hyperparameters"])["learning_rate"] == FadeConfig().learning_rate
    assert metadata["fade_base_model"] == MODEL_NAME and set(json.loads(metadata["fade_base_fingerprint"])) == set(MODULES)
    tensors = load_safetensors(path)
    check_lora(path, tensors, kohya_targets(load_pipeline().unet, "lora_unet_"), model=MODEL_NAME)
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if k.endswith("lora_up.weight"))  # it moved: not an all-zero file
    if status == "complete":  # a complete run is audited; the audit's accuracy and interval go into the file
        low, high = json.loads(metadata["fade_audit_ci95"])
        assert low <= json.loads(metadata["fade_audit_accuracy"]) <= high and json.loads(metadata["fade_audit_n"]) == 8
        assert "fade_tv_bound" not in metadata and "lower bound" in metadata["fade_audit_note"]


def test_an_interrupt_keeps_the_lora_trained_so_far_with_its_full_record(adapter, tmp_path):
    with LoraOutput.named(tmp_path, "erased") as output, pytest.raises(FadeInterrupted) as stopped:
        erase(adapter, output, stop_at(1 + 2))  # after the warm-up step and two LoRA updates
    assert stopped.value.saved == tmp_path / "erased-interrupted.safetensors"
    assert str(stopped.value) == f"interrupted after 2 of 3 LoRA updates; the LoRA trained so far is in {stopped.value.saved}"
    assert isinstance(stopped.value.__cause__, KeyboardInterrupt)
    assert_full_record(stopped.value.saved, "interrupted", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased-interrupted.safetensors"]


def test_an_interrupted_robust_run_keeps_the_state_its_held_out_attack_judged_best(adapter, tmp_path, monkeypatch):
    shares = iter([0.6, 0.3, 0.5])
    monkeypatch.setattr("fade_core.robust.HeldOutAttack.share", lambda self: next(shares))
    robust = dict(robust_every=1, robust_attack_steps=1, robust_warmup_steps=1, robust_bank_size=2, robust_targets=2,
                  robust_check_steps=1, robust_check_images=2)
    with LoraOutput.named(tmp_path, "erased") as output, pytest.raises(FadeInterrupted) as stopped:
        erase(adapter, output, stop_at(1 + 3), **robust)  # after the third update's validation
    assert str(stopped.value) == ("interrupted after 3 of 3 LoRA updates; the state its held-out attack judged best "
                                  f"(after 2 LoRA updates) is in {stopped.value.saved}")
    assert_full_record(stopped.value.saved, "interrupted", 2)
    assert json.loads(read_safetensors_metadata(stopped.value.saved)["fade_held_out_attack_share"]) == 0.3


def test_an_interrupt_during_the_audit_keeps_the_trained_lora_marked_as_not_audited(adapter, tmp_path, monkeypatch):
    def interrupted_audit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fade_core.run.audit", interrupted_audit)
    with LoraOutput.named(tmp_path, "erased") as output, pytest.raises(FadeInterrupted) as stopped:
        erase(adapter, output)
    assert str(stopped.value) == (f"interrupted in the audit, after all 3 LoRA updates; the trained LoRA, without its audit, "
                                  f"is in {tmp_path / 'erased-interrupted.safetensors'}")
    assert_full_record(stopped.value.saved, "interrupted", 3)
    metadata = read_safetensors_metadata(stopped.value.saved)
    assert "fade_audit_accuracy" not in metadata and metadata["fade_audit_note"].startswith("not audited")


def test_an_interrupt_in_the_warm_up_writes_nothing_and_says_so(adapter, tmp_path):
    with LoraOutput.named(tmp_path, "erased") as output, pytest.raises(FadeInterrupted) as stopped:
        erase(adapter, output, stop_at(1), adversary_warmup=2)
    assert stopped.value.saved is None
    assert str(stopped.value) == "interrupted in the adversary's warm-up (1 of 2 steps), before the LoRA changed: no LoRA was saved"
    assert not list(tmp_path.iterdir())


def test_a_divergence_keeps_the_last_validated_lora_and_names_the_flag(adapter, tmp_path):
    def explode_after_the_first_validation(report):
        if report.validation_accuracy is not None:
            trainer.model_optimizer.param_groups[0]["lr"] = 1e30

    trainer = None
    original_init = FadeTrainer.__init__

    def keep(self, *args, **kwargs):
        nonlocal trainer
        original_init(self, *args, **kwargs)
        trainer = self

    with pytest.MonkeyPatch.context() as patch, LoraOutput.named(tmp_path, "erased") as output:
        patch.setattr(FadeTrainer, "__init__", keep)
        with pytest.raises(FadeTrainingError) as diverged:
            erase(adapter, output, explode_after_the_first_validation, steps=4)
    message = str(diverged.value)
    assert "lower learning_rate (--lr)" in message and "\n" not in message
    assert message.endswith(f"the LoRA of the last validation (after 1 LoRA updates) is in {diverged.value.saved}")
    assert_full_record(diverged.value.saved, "diverged", 1)


def test_a_divergence_before_any_validation_saves_nothing_and_says_so(adapter, tmp_path):
    with LoraOutput.named(tmp_path, "erased") as output, pytest.raises(FadeTrainingError) as diverged:
        erase(adapter, output, learning_rate=1e30, validate_every=50, steps=4)
    assert diverged.value.saved is None
    assert "lower learning_rate (--lr)" in str(diverged.value)
    assert str(diverged.value).endswith("no LoRA was saved: none was validated yet (the first validation comes after 4 LoRA updates)")
    assert not list(tmp_path.iterdir())


def test_a_failed_export_keeps_the_trained_lora(adapter, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with LoraOutput.named(tmp_path / "out", "erased") as output:
        with pytest.raises(FadeExportError) as failed:
            erase(adapter, output, lambda report: output.path.mkdir(exist_ok=True))
    assert failed.value.saved.parent == tmp_path and str(failed.value.saved) in str(failed.value)
    assert_full_record(failed.value.saved, "complete", 3)


def test_a_rank_wider_than_a_module_is_refused_before_training(adapter, tmp_path):
    with LoraOutput.named(tmp_path, "erased") as output, pytest.raises(FadeInputError, match=r"is only 32 wide; use 32 or less"):
        erase(adapter, output, lora_rank=33, lora_alpha=33.0)
    assert not list(tmp_path.iterdir())


# -- the command line ---------------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_the_command_line_keeps_every_interrupted_run(tmp_path, monkeypatch):
    """Two runs stopped by Ctrl-C (the figures, not under test here, are stubbed): each keeps its LoRA,
    the second beside the first, and says where in one line."""
    from fade_core.digits import judge

    stub = judge.Scores(1.0, 1.0, 0.0, 1.0, 1, 0, {"three": 1.0})
    monkeypatch.setattr(judge.DigitsJudge, "measure", lambda self, adapter, concepts, prompts=None: stub)
    monkeypatch.setattr(judge, "load_evaluator", lambda: None)
    original = FadeTrainer._report

    def interrupt_at_the_second_update(self, report):
        original(self, report)
        if report.phase == "train" and report.step == self.config.adversary_warmup + 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(FadeTrainer, "_report", interrupt_at_the_second_update)
    argv = ("--output-dir", str(tmp_path), "erase", "--concept", "three", "--steps", "3", "--warmup", "1", "--batch-size", "2",
            "--sampling-steps", "2", "--prompts", "4", "--images", "1", "--quiet")
    first = run_cli(*argv)
    second = run_cli(*argv)
    assert first == (130, f"error: interrupted after 2 of 3 LoRA updates; the LoRA trained so far (not validated yet) is in {tmp_path / 'fade-three-interrupted.safetensors'}\n")
    assert second[0] == 130 and second[1].endswith(f"is in {tmp_path / 'fade-three-interrupted-2.safetensors'}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fade-three-interrupted-2.safetensors", "fade-three-interrupted.safetensors"]
    assert read_safetensors_metadata(tmp_path / "fade-three-interrupted.safetensors")["fade_status"] == "interrupted"
