// The wallet: balance, arrears, open reservations, usage entries, and tokens spent per
// day by operation type (an SVG chart drawn here: no chart library, no CDN).
import { CALL } from "./api";
import { clear, h, time } from "./dom";
import type { Context } from "./inbox";
import type { DailyUsage } from "./gen/agentserver/v1/token_service_pb";
import { ReservationState } from "./gen/agentserver/v1/token_service_pb";
import { kindName, opName, reservationName } from "./labels";

const COLORS = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

export function walletView(ctx: Context): HTMLElement {
  const balance = h("dl", { class: "balance" });
  const chart = h("figure", { class: "chart" });
  const reservations = h("tbody");
  const usage = h("tbody");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "More entries");
  let token = "";

  async function load(): Promise<void> {
    try {
      const [b, r, days] = await Promise.all([
        ctx.api.tokens.getBalance({}, CALL),
        ctx.api.tokens.listReservations({ states: [ReservationState.PENDING], pageSize: 50 }, CALL),
        ctx.api.tokens.summarizeUsage({ days: 30 }, CALL),
      ]);
      const w = b.balance;
      if (w) {
        clear(
          balance,
          ...[
            ["Available", w.availableTokens],
            ["Purchased", w.totalTokens],
            ["Used", w.usedTokens],
            ["Reserved", w.reservedTokens],
            ["Arrears", w.arrearsTokens],
          ].flatMap(([k, v]) => [h("dt", {}, String(k)), h("dd", { "data-field": String(k).toLowerCase() }, `${v} tokens`)]),
        );
      }
      clear(
        reservations,
        r.reservations.length
          ? r.reservations.map((x) =>
              h(
                "tr",
                {},
                h("td", {}, time(x.createTime)),
                h("td", {}, opName(x.operationType)),
                h("td", { class: "num" }, String(x.amount)),
                h("td", {}, reservationName(x.state)),
                h("td", {}, time(x.expireTime)),
                h("td", {}, x.description),
              ),
            )
          : h("tr", {}, h("td", { colspan: 6 }, "No open reservations.")),
      );
      drawChart(chart, days.days);
      await loadUsage(false);
    } catch (err) {
      ctx.onError(err);
    }
  }

  async function loadUsage(append: boolean): Promise<void> {
    const page = await ctx.api.tokens.listUsage({ pageSize: 25, pageToken: append ? token : "" }, CALL);
    token = page.nextPageToken;
    more.hidden = !token;
    if (!append) clear(usage);
    for (const e of page.entries) {
      usage.append(
        h(
          "tr",
          {},
          h("td", {}, time(e.createTime)),
          h("td", {}, kindName(e.kind)),
          h("td", {}, opName(e.operationType)),
          h("td", { class: "num" }, String(e.tokens)),
          h("td", { class: "num" }, String(e.availableAfter)),
          h("td", {}, e.description),
        ),
      );
    }
  }

  more.addEventListener("click", () => void loadUsage(true).catch(ctx.onError));
  void load();
  const table = (caption: string, heads: string[], body: HTMLElement) =>
    h(
      "div",
      { class: "table-wrap" },
      h("table", {}, h("caption", {}, caption), h("thead", {}, h("tr", {}, heads.map((x) => h("th", { scope: "col" }, x)))), body),
    );
  return h(
    "section",
    { "aria-labelledby": "wallet-title" },
    h("h2", { id: "wallet-title" }, "Wallet"),
    balance,
    chart,
    table("Open reservations", ["Created", "For", "Tokens", "State", "Expires", "Note"], reservations),
    table("Usage", ["When", "Kind", "For", "Tokens", "Available after", "Note"], usage),
    more,
  );
}

function drawChart(figure: HTMLElement, days: DailyUsage[]): void {
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag: string, attrs: Record<string, string | number>, text?: string) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const byDay = new Map<string, Map<number, number>>();
  const ops = new Set<number>();
  for (const d of days) {
    const row = byDay.get(d.day) ?? new Map<number, number>();
    row.set(d.operationType, (row.get(d.operationType) ?? 0) + Number(d.tokens));
    byDay.set(d.day, row);
    ops.add(d.operationType);
  }
  const today = new Date();
  const labels: string[] = [];
  for (let i = 29; i >= 0; i--) {
    labels.push(new Date(today.getTime() - i * 86_400_000).toISOString().slice(0, 10));
  }
  const opList = [...ops].sort((a, b) => a - b);
  const totals = labels.map((d) => [...(byDay.get(d)?.values() ?? [])].reduce((a, b) => a + b, 0));
  const max = Math.max(1, ...totals);
  const W = 600, H = 200, left = 36, bottom = 20, bw = (W - left) / labels.length;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H + bottom}`, role: "img", "aria-labelledby": "chart-title" });
  root.append(svg("title", { id: "chart-title" }, "Tokens spent per day by operation type, last 30 days"));
  root.append(svg("text", { x: 0, y: 12, class: "axis" }, String(max)));
  root.append(svg("text", { x: 0, y: H, class: "axis" }, "0"));
  labels.forEach((day, i) => {
    let y = H;
    for (const [j, op] of opList.entries()) {
      const v = byDay.get(day)?.get(op) ?? 0;
      if (!v) continue;
      const height = (v / max) * (H - 16);
      y -= height;
      const rect = svg("rect", { x: left + i * bw + 1, y, width: Math.max(1, bw - 2), height, fill: COLORS[j % COLORS.length] });
      rect.append(svg("title", {}, `${day}: ${v} tokens for ${opName(op)}`));
      root.append(rect);
    }
    if (i % 7 === 0 || i === labels.length - 1) {
      root.append(svg("text", { x: left + i * bw, y: H + 14, class: "axis" }, day.slice(5)));
    }
  });
  const legend = h(
    "ul",
    { class: "legend" },
    opList.map((op, j) => h("li", {}, h("span", { class: "swatch", style: `background:${COLORS[j % COLORS.length]}` }), opName(op))),
  );
  clear(
    figure,
    h("figcaption", {}, "Tokens spent per day by operation type (last 30 days, UTC)"),
    days.length ? null : h("p", { class: "empty" }, "Nothing spent in the last 30 days."),
  );
  figure.append(root, legend);
}
