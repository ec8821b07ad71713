// The framegate console: sign in with an API key (kept in memory only), then
// pages by URL hash: #/live, #/detect, #/usage, #/keys, #/plan.

import './style.css';
import { apiJson, ApiError, setKey, type Me } from './api.js';
import { h, notice } from './dom.js';
import { session } from './session.js';
import { DetectPage } from './pages/detect.js';
import { KeysPage } from './pages/keys.js';
import { LivePage } from './pages/live.js';
import { PlanPage } from './pages/plan.js';
import { UsagePage } from './pages/usage.js';

interface Page {
  mount(root: HTMLElement): void;
  unmount(): void;
}

const PAGES: Record<string, () => Page> = {
  live: () => new LivePage(),
  detect: () => new DetectPage(),
  usage: () => new UsagePage(),
  keys: () => new KeysPage(),
  plan: () => new PlanPage(),
};

const app = document.getElementById('app')!;
const nav = document.getElementById('nav')!;
const who = document.getElementById('who')!;
const signOut = document.getElementById('sign-out') as HTMLButtonElement;
let current: Page | null = null;
let signedIn = false;

function route(): void {
  current?.unmount();
  current = null;
  app.replaceChildren();
  if (!signedIn) {
    showSignIn();
    return;
  }
  const name = location.hash.replace(/^#\/?/, '') || 'live';
  const make = PAGES[name] ?? PAGES.live;
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.page === name);
  current = make();
  current.mount(app);
}

/**
 * Checks a key: GET /v1/me, or GET /v1/models for gateways without it (404)
 * and for keys without the usage scope (403: a `stream,detect` key still
 * works on the Live and Detect pages; Usage, Keys and Plan say why not).
 */
async function verify(key: string): Promise<void> {
  setKey(key);
  try {
    session.me = await apiJson<Me>('/v1/me');
    session.tenant = session.me.tenant;
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 403)) {
      session.me = null;
      session.tenant = '';
      await apiJson('/v1/models');
    } else {
      throw e;
    }
  }
}

function showSignIn(message?: HTMLElement): void {
  nav.hidden = true;
  signOut.hidden = true;
  who.textContent = '';
  const input = h('input', {
    id: 'api-key',
    type: 'password',
    autocomplete: 'off',
    placeholder: 'fg_…',
    required: '',
    spellcheck: 'false',
  });
  const form = h(
    'form',
    { id: 'sign-in', class: 'card' },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste an API key. It stays in this tab’s memory only: reloading or closing the tab signs you out.'),
    input,
    h('button', { type: 'submit' }, 'Sign in'),
  );
  const status = h('div', { id: 'sign-in-status' });
  if (message) status.append(message);
  form.append(status);
  form.onsubmit = async (e) => {
    e.preventDefault();
    status.replaceChildren(notice('info', 'Checking the key…'));
    try {
      await verify(input.value.trim());
    } catch (err) {
      setKey(null);
      const text =
        err instanceof ApiError && (err.status === 401 || err.status === 403)
          ? 'The gateway refused this key.'
          : `Cannot reach the gateway: ${(err as Error).message}`;
      status.replaceChildren(notice('error', text, 'sign-in-error'));
      return;
    }
    input.value = '';
    signedIn = true;
    nav.hidden = false;
    signOut.hidden = false;
    who.textContent = session.me ? `${session.me.tenant} · key ${session.me.key_id}` : 'signed in';
    who.id = 'who';
    route();
  };
  app.replaceChildren(form);
  input.focus();
}

signOut.onclick = () => {
  setKey(null);
  signedIn = false;
  session.me = null;
  route();
};

window.addEventListener('hashchange', route);
route();
