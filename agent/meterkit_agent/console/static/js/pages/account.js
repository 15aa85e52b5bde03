// An account: usage over time (GET .../usage), the bill preview (GET .../bills), caps
// (GET .../console/limits), notifications (GET .../notifications) and corrections
// (POST .../usage/query, the stored measurements that carry one).
import { api, ApiError } from "../api.js";
import { timeChart } from "../chart.js";
import { dec, esc, kindLabel, shown, when } from "../format.js";
import { capCells } from "./accounts.js";

const LOOKED_AT = 20000; // m3ter's usage query answers at most this many measurements

export async function render(el, ctx, account, params) {
  const { meters } = await api(`${ctx.base}/console/meters`, { from: ctx.from, to: ctx.to });
  const used = meters.filter((m) => !m.unused);
  const meter = params.get("meter") || (used[0] || meters[0] || {}).meter;
  const info = meters.find((m) => m.meter === meter) || { sums: {}, values: {} };
  const measure = params.get("measure") || "";
  const bucket = params.get("bucket") || "day";
  const groupBy = params.get("groupBy") || "";
  const option = (v, label, chosen) => `<option value="${esc(v)}"${v === chosen ? " selected" : ""}>${esc(label)}</option>`;
  el.innerHTML = `
    <h1><a href="#/accounts">Accounts</a> › ${esc(account)} <span class="muted">· ${esc(ctx.month)}</span></h1>
    <section class="card">
      <div class="toolbar">
        <label>meter <select id="meter">${meters.map((m) => option(m.meter, m.meter, meter)).join("")}</select></label>
        <label>measure <select id="measure">${option("", "measurements (COUNT)", measure)}${Object.keys(info.sums).sort().map((f) => option(f, `SUM(${f})`, measure)).join("")}</select></label>
        <label>bucket <select id="bucket">${["hour", "day", "month"].map((b) => option(b, b, bucket)).join("")}</select></label>
        <label>group by <select id="group">${option("", "nothing", groupBy)}${Object.keys(info.values).sort().map((f) => option(f, f, groupBy)).join("")}</select></label>
      </div>
      <div id="usage-chart" class="chart"></div>
      <details><summary class="muted">the numbers</summary><div id="usage-table"></div></details>
    </section>
    <div class="grid">
      <section class="card"><h2>Bill preview</h2><div id="bill"></div></section>
      <section class="card"><h2>Limits</h2><div id="limits"></div></section>
    </div>
    <div class="grid">
      <section class="card"><h2>Notifications</h2><div id="notifications"></div></section>
      <section class="card"><h2>Corrections</h2><div id="corrections"></div></section>
    </div>`;
  const to = (changes) => ctx.go("account", account, { meter, measure, bucket, groupBy, ...changes });
  el.querySelector("#meter").onchange = (e) => to({ meter: e.target.value, measure: "", groupBy: "" });
  el.querySelector("#measure").onchange = (e) => to({ measure: e.target.value });
  el.querySelector("#bucket").onchange = (e) => to({ bucket: e.target.value });
  el.querySelector("#group").onchange = (e) => to({ groupBy: e.target.value });
  await Promise.all([
    usage(el, ctx, account, { meter, measure, bucket, groupBy }),
    bill(el.querySelector("#bill"), ctx, account),
    limits(el.querySelector("#limits"), ctx, account),
    notifications(el.querySelector("#notifications"), ctx, account),
    corrections(el.querySelector("#corrections"), ctx, account),
  ]);
}

async function usage(el, ctx, account, { meter, measure, bucket, groupBy }) {
  if (!meter) return;
  const { data, notes = [] } = await api(`${ctx.base}/usage`, {
    meter, account, from: ctx.from, to: ctx.to, bucket,
    aggregation: measure ? "SUM" : "COUNT", field: measure || undefined, groupBy: groupBy || undefined,
  });
  const title = `${measure ? `SUM(${meter}.${measure})` : `${meter}: measurements`} per ${bucket}${groupBy ? `, by ${groupBy}` : ""}`;
  if (data.length) timeChart(el.querySelector("#usage-chart"), data, { group: groupBy || null, title, bars: true, range: [ctx.from, ctx.to] });
  else el.querySelector("#usage-chart").innerHTML = `<p class="muted">No usage of ${esc(meter)} in this period. ${esc(notes.join(" "))}</p>`;
  el.querySelector("#usage-table").innerHTML = `<table id="usage-rows"><tr><th>bucket</th>${groupBy ? `<th>${esc(groupBy)}</th>` : ""}<th class="num">value</th></tr>
    ${data.map((r) => `<tr><td>${esc(when(r.bucket))}</td>${groupBy ? `<td>${shown(r[groupBy])}</td>` : ""}<td class="num">${dec(r.value)}</td></tr>`).join("")}</table>`;
}

