"""routing.json, routing.md (tables and goals) and the charts, from one run's results."""

from __future__ import annotations

import json
from pathlib import Path

JOB_SCENARIOS = ("hetero", "homo", "slots", "large")
LC, SHIPPED, BOUND = "nginx least_conn", "shipped", "omniscient (model)"
BEST_MAP = "best static map"


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _row(scenarios: dict, scenario: str, contender: str) -> dict | None:
    row = (scenarios.get(scenario) or {}).get("contenders", {}).get(contender)
    return None if row is None or "skipped" in row else row


def _ratio_goal(scenarios: dict, scenario: str, metric: str, other: str, limit: float) -> dict | None:
    a, b = _row(scenarios, scenario, SHIPPED), _row(scenarios, scenario, other)
    if a is None or b is None:
        return None
    value = ratio(a.get(metric), b.get(metric))
    return {"value": value, "met": value is not None and value <= limit}


def _shipped_success(report_scenarios: dict) -> dict | None:
    rates = {}
    for key, name, row in _rows({"scenarios": report_scenarios}):
        if name == SHIPPED and "success" in row:
            rates[key] = min(row["success"], rates.get(key, 1.0))
    if not rates:
        return None
    worst = min(rates.values())
    return {"value": worst, "met": worst == 1.0, "by_scenario": rates}


def _heal_goal(scenarios: dict, label: str, limit_s: float) -> dict | None:
    row = ((scenarios.get("heal") or {}).get("runs", {}).get(label) or {}).get("contenders", {}).get(SHIPPED)
    if row is None:
        return None
    back = row["share"]["recovered_after_s"]
    return {"value": back, "met": back is not None and back <= limit_s}


def _multiturn_goal(scenarios: dict) -> dict | None:
    rows = (scenarios.get("multiturn") or {}).get("contenders", {})
    if SHIPPED not in rows or "affinity off" not in rows:
        return None
    value = ratio(rows[SHIPPED]["ttft_later_mean_s"], rows["affinity off"]["ttft_later_mean_s"])
    return {"value": value, "met": value is not None and value <= 0.7}


def _multimodel_goals(scenarios: dict) -> dict[str, dict | None]:
    run = scenarios.get("multimodel")
    if run is None:
        return {}
    rows = run["contenders"]
    hand, lc = "hand placement", LC
    loads = ratio(rows.get(SHIPPED, {}).get("cold_loads"), rows.get(lc, {}).get("cold_loads"))
    back = rows.get(SHIPPED, {}).get("recovery_after_shift_s")
    two_loads = 2 * run["models_gb"][run["shift_to"]] * run["load_s_per_gb"]  # of the model the shift favours
    return {
        "multimodel: shipped mean <= 0.8 x hand placement": _ratio_goal(scenarios, "multimodel", "mean_s", hand, 0.8),
        "multimodel: shipped mean <= 0.2 x nginx least_conn": _ratio_goal(scenarios, "multimodel", "mean_s", lc, 0.2),
        "multimodel: shipped p95 <= 0.8 x hand placement": _ratio_goal(scenarios, "multimodel", "p95_s", hand, 0.8),
        "multimodel: shipped mean <= 0.8 x best static map": _ratio_goal(scenarios, "multimodel", "mean_s", BEST_MAP, 0.8),
        "multimodel: shipped p95 <= 0.8 x best static map": _ratio_goal(scenarios, "multimodel", "p95_s", BEST_MAP, 0.8),
        "multimodel: shipped cold loads <= 0.2 x nginx least_conn": None if loads is None else
        {"value": loads, "met": loads <= 0.2},
        "multimodel: latency back to its level within two cold loads of the shift": {
            "value": back, "met": back is not None and back <= two_loads},
    }


