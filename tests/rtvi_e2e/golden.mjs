// Writes the golden frames of tests/test_rtvi_codec.py with the real transport's own encoder:
//   cd tests/rtvi_e2e && npm ci && node golden.mjs > ../data/rtvi_frames.json
import { ProtobufFrameSerializer } from "@pipecat-ai/websocket-transport";
import { RTVIMessage, RTVIMessageType } from "@pipecat-ai/client-js";

const serializer = new ProtobufFrameSerializer();
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const messages = [
  new RTVIMessage(RTVIMessageType.CLIENT_READY, { version: "2.1.0", about: { library: "@pipecat-ai/client-js" } }, "a1"),
  new RTVIMessage(RTVIMessageType.SEND_TEXT, { content: "héllo — 👋", options: {} }, "b2"),
  new RTVIMessage(RTVIMessageType.CLIENT_MESSAGE, { t: "x".repeat(300), d: { n: 1 } }, "c3"),
];
const frames = messages.map((m) => ({ kind: "message", json: JSON.stringify(m), hex: hex(serializer.serializeMessage(m)) }));
const pcm = new Int16Array([0, 1, -1, 32767, -32768, 1000]);
frames.push({ kind: "audio", audio_bytes: pcm.byteLength, sample_rate: 16000, num_channels: 1,
              hex: hex(serializer.serializeAudio(pcm.buffer, 16000, 1)) });
// The bot's audio as the transport would write it at its player's rate (24 kHz mono), and the samples its own
// decoder (the one that feeds the player) reads back from those bytes.
const bot = new Int16Array([0, 256, -256, 12345, -12345, 32767, -32768, 7]);
const botBytes = serializer.serializeAudio(bot.buffer, 24000, 1);
const decoded = await serializer.deserialize(new Blob([botBytes]));
frames.push({ kind: "bot-audio", samples: Array.from(bot), sample_rate: 24000, num_channels: 1,
              hex: hex(botBytes), decoded_type: decoded.type, decoded_samples: Array.from(decoded.audio) });
console.log(JSON.stringify({ made_by: "tests/rtvi_e2e/golden.mjs with @pipecat-ai/websocket-transport 1.7.1", frames }, null, 1));
