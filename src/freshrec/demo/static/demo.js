"use strict";
// The demo page: the run's charts (GET /demo/state once a second) and a feed to click in.
//
// The feed is POST /v1/rank of a candidate set (GET /demo/candidates: the platform's newest
// items) for the chosen user: a simulated one, or you as a new user (a fresh random id). A click
// serves the clicked item once more (a one-candidate /v1/rank: an impression at the click's data
// time, which the joiner still holds open; the demo's data time runs `speedup` times faster than
// you), posts the click on it to POST /v1/actions, follows it through the loop
// (GET /demo/click: joined, trained, served) and, once the served model has learned from it,
// ranks the feed again and shows what moved and the seconds it took.
//
// window.freshrecClicks holds one record per click (the browser test reads it).
(() => {
  const $ = (id) => document.getElementById(id);
  const TOP = 10;
  const CANDIDATES = 30;
  const COLORS = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2"];
  const samples = [];
  const results = (window.freshrecClicks = []);
  let next = 0;
  let started = false;
  const me = randomId();
  let who = me;
  let cands = [];
  let feed = null;
  let busy = false;

  function randomId() {
    const a = new Uint32Array(2);
    crypto.getRandomValues(a);
    return ((BigInt(a[0] & 0x3fffffff) << 32n) | BigInt(a[1])).toString();
  }

  function requestId() {
    const a = new Uint32Array(2);
    crypto.getRandomValues(a);
    return "page-" + a[0].toString(16).padStart(8, "0") + a[1].toString(16).padStart(8, "0");
  }

  const short = (id) => "…" + String(id).slice(-5);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const pct = (p) => (100 * p).toFixed(p < 0.1 ? 2 : 1) + "%";

  function age(s) {
    if (s === undefined || s === null) return "";
    if (s < 3600) return Math.max(1, Math.round(s / 60)) + " min old";
    return (s / 3600).toFixed(1) + " h old";
  }

  async function rank(items, topK) {
    const body = `{"user_id":${Client.id(who)},"candidates":[${items.map(Client.id).join(",")}],` +
      `"top_k":${topK},"request_id":"${requestId()}"}`;
    const r = await Client.post("/v1/rank", body);
    return { rid: r.request_id, items: r.items.map((it) => ({ id: String(it.item_id), score: it.score })) };
  }

  function renderFeed(before, clicked) {
    const ol = $("feed");
    ol.innerHTML = "";
    const was = new Map((before ? before.items : []).map((it, i) => [it.id, { pos: i, score: it.score }]));
    const ages = new Map(cands.map((c) => [String(c.item_id), c.age_s]));
    const top = Math.max(...feed.items.map((it) => it.score), 1e-9);
    feed.items.forEach((it, i) => {
      const li = document.createElement("li");
      li.dataset.item = it.id;
      li.dataset.pos = String(i);
      const pos = document.createElement("span");
      pos.className = "pos";
      pos.textContent = String(i + 1);
      const item = document.createElement("span");
      item.className = "item";
      item.textContent = "item " + short(it.id);
      const sub = document.createElement("small");
      sub.textContent = age(ages.get(it.id));
      item.appendChild(sub);
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = ((100 * it.score) / top).toFixed(1) + "%";
      bar.appendChild(fill);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = pct(it.score);
      if (before) {
        const w = was.get(it.id);
        const move = document.createElement("small");
        if (!w) {
          move.textContent = "new";
          move.className = "up";
        } else if (w.pos !== i) {
          move.textContent = (w.pos > i ? "▲" : "▼") + Math.abs(w.pos - i);
          move.className = w.pos > i ? "up" : "down";
        } else {
          const d = it.score - w.score;
          move.textContent = Math.abs(d) < 5e-5 ? "=" : (d > 0 ? "+" : "−") + (100 * Math.abs(d)).toFixed(2);
          move.className = d > 0 ? "up" : d < 0 ? "down" : "muted";
        }
        score.appendChild(move);
      }
      li.append(pos, item, bar, score);
      if (it.id === clicked) li.classList.add("clicked");
      else if (before && (!was.has(it.id) || was.get(it.id).pos !== i)) li.classList.add("flash");
      li.addEventListener("click", () => onClick(it.id, i));
      ol.appendChild(li);
    });
    setTimeout(() => ol.querySelectorAll(".flash").forEach((li) => li.classList.remove("flash")), 900);
  }

  function say(html) {
    $("click-status").innerHTML = html;
  }

  function renderClicks() {
    const done = results.filter((r) => r.reorder_s !== undefined);
    if (!done.length) return;
    const xs = done.map((r) => r.reorder_s).sort((a, b) => a - b);
    const med = xs[Math.floor((xs.length - 1) / 2)];
    $("clicks").textContent = `${done.length} click${done.length > 1 ? "s" : ""}: click → reordered feed ` +
      done.slice(-8).map((r) => r.reorder_s.toFixed(2) + " s").join(", ") + ` · median ${med.toFixed(2)} s`;
  }

  async function showFeed(before) {
    feed = await rank(cands.map((c) => c.item_id), TOP);
    renderFeed(before, null);
  }

  async function newCandidates() {
    const r = await Client.get("/demo/candidates?n=" + CANDIDATES);
    cands = r.items;
    await showFeed(null);
  }

  async function onClick(id, pos) {
    if (busy || !feed) return;
    busy = true;
    $("feed").classList.add("busy");
    $("feed").querySelectorAll("li")[pos].classList.add("clicked");
    const before = feed;
    const t0 = performance.now();
    const since = () => (performance.now() - t0) / 1000;
    const rec = { item: id, from_pos: pos, user: who === me ? "new" : "simulated" };
    results.push(rec);
    try {
      const imp = await rank([id], 1); // the clicked item, served at the click's data time
      const action = imp.rid + ":0";
      await Client.post("/v1/actions", `{"actions":[{"request_id":"${action}","action":"click"}]}`);
      const asked = since();
      say(`Clicked item <b>${short(id)}</b>: sent to /v1/actions …`);
      let st;
      for (;;) {
        st = await Client.get("/demo/click?request_id=" + encodeURIComponent(action));
        const at = (x) => (x === null ? "…" : (asked + x).toFixed(2) + " s");
        say(`Clicked item <b>${short(id)}</b>: joined ${at(st.joined_s)} · trained ${at(st.trained_s)} · ` +
          `served ${at(st.served_s)}`);
        if (st.served_s !== null) break;
        if (since() > 30) throw new Error("the served model did not learn from the click within 30 s");
        await sleep(100);
      }
      const after = await rank(cands.map((c) => c.item_id), TOP);
      const took = since();
      feed = after;
      const order = (f) => f.items.map((it) => it.id).join(",");
      const scoreOf = (f) => (f.items.find((it) => it.id === id) || { score: null }).score;
      const to = after.items.findIndex((it) => it.id === id);
      Object.assign(rec, {
        joined_s: asked + st.joined_s,
        trained_s: asked + st.trained_s,
        served_s: asked + st.served_s,
        reorder_s: took,
        to_pos: to,
        score_before: scoreOf(before),
        score_after: scoreOf(after),
        changed: order(after) !== order(before) || scoreOf(after) !== scoreOf(before),
      });
      renderFeed(before, id);
      const moved = to < 0 ? "left the top " + TOP : to < pos ? `▲ up ${pos - to} to #${to + 1}` :
        to > pos ? `▼ down ${to - pos} to #${to + 1}` : `stayed #${to + 1}`;
      const sc = rec.score_after === null ? "" : `, score ${pct(rec.score_before)} → ${pct(rec.score_after)}`;
      say(`Clicked item <b>${short(id)}</b>: joined ${rec.joined_s.toFixed(2)} s · trained ${rec.trained_s.toFixed(2)} s · ` +
        `served ${rec.served_s.toFixed(2)} s · <b>feed reordered after ${took.toFixed(2)} s</b>: it ${moved}${sc}.`);
      renderClicks();
    } catch (e) {
      rec.error = e.message;
      say(`<span class="bad">Click failed: ${e.message.replace(/</g, "&lt;")}</span>`);
    } finally {
      busy = false;
      $("feed").classList.remove("busy");
    }
  }

  function fillUsers(users) {
    const sel = $("who");
    const opt = (value, text) => {
      const o = document.createElement("option");
      o.value = value;
      o.textContent = text;
      sel.appendChild(o);
    };
    opt(me, `you (a new user, ${short(me)})`);
    users.forEach((u) => opt(u, `simulated user ${short(u)}`));
    sel.addEventListener("change", async () => {
      who = sel.value;
      await showFeed(null);
    });
  }

  function draw(st) {
    const last = samples[samples.length - 1];
    if (last) {
      $("t-auc").innerHTML = `${fmt(last.auc_online)} <small>/ ${fmt(last.auc_frozen)}</small>`;
      $("t-fresh").innerHTML = `${fmt(last.freshness_p50_s, 2)} <small>/ ${fmt(last.freshness_p99_s, 2)} s</small>`;
      $("t-events").innerHTML = `${fmt(last.events_per_s)} <small>/s</small>`;
      $("t-version").textContent = String(last.model_version);
      $("t-examples").textContent = fmt(last.examples);
    }
    if (st.data_ts !== null) {
      const d = new Date(st.data_ts * 1000);
      $("t-data").innerHTML = `${d.toISOString().slice(11, 16)} <small>${st.speedup}× wall</small>`;
    }
    const pick = (f) => samples.map((s) => [s.wall_s, f(s)]);
    const xo = { label: "seconds of the demo (wall)" };
    Charts.line($("c-auc"), {
      series: [
        { name: "online (freshrec)", color: COLORS[0], points: pick((s) => s.auc_online) },
        { name: "frozen batch model", color: COLORS[1], dash: "5 3", points: pick((s) => s.auc_frozen) },
      ], x: xo,
    });
    const f = st.freshness;
    Charts.bars($("c-fresh"), {
      edges: f.edges, counts: f.counts, x: { label: "seconds" },
      marks: f.n ? [{ at: f.p50, label: "p50 " + fmt(f.p50, 2), color: COLORS[2] },
        { at: f.p99, label: "p99 " + fmt(f.p99, 2), color: COLORS[4] }] : [],
    });
    Charts.line($("c-events"), { series: [{ name: "events/s", color: COLORS[0], points: pick((s) => s.events_per_s) }], x: xo, y: { min: 0 } });
    const names = last ? Object.keys(last.rows) : [];
    Charts.line($("c-rows"), {
      series: names.map((n, i) => ({ name: n, color: COLORS[i % COLORS.length], points: pick((s) => s.rows[n] ?? null) })),
      x: xo, y: { min: 0 },
    });
    Charts.line($("c-evict"), { series: [{ name: "rows evicted", color: COLORS[4], points: pick((s) => s.evictions) }], x: xo, y: { min: 0 } });
    Charts.line($("c-version"), { series: [{ name: "version", color: COLORS[3], points: pick((s) => s.model_version) }], x: xo });
  }

  async function tick() {
    try {
      const st = await Client.get("/demo/state?since=" + next);
      samples.push(...st.samples);
      next = st.next;
      if (!started) {
        started = true;
        window.freshrecFirstData = performance.now();
        fillUsers(st.users);
        $("shuffle").addEventListener("click", () => newCandidates());
        $("refresh").addEventListener("click", () => showFeed(feed));
        newCandidates();
      }
      const left = Math.max(0, st.minutes * 60 - (samples.length ? samples[samples.length - 1].wall_s : 0));
      $("status").className = "status";
      $("status").textContent = st.done ? "the demo has finished" :
        `${st.data} data · sync every ${st.sync_interval_s} s · ${Math.round(left)} s left`;
      draw(st);
    } catch (e) {
      $("status").className = "status bad";
      $("status").textContent = started ? "the demo has ended (its server stopped)" : "cannot reach the demo: " + e.message;
    }
  }

  setInterval(tick, 1000);
  tick();
})();
