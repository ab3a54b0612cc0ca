// A few lines of DOM building; text is always set as text, never as HTML.
type Attrs = Record<string, string | boolean | number | EventListener | undefined>;
type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return el;
}

export function clear(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  for (const child of children.flat()) {
    if (child) el.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
}

const LIVE = () => document.getElementById("status");

// Announces to screen readers and shows the latest outcome at the top.
export function announce(text: string, kind: "info" | "error" = "info"): void {
  const live = LIVE();
  if (!live) return;
  live.className = `status ${kind}`;
  live.textContent = text;
}

export function time(ts: { seconds: bigint; nanos: number } | undefined): string {
  if (!ts) return "";
  const d = new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}
