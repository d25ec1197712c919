"""Applications: who sent a request, and each one's usage (totals, the last minute, labels)."""

from __future__ import annotations

from sollol_serve.observability.applications import (
    MAX_APPLICATIONS,
    WINDOW_S,
    Applications,
    Use,
    application_of,
    clean_name,
    percentile,
    user_agent_family,
)


def test_user_agent_families_of_the_clients_users_bring():
    assert user_agent_family("ollama-python/0.4.7 (x86_64 linux) Python/3.11.2") == "ollama-python"
    assert user_agent_family("OpenAI/Python 1.54.4") == "openai-python"
    assert user_agent_family("langchain-ollama/0.2 ollama-python/0.4.7") == "langchain"  # the framework first
    assert user_agent_family("curl/7.88.1") == "curl"
    assert user_agent_family("python-httpx/0.27.2") == "python-httpx"
    assert user_agent_family("Mozilla/5.0 (X11; Linux x86_64) Chrome/120") == "browser"
    assert user_agent_family("my-own-thing/1.0") == "other"
    assert user_agent_family(None) == "unknown" and user_agent_family("") == "unknown"


def test_the_key_names_the_application_then_the_header_then_the_client():
    headers = {"x-sollol-app": "FlockParser", "user-agent": "curl/8.0"}
    assert application_of("team-a", headers) == ("team-a", "key")
    assert application_of(None, headers) == ("FlockParser", "header")
    assert application_of(None, {"user-agent": "curl/8.0"}) == ("curl", "user-agent")
    assert application_of(None, {"x-sollol-app": "  ", "user-agent": "curl/8.0"}) == ("curl", "user-agent")


def test_a_header_name_is_cleaned_and_bounded():
    assert clean_name("Synaptic<script>Llamas") == "SynapticscriptLlamas"
    assert clean_name("x" * 100) == "x" * 64
    assert clean_name("\n\t") is None


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5  # rank 1.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == 4.8  # rank 3.8: 4 + 0.8
    assert percentile([7.0], 0.99) == 7.0


def test_totals_live_minute_and_counters():
    apps = Applications()
    apps.add([Use("a", "key", "llama3.2", "gpu-1", 200, 0.1, 10, 20, at=0.0),
              Use("a", "key", "llama3.2", "gpu-2", 200, 0.3, 5, 7, at=100.0),
              Use("a", "key", "nomic", "gpu-1", 502, 0.5, 0, 0, at=110.0),
              Use("b", "header", "llama3.2", "none", 404, 0.01, at=50.0)])
    shown = {a["name"]: a for a in apps.as_json(now=120.0)["applications"]}
    a = shown["a"]
    assert (a["requests"], a["errors"], a["tokens_in"], a["tokens_out"]) == (3, 1, 15, 27)
    assert a["models"] == {"llama3.2": 2, "nomic": 1}
    assert a["p50_ms"] == 300.0 and a["p95_ms"] == 480.0  # of 0.1, 0.3, 0.5: rank 1.9 = 0.3 + 0.9 * 0.2
    assert (a["first_seen"], a["last_seen"], a["active"]) == (0.0, 110.0, True)
    # The last minute (60..120) holds the requests at 100 and 110.
    assert a["last_minute"] == {"requests": 2, "errors": 1, "tokens_in": 5, "tokens_out": 7,
                                "p50_ms": 400.0, "p95_ms": 490.0}
    assert shown["b"]["active"] is False and shown["b"]["source"] == "header"
    counters = apps.counters()
    assert counters.requests[("a", "gpu-1", "llama3.2", "200")] == 1
    assert counters.requests[("b", "none", "llama3.2", "404")] == 1
    assert counters.tokens == {("a", "in"): 15, ("a", "out"): 27, ("b", "in"): 0, ("b", "out"): 0}
    assert WINDOW_S == 60.0


def test_caller_chosen_names_are_bounded_key_names_are_not():
    apps = Applications()
    apps.add([Use(f"app-{i}", "header", "m", "n", 200, 0.1, at=1.0) for i in range(MAX_APPLICATIONS + 5)])
    apps.add([Use("team-key", "key", "m", "n", 200, 0.1, at=2.0), Use("app-0", "header", "m", "n", 200, 0.1, at=3.0)])
    names = {a["name"]: a for a in apps.as_json(now=4.0)["applications"]}
    assert len(names) == MAX_APPLICATIONS + 2  # 32 header names, `other`, and the key
    assert names["other"]["requests"] == 5 and names["team-key"]["source"] == "key"
    assert names["app-0"]["requests"] == 2  # a name already known keeps counting under its own name


def test_a_registered_application_shows_before_its_traffic_and_goes_stale():
    from sollol_serve.observability.applications import STALE_AFTER_S, Registration

    apps = Applications()
    assert apps.register("id-1", Registration("SynapticLlamas", "IntelligentRouter", "1.0", {"agents": 3}, 10.0, 10.0))
    [entry] = apps.as_json(now=12.0)["applications"]
    assert entry["name"] == "SynapticLlamas" and entry["requests"] == 0 and entry["last_seen"] is None
    assert entry["registered"]["status"] == "active" and entry["active"] is True
    assert entry["registered"]["metadata"] == {"agents": 3}
    # Its traffic (by X-SOLLOL-App) and its registration are one entry.
    apps.add([Use("SynapticLlamas", "header", "m", "n", 200, 0.2, at=13.0)])
    assert apps.heartbeat("id-1", 14.0, {"agents": 5}) and not apps.heartbeat("nope", 14.0)
    [entry] = apps.as_json(now=14.0)["applications"]
    assert entry["requests"] == 1 and entry["registered"]["metadata"] == {"agents": 5}
    later = 14.0 + STALE_AFTER_S + 61  # no heartbeat, no request in the last minute
    [entry] = apps.as_json(now=later)["applications"]
    assert entry["registered"]["status"] == "stale" and entry["active"] is False
    assert apps.deregister("id-1") and not apps.deregister("id-1")
    assert [a["name"] for a in apps.as_json(now=later)["applications"]] == ["SynapticLlamas"]  # its usage stays


def test_registrations_are_bounded_and_a_silent_one_makes_room():
    from sollol_serve.observability.applications import MAX_REGISTRATIONS, STALE_AFTER_S, Registration

    apps = Applications()
    for i in range(MAX_REGISTRATIONS):
        assert apps.register(f"id-{i}", Registration(f"app-{i}", "r", "1", {}, float(i), float(i)))
    for i in range(MAX_REGISTRATIONS):
        apps.heartbeat(f"id-{i}", 20.0 + i)
    assert not apps.register("late", Registration("late", "r", "1", {}, 40.0, 40.0))  # all heard from lately
    far = 20.0 + STALE_AFTER_S + 0.5  # app-0's last heartbeat (20.0) is now stale, app-1's (21.0) not
    assert apps.register("late", Registration("late", "r", "1", {}, far, far))
    assert "id-0" not in apps.registrations and len(apps.registrations) == MAX_REGISTRATIONS
