// Errors as words: what happened and what to do, from the status code and the
// google.rpc details the server attaches (field violations, retry delay, reasons).
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb";

export type Explained = {
  text: string;
  fields: Map<string, string>; // field path -> what is wrong with it
  signInAgain: boolean;
  reason: string;
};

export function explain(err: unknown): Explained {
  const e = ConnectError.from(err);
  const fields = new Map<string, string>();
  for (const bad of e.findDetails(BadRequestSchema)) {
    for (const v of bad.fieldViolations) fields.set(v.field, v.description);
  }
  const reason = e.findDetails(ErrorInfoSchema)[0]?.reason ?? "";
  const message = e.rawMessage;
  let text: string;
  switch (e.code) {
    case Code.Unauthenticated:
      return {
        text: "Your key was not accepted (unknown, revoked or expired): sign in again.",
        fields,
        signInAgain: true,
        reason,
      };
    case Code.PermissionDenied:
      text = `Not allowed: ${message}.`;
      break;
    case Code.ResourceExhausted: {
      const delay = e.findDetails(RetryInfoSchema)[0]?.retryDelay;
      const seconds = delay ? Math.max(1, Math.ceil(Number(delay.seconds) + delay.nanos / 1e9)) : 0;
      text = seconds
        ? `Too many requests right now: retry after ${seconds} s.`
        : "Too many requests right now: retry shortly.";
      break;
    }
    case Code.InvalidArgument:
      text = fields.size
        ? `Please check: ${[...fields].map(([f, d]) => `${f} ${d}`).join("; ")}.`
        : `Please check the input: ${message}.`;
      break;
    case Code.FailedPrecondition: {
      const quota = e.findDetails(QuotaFailureSchema)[0]?.violations[0];
      text = quota ? `Not enough tokens: ${quota.description}.` : `Cannot do that now: ${message}.`;
      break;
    }
    case Code.NotFound:
      text = `Not found: ${message}.`;
      break;
    case Code.AlreadyExists:
      text = `Already done differently: ${message}.`;
      break;
    case Code.Unavailable:
      text = "The server is unavailable right now: try again in a moment.";
      break;
    case Code.DeadlineExceeded:
      text = "The server took too long to answer: try again.";
      break;
    case Code.Canceled:
      text = "The request was cancelled.";
      break;
    default:
      text = `Something went wrong (${Code[e.code] ?? e.code}): ${message}`;
  }
  return { text, fields, signInAgain: false, reason };
}
