/**
 * A typed client of pipesim's admin API (`/__admin` on `pipesim serve --admin-port`, 8002 by default).
 *
 * Copy this file and `pipesim-protocol.ts` beside it into a frontend project: no build step, no
 * dependency (it uses the platform's `fetch`: browsers, Node.js >= 18, Playwright). Every method is one
 * HTTP call; an answer that is not 2xx is thrown as an {@link AdminError} carrying the server's `code`
 * and one-line `message`.
 *
 * ```ts
 * const admin = new AdminClient("http://127.0.0.1:8002");
 * await admin.reset();
 * await admin.createSession({ session_id: "abc" });
 * await admin.runUntil("abc", { "services.llm": "executing" });   // the clock is now paused there
 * const sent = await admin.journal({ session_id: "abc", type: "conversation_control", direction: "in" });
 * await admin.addStub({ when: { message: { action: "stop" } }, then: { close: { code: 4001 } } });
 * expect(await admin.count({ direction: "in", session_id: "abc", message: { action: "pause" } })).toBe(1);
 * await admin.reset({ scenario: "baseline", seed: 7 });                // the next test's scenario
 * ```
 */

import type {
  ControlAction,
  ErrorCode,
  FaultKind,
  PipelineState,
  PipesimMessage,
  ServerMessage,
  ServiceName,
  ServiceState,
  SessionStatus,
} from "./pipesim-protocol";

/** One pipeline session as the admin API lists it. */
export interface Session {
  session_id: string;
  status: SessionStatus;
  state: PipelineState;
  services: { stt: ServiceState; llm: ServiceState; tts: ServiceState };
  turn_id: number;
  seq: number;
  buffer_size: number;
  audio_quality: number;
  created_by: "scenario" | "client" | "admin";
}

/** The model's clock: `t` in simulated seconds; `next_event_t` null when nothing is scheduled. */
export interface Clock {
  t: number;
  paused: boolean;
  speed: number;
  next_event_t: number | null;
}

export interface Health {
  status: "ok";
  kind: "live" | "replay";
  scenario: string | null;
  seed: number | null;
}

export interface CreateSessionOptions {
  /** Generated (`admin-NNNN`) when absent. */
  session_id?: string;
  turns?: number;
  audio_quality?: number;
  /** Start it at once (default true). */
  start?: boolean;
}

/** What `runUntil` waits for: every given field must match at the same transition. */
export interface Until {
  status?: SessionStatus;
  state?: PipelineState;
  "services.stt"?: ServiceState;
  "services.llm"?: ServiceState;
  "services.tts"?: ServiceState;
}

export interface RunUntilOptions {
  /** Simulated seconds to give up after (default 60). */
  timeoutS?: number;
  /** Wall-clock seconds to give up after (default 10). */
  wallTimeoutS?: number;
}

/** The wire messages of the transitions a clock move went through (the first `limit` of them). */
export interface ClockMove {
  clock: Clock;
  transitions: ServerMessage[];
  /** How many transitions the clock passed. */
  transitions_total: number;
  /** True when `transitions` lists fewer than `transitions_total`. */
  truncated: boolean;
}

export interface RunUntilResult {
  clock: Clock;
  session: Session;
  reached: true;
}

export interface Fault {
  fault: FaultKind;
  service?: ServiceName;
  duration_s?: number;
  session_id?: string;
}

export interface FaultApplied {
  applied: Fault & { from_t: number; until_t: number; [key: string]: unknown };
}

/** A protocol message to push; `session_id`, `seq` and `timestamp` are filled in when absent. */
export type PushMessage = { type: ServerMessage["type"]; [field: string]: unknown };

export interface Push {
  message: PushMessage;
  /** Simulated seconds from now (default 0): a paused clock holds the message. */
  after_s?: number;
}

export interface JournalFilter {
  session_id?: string;
  type?: PipesimMessage["type"];
  direction?: "in" | "out";
  /** An entry id (e.g. from `journalMark()`): only the entries made after it. */
  since?: number;
  /** Only the newest `limit` of the matching entries. */
  limit?: number;
}

/** One message the server received (`in`, with its `result`) or sent (`out`). */
export interface JournalEntry {
  id: number;
  /** ISO 8601. */
  wall_time: string;
  /** Simulated seconds. */
  t: number;
  direction: "in" | "out";
  /** `c3`; null for a broadcast. */
  connection: string | null;
  session_id: string | null;
  type: string;
  message: Record<string, unknown>;
  /** Inbound only: `stubbed` (a stub answered instead), `delayed` (a stub passes it on later). */
  result: "applied" | "stubbed" | "delayed" | { error: { code: ErrorCode | string; message: string } } | null;
  /** Inbound only: the id of the stub that took the message. */
  stub: string | null;
}

