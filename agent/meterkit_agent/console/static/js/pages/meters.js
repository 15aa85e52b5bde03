// Meters: usage per meter across accounts, and per value of each string field
// (GET .../console/meters); a meter with no usage in the period stands out.
import { api } from "../api.js";
import { dec, esc, shown } from "../format.js";

export async function render(el, ctx) {
  const { meters } = await api(`${ctx.base}/console/meters`, { from: ctx.from, to: ctx.to });
  const unused = meters.filter((m) => m.unused);
  el.innerHTML = `
    <h1>Meters <span class="muted">· ${esc(ctx.month)}</span></h1>
    ${unused.length ? `<p class="warn" id="unused-note">No usage this period: ${unused.map((m) => `<strong>${esc(m.meter)}</strong>`).join(", ")}.</p>` : ""}
    <table id="meters"><tr><th>meter</th><th class="num">accounts</th><th class="num">measurements</th><th>sums</th></tr>
      ${meters.map((m) => `<tr class="${m.unused ? "unused" : ""}" data-meter="${esc(m.meter)}"><td>${esc(m.meter)}${m.in_catalog === false ? ` <span class="muted">(not in the catalog)</span>` : ""}</td>
        <td class="num">${dec(String(m.accounts))}</td><td class="num" data-count>${dec(String(m.count))}</td>
        <td>${Object.entries(m.sums).sort().map(([f, v]) => `<span data-sum="${esc(f)}">${esc(f)} <strong>${dec(v)}</strong></span>`).join(" · ") || `<span class="muted">–</span>`}</td></tr>`).join("")}
    </table>
    <h2>By field value</h2>
    <div class="grid">${meters.filter((m) => !m.unused).flatMap((m) => Object.entries(m.values).sort().map(([field, v]) => values(m.meter, field, v))).join("")}</div>`;
}

function values(meter, field, { top, other_values: others }) {
  const most = Math.max(1, ...top.map((t) => t.count));
  return `<section class="card"><h2>${esc(meter)} · ${esc(field)}</h2><table>
    ${top.map((t) => `<tr><td>${shown(t.value)}</td><td class="num">${dec(String(t.count))}</td><td style="width:45%"><span class="bar" style="width:${(100 * t.count) / most}%"></span></td></tr>`).join("")}
    </table>${Number(others) > 0 ? `<p class="muted">and ${dec(String(others))} other values</p>` : ""}</section>`;
}
