// The three services over gRPC-web. The same code talks to the built-in endpoint and
// to Envoy: only the base URL differs (from /console-config.json).
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentService } from "./gen/agentserver/v1/agent_service_pb";
import { ConversationService } from "./gen/agentserver/v1/conversation_service_pb";
import { TokenService } from "./gen/agentserver/v1/token_service_pb";

export type Api = {
  agent: Client<typeof AgentService>;
  conversations: Client<typeof ConversationService>;
  tokens: Client<typeof TokenService>;
};

// Every call carries a deadline; the servers see it as grpc-timeout.
export const CALL = { timeoutMs: 20_000 };

export function connect(baseUrl: string, key: string): Api {
  // The key travels only in the authorization header: never in a URL, never logged.
  const auth: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [auth] });
  return {
    agent: createClient(AgentService, transport),
    conversations: createClient(ConversationService, transport),
    tokens: createClient(TokenService, transport),
  };
}

export async function apiBaseUrl(): Promise<string> {
  try {
    const response = await fetch("/console-config.json", { cache: "no-store" });
    if (response.ok) {
      const config = (await response.json()) as { apiBaseUrl?: string };
      if (config.apiBaseUrl) return config.apiBaseUrl.replace(/\/$/, "");
    }
  } catch {
    // Served without the config: the API is on the page's own origin.
  }
  return location.origin;
}
