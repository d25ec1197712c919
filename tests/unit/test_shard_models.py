"""sollol_serve.shard.models (model name -> GGUF file, GGUF metadata) and
sollol_serve.shard.tiny_model (a random-weight llama GGUF, an Ollama-style store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sollol_serve.shard.models import (
    MODEL_MEDIA_TYPE,
    GGUFInfo,
    ModelFileError,
    ModelName,
    ollama_models_dir,
    parse_model_name,
    read_gguf_info,
    read_gguf_metadata,
    resolve_gguf,
)
from sollol_serve.shard.tiny_model import (
    find_vocab,
    write_ollama_store,
    write_tiny_llama,
)

N_LAYER, N_EMBD, N_HEAD, N_FF, N_CTX = 3, 64, 4, 128, 256


def _fake_store(store: Path, registry: str, namespace: str, repo: str, tag: str,
                content: bytes = b"GGUF\x03\x00\x00\x00fake", layers: list[dict] | None = None) -> Path:
    """A manifest for registry/namespace/repo:tag whose model layer is `content`; the blob path."""
    hexdigest = hashlib.sha256(content).hexdigest()
    blob = store / "blobs" / f"sha256-{hexdigest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    if layers is None:
        layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1},
                  {"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{hexdigest}", "size": len(content)}]
    manifest = store / "manifests" / registry / namespace / repo / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return blob


# --- names and the store's location ---------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "parsed"),
    [
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
        ("llama3.2:latest", ("registry.ollama.ai", "library", "llama3.2", "latest")),
        ("qwen2.5:0.5b", ("registry.ollama.ai", "library", "qwen2.5", "0.5b")),
        ("user/model:v1", ("registry.ollama.ai", "user", "model", "v1")),
        ("hf.co/user/repo:Q4_K_M", ("hf.co", "user", "repo", "Q4_K_M")),
        ("hf.co/user/repo", ("hf.co", "user", "repo", "latest")),
        ("https://hf.co/user/repo:q8", ("hf.co", "user", "repo", "q8")),
        ("localhost:5000/ns/m", ("localhost:5000", "ns", "m", "latest")),
        ("llama3.2@sha256:abc", ("registry.ollama.ai", "library", "llama3.2", "latest")),
    ],
)
def test_parse_model_name(model, parsed):
    assert parse_model_name(model) == ModelName(*parsed)


@pytest.mark.parametrize("model", ["", "a/b/c/d", "a//b", "m:", "/m"])
def test_parse_model_name_rejects(model):
    with pytest.raises(ModelFileError, match="invalid model name"):
        parse_model_name(model)


def test_ollama_models_dir():
    assert ollama_models_dir({"OLLAMA_MODELS": "/data/ollama"}) == Path("/data/ollama")
    assert ollama_models_dir({}) == Path.home() / ".ollama" / "models"
    assert ollama_models_dir({"OLLAMA_MODELS": ""}) == Path.home() / ".ollama" / "models"


# --- resolve_gguf ---------------------------------------------------------------------------
def test_resolve_plain_name_and_latest(tmp_path):
    blob = _fake_store(tmp_path, "registry.ollama.ai", "library", "llama3.2", "latest")
    assert resolve_gguf("llama3.2", tmp_path) == blob
    assert resolve_gguf("llama3.2:latest", tmp_path) == blob
    assert resolve_gguf("library/llama3.2", tmp_path) == blob
    assert resolve_gguf("registry.ollama.ai/library/llama3.2:latest", tmp_path) == blob
    assert resolve_gguf("LLaMA3.2", tmp_path) == blob  # Ollama names compare case-insensitively


def test_resolve_tagged_namespaced_and_hf(tmp_path):
    small = _fake_store(tmp_path, "registry.ollama.ai", "library", "qwen2.5", "0.5b", b"GGUF small")
    mine = _fake_store(tmp_path, "registry.ollama.ai", "someone", "tuned", "latest", b"GGUF tuned")
    hf = _fake_store(tmp_path, "hf.co", "user", "repo", "Q4_K_M", b"GGUF hf")
    assert resolve_gguf("qwen2.5:0.5b", tmp_path) == small
    assert resolve_gguf("someone/tuned", tmp_path) == mine
    assert resolve_gguf("hf.co/user/repo:Q4_K_M", tmp_path) == hf
    with pytest.raises(ModelFileError):
        resolve_gguf("qwen2.5", tmp_path)  # :latest is not :0.5b


def test_resolve_uses_ollama_models_env(tmp_path, monkeypatch):
    blob = _fake_store(tmp_path, "registry.ollama.ai", "library", "m", "latest")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    assert resolve_gguf("m") == blob


def test_configured_path_wins(tmp_path):
    _fake_store(tmp_path, "registry.ollama.ai", "library", "llama3.2", "latest")
    own = tmp_path / "own.gguf"
    own.write_bytes(b"GGUF own")
    assert resolve_gguf("llama3.2", tmp_path, {"llama3.2:latest": str(own)}) == own
    assert resolve_gguf("llama3.2:latest", tmp_path, {"llama3.2": str(own)}) == own
    # a configured model needs no store at all
    assert resolve_gguf("x/y:z", tmp_path / "nowhere", {"x/y:z": str(own)}) == own
    with pytest.raises(ModelFileError, match="configured GGUF file .* does not exist"):
        resolve_gguf("llama3.2", tmp_path, {"llama3.2": str(tmp_path / "gone.gguf")})


def test_missing_manifest_says_where_it_looked(tmp_path):
    with pytest.raises(ModelFileError) as e:
        resolve_gguf("hf.co/user/repo:q4", tmp_path)
    expected = tmp_path / "manifests" / "hf.co" / "user" / "repo" / "q4"
    assert str(expected) in str(e.value)
    assert "no Ollama manifest" in str(e.value)


def test_manifest_without_model_layer(tmp_path):
    _fake_store(tmp_path, "registry.ollama.ai", "library", "m", "latest",
                layers=[{"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:00", "size": 1}])
    with pytest.raises(ModelFileError, match="no application/vnd.ollama.image.model layer"):
        resolve_gguf("m", tmp_path)


def test_unreadable_manifest(tmp_path):
    manifest = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "m" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable Ollama manifest"):
        resolve_gguf("m", tmp_path)


def test_missing_blob(tmp_path):
    blob = _fake_store(tmp_path, "registry.ollama.ai", "library", "m", "latest")
    blob.unlink()
    with pytest.raises(ModelFileError, match="blob .* is missing") as e:
        resolve_gguf("m", tmp_path)
    assert str(blob) in str(e.value)


def test_non_gguf_file(tmp_path):
    blob = _fake_store(tmp_path, "registry.ollama.ai", "library", "m", "latest", b"PK\x03\x04 a zip")
    assert resolve_gguf("m", tmp_path) == blob  # resolution doesn't open the file
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_gguf_info(blob)
    with pytest.raises(ModelFileError, match="cannot read"):
        read_gguf_info(tmp_path / "absent.gguf")


def test_truncated_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00\xff")
    with pytest.raises(ModelFileError, match="cannot parse GGUF"):
        read_gguf_info(bad)


# --- read_gguf_metadata: the header parser agrees with gguf.GGUFReader -----------------------
def _reader_metadata(path: Path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("big_endian", [False, True])
def test_read_gguf_metadata_matches_gguf_reader(tmp_path, big_endian):
    import numpy as np
    from gguf import GGUFEndian, GGUFWriter

    path = tmp_path / "meta.gguf"
    writer = GGUFWriter(path, "qwen2", endianess=GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE)
    writer.add_name("Qwen ü 0.5B")
    writer.add_block_count(24)
    writer.add_context_length(32768)
    writer.add_embedding_length(896)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_uint8("x.u8", 200)
    writer.add_int8("x.i8", -5)
    writer.add_uint16("x.u16", 65000)
    writer.add_int16("x.i16", -300)
    writer.add_int32("x.i32", -70000)
    writer.add_uint64("x.u64", 2**40)
    writer.add_int64("x.i64", -(2**40))
    writer.add_float64("x.f64", 0.1)
    writer.add_bool("x.bool", True)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    writer.add_array("tokenizer.ggml.scores", [float(i) / 2 for i in range(1000)])
    writer.add_array("tokenizer.ggml.token_type", [1] * 1000)
    writer.add_string("general.license", "apache-2.0")  # after the arrays: they must be skipped exactly
    writer.add_tensor("w", np.zeros((2, 3), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    expected = _reader_metadata(path)
    assert read_gguf_metadata(path) == expected
    skipped = read_gguf_metadata(path, lambda key: not key.startswith("tokenizer."))
    assert skipped == {k: v for k, v in expected.items() if not k.startswith("tokenizer.")}
    assert skipped["general.license"] == "apache-2.0"
    info = read_gguf_info(path)
    assert (info.architecture, info.block_count, info.context_length, info.embedding_length, info.name) == (
        "qwen2", 24, 32768, 896, "Qwen ü 0.5B")


def test_read_gguf_info_without_block_count(tmp_path):
    from gguf import GGUFWriter

    path = tmp_path / "noblocks.gguf"
    writer = GGUFWriter(path, "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert read_gguf_metadata(path) == {"general.architecture": "llama"}
    with pytest.raises(ModelFileError, match="no llama.block_count"):
        read_gguf_info(path)


# --- the tiny model (needs llama.cpp's vocabulary file) --------------------------------------
@pytest.fixture(scope="module")
def vocab() -> Path:
    path = find_vocab()
    if path is None:
        pytest.skip("ggml-vocab-llama-spm.gguf not found (run `sollol build-llamacpp`, or set SOLLOL_VOCAB_GGUF)")
    return path


@pytest.fixture(scope="module")
def tiny(vocab, tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", vocab, n_layer=N_LAYER, n_embd=N_EMBD,
                            n_head=N_HEAD, n_ff=N_FF, n_ctx=N_CTX, seed=1)


def test_read_gguf_info_of_tiny_model(tiny):
    info = read_gguf_info(tiny)
    assert info == GGUFInfo(path=tiny, architecture="llama", block_count=N_LAYER, size_bytes=tiny.stat().st_size,
                            context_length=N_CTX, embedding_length=N_EMBD, name=info.name)
    assert info.name and info.name.startswith("sollol-tiny-llama")
    assert info.size_bytes > 2 * 32000 * N_EMBD * 2  # two f16 [n_vocab, n_embd] matrices


@pytest.fixture(scope="module")
def vocab_metadata(vocab) -> dict:
    return _reader_metadata(vocab)


def test_read_gguf_metadata_of_vocab_and_tiny_model(vocab, vocab_metadata, tiny):
    assert read_gguf_metadata(vocab) == vocab_metadata
    assert read_gguf_metadata(tiny) == _reader_metadata(tiny)


def test_tiny_model_tensors_are_what_llama_cpp_expects(tiny, vocab_metadata):
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(tiny)
    n_vocab = len(vocab_metadata["tokenizer.ggml.tokens"])
    head_dim = N_EMBD // N_HEAD
    # GGUF ne order (innermost first), as llama.cpp's loader checks it
    expected = {"token_embd.weight": [N_EMBD, n_vocab], "output_norm.weight": [N_EMBD],
                "output.weight": [N_EMBD, n_vocab]}
    for i in range(N_LAYER):
        expected |= {
            f"blk.{i}.attn_norm.weight": [N_EMBD],
            f"blk.{i}.attn_q.weight": [N_EMBD, N_HEAD * head_dim],
            f"blk.{i}.attn_k.weight": [N_EMBD, N_HEAD * head_dim],
            f"blk.{i}.attn_v.weight": [N_EMBD, N_HEAD * head_dim],
            f"blk.{i}.attn_output.weight": [N_HEAD * head_dim, N_EMBD],
            f"blk.{i}.ffn_norm.weight": [N_EMBD],
            f"blk.{i}.ffn_gate.weight": [N_EMBD, N_FF],
            f"blk.{i}.ffn_up.weight": [N_EMBD, N_FF],
            f"blk.{i}.ffn_down.weight": [N_FF, N_EMBD],
        }
    tensors = {t.name: t for t in reader.tensors}
    assert {name: t.shape.tolist() for name, t in tensors.items()} == expected
    for name, t in tensors.items():
        assert t.tensor_type == (GGMLQuantizationType.F32 if name.endswith("norm.weight") else GGMLQuantizationType.F16)
    embd = tensors["token_embd.weight"].data.astype("float32")
    assert 0.01 < float(embd.std()) < 0.03 and abs(float(embd.mean())) < 1e-3

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == N_LAYER
    assert value("llama.feed_forward_length") == N_FF
    assert value("llama.attention.head_count") == N_HEAD
    assert value("llama.attention.head_count_kv") == N_HEAD
    assert value("llama.rope.dimension_count") == head_dim
    assert value("general.file_type") == 1  # MOSTLY_F16
    # the vocabulary is copied verbatim
    tokenizer = {k: v for k, v in vocab_metadata.items() if k.startswith("tokenizer.")}
    assert {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"} <= tokenizer.keys()
    assert {k: value(k) for k in tokenizer} == tokenizer


def test_tiny_model_is_deterministic(vocab, tmp_path):
    kwargs = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_ff": 64, "seed": 7}
    a = write_tiny_llama(tmp_path / "a.gguf", vocab, **kwargs)
    b = write_tiny_llama(tmp_path / "b.gguf", vocab, **kwargs)
    assert a.read_bytes() == b.read_bytes()


def test_ollama_store_round_trip(tiny, tmp_path):
    blob = write_ollama_store(tmp_path, "tiny-llama:test", tiny)
    assert blob == tmp_path / "blobs" / f"sha256-{hashlib.sha256(tiny.read_bytes()).hexdigest()}"
    assert blob.read_bytes() == tiny.read_bytes()
    manifest = json.loads((tmp_path / "manifests/registry.ollama.ai/library/tiny-llama/test").read_text())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    config = tmp_path / "blobs" / manifest["config"]["digest"].replace(":", "-")
    assert json.loads(config.read_text())["model_format"] == "gguf"
    assert resolve_gguf("tiny-llama:test", tmp_path) == blob
    assert read_gguf_info(resolve_gguf("tiny-llama:test", tmp_path)).block_count == N_LAYER
    hf_blob = write_ollama_store(tmp_path, "hf.co/me/tiny", tiny)
    assert resolve_gguf("hf.co/me/tiny:latest", tmp_path) == hf_blob == blob  # same content, same blob
