// The inbox: actions waiting for this person (or, filtered, any the person may
// read), newest first, with what led to each, and the decision itself.
import type { JsonObject } from "@bufbuild/protobuf";
import { CALL, type Api } from "./api";
import { announce, clear, h, time } from "./dom";
import { explain } from "./errors";
import { type Action, type ActionDefinition, ActionOutcome, ActionState } from "./gen/agentserver/v1/agent_service_pb";
import { DecisionLevel } from "./gen/agentserver/v1/common_pb";
import { MessageRole } from "./gen/agentserver/v1/conversation_service_pb";
import { levelName, LEVELS, stateName, STATES, WAITING } from "./labels";
import { schemaForm, type Schema } from "./schema";

export type Context = {
  api: Api;
  onError: (err: unknown) => void;
  refreshBalance: () => void;
  openSession: (sessionId: string) => void;
  takeSession: () => string;
};

let definitions: Map<string, ActionDefinition> | undefined;

async function definitionOf(api: Api, type: string): Promise<ActionDefinition | undefined> {
  if (!definitions) {
    const all = await api.agent.listActionDefinitions({}, CALL);
    definitions = new Map(all.definitions.map((d) => [d.name, d]));
  }
  return definitions.get(type);
}

function requestId(): string {
  return crypto.randomUUID();
}

export function inboxView(ctx: Context): HTMLElement {
  const list = h("div", { class: "cards", "aria-live": "polite" });
  const which = h(
    "select",
    { id: "inbox-filter", name: "which" },
    h("option", { value: "mine" }, "Waiting for me"),
    h("option", { value: "waiting" }, "All waiting"),
    STATES.filter((s) => !WAITING.includes(s)).map((s) => h("option", { value: String(s) }, stateName(s))),
  );
  const level = h(
    "select",
    { id: "inbox-level", name: "level" },
    h("option", { value: "" }, "any level"),
    LEVELS.map((l) => h("option", { value: String(l) }, levelName(l))),
  );
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "More");
  let token = "";
  let latest = 0; // answers to an older choice of filters are dropped, not shown

  async function load(append: boolean): Promise<void> {
    const asked = ++latest;
    const mine = which.value === "mine";
    const states = mine || which.value === "waiting" ? WAITING : [Number(which.value)];
    const levels = level.value ? [Number(level.value) as DecisionLevel] : [];
    try {
      const page = await ctx.api.agent.listActions(
        { decidableOnly: mine, states, levels, pageSize: 20, pageToken: append ? token : "" },
        CALL,
      );
      if (asked !== latest) return;
      token = page.nextPageToken;
      more.hidden = !token;
      if (!append) clear(list);
      if (!append && page.actions.length === 0) {
        list.append(h("p", { class: "empty" }, mine ? "Nothing waits for you." : "No actions."));
      }
      for (const action of page.actions) list.append(card(ctx, action, () => void load(false)));
    } catch (err) {
      ctx.onError(err);
    }
  }

  which.addEventListener("change", () => void load(false));
  level.addEventListener("change", () => void load(false));
  more.addEventListener("click", () => void load(true));
  void load(false);
  return h(
    "section",
    { "aria-labelledby": "inbox-title" },
    h("h2", { id: "inbox-title" }, "Inbox"),
    h(
      "div",
      { class: "filters" },
      h("label", { for: "inbox-filter" }, "Show"),
      which,
      h("label", { for: "inbox-level" }, "Level"),
      level,
      h("button", { type: "button", class: "secondary", onclick: () => void load(false) }, "Refresh"),
    ),
    list,
    more,
  );
}

function card(ctx: Context, action: Action, reload: () => void): HTMLElement {
  const right = action.decisionRight;
  const origin = h("blockquote", { class: "origin" }, "…");
  void leadingMessage(ctx.api, action).then((text) => origin.replaceChildren(text));
  const decide = h("div", { class: "decide" });
  const el = h(
    "article",
    { class: "action", "data-action-id": action.id, "data-state": stateName(action.state) },
    h(
      "header",
      {},
      h("h3", {}, action.actionType),
      h("span", { class: `badge level-${action.decisionLevel}` }, levelName(action.decisionLevel)),
      h("span", { class: "badge state" }, stateName(action.state)),
    ),
    h("p", { class: "meta" }, `asked by ${action.requestedBy || "?"} · ${time(action.createTime)}`),
    h("p", { class: "label" }, "The message that led to it"),
    origin,
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Cost"),
      h("dd", {}, `${action.tokenCost} ${action.tokenCost === 1n ? "token" : "tokens"}`),
      h("dt", {}, "Confidence"),
      h("dd", {}, `${action.confidence} / 100`),
      h("dt", {}, "Reasoning"),
      h("dd", {}, action.reasoning),
      h("dt", {}, "Who may decide"),
      h("dd", {}, right?.deciders || "nobody: it no longer waits"),
      action.decidedBy ? [h("dt", {}, "Decided by"), h("dd", {}, action.decidedBy)] : null,
      action.rejectionReason ? [h("dt", {}, "Reason"), h("dd", {}, action.rejectionReason)] : null,
      action.result?.error ? [h("dt", {}, "Error"), h("dd", {}, action.result.error)] : null,
    ),
    h("p", { class: "label" }, "Parameters"),
    h("pre", { class: "params" }, JSON.stringify(action.parameters ?? {}, null, 2)),
    decide,
    h("button", { type: "button", class: "link", onclick: () => ctx.openSession(action.sessionId) }, "Open conversation"),
  );
  if (action.state === ActionState.OUTCOME_UNKNOWN) {
    decide.append(outcomeForm(ctx, action, el, reload));
  } else if (right?.allowed) {
    decide.append(
      h("button", { type: "button", onclick: () => void approve(ctx, action, undefined, el, reload) }, "Approve"),
      h("button", { type: "button", class: "secondary", onclick: () => void editForm(ctx, action, decide, el, reload) }, "Edit and approve"),
      h("button", { type: "button", class: "danger", onclick: () => rejectForm(ctx, action, decide, el, reload) }, "Reject"),
    );
  } else if (right && WAITING.includes(action.state)) {
    decide.append(
      h("p", { class: "cannot-decide" }, `You may not decide this: ${right.explanation}. ${capital(right.deciders)} may.`),
    );
  }
  return el;
}

