// The key pages: the searchable, sortable list with its filters and the create form, and one key's
// page (record, live figures, usage chart, audit trail, update / rotate / revoke).
"use strict";

const COLUMNS = [
  ["prefix", (k) => k.prefix], ["name", (k) => k.name || ""], ["plan", (k) => k.plan || ""],
  ["env", (k) => k.env], ["state", (k) => k.state], ["expires", (k) => k.expires_at_ms || Infinity],
  ["quota", (k) => (k.quota ? (k.quota_used || 0) / k.quota.limit : -1)],
  ["rate", (k) => (k.rate_limit ? k.rate_limit.limit * 60000 / k.rate_limit.window_ms : -1)],
  ["last used", (k) => k.usage.last_used_at_ms || 0],
];

// How long the search box waits for typing to pause before it asks.
const SEARCH_PAUSE_MS = 200;

MS.routes.keys = async (id) => {
  if (id) return keyPage(id);
  const plans = (await api("GET", "plans")).plans;
  const q = el("input", { id: "search", type: "search", placeholder: "id, prefix, name or plan" });
  const plan = el("select", { id: "filter-plan" }, el("option", { value: "" }, "any plan"),
    plans.map((p) => el("option", { value: p.name }, p.name)));
  const state = el("select", { id: "filter-state" }, ["", "active", "expiring", "rotating", "expired", "revoked"].map((s) =>
    el("option", { value: s }, s || "any state")));
  const expiring = el("input", { id: "filter-expiring", type: "checkbox" });
  const list = el("div", { id: "key-list" });
  let sort = { col: 0, dir: 1 };
  let keys = [];
  const draw = () => {
    const get = COLUMNS[sort.col][1];
    const sorted = keys.slice().sort((a, b) => (get(a) < get(b) ? -1 : get(a) > get(b) ? 1 : 0) * sort.dir);
    const head = COLUMNS.map(([name], i) => el("th", { class: "sortable", onclick: () => {
      sort = { col: i, dir: sort.col === i ? -sort.dir : 1 };
      draw();
    } }, name + (sort.col === i ? (sort.dir > 0 ? " ▲" : " ▼") : "")));
    const rows = sorted.map((k) => el("tr", { "data-id": k.id },
      el("td", {}, el("a", { href: "#/keys/" + encodeURIComponent(k.id) }, el("code", {}, k.prefix))),
      el("td", {}, k.name || ""), el("td", {}, k.plan || ""), el("td", {}, k.env), el("td", {}, stateBadge(k.state)),
      el("td", {}, fmtTime(k.expires_at_ms)), el("td", {}, fmtQuota(k)), el("td", {}, fmtRate(k.rate_limit)),
      el("td", {}, fmtTime(k.usage.last_used_at_ms))));
    list.replaceChildren(el("p", { class: "count" }, keys.length + " keys"),
      el("table", { id: "keys-table" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows)));
  };
  // Only the newest request's answer is drawn: a new one aborts the one before, whose answer (a short
  // prefix matches many keys, so it can come last) would otherwise replace the right one.
  let latest = null;
  const load = async () => {
    const params = new URLSearchParams();
    if (q.value) params.set("q", q.value);
    if (plan.value) params.set("plan", plan.value);
    if (state.value) params.set("state", state.value);
    if (expiring.checked) params.set("expiring_days", "30");
    if (latest) latest.abort();
    const mine = (latest = new AbortController());
    const answer = await api("GET", "keys?" + params, null, mine.signal)
      .catch((e) => (mine.signal.aborted ? null : Promise.reject(e)));
    if (mine.signal.aborted) return;
    keys = answer.keys;
    draw();
  };
  const reload = () => load().catch((e) => notice(e.message, "error"));
  // The search asks once typing pauses, not once a keystroke.
  let typing = null;
  q.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(reload, SEARCH_PAUSE_MS);
  });
  for (const input of [plan, state, expiring]) input.addEventListener("input", reload);
  const created = el("div", { id: "created" });
  const createForm = keyForm(plans, null, async (body) => {
    if (!(await confirmAction("Create a " + (body.env || "live") + " key" + (body.name ? " named " + body.name : "") + "?"))) return;
    const k = await api("POST", "keys", body);
    // The next key starts from the defaults, not from this one's values.
    createForm.reset();
    created.replaceChildren(shownOnce(k, "New key " + k.prefix));
    document.getElementById("create").open = false;
    await load();
  });
  render(el("h2", {}, "Keys"),
    el("div", { class: "filters" }, q, plan, state, el("label", {}, expiring, " expiring within 30 d")),
    el("details", { class: "change", id: "create" }, el("summary", { id: "new-key" }, "New key"), createForm),
    created, list);
  await load();
};

