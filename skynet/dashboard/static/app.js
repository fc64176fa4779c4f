// skynet dashboard: polls /api/status and renders it. Text only goes through
// textContent (never innerHTML), so a file name can never become markup.
"use strict";

(function () {
  const REFRESH = Number(document.body.dataset.refreshMs) || 3000;
  const SVG = "http://www.w3.org/2000/svg";
  let olderCursor = null;
  let olderRows = [];
  let latestFailures = [];
  let clockSkew = 0; // server now - browser now (seconds): ages use the server's clock

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(v)) + " " + u[i];
  }

  function ago(ts) {
    if (!ts) return "";
    const s = Math.max(0, Date.now() / 1000 + clockSkew - ts);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " d ago";
  }

  function clock(ts) {
    return ts ? new Date(ts * 1000).toLocaleTimeString() : "";
  }

  function fill(tableId, rows, render, empty) {
    const tbody = document.querySelector("#" + tableId + " tbody");
    const frag = document.createDocumentFragment();
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", empty, "muted");
      td.colSpan = document.querySelectorAll("#" + tableId + " thead th").length;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    for (const r of rows) frag.appendChild(render(r));
    tbody.replaceChildren(frag);
  }

  function row(cells) {
    const tr = el("tr");
    for (const c of cells) tr.appendChild(c);
    return tr;
  }

  function status(d) {
    if (d.stopped) return el("span", "stopped", "badge stopped");
    if (d.stale) return el("span", "stale", "badge stale");
    return el("span", "running", "badge ok");
  }

  function renderDaemons(daemons) {
    const rows = [];
    for (const d of daemons) {
      const maps = d.mappings && d.mappings.length ? d.mappings : [{}];
      maps.forEach(function (m, i) {
        const tr = row([
          el("td", i ? "" : d.host), el("td", i ? "" : d.service),
          i ? el("td") : (function () { const td = el("td"); td.appendChild(status(d)); return td; })(),
          el("td", i ? "" : ago(d.last_heartbeat)), el("td", i ? "" : d.version),
          el("td", m.name || ""), el("td", m.queue_depth === undefined ? d.queue_depth : m.queue_depth, "num"),
          el("td", m.in_flight === undefined ? d.in_flight : m.in_flight, "num"),
          el("td", m.failed === undefined ? d.failed : m.failed, "num"),
          el("td", m.connected === false ? "unreachable" : (m.connected ? "connected" : ""),
             m.connected === false ? "error" : ""),
        ]);
        tr.dataset.daemon = d.id;
        if (d.stale) tr.classList.add("stale");
        rows.push(tr);
      });
    }
    const tbody = document.querySelector("#daemons tbody");
    if (!rows.length) {
      fill("daemons", [], null, "No daemon has reported yet.");
    } else {
      tbody.replaceChildren.apply(tbody, rows);
    }
    const stale = daemons.filter(function (d) { return d.stale; }).length;
    document.getElementById("daemon-count").textContent =
      daemons.length + (stale ? " (" + stale + " stale)" : "");
  }

  function renderJobs(js) {
    fill("jobs", js || [], function (j) {
      const c = j.counts || {};
      const classes = Object.keys(j.errors || {}).sort().map(function (k) { return k + " " + j.errors[k]; });
      return row([
        el("td", j.host || j.daemon_id), el("td", j.name),
        el("td", j.running ? "running" : "stopped", j.running ? "badge ok" : "badge stopped"),
        el("td", c.done || 0, "num"), el("td", c.failed || 0, c.failed ? "num error" : "num"),
        el("td", c.queued || 0, "num"), el("td", c.running || 0, "num"),
        el("td", j.running ? j.rate.toFixed(1) + "/s" : ""),
        el("td", j.running && j.eta !== null ? Math.round(j.eta) + " s" : ""),
        el("td", classes.join(", ")), el("td", ago(j.updated_at)),
      ]);
    }, "No job has reported yet.");
    document.getElementById("job-count").textContent = (js || []).length;
  }

  function renderFleet(f) {
    fill("fleet-jobs", f.jobs || [], function (j) {
      const c = j.counts || {};
      const classes = Object.keys(j.errors || {}).sort().map(function (k) { return k + " " + j.errors[k]; });
      const state = j.paused ? "paused (" + j.paused + ")" : (j.workers ? "running" : "idle");
      return row([
        el("td", j.name), el("td", state, j.paused ? "badge stopped" : (j.workers ? "badge ok" : "badge")),
        el("td", c.done || 0, "num"), el("td", c.failed || 0, c.failed ? "num error" : "num"),
        el("td", c.queued || 0, "num"), el("td", c.running || 0, "num"), el("td", j.workers, "num"),
        el("td", j.rate ? j.rate.toFixed(1) + "/s" : ""),
        el("td", j.eta !== null && j.eta !== undefined ? Math.round(j.eta) + " s" : ""),
        el("td", classes.join(", ")),
      ]);
    }, "No job has been submitted.");
    fill("fleet-workers", f.workers || [], function (w) {
      const state = w.stopped ? "stopped" : (w.stale ? "stale" : "running");
      return row([
        el("td", w.host), el("td", w.pid, "num"), el("td", (w.jobs || []).join(", ")),
        el("td", state, w.stopped ? "badge stopped" : (w.stale ? "badge error" : "badge ok")),
        el("td", ago(w.last_heartbeat)), el("td", w.batches_held, "num"), el("td", w.done, "num"),
        el("td", w.failed, w.failed ? "num error" : "num"), el("td", w.rate ? w.rate.toFixed(1) + "/s" : ""),
      ]);
    }, "No worker has started.");
    document.getElementById("fleet-job-count").textContent = (f.jobs || []).length;
    document.getElementById("fleet-worker-count").textContent = (f.workers || []).length;
  }

  async function refreshFleet() {
    if (!document.getElementById("fleet")) return;
    const resp = await fetch("/api/fleet", { credentials: "same-origin", cache: "no-store" });
    if (resp.ok) renderFleet(await resp.json());
  }

  function renderTransfers(ts) {
    fill("transfers", ts, function (t) {
      const bar = el("progress");
      if (t.bytes_total) { bar.max = t.bytes_total; bar.value = t.bytes_done || 0; }
      const pct = t.bytes_total ? Math.floor(100 * (t.bytes_done || 0) / t.bytes_total) + "%" : (t.action || "");
      const cell = el("td");
      cell.appendChild(bar);
      cell.appendChild(el("span", " " + pct));
      return row([el("td", t.host), el("td", t.mapping), el("td", t.path, "path"), cell,
                  el("td", t.bytes_total ? bytes(t.bytes_done) + " / " + bytes(t.bytes_total) : "", "num"),
                  el("td", ago(t.updated_at))]);
    }, "Nothing uploading right now.");
    document.getElementById("transfer-count").textContent = ts.length ? String(ts.length) : "";
  }

  function renderChart(points, now) {
    const box = document.getElementById("chart");
    const W = Math.max(300, box.clientWidth || 900), H = 180, PAD = 28;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const end = Math.floor(now / 60) * 60;
    const byMinute = new Map(points.map(function (p) { return [Number(p.minute), p]; }));
    let max = 1;
    for (const p of points) max = Math.max(max, Number(p.bytes) || 0);
    const bw = (W - PAD) / 60;
    let files = 0, total = 0;
    for (let i = 0; i < 60; i++) {
      const m = end - (59 - i) * 60;
      const p = byMinute.get(m);
      if (!p) continue;
      files += Number(p.files) || 0;
      total += Number(p.bytes) || 0;
      const h = Math.max(p.files ? 2 : 0, (H - PAD) * (Number(p.bytes) || 0) / max);
      const r = document.createElementNS(SVG, "rect");
      r.setAttribute("x", PAD + i * bw + 1);
      r.setAttribute("y", H - PAD - h);
      r.setAttribute("width", Math.max(1, bw - 2));
      r.setAttribute("height", h);
      r.setAttribute("class", "bar");
      const title = document.createElementNS(SVG, "title");
      title.textContent = new Date(m * 1000).toLocaleTimeString() + ": " + p.files + " files, " + bytes(p.bytes) +
        (p.failed ? ", " + p.failed + " failed" : "");
      r.appendChild(title);
      svg.appendChild(r);
      if (p.failed) {
        const f = document.createElementNS(SVG, "rect");
        f.setAttribute("x", PAD + i * bw + 1);
        f.setAttribute("y", H - PAD + 2);
        f.setAttribute("width", Math.max(1, bw - 2));
        f.setAttribute("height", 4);
        f.setAttribute("class", "fail");
        svg.appendChild(f);
      }
    }
    const axis = document.createElementNS(SVG, "line");
    axis.setAttribute("x1", PAD); axis.setAttribute("x2", W);
    axis.setAttribute("y1", H - PAD); axis.setAttribute("y2", H - PAD);
    axis.setAttribute("class", "axis");
    svg.appendChild(axis);
    const labels = [["-60 min", PAD], ["-30 min", PAD + 30 * bw], ["now", W - 30]];
    for (const [text, x] of labels) {
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", x); t.setAttribute("y", H - 8);
      t.textContent = text;
      svg.appendChild(t);
    }
    const top = document.createElementNS(SVG, "text");
    top.setAttribute("x", PAD); top.setAttribute("y", 12);
    top.textContent = "peak " + bytes(max) + "/min · last hour: " + files + " files, " + bytes(total);
    svg.appendChild(top);
    box.replaceChildren(svg);
  }

  function renderRecent(rs) {
    fill("recent", rs, function (r) {
      return row([el("td", clock(r.ts), "when"), el("td", r.host), el("td", r.mapping), el("td", r.action),
                  el("td", r.dest ? r.path + " → " + r.dest : r.path, "path"), el("td", bytes(r.bytes), "num")]);
    }, "No completed action yet.");
  }

  function failureRow(f) {
    return row([el("td", clock(f.ts), "when"), el("td", f.host), el("td", f.mapping), el("td", f.action),
                el("td", f.dest ? f.path + " → " + f.dest : f.path, "path"), el("td", f.error, "error")]);
  }

  function renderFailures(fs, next) {
    latestFailures = fs;
    fill("failures", fs.concat(olderRows), failureRow, "No failures.");
    if (!olderRows.length) olderCursor = next;
    document.getElementById("older").hidden = !olderCursor;
  }

  function banner(text) {
    const b = document.getElementById("banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  async function refresh() {
    try {
      const resp = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) { window.location.assign("/login"); return; }
      const data = await resp.json();
      if (!resp.ok) { banner(data.error || ("HTTP " + resp.status)); return; }
      banner("");
      clockSkew = data.now - Date.now() / 1000;
      const note = document.getElementById("note");
      note.textContent = data.note || "";
      note.hidden = !data.note;
      renderDaemons(data.daemons);
      renderJobs(data.jobs);
      renderTransfers(data.transfers);
      renderChart(data.throughput, data.now);
      renderRecent(data.recent);
      renderFailures(data.failures, data.failures_next);
      await refreshFleet();
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      banner("Cannot reach the dashboard server (" + e.message + "); retrying.");
    }
  }

  document.getElementById("older").addEventListener("click", async function () {
    if (!olderCursor) return;
    const resp = await fetch("/api/failures?before=" + encodeURIComponent(olderCursor),
                             { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.assign("/login"); return; }
    if (!resp.ok) return;
    const data = await resp.json();
    olderRows = olderRows.concat(data.failures);
    olderCursor = data.failures_next;
    fill("failures", latestFailures.concat(olderRows), failureRow, "No failures.");
    document.getElementById("older").hidden = !olderCursor;
  });

  refresh();
  setInterval(refresh, REFRESH);
})();
