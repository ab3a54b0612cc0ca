// Names of enum values for people. Values this console does not know yet (the
// server may add states) are shown by number rather than breaking the page.
import { ActionState } from "./gen/agentserver/v1/agent_service_pb";
import { DecisionLevel, OperationType } from "./gen/agentserver/v1/common_pb";
import { EntryKind, ReservationState } from "./gen/agentserver/v1/token_service_pb";
import { MessageRole } from "./gen/agentserver/v1/conversation_service_pb";

function words(name: string | undefined, fallback: string): string {
  return name ? name.toLowerCase().replace(/_/g, " ") : fallback;
}

export const stateName = (s: ActionState) => words(ActionState[s], `state ${s}`);
export const levelName = (l: DecisionLevel) => words(DecisionLevel[l], `level ${l}`);
export const opName = (o: OperationType) => words(OperationType[o], `operation ${o}`);
export const kindName = (k: EntryKind) => words(EntryKind[k], `kind ${k}`);
export const reservationName = (r: ReservationState) => words(ReservationState[r], `state ${r}`);
export const roleName = (r: MessageRole) => words(MessageRole[r], "message");

export const WAITING = [
  ActionState.AWAITING_USER,
  ActionState.AWAITING_COORDINATOR,
  ActionState.AWAITING_APPROVER,
];

// Every known state (for the filter), whatever this build knows.
export const STATES = Object.values(ActionState).filter(
  (v): v is ActionState => typeof v === "number" && v !== ActionState.UNSPECIFIED,
);
export const LEVELS = Object.values(DecisionLevel).filter(
  (v): v is DecisionLevel => typeof v === "number" && v !== DecisionLevel.UNSPECIFIED,
);
