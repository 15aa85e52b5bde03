// The console's shell: organisation, period, and the page the address's #fragment names.
import { api, forgetToken } from "./api.js";
import { esc } from "./format.js";
import * as accounts from "./pages/accounts.js";
import * as account from "./pages/account.js";
import * as meters from "./pages/meters.js";
import * as signals from "./pages/signals.js";
import * as trust from "./pages/trust.js";
import * as privacy from "./pages/privacy.js";

const PAGES = { accounts, account, meters, signals, trust, privacy };
const orgSelect = document.getElementById("org");
const periodInput = document.getElementById("period");

function monthBounds(month) {
  const [y, m] = month.split("-").map(Number);
  const next = m === 12 ? `${y + 1}-01` : `${y}-${String(m + 1).padStart(2, "0")}`;
  return { from: `${month}-01T00:00:00Z`, to: `${next}-01T00:00:00Z` };
}

function route() {
  const [path, query = ""] = (location.hash.slice(1) || "/accounts").split("?");
  const [, name = "accounts", ...rest] = path.split("/");
  return { name: PAGES[name] ? name : "accounts", arg: rest.map(decodeURIComponent).join("/"), params: new URLSearchParams(query) };
}

export function go(name, arg = "", params = {}) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== "")).toString();
  location.hash = `#/${name}${arg ? "/" + encodeURIComponent(arg) : ""}${q ? "?" + q : ""}`;
}

let rendering = 0;
// What the ledger was started with (GET /console/api/orgs): pages skip what it cannot answer.
let has = { plans: true, catalog: true };
async function render() {
  const { name, arg, params } = route();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === (name === "account" ? "accounts" : name)));
  const el = document.getElementById("page");
  const ctx = { org: orgSelect.value, base: `/organizations/${encodeURIComponent(orgSelect.value)}`, month: periodInput.value, ...monthBounds(periodInput.value), go, has };
  const mine = ++rendering;
  el.dataset.state = "loading";
  el.innerHTML = `<p class="muted">Loading…</p>`;
  try {
    if (!ctx.org) {
      el.innerHTML = `<h1>Nothing stored yet</h1><p class="muted">The ledger has no organisation: one exists once something is stored for it.</p>`;
    } else {
      await PAGES[name].render(el, ctx, arg, params);
    }
  } catch (err) {
    if (mine === rendering) el.innerHTML = `<h1>Could not load this page</h1><p class="bad">${esc(err.message)}</p>`;
  }
  if (mine === rendering) el.dataset.state = "ready";
}

async function start() {
  const now = new Date();
  periodInput.value = sessionStorage.getItem("meterkit-console-month") || `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
  const answer = await api("/console/api/orgs");
  const { orgs } = answer;
  has = answer.has || { plans: true, catalog: true };
  const wanted = new URLSearchParams(location.search).get("org") || sessionStorage.getItem("meterkit-console-org");
  orgSelect.innerHTML = orgs.map((o) => `<option${o === wanted ? " selected" : ""}>${esc(o)}</option>`).join("");
  orgSelect.onchange = () => { sessionStorage.setItem("meterkit-console-org", orgSelect.value); render(); };
  periodInput.onchange = () => { sessionStorage.setItem("meterkit-console-month", periodInput.value); render(); };
  document.getElementById("forget").onclick = () => { forgetToken(); location.reload(); };
  window.addEventListener("hashchange", render);
  await render();
}

start().catch((err) => {
  document.getElementById("page").innerHTML = `<p class="bad">${esc(err.message)}</p>`;
  document.getElementById("page").dataset.state = "ready";
});
