// The console's client of the daemon's /v1 API: every request carries the
// token the user logged in with, and every refusal becomes an ApiError
// with the daemon's message, which names the field at fault.

const KEY = "sg-console-token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export async function request(method, path, body, revision) {
  const headers = { Authorization: `Bearer ${token() ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (revision !== undefined) headers["If-Match"] = String(revision);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the daemon did not answer: ${e.message}`);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, data?.error ?? `${response.status} ${response.statusText}`);
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body, revision) => request("POST", path, body, revision);
export const put = (path, body, revision) => request("PUT", path, body, revision);
export const del = (path, revision) => request("DELETE", path, undefined, revision);

export const segment = encodeURIComponent;
