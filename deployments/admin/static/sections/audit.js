"use strict";
// The audit log, newest first: sessions, blackouts, queue changes, and every change made in the panel.
(function () {
  const { el, api, table, fmtTime, showError } = window.MikuAdmin;

  function describe(entry) {
    const d = entry.detail || {};
    if (entry.action === "admin_change") return `${d.change} ${JSON.stringify(d.args || {})}`;
    return Object.keys(d).length ? JSON.stringify(d) : "";
  }

  window.MikuAdmin.section("audit", {
    render(container) {
      const body = el("div", { id: "audit-log" });
      container.append(el("div", { class: "card wide" }, el("h2", { text: "Audit log" }), body));
      async function load() {
        try {
          const data = await api("audit?limit=200");
          body.replaceChildren(table(["#", "When", "Action", "User", "Session", "Features", "Detail"], data.entries.map((e) =>
            [e.seq, fmtTime(e.at), e.action, (e.detail && e.detail.user) || "—", e.session_id || "—", (e.features || []).join(", "), describe(e)]), "audit-table"));
        } catch (failure) { showError(failure); }
      }
      load();
      const timer = window.setInterval(load, 5000);
      return () => window.clearInterval(timer);
    },
  });
})();