/**
 * A pattern over the journal: every field given must match; `message` and `result` are JSON subsets (objects
 * match recursively, anything else must be equal).
 */
export interface JournalPattern {
  direction?: "in" | "out";
  connection?: string;
  session_id?: string;
  type?: string;
  message?: Record<string, unknown>;
  /** `"applied"`, `"stubbed"`, `{ error: { code: "unknown_session" } }`, ... */
  result?: unknown;
  stub?: string;
  /** An entry id (e.g. from `journalMark()`): only the entries made after it. */
  since?: number;
}

/** Which inbound messages a stub takes: every field given must match. */
export interface StubWhen {
  /** The endpoint the message came in on (default `/ws`). */
  path?: "/ws" | "/rtvi";
  type?: string;
  /** The session the message is about (on `/rtvi`, the connection's: `rtvi-1`, ...). */
  session_id?: string;
  /** The connection's journal id (`c1`, ...). */
  connection?: string;
  /** A JSON subset of the message as the client sent it. */
  message?: Record<string, unknown>;
}

/** What a stub does with a message it takes, in this order, `delay_s` simulated seconds later. */
export interface StubThen {
  /** Sent to the connection that sent the message (`/ws`: server messages, session_id, seq and timestamp filled
   * in; `/rtvi`: RTVI messages, label and the request's id filled in). */
  respond?: Record<string, unknown>[];
  /** Applied as `fault()` would. */
  fault?: Fault;
  /** Then hand the message to the model (default false: the stub replaces the normal handling). */
  pass_through?: boolean;
  /** Then close the connection: 4000-4999, or 1000, 1001, 1008, 1011, 1013. */
  close?: { code: number; reason?: string };
  /** Simulated seconds before all of it (a paused clock holds it). */
  delay_s?: number;
}

export interface StubDefinition {
  /** Made up (`stub-1`, ...) when absent. */
  id?: string;
  when: StubWhen;
  then: StubThen;
  /** 1 is tried first (default 5); among equal priorities the newest stub. */
  priority?: number;
  /** Take at most this many messages, then stay listed, exhausted (default: no limit). */
  times?: number | null;
}

/** A stub as the server lists it, with how many messages it took. */
export interface Stub {
  id: string;
  when: StubWhen & { path: "/ws" | "/rtvi" };
  then: Required<Omit<StubThen, "fault" | "close">> & { fault: Fault | null; close: { code: number; reason: string } | null };
  priority: number;
  times: number | null;
  matched: number;
  exhausted: boolean;
}

/** What `reset` starts from: absent fields keep the scenario, seed and speed the server has. */
export interface ResetOptions {
  /** A bundled scenario's name (`baseline`, ...) or a scenario as an object (validated as a scenario file). */
  scenario?: string | Record<string, unknown>;
  /** Default: the same seed, or the new scenario's own. */
  seed?: number;
  speed?: number;
}

/** The recording being written (or the last one stopped). */
export interface Recording {
  path: string | null;
  recording: boolean;
  messages: number;
  segments: number;
}

/** An answer of the admin API that was not 2xx, or no answer at all (`code` "unreachable", `status` 0). */
export class AdminError extends Error {
  readonly code: string;
  readonly status: number;
  /** The error body as the server sent it (a 408 `timeout` of `runUntil` carries the session as it is). */
  readonly body: unknown;

  constructor(code: string, message: string, status: number, body: unknown = null) {
    super(message);
    this.name = "AdminError";
    this.code = code;
    this.status = status;
    this.body = body;
  }
}

export interface AdminClientOptions {
  /** `Authorization: Bearer TOKEN` on every request (`pipesim serve --admin-token`). */
  token?: string;
  /** Another `fetch` (a test double, a proxy-aware one). */
  fetch?: typeof fetch;
}

const enc = encodeURIComponent;

export class AdminClient {
  /** The server's origin, e.g. `http://127.0.0.1:8002`. */
  readonly origin: string;
  private readonly token?: string;
  private readonly fetchImpl: typeof fetch;

