/* The sollol_serve dashboard's script: polls the gateway's JSON endpoints every 2 s and draws
   the last hour with uPlot (vendored beside this file, MIT). No build step: plain browser JS.

   Sources: /api/stats (nodes, queue, shard groups, totals, cache, batch), /api/routing/decisions,
   /api/timeline (10 s intervals, kept server-side, so a page opened now shows the past hour),
   /api/applications and /api/alerts. */
"use strict";

(() => {
  const body = document.body.dataset;
  const ROOT = body.root || "";
  const REFRESH_MS = 2000;

  // -- small helpers ---------------------------------------------------------------------
  const $ = id => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value == null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "title") node.title = value;
      else node.setAttribute(key, value);
    }
    node.append(...children.filter(c => c != null && c !== false));
    return node;
  }

  function cell(text, cls, sub) {
    return el("td", {class: cls}, String(text ?? "-"), sub ? el("span", {class: "sub"}, sub) : null);
  }

  function fillRows(id, rows, emptyText) {
    const tbody = document.querySelector(`#${id} tbody`);
    if (!rows.length && emptyText) {
      const columns = document.querySelectorAll(`#${id} thead th`).length || 1;
      tbody.replaceChildren(el("tr", {class: "empty-row"}, el("td", {class: "empty", colspan: columns}, emptyText)));
      return;
    }
    tbody.replaceChildren(...rows.map(cells => el("tr", null, ...cells)));
  }

  const int = n => (n == null ? "-" : Math.round(n).toLocaleString("en-US"));
  function num(v, digits = 1) {
    if (v == null || Number.isNaN(v)) return "-";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100 || Number.isInteger(v)) return Math.round(v).toString();
    return v.toFixed(a < 1 ? Math.max(digits, 2) : digits);
  }
  const ms = v => (v == null ? "-" : `${num(v)} ms`);
  const gb = mib => (mib == null ? "-" : `${(mib / 1024).toFixed(1)} GB`);
  const clock = unix => (unix == null ? "-" : new Date(unix * 1000).toLocaleTimeString());
  function ago(unix) {
    if (unix == null) return "";
    const s = Math.max(0, Date.now() / 1000 - unix);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  }

  class HttpError extends Error {
    constructor(path, status) { super(`${path}: HTTP ${status}`); this.status = status; }
  }

  async function getJSON(path) {
    const response = await fetch(`${ROOT}/${path}`, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (!response.ok) throw new HttpError(path.split("?")[0], response.status);
    return response.json();
  }

  // Stable colours: a node (or model, or priority) keeps its colour while the page is open.
  function palette(colours) {
    const given = new Map();
    return key => {
      if (!given.has(key)) given.set(key, colours[given.size % colours.length]);
      return given.get(key);
    };
  }
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                   "#7f7f7f"];
  const nodeColour = palette(COLOURS);
  const modelColour = palette(COLOURS);
  const priorityColour = palette(["#6a3d9a", "#e31a1c", "#33a02c", "#ff7f00", "#1f78b4", "#b15928", "#fb9a99",
                                  "#a6cee3", "#b2df8a", "#cab2d6"]);

  // -- charts (uPlot) --------------------------------------------------------------------
  const fromZero = (u, min, max) => [0, max > 0 ? max * 1.1 : 1];
  const ticks = (u, splits) => splits.map(v => num(v));

  function axis(scale, label, side) {
    return {scale, label, side, labelSize: 16, size: 52, stroke: "#4b5563", values: ticks, labelFont: "12px system-ui",
            font: "11px system-ui", grid: side === 1 ? {show: false} : {stroke: "#eceef1", width: 1},
            ticks: {stroke: "#d1d5db", width: 1}};
  }

  class Chart {
    /* A uPlot chart in a <figure id=id>: drawn again when its series change, sized by its
       container. `scales` maps a scale name to its axis label; the first is on the left. */
    constructor(id, scales) {
      this.id = id;
      this.figure = $(id);
      this.plot = this.figure.querySelector(".plot");
      this.emptyText = this.figure.querySelector(".empty");
      this.scales = scales;
      this.u = null;
      this.signature = null;
      new ResizeObserver(() => this.resize()).observe(this.plot);
    }

    size() {
      const width = Math.max(200, Math.floor(this.plot.clientWidth || this.figure.clientWidth || 300));
      return {width, height: Math.round(Math.max(170, Math.min(250, width * 0.42)))};
    }

    resize() {
      if (!this.u) return;
      const size = this.size();
      if (size.width !== this.u.width || size.height !== this.u.height) this.u.setSize(size);
    }

    // x is time; each y scale starts at zero, the first one's axis on the left.
    scaleOpts() {
      return Object.fromEntries([["x", {time: true}], ...Object.keys(this.scales).map(name => [name, {range: fromZero}])]);
    }

    yAxes() {
      return Object.keys(this.scales).map((name, i) => axis(name, this.scales[name], i === 0 ? 3 : 1));
    }

    empty(text) {
      if (this.u) { this.u.destroy(); this.u = null; this.signature = null; }
      this.emptyText.textContent = text;
    }

    draw(xs, series) {
      // series: [{label, scale, colour, values, unit, dash, step, width}, and for other shapes:
      // paths, fill, points, text (the legend's value instead of the number)]
      if (!xs.length || series.every(s => s.values.every(v => v == null))) {
        this.empty("no data in the last hour yet");
        return;
      }
      this.emptyText.textContent = "";
      const data = [xs, ...series.map(s => s.values)];
      const signature = JSON.stringify(series.map(s => [s.label, s.scale]));
      if (this.u && signature === this.signature) {
        this.u.setData(data);
        return;
      }
      if (this.u) this.u.destroy();
      const opts = {
        ...this.size(),
        cursor: {drag: {x: false, y: false}},
        legend: {live: true},
        scales: this.scaleOpts(),
        axes: [{stroke: "#4b5563", font: "11px system-ui", grid: {stroke: "#eceef1", width: 1},
                ticks: {stroke: "#d1d5db", width: 1}},
               ...this.yAxes()],
        series: [{label: "time", value: (u, v) => (v == null ? "-" : new Date(v * 1000).toLocaleTimeString())},
                 ...series.map(s => ({
                   label: s.label, scale: s.scale, stroke: s.colour, fill: s.fill, width: s.width ?? 2, dash: s.dash,
                   spanGaps: false, points: s.points ?? {size: 5},
                   paths: s.paths ?? (s.step ? uPlot.paths.stepped({align: 1}) : undefined),
                   value: (u, v) => (v == null ? "-" : s.text ?? `${num(v)}${s.unit ?? ""}`),
                 }))],
      };
      this.u = new uPlot(opts, data, this.plot);
      this.signature = signature;
    }
  }

  const ROW_PX = 12, BAND_PX = 8;  // a model's row in the residency chart, and its band in it

  // A band's shape: a bar over each interval its model was loaded in (a lone interval too,
  // which a line between points would not show).
  const bandPaths = interval => (u, i) => {
    const fill = new Path2D(), xs = u.data[0], high = BAND_PX * uPlot.pxRatio;
    u.data[i].forEach((row, j) => {
      if (row == null) return;
      const left = Math.round(u.valToPos(xs[j], "x", true));
      const right = Math.round(u.valToPos(xs[j] + interval, "x", true));
      fill.rect(left, u.valToPos(row, "rows", true) - high / 2, right - left, high);
    });
    return {fill};
  };

  class LaneChart extends Chart {
    /* A lane per node, and in it a band per model over the intervals it was loaded: a band's
       values are its row (uPlot counts y from the bottom) while loaded, else null. */
    constructor(id, label) {
      super(id, {rows: label});
      this.lanes = [];  // [{name, at}]: where each lane's label goes on the y axis
      this.rows = 0;
      this.interval = 10;
      this.layout = null;
    }

    size() {  // as tall as its rows, not as wide
      return {width: super.size().width, height: Math.max(170, 56 + ROW_PX * this.rows)};
    }

    scaleOpts() {  // x runs to the end of the newest interval, so its bands show too
      return {x: {time: true, range: (u, min, max) => [min, max + this.interval]},
              rows: {range: () => [-0.75, this.rows - 0.25]}};
    }

    yAxes() {
      const longest = Math.max(4, ...this.lanes.map(lane => lane.name.length));
      return [{...axis("rows", this.scales.rows, 3), size: Math.min(160, 20 + 7 * longest), grid: {show: false},
               splits: () => this.lanes.map(lane => lane.at), values: () => this.lanes.map(lane => lane.name)}];
    }

    draw(xs, lanes, interval) {
      // lanes: [{name, bands: [{label, colour, loaded: [bool per x]}]}], the first on top; a
      // lane has a row per band (one if none), an empty row between two lanes.
      this.rows = Math.max(0, lanes.reduce((n, lane) => n + Math.max(1, lane.bands.length) + 1, -1));
      const y = fromTop => this.rows - 1 - fromTop;
      const series = [];
      let top = 0;
      this.lanes = lanes.map(lane => {
        lane.bands.forEach((band, i) => series.push({
          label: band.label, scale: "rows", colour: band.colour, fill: band.colour, width: 0, points: {show: false},
          paths: bandPaths(interval), text: "loaded", values: band.loaded.map(on => (on ? y(top + i) : null))}));
        const rows = Math.max(1, lane.bands.length);
        const at = y(top + (rows - 1) / 2);
        top += rows + 1;
        return {name: lane.name, at};
      });
      this.interval = interval;
      const layout = JSON.stringify([this.lanes, interval]);
      if (layout !== this.layout) {  // another height or axis: drawn anew, not only its data
        this.layout = layout;
        this.signature = null;
      }
      super.draw(xs, series);
    }
  }

  const charts = {
    load: new Chart("chart-load", {requests: "requests"}),
    tokens: new Chart("chart-tokens", {tps: "tokens/s"}),
    latency: new Chart("chart-latency", {ms: "latency (ms)", rps: "requests/s"}),
    queue: new Chart("chart-queue", {waiting: "requests waiting", ms: "wait (ms)"}),
    residency: new LaneChart("chart-residency", "node"),
    accuracy: new Chart("chart-accuracy", {s: "seconds"}),
  };

  const keysOf = (points, pick) => [...new Set(points.flatMap(p => Object.keys(pick(p) || {})))].sort();

  function drawCharts(points, interval) {
    const xs = points.map(p => p.at);

    const nodes = keysOf(points, p => p.load);
    charts.load.draw(xs, nodes.flatMap(n => [
      {label: `${n} in flight`, scale: "requests", colour: nodeColour(n), values: points.map(p => p.load?.[n]?.in_flight ?? null)},
      {label: `${n} slots`, scale: "requests", colour: nodeColour(n), width: 1.5, dash: [6, 4], step: true,
       values: points.map(p => p.load?.[n]?.slots ?? null)},
    ]));

    // An interval without a node's tokens is 0 tokens/s for it (the interval itself was recorded).
    const producers = keysOf(points, p => p.tokens_per_s);
    charts.tokens.draw(xs, producers.map(n => ({
      label: n, scale: "tps", colour: nodeColour(n), unit: " tok/s", values: points.map(p => p.tokens_per_s?.[n] ?? 0),
    })));

    charts.latency.draw(xs, [
      {label: "p50", scale: "ms", colour: "#1f77b4", unit: " ms", values: points.map(p => p.p50_ms ?? null)},
      {label: "p95", scale: "ms", colour: "#ff7f0e", unit: " ms", values: points.map(p => p.p95_ms ?? null)},
      {label: "p99", scale: "ms", colour: "#d62728", unit: " ms", values: points.map(p => p.p99_ms ?? null)},
      {label: "requests/s", scale: "rps", colour: "#6b7280", width: 1.5, step: true, unit: "/s",
       values: points.map(p => (p.requests == null ? null : p.requests / interval))},
      {label: "errors/s", scale: "rps", colour: "#7f1d1d", width: 1.5, dash: [3, 3], step: true, unit: "/s",
       values: points.map(p => (p.errors == null ? null : p.errors / interval))},
    ]);

    const priorities = keysOf(points, p => p.queue_wait_ms).sort((a, b) => Number(a) - Number(b));
    charts.queue.draw(xs, [
      {label: "waiting", scale: "waiting", colour: "#374151", step: true, values: points.map(p => p.queue_waiting ?? null)},
      ...priorities.map(prio => ({label: `priority ${prio} wait`, scale: "ms", colour: priorityColour(prio), unit: " ms",
                                   values: points.map(p => p.queue_wait_ms?.[prio] ?? null)})),
    ]);

    // An interval without a node had no sample of it: its bands break there.
    const holders = keysOf(points, p => p.loaded);
    charts.residency.draw(xs, holders.map(node => ({
      name: node,
      bands: [...new Set(points.flatMap(p => p.loaded?.[node] || []))].sort().map(model => ({
        label: `${node} · ${model}`, colour: modelColour(model),
        loaded: points.map(p => (p.loaded?.[node] || []).includes(model)),
      })),
    })), interval);

    charts.accuracy.draw(xs, [
      {label: "actual", scale: "s", colour: "#111827", width: 2.5, unit: " s", values: points.map(p => p.actual_s ?? null)},
      {label: "predicted (chosen node)", scale: "s", colour: "#1f77b4", unit: " s", values: points.map(p => p.predicted_s ?? null)},
      {label: "predicted (least-connections' node)", scale: "s", colour: "#d62728", dash: [6, 4], unit: " s",
       values: points.map(p => p.least_conn_predicted_s ?? null)},
    ]);
    $("accuracy-note").textContent = accuracyNote(points);
  }

  function accuracyNote(points) {
    const judged = points.filter(p => p.predicted_s != null && p.actual_s != null);
    if (!judged.length) return "";
    const error = judged.reduce((sum, p) => sum + Math.abs(p.predicted_s - p.actual_s), 0) / judged.length;
    const compared = judged.filter(p => p.least_conn_predicted_s != null);
    let text = `Over ${judged.length} intervals with routed requests, the prediction for the chosen node was off by ` +
      `${num(error, 2)} s on average (per-interval means).`;
    if (compared.length) {
      const gain = compared.reduce((sum, p) => sum + (p.least_conn_predicted_s - p.predicted_s), 0) / compared.length;
      text += gain >= 0.005
        ? ` The node least-connections would have picked was predicted ${num(gain, 2)} s slower per request.`
        : gain <= -0.005
          ? ` The node least-connections would have picked was predicted ${num(-gain, 2)} s faster per request.`
          : " Least-connections would have picked a node predicted to be as fast.";
    }
    return text;
  }

  // The last hour, kept between polls: the first poll takes all of it, later ones only what
  // is newer than the last interval held (which may still have been filling then).
  const timeline = {points: [], interval: 10, span: 3600};

  async function refreshTimeline() {
    const last = timeline.points.at(-1);
    const since = last ? Math.floor(last.at) : 0;
    const answer = await getJSON(`api/timeline?since=${since}`);
    timeline.interval = answer.interval_s || timeline.interval;
    timeline.span = answer.span_s || timeline.span;
    const fresh = (answer.points || []).slice().sort((a, b) => a.at - b.at);
    if (fresh.length) timeline.points = timeline.points.filter(p => p.at < fresh[0].at).concat(fresh);
    const newest = timeline.points.at(-1);
    if (newest) timeline.points = timeline.points.filter(p => p.at > newest.at - timeline.span);
    drawCharts(timeline.points, timeline.interval);
  }

  // -- panels ----------------------------------------------------------------------------
  // The models a node has loaded, against how many it holds (configured, learned or Ollama's
  // default); its loads and evictions as the router saw them in the tooltip.
  function residencyCell(n) {
    const loaded = (n.loaded || []).join(", ") || "-";
    if (n.max_loaded == null) return cell(loaded);
    const sum = counts => Object.values(counts || {}).reduce((a, b) => a + b, 0);
    const held = `${(n.loaded || []).length} / ${n.max_loaded} (${n.max_loaded_source})`;
    return cell(`${loaded} · ${held}`, null, `${sum(n.model_loads)} loads, ${sum(n.model_evictions)} evictions seen`);
  }

  function renderStats(stats) {
    const nodes = stats.nodes || [];
    fillRows("nodes", nodes.map(n => {
      const tps = Object.values(n.decode_tps || {});
      const t = n.telemetry || {};
      const learned = n.slots_source === "learned" ? "learned" : n.slots_source;
      return [
        cell(n.name),
        cell(n.healthy ? (n.draining ? "draining" : "healthy") : "down", n.healthy ? "ok" : "bad", n.healthy ? null : n.error),
        cell(n.breaker, n.breaker === "closed" ? "ok" : (n.breaker === "open" ? "bad" : "warn")),
        cell(`${n.in_flight} / ${n.slots}`, null, learned ? `slots ${learned}` : null),
        residencyCell(n),
        cell(tps.length ? num(Math.max(...tps)) : "-"),
        cell(t.vram_total_mb ? `${gb(t.vram_free_mb)} / ${gb(t.vram_total_mb)}` : "no GPU readings"),
        cell(n.worker_ip || "-"),
      ];
    }), "no nodes configured");

    const healthy = nodes.filter(n => n.healthy).length;
    const open = nodes.filter(n => n.breaker && n.breaker !== "closed").length;
    $("kpi-nodes").textContent = `${healthy} / ${nodes.length}`;
    $("kpi-nodes").className = `value ${healthy === nodes.length ? "ok" : "bad"}`;
    $("kpi-nodes-sub").textContent = open ? `${open} breaker${open > 1 ? "s" : ""} not closed` : "all breakers closed";

    const t = stats.totals || {};
    $("kpi-requests").textContent = int(t.requests);
    $("kpi-requests-sub").textContent = `${int(t.retries)} retries, ${int(t.hedges)} hedges`;
    $("kpi-errors").textContent = int(t.errors);
    $("kpi-errors").className = `value ${t.errors ? "bad" : ""}`;
    $("kpi-errors-sub").textContent = t.requests ? `${num(100 * (t.errors || 0) / t.requests)}% of requests` : "";

    renderQueue(stats.queue || {});
    renderShards(stats.shards || []);
    renderBatch(stats.batch || {});
    renderCache(stats.cache || {});
  }

  function renderQueue(queue) {
    $("kpi-queue").textContent = int(queue.waiting || 0);
    $("kpi-queue-sub").textContent = queue.max != null ? `at most ${queue.max}` : "";
    $("queue-now").textContent = `${queue.waiting || 0} waiting now (at most ${queue.max ?? "-"}); ` +
      "served requests' waits since the gateway started:";
    const waits = Object.entries(queue.waited_by_priority || {}).sort((a, b) => Number(b[0]) - Number(a[0]));
    fillRows("queue", waits.map(([p, w]) => [cell(p), cell(int(w.count)), cell(ms(w.mean_ms)), cell(ms(w.max_ms))]),
             "no request has waited in the queue");
  }

  function renderShards(shards) {
    fillRows("shards", shards.map(g => [
      cell(g.model), cell(g.state, g.state === "running" ? "ok" : "warn"),
      cell((g.backends || []).map(b => `${b.address} (${b.model_buffer_mib != null ? b.model_buffer_mib + " MiB"
        : Math.round((b.layer_share ?? 0) * 100) + "% of the layers"})`).join(", ") || "-"),
      cell(g.restarts)]), "no shard groups configured or running");
  }

  function renderBatch(batch) {
    const jobs = batch.jobs || {};
    const running = (jobs.running || 0) + (jobs.queued || 0);
    $("kpi-batch").textContent = int(running);
    $("kpi-batch-sub").textContent = `running or queued; ${int(batch.pending_items || 0)} items to do`;
    const states = Object.entries(jobs).map(([state, n]) => `${n} ${state}`).join(", ");
    $("batch-summary").textContent = states ? `jobs: ${states}; items still to do: ${int(batch.pending_items || 0)}` : "";
    fillRows("batch", (batch.recent || []).map(j => [
      cell(j.id.replace(/^batch-/, "")), cell(`${j.kind} ${j.model}`),
      cell(j.state, j.state === "completed" ? "ok" : (j.state === "running" ? "" : "warn")),
      cell(`${j.progress.done} / ${j.progress.total} (${Math.round(j.progress.percent)}%)` +
           (j.failed ? `, ${j.failed} failed` : ""), j.failed ? "bad" : ""),
      cell(Object.entries(j.nodes || {}).map(([n, c]) => `${n}: ${c}`).join(", ") || "-")]), "no batch jobs yet");
  }

  function renderCache(c) {
    const lookups = (c.hits || 0) + (c.misses || 0);
    const ratio = lookups ? `${num(100 * c.hits / lookups)}%` : "-";
    $("kpi-cache").textContent = ratio;
    $("kpi-cache-sub").textContent = `hit ratio; ${int(c.entries || 0)} entries`;
    $("cache").textContent = `${int(c.hits || 0)} hits, ${int(c.misses || 0)} misses (hit ratio ${ratio}), ` +
      `${int(c.entries || 0)} entries, ${((c.bytes || 0) / 1048576).toFixed(1)} MB`;
  }

  function renderDecisions(decisions) {
    fillRows("decisions", decisions.slice(0, 25).map(d => {
      const why = el("td", null, d.reasoning || "",
                     el("div", {class: "cand muted"}, (d.candidates || []).map(c =>
                       `${c.node}: ${c.predicted_s == null ? "?" : c.predicted_s.toFixed(2)} s`).join(" | ")),
                     d.request_id ? el("div", {class: "cand muted"}, `request ${d.request_id}`) : null);
      return [cell(clock(d.at), "nowrap"), cell(d.model), cell(d.node), cell(d.priority),
              cell(`${d.latency_ms} ms`, d.status >= 400 ? "bad nowrap" : "nowrap"), why];
    }), "no routed requests yet");
  }

  /* Its weight at equal priority, what it has waiting now, and what the queue cost it. */
  function fairShareCell(f) {
    return cell(`share ${num(f.share, 2)}, ${int(f.waiting)} waiting`, f.refused ? "bad" : null,
                `${int(f.refused)} refused (429), queued ${ms(f.mean_ms)} on average`);
  }

  function renderApplications(answer) {
    const windowS = answer.window_s ?? 60;
    $("apps-window").textContent = `totals since the gateway started; second line: the last ${windowS} s`;
    const apps = (answer.applications || []).slice().sort((a, b) =>
      (b.active - a.active) || ((b.last_seen || 0) - (a.last_seen || 0)));
    fillRows("applications", apps.map(a => {
      const live = a.last_minute || {};
      const models = Object.entries(a.models || {}).sort((x, y) => y[1] - x[1]).map(([m, n]) => `${m} (${int(n)})`);
      return [
        el("td", {class: a.active ? "active" : null, title: a.active ? "active in the last minute" : null}, a.name),
        cell(a.source),
        cell(int(a.requests), null, `${int(live.requests)} last min`),
        cell(int(a.errors), a.errors ? "bad" : null, `${int(live.errors)} last min`),
        cell(`${int(a.tokens_in)} / ${int(a.tokens_out)}`, null, `${int(live.tokens_in)} / ${int(live.tokens_out)} last min`),
        cell(models.join(", ") || "-"),
        cell(`${ms(a.p50_ms)} / ${ms(a.p95_ms)}`, null, `${ms(live.p50_ms)} / ${ms(live.p95_ms)} last min`),
        fairShareCell(a.fair_share || {}),
        cell(clock(a.last_seen), null, ago(a.last_seen)),
      ];
    }), "no application has sent a request yet");
  }

  function renderAlerts(answer) {
    const active = (answer.active || []).slice().sort((a, b) => (b.started_at || 0) - (a.started_at || 0));
    const recent = (answer.recent || []).slice().sort((a, b) => (b.ended_at || 0) - (a.ended_at || 0)).slice(0, 10);
    const item = (a, state) => {
      const severity = /^[a-z]+$/.test(a.severity || "") ? a.severity : "warning";
      const measured = a.value != null && a.threshold != null ? ` (${num(a.value, 2)}, threshold ${num(a.threshold, 2)})` : "";
      const when = state === "active" ? `since ${clock(a.started_at)}`
        : `ended ${clock(a.ended_at)} (started ${clock(a.started_at)})`;
      return el("li", {class: `alert ${state} ${severity}`, "data-state": state, "data-kind": a.kind, "data-subject": a.subject},
                el("span", {class: "sev"}, state === "active" ? severity : "ended"),
                el("b", null, a.kind || "alert"), ` ${a.subject || ""}: ${a.message || ""}${measured}`,
                el("span", {class: "when"}, when));
    };
    const items = active.map(a => item(a, "active"));
    if (!active.length) {
      items.push(el("li", {class: "none"}, recent.length ? "no active alerts" : "no alerts"));
    }
    items.push(...recent.map(a => item(a, "ended")));
    $("alerts").replaceChildren(...items);
  }

  // -- the refresh loop --------------------------------------------------------------------
  const sources = [
    {name: "stats", path: () => "api/stats", render: renderStats},
    {name: "decisions", path: () => "api/routing/decisions?limit=25", render: a => renderDecisions(a.decisions || [])},
    {name: "timeline", run: refreshTimeline},
    {name: "applications", path: () => "api/applications", render: renderApplications},
    {name: "alerts", path: () => "api/alerts", render: renderAlerts},
  ];
  const state = {refreshes: 0, errors: {}, charts, timeline};
  window.sollolDashboard = state;  // for the browser tests (and curious operators)

  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const results = await Promise.allSettled(sources.map(async s => (s.run ? s.run() : s.render(await getJSON(s.path())))));
      const failures = [];
      results.forEach((result, i) => {
        if (result.status === "rejected") {
          const reason = result.reason;
          failures.push(reason instanceof HttpError && reason.status === 401
            ? "session ended: reload the page to log in" : `${sources[i].name}: ${reason?.message || reason}`);
        }
      });
      state.refreshes += 1;
      state.errors = failures;
      $("status").textContent = failures.length ? `cannot refresh: ${failures.join("; ")}`
        : `updated ${new Date().toLocaleTimeString()}`;
      $("status").className = failures.length ? "bad" : "muted";
    } finally {
      busy = false;
    }
  }

  $("ray-link").href = `${location.protocol}//${location.hostname}:8265`;
  refresh();
  setInterval(refresh, REFRESH_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
})();
