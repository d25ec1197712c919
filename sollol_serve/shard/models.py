"""Resolving a model name to its GGUF file (an Ollama store, or a configured path) and
reading the few GGUF metadata fields the sharding planner needs.

The metadata is read by a small header parser rather than `gguf.GGUFReader`, which decodes
every array element into numpy views: ~9 s for a real model's 150k-token vocabulary and
280k merges, against milliseconds here (`tests/unit/test_shard_models.py` checks the two agree).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sollol_serve.protocol import BadRequest

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
GGUF_MAGIC = b"GGUF"


class ModelFileError(ValueError):
    """A model's GGUF file can't be found, or isn't a usable GGUF file."""


class InvalidModelName(ModelFileError, BadRequest):
    """A model name that is not one (a 400): it could name a file outside the model store."""

    def __init__(self, message: str):
        BadRequest.__init__(self, message)


def check_model_name(model: str) -> None:
    """Raise InvalidModelName for a name that could reach outside the store once it becomes a
    path: a `.` or `..` segment (in the path or the tag), an absolute path, a backslash, a NUL
    or another control character. Checked before any file is looked up."""
    name = model.strip()
    if not name or len(name) > 512 or any(ord(c) < 32 or c in "\\\x7f" for c in name):
        raise InvalidModelName(f"invalid model name {model!r}")
    for scheme in ("http://", "https://"):
        name = name.removeprefix(scheme)
    if name.startswith(("/", "~")) or any(seg in (".", "..") for seg in re.split(r"[/:@]", name)):
        raise InvalidModelName(f"invalid model name {model!r}")


class ModelName(NamedTuple):
    """A fully qualified Ollama model name: `<registry>/<namespace>/<repo>:<tag>`."""

    registry: str
    namespace: str
    repo: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.namespace}/{self.repo}:{self.tag}"

    def key(self) -> tuple[str, ...]:
        """Comparison key: Ollama compares names case-insensitively."""
        return tuple(part.casefold() for part in self)


def parse_model_name(model: str) -> ModelName:
    """Ollama's normalization: `llama3.2` is `registry.ollama.ai/library/llama3.2:latest`,
    `user/m` is namespace `user`, `hf.co/user/repo:tag` is registry `hf.co`. A name that could
    reach outside the store (`..`, an absolute path, ...) is an InvalidModelName."""
    check_model_name(model)
    name = model.strip()
    for scheme in ("http://", "https://"):
        name = name.removeprefix(scheme)
    name = name.split("@", 1)[0]  # a pinned digest doesn't change which manifest is read
    path, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:  # no tag (a ':' before the last '/' is a registry port)
        path, tag = name, DEFAULT_TAG
    parts = path.split("/")
    if len(parts) > 3 or not all(parts) or not tag:
        raise InvalidModelName(f"invalid model name {model!r}")
    registry, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        registry, namespace, repo = parts
    elif len(parts) == 2:
        namespace, repo = parts
    else:
        (repo,) = parts
    return ModelName(registry, namespace, repo, tag)


def ollama_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Ollama's model store: `$OLLAMA_MODELS`, else `~/.ollama/models`."""
    environ = os.environ if environ is None else environ
    configured = environ.get("OLLAMA_MODELS")
    return Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"


def _configured_path(name: ModelName, configured: Mapping[str, str] | None) -> Path | None:
    for key, path in (configured or {}).items():
        try:
            if parse_model_name(key).key() == name.key():
                return Path(path).expanduser()
        except ModelFileError:
            continue
    return None


def _find_case_insensitive(root: Path, parts: tuple[str, ...]) -> Path | None:
    """`root/parts...`, the exact path first, else matching each part ignoring case."""
    exact = root.joinpath(*parts)
    if exact.is_file():
        return exact
    current = root
    for part in parts:
        if not current.is_dir():
            return None
        current = next((c for c in current.iterdir() if c.name.casefold() == part.casefold()), None)
        if current is None:
            return None
    return current if current.is_file() else None


def manifest_path(store: Path, name: ModelName) -> Path:
    """Where Ollama keeps `name`'s manifest (the canonical spelling; it may not exist)."""
    return store / "manifests" / name.registry / name.namespace / name.repo / name.tag


def _model_layer_digest(manifest: Path, name: ModelName) -> str:
    try:
        layers = json.loads(manifest.read_text())["layers"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"unreadable Ollama manifest for {name} at {manifest}: {e}") from e
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA_TYPE:
            digest = str(layer.get("digest", ""))
            algo, sep, hexdigest = digest.partition(":")
            if algo != "sha256" or not sep or not hexdigest:
                raise ModelFileError(f"model layer of {name} has a bad digest {digest!r} ({manifest})")
            return hexdigest
    raise ModelFileError(f"Ollama manifest for {name} has no {MODEL_MEDIA_TYPE} layer ({manifest})")


