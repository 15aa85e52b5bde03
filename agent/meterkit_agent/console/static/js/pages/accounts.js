// Accounts: a page of accounts sorted and searched by the ledger (GET .../console/accounts),
// with the bill to date (GET .../bills) and cap use (GET .../console/limits) of each.
import { api, ApiError } from "../api.js";
import { dec, esc, kindLabel, whenMs } from "../format.js";

const PAGE = 25;

export async function render(el, ctx, _arg, params) {
  const sort = params.get("sort") || "account";
  const order = params.get("order") || (sort === "account" ? "asc" : "desc");
  const q = params.get("q") || "";
  const page = Math.max(0, Number.parseInt(params.get("page"), 10) || 0);
  const [listing, summary] = await Promise.all([
    api(`${ctx.base}/console/accounts`, { from: ctx.from, to: ctx.to, sort, order, q, limit: PAGE, offset: page * PAGE }),
    api(`${ctx.base}/console/meters`, { from: ctx.from, to: ctx.to }),
  ]);
  const names = listing.accounts.map((a) => a.account);
  const limits = await limitsOf(ctx, names);
  const bills = limits.billed ? await billsOf(ctx, limits.billed) : { by: {}, note: "Bills and caps: the ledger was started without --plans." };
  const meters = summary.meters.map((m) => m.meter);
  const fields = summary.meters.flatMap((m) => Object.keys(m.sums).sort().map((f) => `${m.meter}.${f}`));
  const header = (key, label, cls = "") =>
    `<th class="sortable ${cls} ${sort === key ? "sorted " + order : ""}" data-sort="${esc(key)}">${esc(label)}</th>`;
  el.innerHTML = `
    <h1>Accounts <span class="muted">· ${dec(String(listing.total))} with usage, ${esc(ctx.month)}</span></h1>
    <div class="toolbar">
      <input id="search" type="search" placeholder="search accounts" value="${esc(q)}">
      <label>sort by <select id="sort-by">
        <option value="account">account</option>
        ${meters.map((m) => `<option value="${esc(m)}">${esc(m)}: measurements</option>`).join("")}
        ${fields.map((f) => `<option value="${esc(f)}">${esc(f)}: sum</option>`).join("")}
      </select></label>
      <span class="muted">${bills.note ? esc(bills.note) : ""}</span>
    </div>
    <table id="accounts">
      <thead><tr>${header("account", "Account")}${meters.map((m) => header(m, m, "num")).join("")}
        <th class="num">Bill to date</th><th>Limits (use of cap)</th><th>Latest signal</th></tr></thead>
      <tbody>${listing.accounts.map((a) => row(a, meters, bills.by[a.account], limits.by[a.account])).join("")}</tbody>
    </table>
    <div class="pager">
      <button id="prev" ${page === 0 ? "disabled" : ""}>← previous</button>
      <span class="muted">${Number(listing.total) ? page * PAGE + 1 : 0}–${page * PAGE + listing.accounts.length} of ${dec(String(listing.total))}</span>
      <button id="next" ${(page + 1) * PAGE >= Number(listing.total) ? "disabled" : ""}>next →</button>
    </div>
    <p class="muted">Measurements counted, corrections applied; under each count, the exact sum of each number field. Sorted and paged by the ledger.</p>`;
  const to = (changes) => ctx.go("accounts", "", { sort, order, q, page, ...changes });
  el.querySelector("#sort-by").value = sort;
  el.querySelector("#sort-by").onchange = (e) => to({ sort: e.target.value, order: e.target.value === "account" ? "asc" : "desc", page: 0 });
  el.querySelectorAll("th.sortable").forEach((th) => (th.onclick = () =>
    to({ sort: th.dataset.sort, order: sort === th.dataset.sort && order === "desc" ? "asc" : sort === th.dataset.sort ? "desc" : th.dataset.sort === "account" ? "asc" : "desc", page: 0 })));
  el.querySelector("#search").onchange = (e) => to({ q: e.target.value, page: 0 });
  el.querySelector("#prev").onclick = () => to({ page: page - 1 });
  el.querySelector("#next").onclick = () => to({ page: page + 1 });
}

function row(a, meters, bill, caps) {
  const cells = meters.map((m) => {
    const u = a.meters[m];
    if (!u) return `<td class="num muted">–</td>`;
    const sums = Object.entries(u.sums).sort().map(([f, v]) => `<div class="muted" data-sum="${esc(m)}.${esc(f)}">${esc(f)} ${dec(v)}</div>`).join("");
    return `<td class="num"><span data-count="${esc(m)}">${dec(String(u.count))}</span>${sums}</td>`;
  });
  const signal = a.signal ? `<span class="pill ${esc(a.signal.kind)}">${esc(kindLabel(a.signal.kind))}</span> <span class="muted">${esc(a.signal.meter)}, ${esc(whenMs(a.signal.created_ms))}</span>` : `<span class="muted">none</span>`;
  return `<tr data-account="${esc(a.account)}"><td><a href="#/account/${encodeURIComponent(a.account)}">${esc(a.account)}</a></td>${cells.join("")}
    <td class="num" data-bill>${bill ?? `<span class="muted">no plan</span>`}</td><td>${caps ?? ""}</td><td>${signal}</td></tr>`;
}

async function billsOf(ctx, names) {
  const by = {};
  await Promise.all(names.map(async (name) => {
    const { bills } = await api(`${ctx.base}/bills`, { account: name, from: ctx.from, to: ctx.to });
    by[name] = bills.map((b) => `${dec(b.total)} <span class="muted">${esc(b.currency)}</span>`).join("<br>");
  }));
  return { by, note: "" };
}

export function capCells(caps) {
  if (!caps || !caps.length) return `<span class="muted">no caps</span>`;
  return caps.map((c) => {
    const pct = c.percent === null ? "" : c.percent;
    const width = Math.min(100, Number(pct) || 0);
    return `<div class="${c.state === "over" ? "bad" : c.state === "near" ? "warn" : ""}">${esc(c.meter)}${c.field ? "." + esc(c.field) : ""}
      <span class="track"><span class="bar" style="width:${width}%"></span></span> <span data-percent>${esc(pct)}%</span></div>`;
  }).join("");
}

async function limitsOf(ctx, names) {
  if (!names.length) return { by: {}, billed: [] };
  if (!ctx.has.plans) return { by: {}, billed: null };
  try {
    const { limits, billed } = await api(`${ctx.base}/console/limits`, { account: names });
    return { by: Object.fromEntries(names.map((n) => [n, capCells(limits[n])])), billed };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return { by: {}, billed: null };
    throw err;
  }
}
