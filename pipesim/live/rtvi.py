"""Pipecat's RTVI, served by the live model on ``/rtvi``: pipesim as a mock bot for Pipecat's client SDK.

A frontend built on ``@pipecat-ai/client-js`` (``PipecatClient`` + ``WebSocketTransport``) connects to
``ws://HOST:PORT/rtvi`` and sees a bot whose every callback is driven by the same model as the seed's
``/ws``: one socket is one model session, created from the scenario's session template when the client
sends ``client-ready`` and stopped when the socket closes or the client sends ``disconnect-bot``.

The wire: binary frames of :mod:`pipesim.live.rtvi_codec`, each holding one JSON envelope
``{"label": "rtvi-ai", "type": ..., "id": ..., "data": ...}``. Microphone audio frames are counted
(:attr:`RtviConnection.audio_frames`) and dropped: the simulated user speaks on the model's schedule. With
``user_audio="vad"`` (``pipesim serve --user-audio vad``) the microphone is heard instead: a
:class:`~pipesim.live.vad.Detector` per session starts and ends each utterance where the voice does, with
the quality its audio has; the rest of the turn is the model's (``send-text`` is then refused: the user speaks).

* ``client-ready`` -> ``bot-ready`` with the same ``id`` and ``data.version`` :data:`RTVI_VERSION`
  (the version ``@pipecat-ai/client-js`` 1.13.1 speaks), ``data.about.session_id`` naming the session.
* ``send-text`` -> the simulated user speaks now (:meth:`~pipesim.model.Simulation.speak_now`); its
  ``content`` becomes that turn's transcript. Refused (``error-response``) while the bot prepares a reply.
* ``client-message`` ``{t, d}`` -> ``server-response`` ``{t, d: {received, session_id, status, state}}``
  with the same ``id`` (an echo with the session's state); no ``t``, or a ``d`` the echo cannot carry
  (NaN, Infinity, nested too deep) -> ``error-response`` naming it.
* ``disconnect-bot`` -> the session stops and the socket closes (1000).
* Anything else, a malformed frame, or a message before ``client-ready`` -> ``error-response`` (with the
  message's ``id``) or ``error`` (``fatal: false``, when there is no ``id``); the connection stays open.

The model's events become RTVI messages by the one table :data:`MAPPING`, rendered in the README by
:func:`mapping_markdown`. Every transition of the session is also sent as ``server-message`` whose
``data`` is the seed's own message (``pipeline_state_update`` with buffer size, audio quality, Kafka
timeouts and errors; ``session_created``; ``session_ended``). The user's transcripts and the LLM's text are
**synthetic**: words drawn from the session's own random stream (``streams.generator(session_id,
"rtvi-text")``), so the same seed gives the same words, and drawing them changes no other number. Only
their timing and length come from the model. While the bot speaks (``bot-started-speaking`` to
``bot-stopped-speaking``) its audio goes out too, as Pipecat's WebSocket transport plays it: binary
``Frame.audio`` frames of synthetic, speech-like 24 kHz mono PCM, 40 ms each, in real time, cut at once
when the bot stops (:mod:`pipesim.live.rtvi_audio`; the voice: :mod:`pipesim.live.bot_audio`; drawn from
the session's own stream ``streams.generator(session_id, "rtvi-audio", turn)``). ``bot_audio=False``
(``pipesim serve --no-bot-audio``) sends none.

>>> [rule.rtvi for rule in MAPPING if rule.trigger == "speech_started"]
[('user-started-speaking',)]
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from websockets.asyncio.server import ServerConnection

from pipesim import __version__ as pipesim_version
from pipesim._jsonsafe import MAX_DEPTH, unsendable
from pipesim.errors import IllegalTransition, ProtocolError, UnknownSession
from pipesim.live.bot_audio import BotVoice
from pipesim.live.connection import CLOSE_NORMAL, RTVI_PATH, Client
from pipesim.live.hub import Hub
from pipesim.live.rtvi_audio import BotAudio, Speech
from pipesim.live.rtvi_codec import Decoded, decode_frame, encode_message, journal_view
from pipesim.live.source import LiveModel
from pipesim.live.vad import Detector
from pipesim.model import Simulation
from pipesim.protocol import MAX_MESSAGE_BYTES, wire_messages
from pipesim.state import Transition
from pipesim.vocabulary import RTVI_CLIENT_MESSAGE_TYPES

__all__ = ["MAPPING", "RTVI_PATH", "RTVI_VERSION", "RtviConnection", "RtviDialect", "Rule", "mapping_markdown"]

log = logging.getLogger("pipesim.live.rtvi")

#: The RTVI protocol version pipesim announces in ``bot-ready``: the one the pinned client speaks
#: (``RTVI_PROTOCOL_VERSION`` of ``@pipecat-ai/client-js`` 1.13.1; tests/test_rtvi.py checks it).
RTVI_VERSION = "2.1.0"
LABEL = "rtvi-ai"
#: Words of the synthetic transcripts and replies (what they say does not matter, only that it is text).
_USER_WORDS = ("could", "you", "check", "my", "order", "status", "please", "and", "the", "delivery", "date",
               "for", "tomorrow", "is", "it", "possible", "to", "change", "address", "thanks")
_BOT_WORDS = ("sure", "your", "order", "ships", "today", "and", "should", "arrive", "by", "friday", "I", "can",
              "update", "the", "address", "for", "you", "anything", "else", "today")
_WORDS_PER_SECOND = 2.5  # of user speech
_WORDS_PER_TOKEN = 0.75


class Rule(NamedTuple):
    """One row of :data:`MAPPING`: a model event (``service``: of that service; None: any) -> RTVI messages."""

    trigger: str
    service: str | None
    rtvi: tuple[str, ...]
    note: str


#: The one table from the model's events to RTVI messages, in the order they are sent. Triggers are the
#: state manager's transitions, except ``speech_ended``, ``first_response``, ``first_token`` and
#: ``first_audio``, which are the model's own events (trace ``model_event`` rows). A ``...-stopped``
#: message is sent only after its ``...-started`` (so barge-ins, failures and pauses close what is open).
MAPPING: tuple[Rule, ...] = (
    Rule("speech_started", None, ("user-started-speaking",), "the simulated user starts an utterance"),
    Rule("speech_ended", None, ("user-stopped-speaking",), "the utterance's last audio chunk"),
    Rule("first_response", None, ("metrics",), "`ttfb` of stt/llm/tts: request to first response "
         "(Kafka, queue and retries included)"),
    Rule("service_completed", "stt", ("user-transcription", "metrics"), "final transcript (synthetic, or "
         "the `send-text` content); `processing` of stt"),
    Rule("service_started", "llm", ("bot-llm-started",), "a worker takes the LLM request (once a turn)"),
    Rule("first_token", "llm", ("bot-llm-text",), "the reply's first phrase (synthetic text)"),
    Rule("service_completed", "llm", ("bot-llm-text", "bot-llm-stopped", "metrics"), "the rest of the reply; "
         "`processing` of llm"),
    Rule("service_started", "tts", ("bot-tts-started",), "a worker takes the TTS request (once a turn)"),
    Rule("first_audio", "tts", ("bot-started-speaking", "bot-output"), "first audio; `bot-output` with the "
         "whole reply, `spoken_status: new`"),
    Rule("service_completed", "tts", ("bot-output", "bot-tts-stopped", "bot-stopped-speaking", "metrics"),
         "playback done: `spoken_status: completed`; `processing` of tts"),
    Rule("barge_in", None, ("bot-llm-stopped", "bot-tts-stopped", "bot-stopped-speaking"), "the user spoke "
         "over the bot"),
    Rule("turn_failed", None, ("bot-llm-stopped", "bot-tts-stopped", "bot-stopped-speaking", "error"),
         "`error` with `fatal: false` and the reason (Kafka retries exhausted, a service error)"),
    Rule("session_paused", None, ("user-stopped-speaking", "bot-llm-stopped", "bot-tts-stopped",
                                  "bot-stopped-speaking"), "a seed client paused the session"),
    Rule("session_stopped", None, ("user-stopped-speaking", "bot-llm-stopped", "bot-tts-stopped",
                                   "bot-stopped-speaking"), "then the socket closes (1000)"),
    Rule("*", None, ("server-message",), "every transition: `data` is the seed's message "
         "(`pipeline_state_update`, `session_created`, `session_ended`)"),
)

_OPENERS = {"bot-llm-stopped": "bot-llm-started", "bot-tts-stopped": "bot-tts-started",
            "bot-stopped-speaking": "bot-started-speaking", "user-stopped-speaking": "user-started-speaking"}


def mapping_markdown() -> str:
    """:data:`MAPPING` as the README's Markdown table.

    >>> mapping_markdown().splitlines()[2]
    '| `speech_started` |  | `user-started-speaking` | the simulated user starts an utterance |'
    """
    lines = ["| model event | service | RTVI messages | when |", "|---|---|---|---|"]
    for rule in MAPPING:
        lines.append(f"| `{rule.trigger}` | {rule.service or ''} | "
                     f"{', '.join(f'`{m}`' for m in rule.rtvi)} | {rule.note} |")
    return "\n".join(lines)


class _Event(NamedTuple):
    t: float
    turn_id: int
    event: str
    service: str | None
    error: str | None
    value: float


class _RtviClient(Client):
    """The server's view of an RTVI socket: closed by ``disconnect`` faults and shutdown like any other
    client, but never sent the seed's broadcast (its messages come from :class:`RtviConnection`)."""

    def wants(self, session_id: str | None) -> bool:
        return False