const NO_PLANS = "The ledger was started without --plans: no bills and no caps.";

async function bill(el, ctx, account) {
  if (!ctx.has.plans) return void (el.innerHTML = `<p class="muted">${esc(NO_PLANS)}</p>`);
  let bills;
  try {
    ({ bills } = await api(`${ctx.base}/bills`, { account, from: ctx.from, to: ctx.to }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return void (el.innerHTML = `<p class="muted">${esc(err.message)}</p>`);
    throw err;
  }
  el.innerHTML = bills.map((b) => `
    <p>${esc(when(b.from))} – ${esc(when(b.to))} · <strong>${esc(b.status)}</strong></p>
    <table class="bill"><tr><th>line</th><th class="num">quantity</th><th class="num">amount</th></tr>
      ${b.lines.map((l) => `<tr><td>${esc(l.description)}${bands(l.bands)}</td><td class="num">${dec(l.quantity ?? "")}</td><td class="num">${dec(l.amount)}</td></tr>`).join("")}
      <tr><td>credits</td><td></td><td class="num">${dec(b.credits)}</td></tr>
      <tr><th>total</th><td></td><th class="num" data-total>${dec(b.total)} ${esc(b.currency)}</th></tr>
    </table>`).join("");
}

function bands(list) {
  if (!list || !list.length) return "";
  return `<table class="muted"><tr><th>band</th><th class="num">units</th><th class="num">unit price</th><th class="num">amount</th></tr>
    ${list.map((b) => `<tr><td>${dec(b.lower_limit)}${b.upper_limit === null ? "+" : "–" + dec(b.upper_limit)}</td><td class="num">${dec(b.units)}</td><td class="num">${dec(b.unit_price)}</td><td class="num">${dec(b.amount)}</td></tr>`).join("")}</table>`;
}

async function limits(el, ctx, account) {
  if (!ctx.has.plans) return void (el.innerHTML = `<p class="muted">${esc(NO_PLANS)}</p>`);
  try {
    const answer = await api(`${ctx.base}/console/limits`, { account });
    const caps = answer.limits[account] || [];
    el.innerHTML = capCells(caps) + (caps.length ? `<table><tr><th>cap</th><th>mode</th><th class="num">used</th><th class="num">cap</th><th>state</th></tr>
      ${caps.map((c) => `<tr><td>${esc(c.meter)}${c.field ? "." + esc(c.field) : ""} per ${esc(c.period)}</td><td>${esc(c.mode)}</td><td class="num">${dec(c.used)}</td><td class="num">${dec(c.cap)}</td><td class="${c.state === "ok" ? "good" : "bad"}">${esc(c.state)}</td></tr>`).join("")}</table>
      <p class="muted">as of ${esc(when(answer.as_of))}</p>` : "");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return void (el.innerHTML = `<p class="muted">${esc(err.message)}</p>`);
    throw err;
  }
}

async function notifications(el, ctx, account) {
  const { notifications: list } = await api(`${ctx.base}/notifications`, { account });
  el.innerHTML = list.length ? `<table><tr><th>when</th><th>what</th><th>meter</th><th>deliveries</th></tr>
    ${list.slice().reverse().map((n) => `<tr><td>${esc(when(n.created))}</td><td><span class="pill ${esc(n.type)}">${esc(kindLabel(n.type))}</span> ${esc(n.threshold ?? "")}</td><td>${esc(n.meter ?? "")}</td>
      <td>${n.deliveries.length ? n.deliveries.map((d) => `${esc(d.endpoint)}: ${esc(d.status)}`).join(", ") : `<span class="muted">no webhook</span>`}</td></tr>`).join("")}</table>`
    : `<p class="muted">None sent.</p>`;
}

async function corrections(el, ctx, account) {
  const answer = await api(`${ctx.base}/usage/query`, {}, {
    method: "POST", body: { accountIds: [account], startDate: ctx.from, endDate: ctx.to, limit: LOOKED_AT },
  });
  const found = answer.data.filter((m) => m.correction);
  el.innerHTML = (found.length ? `<table><tr><th>when</th><th>meter</th><th>kind</th><th>of</th></tr>
    ${found.map((m) => `<tr><td>${esc(when(m.ts))}</td><td>${esc(m.meter)}</td><td>${esc(m.correction.kind)}</td><td class="mono">${esc(m.correction.of)}</td></tr>`).join("")}</table>`
    : `<p class="muted">None in this period.</p>`) +
    (answer.hasMoreData ? `<p class="muted">Only the latest ${LOOKED_AT.toLocaleString("en")} measurements of the period were looked at.</p>` : "");
}
