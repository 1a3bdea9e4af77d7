"""The command line: bad input is named and writes nothing; a short erase at least halves Acc."""

import json

import pytest

from fade_core.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["erase", "--concept", ""], "the concept is empty"),
        (["erase", "--concept", " , "], "the concept is empty"),
        (["erase", "--concept", "airplane"], "does not know 'airplane'"),
        (["erase", "--concept", "three", "--category", "style"], "not style"),
        (["erase", "--concept", "three", "--out", "../outside"], "points outside"),
        (["erase", "--concept", "three", "--out", "/tmp/fade-escape"], "points outside"),
        (["sample", "--prompt", "a 3", "--out", "../grid.png"], "points outside"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(tmp_path, capsys, argv, message):
    code, _, err = _run(capsys, "--output-dir", str(tmp_path / "out"), *argv)
    assert code == 2
    assert message in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not list(tmp_path.glob("outside*"))


def test_unknown_category_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--output-dir", str(tmp_path), "erase", "--concept", "three", "--category", "animal"])
    assert stop.value.code == 2
    assert "invalid choice: 'animal'" in capsys.readouterr().err


def test_prompts_without_the_concept_are_refused(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten 5\nthe digit seven\n")
    code, _, err = _run(capsys, "evaluate", "--concept", "three", "--prompts", str(prompts))
    assert code == 2 and "none of the 2 prompts mentions 'three'" in err


@pytest.mark.slow
def test_a_nan_loss_is_named_and_writes_no_lora(tmp_path, capsys):
    code, _, err = _run(
        capsys, "--output-dir", str(tmp_path), "erase", "--concept", "four", "--steps", "20", "--lr", "1e30", "--quiet"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "became" in err and "lower learning_rate (--lr) (now 1e+30)" in err
    assert "no LoRA was saved: none was validated yet" in err
    assert not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.slow
def test_short_erase_halves_acc_and_keeps_other_digits(tmp_path, capsys):
    code, out, _ = _run(
        capsys, "--output-dir", str(tmp_path), "erase", "--concept", "five", "--steps", "100", "--lr", "3e-3",
        "--images", "100", "--audit-samples", "32", "--json", "--quiet",
    )
    assert code == 0
    figures = json.loads(out[out.index("{"):])
    before, after = figures["before"], figures["after"]
    assert before["acc_concept"] >= 0.9
    assert after["acc_concept"] <= before["acc_concept"] / 2
    assert after["acc_other"] >= 0.9 * before["acc_other"]
    assert (tmp_path / "fade-five.safetensors").is_file()

    code, out, _ = _run(capsys, "evaluate", "--concept", "five", "--lora", str(tmp_path / "fade-five.safetensors"),
                        "--images", "100", "--json")
    reloaded = json.loads(out)
    assert set(reloaded) >= {"acc_concept", "acc_other", "fid_proxy", "clip_proxy", "H", "n_images", "seed"}
    assert reloaded["acc_concept"] == pytest.approx(after["acc_concept"], abs=0.03)
