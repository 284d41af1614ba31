// The one way the Robot Editor talks to the server: JSON in, JSON out, errors as ApiError.
//
// Why one function: every call must send the token the same way, turn the API's error
// bodies ({"detail", "message"}) into a message a person can read, and ask for the token
// again on a 401 instead of failing silently. The token lives in sessionStorage: entered
// once per tab, gone when the tab closes, never written to disk by the page.

const TOKEN_KEY = "continuonbrain.api-token";

/** An API answer that is not 2xx (status > 0) or a request that never got one (status 0). */
export class ApiError extends Error {
  constructor(status, message, detail = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  tokenListeners.forEach((fn) => fn(true));
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  tokenListeners.forEach((fn) => fn(false));
}

const tokenListeners = [];
/** Call ``fn(hasToken)`` whenever the token is set or cleared. */
export function onTokenChange(fn) {
  tokenListeners.push(fn);
}

let promptForToken = async () => null;
let openPrompt = null;
/** Install the UI that asks for the token: ``fn(reason) -> Promise<string|null>``. */
export function setTokenPrompt(fn) {
  promptForToken = fn;
}

/** Ask for the token once, however many calls are waiting for it. */
export function askToken(reason) {
  if (!openPrompt) {
    openPrompt = Promise.resolve(promptForToken(reason)).finally(() => {
      openPrompt = null;
    });
  }
  return openPrompt;
}

function messageOf(data, resp) {
  if (data && typeof data === "object") {
    if (typeof data.message === "string" && data.message) return data.message;
    if (typeof data.detail === "string" && data.detail) return data.detail;
    if (data.detail) return JSON.stringify(data.detail);
  }
  if (typeof data === "string" && data.trim()) return data.trim().slice(0, 500);
  return `HTTP ${resp.status} ${resp.statusText}`.trim();
}

async function parseBody(resp) {
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * ``method path`` with an optional JSON ``body``. ``auth``: send the token (asking for it
 * first when there is none, and again after a 401). Resolves to the parsed JSON answer;
 * rejects with ApiError carrying the server's message.
 */
export async function request(method, path, { body, auth = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth) {
      let token = getToken();
      if (!token) {
        token = await askToken("Changing the robot's state needs the API token.");
        if (!token) throw new ApiError(0, "cancelled: this action needs the API token");
      }
      headers.Authorization = `Bearer ${token}`;
    }
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, `network error on ${method} ${path}: ${err.message} (is the server running?)`);
    }
    const data = await parseBody(resp);
    if (resp.ok) return data;
    const message = messageOf(data, resp);
    if (resp.status === 401 && auth && attempt < 2) {
      clearToken();
      const token = await askToken(`The server refused the token (401: ${message}). Enter it again.`);
      if (!token) throw new ApiError(401, message, data && data.detail);
      continue;
    }
    throw new ApiError(resp.status, message, data && typeof data === "object" ? data.detail : null);
  }
}

export const get = (path) => request("GET", path);
export const post = (path, body, opts = {}) => request("POST", path, { body, ...opts });
