// Trust: what the ledger can say about the books, and what only the agent can.
import { api } from "../api.js";
import { esc, when } from "../format.js";

export async function render(el, ctx) {
  const [{ anchors }, { conflicts }] = await Promise.all([
    api(`${ctx.base}/anchors`),
    api(`${ctx.base}/conflicts`, { limit: 50 }),
  ]);
  el.innerHTML = `<h1>Trust</h1>
    <section class="card"><h2>Journal anchors</h2>
      <p class="muted">The latest audit-journal head each agent sent with its deliveries (X-Meterkit-Journal-Head): what reconciliation starts from.</p>
      ${anchors.length ? `<table id="anchors"><tr><th>journal</th><th class="num">sequence</th><th>head</th><th>seen</th><th>went backwards</th></tr>
        ${anchors.map((a) => `<tr><td class="mono">${esc(a.journal)}</td><td class="num">${esc(String(a.seq))}</td><td class="mono">${esc(String(a.hash || "").slice(0, 16))}…</td><td>${esc(when(a.at))}</td><td>${a.regressed ? `<span class="bad mono">${esc(a.regressed)}</span>` : "no"}</td></tr>`).join("")}</table>`
        : `<p id="anchors">No agent has sent a journal head to this ledger yet.</p>`}
    </section>
    <section class="card"><h2>Conflicting re-sends</h2>
      <p class="muted">A stored uid re-sent with different content: acknowledged, not stored; the first content stands.</p>
      ${conflicts.length ? `<table id="conflicts"><tr><th>uid</th><th>seen</th><th>stored content</th><th>refused content</th></tr>
        ${conflicts.map((c) => `<tr><td class="mono">${esc(c.uid)}</td><td>${esc(when(c.seenAt))}</td><td class="mono">${esc(c.firstHash.slice(0, 12))}…</td><td class="mono">${esc(c.otherHash.slice(0, 12))}…</td></tr>`).join("")}</table>`
        : `<p id="conflicts">None.</p>`}
    </section>
    <section class="card"><h2>What the ledger cannot know</h2>
      <ul>
        <li><strong>Reconciliation results</strong>: reconciliation compares an agent's audit journal (on the agent's host) with what this ledger holds, per period and destination. The ledger serves its side (bucket digests, uid listings, anchors) but never sees the journal, so it keeps no verdict. Run <code>meterkit reconcile --html report.html</code> where the agent runs.</li>
        <li><strong>Dead letters</strong>: measurements an agent gave up on stay in that agent's dead-letter store and never reach the ledger. <code>meterkit dlq list</code> on the agent's host shows them.</li>
      </ul>
    </section>`;
}