@dataclass(eq=False)
class RtviConnection:
    """One RTVI socket and its session: what has been opened, the turn's text, the audio received."""

    #: The socket's client; None once the socket has closed: the record stays until its session is
    #: forgotten, the closed socket (with its permessage-deflate state, some 60 KB) does not.
    client: _RtviClient | None
    session_id: str | None = None
    #: Microphone audio frames (and their bytes) received.
    audio_frames: int = 0
    audio_bytes: int = 0
    #: The microphone's voice activity (``user_audio="vad"``; None: the model's user speaks).
    detector: Detector | None = None
    #: Utterances the microphone began while the bot prepared its reply (the model ignores the user then).
    unheard: int = 0
    #: The client's audio could not be read (said once, then its audio is ignored).
    deaf: bool = False
    #: ``error``/``error-response`` messages sent because of what the client sent.
    errors: int = 0
    opened: set[str] = field(default_factory=set)
    requested: dict[str, float] = field(default_factory=dict)
    utterance_s: float = 1.0
    pending_text: str | None = None
    reply: list[str] = field(default_factory=list)
    first_phrase: int = 0
    words: np.random.Generator | None = None  # the synthetic text's own stream
    #: Its session vanished in a reset (the socket is closing): nothing it sends reaches the new model.
    gone: bool = False
    #: The reply being spoken now (None: the bot is silent, or sends no audio).
    speech: Speech | None = None
    #: Bot audio frames (and their bytes of PCM) sent.
    bot_audio_frames: int = 0
    bot_audio_bytes: int = 0

    @property
    def closable(self) -> _RtviClient | None:
        """The socket's client while it is open and not closing yet (None otherwise): the one to close."""
        return self.client if self.client is not None and not self.client.closing else None


