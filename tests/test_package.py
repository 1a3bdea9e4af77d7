"""The pack's entry file imports cleanly where ComfyUI is absent (tests, other tools)."""

import shutil
import subprocess
import sys

import pytest

from comfy_host import REPO


def test_the_pack_imports_without_comfyui():
    """In a fresh interpreter, so that a ComfyUI imported by the host tests cannot interfere."""
    script = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('comfy_api') is None, 'ComfyUI is importable in this interpreter'\n"
        f"spec = importlib.util.spec_from_file_location('fade_pack_without_host', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "pack = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = pack\n"
        "spec.loader.exec_module(pack)\n"
        "print(pack.WEB_DIRECTORY, hasattr(pack, 'comfy_entrypoint'))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["./web", "False"]  # the web view is declared, and no nodes without a host


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
