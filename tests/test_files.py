import json
import pickle

import pytest
import torch

from fade_core.errors import FadeInputError
from fade_core.files import atomic_write, load_safetensors, path_inside, save_safetensors


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "sub/../../../x"])
def test_names_cannot_escape_their_folder(tmp_path, name):
    with pytest.raises(FadeInputError, match="outside"):
        path_inside(tmp_path, name)


def test_names_inside_the_folder_are_kept(tmp_path):
    assert path_inside(tmp_path, "erased") == (tmp_path / "erased.safetensors").resolve()
    assert path_inside(tmp_path, "sub/erased.safetensors") == (tmp_path / "sub" / "erased.safetensors").resolve()
    with pytest.raises(FadeInputError, match="empty"):
        path_inside(tmp_path, "  ")


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "lora.safetensors"
    save_safetensors({"w": torch.ones(2)}, target)

    def broken(temporary):
        temporary.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert torch.equal(load_safetensors(target)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_only_safetensors_are_loaded(tmp_path):
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(FadeInputError, match="only safetensors"):
        load_safetensors(pickled)
    with pytest.raises(FadeInputError, match="no such file"):
        load_safetensors(tmp_path / "missing.safetensors")


def _add_keys(path, prefix, count):
    import time

    from fade_core.files import update_json

    def add(current, key, value):
        time.sleep(0.01)  # a slow update: without the lock the two processes would overwrite each other
        return current | {key: value}

    for i in range(count):
        update_json(path, lambda current, key=f"{prefix}{i}", value=i: add(current, key, value))


def test_update_json_keeps_what_another_process_wrote_meanwhile(tmp_path):
    """Two processes adding to one results file (two seed-spread runs for a task): nothing is lost."""
    import multiprocessing

    from fade_core.files import update_json

    path = tmp_path / "results.json"
    assert update_json(path, lambda current: current | {"first": 0}) == {"first": 0}
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_keys, args=(path, prefix, 25)) for prefix in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    written = json.loads(path.read_text())
    assert set(written) == {"first"} | {f"{p}{i}" for p in "ab" for i in range(25)}
    assert not list(tmp_path.glob("*.partial"))