def resolve_gguf(model: str, store: Path | None = None, configured: Mapping[str, str] | None = None) -> Path:
    """The GGUF file of `model`: a `configured` path (name -> path) wins, else the model
    layer's blob in the Ollama store (`store`, default `ollama_models_dir()`)."""
    name = parse_model_name(model)
    path = _configured_path(name, configured)
    if path is not None:
        if not path.is_file():
            raise ModelFileError(f"configured GGUF file for {name} does not exist: {path}")
        return path
    store = ollama_models_dir() if store is None else Path(store)
    manifest = _find_case_insensitive(store / "manifests", (name.registry, name.namespace, name.repo, name.tag))
    if manifest is None:
        raise ModelFileError(f"model {model!r} ({name}) not found: no Ollama manifest at "
                             f"{manifest_path(store, name)} (pull it with `ollama pull`, or configure a GGUF path)")
    blob = store / "blobs" / f"sha256-{_model_layer_digest(manifest, name)}"
    if not blob.is_file():
        raise ModelFileError(f"model blob of {name} is missing: {blob} (manifest {manifest})")
    return blob


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    path: Path
    architecture: str
    block_count: int
    size_bytes: int
    context_length: int | None
    embedding_length: int | None
    name: str | None


def check_gguf_magic(path: Path) -> None:
    """Raise ModelFileError unless `path` is a readable file starting with `GGUF`."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e}") from e
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


# GGUF value types (gguf.GGUFValueType): struct formats of the fixed-size ones
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Header:
    """A cursor over a GGUF file's key/value section (an mmap), decoding only what is asked for:
    arrays that aren't wanted (a real vocabulary has 100k+ entries) are skipped, not parsed."""

    def __init__(self, buf: mmap.mmap, order: str) -> None:
        self.buf, self.order, self.pos = buf, order, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        end = self.pos + length
        if end > len(self.buf):
            raise struct.error("string runs past the end of the file")
        raw, self.pos = self.buf[self.pos:end], end
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise struct.error(f"unknown GGUF value type {vtype}")
        item_type, count = self.unpack("I"), self.unpack("Q")
        if keep:
            return [self.value(item_type, True) for _ in range(count)]
        if item_type in _SCALAR_FORMATS:
            self.pos += count * struct.calcsize(_SCALAR_FORMATS[item_type])
        elif item_type == _STRING:
            for _ in range(count):
                self.pos += 8 + struct.unpack_from(self.order + "Q", self.buf, self.pos)[0]
        else:
            for _ in range(count):
                self.value(item_type, False)
        if self.pos > len(self.buf):
            raise struct.error("array runs past the end of the file")
        return None


def read_gguf_metadata(path: Path, wanted: Callable[[str], bool] = lambda key: True) -> dict[str, Any]:
    """The metadata of a GGUF file (v2/v3, either byte order) whose keys `wanted` accepts:
    str, int, float, bool, or a list for arrays. Reads the header only."""
    path = Path(path)
    check_gguf_magic(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            (version,) = struct.unpack_from("<I", buf, 4)
            order = "<" if version & 0xFFFF else ">"  # a big-endian file reads as version << 16
            header = _Header(buf, order)
            header.pos = 4
            version = header.unpack("I")
            if version not in (2, 3):
                raise ModelFileError(f"{path}: unsupported GGUF version {version}")
            header.unpack("Q")  # tensor count
            kv_count = header.unpack("Q")
            metadata = {}
            for _ in range(kv_count):
                key = header.string()
                keep = wanted(key)
                value = header.value(header.unpack("I"), keep)
                if keep:
                    metadata[key] = value
            return metadata
    except (struct.error, OSError, ValueError, OverflowError, RecursionError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"cannot parse GGUF file {path}: {e}") from e


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def read_gguf_info(path: Path) -> GGUFInfo:
    """The architecture, layer count, size, context/embedding lengths and name of a GGUF file."""
    path = Path(path)
    suffixes = (".block_count", ".context_length", ".embedding_length")
    meta = read_gguf_metadata(path, lambda key: key in ("general.architecture", "general.name")
                              or key.endswith(suffixes))
    architecture = meta.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ModelFileError(f"GGUF file {path} has no general.architecture")
    block_count = _int_or_none(meta.get(f"{architecture}.block_count"))
    if block_count is None:
        raise ModelFileError(f"GGUF file {path} has no {architecture}.block_count")
    name = meta.get("general.name")
    return GGUFInfo(
        path=path,
        architecture=architecture,
        block_count=block_count,
        size_bytes=path.stat().st_size,
        context_length=_int_or_none(meta.get(f"{architecture}.context_length")),
        embedding_length=_int_or_none(meta.get(f"{architecture}.embedding_length")),
        name=name if isinstance(name, str) else None,
    )
