"""A tiny llama-architecture GGUF with random weights that real llama.cpp loads, shards over
RPC and generates from (gibberish, quickly): for tests and `benchmarks/shard.py`.

The vocabulary comes from llama.cpp's `models/ggml-vocab-llama-spm.gguf` (metadata only),
so token ids, BOS/EOS and the tokenizer are real; only the weights are random.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sollol_serve.shard.models import (
    MODEL_MEDIA_TYPE,
    ModelFileError,
    check_gguf_magic,
    parse_model_name,
)

VOCAB_FILE_NAME = "ggml-vocab-llama-spm.gguf"
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
VOCAB_ENV_VAR = "SOLLOL_VOCAB_GGUF"


def find_vocab(environ: Mapping[str, str] | None = None) -> Path | None:
    """The llama SPM vocabulary: `$SOLLOL_VOCAB_GGUF`, else the copy `sollol build-llamacpp`
    leaves next to the binaries (`<cache>/ggml-vocab-llama-spm.gguf`); None if neither exists."""
    from sollol_serve.shard.build import cache_dir

    environ = os.environ if environ is None else environ
    for candidate in (environ.get(VOCAB_ENV_VAR), cache_dir() / VOCAB_FILE_NAME):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _raw_value(field: Any) -> tuple[Any, Any, Any]:
    """(value, type, sub_type) of a GGUFReader field, strings kept as raw bytes (lossless)."""
    from gguf import GGUFValueType

    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i].tobytes()) for i in field.data], main, sub
        return field.contents(), main, sub
    if main == GGUFValueType.STRING:
        return bytes(field.parts[-1].tobytes()), main, None
    return field.contents(), main, None


def read_vocab(vocab_gguf: Path) -> dict[str, tuple[Any, Any, Any]]:
    """The `tokenizer.*` metadata of a GGUF file: key -> (value, type, sub_type)."""
    vocab_gguf = Path(vocab_gguf)
    check_gguf_magic(vocab_gguf)
    return dict(_read_vocab(str(vocab_gguf.resolve()), vocab_gguf.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _read_vocab(vocab_gguf: str, mtime_ns: int) -> dict[str, tuple[Any, Any, Any]]:
    """Cached: gguf.GGUFReader takes ~2 s over a 32k-token vocabulary."""
    from gguf import GGUFReader

    reader = GGUFReader(vocab_gguf, "r")
    vocab = {key: _raw_value(f) for key, f in reader.fields.items() if key.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in vocab:
        raise ModelFileError(f"{vocab_gguf} has no tokenizer.ggml.tokens")
    return vocab


def write_tiny_llama(path: Path, vocab_gguf: Path, n_layer: int = 4, n_embd: int = 64, n_head: int = 4,
                     n_ff: int = 128, n_ctx: int = 512, seed: int = 0, n_head_kv: int | None = None) -> Path:
    """Write a random-weight llama GGUF to `path` (f16 matrices, f32 norms); return `path`."""
    from gguf import GGUFWriter, LlamaFileType

    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if n_head % n_head_kv:
        raise ValueError(f"n_head ({n_head}) must be a multiple of n_head_kv ({n_head_kv})")
    head_dim = n_embd // n_head
    vocab = read_vocab(vocab_gguf)
    n_vocab = len(vocab["tokenizer.ggml.tokens"][0])
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) is GGUF ne = [cols, rows]: llama.cpp's {n_in, n_out}
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_name(f"sollol-tiny-llama-{n_layer}l-{n_embd}d")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    for key, (value, vtype, sub_type) in vocab.items():
        writer.add_key_value(key, value, vtype, sub_type)

    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", matrix(n_head * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", matrix(n_embd, n_head * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", matrix(n_vocab, n_embd))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_blob(store: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{hexdigest}").write_bytes(data)
    return hexdigest, len(data)


def write_ollama_store(store: Path, model: str, gguf_path: Path) -> Path:
    """Add `gguf_path` to an Ollama-style store as `model` (blob + manifest, so that
    `resolve_gguf(model, store)` finds it); return the model blob's path."""
    store, gguf_path = Path(store), Path(gguf_path)
    name = parse_model_name(model)
    hexdigest = _sha256_file(gguf_path)
    blob = store / "blobs" / f"sha256-{hexdigest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.is_file():
        shutil.copyfile(gguf_path, blob)
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                         "model_type": "", "file_type": "F16"}).encode()
    config_hex, config_size = _write_blob(store, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{config_hex}", "size": config_size},
        "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{hexdigest}", "size": blob.stat().st_size}],
    }
    target = store / "manifests" / name.registry / name.namespace / name.repo / name.tag
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(manifest))
    return blob
