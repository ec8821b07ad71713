// Tiny DOM helpers.

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

export function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

export function notice(kind: 'info' | 'error' | 'warn', text: string, id?: string): HTMLElement {
  const el = h('p', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  if (id) el.id = id;
  return el;
}
