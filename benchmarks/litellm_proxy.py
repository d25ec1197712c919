"""LiteLLM's proxy in front of the simulated node: the Python gateway users would pick instead.

    python benchmarks/litellm_proxy.py --install   # the pinned venv, once (a minute or two)

`LiteLLMProxy(node_url)` runs `litellm --config ... --host 127.0.0.1 --port <free>` from its own
venv (`~/.cache/sollol_serve/litellm-<version>`, made on first use: LiteLLM pins its own
FastAPI, pydantic and httpx, which must not meet ours), set up the way its docs set up an Ollama
backend: OpenAI API in, `ollama_chat/<model>` out to the node, a master key, one worker, no
telemetry, the model cost map read from the package (this machine reaches no GitHub). Stopped
by its PID (SIGINT, then SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from sollol_serve.processes import die_with_parent, free_port, stop_process

VERSION = "1.106.12"
VENV = Path.home() / ".cache" / "sollol_serve" / f"litellm-{VERSION}"
START_TIMEOUT_S = 180.0


def install() -> Path:
    """The venv's `litellm` executable, made if missing."""
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"litellm[proxy]=={VERSION}"],
                   check=True)
    return exe


def proxy_config(node_url: str, models: tuple[str, ...], master_key: str) -> dict:
    return {
        "model_list": [{"model_name": m, "litellm_params": {"model": f"ollama_chat/{m}", "api_base": node_url}}
                       for m in models],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }


class LiteLLMProxy:
    """`with LiteLLMProxy(node_url, models) as proxy:` a started, answering proxy."""

    def __init__(self, node_url: str, models: tuple[str, ...] = ("llama3.2",)):
        self.node_url, self.models = node_url, models
        self.port = free_port()
        self.master_key = "sk-bench-" + secrets.token_hex(8)
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    def __enter__(self) -> "LiteLLMProxy":
        exe = install()
        self._dir = tempfile.TemporaryDirectory(prefix="litellm-bench-")
        root = Path(self._dir.name)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(proxy_config(self.node_url, self.models, self.master_key)))
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "True"}
        log = (root / "litellm.log").open("wb")
        self.proc = subprocess.Popen([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port",
                                      str(self.port), "--num_workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=root, preexec_fn=_child_setup)
        try:
            self._wait_ready(root / "litellm.log")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited ({self.proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"litellm did not answer within {START_TIMEOUT_S:.0f} s: {log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, 15)
        if self._dir is not None:
            self._dir.cleanup()


def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background run ignores it: this must stop on it
    die_with_parent()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="make the pinned venv if it is missing")
    if parser.parse_args().install:
        print(install())
