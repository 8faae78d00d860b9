"use strict";
// Overview: redrawn on every `overview` event of the live stream (no reloads).
(function () {
  const { el, table, fmtTime, fmtMs, onOverview } = window.MikuAdmin;

  function pill(ok, yes, no) { return el("span", { class: "pill " + (ok ? "ok" : "bad"), text: ok ? yes : no }); }

  function card(id, title, wide) {
    const body = el("div", { id });
    return [el("div", { class: "card" + (wide ? " wide" : "") }, el("h2", { text: title }), body), body];
  }

  function sessions(data) {
    if (!data.sessions.length) return el("p", { class: "muted", text: "No voice session." });
    return table(["Session", "Server", "Voice channel", "Speakers", "Persona", "Since", "Lease ends"],
      data.sessions.map((s) => [s.session_id, s.guild_id, s.voice_channel_id, (s.speakers || []).join(", "),
        s.persona || "—", fmtTime(s.started_at), fmtTime(s.expires_at)]), "sessions-table");
  }

  function features(data) {
    if (!Array.isArray(data.features)) return el("p", { class: "error", text: data.features.error });
    return table(["Feature", "State", "Message"], data.features.map((f) => [f.name,
      f.blocked ? el("span", { class: "pill bad", text: "blacked out" }) : el("span", { class: "pill ok", text: "on" }),
      f.message || ""]));
  }

  function gpus(data) {
    const devices = data.gpus.devices;
    if (!devices.length) {
      const vendors = Object.entries(data.gpus.vendors).map(([v, s]) => `${v}: ${s.state}`).join(", ");
      return el("p", { class: "muted", text: `No GPU telemetry on the ingress's node (${vendors || "no probes"}). ` +
        `Limits: ${Object.entries(data.gpus.limits_gb).map(([r, l]) => `${r} ${l} GB`).join(", ")}.` });
    }
    return el("div", {}, devices.map((d) => {
      const total = d.vram_total_gb || 1;
      const used = el("span", { class: d.over_limit ? "over" : "" });
      used.style.width = `${Math.min(100, (d.vram_used_gb / total) * 100)}%`;
      const bar = el("div", { class: "bar" }, used);
      if (d.limit_gb) { const mark = el("i"); mark.style.left = `${Math.min(100, (d.limit_gb / total) * 100)}%`; bar.append(mark); }
      return el("div", { class: "gpu" },
        el("div", { class: "row" }, el("strong", { text: `${d.name} (${d.resource || d.vendor + " " + d.index})` }),
          el("span", { text: `${d.vram_used_gb.toFixed(1)} / ${d.vram_total_gb.toFixed(1)} GB` +
            (d.limit_gb ? ` · limit ${d.limit_gb} GB` : "") }), d.over_limit ? pill(false, "", "over limit") : null),
        bar);
    }));
  }

  function stages(data) {
    return table(["Stage", "Health", "Backend", "Detail"], Object.entries(data.stages).map(([name, s]) =>
      [name, pill(s.ok, "ok", "down"), s.backend || "", s.error || ""]), "stages-table");
  }

  function queue(data) {
    if (data.queue.error) return el("p", { class: "error", text: data.queue.error });
    return el("div", {}, el("p", { text: `${data.queue.length} message(s) waiting for replay` }),
      el("p", { class: "muted", text: `${data.queue.dropped_total} dropped since start · ${data.queue.blocked_features} feature(s) blacked out` }));
  }

  function ttfa(data) {
    if (!data.recent_ttfa.length) return el("p", { class: "muted", text: "No utterance yet." });
    return table(["When", "Mode", "Time to first audio"], data.recent_ttfa.map((u) =>
      [new Date(u.at * 1000).toLocaleTimeString(), u.mode, el("td", { class: "num", text: fmtMs(u.ttfa_ms) })]));
  }

  window.MikuAdmin.section("overview", {
    render(container) {
      const parts = {};
      for (const [id, title, wide] of [["sessions", "Voice session", true], ["ttfa", "Time to first audio (recent)"],
        ["features", "Feature blackouts"], ["queue", "Text queue"], ["gpus", "VRAM per GPU"], ["stages", "Stages"],
        ["warnings", "Warnings"]]) {
        const [box, body] = card(id, title, wide);
        container.append(box);
        parts[id] = body;
      }
      return onOverview((data) => {
        parts.sessions.replaceChildren(sessions(data));
        parts.ttfa.replaceChildren(ttfa(data));
        parts.features.replaceChildren(features(data));
        parts.queue.replaceChildren(queue(data));
        parts.gpus.replaceChildren(gpus(data));
        parts.stages.replaceChildren(stages(data));
        parts.warnings.replaceChildren(data.warnings.length
          ? el("ul", {}, data.warnings.map((w) => el("li", { text: w.message || JSON.stringify(w) })))
          : el("p", { class: "muted", text: "None." }));
      });
    },
  });
})();
