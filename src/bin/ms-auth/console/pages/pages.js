// The store-wide pages: overview, plans and policies, audit log. Loaded last: starts the console.
"use strict";

MS.routes.overview = async () => {
  const chart = el("div", { id: "overview-usage" });
  const load = async (days) => {
    const o = await api("GET", "overview?days=" + days);
    chart.replaceChildren(rangeButtons(days, load), usageChart(o.days, "overview-chart"));
    return o;
  };
  const o = await load(30);
  const s = o.keys_by_state;
  const brief = (rows, extra) => table(["key", "name", "plan", extra[0]], rows.map((k) => el("tr", {},
    el("td", {}, el("a", { href: "#/keys/" + encodeURIComponent(k.id) }, el("code", {}, k.prefix))),
    el("td", {}, k.name || ""), el("td", {}, k.plan || ""), el("td", {}, extra[1](k)))));
  render(el("h2", {}, "Overview"),
    el("div", { class: "cards", id: "states" }, ["active", "expiring", "rotating", "expired", "revoked"].map((st) =>
      el("a", { class: "card", href: "#/keys" }, el("h4", {}, st), el("p", { class: "big", "data-state": st }, String(s[st]))))),
    el("h3", {}, "Checks by decision, whole store"), chart,
    el("div", { class: "columns" },
      el("section", {}, el("h3", {}, "Top keys by use"), brief(o.top_keys, ["requests", (k) => String(k.total)])),
      el("section", {}, el("h3", {}, "Near their quota (80 %+)"), brief(o.near_quota, ["quota", fmtQuota])),
      el("section", {}, el("h3", {}, "Expiring within 30 days"), brief(o.expiring_soon, ["expires", (k) => fmtTime(k.expires_at_ms)]))));
};