function capital(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

async function leadingMessage(api: Api, action: Action): Promise<string> {
  // The assistant message listing the action follows the user's message that led to it.
  try {
    const page = await api.conversations.listMessages({ sessionId: action.sessionId, pageSize: 200 }, CALL);
    const messages = page.messages; // newest first
    const i = messages.findIndex((m) => m.actionIds.includes(action.id) && m.role === MessageRole.ASSISTANT);
    const user = messages.slice(i + 1).find((m) => m.role === MessageRole.USER);
    return user ? user.content : "(not available)";
  } catch (err) {
    return `(not available: ${explain(err).text})`;
  }
}

async function approve(
  ctx: Context,
  action: Action,
  parameters: JsonObject | undefined,
  el: HTMLElement,
  reload: () => void,
  onFields?: (fields: Map<string, string>) => void,
): Promise<void> {
  try {
    const done = await ctx.api.agent.approveAction({ actionId: action.id, parameters, requestId: requestId() }, CALL);
    const state = done.action ? stateName(done.action.state) : "approved";
    announce(`${action.actionType}: ${state}.`);
    el.dataset.state = state;
    ctx.refreshBalance();
    reload();
  } catch (err) {
    const why = explain(err);
    if (onFields && why.fields.size) onFields(why.fields);
    ctx.onError(err);
  }
}

// An action whose send may or may not have happened (the server stopped while the
// provider was being called): it is never sent again; a person who checked says which.
function outcomeForm(ctx: Context, action: Action, el: HTMLElement, reload: () => void): HTMLElement {
  const note = h("input", { id: `outcome-${action.id}-note`, name: "note", maxlength: "2000" });
  async function resolve(outcome: ActionOutcome): Promise<void> {
    try {
      const done = await ctx.api.agent.resolveActionOutcome(
        { actionId: action.id, outcome, note: note.value, requestId: requestId() },
        CALL,
      );
      const state = done.action ? stateName(done.action.state) : "settled";
      announce(`${action.actionType}: ${state}.`);
      el.dataset.state = state;
      ctx.refreshBalance();
      reload();
    } catch (err) {
      ctx.onError(err);
    }
  }
  return h(
    "div",
    { class: "outcome" },
    h(
      "p",
      {},
      "Nobody knows whether this went out: the server stopped while the provider was being called. " +
        "It will not be sent again. Check with the recipient or the provider, then say what happened " +
        "(it went out: its tokens are charged; it did not: they are released).",
    ),
    h("label", { for: note.id }, "How you found out (optional)"),
    note,
    h("button", { type: "button", onclick: () => void resolve(ActionOutcome.HAPPENED) }, "It went out"),
    h(
      "button",
      { type: "button", class: "secondary", onclick: () => void resolve(ActionOutcome.DID_NOT_HAPPEN) },
      "It did not go out",
    ),
  );
}

async function editForm(ctx: Context, action: Action, decide: HTMLElement, el: HTMLElement, reload: () => void): Promise<void> {
  const definition = await definitionOf(ctx.api, action.actionType).catch((err: unknown) => {
    ctx.onError(err);
    return undefined;
  });
  const schema = (definition ? JSON.parse(definition.parametersJsonSchema) : {}) as Schema;
  const form = schemaForm(schema, (action.parameters ?? {}) as JsonObject, `edit-${action.id}`);
  const submit = h("button", { type: "submit" }, "Approve with these parameters");
  const element = h(
    "form",
    { class: "edit", "aria-label": `Edit ${action.actionType}` },
    form.element,
    submit,
    h("button", { type: "button", class: "secondary", onclick: () => reload() }, "Cancel"),
  );
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    const { value, errors } = form.values();
    form.showErrors(errors);
    if (errors.size) {
      announce("Some parameters need fixing (see beside the fields).", "error");
      return;
    }
    void approve(ctx, action, value, el, reload, (fields) => form.showErrors(fields));
  });
  clear(decide, element);
  (element.querySelector("input, textarea, select") as HTMLElement | null)?.focus();
}

function rejectForm(ctx: Context, action: Action, decide: HTMLElement, el: HTMLElement, reload: () => void): void {
  const id = `reason-${action.id}`;
  const reason = h("textarea", { id, name: "reason", rows: 2, required: true, maxlength: 2000 });
  const form = h(
    "form",
    { class: "reject" },
    h("label", { for: id }, "Reason"),
    reason,
    h("button", { type: "submit", class: "danger" }, "Reject with this reason"),
    h("button", { type: "button", class: "secondary", onclick: () => reload() }, "Cancel"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await ctx.api.agent.rejectAction({ actionId: action.id, reason: reason.value, requestId: requestId() }, CALL);
      announce(`${action.actionType}: rejected.`);
      el.dataset.state = "rejected";
      ctx.refreshBalance();
      reload();
    } catch (err) {
      ctx.onError(err);
    }
  });
  clear(decide, form);
  reason.focus();
}
