"use strict";
// The autonomous engine per server: its gate, signals, every action's check, recent decisions (why
// she spoke or kept quiet), and pause/resume.
(function () {
  const { el, api, table, fmtTime, showError } = window.MikuAdmin;

  function server(data, reload) {
    const s = data.settings || {};
    const paused = s.enabled === false;
    const checks = (data.checks || []).map((c) => [c.action, c.fired ? "would fire" : "no",
      (c.blocked_by || []).join(", ") || "—", c.probability == null ? "—" : Number(c.probability).toFixed(3)]);
    const decisions = (data.recent_decisions || []).slice().reverse().map((d) => [fmtTime(d.decided_at), d.action,
      d.channel_id, d.reason || (d.debug && d.debug.reason) || ""]);
    const button = el("button", { class: paused ? "" : "danger", type: "button", "data-guild": s.guild_id,
      text: paused ? "Resume" : "Pause", onclick: async () => {
        try { await api("autonomous/pause", { method: "POST", body: { guild_id: s.guild_id, paused: !paused } }); reload(); }
        catch (failure) { showError(failure); }
      } });
    return el("div", { class: "card wide autonomous-server", "data-guild": s.guild_id },
      el("h2", { text: `Server ${s.guild_id}` }),
      el("div", { class: "row" }, el("span", { class: "pill " + (paused ? "warn" : "ok"), text: paused ? "paused" : "running" }),
        el("span", { text: `gate: ${data.gate || "?"} (${data.paused_reason || ""}) · mood: ${data.mood || "?"} · pending: ${data.pending_actions ?? 0}` }), button),
      el("details", {}, el("summary", { text: "Signals" }), el("pre", { text: JSON.stringify(data.signals || {}, null, 2) })),
      el("h3", { text: "Checks now" }), checks.length ? table(["Action", "Fires", "Blocked by", "Probability"], checks) : el("p", { class: "muted", text: "—" }),
      el("h3", { text: "Recent decisions" }), decisions.length ? table(["When", "Action", "Channel", "Why"], decisions)
        : el("p", { class: "muted", text: "No decision yet." }));
  }

  window.MikuAdmin.section("autonomous", {
    render(container) {
      async function load() {
        try {
          const data = await api("autonomous");
          if (!data.enabled) { container.replaceChildren(el("p", { class: "muted", text: "The autonomous engine is disabled." })); return; }
          container.replaceChildren(...(data.servers.length ? data.servers.map((s) => server(s, load))
            : [el("p", { class: "muted", text: "No server is configured (the bot sends server_config on connect; Settings can add one)." })]));
        } catch (failure) { showError(failure); }
      }
      load();
      const timer = window.setInterval(load, 15000);
      return () => window.clearInterval(timer);
    },
  });
})();
