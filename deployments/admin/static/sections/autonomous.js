"use strict";
// The autonomous engine per server: its gate, signals, every action's check, recent decisions (why
// she spoke or kept quiet), and pause/resume.
(function () {
  const { el, api, table, fmtTime, showError } = window.MikuAdmin;

  function server(data, reload) {
    const s = data.settings || {};
    const paused = s.enabled === false;
    // why she keeps quiet now: what blocks each action, or its chance per roll when nothing does
    const checks = (data.checks || []).map((c) => [c.action, c.fired ? "would fire" : "no",
      (c.blocked_by || []).join(", ") || "—", c.probability == null ? "—" : Number(c.probability).toFixed(3),
      Object.entries(c.thresholds || {}).map(([k, v]) => `${k}: ${v}`).join(", ")]);
    // why she spoke: the check that fired (its roll under its probability) and the instruction it gave
    const decisions = (data.recent_decisions || []).slice().reverse().map((d) => {
      const fired = ((d.debug && d.debug.checks) || []).find((c) => c.fired);
      const why = fired ? `roll ${Number(fired.roll).toFixed(3)} < p ${Number(fired.probability).toFixed(3)} ` +
        `(${fired.rate_per_min}/min); others blocked by: ` + ((d.debug.checks || []).filter((c) => !c.fired)
          .map((c) => `${c.action}: ${(c.blocked_by || []).join("+") || "roll"}`).join("; ") || "—") : "";
      return [fmtTime(d.decided_at), d.action, d.channel_id, el("div", {}, el("div", { text: why }),
        el("div", { class: "muted", text: d.prompt || "" }))];
    });
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
      el("h3", { text: "Checks now" }), checks.length ? table(["Action", "Fires", "Blocked by", "Probability", "Thresholds"], checks) : el("p", { class: "muted", text: "—" }),
      el("h3", { text: "Recent decisions" }), decisions.length ? table(["When", "Action", "Channel", "Why (and the instruction)"], decisions)
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
