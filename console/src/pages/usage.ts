// Usage: GET /v1/usage for the signed-in tenant, by hour (last 24 h) or by
// day (last 30 days), as a stacked bar chart per model (plain SVG) and a table.

import { apiJson, ApiError, type UsageReport } from '../api.js';
import { fmtInt, h, notice } from '../dom.js';
import { state } from '../state.js';

const SVG = 'http://www.w3.org/2000/svg';
const COLORS = ['#4363d8', '#f58231', '#3cb44b', '#e6194b', '#911eb4', '#46f0f0'];

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** The query range: `n` whole buckets ending with the current one. */
export function usageRange(nowSecs: number, granularity: 'hour' | 'day'): { from: number; to: number; secs: number; n: number } {
  const secs = granularity === 'hour' ? 3600 : 86_400;
  const n = granularity === 'hour' ? 24 : 30;
  const to = (Math.floor(nowSecs / secs) + 1) * secs;
  return { from: to - n * secs, to, secs, n };
}

function label(start: number, granularity: 'hour' | 'day'): string {
  const d = new Date(start * 1000).toISOString();
  return granularity === 'hour' ? `${d.slice(11, 13)}h` : d.slice(5, 10);
}

export class UsagePage {
  private out!: HTMLElement;
  private gran: 'hour' | 'day' = 'hour';

  mount(root: HTMLElement): void {
    this.out = h('div', { id: 'usage-result' });
    const sel = h('select', { id: 'granularity' });
    sel.append(h('option', { value: 'hour' }, 'by hour, last 24 h'), h('option', { value: 'day' }, 'by day, last 30 days'));
    sel.onchange = () => {
      this.gran = sel.value as 'hour' | 'day';
      void this.load();
    };
    const refresh = h('button', { id: 'usage-refresh', type: 'button' }, 'Refresh');
    refresh.onclick = () => void this.load();
    root.append(
      h('h1', {}, 'Usage'),
      h(
        'p',
        { class: 'hint' },
        'Delivered frames billed to your tenant (times in UTC). The newest second or so of usage appears after the gateway flushes it.',
      ),
      h('div', { class: 'controls' }, sel, refresh),
      this.out,
    );
    void this.load();
  }

  unmount(): void {}

  async load(): Promise<void> {
    const { from, to, secs, n } = usageRange(Math.floor(Date.now() / 1000), this.gran);
    this.out.replaceChildren(notice('info', 'Loading…'));
    let report: UsageReport;
    try {
      report = await apiJson<UsageReport>(`/v1/usage?from=${from}&to=${to}&granularity=${this.gran}`);
    } catch (e) {
      const msg = e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : (e as Error).message;
      this.out.replaceChildren(notice('error', `Cannot load usage: ${msg}`, 'usage-error'));
      return;
    }
    state.usage = report;
    const totals = h(
      'p',
      { class: 'summary', id: 'usage-totals', 'data-from': String(report.from), 'data-to': String(report.to), 'data-granularity': report.granularity },
      'Total: ',
      h('strong', { id: 'usage-frames' }, fmtInt(report.frames)),
      ' frames, ',
      h('strong', { id: 'usage-pixels' }, fmtInt(report.pixels)),
      ` pixels (tenant ${report.tenant})`,
    );
    this.out.replaceChildren(totals, this.chart(report, from, secs, n), this.table(report));
  }

  private chart(report: UsageReport, from: number, secs: number, n: number): SVGSVGElement {
    const W = 760, H = 250, left = 60, bottom = 24, top = 24;
    const models = [...new Set(report.buckets.map((b) => b.model))];
    const perBucket = new Array<number>(n).fill(0);
    for (const b of report.buckets) perBucket[Math.floor((b.start - from) / secs)] += b.frames;
    const max = Math.max(1, ...perBucket);
    const s = svg('svg', { id: 'usage-chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img' });
    s.append(svg('title', {}));
    s.querySelector('title')!.textContent = `frames per ${report.granularity}`;
    const plotH = H - bottom - top;
    const bw = (W - left - 10) / n;
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      s.append(svg('line', { x1: left, x2: W - 10, y1: y, y2: y, stroke: '#ddd' }));
      const t = svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', 'font-size': 11 });
      t.textContent = fmtInt(max * frac);
      s.append(t);
    }
    const stack = new Array<number>(n).fill(0);
    for (const b of report.buckets) {
      const i = Math.floor((b.start - from) / secs);
      const hgt = (b.frames / max) * plotH;
      const y = top + plotH - stack[i] - hgt;
      stack[i] += hgt;
      const r = svg('rect', {
        x: left + i * bw + 1,
        y,
        width: Math.max(1, bw - 2),
        height: hgt,
        fill: COLORS[models.indexOf(b.model) % COLORS.length],
        'data-start': b.start,
        'data-frames': b.frames,
      });
      const tip = svg('title', {});
      tip.textContent = `${new Date(b.start * 1000).toISOString()} ${b.model}: ${b.frames} frames`;
      r.append(tip);
      s.append(r);
    }
    const every = Math.ceil(n / 12);
    for (let i = 0; i < n; i += every) {
      const t = svg('text', { x: left + i * bw + bw / 2, y: H - 8, 'text-anchor': 'middle', 'font-size': 11 });
      t.textContent = label(from + i * secs, report.granularity);
      s.append(t);
    }
    models.forEach((m, i) => {
      // Legend above the plot, right-aligned, one entry per model.
      const t = svg('text', { x: W - 10 - i * 140, y: 14, 'text-anchor': 'end', 'font-size': 12, fill: COLORS[i % COLORS.length] });
      t.textContent = `■ ${m}`;
      s.append(t);
    });
    return s;
  }

  private table(report: UsageReport): HTMLElement {
    if (report.buckets.length === 0) return notice('info', 'No usage in this range yet.', 'usage-empty');
    const t = h('table', { id: 'usage-table' });
    t.innerHTML = '<thead><tr><th>from (UTC)</th><th>model</th><th>frames</th><th>pixels</th></tr></thead>';
    const body = t.createTBody();
    for (const b of report.buckets) {
      const tr = body.insertRow();
      tr.insertCell().textContent = new Date(b.start * 1000).toISOString().replace('.000Z', 'Z');
      tr.insertCell().textContent = b.model;
      tr.insertCell().textContent = fmtInt(b.frames);
      tr.insertCell().textContent = fmtInt(b.pixels);
    }
    return t;
  }
}
