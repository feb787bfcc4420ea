"""The bot's audio on the RTVI sockets: while the model's TTS plays on a session (from ``bot-started-speaking``
to ``bot-stopped-speaking``), frames of :class:`~pipesim.live.bot_audio.BotVoice` go to its socket in real time.

Pacing: one ticker for every socket that speaks wakes every :data:`TICK_S` of wall time and sends each
one the frames due by the live clock: every frame that starts less than :data:`LEAD_S` from now, so that
the client always holds a little audio ahead of what it plays (a real bot's transport sends ahead too;
the lead rides out a late tick). A frame always holds :data:`~pipesim.live.bot_audio.FRAME_S` of audio; at
``speed`` it covers ``speed`` times as much simulated speech (fast-forwarded: the same pitch, shorter
syllables), so the client plays the bot for exactly as long as the bot speaks on the wall clock, whatever
the speed, and a cut leaves at most the lead and a frame in its buffer. Frames follow the simulated clock:
a paused clock sends nothing after the lead; audio that fell more than a frame behind (a starved event
loop, the admin API's ``advance``) is skipped, never sent in a burst.

Cutting: :meth:`BotAudio.stop` (the RTVI dialect calls it with ``bot-stopped-speaking``: playback done, a
barge-in, a failed turn, a paused or stopped session) sends nothing more, at once. Frames go through
:meth:`Hub.push <pipesim.live.hub.Hub.push>`: written with the step's other writes while the client keeps
up, else into the same queue as the messages, in order with them and under the same slow-client rule
(``client_queue`` frames behind: closed with 1013).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pipesim.live.bot_audio import FRAME_S, NUM_CHANNELS, SAMPLE_RATE, BotVoice
from pipesim.live.connection import Client
from pipesim.live.hub import Hub
from pipesim.live.pacer import Pacer
from pipesim.live.rtvi_codec import encode_audio

__all__ = ["LEAD_S", "TICK_S", "BotAudio", "Speaker", "Speech"]

#: Audio the client holds ahead of what it plays, at least (wall seconds).
LEAD_S = 0.1
#: How often the ticker looks for frames due (wall seconds).
TICK_S = 0.02


@dataclass(eq=False, slots=True)
class Speech:
    """One reply being spoken on one socket: its voice, and where its next frame starts."""

    voice: BotVoice
    began: float  # simulated time of the first audio
    span: float  # simulated seconds a frame covers (the frame's length times the speed)
    next: int = 0  # the next frame to send: it starts at began + next * span
    due: float = -math.inf  # the simulated time it is due at (the ticker skips the speech until then)


class Speaker(Protocol):
    """What the ticker needs of a connection (an :class:`~pipesim.live.rtvi.RtviConnection`)."""

    client: Client | None
    speech: Speech | None
    bot_audio_frames: int
    bot_audio_bytes: int


class BotAudio:
    """The sockets that speak now, and the ticker that sends their frames (see the module's docstring).

    ``pacer`` gives the live clock (called each time: a reset replaces it).
    """

    def __init__(self, hub: Hub, pacer: Callable[[], Pacer]) -> None:
        self.hub = hub
        self.pacer = pacer
        #: The connections speaking now (a dict: the order they started in, for the same order every tick).
        self.speaking: dict[Speaker, None] = {}
        self._ticker: asyncio.Task[None] | None = None

    def start(self, conn: Speaker, voice: BotVoice, t: float) -> None:
        """``conn``'s bot starts speaking ``voice`` at simulated time ``t``: the lead goes out now."""
        pacer = self.pacer()
        conn.speech = Speech(voice, began=t, span=FRAME_S * pacer.speed)
        self.speaking[conn] = None
        self._send_due(conn, pacer.now(), pacer.speed)
        if self._ticker is None and self.speaking:
            self._ticker = self.hub.spawn(self._tick())

    def stop(self, conn: Speaker) -> None:
        """Nothing more of ``conn``'s reply is sent (what was sent is the client's lead)."""
        conn.speech = None
        self.speaking.pop(conn, None)

    def stop_all(self) -> None:
        for conn in list(self.speaking):
            self.stop(conn)

    async def _tick(self) -> None:
        try:
            while self.speaking:
                await asyncio.sleep(TICK_S)
                pacer = self.pacer()
                now, speed = pacer.now(), pacer.speed
                for conn in list(self.speaking):
                    speech = conn.speech
                    if speech is None or now >= speech.due:
                        self._send_due(conn, now, speed)
        finally:
            self._ticker = None

    def _send_due(self, conn: Speaker, now: float, speed: float) -> None:
        speech, client = conn.speech, conn.client
        if speech is None or client is None or client.closing:
            self.stop(conn)
            return
        span = FRAME_S * speed
        if span != speech.span:  # a new speed: the same point of the speech, in frames of the new span
            speech.next, speech.span = math.ceil(speech.next * speech.span / span), span
        # What ended more than a frame ago is skipped (the frame before the one playing now is not).
        speech.next = max(speech.next, math.floor((now - speech.began) / span) - 1)
        while speech.began + speech.next * span < now + LEAD_S * speed:
            pcm = speech.voice.frame(speech.next, span)
            self.hub.push(client, encode_audio(pcm, SAMPLE_RATE, NUM_CHANNELS))
            if client.closing:  # too slow: the hub is closing it
                self.stop(conn)
                return
            speech.next += 1
            conn.bot_audio_frames += 1
            conn.bot_audio_bytes += len(pcm)
        speech.due = speech.began + speech.next * span - LEAD_S * speed
