// The console for the people in the loop. Signs in with a person's API key, kept in
// this tab's sessionStorage (gone when the tab closes), never in a URL or a log.
import { apiBaseUrl, CALL, connect, type Api } from "./api";
import { conversationsView } from "./conversations";
import { announce, clear, h } from "./dom";
import { explain } from "./errors";
import { inboxView, type Context } from "./inbox";
import { walletView } from "./wallet";

const KEY = "agentserver.key";
const VIEWS = ["inbox", "conversations", "wallet"] as const;
type View = (typeof VIEWS)[number];

const main = document.getElementById("main") as HTMLElement;
const nav = document.getElementById("nav") as HTMLElement;
const balance = document.getElementById("balance") as HTMLElement;

// Each signed-in person's views answer only while they are the one signed in: calls
// still in flight when they sign out must not touch what the next person sees.
let signedIn = 0;

function signIn(baseUrl: string, reason = ""): void {
  signedIn++;
  nav.hidden = true;
  clear(nav); // the previous person's buttons hold their key: gone, not just hidden
  balance.textContent = "";
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true });
  const form = h(
    "form",
    { class: "sign-in" },
    h("h2", {}, "Sign in"),
    h("p", {}, "Use the API key your operator made for you (agentserver key create --tenant T --user YOU)."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    const api = connect(baseUrl, key);
    try {
      await api.tokens.getBalance({}, CALL); // proves the key before keeping it
      sessionStorage.setItem(KEY, key);
      input.value = "";
      start(baseUrl, api);
    } catch (err) {
      announce(explain(err).text, "error");
    }
  });
  clear(main, form);
  if (reason) announce(reason, "error");
  input.focus();
}

function start(baseUrl: string, api: Api): void {
  const session = ++signedIn;
  const current = () => session === signedIn;
  nav.hidden = false;
  let pendingSession = "";
  const ctx: Context = {
    api,
    openSession(sessionId: string) {
      pendingSession = sessionId;
      show("conversations");
    },
    takeSession() {
      const id = pendingSession;
      pendingSession = "";
      return id;
    },
    onError(err: unknown) {
      if (!current()) return;
      const why = explain(err);
      if (why.signInAgain) {
        sessionStorage.removeItem(KEY);
        signIn(baseUrl, why.text);
        return;
      }
      announce(why.text, "error");
    },
    refreshBalance() {
      api.tokens
        .getBalance({}, CALL)
        .then((b) => {
          if (!current()) return;
          balance.textContent = `${b.balance?.availableTokens ?? 0n} tokens available`;
          balance.dataset.available = String(b.balance?.availableTokens ?? 0n);
        })
        .catch((err: unknown) => ctx.onError(err));
    },
  };
  const show = (view: View) => {
    if (!current()) return;
    for (const button of nav.querySelectorAll<HTMLButtonElement>("button[data-view]")) {
      button.setAttribute("aria-current", String(button.dataset.view === view));
    }
    const render = { inbox: inboxView, conversations: conversationsView, wallet: walletView }[view];
    announce("");
    clear(main, render(ctx));
    if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
  };
  clear(
    nav,
    VIEWS.map((v) => h("button", { type: "button", "data-view": v, onclick: () => show(v) }, v[0].toUpperCase() + v.slice(1))),
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        onclick: () => {
          sessionStorage.removeItem(KEY);
          signIn(baseUrl, "Signed out.");
        },
      },
      "Sign out",
    ),
  );
  ctx.refreshBalance();
  const wanted = location.hash.slice(1) as View;
  show(VIEWS.includes(wanted) ? wanted : "inbox");
}

async function boot(): Promise<void> {
  const baseUrl = await apiBaseUrl();
  const key = sessionStorage.getItem(KEY);
  if (key) start(baseUrl, connect(baseUrl, key));
  else signIn(baseUrl);
}

void boot();
