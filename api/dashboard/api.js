// The public API client: the access token lives in memory only; the refresh cookie
// (HttpOnly, Path=/auth) keeps the session. A 401 refreshes once and retries.

export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

let accessToken = null;
let refreshing = null;
let onSignedOut = () => {};

export function setSignedOutHandler(fn) { onSignedOut = fn; }
export function token() { return accessToken; }
export function setToken(t) { accessToken = t; }

async function parse(res) {
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return null; }
}

function errorOf(res, body) {
  const msg = body && typeof body.message === 'string' ? body.message
    : `The server answered ${res.status} ${res.statusText || ''}`.trim();
  return new ApiError(msg, body && body.code, res.status);
}

async function raw(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (accessToken) headers.Authorization = 'Bearer ' + accessToken;
  let res;
  try {
    res = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError('The server cannot be reached (' + e.message + ')', 'NETWORK', 0);
  }
  return res;
}

// refresh rotates the refresh cookie and returns whether a session exists. Concurrent
// callers share one request (the cookie rotates).
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const saved = accessToken;
      accessToken = null;
      try {
        const res = await raw('POST', '/auth/refresh');
        const b = await parse(res);
        if (!res.ok || !b || !b.data) { return null; }
        accessToken = b.data.accessToken;
        return b.data.user || null;
      } catch {
        accessToken = saved;
        return null;
      } finally {
        setTimeout(() => { refreshing = null; }, 0);
      }
    })();
  }
  return refreshing;
}

// api calls method path and returns the parsed body, throwing ApiError with the API's
// message on failure.
export async function api(method, path, body) {
  let res = await raw(method, path, body);
  if (res.status === 401 && accessToken !== null && !path.startsWith('/auth/')) {
    const user = await refresh();
    if (!user) {
      onSignedOut('Your session has ended; please log in again.');
      throw new ApiError('Your session has ended; please log in again.', 'UNAUTHORIZED', 401);
    }
    res = await raw(method, path, body);
  }
  const b = await parse(res);
  if (!res.ok) throw errorOf(res, b);
  return b;
}

export async function signIn(kind, fields) {
  const res = await raw('POST', kind === 'register' ? '/auth/register' : '/auth/login', fields);
  const b = await parse(res);
  if (!res.ok) throw errorOf(res, b);
  accessToken = b.data.accessToken;
  return b.data.user;
}

export async function signOut() {
  try { await raw('POST', '/auth/logout'); } finally { accessToken = null; }
}
