"use strict";
// The model server's page: polls /v1/stats once a second, keeps the last 10 minutes in memory
// and draws them. Read-only.
(() => {
  const KEEP = 600;
  const hist = [];
  const COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2"];
  const $ = (id) => document.getElementById(id);
  let t0 = null;
  let timer = null;

  function age(s) {
    if (s === null || s === undefined) return "never";
    if (s < 120) return fmt(s, 2) + " s ago";
    if (s < 7200) return fmt(s / 60, 2) + " min ago";
    return fmt(s / 3600, 2) + " h ago";
  }

  function duration(s) {
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return fmt(s / 3600, 2) + " h";
  }

  function ms(v) {
    return v === null ? "–" : fmt(v, 2);
  }

  function render(st) {
    $("t-version").innerHTML = `${st.model_version} <small>dense ${st.dense_version}</small>`;
    $("t-age").textContent = age(st.last_delta_age_s);
    $("t-lag").textContent = st.model_data_lag_s === null ? "–" : duration(Math.max(0, st.model_data_lag_s));
    $("t-rate").innerHTML = `${fmt(st.api.requests_per_s)} <small>/s</small>`;
    $("t-lat").innerHTML = `${ms(st.api.p50_ms)} / ${ms(st.api.p99_ms)} <small>ms</small>`;
    const err5 = Object.entries(st.statuses).filter(([s]) => +s >= 500).reduce((a, [, n]) => a + n, 0);
    const err4 = Object.entries(st.statuses).filter(([s]) => +s >= 400 && +s < 500).reduce((a, [, n]) => a + n, 0);
    $("t-err").innerHTML = `${fmt(err5)} <small>5xx</small> ${fmt(err4)} <small>4xx</small>`;
    $("t-err").className = "v" + (err5 > 0 ? " bad" : "");
    const rows = Object.values(st.tables).reduce((a, b) => a + b, 0);
    $("t-rows").textContent = fmt(rows);
    $("t-up").textContent = duration(st.uptime_s);
    $("window").textContent = fmt(st.window_s, 2);

    const tbody = $("endpoints").tBodies[0];
    const list = [["API (rank + predict + actions)", st.api], ...Object.entries(st.endpoints)];
    tbody.innerHTML = "";
    for (const [name, e] of list) {
      const tr = tbody.insertRow();
      for (const v of [name, fmt(e.requests_per_s), ms(e.p50_ms), ms(e.p90_ms), ms(e.p99_ms),
        fmt(e.errors_per_s), fmt(e.requests), fmt(e.errors)]) {
        tr.insertCell().textContent = v;
      }
    }
    $("statuses").textContent = "statuses since start: " +
      (Object.entries(st.statuses).map(([s, n]) => `${s} × ${fmt(n)}`).join(", ") || "none");

    const x = (p) => p.t;
    const pick = (f) => hist.map((p) => [x(p), f(p)]);
    const xo = { label: "seconds on this page", format: (v) => fmt(v) };
    Charts.line($("c-rate"), { series: [{ name: "requests/s", color: COLORS[0], points: pick((p) => p.s.api.requests_per_s) }], x: xo, y: { min: 0 } });
    Charts.line($("c-lat"), {
      series: [
        { name: "p50", color: COLORS[0], points: pick((p) => p.s.api.p50_ms) },
        { name: "p90", color: COLORS[2], points: pick((p) => p.s.api.p90_ms) },
        { name: "p99", color: COLORS[1], points: pick((p) => p.s.api.p99_ms) },
      ], x: xo, y: { min: 0 }, emptyText: "no API requests yet",
    });
    Charts.line($("c-version"), { series: [{ name: "version", color: COLORS[3], points: pick((p) => p.s.model_version) }], x: xo });
    Charts.line($("c-age"), {
      series: [{ name: "seconds", color: COLORS[1], points: pick((p) => p.s.last_delta_age_s) }],
      x: xo, y: { min: 0 }, emptyText: "no delta applied yet",
    });
    const names = Object.keys(st.tables);
    Charts.line($("c-rows"), {
      series: names.map((n, i) => ({ name: n, color: COLORS[i % COLORS.length], points: pick((p) => p.s.tables[n] ?? null) })),
      x: xo, y: { min: 0 },
    });
    const errs = hist.map((p) => [x(p), Object.values(p.s.endpoints).reduce((a, e) => a + e.errors_per_s, 0)]);
    Charts.line($("c-err"), { series: [{ name: "errors/s", color: COLORS[4], points: errs }], x: xo, y: { min: 0 } });
  }

  async function tick() {
    try {
      const st = await Client.get("/v1/stats");
      const now = performance.now() / 1000;
      if (t0 === null) {
        t0 = now;
        window.freshrecFirstData = performance.now();
      }
      hist.push({ t: now - t0, s: st });
      if (hist.length > KEEP) hist.shift();
      $("auth").hidden = true;
      $("main").hidden = false;
      $("status").className = "status";
      $("status").textContent = `updated ${new Date().toLocaleTimeString()} · version ${st.model_version}`;
      render(st);
    } catch (e) {
      if (e instanceof Client.AuthError) {
        $("auth").hidden = false;
        $("main").hidden = true;
        $("status").textContent = "needs the API token";
        clearInterval(timer);
        timer = null;
        return;
      }
      $("status").className = "status bad";
      $("status").textContent = "cannot reach the server: " + e.message;
    }
  }

  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    Client.setToken($("auth-token").value.trim());
    if (timer === null) timer = setInterval(tick, 1000);
    tick();
  });
  timer = setInterval(tick, 1000);
  tick();
})();
