"use strict";
// The panel's core: session and CSRF token, the API helper, the live overview stream (SSE), and the
// section registry. Sections live in static/sections/*.js and call MikuAdmin.section(id, {render}).
// Everything shown is put in with textContent, never innerHTML: messages from Discord are data.
(function () {
  const registered = new Map();
  const listeners = new Set();
  const state = { csrf: null, user: null, sections: [], current: null, lastOverview: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function table(headers, rows, id) {
    return el("table", { id }, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD") ? c : el("td", {}, c))))));
  }

  function fmtTime(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    return new Date(seconds * 1000).toLocaleString();
  }

  function fmtMs(ms) {
    return (ms === null || ms === undefined) ? "—" : `${Math.round(ms)} ms`;
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", credentials: "same-origin", headers: {} };
    if (init.method !== "GET") {
      init.headers["X-CSRF-Token"] = state.csrf;
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body || {});
    }
    const response = await fetch("/admin/api/" + path, init);
    if (response.status === 401) {
      window.location.assign("/admin/login");
      throw new Error("logged out");
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const detail = data && data.detail;
      const text = typeof detail === "string" ? detail
        : Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ")
        : response.statusText;
      const error = new Error(text || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function showError(error) {
    const box = document.getElementById("panel-error");
    box.textContent = String(error && error.message ? error.message : error);
    box.hidden = false;
  }

  function onOverview(listener) {
    listeners.add(listener);
    if (state.lastOverview) listener(state.lastOverview);
    return () => listeners.delete(listener);
  }

  function openStream() {
    const status = document.getElementById("live-status");
    const source = new EventSource("/admin/api/stream");
    source.addEventListener("open", () => { status.textContent = "live"; status.className = "live on"; });
    source.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "live off"; });
    source.addEventListener("logout", () => { source.close(); window.location.assign("/admin/login"); });
    source.addEventListener("overview", (event) => {
      const data = JSON.parse(event.data);
      state.lastOverview = data;
      status.textContent = "live · " + new Date(data.at * 1000).toLocaleTimeString();
      status.className = "live on";
      for (const listener of listeners) {
        try { listener(data); } catch (failure) { console.error(failure); }
      }
    });
  }

  function wantedSection() {
    const wanted = (window.location.hash || "#overview").slice(1);
    return state.sections.some((s) => s.id === wanted) ? wanted : "overview";
  }

  function route() {
    const id = wantedSection();
    if (!registered.has(id)) return; // its script is still loading: section() calls route() again
    for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.section === id);
    if (state.current && state.current.cleanup) state.current.cleanup();
    const main = document.getElementById("main");
    main.replaceChildren();
    document.getElementById("panel-error").hidden = true;
    const container = el("section", { class: "panel-section", id: "section-" + id });
    main.append(container);
    const cleanup = registered.get(id).render(container);
    state.current = { id, cleanup: typeof cleanup === "function" ? cleanup : null };
  }

  async function boot() {
    const session = await api("session");
    state.csrf = session.csrf_token;
    state.user = session.user;
    document.getElementById("whoami").textContent = session.user;
    document.getElementById("logout").addEventListener("click", async () => {
      try { await api("logout", { method: "POST" }); } finally { window.location.assign("/admin/login"); }
    });
    state.sections = (await api("sections")).sections;
    const nav = document.getElementById("nav");
    for (const section of state.sections) {
      nav.append(el("a", { href: "#" + section.id, "data-section": section.id, text: section.title }));
      document.head.append(el("script", { src: "/admin/static/" + section.script, defer: true }));
    }
    window.addEventListener("hashchange", route);
    openStream();
  }

  window.MikuAdmin = {
    section(id, definition) {
      registered.set(id, definition);
      // the section on screen is not the one asked for (its script was still loading): show it now
      if (!state.current || (state.current.id !== id && wantedSection() === id)) route();
    },
    api, el, table, fmtTime, fmtMs, onOverview, showError,
    get user() { return state.user; },
  };
  document.addEventListener("DOMContentLoaded", () => boot().catch(showError));
})();
