// Who is signed in: the answer of GET /v1/me when the gateway has it.

import type { Me } from './api.js';

export const session: { me: Me | null; tenant: string } = { me: null, tenant: '' };