// The create and update form. `key`: the record to update (null: create). `submit(body)` gets the
// spec or patch as the API takes it.
function keyForm(plans, key, submit) {
  const creating = key === null;
  const input = (name, attrs) => el("input", Object.assign({ name }, attrs));
  const name = input("name", { value: key ? key.name || "" : "" });
  const plan = input("plan", { value: key ? key.plan || "" : "", list: "plan-names" });
  const env = el("select", { name: "env" }, el("option", { value: "live" }, "live"), el("option", { value: "test" }, "test"));
  const expires = input("expires_days", { type: "number", min: 1, placeholder: creating ? "plan or store default" : "unchanged" });
  const quota = input("quota_limit", { type: "number", min: 1, placeholder: key && key.quota ? String(key.quota.limit) : "none",
    value: key && key.quota ? key.quota.limit : "" });
  const period = el("select", { name: "quota_period" }, ["daily", "monthly"].map((p) =>
    el("option", { value: p, selected: key && key.quota && key.quota.period === p }, p)));
  const rate = input("rate_limit", { type: "number", min: 1, value: key && key.rate_limit ? key.rate_limit.limit : "",
    placeholder: "default 60" });
  const windowSel = el("select", { name: "rate_window" }, [["1000", "per second"], ["60000", "per minute"], ["3600000", "per hour"]]
    .map(([v, t]) => el("option", { value: v, selected: key && key.rate_limit ? String(key.rate_limit.window_ms) === v : v === "60000" }, t)));
  const burst = input("burst", { type: "number", min: 1, value: key && key.rate_limit ? key.rate_limit.burst : "",
    placeholder: "= rate" });
  const form = el("form", { class: "key-form", id: creating ? "create-form" : "update-form" },
    el("datalist", { id: "plan-names" }, plans.map((p) => el("option", { value: p.name }))),
    field("Name", name), field("Plan", plan), creating ? field("Environment", env) : null,
    field("Expires in (days)", expires),
    el("div", { class: "row" }, field("Quota", quota), field("per", period)),
    el("div", { class: "row" }, field("Rate limit", rate), field("", windowSel), field("Burst", burst)),
    el("button", { type: "submit" }, creating ? "Create key" : "Save changes"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const body = {};
      if (creating || name.value !== (key.name || "")) body.name = name.value || null;
      if (creating || plan.value !== (key.plan || "")) body.plan = plan.value || null;
      if (creating) body.env = env.value;
      const days = numberOrNull(expires.value);
      if (days !== null) body.expires_at_ms = Date.now() + days * DAY_MS;
      // An update sends only the limits that changed: resending a plan's limit would detach the key
      // from its plan.
      const q = numberOrNull(quota.value);
      const kq = creating ? null : key.quota;
      if (q !== null && (!kq || kq.limit !== q || kq.period !== period.value)) body.quota = { limit: q, period: period.value };
      else if (q === null && kq) body.quota = null;
      const r = numberOrNull(rate.value);
      const b = numberOrNull(burst.value);
      const kr = creating ? null : key.rate_limit;
      if (r !== null && (!kr || kr.limit !== r || kr.window_ms !== Number(windowSel.value) || (b !== null && kr.burst !== b))) {
        body.rate_limit = { limit: r, window_ms: Number(windowSel.value) };
        if (b !== null) body.rate_limit.burst = b;
      } else if (r === null && kr && !creating) body.rate_limit = null;
      await submit(body);
    } catch (e) {
      notice(e.message, "error");
    }
  });
  return form;
}

