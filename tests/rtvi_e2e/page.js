// The page of tests/test_rtvi_e2e.py: the real Pipecat client against pipesim's /rtvi, every callback logged.
// Bundled by esbuild in the test (into a temp dir); window.rtvi.connect(url) starts it.
import { PipecatClient, RTVI_PROTOCOL_VERSION } from "@pipecat-ai/client-js";
import { WavMediaManager, WebSocketTransport } from "@pipecat-ai/websocket-transport";

const events = [];
const log = (name, data) => events.push({ name, data: data === undefined ? null : data, t: performance.now() });
const audio = { frames: 0, samples: 0, levels: [] };  // the bot's audio the transport handed its player
const names = [
  "onConnected", "onDisconnected", "onBotReady", "onBotConnected", "onBotDisconnected",
  "onUserStartedSpeaking", "onUserStoppedSpeaking", "onUserTranscript", "onBotLlmStarted", "onBotLlmText",
  "onBotLlmStopped", "onBotTtsStarted", "onBotTtsStopped", "onBotStartedSpeaking", "onBotStoppedSpeaking",
  "onBotOutput", "onMetrics", "onServerMessage", "onMessageError", "onError",
];
const callbacks = Object.fromEntries(names.map((name) => [name, (data) => log(name, data)]));
callbacks.onRemoteAudioLevel = (level) => audio.levels.push({ t: performance.now(), level });

// The default media manager (DailyMediaManager) loads a script from a third-party host: WavMediaManager works
// offline, but in 1.7.1 only DailyMediaManager reports the remote audio level. This adds DailyMediaManager's
// own computation to it, as written there: every 100 ms, the mean of the player's normalised frequency
// magnitudes (WavStreamPlayer.getFrequencies) to the client's onRemoteAudioLevel, for the bot.
class LevelledWavMediaManager extends WavMediaManager {
  async initialize() {
    await super.initialize();
    this._remoteAudioLevelInterval ??= setInterval(() => {
      const values = this._wavStreamPlayer.getFrequencies().values;
      const level = values?.length ? values.reduce((a, c) => a + c, 0) / values.length : 0;
      this._callbacks.onRemoteAudioLevel?.(level, { id: "bot", local: false, name: "Bot" });
    }, 100);
  }

  async disconnect() {
    clearInterval(this._remoteAudioLevelInterval);
    this._remoteAudioLevelInterval = undefined;
    await super.disconnect();
  }

  bufferBotAudio(data, id) {
    audio.frames += 1;
    audio.samples += data.length;
    return super.bufferBotAudio(data, id);
  }
}
const transport = new WebSocketTransport({ mediaManager: new LevelledWavMediaManager() });
const client = new PipecatClient({ transport, enableMic: true, enableCam: false, callbacks });

window.rtvi = {
  events,
  audio,
  clientVersion: RTVI_PROTOCOL_VERSION,
  async connect(wsUrl) {
    try {
      const ready = await client.connect({ wsUrl });
      log("connect-resolved", ready);
    } catch (error) {
      log("connect-failed", String(error));
    }
  },
  sendText: (text) => client.sendText(text),
  request: (t, d) => client.sendClientRequest(t, d).then((r) => log("request-resolved", r),
                                                         (e) => log("request-rejected", e)),
  disconnect: () => client.disconnect(),
};
