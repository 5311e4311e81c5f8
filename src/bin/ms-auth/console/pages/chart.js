// A stacked bar chart in SVG, one bar a day: admitted at the bottom, then each reason of refusal.
// Small on purpose (no library): the console must work offline and under a CSP without inline code.
"use strict";

const SERIES = [
  ["admitted", "admitted", (d) => d.admitted],
  ["rate_limit_exceeded", "rate limited", (d) => d.rejected.rate_limit_exceeded],
  ["api_key_quota_exceeded", "quota exceeded", (d) => d.rejected.api_key_quota_exceeded],
  ["api_key_revoked", "revoked", (d) => d.rejected.api_key_revoked],
  ["api_key_expired", "expired", (d) => d.rejected.api_key_expired],
];

// days: [{date, admitted, rejected: {...}}] as the API gives them. Returns an element.
function usageChart(days, id) {
  const W = 760, H = 240, left = 48, bottom = 24, top = 10;
  const plotW = W - left - 8, plotH = H - bottom - top;
  const totals = days.map((d) => SERIES.reduce((s, [, , get]) => s + get(d), 0));
  const max = Math.max(1, ...totals);
  const step = niceStep(max);
  const yMax = Math.ceil(max / step) * step;
  const y = (v) => top + plotH - (v / yMax) * plotH;
  const slot = plotW / days.length;
  const barW = Math.min(36, Math.max(1, slot * 0.8));
  const svg = el("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", id, role: "img",
    "aria-label": "requests per day, admitted and refused by reason" });
  for (let v = 0; v <= yMax; v += step) {
    svg.append(el("line", { x1: left, x2: W - 8, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(v)));
  }
  const every = Math.ceil(days.length / 10);
  days.forEach((d, i) => {
    const x = left + i * slot + (slot - barW) / 2;
    let base = 0;
    const g = el("g", { class: "day", "data-date": d.date });
    for (const [key, label, get] of SERIES) {
      const n = get(d);
      if (n > 0) {
        g.append(el("rect", { x, width: barW, y: y(base + n), height: y(base) - y(base + n), class: "bar bar-" + key },
          el("title", {}, d.date + ": " + n + " " + label)));
      }
      base += n;
    }
    svg.append(g);
    if (i % every === 0) {
      svg.append(el("text", { x: x + barW / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, d.date.slice(5)));
    }
  });
  const legend = el("div", { class: "legend" }, SERIES.map(([key, label]) =>
    el("span", {}, el("i", { class: "swatch bar-" + key }), label)));
  const sum = (get) => days.reduce((s, d) => s + get(d), 0);
  const figures = el("div", { class: "chart-totals" }, SERIES.map(([key, label, get]) =>
    el("span", { "data-series": key }, label + ": " + sum(get))));
  return el("div", { class: "chart-box" }, svg, legend, figures);
}

// 1, 2 or 5 times a power of ten, for about five grid lines.
function niceStep(max) {
  const raw = max / 5;
  const pow = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return Math.max(1, m * pow);
  return pow * 10;
}

// Buttons for 7, 30 and 90 days; `load(days)` draws.
function rangeButtons(current, load) {
  return el("div", { class: "range" }, [7, 30, 90].map((d) =>
    el("button", { class: d === current ? "active" : "quiet", "data-days": d, onclick: () => load(d) }, d + " d")));
}