class RtviDialect:
    """The RTVI side of a live server: its sockets, by session. Handed the hub (the way out) and the
    model (what the sockets drive); on a reset it closes its sockets and follows the new model.
    ``bot_audio``: send the bot's audio while it speaks."""

    def __init__(self, hub: Hub, model: LiveModel, *, bot_audio: bool = True) -> None:
        self.hub = hub
        self.model = model
        #: The bot's audio on the sockets that speak (None: no bot audio).
        self.audio = BotAudio(hub, lambda: self.model.pacer) if bot_audio else None
        #: Every RTVI connection that has sent ``client-ready``, by session id (kept after it closes, without
        #: its socket, until its session is forgotten).
        self.connections: dict[str, RtviConnection] = {}
        self._next = 1
        self._connections = itertools.count(1)  # journal ids: r1, r2, ... (/ws's are c1, c2, ...)
        self.sim: Simulation = model.sim
        self._follow(model.sim)
        model.on_reset(self._on_reset)
        model.on_forget(lambda sid: self.connections.pop(sid, None))

    def _follow(self, sim: Simulation) -> None:
        self.sim = sim
        sim.manager.subscribe(self._on_transition)
        sim.trace.subscribe_model_events(self._on_model_event)

    def _on_reset(self, old: Simulation) -> None:
        """The sessions are gone: close every socket; the next connection starts afresh (``rtvi-1``)."""
        if self.audio is not None:
            self.audio.stop_all()
        for conn in list(self.connections.values()):
            conn.gone = True
            if (client := conn.closable) is not None:
                self.hub.drop(client, CLOSE_NORMAL, "reset")
        self.connections = {}
        self._next = 1
        self._follow(self.model.sim)

    def _on_model_event(self, row: tuple[Any, ...]) -> None:
        t, session_id, turn_id, _seq, event, service = row[:6]
        conn = self.connections.get(session_id)
        if conn is not None:
            self._emit(conn, _Event(t, turn_id, event, service, row[13], row[14]), None)

    # The socket ----------------------------------------------------------------------------------------
    async def serve(self, ws: ServerConnection) -> None:
        """Run one RTVI socket until it closes; its session (if any) is stopped then."""
        client = _RtviClient(ws, watch_all=False, watched=set(), id=f"r{next(self._connections)}")
        conn = RtviConnection(client)
        log.info("RTVI client %s connected", client.name)
        try:  # attached to the hub, so that shutdown and the ``disconnect`` fault reach it
            await self.hub.serve(client, lambda raw: self._on_frame(conn, raw),
                                 lambda exc: self._error(conn, None, f"internal error: {exc}"),
                                 journal_view=journal_view, session_of=lambda: conn.session_id)
        finally:
            if self.audio is not None:
                self.audio.stop(conn)
            self._end_session(conn)
            log.info("RTVI client %s disconnected", client.name)
            conn.client = None  # the record stays until its session is forgotten; the socket goes

    def _send(self, conn: RtviConnection, type_: str, data: Any = None, id_: str | None = None) -> None:
        envelope: dict[str, Any] = {"label": LABEL, "type": type_}
        if id_ is not None:
            envelope["id"] = id_
        if data is not None:
            envelope["data"] = data
        if conn.client is not None:
            self.hub.offer(conn.client, encode_message(envelope))

    def _error(self, conn: RtviConnection, id_: str | None, text: str) -> None:
        conn.errors += 1
        type_ = "error-response" if id_ else "error"
        if conn.client is not None and conn.client.inbound is not None:  # the journaled frame's result
            conn.client.inbound["result"] = {"error": {"code": type_, "message": text}}
        self._send(conn, type_, {"error": text} if id_ else {"error": text, "fatal": False}, id_)

    def _on_frame(self, conn: RtviConnection, raw: bytes) -> None:
        if len(raw) > MAX_MESSAGE_BYTES:
            self._error(conn, None, f"frame is {len(raw)} bytes, the limit is {MAX_MESSAGE_BYTES}")
            return
        try:
            frame = decode_frame(raw)
        except ProtocolError as exc:
            self._error(conn, None, f"bad frame: {exc}")
            return
        if frame.kind == "audio":
            conn.audio_frames += 1
            conn.audio_bytes += frame.audio_bytes
            if conn.detector is not None and conn.session_id is not None and not conn.gone and not conn.deaf:
                self._hear(conn, frame)
            return
        message = frame.message
        if message is None:
            self._error(conn, None, f"pipecat.Frame {frame.kind} frames are not supported: send a message")
            return
        raw_id = message.get("id")
        id_ = raw_id if isinstance(raw_id, str) and raw_id else None
        type_ = message.get("type")
        if message.get("label") != LABEL:
            self._error(conn, id_, f"label must be {LABEL!r}, got {str(message.get('label'))[:80]!r}")
        elif not isinstance(type_, str):
            self._error(conn, id_, "message has no string type")
        elif conn.client is not None:
            self.hub.inbound(conn.client, RTVI_PATH, conn.session_id, message,
                             lambda: self._dispatch(conn, type_, id_, message))

    def _dispatch(self, conn: RtviConnection, type_: str, id_: str | None, message: dict[str, Any]) -> None:
        if type_ == "client-ready":
            self._on_client_ready(conn, id_)
        elif conn.session_id is None:
            self._error(conn, id_, f"{type_[:80]}: send client-ready first")
        elif conn.gone:
            self._error(conn, id_, f"{type_[:80]}: the session is gone (the server was reset)")
        elif type_ == "disconnect-bot":
            self._end_session(conn)
        elif type_ == "send-text":
            self._on_send_text(conn, id_, message.get("data"))
        elif type_ == "client-message":
            self._on_client_message(conn, id_, message.get("data"))
        else:
            self._error(conn, id_, f"{type_[:80]!r} is not supported by pipesim's mock bot (it understands "
                        f"{', '.join(RTVI_CLIENT_MESSAGE_TYPES)})")

    def _on_client_ready(self, conn: RtviConnection, id_: str | None) -> None:
        if conn.session_id is not None:
            self._error(conn, id_, f"client-ready: this connection's bot is already ready "
                        f"(session {conn.session_id!r})")
            return
        sim = self.sim
        while f"rtvi-{self._next}" in sim.manager:  # a seed client may have taken the name
            self._next += 1
        sid = f"rtvi-{self._next}"
        self._next += 1
        conn.session_id = sid
        assert conn.client is not None  # (frames come from an open socket)
        conn.client.watched.add(sid)
        conn.client.owned.add(sid)
        conn.words = sim.streams.generator(sid, "rtvi-text")
        self._send(conn, "bot-ready", {"version": RTVI_VERSION, "about": {
            "library": "pipesim", "library_version": pipesim_version, "session_id": sid}}, id_ or "")
        self.connections[sid] = conn
        try:  # as a seed ``conversation_control start``: the session starts now
            if self.model.user_audio == "vad":
                conn.detector = Detector(report_every_s=sim.scenario.audio.metadata_interval_s)
                self.model.add_session(sid, turns=None, audio_quality=None, start=True, voice=True)
            else:
                self.model.control(sid, "start")
        except (IllegalTransition, UnknownSession) as exc:
            self._error(conn, None, f"cannot create the session: {exc}")

    def _hear(self, conn: RtviConnection, frame: Decoded) -> None:
        """The microphone's audio, heard: its utterances start and end the session's user's (see the module)."""
        assert conn.detector is not None and conn.session_id is not None
        try:
            heard = conn.detector.feed(frame.audio, frame.sample_rate, frame.num_channels)
        except ValueError as exc:
            conn.deaf = True
            self._error(conn, None, f"microphone audio cannot be heard: {exc}; its audio is ignored from now on")
            return
        if heard:
            conn.unheard += self.model.hear(conn.session_id, heard)

    def _on_send_text(self, conn: RtviConnection, id_: str | None, data: Any) -> None:
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, str):
            self._error(conn, id_, "send-text: data.content must be a string")
            return
        assert conn.session_id is not None
        try:
            self.model.speak_now(conn.session_id)
        except (IllegalTransition, UnknownSession) as exc:
            self._error(conn, id_, f"send-text: {exc}")
            return
        conn.pending_text = content[:2000]

    def _on_client_message(self, conn: RtviConnection, id_: str | None, data: Any) -> None:
        t = data.get("t") if isinstance(data, dict) else None
        if not isinstance(t, str):
            self._error(conn, id_, "client-message: data.t must be a string")
            return
        # The echo puts ``d`` three levels down (envelope, data, d): it must fit the reader's limit there.
        problem = unsendable(data.get("d"), "data.d", MAX_DEPTH - 3)
        if problem is not None:
            self._error(conn, id_, f"client-message: {problem}")
            return
        assert conn.session_id is not None
        mgr = self.sim.manager
        snap = mgr.snapshot(conn.session_id, self.model.pacer.catch_up())
        self._send(conn, "server-response", {"t": t, "d": {
            "received": data.get("d"), "session_id": conn.session_id, "status": snap.status,
            "state": snap.state}}, id_ or "")

    def _end_session(self, conn: RtviConnection) -> None:
        """Stop the connection's session (if it still runs) and close the socket once its queue drains."""
        sid = conn.session_id
        mgr = self.sim.manager
        if sid is not None and not conn.gone and sid in mgr and mgr.status(sid) != "stopped":
            self.model.control(sid, "stop")  # its transitions close the socket (session_stopped)
        elif (client := conn.closable) is not None:
            self._close_later(client)

    def _close_later(self, client: _RtviClient) -> None:
        self.hub.close_when_drained(client, CLOSE_NORMAL, "session ended")

    # The model's events -> RTVI ---------------------------------------------------------------------
    def _on_transition(self, tr: Transition) -> None:
        conn = self.connections.get(tr.session_id)
        if conn is not None:
            self._emit(conn, _Event(tr.t, tr.turn_id, tr.event, tr.service, tr.error, tr.value), tr)

    def _emit(self, conn: RtviConnection, ev: _Event, tr: Transition | None) -> None:
        if ev.event == "utterance_ended":
            conn.requested.clear()
        elif ev.event == "service_requested" and ev.service is not None:
            conn.requested.setdefault(ev.service, ev.t)
        elif ev.event == "speech_ended":
            conn.utterance_s = ev.value
        speaks = False
        for rule in MAPPING:
            if rule.trigger not in (ev.event, "*") or rule.service not in (None, ev.service):
                continue
            if rule.trigger == "*" and tr is None:
                continue  # model events are not transitions: the seed has no message for them
            for type_ in rule.rtvi:
                if type_ == "server-message":
                    assert tr is not None
                    for seed_message in wire_messages(tr):
                        self._send(conn, type_, seed_message)
                    continue
                opener = _OPENERS.get(type_)
                if opener is not None:
                    if opener not in conn.opened:
                        continue
                    conn.opened.discard(opener)
                    if type_ == "bot-stopped-speaking" and self.audio is not None:
                        self.audio.stop(conn)  # at once: a barge-in cuts the bot off
                elif type_ in _OPENERS.values():
                    if type_ in conn.opened:
                        continue  # once a turn (a retried request starts its service again)
                    conn.opened.add(type_)
                self._send(conn, type_, self._data(conn, type_, ev))
                if type_ == "bot-started-speaking" and self.audio is not None:
                    speaks = True
        if speaks:  # after the event's messages (bot-output)
            self._speak(conn, ev)
        if ev.event == "session_stopped" and (client := conn.closable) is not None:
            self._close_later(client)

    def _speak(self, conn: RtviConnection, ev: _Event) -> None:
        """The bot starts speaking its reply: its voice, from the session's own stream for this turn."""
        assert self.audio is not None and conn.session_id is not None
        rng = self.sim.streams.generator(conn.session_id, "rtvi-audio", str(ev.turn_id))
        self.audio.start(conn, BotVoice(conn.reply, rng), ev.t)

    def _data(self, conn: RtviConnection, type_: str, ev: _Event) -> Any:
        """The ``data`` of one RTVI message caused by ``ev`` (None: a message without data)."""
        service = ev.service or ""
        if type_ == "metrics":
            if ev.event == "first_response":
                return {"ttfb": [{"processor": service, "value": round(ev.value, 6)}]}
            started = conn.requested.get(service, ev.t)
            return {"processing": [{"processor": service, "value": round(ev.t - started, 6)}]}
        if type_ == "user-transcription":
            text, conn.pending_text = conn.pending_text, None
            if text is None:
                text = self._words(conn, _USER_WORDS, max(1, round(conn.utterance_s * _WORDS_PER_SECOND)))
            return {"text": text, "user_id": conn.session_id, "final": True,
                    "timestamp": datetime.fromtimestamp(ev.t, UTC).isoformat()}
        if type_ == "bot-llm-text":
            if ev.event == "first_token":
                self._draft_reply(conn)
                return {"text": " ".join(conn.reply[:conn.first_phrase])}
            return {"text": " " + " ".join(conn.reply[conn.first_phrase:])}
        if type_ == "bot-output":
            reply = " ".join(conn.reply)
            done = ev.event == "service_completed"
            return {"text": reply, "aggregated_by": "sentence", "segment_id": ev.turn_id, "will_be_spoken": True,
                    "spoken_status": "completed" if done else "new",
                    "spoken_progress": {"accumulated_text": reply if done else "",
                                        "remaining_text": "" if done else reply}}
        if type_ == "error":
            return {"error": f"turn {ev.turn_id} failed: {ev.error}", "fatal": False}
        return None

    def _draft_reply(self, conn: RtviConnection) -> None:
        s = self.sim.sessions.get(conn.session_id or "")
        tokens = s.turn.tokens if s is not None and s.turn is not None else 20
        words = max(2, round(tokens * _WORDS_PER_TOKEN))
        conn.reply = self._words(conn, _BOT_WORDS, words).split(" ")
        phrase = self.sim.scenario.services.llm.first_sentence_tokens
        conn.first_phrase = max(1, min(words - 1, round(phrase * _WORDS_PER_TOKEN)))

    @staticmethod
    def _words(conn: RtviConnection, words: tuple[str, ...], n: int) -> str:
        assert conn.words is not None
        picked = [words[i] for i in conn.words.integers(0, len(words), n)]
        picked[0] = picked[0].capitalize()
        return " ".join(picked) + "."

