"use strict";
// Small SVG charts for the live pages, no library: Charts.line (time series) and Charts.bars
// (a histogram). Each call redraws its element from the data given and sets the element's
// data-points attribute to the number of points drawn (the browser test reads it).
//
//   Charts.line(el, { series: [{ name: "online", color: "#2563eb", points: [[t, y], ...] }],
//                     x: { label: "wall seconds" }, y: { label: "AUC", min: 0.5 } });
//   Charts.bars(el, { edges: [0, 0.25, 0.5], counts: [3, 9], x: { label: "seconds" } });
//
// A point whose y is null (or NaN) breaks its line.
const Charts = (() => {
  const W = 480, H = 220, M = { l: 52, r: 12, t: 24, b: 34 };
  const PW = W - M.l - M.r, PH = H - M.t - M.b;

  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }

  // About n round-numbered ticks covering [lo, hi].
  function ticks(lo, hi, n) {
    const span = hi - lo;
    const raw = span / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const r = raw / mag;
    const step = (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10) * mag; // the round step nearest raw
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  // [lo, hi] of the values, widened to round ticks at the ends not fixed by the caller.
  function extent(values, lo, hi) {
    let a = lo ?? Infinity, b = hi ?? -Infinity;
    for (const v of values) {
      if (lo === undefined && v < a) a = v;
      if (hi === undefined && v > b) b = v;
    }
    if (!Number.isFinite(a) || !Number.isFinite(b)) return [0, 1];
    if (b <= a) {
      const pad = Math.abs(a) > 0 ? Math.abs(a) * 0.05 : 1;
      return [lo ?? a - pad, hi ?? b + pad];
    }
    const t = ticks(a, b, 4);
    const step = t.length > 1 ? t[1] - t[0] : (b - a);
    if (lo === undefined) a = Math.floor(a / step + 1e-9) * step;
    if (hi === undefined) b = Math.ceil(b / step - 1e-9) * step;
    return [a, b];
  }

  function frame(xs, ys, opt, xfmt) {
    let s = "";
    for (const v of ticks(ys[0], ys[1], 4)) {
      const y = M.t + PH - ((v - ys[0]) / (ys[1] - ys[0])) * PH;
      s += `<line class="grid" x1="${M.l}" x2="${M.l + PW}" y1="${y}" y2="${y}"/>`;
      s += `<text x="${M.l - 6}" y="${y + 4}" text-anchor="end">${esc(fmt(v))}</text>`;
    }
    for (const v of ticks(xs[0], xs[1], 5)) {
      const x = M.l + ((v - xs[0]) / (xs[1] - xs[0])) * PW;
      s += `<line class="axis" x1="${x}" x2="${x}" y1="${M.t + PH}" y2="${M.t + PH + 4}"/>`;
      s += `<text x="${x}" y="${M.t + PH + 16}" text-anchor="middle">${esc(xfmt(v))}</text>`;
    }
    s += `<line class="axis" x1="${M.l}" x2="${M.l + PW}" y1="${M.t + PH}" y2="${M.t + PH}"/>`;
    if (opt.x && opt.x.label) {
      s += `<text x="${M.l + PW}" y="${H - 4}" text-anchor="end">${esc(opt.x.label)}</text>`;
    }
    if (opt.y && opt.y.label) s += `<text x="${M.l}" y="12" text-anchor="start">${esc(opt.y.label)}</text>`;
    return s;
  }

  function empty(el, text) {
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img"><text class="empty" fill="#98a2b3" x="${W / 2}" y="${H / 2}" ` +
      `text-anchor="middle">${esc(text)}</text></svg>`;
    el.dataset.points = "0";
  }

  function line(el, opt) {
    const series = opt.series.filter((s) => s.points.length);
    const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
    if (!pts.length) return empty(el, opt.emptyText || "waiting for data…");
    const xs = extent(pts.map((p) => p[0]), opt.x && opt.x.min, opt.x && opt.x.max);
    const ys = extent(pts.map((p) => p[1]), opt.y && opt.y.min, opt.y && opt.y.max);
    const X = (v) => (M.l + ((v - xs[0]) / (xs[1] - xs[0])) * PW).toFixed(1);
    const Y = (v) => (M.t + PH - ((Math.min(Math.max(v, ys[0]), ys[1]) - ys[0]) / (ys[1] - ys[0])) * PH).toFixed(1);
    let s = frame(xs, ys, opt, (opt.x && opt.x.format) || fmt);
    let lx = M.l + 6;
    let legend = "";
    let hidden = 0;
    for (const ser of opt.series) {
      let d = "", pen = "M";
      for (const [x, y] of ser.points) {
        if (y === null || !Number.isFinite(y)) { pen = "M"; continue; }
        d += `${pen}${X(x)} ${Y(y)}`;
        pen = "L";
      }
      if (d) {
        const dash = ser.dash ? ` stroke-dasharray="${ser.dash}"` : "";
        s += `<path d="${d}" fill="none" stroke="${ser.color}" stroke-width="1.8"${dash} stroke-linejoin="round"/>`;
      }
      if (opt.series.length > 1 || ser.name) {
        const width = 24 + 6.5 * String(ser.name).length;
        if (lx + width > W - 40) {
          hidden += 1; // no room left on the legend's line
        } else {
          legend += `<rect x="${lx}" y="${M.t - 14}" width="10" height="3" fill="${ser.color}"/>` +
            `<text x="${lx + 14}" y="${M.t - 9}" fill="#1d2330">${esc(ser.name)}</text>`;
          lx += width;
        }
      }
    }
    if (hidden) legend += `<text x="${lx}" y="${M.t - 9}">+${hidden} more</text>`;
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img">${s}<g class="legend">${legend}</g></svg>`;
    el.dataset.points = String(pts.length);
  }

  function bars(el, opt) {
    const { edges, counts } = opt;
    const n = counts.reduce((a, b) => a + b, 0);
    if (!n) return empty(el, opt.emptyText || "waiting for data…");
    const xs = [edges[0], edges[edges.length - 1]];
    const ys = [0, Math.max(...counts) * 1.08];
    const X = (v) => M.l + ((v - xs[0]) / (xs[1] - xs[0])) * PW;
    let s = frame(xs, ys, opt, (opt.x && opt.x.format) || fmt);
    const color = opt.color || "#2563eb";
    counts.forEach((c, i) => {
      if (!c) return;
      const x0 = X(edges[i]), x1 = X(edges[i + 1]);
      const h = (c / ys[1]) * PH;
      s += `<rect x="${(x0 + 0.5).toFixed(1)}" y="${(M.t + PH - h).toFixed(1)}" width="${Math.max(1, x1 - x0 - 1).toFixed(1)}" ` +
        `height="${h.toFixed(1)}" fill="${color}" opacity="0.85"/>`;
    });
    for (const m of opt.marks || []) {
      const x = X(Math.min(Math.max(m.at, xs[0]), xs[1]));
      const right = x > M.l + PW - 60; // a label near the right edge goes on the line's left
      s += `<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${M.t}" y2="${M.t + PH}" stroke="${m.color}" stroke-dasharray="4 3"/>` +
        `<text x="${(right ? x - 4 : x + 4).toFixed(1)}" y="${M.t + 10}" text-anchor="${right ? "end" : "start"}" fill="${m.color}">${esc(m.label)}</text>`;
    }
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img">${s}</svg>`;
    el.dataset.points = String(n);
  }

  return { line, bars, ticks };
})();
