"""The pack's entry file imports cleanly where ComfyUI is absent (tests, other tools)."""

import importlib.util
import shutil
import subprocess
import sys

import pytest

from comfy_host import REPO


def test_the_pack_imports_without_comfyui():
    if importlib.util.find_spec("comfy_api") is not None:
        pytest.skip("ComfyUI is importable here; tests/test_comfyui_nodes.py covers the loaded pack")
    spec = importlib.util.spec_from_file_location("fade_pack_without_host", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    try:
        spec.loader.exec_module(pack)
    finally:
        del sys.modules[spec.name]
    assert pack.WEB_DIRECTORY == "./web"
    assert not hasattr(pack, "comfy_entrypoint")  # no nodes without a host


def test_the_web_view_listens_for_the_event_the_nodes_send():
    script = (REPO / "web" / "fade_progress.js").read_text()
    host = (REPO / "nodes" / "host.py").read_text()
    assert 'PROGRESS_EVENT = "fade.progress"' in host
    assert 'api.addEventListener("fade.progress"' in script and '"FADETrainEraser"' in script


def test_the_web_view_is_valid_javascript(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed; it only checks the web view's syntax")
    module = tmp_path / "fade_progress.mjs"  # checked as an ES module, as the browser loads it
    module.write_text((REPO / "web" / "fade_progress.js").read_text())
    run = subprocess.run([node, "--check", str(module)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
