// Calls to the ledger's API. The token (when the ledger has one) is asked for once, kept
// in this tab's sessionStorage and sent as a bearer header: never in an address.
const KEY = "meterkit-console-token";
let asking = null;

function askToken(message) {
  if (asking) return asking;
  const dialog = document.getElementById("login");
  document.getElementById("login-error").textContent = message || "";
  asking = new Promise((resolve) => {
    document.getElementById("login-form").onsubmit = () => {
      sessionStorage.setItem(KEY, document.getElementById("token").value);
      document.getElementById("token").value = "";
      asking = null;
      resolve();
    };
  });
  if (!dialog.open) dialog.showModal();
  return asking;
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

// Numbers are kept as their source text ("0.156", "12345678901234567890"): the ledger's
// values are exact decimals, and a JavaScript number is not.
function exactly(key, value, context) {
  return typeof value === "number" && context && context.source !== undefined ? context.source : value;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(path, params = {}, { method = "GET", body } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) {
    for (const one of Array.isArray(v) ? v : [v]) if (one !== undefined && one !== null && one !== "") url.searchParams.append(k, one);
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401) {
      forgetToken();
      await askToken(token ? "That token was refused." : "");
      continue;
    }
    const text = await r.text();
    const doc = text ? JSON.parse(text, exactly) : {};
    if (!r.ok) throw new ApiError(r.status, doc.message || `HTTP ${r.status}`);
    return doc;
  }
  throw new ApiError(401, "no token accepted");
}
