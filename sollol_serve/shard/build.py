"""`sollol build-llamacpp`: llama.cpp's `llama-server` and `ggml-rpc-server`, built with RPC on.

The source is the llama.cpp tree vendored inside a pinned `llama-cpp-python` sdist (PyPI is
reachable where GitHub releases may not be). Binaries are built once per version into the
user's cache directory and reused; binaries named by environment variables, or found on PATH,
win over a build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BINARIES = ("llama-server", "ggml-rpc-server")
ENV_VARS = {"llama-server": "SOLLOL_LLAMA_SERVER", "ggml-rpc-server": "SOLLOL_RPC_SERVER"}
CMAKE_FLAGS = ["-DGGML_RPC=ON", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release",
               # static: the two binaries can be copied to a host without the build tree
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]


@dataclass(frozen=True, slots=True)
class LlamaBinaries:
    llama_server: Path
    rpc_server: Path


def cache_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sollol_serve" / f"llama.cpp-{version}"


def find_binaries(version: str = LLAMA_CPP_PYTHON_VERSION, environ: dict[str, str] | None = None) -> LlamaBinaries | None:
    """The binaries to use: from SOLLOL_LLAMA_SERVER / SOLLOL_RPC_SERVER, else the cached
    build, else PATH; None if any is missing."""
    environ = os.environ if environ is None else environ
    found = {}
    for name in BINARIES:
        candidates = [environ.get(ENV_VARS[name]), str(cache_dir(version) / "bin" / name), shutil.which(name)]
        path = next((Path(c) for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)
        if path is None:
            return None
        found[name] = path
    return LlamaBinaries(found["llama-server"], found["ggml-rpc-server"])


def _run(cmd: list[str], log) -> None:
    print("+", " ".join(cmd), file=log, flush=True)
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def build(version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None, log=sys.stdout) -> LlamaBinaries:
    """Download the sdist, build the two targets, install them into the cache; return them."""
    target = cache_dir(version) / "bin"
    with tempfile.TemporaryDirectory(prefix="sollol-llama-build-") as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={version}", "-d", tmp], log)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        source = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = Path(tmp) / "build"
        _run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_FLAGS], log)
        _run(["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2),
              "--target", *BINARIES], log)
        target.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            shutil.copy2(build_dir / "bin" / name, target / name)
        vocab = source / "models" / "ggml-vocab-llama-spm.gguf"
        if vocab.is_file():  # the tests build their tiny model on this vocabulary
            shutil.copy2(vocab, target.parent / vocab.name)
    return LlamaBinaries(target / "llama-server", target / "ggml-rpc-server")


def ensure_binaries(version: str = LLAMA_CPP_PYTHON_VERSION, log=sys.stdout) -> LlamaBinaries:
    """The binaries, building them first if none are found (minutes, once per version)."""
    return find_binaries(version) or build(version, log=log)
