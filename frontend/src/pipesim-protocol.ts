/**
 * TypeScript types of the pipesim /ws WebSocket protocol (port 8001), generated from pipesim/protocol.py.
 * DO NOT EDIT: run scripts/gen-types.sh (tests/test_contract.py checks that this file is up to date).
 */

/**
 * Any message on pipesim's `/ws` WebSocket channel (one JSON text frame).
 */
export type PipesimMessage = ServerMessage | ClientMessage;
/**
 * A message the server sends; switch on `type`.
 */
export type ServerMessage = SessionCreated | PipelineStateUpdate | SessionEnded | ErrorMessage;
export type PipelineState = "listening" | "processing" | "complete";
export type ServiceState = "idle" | "waiting" | "executing" | "complete";
export type SessionStatus = "created" | "active" | "paused" | "stopped";
export type ErrorCode =
  "bad_message" | "unknown_session" | "illegal_control" | "too_large" | "unsupported" | "forbidden";
/**
 * A message a client may send.
 */
export type ClientMessage = ConversationControl | FaultInjection;
export type ControlAction = "start" | "stop" | "pause";
export type FaultKind = "kafka_stall" | "service_outage" | "disconnect";
export type ServiceName = "stt" | "llm" | "tts";

/**
 * Extension: a pipeline session was created (first message about a session).
 */
export interface SessionCreated {
  type: "session_created";
  session_id: string;
  timestamp: number;
  seq: number;
}
/**
 * Seed message: the state of one pipeline session, sent at every transition.
 */
export interface PipelineStateUpdate {
  type: "pipeline_state_update";
  session_id: string;
  state: PipelineState;
  services: Services;
  metadata: Metadata;
  /**
   * Simulated time of the transition, seconds.
   */
  timestamp?: number | null;
  /**
   * Per-session message sequence number: 0 on session_created, +1 on every message about the session; a snapshot repeats the seq of the last message.
   */
  seq?: number | null;
  /**
   * The user turn this update belongs to.
   */
  turn_id?: number | null;
  /**
   * The state-manager event that caused the update.
   */
  event?: string | null;
  /**
   * Session lifecycle status.
   */
  status?: SessionStatus | null;
  /**
   * Why the turn failed, on the update that failed it.
   */
  error?: string | null;
}
/**
 * Per-service state of the current turn (seed field `services`).
 */
export interface Services {
  stt: ServiceState;
  llm: ServiceState;
  tts: ServiceState;
}
/**
 * Audio metadata (seed field `metadata`).
 */
export interface Metadata {
  /**
   * Bytes of user audio buffered for this turn.
   */
  buffer_size: number;
  /**
   * Running quality score, 0..1.
   */
  audio_quality: number;
}
/**
 * Extension: a pipeline session ended; no further messages about it follow.
 */
export interface SessionEnded {
  type: "session_ended";
  session_id: string;
  timestamp: number;
  seq: number;
  reason: string;
}
/**
 * Extension: a client message could not be honoured. The connection stays open.
 *
 * `code`: `bad_message` (not JSON, unknown type, a missing or invalid field), `too_large` (over
 * 64 KiB), `unknown_session`, `illegal_control` (not in the session's state, or an id the scenario
 * keeps), `forbidden` (the server runs owner-only and another connection started the session),
 * `unsupported` (a replay cannot be controlled).
 */
export interface ErrorMessage {
  type: "error";
  code: ErrorCode;
  message: string;
  session_id?: string | null;
}
/**
 * Seed message: a client asks to start (or resume), pause or stop a session.
 */
export interface ConversationControl {
  type: "conversation_control";
  action: ControlAction;
  session_id: string;
}
/**
 * Extension: inject a fault into the running mock backend.
 *
 * `kafka_stall` holds every Kafka delivery (or only `service`'s topic) for `duration_s`;
 * `service_outage` makes `service` consume nothing for `duration_s`; `disconnect` closes the
 * connections watching `session_id`.
 */
export interface FaultInjection {
  type: "fault_injection";
  fault: FaultKind;
  session_id?: string | null;
  service?: ServiceName | null;
  duration_s?: number;
}
