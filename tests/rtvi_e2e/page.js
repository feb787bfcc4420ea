// The page of tests/test_rtvi_e2e.py: the real Pipecat client against pipesim's /rtvi, every callback logged.
// Bundled by esbuild in the test (into a temp dir); window.rtvi.connect(url) starts it.
import { PipecatClient, RTVI_PROTOCOL_VERSION } from "@pipecat-ai/client-js";
import { WavMediaManager, WebSocketTransport } from "@pipecat-ai/websocket-transport";

const events = [];
const log = (name, data) => events.push({ name, data: data === undefined ? null : data });
const names = [
  "onConnected", "onDisconnected", "onBotReady", "onBotConnected", "onBotDisconnected",
  "onUserStartedSpeaking", "onUserStoppedSpeaking", "onUserTranscript", "onBotLlmStarted", "onBotLlmText",
  "onBotLlmStopped", "onBotTtsStarted", "onBotTtsStopped", "onBotStartedSpeaking", "onBotStoppedSpeaking",
  "onBotOutput", "onMetrics", "onServerMessage", "onMessageError", "onError",
];
const callbacks = Object.fromEntries(names.map((name) => [name, (data) => log(name, data)]));
// The default media manager loads a script from a third-party host: WavMediaManager works offline. It records
// at the rate the transport labels its audio frames with (16 kHz; its own default, 24 kHz, would be mislabelled),
// in chunks of 20 ms (640 bytes), as a real microphone streams.
const MIC_RATE = 16000;
const transport = new WebSocketTransport({ mediaManager: new WavMediaManager(640, MIC_RATE),
                                           recorderSampleRate: MIC_RATE });
const client = new PipecatClient({ transport, enableMic: true, enableCam: false, callbacks });

window.rtvi = {
  events,
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
