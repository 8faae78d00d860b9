"use strict";
// Drawing and vision: each stage's backend, URL, health, whether a voice session has its model unloaded
// and whether the owner paused it; pause/resume, and a test drawing or look straight from the panel.
(function () {
  const { el, api, table, fmtTime, showError } = window.MikuAdmin;
  const NAMES = { image: "Drawing (ImageGen)", vision: "Vision" };

  window.MikuAdmin.section("media", {
    render(container) {
      const list = el("div", { id: "media-stages" });
      const result = el("div", { id: "media-result", class: "result" });
      const prompt = el("input", { id: "media-prompt", placeholder: "what to draw (a default test prompt when empty)", maxlength: 2000, size: 50 });
      const url = el("input", { id: "media-url", placeholder: "https://... a picture to look at", maxlength: 4000, size: 50 });
      const question = el("input", { id: "media-question", placeholder: "question (default: What do you see?)", maxlength: 2000, size: 50 });

      function state(s) {
        if (!s.configured) return el("span", { class: "pill", text: "not configured" });
        const pills = [el("span", { class: "pill " + (s.ok ? "ok" : "bad"), text: s.ok ? "healthy" : "down" })];
        if (s.paused) pills.push(el("span", { class: "pill warn", text: `paused by ${s.paused.user}` }));
        if (s.unloaded_for_voice) pills.push(el("span", { class: "pill warn", text: "unloaded for a voice session" }));
        return el("span", {}, pills);
      }

      async function pause(stage, paused) {
        try { await api("media/pause", { method: "POST", body: { stage, paused } }); load(); }
        catch (failure) { showError(failure); }
      }

      async function test(body) {
        result.className = "result";
        result.replaceChildren(el("span", { class: "muted", text: `testing ${body.stage}...` }));
        try {
          const answer = await api("media/test", { method: "POST", body });
          const r = answer.result;
          if (r.type === "image") {
            result.replaceChildren(el("p", { id: "media-test-outcome", text: `Drawn by ${r.backend}: ${r.width}x${r.height}, seed ${r.seed}.` }),
              el("img", { id: "media-test-image", alt: r.prompt, src: "data:image/png;base64," + r.png_b64, class: "media-test" }));
          } else if (r.type === "answer") {
            result.replaceChildren(el("p", { id: "media-test-outcome", text: `Vision (${r.frames} frame(s)): ${r.text}` }));
          } else {
            result.className = "result error";
            result.replaceChildren(el("p", { id: "media-test-outcome", text: `${r.kind}: ${r.message}` }));
          }
        } catch (failure) { result.className = "result error"; result.replaceChildren(el("p", { id: "media-test-outcome", text: failure.message })); }
      }

      async function load() {
        try {
          const data = await api("media");
          list.replaceChildren(table(["Stage", "Backend", "URL", "State", "Model", ""], data.stages.map((s) => [
            NAMES[s.stage] || s.stage, s.backend || "—", s.url || "—",
            el("div", {}, state(s), s.error ? el("div", { class: "muted", text: s.error }) : null),
            s.model_state || "—",
            s.configured ? el("button", { type: "button", class: s.paused ? "" : "danger", id: `media-pause-${s.stage}`,
              text: s.paused ? "Resume" : "Pause", onclick: () => pause(s.stage, !s.paused) }) : "",
          ]), "media-table"));
        } catch (failure) { showError(failure); }
      }

      container.append(
        el("div", { class: "card wide" }, el("h2", { text: "Stages" }), list,
          el("p", { class: "muted", text: "A paused stage refuses drawing and vision requests with \"paused by the owner\"; " +
            "its model stays loaded. A voice session unloads the models on its own and reloads them after." })),
        el("div", { class: "card wide" }, el("h2", { text: "Try a stage" }),
          el("div", { class: "row" }, prompt, el("button", { id: "media-test-image-button", type: "button", text: "Test drawing",
            onclick: () => test({ stage: "image", prompt: prompt.value }) })),
          el("div", { class: "row" }, url, question, el("button", { id: "media-test-vision-button", type: "button", text: "Test vision",
            onclick: () => test({ stage: "vision", url: url.value, question: question.value }) })),
          result));
      load();
      const timer = window.setInterval(load, 5000);
      return () => window.clearInterval(timer);
    },
  });
})();
