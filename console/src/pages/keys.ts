// Keys: list, create and revoke the tenant's own API keys (GET/POST /v1/keys,
// DELETE /v1/keys/{id}). A new key is shown once, here, and never again.
// Gateways without the self-service endpoints answer 404: the page says so.

import { api, apiJson, ApiError, type KeyInfo, type NewKey } from '../api.js';
import { h, notice } from '../dom.js';
import { session } from '../session.js';

const SCOPES = ['stream', 'detect', 'usage'];

function when(v: string | number | null): string {
  if (v === null || v === undefined || v === '') return '–';
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : d.toISOString().replace(/\.\d+Z$/, 'Z');
}

export class KeysPage {
  private list!: HTMLElement;
  private created!: HTMLElement;
  private message!: HTMLElement;
  private form!: HTMLFormElement;

  mount(root: HTMLElement): void {
    this.list = h('div', { id: 'keys-list' });
    this.created = h('div', { id: 'key-created' });
    this.message = h('div', { id: 'keys-message' });
    const name = h('input', { id: 'key-name', type: 'text', placeholder: 'name, e.g. lobby-camera', required: '', maxlength: '64' });
    const scopes = h('span', { class: 'scopes' });
    for (const s of SCOPES) {
      const cb = h('input', { type: 'checkbox', value: s, name: 'scope' });
      cb.checked = true;
      scopes.append(h('label', {}, cb, ` ${s}`));
    }
    const form = h('form', { id: 'key-form', class: 'controls' }, name, scopes, h('button', { type: 'submit' }, 'Create key'));
    this.form = form;
    form.onsubmit = (e) => {
      e.preventDefault();
      const chosen = [...scopes.querySelectorAll<HTMLInputElement>('input:checked')].map((c) => c.value);
      void this.create(name.value.trim(), chosen);
    };
    root.append(
      h('h1', {}, 'API keys'),
      h('p', { class: 'hint' }, 'Keys of your tenant. A new key is shown once: copy it then. Revoking is immediate.'),
      form,
      this.message,
      this.created,
      this.list,
    );
    void this.load();
  }

  unmount(): void {}

  private unsupported(e: unknown): boolean {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
      this.message.replaceChildren(
        notice(
          'warn',
          'This gateway does not offer self-service keys (/v1/keys answered 404). ' +
            'Keys are managed by its operator in the configuration ([[auth.keys]]).',
          'keys-unsupported',
        ),
      );
      this.list.replaceChildren();
      this.form.hidden = true;
      return true;
    }
    return false;
  }

  private async load(): Promise<void> {
    let keys: KeyInfo[];
    try {
      keys = (await apiJson<{ keys: KeyInfo[] }>('/v1/keys')).keys;
    } catch (e) {
      if (!this.unsupported(e)) this.message.replaceChildren(notice('error', `Cannot list keys: ${(e as Error).message}`));
      return;
    }
    const t = h('table', { id: 'keys-table' });
    t.innerHTML = '<thead><tr><th>id</th><th>name</th><th>scopes</th><th>created</th><th>expires</th><th>revoked</th><th></th></tr></thead>';
    const body = t.createTBody();
    for (const k of keys) {
      const tr = body.insertRow();
      tr.dataset.keyId = k.id;
      const mine = session.me?.key_id === k.id;
      tr.insertCell().textContent = k.id + (mine ? ' (this session)' : '');
      tr.insertCell().textContent = k.name;
      tr.insertCell().textContent = (k.scopes ?? []).join(', ');
      tr.insertCell().textContent = when(k.created_at);
      tr.insertCell().textContent = when(k.expires_at);
      tr.insertCell().textContent = when(k.revoked_at);
      const cell = tr.insertCell();
      if (!k.revoked_at) {
        const b = h('button', { type: 'button', class: 'revoke' }, 'Revoke');
        b.onclick = () => {
          const warn = mine ? ' This is the key you signed in with: the console will stop working.' : '';
          if (confirm(`Revoke key ${k.name} (${k.id})?${warn}`)) void this.revoke(k.id);
        };
        cell.append(b);
      }
    }
    this.list.replaceChildren(keys.length ? t : notice('info', 'No keys.'));
  }

  private async create(name: string, scopes: string[]): Promise<void> {
    if (!name) return;
    this.created.replaceChildren();
    let k: NewKey;
    try {
      const resp = await api('/v1/keys', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ name, scopes }),
      });
      k = (await resp.json()) as NewKey;
    } catch (e) {
      if (this.unsupported(e)) return;
      if (e instanceof ApiError && e.status === 403) {
        const max = session.me?.limits?.max_keys;
        this.message.replaceChildren(
          notice('error', `Your plan does not allow another key${max != null ? ` (at most ${max})` : ''}: ${e.message}`, 'keys-limit'),
        );
        return;
      }
      this.message.replaceChildren(notice('error', `Cannot create the key: ${(e as Error).message}`));
      return;
    }
    this.message.replaceChildren();
    const code = h('code', { id: 'new-key' }, k.key);
    const copy = h('button', { type: 'button' }, 'Copy');
    copy.onclick = () => void navigator.clipboard?.writeText(k.key);
    this.created.replaceChildren(
      h('div', { class: 'new-key' }, h('p', {}, `New key “${k.name}” (${k.id}). It is shown only now:`), code, copy),
    );
    await this.load();
  }

  private async revoke(id: string): Promise<void> {
    try {
      await api(`/v1/keys/${encodeURIComponent(id)}`, { method: 'DELETE' });
    } catch (e) {
      if (!this.unsupported(e)) this.message.replaceChildren(notice('error', `Cannot revoke: ${(e as Error).message}`));
      return;
    }
    await this.load();
  }
}