async function keyPage(id) {
  const [k, plans] = await Promise.all([api("GET", "keys/" + encodeURIComponent(id)), api("GET", "plans")]);
  const live = el("div", { id: "live", class: "cards" });
  const drawLive = (k) => {
    const share = k.quota ? Math.min(100, Math.round((100 * (k.quota_used || 0)) / k.quota.limit)) : null;
    live.replaceChildren(
      el("div", { class: "card" }, el("h4", {}, "Quota"), el("p", { class: "big", id: "live-quota" }, fmtQuota(k)),
        share === null ? null : el("progress", { max: 100, value: share })),
      el("div", { class: "card" }, el("h4", {}, "Rate limit"), el("p", { class: "big" }, fmtRate(k.rate_limit))),
      el("div", { class: "card" }, el("h4", {}, "Requests counted"), el("p", { class: "big", id: "live-total" }, String(k.usage.total))),
      el("div", { class: "card" }, el("h4", {}, "Last used"), el("p", { class: "big" }, fmtTime(k.usage.last_used_at_ms))));
  };
  drawLive(k);
  // The live figures come from the shared counters: refresh them while the page is open.
  MS.timers.push(setInterval(async () => drawLive(await api("GET", "keys/" + encodeURIComponent(id))), 5000));
  const chart = el("div", { id: "usage" });
  const loadChart = async (days) => {
    const h = await api("GET", "keys/" + encodeURIComponent(id) + "/usage?days=" + days);
    chart.replaceChildren(rangeButtons(days, loadChart), usageChart(h.days, "usage-chart"));
  };
  const audit = (await api("GET", "keys/" + encodeURIComponent(id) + "/audit")).events;
  const record = table(["field", "value"], [
    ["id", k.id], ["prefix", k.prefix], ["name", k.name || "-"], ["plan", k.plan || "-"], ["env", k.env],
    ["state", stateBadge(k.state)], ["created", fmtTime(k.created_at_ms)], ["expires", fmtTime(k.expires_at_ms)],
    ["revoked", k.revoked_at_ms ? fmtTime(k.revoked_at_ms) + (k.revoked_reason ? " (" + k.revoked_reason + ")" : "") : "no"],
    ["revoked at grace end", k.revoke_at_ms ? fmtTime(k.revoke_at_ms) : "-"],
    ["rotated from", k.rotated_from ? el("a", { href: "#/keys/" + k.rotated_from }, k.rotated_from) : "-"],
    ["rotated to", k.rotated_to ? el("a", { href: "#/keys/" + k.rotated_to }, k.rotated_to) : "-"],
    ["follows plan for", k.follows_plan.join(", ") || "-"], ["meta", JSON.stringify(k.meta)],
  ].map(([f, v]) => el("tr", {}, el("th", {}, f), el("td", {}, v))), { id: "record" });
  const out = el("div", { id: "action-result" });
  const reload = () => route();
  const changeable = !["revoked"].includes(k.state);
  const grace = el("input", { id: "grace-hours", type: "number", min: 0, value: 24 });
  const reason = el("input", { id: "revoke-reason", placeholder: "reason (default: manual)", maxlength: 256 });
  const actions = changeable ? el("section", { class: "change", id: "actions" }, el("h3", {}, "Actions"),
    el("details", {}, el("summary", {}, "Update limits, plan, expiry"),
      keyForm(plans.plans, k, async (body) => {
        if (!(await confirmAction("Save these changes to " + k.prefix + "?\n" + JSON.stringify(body)))) return;
        await api("PATCH", "keys/" + encodeURIComponent(id), body);
        notice("Saved.");
        reload();
      })),
    k.rotated_to ? null : el("div", { class: "row" }, field("Grace (hours)", grace),
      actionButton("Rotate", { id: "rotate" }, async () => {
        const hours = numberOrNull(grace.value) || 0;
        if (!(await confirmAction("Rotate " + k.prefix + "? The old key keeps working for " + hours + " h."))) return;
        const created = await api("POST", "keys/" + encodeURIComponent(id) + "/rotate", { grace_ms: hours * 3600000 });
        out.replaceChildren(shownOnce(created, "Replacement key " + created.prefix));
      })),
    el("div", { class: "row" }, field("Reason", reason),
      actionButton("Revoke", { id: "revoke", class: "danger" }, async () => {
        if (!(await confirmAction("Revoke " + k.prefix + "? Every server refuses it from its next request on."))) return;
        await api("POST", "keys/" + encodeURIComponent(id) + "/revoke", { reason: reason.value || null });
        notice("Revoked " + k.prefix + ".");
        reload();
      }))) : null;
  render(el("h2", {}, "Key ", el("code", {}, k.prefix), " ", k.name || "", " ", stateBadge(k.state)),
    out, live, el("h3", {}, "Usage per day"), chart, actions, el("h3", {}, "Record"), record,
    el("h3", {}, "Audit trail"), auditTable(audit, "key-audit"));
  await loadChart(30);
}
