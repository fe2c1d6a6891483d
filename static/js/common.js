/* busi-web: helpers shared by every page (no dependencies).
 *
 * busi.api(path, {method, json, form})  fetch JSON with the CSRF header; throws busi.ApiError
 * busi.el(tag, attrs, ...children)      build a DOM element
 * busi.fmt(x, digits) / busi.pct(x) / busi.duration(seconds)
 */
(function () {
  "use strict";
  const busi = (window.busi = window.busi || {});

  busi.csrfToken = function () {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  };

  class ApiError extends Error {
    constructor(message, status, fields) {
      super(message);
      this.status = status;
      this.fields = fields || {};
    }
  }
  busi.ApiError = ApiError;

  /* JSON request to our API. A non-2xx answer throws ApiError carrying the server's message and field errors. */
  busi.api = async function (path, opts = {}) {
    const method = (opts.method || "GET").toUpperCase();
    const headers = { Accept: "application/json" };
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.form !== undefined) {
      body = opts.form; // FormData: the browser sets the multipart boundary
    }
    if (method !== "GET" && method !== "HEAD") headers["X-CSRFToken"] = busi.csrfToken();
    let response;
    try {
      response = await fetch(path, { method, headers, body, credentials: "same-origin", signal: opts.signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("the server cannot be reached: check the connection and try again", 0, {});
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error) || `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status, (data && data.fields) || {});
    }
    return data;
  };

  /* busi.el("a", {href: "/x", class: "b", dataset: {id: 1}, onclick: fn}, "text", child) */
  busi.el = function (tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  };

  busi.fmt = function (x, digits = 4) {
    return x === null || x === undefined || Number.isNaN(+x) ? "—" : (+x).toFixed(digits);
  };

  busi.pct = function (x, digits = 1) {
    return x === null || x === undefined ? "—" : (100 * x).toFixed(digits) + "%";
  };

  busi.duration = function (seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  };

  /* Show an error message in a (hidden until needed) element; empty message hides it. */
  busi.showError = function (node, message) {
    if (!node) return;
    node.textContent = message || "";
    node.hidden = !message;
  };

  /* The input for one parameter of a spec (``Param.to_dict()`` of /api/specs): a checkbox, a select, a number
   * or a text field, with its default. The Train and Diagnose pages draw their parameter forms with it. */
  busi.paramControl = function (p) {
    const el = busi.el;
    if (p.type === "bool") return el("input", { type: "checkbox", checked: !!p.default });
    if (p.type === "choice") {
      return el("select", {}, (p.choices || []).map((c) => el("option", { value: String(c), selected: c === p.default }, String(c))));
    }
    if (p.type === "int" || p.type === "float") {
      return el("input", { type: "number", step: p.type === "int" ? "1" : "any", value: p.default === null ? "" : String(p.default),
        min: p.minimum === null ? null : String(p.minimum), max: p.maximum === null ? null : String(p.maximum),
        class: "num" });
    }
    return el("input", { type: "text", value: p.default === null || p.default === undefined ? "" : String(p.default),
      placeholder: p.type === "path" ? "a folder or file on the server" : "" });
  };

  busi.TERMINAL = new Set(["finished", "failed", "cancelled"]);

  /* Buttons with data-action="cancel|resume|promote" and data-run-id post to the API (admins only see them). */
  busi.runAction = async function (action, runId) {
    const verbs = { cancel: "Cancel", resume: "Resume", promote: "Making it the default" };
    if (action === "cancel" && !window.confirm(`Cancel run ${runId}? A running run stops after its current batch.`)) {
      return null;
    }
    let json;
    if (action === "promote") {  // a default is a decision: it needs a reason, which the audit log keeps
      const reason = window.prompt(`Make run ${runId} the default model of its modality. Why?`);
      if (!reason || !reason.trim()) return null;
      json = { reason: reason.trim() };
    }
    return busi.api(`/api/runs/${runId}/${action}`, { method: "POST", json }).catch((err) => {
      window.alert(`${verbs[action] || action} failed: ${err.message}`);
      return null;
    });
  };
})();