  /**
   * `baseUrl`: the admin listener's origin (`http://127.0.0.1:8002`) or its `/__admin` URL, as
   * `pipesim serve` prints it in its first stdout line (`"admin": "http://127.0.0.1:8002/__admin"`).
   */
  constructor(baseUrl: string, options: AdminClientOptions = {}) {
    this.origin = baseUrl.replace(/\/+$/, "").replace(/\/__admin$/, "");
    this.token = options.token;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // Server ------------------------------------------------------------------------------------------
  health(): Promise<Health> {
    return this.request("GET", "/__admin/health");
  }

  /** The OpenAPI document of this API. */
  openapi(): Promise<Record<string, unknown>> {
    return this.request("GET", "/__admin/openapi.json");
  }

  /**
   * Back to a scenario's start: the same scenario, seed and speed, or those of `options` (one server, a different
   * scenario per test). The journal is cleared and the stubs are removed.
   */
  reset(options: ResetOptions = {}): Promise<Clock> {
    return this.request("POST", "/__admin/reset", options);
  }

  /** What is being recorded (or was last). */
  recording(): Promise<Recording> {
    return this.request("GET", "/__admin/recording");
  }

  /** Record every message broadcast from now into `path` (absolute, on the server's machine). */
  startRecording(path: string): Promise<Recording> {
    return this.request("POST", "/__admin/recording/start", { path });
  }

  /** Close the recording: a file `pipesim replay` plays. */
  stopRecording(): Promise<Recording> {
    return this.request("POST", "/__admin/recording/stop");
  }

  // Stubs -------------------------------------------------------------------------------------------
  /**
   * When a client sends a message matching `when`, do `then` instead of (or, with `pass_through`, before) the
   * model's handling: `await admin.addStub({ when: { type: "conversation_control", message: { action: "pause" } },
   * then: { respond: [{ type: "error", code: "illegal_control", message: "busy" }] }, times: 1 })`.
   */
  addStub(stub: StubDefinition): Promise<Stub> {
    return this.request("POST", "/__admin/stubs", stub);
  }

  /** Every stub, in the order they are tried, each with `matched`. */
  async stubs(): Promise<Stub[]> {
    const answer = await this.request<{ stubs: Stub[] }>("GET", "/__admin/stubs");
    return answer.stubs;
  }

  stub(stubId: string): Promise<Stub> {
    return this.request("GET", `/__admin/stubs/${enc(stubId)}`);
  }

  /** Remove one stub; answers it as it was (with its count). */
  deleteStub(stubId: string): Promise<Stub> {
    return this.request("DELETE", `/__admin/stubs/${enc(stubId)}`);
  }

  /** Remove every stub; how many there were. */
  async clearStubs(): Promise<number> {
    const answer = await this.request<{ cleared: number }>("DELETE", "/__admin/stubs");
    return answer.cleared;
  }

  // Sessions ----------------------------------------------------------------------------------------
  async sessions(): Promise<Session[]> {
    const answer = await this.request<{ sessions: Session[] }>("GET", "/__admin/sessions");
    return answer.sessions;
  }

  session(sessionId: string): Promise<Session> {
    return this.request("GET", `/__admin/sessions/${enc(sessionId)}`);
  }

  createSession(options: CreateSessionOptions = {}): Promise<Session> {
    return this.request("POST", "/__admin/sessions", options);
  }

  startSession(sessionId: string): Promise<Session> {
    return this.request("POST", `/__admin/sessions/${enc(sessionId)}/start`);
  }

  pauseSession(sessionId: string): Promise<Session> {
    return this.request("POST", `/__admin/sessions/${enc(sessionId)}/pause`);
  }

  stopSession(sessionId: string): Promise<Session> {
    return this.request("POST", `/__admin/sessions/${enc(sessionId)}/stop`);
  }

  /** `start`, `pause` or `stop`, as the WebSocket `conversation_control` would. */
  control(sessionId: string, action: ControlAction): Promise<Session> {
    switch (action) {
      case "start":
        return this.startSession(sessionId);
      case "pause":
        return this.pauseSession(sessionId);
      case "stop":
        return this.stopSession(sessionId);
    }
  }

  /**
   * Send protocol messages to the session's watchers, now or `after_s` simulated seconds from now. An id the
   * model does not know is a 404 `unknown_session`, unless `allowUnknown` (then its watchers get them).
   */
  async push(sessionId: string, messages: Push[], options: { allowUnknown?: boolean } = {}): Promise<number> {
    const suffix = options.allowUnknown ? "?allow_unknown=true" : "";
    const answer = await this.request<{ scheduled: number }>(
      "POST", `/__admin/sessions/${enc(sessionId)}/push`, { messages }, suffix);
    return answer.scheduled;
  }

  // Clock -------------------------------------------------------------------------------------------
  clock(): Promise<Clock> {
    return this.request("GET", "/__admin/clock");
  }

  pauseClock(): Promise<Clock> {
    return this.request("POST", "/__admin/clock/pause");
  }

  resumeClock(): Promise<Clock> {
    return this.request("POST", "/__admin/clock/resume");
  }

  setSpeed(speed: number): Promise<Clock> {
    return this.request("POST", "/__admin/clock/speed", { speed });
  }

  /** Advance to the next `count` transitions; the clock stays paused. The answer lists at most `limit`. */
  step(count = 1, limit = 1000): Promise<ClockMove> {
    return this.request("POST", "/__admin/clock/step", { count, limit });
  }

  /** Move simulated time by exactly `seconds`, as fast as possible; the clock stays paused. The answer lists
   * the first `limit` transitions passed. */
  advance(seconds: number, limit = 1000): Promise<ClockMove> {
    return this.request("POST", "/__admin/clock/advance", { seconds, limit });
  }

  /**
   * Run until the session matches `until`; the clock is left paused at that transition. Throws an
   * {@link AdminError} with code `timeout` (status 408) when it is not reached in time.
   */
  runUntil(sessionId: string, until: Until, options: RunUntilOptions = {}): Promise<RunUntilResult> {
    const body: Record<string, unknown> = { session_id: sessionId, until };
    if (options.timeoutS !== undefined) body.timeout_s = options.timeoutS;
    if (options.wallTimeoutS !== undefined) body.wall_timeout_s = options.wallTimeoutS;
    return this.request("POST", "/__admin/clock/run-until", body);
  }

  // Faults ------------------------------------------------------------------------------------------
  fault(fault: Fault): Promise<FaultApplied> {
    return this.request("POST", "/__admin/faults", fault);
  }

  // Journal -----------------------------------------------------------------------------------------
  async journal(filter: JournalFilter = {}): Promise<JournalEntry[]> {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(filter)) {
      if (value !== undefined) query.set(key, String(value));
    }
    const suffix = query.toString() ? `?${query}` : "";
    const answer = await this.request<{ entries: JournalEntry[] }>("GET", "/__admin/journal", undefined, suffix);
    return answer.entries;
  }

