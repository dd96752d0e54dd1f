"use strict";
// The pages' HTTP client: same-origin requests only, the API token, and JSON with int64 ids.
//
// Token: a "#token=..." fragment in the address (never sent to the server) is moved into this
// tab's sessionStorage and removed from the address bar; every request sends it as
// "Authorization: Bearer <token>". A 401 raises Client.AuthError, so a page can ask for it.
//
// Ids: freshrec's ids are int64, and a JS number holds integers exactly only up to 2^53, so
// replies are parsed with every integer of 16 or more digits turned into a string (ids are
// then strings in the page), and request bodies are written with ids as raw digits.
const Client = (() => {
  const KEY = "freshrec-token";
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }

  class AuthError extends Error {}

  function parse(text) {
    return JSON.parse(text.replace(/([[:,]\s*)(-?\d{16,})(?=\s*[,\]}])/g, '$1"$2"'));
  }

  async function call(method, path, body) {
    const headers = {};
    const token = sessionStorage.getItem(KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body, cache: "no-store" });
    const text = await r.text();
    if (r.status === 401) throw new AuthError("this server needs its API token");
    if (!r.ok) throw new Error(`${method} ${path}: HTTP ${r.status} ${text.slice(0, 200)}`);
    return parse(text);
  }

  // An id (a string of digits, from `parse`) checked, for writing into a request body.
  function id(x) {
    const s = String(x);
    if (!/^-?\d{1,19}$/.test(s)) throw new Error("not an id: " + s);
    return s;
  }

  return {
    AuthError,
    parse,
    id,
    get: (path) => call("GET", path),
    post: (path, bodyText) => call("POST", path, bodyText),
    setToken: (t) => sessionStorage.setItem(KEY, t),
    hasToken: () => !!sessionStorage.getItem(KEY),
  };
})();

// Numbers for people: 1234 -> "1,234", 0.01234 -> "0.0123", 1.2e6 -> "1.2M".
function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 1 : 2) + "M";
  if (a >= 1e4) return Math.round(v).toLocaleString("en-US");
  if (a >= 100) return v.toFixed(0);
  if (a === 0) return "0";
  return Number(v.toPrecision(digits)).toString();
}
