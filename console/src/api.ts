// The console's only credential: the API key typed at sign-in, held in this
// module's memory and nowhere else (no localStorage, no cookies). A reload
// signs out.

let apiKey: string | null = null;

export function setKey(key: string | null): void {
  apiKey = key;
}

export function currentKey(): string | null {
  return apiKey;
}

/** A non-2xx answer, with the gateway's `{"error": {code, message}}` when present. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** fetch() with `Authorization: Bearer KEY`; throws ApiError on a non-2xx answer. */
export async function api(path: string, init: RequestInit = {}): Promise<Response> {
  if (!apiKey) throw new ApiError(401, 'unauthorized', 'not signed in');
  const headers = new Headers(init.headers);
  headers.set('Authorization', `Bearer ${apiKey}`);
  const resp = await fetch(path, { ...init, headers, cache: 'no-store' });
  if (!resp.ok) {
    let code = `http-${resp.status}`;
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body?.error) {
        code = body.error.code ?? code;
        message = body.error.message ?? message;
      }
    } catch {
      // Not JSON (e.g. a bare 404): keep the status line.
    }
    throw new ApiError(resp.status, code, message);
  }
  return resp;
}

export async function apiJson<T>(path: string, init: RequestInit = {}): Promise<T> {
  return (await api(path, init)).json() as Promise<T>;
}

// ---- shapes of the JSON endpoints ----

export interface PlanLimits {
  frames_per_sec: number | null;
  burst: number | null;
  max_sessions: number | null;
  detect_per_minute: number | null;
  models: string[] | null;
  budget_frames: number | null;
  weight: number | null;
  max_keys: number | null;
}

export interface Me {
  tenant: string;
  key_id: string;
  scopes: string[];
  limits: PlanLimits;
  budget: { cap_frames: number | null; used_frames: number };
}

export interface KeyInfo {
  id: string;
  name: string;
  scopes: string[];
  created_at: string | number | null;
  expires_at: string | number | null;
  revoked_at: string | number | null;
}

export interface NewKey extends KeyInfo {
  key: string;
}

export interface UsageBucket {
  start: number;
  model: string;
  frames: number;
  pixels: number;
}

export interface UsageReport {
  tenant: string;
  from: number;
  to: number;
  granularity: 'hour' | 'day';
  buckets: UsageBucket[];
  frames: number;
  pixels: number;
}

export interface JsonDetection {
  class_id: number;
  label: string;
  score: number;
  box: [number, number, number, number];
}

export interface DetectResponse {
  model: string;
  width: number;
  height: number;
  detections: JsonDetection[];
  timings_us: Record<string, number>;
}
