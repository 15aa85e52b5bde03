// Privacy: what the ledger's catalog says is collected, why and how it is protected, and
// what is stored of each pseudonymized field (GET .../console/privacy).
import { api, ApiError } from "../api.js";
import { dec, esc, shown } from "../format.js";

const PROTECTION = {
  pseudonymize: "pseudonymized: a keyed HMAC-SHA256 (key id prefix), applied before it is written anywhere",
  drop: "dropped in the application: it never leaves the process",
  keep: "kept as given",
};

export async function render(el, ctx) {
  if (!ctx.has.catalog) {
    return void (el.innerHTML = `<h1>Privacy</h1><p class="muted">The ledger was started without --catalog: no meters described, no report.</p>`);
  }
  let report;
  try {
    report = await api(`${ctx.base}/console/privacy`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return void (el.innerHTML = `<h1>Privacy</h1><p class="muted">${esc(err.message)}</p>`);
    throw err;
  }
  el.innerHTML = `<h1>Privacy <span class="muted">· what is collected, why, and how it is protected</span></h1>
    ${report.meters.map((m) => `<section class="card"><h2>${esc(m.name)} <span class="muted mono">${esc(m.code)}</span></h2>
      <p>${esc(m.purpose || "(no description given)")} <span class="muted">Values that look like personal data: ${esc(m.pii)}.</span></p>
      <table><tr><th>field</th><th>category</th><th>purpose</th><th>protection</th><th>stored here</th></tr>
      ${m.fields.map((f) => `<tr data-field="${esc(m.code)}.${esc(f.code)}"><td>${esc(f.name)} <span class="muted mono">${esc(f.code)}</span></td><td>${esc(f.category)}</td>
        <td>${esc(f.purpose || (f.calculation ? `derived: ${f.calculation}` : "(no description given)"))}</td>
        <td>${esc(protection(f, m.pii))}</td><td>${stored(f.stored)}</td></tr>`).join("")}</table></section>`).join("")}
    <section class="card"><h2>What this page cannot say</h2><ul>${report.unknown_here.map((t) => `<li>${esc(t)}</li>`).join("")}</ul></section>`;
}

function protection(f, pii) {
  if (f.number) return "a number (account-level usage)";
  const said = PROTECTION[f.privacy || "keep"] + (f.privacy ? "" : f.category === "WHO" ? " (no privacy: said)" : "");
  return `${said}; values that look like personal data: ${pii}`;
}

function stored(s) {
  if (!s) return `<span class="muted">–</span>`;
  return `<span data-distinct>${dec(String(s.distinct))}</span> distinct values stored ${s.examples.map(shown).join(" ")}`;
}