def _fairshare_goals(scenarios: dict) -> dict[str, dict | None]:
    rows = (scenarios.get("fairshare") or {}).get("contenders", {})
    shipped, alone, old = rows.get(SHIPPED), rows.get("modest alone"), rows.get("fair share off")
    if shipped is None or alone is None or old is None:
        return {}
    modest = [app for app in alone["apps"]]
    worst = max((ratio(shipped["apps"][a]["p95_s"], alone["apps"][a]["p95_s"]) or float("inf")) for a in modest)
    jain = min(shipped["jain_by_window"], default=None)
    flood = ratio(shipped["apps"]["flood"]["completions_per_s"], old["apps"]["flood"]["completions_per_s"])
    refused = sum(shipped["apps"][a]["refused_429"] for a in modest)
    return {
        "fairshare: every modest application's p95 <= 1.5 x its p95 alone": {"value": worst, "met": worst <= 1.5},
        "fairshare: Jain's index >= 0.95 in every 60 s window": {"value": jain, "met": jain is not None and jain >= 0.95},
        "fairshare: the flood's throughput >= 0.95 x with the queue by arrival": {
            "value": flood, "met": flood is not None and flood >= 0.95},
        "fairshare: no 429 to a modest application": {"value": refused, "met": refused == 0},
    }


def goals(scenarios: dict) -> dict[str, dict]:
    """The goals the scenarios that ran can decide, each with its measured value."""
    checks = {
        "hetero: shipped mean <= 0.75 x nginx least_conn mean": _ratio_goal(scenarios, "hetero", "mean_s", LC, 0.75),
        "hetero: shipped p95 <= 0.55 x nginx least_conn p95": _ratio_goal(scenarios, "hetero", "p95_s", LC, 0.55),
        "hetero: shipped p95 <= 1.2 x omniscient p95": _ratio_goal(scenarios, "hetero", "p95_s", BOUND, 1.2),
        "shipped success 100% (every scenario)": _shipped_success(scenarios),
        "homo: shipped mean <= 1.05 x nginx least_conn mean": _ratio_goal(scenarios, "homo", "mean_s", LC, 1.05),
        "homo: shipped p95 <= 1.05 x nginx least_conn p95": _ratio_goal(scenarios, "homo", "p95_s", LC, 1.05),
        "heal (low load): fast node back to its share within 20 s": _heal_goal(scenarios, "low", 20),
        "heal (0.75 load): fast node back to its share within 20 s": _heal_goal(scenarios, "loaded", 20),
        "multiturn: shipped TTFT mean (turns >= 2) <= 0.7 x affinity off": _multiturn_goal(scenarios),
        **_multimodel_goals(scenarios),
        **_fairshare_goals(scenarios),
    }
    return {name: g for name, g in checks.items() if g is not None}


# -- markdown -------------------------------------------------------------------------------
def _cell(v: object) -> str:
    return "-" if v is None else str(v)


def _lat(r: dict, key: str) -> str:
    """A latency figure; "≥" when the run was cut with requests unfinished (a lower bound)."""
    return ("≥" if r.get("censored") and r.get(key) is not None else "") + _cell(r.get(key))


def _success(r: dict) -> str:
    return f"{r['success']:.0%}" + (f" ({r['censored']} unfinished)" if r.get("censored") else "")


def _nodes(counts: dict | None) -> str:
    return " ".join(f"{k}:{v}" for k, v in (counts or {}).items()) or "-"


def _jobs_table(run: dict) -> list[str]:
    lines = [f"### {run['title']}: {run['jobs']} requests at {run['rate_rps']} req/s ({run['load']:.0%} of capacity)",
             "", "| contender | mean s | p50 s | p95 s | p99 s | TTFC p50 / p95 s | high-prio p95 s | req/s | success "
             "| received per node |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in run["contenders"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |||||||||")
            continue
        lines.append(f"| {name} | {_lat(r, 'mean_s')} | {_lat(r, 'p50_s')} | {_lat(r, 'p95_s')} | "
                     f"{_lat(r, 'p99_s')} | {_cell(r['ttfc_p50_s'])} / {_cell(r['ttfc_p95_s'])} | "
                     f"{_cell(r['high_priority_p95_s'])} | {_cell(r['throughput_rps'])} | {_success(r)} | "
                     f"{_nodes(r.get('by_node'))} |")
    lines.append("")
    lines += _slots_table(run)
    return lines


