"use strict";
// Personas and moods: the loaded modelfiles, which persona and mood each server has, switching them,
// and validating a modelfile before it is installed.
(function () {
  const { el, api, table, showError } = window.MikuAdmin;

  window.MikuAdmin.section("personas", {
    render(container) {
      const list = el("div", { id: "persona-list" });
      const servers = el("div", { id: "persona-servers" });
      const guild = el("input", { id: "persona-guild", placeholder: "server id", maxlength: 20 });
      const personaSelect = el("select", { id: "persona-select" });
      const moodSelect = el("select", { id: "mood-select" });
      const result = el("p", { id: "persona-result", class: "result" });
      const modelfile = el("textarea", { id: "modelfile", spellcheck: "false",
        placeholder: "NAME my-persona\nFROM llama3\nSYSTEM \"\"\"You are ...\"\"\"\nPARAMETER temperature 0.8" });
      const verdict = el("pre", { id: "modelfile-result", class: "result" });

      async function load() {
        try {
          const data = await api("personas");
          personaSelect.replaceChildren(...data.personas.map((p) => el("option", { value: p.name, text: `${p.display_name} (${p.name})` })));
          moodSelect.replaceChildren(...data.moods.map((m) => el("option", { value: m.name, text: m.name })));
          list.replaceChildren(...data.personas.map((p) => el("details", { class: "persona" },
            el("summary", { text: `${p.display_name} (${p.name})${p.name === data.default ? " — default" : ""}` }),
            el("p", { class: "muted", text: `${p.description || ""} Base model ${p.base_model}; ` +
              Object.entries(p.parameters).map(([k, v]) => `${k}=${v}`).join(", ") }),
            el("pre", { text: p.system_prompt }))));
          servers.replaceChildren(data.servers.length ? table(["Server", "Persona", "Mood"],
            data.servers.map((s) => [s.guild_id, s.persona, s.mood]), "persona-servers-table")
            : el("p", { class: "muted", text: `No server seen yet: every server starts as ${data.default}, ${data.default_mood}.` }));
        } catch (failure) { showError(failure); }
      }

      async function change(path, body, describe) {
        result.className = "result";
        try {
          const answer = await api(path, { method: "POST", body });
          result.textContent = describe(answer);
          load();
        } catch (failure) { result.textContent = failure.message; result.className = "result error"; }
      }

      container.append(
        el("div", { class: "card" }, el("h2", { text: "Switch persona or mood for a server" }),
          el("div", { class: "row" }, el("label", { for: "persona-guild", text: "Server" }), guild),
          el("div", { class: "row" }, personaSelect, el("button", { id: "persona-switch", type: "button", text: "Switch persona",
            onclick: () => change("personas/switch", { guild_id: guild.value.trim(), persona: personaSelect.value },
              (a) => `Server ${a.guild_id} now uses ${a.display_name} (${a.persona}).`) })),
          el("div", { class: "row" }, moodSelect, el("button", { id: "mood-set", type: "button", text: "Set mood",
            onclick: () => change("moods/set", { guild_id: guild.value.trim(), mood: moodSelect.value },
              (a) => `Server ${a.guild_id} is now ${a.mood}.`) })),
          result),
        el("div", { class: "card" }, el("h2", { text: "Servers" }), servers),
        el("div", { class: "card wide" }, el("h2", { text: "Personas (modelfiles)" }), list),
        el("div", { class: "card wide" }, el("h2", { text: "Validate a modelfile" }), modelfile,
          el("div", { class: "row" }, el("button", { id: "modelfile-validate", type: "button", text: "Validate",
            onclick: async () => {
              try {
                const answer = await api("personas/validate", { method: "POST", body: { text: modelfile.value } });
                verdict.className = "result " + (answer.ok ? "" : "error");
                verdict.textContent = answer.ok ? `Valid: persona ${answer.persona.name}, base model ${answer.persona.base_model}.` : answer.error;
              } catch (failure) { verdict.textContent = failure.message; verdict.className = "result error"; }
            } })), verdict));
      load();
    },
  });
})();
