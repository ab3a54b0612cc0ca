// The edit form of an action's parameters, built from its JSON Schema (from
// ListActionDefinitions), and the same checks the server makes, done before sending.
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { h } from "./dom";

export type Schema = {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  enum?: JsonValue[];
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  format?: string;
  description?: string;
  items?: Schema;
};

function types(s: Schema): string[] {
  return s.type === undefined ? [] : Array.isArray(s.type) ? s.type : [s.type];
}

export type SchemaForm = {
  element: HTMLElement;
  values(): { value: JsonObject; errors: Map<string, string> };
  showErrors(errors: Map<string, string>): void;
};

export function schemaForm(schema: Schema, initial: JsonObject, idPrefix: string): SchemaForm {
  const props = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const inputs = new Map<string, HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement>();
  const messages = new Map<string, HTMLElement>();
  const rows: HTMLElement[] = [];
  for (const [name, prop] of Object.entries(props)) {
    const id = `${idPrefix}-${name}`;
    const t = types(prop).filter((x) => x !== "null");
    const current = initial[name];
    let input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;
    if (prop.enum) {
      input = h(
        "select",
        { id, name },
        h("option", { value: "" }, "—"),
        prop.enum.map((v) => h("option", { value: String(v), selected: v === current }, String(v))),
      );
    } else if (t[0] === "boolean") {
      input = h("input", { id, name, type: "checkbox", checked: current === true });
    } else if (t[0] === "integer" || t[0] === "number") {
      input = h("input", { id, name, type: "number", step: t[0] === "integer" ? "1" : "any" });
      if (typeof current === "number") input.value = String(current);
    } else if (t[0] === "array" || t[0] === "object") {
      input = h("textarea", { id, name, rows: 3 });
      input.value = current === undefined || current === null ? "" : JSON.stringify(current);
    } else {
      const long = typeof current === "string" && current.length > 60;
      input = long ? h("textarea", { id, name, rows: 3 }) : h("input", { id, name, type: "text" });
      input.value = typeof current === "string" ? current : "";
    }
    const message = h("span", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
    input.setAttribute("aria-describedby", `${id}-error`);
    inputs.set(name, input);
    messages.set(name, message);
    rows.push(
      h(
        "div",
        { class: "field" },
        h("label", { for: id }, name, required.has(name) ? " *" : ""),
        input,
        prop.description ? h("small", {}, prop.description) : null,
        message,
      ),
    );
  }

  function read(): { value: JsonObject; errors: Map<string, string> } {
    const value: JsonObject = {};
    const errors = new Map<string, string>();
    for (const [name, input] of inputs) {
      const prop = props[name];
      const t = types(prop).filter((x) => x !== "null");
      let v: JsonValue | undefined;
      if (input instanceof HTMLInputElement && input.type === "checkbox") v = input.checked;
      else if (input.value.trim() === "") v = undefined;
      else if (t[0] === "integer" || t[0] === "number") v = Number(input.value);
      else if (t[0] === "array" || t[0] === "object") {
        try {
          v = JSON.parse(input.value) as JsonValue;
        } catch {
          errors.set(name, "is not valid JSON");
          continue;
        }
      } else v = input.value;
      if (v === undefined) {
        if (types(prop).includes("null")) value[name] = null;
        else if (required.has(name)) errors.set(name, "is required");
        continue;
      }
      const problem = check(prop, v);
      if (problem) errors.set(name, problem);
      value[name] = v;
    }
    return { value, errors };
  }

  function showErrors(errors: Map<string, string>): void {
    for (const [name, message] of messages) {
      const text = errors.get(name) ?? errors.get(`parameters.${name}`) ?? "";
      message.textContent = text;
      inputs.get(name)?.setAttribute("aria-invalid", text ? "true" : "false");
    }
  }

  return { element: h("div", { class: "schema-form" }, rows), values: read, showErrors };
}

function check(s: Schema, v: JsonValue): string {
  if (v === null) return types(s).includes("null") ? "" : "must not be empty";
  const t = types(s).filter((x) => x !== "null");
  if (s.enum && !s.enum.includes(v)) return `must be one of ${s.enum.join(", ")}`;
  if (t.includes("integer") && !(typeof v === "number" && Number.isInteger(v))) return "must be a whole number";
  if (t.includes("number") && typeof v !== "number") return "must be a number";
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "must be a number";
    if (s.minimum !== undefined && v < s.minimum) return `must be at least ${s.minimum}`;
    if (s.maximum !== undefined && v > s.maximum) return `must be at most ${s.maximum}`;
  }
  if (typeof v === "string") {
    if (s.minLength !== undefined && v.length < s.minLength) return `must be at least ${s.minLength} characters`;
    if (s.maxLength !== undefined && v.length > s.maxLength) return `must be at most ${s.maxLength} characters`;
    if (s.pattern && !matches(s.pattern, v)) return "is not in the expected form";
    if (s.format === "email" && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(v)) return "must be an email address";
  }
  if (t.includes("array") && !Array.isArray(v)) return "must be a list";
  return "";
}

function matches(pattern: string, value: string): boolean {
  try {
    return new RegExp(pattern, "u").test(value);
  } catch {
    return true; // a pattern this browser cannot read: the server checks it
  }
}
