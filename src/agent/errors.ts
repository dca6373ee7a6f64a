// Why the agent's core (agent.ts, enrollment.ts, recovery.ts) refused or failed a request, in its
// own terms. The core knows no transport: the event API (api.ts) turns each kind into a Connect code.

export type AgentErrorKind =
  /** A malformed request: a name missing, a relative path, a bad UID or IP. */
  | "invalid"
  /** The pod cannot be handled as described: no netns at the path, no IP, an ambiguous name, the node's own netns. */
  | "precondition"
  /** The agent knows no such pod, or cannot find its netns. */
  | "not-found"
  /** The agent is still rebuilding its pod cache, or shutting down: ask again later. */
  | "unavailable"
  /** The pod's netns changed while it was being enrolled: ask again. */
  | "aborted"
  /** Programming the pod failed. */
  | "internal";

export class AgentError extends Error {
  override name = "AgentError";
  constructor(
    readonly kind: AgentErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** The text of anything thrown, for logs and messages. */
export function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