MS.routes.plans = async () => {
  const [plans, policies] = await Promise.all([api("GET", "plans"), api("GET", "policies")]);
  const planForm = (p) => {
    const f = (name, value, attrs) => el("input", Object.assign({ name, value: value === null || value === undefined ? "" : value }, attrs || {}));
    const name = f("name", p ? p.name : "", p ? { readonly: true } : { required: true, maxlength: 63 });
    const quota = f("quota", p && p.quota ? p.quota.limit : "", { type: "number", min: 1, placeholder: "none" });
    const period = el("select", { name: "period" }, ["daily", "monthly"].map((x) =>
      el("option", { value: x, selected: p && p.quota && p.quota.period === x }, x)));
    const rate = f("rate", p && p.rate_limit ? p.rate_limit.limit : 60, { type: "number", min: 1 });
    const win = el("select", { name: "window" }, [["1000", "per second"], ["60000", "per minute"], ["3600000", "per hour"]].map(([v, t]) =>
      el("option", { value: v, selected: p && p.rate_limit ? String(p.rate_limit.window_ms) === v : v === "60000" }, t)));
    const burst = f("burst", p && p.rate_limit ? p.rate_limit.burst : "", { type: "number", min: 1, placeholder: "= rate" });
    const life = f("lifetime", p && p.lifetime_ms ? p.lifetime_ms / DAY_MS : "", { type: "number", min: 1, placeholder: "store default" });
    const form = el("form", { class: "plan-form row change", "data-plan": p ? p.name : "" },
      field("Plan", name), field("Quota", quota), field("per", period), field("Rate", rate), field("", win),
      field("Burst", burst), field("Lifetime (days)", life), el("button", { type: "submit" }, p ? "Save" : "Add plan"));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const body = { quota: null, rate_limit: { limit: numberOrNull(rate.value), window_ms: Number(win.value) } };
        if (numberOrNull(quota.value) !== null) body.quota = { limit: numberOrNull(quota.value), period: period.value };
        if (numberOrNull(burst.value) !== null) body.rate_limit.burst = numberOrNull(burst.value);
        const days = numberOrNull(life.value);
        body.lifetime_ms = days === null ? null : days * DAY_MS;
        if (!(await confirmAction("Save plan " + name.value + "? Its keys without limits of their own follow it from their next request."))) return;
        await api("PUT", "plans/" + encodeURIComponent(name.value), body);
        notice("Plan " + name.value + " saved.");
        route();
      } catch (e) {
        notice(e.message, "error");
      }
    });
    return form;
  };
  const rows = plans.plans.map((p) => el("tr", { "data-plan": p.name }, el("td", {}, p.name),
    el("td", {}, p.quota ? p.quota.limit + " " + p.quota.period : "none"), el("td", {}, fmtRate(p.rate_limit)),
    el("td", {}, p.lifetime_ms ? p.lifetime_ms / DAY_MS + " d" : "default"),
    el("td", {}, el("a", { href: "#/keys" }, String(p.keys))), el("td", {}, fmtTime(p.updated_at_ms))));
  const idle = el("input", { id: "idle-days", type: "number", min: 1, value: policies.idle ? policies.idle.days : "", placeholder: "off" });
  const abuseN = el("input", { id: "abuse-limit", type: "number", min: 1, value: policies.abuse ? policies.abuse.limit : "", placeholder: "off" });
  const abuseW = el("input", { id: "abuse-window", type: "number", min: 1, value: policies.abuse ? policies.abuse.window_ms / 60000 : "", placeholder: "minutes" });
  const policyForm = el("form", { id: "policy-form", class: "row change" }, field("Revoke keys idle for (days)", idle),
    field("Revoke keys rate-limited more than", abuseN), field("times within (minutes)", abuseW),
    el("button", { type: "submit" }, "Save policies"));
  policyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const d = numberOrNull(idle.value), n = numberOrNull(abuseN.value), w = numberOrNull(abuseW.value);
      const body = { idle: d === null ? null : { days: d }, abuse: n === null ? null : { limit: n, window_ms: (w || 10) * 60000 } };
      if (!(await confirmAction("Change the store-wide policies? Every server applies them from its next request."))) return;
      await api("PUT", "policies", body);
      notice("Policies saved.");
      route();
    } catch (e) {
      notice(e.message, "error");
    }
  });
  render(el("h2", {}, "Plans"),
    table(["plan", "quota", "rate limit", "lifetime", "keys", "updated"], rows, { id: "plans-table" }),
    el("h3", { class: "change" }, "Edit plans"), plans.plans.map(planForm), planForm(null),
    el("h2", {}, "Policies"),
    el("p", {}, "Idle: ", policies.idle ? policies.idle.days + " days" : "off", " · Abuse: ",
      policies.abuse ? policies.abuse.limit + " rate-limited requests within " + policies.abuse.window_ms / 60000 + " min" : "off",
      " · Rotated keys: revoked at the end of their grace, always."),
    policyForm);
};

MS.routes.audit = async () => {
  const inputs = {
    key: el("input", { id: "audit-key", placeholder: "key id" }),
    actor: el("input", { id: "audit-actor", placeholder: "actor, e.g. console:alice" }),
    action: el("input", { id: "audit-action", placeholder: "action, e.g. key.revoke" }),
    since: el("input", { id: "audit-since", type: "date" }),
    until: el("input", { id: "audit-until", type: "date" }),
  };
  const out = el("div", { id: "audit-list" });
  const csv = el("a", { id: "audit-csv", class: "button", href: "/api/v1/audit.csv", download: "audit.csv" }, "Export CSV");
  const query = () => {
    const p = new URLSearchParams();
    for (const k of ["key", "actor", "action"]) if (inputs[k].value) p.set(k, inputs[k].value);
    if (inputs.since.value) p.set("since", String(Date.parse(inputs.since.value + "T00:00:00Z")));
    if (inputs.until.value) p.set("until", String(Date.parse(inputs.until.value + "T00:00:00Z") + DAY_MS - 1));
    return p.toString();
  };
  const load = async () => {
    const q = query();
    const events = (await api("GET", "audit?" + q)).events;
    csv.setAttribute("href", "/api/v1/audit.csv?" + q);
    out.replaceChildren(el("p", { class: "count" }, events.length + " changes (latest first)"), auditTable(events, "audit-table"));
  };
  for (const i of Object.values(inputs)) i.addEventListener("change", load);
  render(el("h2", {}, "Audit log"), el("div", { class: "filters" }, Object.values(inputs), csv), out);
  await load();
};

start();
