"use strict";
// Latency over the last hour, drawn by the vendored uPlot (static/vendor/): time to first audio, and
// the time from the prompt to each stage's first output. Refreshed every 10 s.
(function () {
  const { el, api, showError } = window.MikuAdmin;
  const COLORS = { first_token: "#f5b942", first_chunk: "#b48cff", first_tts_audio: "#4cd787", first_vc_audio: "#5aa9ff", first_frame: "#39c5bb" };
  const LABELS = { first_token: "LLM first token", first_chunk: "first speakable chunk", first_tts_audio: "TTS first audio",
    first_vc_audio: "VC first audio", first_frame: "first frame (TTFA)" };

  function options(title, names, width, windowS) {
    const now = Date.now() / 1000;
    return {
      title, width, height: 260,
      // the whole window, whatever the points: an hour is an hour even with one utterance in it
      scales: { x: { time: true, range: () => [now - windowS, now] }, y: { range: (u, min, max) => [0, Math.max(10, (max || 0) * 1.15)] } },
      axes: [{ stroke: "#8ba0b3", grid: { stroke: "#2a3a4a" } }, { stroke: "#8ba0b3", grid: { stroke: "#2a3a4a" }, label: "ms" }],
      series: [{}].concat(names.map((name) => ({ label: LABELS[name], stroke: COLORS[name], width: 2,
        points: { show: true, size: 5 }, spanGaps: false, value: (u, v) => (v == null ? "—" : `${Math.round(v)} ms`) }))),
    };
  }

  window.MikuAdmin.section("latency", {
    render(container) {
      const ttfaBox = el("div", { id: "latency-ttfa", class: "chart" });
      const stageBox = el("div", { id: "latency-stages", class: "chart" });
      const note = el("p", { id: "latency-count", class: "muted" });
      container.append(el("div", { class: "card wide" }, el("h2", { text: "Time to first audio, last hour" }), note, ttfaBox),
        el("div", { class: "card wide" }, el("h2", { text: "Per stage: ms from the prompt to each stage's first output" }), stageBox));
      let plots = [];
      async function draw() {
        try {
          const data = await api("latency?window_s=3600");
          const cols = data.columns;
          note.textContent = `${cols.t.length} utterance(s) in the last hour`;
          for (const plot of plots) plot.destroy();
          const width = Math.max(320, ttfaBox.clientWidth || 800);
          plots = [
            new uPlot(options("Time to first audio", ["first_frame"], width, data.window_s), [cols.t, cols.first_frame], ttfaBox),
            new uPlot(options("Stages", data.series, width, data.window_s), [cols.t].concat(data.series.map((s) => cols[s])), stageBox),
          ];
          container.dataset.points = String(cols.t.length);
        } catch (failure) { showError(failure); }
      }
      draw();
      const timer = window.setInterval(draw, 10000);
      return () => { window.clearInterval(timer); for (const plot of plots) plot.destroy(); };
    },
  });
})();
