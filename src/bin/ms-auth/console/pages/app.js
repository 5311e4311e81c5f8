// The console's core: the API client (session, CSRF header), DOM helpers, the confirmation dialog,
// the once-shown key panel, formatting and the hash router. Pages are in keys.js and pages.js.
// Every text from the store goes into the page through textContent, never as HTML.
"use strict";

const DAY_MS = 86400000;
const MS = { session: null, routes: {}, timers: [] };

// `signal`: an AbortSignal that cancels the request (and rejects), or null.
async function api(method, path, body, signal) {
  const opts = { method, credentials: "same-origin", headers: {}, signal };
  if (method !== "GET") {
    opts.headers["X-CSRF-Token"] = MS.session ? MS.session.csrf : "";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body || {});
  }
  const res = await fetch("/api/v1/" + path, opts);
  if (res.status === 401) {
    location.href = "/login";
    throw new Error("session ended");
  }
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : "HTTP " + res.status);
  return data;
}

// Children as the DOM takes them: arrays flattened, text as text nodes, and null, undefined and false
// (an optional part left out) dropped, never printed as "null" or "[object HTMLFormElement],...".
function nodes(children) {
  return children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
}

// el("tag", {attr: value, onclick: fn}, child, "text", [child, ...], ...)
function el(tag, attrs, ...children) {
  const svg = ["svg", "g", "rect", "line", "text", "title", "path"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...nodes(children));
  return node;
}

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "never";
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function fmtQuota(k) {
  if (!k.quota) return "none";
  const used = k.quota_used === null || k.quota_used === undefined ? "?" : k.quota_used;
  return used + " / " + k.quota.limit + " " + k.quota.period;
}

function fmtRate(r) {
  if (!r) return "none";
  const w = { 1000: "s", 60000: "min", 3600000: "hour", 86400000: "day" }[r.window_ms] || r.window_ms + " ms";
  return r.limit + "/" + w + (r.burst !== r.limit ? " (burst " + r.burst + ")" : "");
}

function stateBadge(state) {
  return el("span", { class: "badge state-" + state }, state);
}

function notice(text, kind) {
  const b = document.getElementById("banner");
  b.className = kind || "ok";
  b.textContent = text;
  clearTimeout(MS.bannerTimer);
  MS.bannerTimer = setTimeout(() => b.classList.add("hidden"), 6000);
}

// Resolves to true when the user confirms `text` in the modal dialog.
function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const yes = document.getElementById("confirm-yes");
    const no = document.getElementById("confirm-no");
    const done = (answer) => {
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      dialog.close();
      resolve(answer);
    };
    const onYes = () => done(true);
    const onNo = () => done(false);
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    dialog.showModal();
  });
}

// The plaintext of a created or rotated key: shown in this panel once, kept nowhere (not in the URL,
// not in storage); navigating away drops it.
function shownOnce(created, what) {
  const code = el("code", { id: "plaintext" }, created.key);
  const copy = el("button", { id: "copy", onclick: async () => {
    try {
      await navigator.clipboard.writeText(created.key);
      copy.textContent = "Copied";
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      copy.textContent = "Selected: press Ctrl+C";
    }
  } }, "Copy");
  return el("section", { id: "shown-key", class: "shown-once" },
    el("h3", {}, what + ": shown once"),
    el("p", {}, "Give this key to the customer now. The store keeps only its digest; it cannot be shown again."),
    el("div", { class: "secret" }, code, copy),
    el("p", {}, el("a", { href: "#/keys/" + encodeURIComponent(created.id) }, "Open key " + created.id)));
}

// A form field row: label + input.
function field(label, input) {
  return el("label", { class: "field" }, el("span", {}, label), input);
}

function numberOrNull(v) {
  if (v === "" || v === null || v === undefined) return null;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(v + " is not a whole number");
  return n;
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "empty" }, "nothing"))));
}

function auditTable(events, id) {
  return table(["time", "actor", "action", "key", "detail"], events.slice().reverse().map((e) => el("tr", {},
    el("td", {}, fmtTime(e.at_ms)), el("td", {}, e.actor), el("td", {}, e.action),
    el("td", {}, e.key_id ? el("a", { href: "#/keys/" + encodeURIComponent(e.key_id) }, e.key_id) : "-"),
    el("td", { class: "detail" }, fmtDetail(e.detail)))), { id });
}

// An audit event's detail as "field: value" pairs; a field set to nothing (no plan, a limit removed)
// reads "none" rather than JSON's null.
function fmtDetail(detail) {
  if (detail === null || detail === undefined) return "-";
  if (typeof detail !== "object" || Array.isArray(detail)) return JSON.stringify(detail);
  const value = (v) => (v === null ? "none" : typeof v === "string" ? v : JSON.stringify(v));
  return Object.entries(detail).map(([k, v]) => k + ": " + value(v)).join(" · ") || "-";
}

// Replaces the page's content; takes children as el() does.
function render(...children) {
  document.getElementById("main").replaceChildren(...nodes(children));
}

// A button that runs `action` and shows its error in the banner.
function actionButton(label, attrs, action) {
  return el("button", Object.assign({}, attrs, { onclick: async (ev) => {
    ev.preventDefault();
    try { await action(); } catch (e) { notice(e.message, "error"); }
  } }), label);
}

async function route() {
  MS.timers.forEach(clearInterval);
  MS.timers = [];
  const hash = location.hash.replace(/^#\/?/, "") || "overview";
  const [page, ...rest] = hash.split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
  const show = MS.routes[page] || MS.routes.overview;
  try {
    await show(...rest.map(decodeURIComponent));
  } catch (e) {
    render(el("p", { class: "error" }, e.message));
  }
}

async function start() {
  MS.session = await api("GET", "session");
  document.getElementById("who").textContent =
    "console:" + MS.session.user + (MS.session.read_only ? " · read-only" : "");
  document.body.classList.toggle("read-only", MS.session.read_only);
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "../../logout");
    location.href = "/login";
  });
  window.addEventListener("hashchange", route);
  route();
}
