"use strict";
// Conversations from the brain's memory: channels, a channel's recent messages, search, and deleting
// everything one user wrote.
(function () {
  const { el, api, table, fmtTime, showError } = window.MikuAdmin;

  window.MikuAdmin.section("conversations", {
    render(container) {
      const channels = el("div", { id: "conv-channels" });
      const messages = el("div", { id: "conv-messages" });
      const title = el("h2", { text: "Messages" });
      const search = el("input", { id: "conv-search", placeholder: "search text or author", maxlength: 200 });
      const userId = el("input", { id: "conv-delete-user", placeholder: "user id", maxlength: 20 });
      const result = el("p", { id: "conv-result", class: "result" });

      function showMessages(list, heading) {
        title.textContent = heading;
        messages.replaceChildren(list.length ? table(["When", "Author", "Author id", "Channel", "Message"], list.map((m) =>
          [fmtTime(m.ts), m.author_name || "—", m.author_id, m.channel_id, m.content])) : el("p", { class: "muted", text: "No messages." }));
      }
      async function load(params, heading) {
        try {
          const data = await api("conversations?" + new URLSearchParams(params));
          channels.replaceChildren(data.channels.length ? table(["Channel", "Server", "Messages", "Last"], data.channels.map((c) =>
            [el("a", { href: "#conversations", text: c.channel_id, onclick: (e) => { e.preventDefault(); load({ channel_id: c.channel_id }, `Channel ${c.channel_id}`); } }),
              c.guild_id || "DM", c.messages, fmtTime(c.last_ts)])) : el("p", { class: "muted", text: "Memory is empty." }));
          if (heading) showMessages(data.messages, heading);
        } catch (failure) { showError(failure); }
      }

      container.append(
        el("div", { class: "card" }, el("h2", { text: "Channels" }), channels),
        el("div", { class: "card" }, el("h2", { text: "Search and moderation" }),
          el("div", { class: "row" }, search, el("button", { id: "conv-search-button", type: "button", text: "Search",
            onclick: () => search.value.trim() && load({ q: search.value.trim() }, `Search: ${search.value.trim()}`) })),
          el("div", { class: "row" }, el("label", { for: "conv-delete-user", text: "Delete a user's stored messages" })),
          el("div", { class: "row" }, userId, el("button", { id: "conv-delete-button", class: "danger", type: "button", text: "Delete",
            onclick: async () => {
              try {
                const answer = await api("conversations/delete-user", { method: "POST", body: { user_id: userId.value.trim() } });
                result.textContent = `Deleted ${answer.deleted} message(s) by ${answer.user_id}.`;
                load({});
              } catch (failure) { result.textContent = failure.message; }
            } })),
          result),
        el("div", { class: "card wide" }, title, messages));
      load({});
    },
  });
})();
