"use strict";
// Settings: what the graph runs with (secrets never included), and a server's autonomous settings,
// validated by the graph before they apply.
(function () {
  const { el, api, showError } = window.MikuAdmin;

  window.MikuAdmin.section("settings", {
    render(container) {
      const voice = el("pre", { id: "settings-voice" });
      const admin = el("pre", { id: "settings-admin" });
      const guild = el("input", { id: "set-guild", placeholder: "server id", maxlength: 20 });
      const channels = el("input", { id: "set-channels", placeholder: "allowed channel ids, comma separated" });
      const home = el("input", { id: "set-home", placeholder: "home channel id (optional)", maxlength: 20 });
      const zone = el("input", { id: "set-tz", value: "UTC", maxlength: 64 });
      const enabled = el("input", { id: "set-enabled", type: "checkbox", checked: true });
      const result = el("p", { id: "set-result", class: "result" });
      async function load() {
        try {
          const data = await api("settings");
          voice.textContent = JSON.stringify(data.voice, null, 2);
          admin.textContent = JSON.stringify({ ...data.admin, vram_limits_gb: data.vram_limits_gb, servers: data.servers }, null, 2);
        } catch (failure) { showError(failure); }
      }
      container.append(
        el("div", { class: "card" }, el("h2", { text: "Server: autonomous engine" }),
          el("div", { class: "row" }, el("label", { for: "set-guild", text: "Server" }), guild),
          el("div", { class: "row" }, el("label", { for: "set-channels", text: "Allowed channels" }), channels),
          el("div", { class: "row" }, el("label", { for: "set-home", text: "Home channel" }), home),
          el("div", { class: "row" }, el("label", { for: "set-tz", text: "Time zone" }), zone),
          el("div", { class: "row" }, el("label", { for: "set-enabled", text: "Enabled" }), enabled),
          el("div", { class: "row" }, el("button", { id: "set-save", type: "button", text: "Save", onclick: async () => {
            result.className = "result";
            const body = { guild_id: guild.value.trim(), timezone: zone.value.trim(), enabled: enabled.checked,
              allowed_channels: channels.value.split(/[\s,]+/).filter(Boolean) };
            if (home.value.trim()) body.home_channel_id = home.value.trim();
            try {
              const answer = await api("settings/server", { method: "POST", body });
              result.textContent = answer.tracked === false ? `Server ${body.guild_id} is no longer tracked.` : `Saved for server ${answer.guild_id}.`;
              load();
            } catch (failure) { result.textContent = failure.message; result.className = "result error"; }
          } })), result),
        el("div", { class: "card" }, el("h2", { text: "Panel" }), admin),
        el("div", { class: "card wide" }, el("h2", { text: "Voice path (the API token is never shown)" }), voice));
      load();
    },
  });
})();
