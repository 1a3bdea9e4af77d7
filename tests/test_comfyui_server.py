"""ComfyUI's own server loads the pack from custom_nodes: no import error, the four nodes listed
in /object_info, the web extension served. Needs COMFYUI_PATH (and ComfyUI's requirements)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from comfy_host import REPO, SKIP_REASON, comfyui_path

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(comfyui_path() is None, reason=SKIP_REASON)]

PACK_FOLDER = "comfyui-fade"
FADE_NODES = {"FADEBuildPromptSet", "FADEComputeSaliency", "FADETrainEraser", "FADEApplyErasedLoRA"}


@pytest.fixture(scope="module")
def base_directory(tmp_path_factory) -> Path:
    """A ComfyUI base directory of its own (models, custom_nodes, user, output), so that the
    checkout is never written to; the pack is linked into its custom_nodes."""
    base = tmp_path_factory.mktemp("comfy-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
    return base


def comfyui_command(base: Path, *extra: str) -> list[str]:
    return [sys.executable, str(comfyui_path() / "main.py"), "--cpu", "--base-directory", str(base),
            "--database-url", "sqlite:///:memory:", *extra]


def test_quick_start_imports_the_pack_without_error(base_directory):
    run = subprocess.run(comfyui_command(base_directory, "--quick-test-for-ci"), capture_output=True, text=True,
                         timeout=300, cwd=comfyui_path())
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    pack_lines = [line for line in log.splitlines() if PACK_FOLDER in line]
    assert pack_lines, log[-3000:]  # the import-times table names the pack
    assert not [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line], pack_lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_running_server_lists_the_nodes_and_serves_the_web_view(base_directory):
    port = free_port()
    server = subprocess.Popen(comfyui_command(base_directory, "--listen", "127.0.0.1", "--port", str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=comfyui_path())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, info = time.time() + 240, None
        while info is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/object_info", timeout=5) as response:
                    info = json.load(response)
            except OSError:
                time.sleep(2)
        assert info is not None, "the server did not answer /object_info"
        assert FADE_NODES <= set(info)
        assert info["FADETrainEraser"]["category"] == "FADE"
        assert info["FADETrainEraser"]["output"] == ["MODEL", "STRING"]
        with urllib.request.urlopen(f"{url}/extensions/{PACK_FOLDER}/fade_progress.js", timeout=10) as response:
            assert b"fade.progress" in response.read()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
