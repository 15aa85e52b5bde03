// Signals: the drops and spikes the ledger judged (GET .../notifications), each with the
// usage it judged (GET .../usage: COUNT per bucket, as the trend watch counts).
import { api } from "../api.js";
import { timeChart } from "../chart.js";
import { dec, esc, kindLabel, when } from "../format.js";

const TRENDS = new Set(["usage_drop", "usage_spike"]);
const SHOWN = 20;

export async function render(el, ctx) {
  const { notifications } = await api(`${ctx.base}/notifications`, { limit: 10000 });
  const found = notifications.filter((n) => TRENDS.has(n.type)).reverse();
  el.innerHTML = `<h1>Signals <span class="muted">· ${found.length} drops and spikes</span></h1>
    ${found.length ? "" : `<p class="muted">None recorded. The ledger judges drops and spikes when started with --signals (docs/notifications.md).</p>`}
    <div class="grid" id="signals">${found.slice(0, SHOWN).map((n, i) => `
      <section class="card signal" data-account="${esc(n.account)}" data-kind="${esc(n.type)}">
        <h2><span class="pill ${esc(n.type)}">${esc(kindLabel(n.type))}</span> <a href="#/account/${encodeURIComponent(n.account)}?meter=${encodeURIComponent(n.meter)}&bucket=${encodeURIComponent(n.data.bucket)}">${esc(n.account)}</a> · ${esc(n.meter)}</h2>
        <p><span data-value>${dec(n.data.value)}</span> measurements in the ${esc(n.data.bucket)} from ${esc(when(n.period.start))}, against a median of
          <span data-median>${dec(n.data.median)}</span> over the ${esc(String(n.data.window))} before it (factor ${dec(n.data.factor)}).</p>
        <div class="chart" id="signal-chart-${i}"></div>
      </section>`).join("")}</div>
    ${found.length > SHOWN ? `<p class="muted">The latest ${SHOWN} of ${found.length}.</p>` : ""}`;
  await Promise.all(found.slice(0, SHOWN).map((n, i) => chart(el.querySelector(`#signal-chart-${i}`), ctx, n)));
}

async function chart(el, ctx, n) {
  const size = n.data.bucket === "hour" ? 3600e3 : 86400e3;
  const from = new Date(Date.parse(n.period.start) - (Number(n.data.window) + 2) * size).toISOString();
  const to = new Date(Date.parse(n.period.end) + 2 * size).toISOString();
  const { data } = await api(`${ctx.base}/usage`, {
    meter: n.meter, account: n.account, from, to, aggregation: "COUNT", bucket: n.data.bucket,
  });
  // every bucket of the range, zeros included: an account that stopped shows as a fall to zero
  const rows = [];
  for (let t = Date.parse(from) - (Date.parse(from) % size); t < Date.parse(to); t += size) {
    const iso = new Date(t).toISOString();
    const hit = data.find((r) => Date.parse(r.bucket) === t);
    rows.push({ bucket: iso, value: hit ? hit.value : "0" });
  }
  timeChart(el, rows, { title: `${n.meter} measurements per ${n.data.bucket}`, mark: [n.period.start, n.period.end], bars: true });
}
