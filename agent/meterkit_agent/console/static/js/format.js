// Formatting exact decimal strings for people, without ever making them binary floats.

export function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// "1234567.125" -> "1,234,567.125": digits grouped, nothing rounded; HTML, as esc() is.
export function dec(text) {
  if (text === undefined || text === null || text === "") return "";
  const s = String(text);
  if (!/^-?\d+(\.\d+)?$/.test(s)) return esc(s); // an exponent, Infinity: shown as the ledger wrote it
  const [whole, frac] = s.split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const grouped = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return sign + grouped + (frac ? "." + frac : "");
}

export function when(iso) {
  return iso ? String(iso).replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, " UTC") : "";
}

export function whenMs(ms) {
  return when(new Date(Number(ms)).toISOString());
}

export function kindLabel(kind) {
  return { usage_drop: "drop", usage_spike: "spike", cap_threshold: "cap threshold", band_entered: "band entered", spend_threshold: "spend threshold" }[kind] || kind;
}

const PSEUDONYM = /^([A-Za-z][A-Za-z0-9]{0,15}):([0-9a-f]{64})$/;

// A stored string value as HTML; a pseudonym (key id and keyed hash) is marked as one.
export function shown(value) {
  const found = PSEUDONYM.exec(String(value));
  if (!found) return esc(value);
  return `<span class="pill mono" title="a pseudonym: a keyed hash of the value, not the value">pseudonym ${esc(found[1])}:${esc(found[2].slice(0, 8))}…</span>`;
}
