// Time series drawn with uPlot (vendored: static/vendor). Positions on a chart may be
// floats; numbers shown as text never come from here.

const PALETTE = ["#2f6fed", "#e67e22", "#16a085", "#8e44ad", "#c0392b", "#7f8c8d", "#d4ac0d", "#2c3e50"];

// rows: [{bucket: iso, value: "12.5", [group]: "..."}]; one series per group value.
export function timeChart(el, rows, { group = null, title = "", mark = null, bars = false, range = null } = {}) {
  el.innerHTML = "";
  const times = [...new Set(rows.map((r) => r.bucket))].sort();
  const names = group ? [...new Set(rows.map((r) => String(r[group] ?? "(none)")))].sort() : ["value"];
  const index = new Map(times.map((t, i) => [t, i]));
  const data = [times.map((t) => Date.parse(t) / 1000)];
  for (const name of names) {
    const ys = times.map(() => 0);
    for (const r of rows) if (!group || String(r[group] ?? "(none)") === name) ys[index.get(r.bucket)] = Number(r.value);
    data.push(ys);
  }
  const width = Math.max(320, el.clientWidth || 640);
  const paths = bars && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
  const series = [{}, ...names.map((name, i) => ({ label: name, stroke: PALETTE[i % PALETTE.length], width: 2, paths,
    fill: bars ? PALETTE[i % PALETTE.length] + "55" : undefined, points: { show: times.length < 60 } }))];
  const hooks = mark ? { draw: [(u) => highlight(u, mark)] } : {};
  return new uPlot({ title, width, height: 260, series, scales: { x: range ? { time: true, range: () => range.map((t) => Date.parse(t) / 1000) } : { time: true } }, hooks }, data, el);
}

function highlight(u, [from, to]) {
  const x0 = u.valToPos(Date.parse(from) / 1000, "x", true), x1 = u.valToPos(Date.parse(to) / 1000, "x", true);
  const ctx = u.ctx;
  ctx.save();
  ctx.fillStyle = "rgba(231, 76, 60, 0.12)";
  ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
  ctx.restore();
}
