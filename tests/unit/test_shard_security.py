"""What a shard group exposes, without Ray or llama.cpp: the addresses its processes may bind,
llama-server's command line and log, its api key on the node the gateway registers, the short
reason a client gets for a failed start, and model names that could name files outside the
model store."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from sollol_serve.config import GatewayConfig, ShardConfig
from sollol_serve.protocol import BadRequest, NoNodeAvailable
from sollol_serve.shard import coordinator as coord_mod
from sollol_serve.shard.coordinator import (
    LOG_ROTATE_BYTES,
    Group,
    ShardStartError,
    _failure,
    check_bind,
    log_path_for,
    open_log,
    rpc_bind_address,
)
from sollol_serve.shard.models import (
    InvalidModelName,
    ModelFileError,
    check_model_name,
    parse_model_name,
    resolve_gguf,
)
from sollol_serve.shard.plan import API_KEY_ENV, Backend, Host, PlanError, bind_refusal, llama_server_command


# --- binds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]"])
def test_wildcard_bind_is_refused(address):
    assert "wildcard" in bind_refusal(address)
    with pytest.raises(ShardStartError, match="allow_public_bind"):
        check_bind(address, allow_public=False)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.2.3.4", "2001:4860:4860::8888"])
def test_public_bind_is_refused(address):
    assert "not a loopback or private" in bind_refusal(address)
    with pytest.raises(ShardStartError):
        check_bind(address, allow_public=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "10.1.2.3", "172.16.0.5", "192.168.1.20",
                                     "fd00::1"])
def test_loopback_and_private_binds_are_accepted(address):
    assert bind_refusal(address) is None
    check_bind(address, allow_public=False)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "8.8.8.8", "10.0.0.1"])
def test_the_flag_allows_any_bind(address):
    assert bind_refusal(address, allow_public=True) is None
    check_bind(address, allow_public=True)


def test_a_bind_that_is_no_address_is_refused():
    assert "not an IP address" in bind_refusal("example.com", allow_public=True)


def test_rpc_bind_address_is_what_shard_bind_names():
    assert rpc_bind_address("loopback", "10.0.0.7") == "127.0.0.1"
    assert rpc_bind_address("node", "10.0.0.7") == "10.0.0.7"
    assert rpc_bind_address("0.0.0.0", "10.0.0.7") == "0.0.0.0"


def test_shard_config_bind_and_flag():
    config = ShardConfig()
    assert config.bind == "node" and config.allow_public_bind is False
    assert ShardConfig(bind="loopback").bind == "loopback"
    assert ShardConfig(bind="0.0.0.0", allow_public_bind=True).bind == "0.0.0.0"
    assert ShardConfig(bind="[::1]").bind == "::1"
    with pytest.raises(ValidationError, match="must be 'node', 'loopback' or an IP address"):
        ShardConfig(bind="everywhere")


@pytest.mark.parametrize("arg", ["-lv", "--verbose", "-v", "--log-verbosity=5", "--api-key", "--host", "--log-file",
                                 "--log-prompts-dir", "--verbose-prompt"])
def test_extra_llama_server_args_may_not_change_address_key_or_log_level(arg):
    with pytest.raises(ValidationError, match="may not contain"):
        ShardConfig(llama_server_args=[arg, "4"])
    assert ShardConfig(llama_server_args=["--flash-attn", "on"]).llama_server_args == ["--flash-attn", "on"]


# --- llama-server's command line and log ------------------------------------------------------
def test_llama_server_logs_at_info_and_its_key_is_not_on_the_command_line():
    cmd = llama_server_command(Path("/bin/llama-server"), Path("/m.gguf"), "m:latest",
                               [Backend(Host("a", "10.0.0.1", 1), 1)], "127.0.0.1", 8080, 256, 1, [])
    assert cmd[cmd.index("-lv") + 1] == "3"  # 4 (trace) and up log prompts
    assert "-v" not in cmd and "--verbose" not in cmd and "--api-key" not in cmd
    assert API_KEY_ENV == "LLAMA_API_KEY"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_log_is_under_the_data_dir(tmp_path):
    config = GatewayConfig.model_validate({"batch": {"data_dir": str(tmp_path)}})
    assert log_path_for(config, "hf.co/u/m:q4") == tmp_path / "shard" / "hf.co_u_m_q4.log"


def test_log_file_is_private_and_rotated(tmp_path):
    path = tmp_path / "shard" / "m.log"
    fd, offset = open_log(path)
    os.write(fd, b"x" * 10)
    os.close(fd)
    assert offset == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    fd, offset = open_log(path)  # small: appended to
    os.close(fd)
    assert offset == 10 and not path.with_name("m.log.1").exists()
    path.write_bytes(b"y" * (LOG_ROTATE_BYTES + 1))
    path.chmod(0o644)
    fd, offset = open_log(path)  # big: becomes m.log.1, a new m.log starts
    os.close(fd)
    assert offset == 0 and path.stat().st_size == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.with_name("m.log.1").stat().st_size == LOG_ROTATE_BYTES + 1
    path.write_bytes(b"z" * (LOG_ROTATE_BYTES + 1))
    fd, _ = open_log(path)  # one old copy only
    os.close(fd)
    assert path.with_name("m.log.1").read_bytes()[:1] == b"z" and not path.with_name("m.log.2").exists()


# --- the coordinator, without Ray --------------------------------------------------------------
def bare_coordinator(tmp_path: Path, **shard):
    """The coordinator's own class, made without Ray (no state actor, no supervision loop)."""
    cls = coord_mod.ShardCoordinator.__ray_metadata__.modified_class
    coordinator = cls.__new__(cls)
    coordinator.config = GatewayConfig.model_validate({"batch": {"data_dir": str(tmp_path)},
                                                       "shard": {"start_timeout_s": 20, **shard}})
    coordinator.settings = coordinator.config.shard
    coordinator.groups = {}
    coordinator._stopping = {}
    return coordinator


