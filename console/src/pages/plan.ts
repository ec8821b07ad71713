// Plan: the limits and the budget of the signed-in key's tenant (GET /v1/me).

import { apiJson, ApiError, type Me } from '../api.js';
import { fmtInt, h, notice } from '../dom.js';
import { session } from '../session.js';

const LIMITS: [keyof Me['limits'], string][] = [
  ['frames_per_sec', 'frames per second (sustained)'],
  ['burst', 'burst (frames)'],
  ['max_sessions', 'concurrent sessions'],
  ['detect_per_minute', 'one-shot detects per minute'],
  ['budget_frames', 'frames per month'],
  ['weight', 'fair-share weight'],
  ['max_keys', 'API keys'],
  ['models', 'models'],
];

/** What a limit the plan leaves unset means, where it is not "unlimited". */
const UNSET: Partial<Record<keyof Me['limits'], string>> = {
  weight: '1 (the default)',
  max_keys: 'none (no self-service keys)',
  models: 'all',
  burst: 'one second of frames',
};

export class PlanPage {
  mount(root: HTMLElement): void {
    const out = h('div', { id: 'plan-result' }, notice('info', 'Loading…'));
    root.append(h('h1', {}, 'Plan'), out);
    void this.load(out);
  }

  unmount(): void {}

  private async load(out: HTMLElement): Promise<void> {
    let me: Me;
    try {
      me = await apiJson<Me>('/v1/me');
      session.me = me;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        out.replaceChildren(
          notice('warn', 'This gateway does not report plans yet (/v1/me answered 404).', 'plan-unsupported'),
        );
      } else {
        out.replaceChildren(notice('error', `Cannot load the plan: ${(e as Error).message}`));
      }
      return;
    }
    const t = h('table', { id: 'plan-table' });
    const body = t.createTBody();
    const row = (k: string, v: string) => {
      const tr = body.insertRow();
      tr.insertCell().textContent = k;
      tr.insertCell().textContent = v;
    };
    row('tenant', me.tenant);
    row('this key', me.key_id);
    row('scopes', me.scopes.join(', '));
    for (const [field, name] of LIMITS) {
      const v = me.limits?.[field];
      row(name, v === null || v === undefined ? UNSET[field] ?? 'unlimited' : Array.isArray(v) ? v.join(', ') : fmtInt(v as number));
    }
    const cap = me.budget?.cap_frames;
    const used = me.budget?.used_frames ?? 0;
    const budget = h('div', { id: 'plan-budget', class: 'budget' });
    if (cap === null || cap === undefined) {
      budget.append(h('p', {}, `This month: ${fmtInt(used)} frames; no budget cap.`));
    } else {
      const pct = cap > 0 ? Math.min(100, (used / cap) * 100) : 100;
      const meter = h('meter', { min: '0', max: String(cap), value: String(used) });
      budget.append(h('p', {}, `This month: ${fmtInt(used)} of ${fmtInt(cap)} frames (${pct.toFixed(1)} %)`), meter);
    }
    out.replaceChildren(t, h('h2', {}, 'Budget'), budget);
  }
}