  /** The id of the journal's newest entry: `journal({ since: mark })` later lists only what came after it. */
  async journalMark(): Promise<number> {
    const answer = await this.request<{ last_id: number }>("GET", "/__admin/journal", undefined, "?limit=0");
    return answer.last_id;
  }

  /** How many journal entries match: `await admin.count({ direction: "in", session_id: "abc", message: { action:
   * "pause" } })` is how often the page sent pause for abc. */
  async count(pattern: JournalPattern = {}): Promise<number> {
    const answer = await this.request<{ count: number }>("POST", "/__admin/journal/count", pattern);
    return answer.count;
  }

  /** The journal entries that match, oldest first (the newest `limit` of them). */
  async find(pattern: JournalPattern & { limit?: number } = {}): Promise<JournalEntry[]> {
    const answer = await this.request<{ entries: JournalEntry[] }>("POST", "/__admin/journal/find", pattern);
    return answer.entries;
  }

  /** Empty the journal; how many entries it held. */
  async clearJournal(): Promise<number> {
    const answer = await this.request<{ cleared: number }>("DELETE", "/__admin/journal");
    return answer.cleared;
  }

  // Replay ------------------------------------------------------------------------------------------
  /** `pipesim replay` only: jump to simulated time `t` (watchers get each session's state as of `t`). */
  seek(t: number): Promise<Clock> {
    return this.request("POST", "/__admin/replay/seek", { t });
  }

  // -------------------------------------------------------------------------------------------------
  private async request<T>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown,
                           query = ""): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (this.token !== undefined) headers.Authorization = `Bearer ${this.token}`;
    const init: RequestInit = { method, headers };
    if (method === "POST") {
      // The API refuses a POST that is not application/json, body or not.
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body ?? {});
    }
    let response: Response;
    try {
      response = await this.fetchImpl(`${this.origin}${path}${query}`, init);
    } catch (exc) {
      throw new AdminError("unreachable", `${method} ${this.origin}${path}: ${String(exc)}`, 0);
    }
    const text = await response.text();
    let data: unknown = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) {
      const error = (data as { error?: { code?: string; message?: string } } | null)?.error;
      throw new AdminError(error?.code ?? `http_${response.status}`,
        error?.message ?? `${method} ${path}: HTTP ${response.status} ${text.slice(0, 200)}`, response.status, data);
    }
    return data as T;
  }
}
