"""The agent's reply: what it says about each action of a message, in the user's
language (the words the offline engine reads, see decision/languages.py)."""

from __future__ import annotations

from agentserver.domain.actions import WAITING, Action, ActionState
from agentserver.domain.decision.engine import Proposal
from agentserver.domain.values import evolve

_STATE_WORDS = {
    ActionState.PROPOSED: "not possible as asked",
    ActionState.AWAITING_USER: "waiting for your confirmation",
    ActionState.AWAITING_COORDINATOR: "waiting for a coordinator's review",
    ActionState.AWAITING_APPROVER: "waiting for an approver",
    ActionState.APPROVED: "approved",
    ActionState.EXECUTING: "in progress",
    ActionState.SUCCEEDED: "done",
    ActionState.FAILED: "failed",
    ActionState.REJECTED: "rejected",
    ActionState.EXPIRED: "expired",
    ActionState.OUTCOME_UNKNOWN: "outcome unknown: a person will confirm whether it happened",
    ActionState.CANCELLED: "cancelled",
}


# The same words in the languages the offline engine reads (see decision/languages.py).
_STATE_WORDS_IN = {
    "es": {
        ActionState.PROPOSED: "no es posible tal como se pidió",
        ActionState.AWAITING_USER: "espera tu confirmación",
        ActionState.AWAITING_COORDINATOR: "espera la revisión de un coordinador",
        ActionState.AWAITING_APPROVER: "espera a un aprobador",
        ActionState.APPROVED: "aprobada",
        ActionState.EXECUTING: "en curso",
        ActionState.SUCCEEDED: "hecho",
        ActionState.FAILED: "falló",
        ActionState.REJECTED: "rechazada",
        ActionState.EXPIRED: "caducada",
        ActionState.OUTCOME_UNKNOWN: "resultado desconocido: una persona confirmará si ocurrió",
        ActionState.CANCELLED: "cancelada",
    },
    "de": {
        ActionState.PROPOSED: "so nicht möglich",
        ActionState.AWAITING_USER: "wartet auf Ihre Bestätigung",
        ActionState.AWAITING_COORDINATOR: "wartet auf die Prüfung durch einen Koordinator",
        ActionState.AWAITING_APPROVER: "wartet auf eine Freigabe",
        ActionState.APPROVED: "freigegeben",
        ActionState.EXECUTING: "läuft",
        ActionState.SUCCEEDED: "erledigt",
        ActionState.FAILED: "fehlgeschlagen",
        ActionState.REJECTED: "abgelehnt",
        ActionState.EXPIRED: "abgelaufen",
        ActionState.OUTCOME_UNKNOWN: "Ergebnis unbekannt: eine Person bestätigt, ob es geschah",
        ActionState.CANCELLED: "storniert",
    },
    "fr": {
        ActionState.PROPOSED: "impossible tel que demandé",
        ActionState.AWAITING_USER: "attend votre confirmation",
        ActionState.AWAITING_COORDINATOR: "attend l'avis d'un coordinateur",
        ActionState.AWAITING_APPROVER: "attend un approbateur",
        ActionState.APPROVED: "approuvée",
        ActionState.EXECUTING: "en cours",
        ActionState.SUCCEEDED: "fait",
        ActionState.FAILED: "échec",
        ActionState.REJECTED: "refusée",
        ActionState.EXPIRED: "expirée",
        ActionState.OUTCOME_UNKNOWN: "résultat inconnu : une personne confirmera si c'est fait",
        ActionState.CANCELLED: "annulée",
    },
}


def done(action: Action) -> Action:
    """The action as a reply would tell it once it succeeded."""
    return evolve(action, state=ActionState.SUCCEEDED)


def reply(proposal: Proposal, actions: list[Action]) -> str:
    """The engine's words, then a line per action: where it is and why."""
    lines = [proposal.reply.strip()] if proposal.reply.strip() else []
    by_id = {a.id: a for a in actions}
    words = _STATE_WORDS_IN.get(proposal.language, _STATE_WORDS)
    for action in actions:
        status = words[action.state]
        why = "; ".join(b["message"] for b in action.blocked)
        before = by_id.get(action.depends_on or "")
        if before is not None and action.state in (ActionState.APPROVED, *WAITING):
            status += f", then runs after {before.action_type}"
        if action.state in (ActionState.FAILED, ActionState.OUTCOME_UNKNOWN, ActionState.CANCELLED):
            why = str(action.result.get("error", ""))
        lines.append(f"- {action.action_type}: {status}" + (f" ({why})" if why else ""))
    return "\n".join(lines)
