// Conversations: my sessions, their messages (paged), and a chat box calling Process.
import { CALL } from "./api";
import { announce, clear, h, time } from "./dom";
import type { Context } from "./inbox";
import type { Action } from "./gen/agentserver/v1/agent_service_pb";
import type { Message, Session } from "./gen/agentserver/v1/conversation_service_pb";
import { levelName, roleName, stateName } from "./labels";

export function conversationsView(ctx: Context): HTMLElement {
  const sessions = h("ul", { class: "sessions" });
  const moreSessions = h("button", { type: "button", class: "secondary", hidden: true }, "More conversations");
  const thread = h("ol", { class: "thread", "aria-live": "polite" });
  const older = h("button", { type: "button", class: "secondary", hidden: true }, "Older messages");
  const title = h("h3", { id: "thread-title" }, "New conversation");
  const input = h("textarea", { id: "chat-message", name: "message", rows: 3, maxlength: 8000, required: true });
  const send = h("button", { type: "submit" }, "Send");
  const chat = h("form", { class: "chat" }, h("label", { for: "chat-message" }, "Message"), input, send);
  let current = "";
  let sessionsToken = "";
  let messagesToken = "";

  async function loadSessions(append: boolean): Promise<void> {
    try {
      const page = await ctx.api.conversations.listUserSessions(
        { pageSize: 20, pageToken: append ? sessionsToken : "" },
        CALL,
      );
      sessionsToken = page.nextPageToken;
      moreSessions.hidden = !sessionsToken;
      if (!append) clear(sessions);
      for (const s of page.sessions) sessions.append(sessionItem(s));
      if (!append && page.sessions.length === 0) sessions.append(h("li", { class: "empty" }, "No conversations yet."));
    } catch (err) {
      ctx.onError(err);
    }
  }

  function sessionItem(s: Session): HTMLElement {
    return h(
      "li",
      {},
      h(
        "button",
        { type: "button", class: "link", "data-session-id": s.id, onclick: () => void open(s.id, s.title) },
        s.title || s.id,
      ),
      h("small", {}, ` ${s.messageCount} messages · ${time(s.updateTime)}`),
    );
  }

  async function open(sessionId: string, name: string): Promise<void> {
    current = sessionId;
    title.textContent = name || "Conversation";
    clear(thread);
    await loadMessages(false);
    input.focus();
  }

  async function loadMessages(append: boolean): Promise<void> {
    if (!current) return;
    const asked = current;
    try {
      const page = await ctx.api.conversations.listMessages(
        { sessionId: current, pageSize: 30, pageToken: append ? messagesToken : "" },
        CALL,
      );
      if (asked !== current) return; // another conversation was opened meanwhile
      messagesToken = page.nextPageToken;
      older.hidden = !messagesToken;
      // Newest first from the server; shown oldest at the top.
      const items = page.messages.map(messageItem).reverse();
      if (append) thread.prepend(...items);
      else thread.replaceChildren(...items);
    } catch (err) {
      ctx.onError(err);
    }
  }

  function messageItem(m: Message): HTMLElement {
    return h(
      "li",
      { class: `message role-${roleName(m.role)}` },
      h("span", { class: "who" }, roleName(m.role)),
      h("p", { class: "content" }, m.content),
      h("small", {}, time(m.createTime)),
    );
  }

  function actionItem(a: Action): HTMLElement {
    return h(
      "li",
      { class: "proposed", "data-action-id": a.id },
      `${a.actionType}: ${stateName(a.state)} (${levelName(a.decisionLevel)}, ${a.tokenCost} tokens)`,
    );
  }

  chat.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    send.disabled = true;
    try {
      const reply = await ctx.api.agent.process({ message: text, sessionId: current }, CALL);
      input.value = "";
      if (!current) await loadSessions(false);
      current = reply.sessionId;
      title.textContent = text.slice(0, 60);
      await loadMessages(false);
      thread.append(
        h(
          "li",
          { class: "message proposal" },
          h("span", { class: "who" }, `proposed (${levelName(reply.decisionLevel)})`),
          h("ul", {}, reply.actions.map(actionItem)),
        ),
      );
      announce("Sent.");
      ctx.refreshBalance();
    } catch (err) {
      ctx.onError(err);
    } finally {
      send.disabled = false;
    }
  });
  older.addEventListener("click", () => void loadMessages(true));
  moreSessions.addEventListener("click", () => void loadSessions(true));
  void loadSessions(false);
  const wanted = ctx.takeSession();
  if (wanted) void open(wanted, "");
  const fresh = () => {
    current = "";
    title.textContent = "New conversation";
    clear(thread);
    input.focus();
  };
  return h(
    "section",
    { class: "conversations", "aria-labelledby": "conv-title" },
    h("h2", { id: "conv-title" }, "Conversations"),
    h(
      "div",
      { class: "split" },
      h(
        "nav",
        { "aria-label": "Your conversations" },
        h("button", { type: "button", onclick: fresh }, "New conversation"),
        sessions,
        moreSessions,
      ),
      h("div", { class: "pane" }, title, older, thread, chat),
    ),
  );
}