def _slots_table(run: dict) -> list[str]:
    """What each gateway contender says about every node's slots after its run (GET /api/nodes)."""
    seen = {name: r["gateway_nodes"] for name, r in run["contenders"].items() if r.get("gateway_nodes")}
    if not seen:
        return []
    lines = ["Slots per node after the run (`GET /api/nodes`: " + ", ".join(
        sorted({k for nodes in seen.values() for n in nodes.values() for k in n if k.startswith("slots")})) + "):",
        "", "| node | true slots | " + " | ".join(seen) + " |", "|---|---|" + "---|" * len(seen)]
    for spec in run["cluster"]:
        cells = []
        for nodes in seen.values():
            n = nodes.get(spec["name"], {})
            cells.append(", ".join(f"{k}={v}" for k, v in n.items() if k.startswith("slots")) or "-")
        lines.append(f"| {spec['name']} | {spec['slots']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _heal_tables(run: dict) -> list[str]:
    lines = [f"### {run['title']}, {run['duration_s']:g} s runs", "",
             f"Share of the requests '{run['node']}' was sent per {run['window_s']:g} s window (simulator counters); "
             f"recovered = seconds after healing until a window has it back to {run['recovered_fraction']:.0%} of its "
             "share before the slow-down (window end; '-' = not within the run). Chart: routing_heal.png.", "",
             "| load | contender | share before | recovered after s | by X-SOLLOL-Node: share before / recovered "
             "| mean s | p95 s | success | received per node |", "|---|---|---|---|---|---|---|---|---|"]
    for label, sub in run["runs"].items():
        for name, r in sub["contenders"].items():
            by_header = r.get("share_by_header")
            header = (f"{_cell(by_header['pre_slow_share'])} / {_cell(by_header['recovered_after_s'])}"
                      if by_header else "-")
            lines.append(f"| {label} ({sub['rate_rps']} req/s) | {name} | {_cell(r['share']['pre_slow_share'])} | "
                         f"{_cell(r['share']['recovered_after_s'])} | {header} | {_lat(r, 'mean_s')} | "
                         f"{_lat(r, 'p95_s')} | {_success(r)} | {_nodes(r.get('by_node'))} |")
    return lines + [""]


def _multiturn_table(run: dict) -> list[str]:
    lines = [f"### {run['title']}: {run['conversations']} conversations at {run['rate_per_s']} starts/s "
             f"({run['load']:.0%} of capacity without prefix caching)", "",
             "Time to first token (first streamed chunk with content), seconds.", "",
             "| contender | TTFT mean | TTFT p95 | turns >= 2: mean | turns >= 2: p95 | mean by turn | latency mean "
             "| success | received per node |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in run["contenders"].items():
        by_turn = " / ".join(_cell(t["mean_s"]) for t in r["ttft_by_turn"].values())
        lines.append(f"| {name} | {_cell(r['ttft_mean_s'])} | {_cell(r['ttft_p95_s'])} | "
                     f"{_cell(r['ttft_later_mean_s'])} | {_cell(r['ttft_later_p95_s'])} | {by_turn} | "
                     f"{_cell(r['latency_mean_s'])} | {r['success']:.0%} | {_nodes(r.get('by_node'))} |")
    return lines + [""]


def _multimodel_table(run: dict) -> list[str]:
    nodes = ", ".join(f"{n['name']} ({n['slots']} slots, {n['decode_tps']:g} tok/s, holds {n['max_loaded']})"
                      for n in run["cluster"])
    lines = [f"### {run['title']}: {run['jobs']} requests at {run['rate_rps']} req/s", "",
             f"Nodes: {nodes}. Models (GB, {run['load_s_per_gb']:g} s of load per GB): "
             + ", ".join(f"{m} {gb:g}" for m, gb in run["models_gb"].items()) + ".", "",
             "| contender | mean s | p50 s | p95 s | p99 s | cold loads | back to level after shift, s | success "
             "| received per node |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in run["contenders"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {name} | {_cell(r['mean_s'])} | {_cell(r['p50_s'])} | {_cell(r['p95_s'])} | "
                     f"{_cell(r['p99_s'])} | {_cell(r.get('cold_loads'))} | {_cell(r.get('recovery_after_shift_s'))} | "
                     f"{_success(r)} | {_nodes(r.get('by_node'))} |")
    lines.append("")
    for label, key in (("hand placement", "hand_placement"), ("best static map", "best_static_map")):
        if key in run:
            lines.append(f"- {label}: " + "; ".join(f"{node}: {', '.join(models)}" for node, models in run[key].items()) + ".")
    return lines + [""]


def _fairshare_table(run: dict) -> list[str]:
    nodes = ", ".join(f"{n['name']} ({n['slots']} slots, {n['decode_tps']:g} tok/s)" for n in run["cluster"])
    lines = [f"### {run['title']}: {run['jobs']} requests", "",
             f"Nodes: {nodes}; the cluster serves about {run['capacity_rps']} requests/s. `flood` sends "
             f"{run['flood_rps']}/s, `chat-a`, `chat-b`, `chat-c` {run['modest_rps_each']:g}/s each; every run is let "
             "finish, and completions/s count from the first arrival to the application's last answer.", "",
             "| contender | application | p50 s | p95 s | mean s | ok / sent | 429 | unfinished | completions/s "
             "| answered by |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in run["contenders"].items():
        for app, a in r["apps"].items():
            lines.append(f"| {name} | {app} | {_cell(a['p50_s'])} | {_cell(a['p95_s'])} | {_cell(a['mean_s'])} | "
                         f"{a['ok']} / {a['sent']} | {a['refused_429']} | {a['unfinished']} | "
                         f"{_cell(a['completions_per_s'])} | {_nodes(a.get('by_node'))} |")
    lines += ["", "Jain's index per 60 s window: " + "; ".join(
        f"{name} {r['jain_by_window']}" for name, r in run["contenders"].items()) + ".", ""]
    shipped = run["contenders"].get(SHIPPED, {}).get("apps", {})
    slowest = {app: a["slowest"] for app, a in shipped.items() if app != "flood" and a.get("slowest")}
    if slowest:
        lines += ["Each modest application's three slowest answers as shipped (seconds, node): " + "; ".join(
            f"{app} " + ", ".join(f"{lat} {node}" for lat, node in worst) for app, worst in slowest.items()) + ".", ""]
    return lines


def _rows(report: dict):
    """(scenario, contender, row) of every live or modelled run, heal's loads included."""
    for key, run in report["scenarios"].items():
        for sub in (run.get("runs") or {"": run}).values():
            for name, row in sub.get("contenders", {}).items():
                yield key, name, row


def _notes(report: dict) -> list[str]:
    meta = report["meta"]
    lines = ["`shipped` is the gateway as `serve run serve_config.yaml` configures it (its `applications[0].args`, "
             "read at run time; nodes given as `SOLLOL_NODES=name=url,...`), with `discovery.ray_nodes` off "
             "(no local Ollama joins) and a fresh state actor per contender. `configured` adds every node's true "
             "slots. nginx is Debian's (`apt-get install -y nginx-light`): one worker, keep-alive upstream, "
             "`proxy_buffering off`, `max_fails=0`.", "",
             "Every contender finds the nodes idle, models cold, no prompt cached; a gateway learns from scratch "
             "during its warm-up. Received per node: the simulators' counters around the measured run (hedged "
             "copies, retries and the router's own re-measurements included). A run is cut "
             f"{meta['drain_cap_s']:g} s after its last arrival: latencies marked ≥ include the requests still "
             "unfinished then, at the time they had run (lower bounds).", ""]
    if meta.get("nginx_warmup") == "prime":
        lines += ["nginx's warm-up loads the models on every node: it has nothing to learn (in the multiturn "
                  "scenario it gets the whole warm-up, whose cached system prompt matters).", ""]
    shipped = next((r["notes"] for _, name, r in _rows(report) if name == "shipped" and "notes" in r), None)
    if shipped:
        lines += [f"Shipped routing.strategy: `{shipped['strategy']}`, affinity: `{shipped['affinity']}`.", ""]
    configured = next((r["notes"] for _, name, r in _rows(report) if name == "configured" and "notes" in r), None)
    if configured:
        lines += [f"`configured` slots given as: {configured['nodes_given_as']}.", ""]
    return lines


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"Measured {meta['when']} on {meta['machine']} with `{meta['command']}` ({meta['elapsed_s']} s).", ""]
    lines += _notes(report)
    for key, run in report["scenarios"].items():
        if key in JOB_SCENARIOS:
            lines += _jobs_table(run)
        elif key == "heal":
            lines += _heal_tables(run)
        elif key == "multiturn":
            lines += _multiturn_table(run)
        elif key == "multimodel":
            lines += _multimodel_table(run)
        elif key == "fairshare":
            lines += _fairshare_table(run)
    for key, error in report.get("errors", {}).items():
        lines += [f"### {key}: failed", "", "```", error.rstrip(), "```", ""]
    lines += ["### Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {_cell(g['value'])} | {'yes' if g['met'] else 'NO'} |" for name, g in report["goals"].items()]
    return "\n".join(lines) + "\n"


# -- charts ---------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(path: Path, scenarios: dict) -> None:
    runs = [(k, scenarios[k]) for k in JOB_SCENARIOS if k in scenarios]
    if not runs:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.5), squeeze=False)
    width = 0.2
    for ax, (key, run) in zip(axes[0], runs):
        rows = {n: r for n, r in run["contenders"].items() if "skipped" not in r}
        names = list(rows)
        for i, metric in enumerate(["mean_s", "p50_s", "p95_s", "p99_s"]):
            ax.bar([x + i * width for x in range(len(names))], [rows[n][metric] or 0 for n in names], width,
                   label=metric.replace("_s", ""))
        ax.set_xticks([x + 1.5 * width for x in range(len(names))], names, rotation=20, ha="right")
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{key}: {run['load']:.0%} load, {run['jobs']} requests")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heal_chart(path: Path, run: dict) -> None:
    plt = _plt()
    labels = list(run["runs"])
    fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 4.2), squeeze=False)
    for ax, label in zip(axes[0], labels):
        sub = run["runs"][label]
        for name, r in sub["contenders"].items():
            windows = r["share"]["windows"]
            ax.plot([w["start_s"] + run["window_s"] / 2 for w in windows], [w["share"] for w in windows],
                    marker="o", label=name)
        ax.axvline(run["slow_at_s"], color="red", linestyle="--", label="slowed 6x")
        ax.axvline(run["heal_at_s"], color="green", linestyle="--", label="healed")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel(f"share of requests sent to '{run['node']}'")
        ax.set_title(f"{label}: {sub['rate_rps']} req/s")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def multiturn_chart(path: Path, run: dict) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, r in run["contenders"].items():
        turns = list(r["ttft_by_turn"])
        ax.plot([int(t) for t in turns], [r["ttft_by_turn"][t]["mean_s"] for t in turns], marker="o", label=name)
    ax.set_xticks(sorted({int(t) for r in run["contenders"].values() for t in r["ttft_by_turn"]}))
    ax.set_xlabel("turn")
    ax.set_ylabel("mean time to first token (s)")
    ax.set_title("Multi-turn chats")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    report["goals"] = goals(report["scenarios"])
    (out_dir / "routing.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "routing.md").write_text(markdown(report))
    scenarios = report["scenarios"]
    latency_chart(out_dir / "routing.png", scenarios)
    if "heal" in scenarios:
        heal_chart(out_dir / "routing_heal.png", scenarios["heal"])
    if "multiturn" in scenarios:
        multiturn_chart(out_dir / "routing_multiturn.png", scenarios["multiturn"])