def test_a_failed_start_gives_the_client_a_short_reason_and_admins_the_log(tmp_path):
    coordinator = bare_coordinator(tmp_path)
    log = tmp_path / "llama.log"
    secret = "SECRET-PATH /home/someone/.ollama " * 100

    async def launch(group):
        # what _launch does up to _wait_healthy: a llama-server that dies printing a long log
        fd, group.log_offset = open_log(log)
        group.log_path = str(log)
        group.proc = __import__("subprocess").Popen(
            [sys.executable, "-c", f"print({secret!r}); raise SystemExit(3)"], stdout=fd)
        os.close(fd)
        group.url = "http://127.0.0.1:9"
        await coordinator._wait_healthy(group)

    async def teardown(group, unregister):
        group.proc = None

    coordinator._launch, coordinator._teardown = launch, teardown

    async def run():
        with pytest.raises(NoNodeAvailable) as e:
            await coordinator.ensure("tiny")
        return str(e.value)

    message = asyncio.run(run())
    assert "llama-server exited with code 3 during start" in message and "/api/shards" in message
    assert "SECRET" not in message and len(message) < 250
    (status,) = coordinator.status()
    assert status["state"] == "failed"
    assert "SECRET-PATH" in status["log"]["tail"] and len(status["log"]["tail"]) <= 1500
    assert "SECRET-PATH" in status["log"]["error"]
    assert status["error"] == "llama-server exited with code 3 during start"  # what /api/stats readers see


def test_a_public_bind_fails_the_group_with_a_clear_reason(tmp_path, monkeypatch):
    coordinator = bare_coordinator(tmp_path, bind="node")

    async def launch(group):  # what _launch checks before it starts an rpc-server
        for h in [Host("a", "10.0.0.1", 10), Host("b", "8.8.8.8", 10)]:
            check_bind(rpc_bind_address(coordinator.settings.bind, h.ip), coordinator.settings.allow_public_bind)

    async def teardown(group, unregister):
        pass

    coordinator._launch, coordinator._teardown = launch, teardown

    async def run():
        with pytest.raises(NoNodeAvailable, match="refused to bind an rpc-server to 8.8.8.8"):
            await coordinator.ensure("tiny")

    asyncio.run(run())
    assert coordinator.status()[0]["state"] == "failed"


def test_failure_reasons_do_not_carry_paths():
    reason, detail = _failure(ModelFileError("model 'm' not found: no Ollama manifest at /home/x/.ollama/..."))
    assert "/home" not in reason and "/home" in detail
    assert _failure(PlanError("a shard group needs 2 hosts"))[0] == "a shard group needs 2 hosts"
    assert "/tmp" not in _failure(OSError("/tmp/x: permission denied"))[0]


def test_an_invalid_model_name_is_a_bad_request(tmp_path):
    coordinator = bare_coordinator(tmp_path)
    with pytest.raises(BadRequest) as e:
        asyncio.run(coordinator.ensure("../../..:.bash_history"))
    assert e.value.status == 400 and not coordinator.groups


def test_the_registered_node_carries_the_groups_key_and_runs_on_this_host(tmp_path, monkeypatch):
    coordinator = bare_coordinator(tmp_path)
    added = []

    class State:
        class snapshot:  # noqa: N801 - the actor method's name
            @staticmethod
            def remote():
                async def known():
                    return {}
                return known()

    async def add(state, node, config):
        added.append(node)

    coordinator.state = State()
    monkeypatch.setattr(coord_mod, "add_runtime_node", add)
    monkeypatch.setattr(coord_mod.ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(get_node_id=lambda: "ab" * 28))
    group = Group("tiny:latest", url="http://127.0.0.1:5000")
    asyncio.run(coordinator._register(group))
    (node,) = added
    assert node.api_key == group.api_key and len(group.api_key) >= 40
    assert node.ray_node_id == "ab" * 28 and node.url == "http://127.0.0.1:5000"
    assert group.api_key not in repr(group) and group.api_key not in str(group.as_dict())
    assert Group("x").api_key != Group("x").api_key


# --- model names -------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["../../..:.bash_history", "..", "a/../b", "library/..:x", "m:..", "/etc/passwd",
                                   "~/m", "a\\b", "..\\..\\x", "m\x00", "m:\x00", "x/./y", "m\nx"])
def test_names_that_could_leave_the_store_are_rejected(model):
    with pytest.raises(InvalidModelName) as e:
        check_model_name(model)
    assert e.value.status == 400 and isinstance(e.value, BadRequest) and isinstance(e.value, ModelFileError)
    with pytest.raises(InvalidModelName):
        parse_model_name(model)


def test_traversal_cannot_reach_a_file_outside_the_store(tmp_path):
    home = tmp_path / "home"
    store = home / "a" / "b" / "store"
    (store / "manifests").mkdir(parents=True)
    (home / ".bash_history").write_text('{"layers": []}')  # what `../../..:.bash_history` used to reach
    with pytest.raises(InvalidModelName):
        resolve_gguf("../../../../../..:.bash_history", store)
    with pytest.raises(InvalidModelName):
        resolve_gguf("../../..:.bash_history", store)


@pytest.mark.parametrize("model", ["llama3.2", "qwen2.5:0.5b", "hf.co/user/repo:Q4_K_M", "localhost:5000/ns/m",
                                   "llama3.2@sha256:abc", "https://hf.co/user/repo:q8", "m:v1.2..3"])
def test_ordinary_names_pass(model):
    check_model_name(model)
    parse_model_name(model)
