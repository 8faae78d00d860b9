"use strict";
// Scheduled events and the figurine notifier. Both run in the bot, which reports them to the graph
// every few seconds (POST /v1/bot/sync); the buttons queue a command the bot picks up at its next sync.
(function () {
  const { el, api, table, fmtTime, showError } = window.MikuAdmin;

  window.MikuAdmin.section("schedule", {
    render(container) {
      const status = el("div", { id: "bot-status" });
      const jobs = el("div", { id: "bot-jobs" });
      const feeds = el("div", { id: "bot-feeds" });
      const commands = el("div", { id: "bot-commands" });
      const result = el("p", { id: "bot-result", class: "result" });

      async function command(kind, target) {
        result.className = "result";
        try {
          const answer = await api("bot/command", { method: "POST", body: { kind, target } });
          result.textContent = `Sent ${kind} ${target} to the bot (${answer.command.id}); it runs at the bot's next sync.`;
          load();
        } catch (failure) { result.textContent = failure.message; result.className = "result error"; }
      }

      function button(text, kind, target, extra) {
        return el("button", { type: "button", text, class: extra || "", "data-kind": kind, "data-target": target,
          onclick: () => command(kind, target) });
      }

      async function load() {
        let data;
        try { data = await api("bot"); } catch (failure) { showError(failure); return; }
        status.replaceChildren(el("div", { class: "row" },
          el("span", { class: "pill " + (data.connected ? "ok" : "bad"), text: data.connected ? "bot connected" : "bot not connected" }),
          el("span", { class: "muted", text: data.reported_at ? `last report ${fmtTime(data.reported_at)} from ${data.bot_id}` : "the bot has not reported since the graph started" })));
        jobs.replaceChildren(!data.scheduler ? el("p", { class: "muted", text: "Scheduled events are off in the bot (no schedule file)." })
          : data.jobs.length ? table(["Job", "Trigger", "Next run", "State", "Last result", "Message", ""], data.jobs.map((j) => [
            j.id, `${j.trigger} (${j.timezone})`, j.paused ? "—" : fmtTime(j.next_run),
            el("span", { class: "pill " + (j.paused ? "warn" : "ok"), text: j.paused ? "paused" : (j.deferred ? "deferred (voice)" : "scheduled") }),
            j.last_result ? `${j.last_result} at ${fmtTime(j.last_run)}` : "—", j.message,
            el("div", { class: "row" }, j.paused ? button("Resume", "job.resume", j.id) : button("Pause", "job.pause", j.id, "danger"),
              button("Run now", "job.run", j.id)),
          ]), "bot-jobs-table") : el("p", { class: "muted", text: "No job." }));
        const n = data.notifier;
        feeds.replaceChildren(!n ? el("p", { class: "muted", text: "The figurine notifier is off in the bot (no figurines file)." })
          : el("div", {},
            el("div", { class: "row" }, el("span", { id: "notifier-state", class: "pill " + (n.paused ? "warn" : "ok"), text: n.paused ? "notifier paused" : "notifier running" }),
              el("span", { class: "muted", text: `${n.waiting} post(s) waiting · posted ${n.stats.posted ?? 0} · feed errors ${n.stats.feed_errors ?? 0}` }),
              n.paused ? button("Resume notifier", "notifier.resume", "") : button("Pause notifier", "notifier.pause", "", "danger")),
            data.feeds.length ? table(["Feed", "Last fetch", "Next poll", "Items seen (matched)", "Error", ""], data.feeds.map((f) => [
              f.url, fmtTime(f.last_fetch), fmtTime(f.next_poll), `${f.items_seen} (${f.items_matched})`,
              f.error ? el("span", { class: "error", text: `${f.error} (${f.failures} in a row)` }) : "—",
              button("Poll now", "feed.poll", f.url),
            ]), "bot-feeds-table") : el("p", { class: "muted", text: "No feed." })));
        commands.replaceChildren(data.commands.length ? table(["Queued", "By", "Command", "Target", "State", "Result"],
          data.commands.map((c) => [fmtTime(c.queued_at), c.user, c.kind, c.target || "—", c.state, c.result || "—"]), "bot-commands-table")
          : el("p", { class: "muted", text: "No command yet." }));
      }

      container.append(
        el("div", { class: "card wide" }, el("h2", { text: "The bot" }), status, result),
        el("div", { class: "card wide" }, el("h2", { text: "Scheduled events" }), jobs),
        el("div", { class: "card wide" }, el("h2", { text: "Figurine feeds" }), feeds),
        el("div", { class: "card wide" }, el("h2", { text: "Commands sent to the bot" }), commands));
      load();
      const timer = window.setInterval(load, 2000);
      return () => window.clearInterval(timer);
    },
  });
})();
