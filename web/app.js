// The page: records the microphone through an AudioWorklet, streams 16 kHz Int16 frames over the
// WebSocket (protocol v1, docs/protocol.md) and shows each sentence growing on its own line.
// The page never holds an app secret: it asks the server's /v1/sign for a single-use link.

const startButton = document.getElementById("start");
const stopButton = document.getElementById("stop");
const statusLine = document.getElementById("status");
const transcript = document.getElementById("transcript");
const level = document.getElementById("level");

const CLOSE_MESSAGES = {
  4401: "The link was refused (expired or already used). Press Start to try again.",
  4403: "The server refused the audio",
  4408: "The session timed out",
  4413: "A frame was too large",
  4500: "The recogniser failed",
  4503: "No recogniser is available right now",
};

// One session at a time; `session` is null when idle.
let session = null;

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function setButtons(phase) {
  startButton.disabled = phase !== "idle";
  stopButton.disabled = phase !== "recording";
}

async function signedUrl() {
  const response = await fetch("/v1/sign", { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`this server does not hand out links to the page (HTTP ${response.status})`);
  }
  return (await response.json()).url;
}

function openSocket(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("cannot reach the server"));
  });
}

function lineFor(speechId) {
  let line = transcript.querySelector(`p[data-speech-id="${CSS.escape(speechId)}"]`);
  if (!line) {
    line = document.createElement("p");
    line.dataset.speechId = speechId;
    transcript.appendChild(line);
  }
  return line;
}

function onServerMessage(current, event) {
  if (event.data === "pong") return;
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return;
  }
  if (message.code !== 200) {
    current.error = `${message.message} (${message.code})`;
    showStatus(`Error: ${current.error}`, true);
    return;
  }
  const data = message.data;
  if (data.status === "start") {
    showStatus("Recording… speak now.");
  } else if (data.status === "partial" || data.status === "final") {
    const line = lineFor(data.speech_id);
    line.textContent = data.result;
    line.classList.toggle("partial", data.status === "partial");
    if (data.status === "final" && !data.result) line.remove();
  } else if (data.status === "end") {
    current.ended = true;
  }
}

function releaseAudio(current) {
  if (current.audioReleased) return;
  current.audioReleased = true;
  current.stream?.getTracks().forEach((track) => track.stop());
  current.source?.disconnect();
  current.node?.disconnect();
  current.context?.close();
  level.value = 0;
}

function onClose(current, event) {
  releaseAudio(current);
  session = null;
  setButtons("idle");
  if (current.ended) {
    showStatus("Session ended.");
  } else if (current.error) {
    showStatus(`Error: ${current.error}`, true);
  } else {
    const known = CLOSE_MESSAGES[event.code];
    showStatus(known ? `${known}.` : `The connection closed unexpectedly (code ${event.code}).`, true);
  }
}

async function start() {
  if (session) return; // a second click while starting or recording never opens a second socket
  const current = { ended: false, error: null, audioReleased: false };
  session = current;
  setButtons("starting");
  showStatus("Connecting…");
  try {
    // The audio graph is built before the microphone opens, so that no early audio is lost.
    current.context = new AudioContext();
    await current.context.audioWorklet.addModule("recorder-worklet.js");
    current.node = new AudioWorkletNode(current.context, "recorder");
    const mute = current.context.createGain();
    mute.gain.value = 0;
    current.node.connect(mute).connect(current.context.destination);

    current.ws = await openSocket(await signedUrl());
    current.ws.onmessage = (event) => onServerMessage(current, event);
    current.ws.onclose = (event) => onClose(current, event);

    current.node.port.onmessage = (event) => {
      if (event.data instanceof ArrayBuffer) {
        if (current.ws.readyState === WebSocket.OPEN) current.ws.send(event.data);
      } else if (event.data.type === "level") {
        level.value = Math.min(1, event.data.rms * 4);
      } else if (event.data.type === "flushed") {
        current.ws.send(JSON.stringify({ status: "end" }));
        releaseAudio(current);
      }
    };
    // Raw capture: browser echo cancellation, noise suppression and gain control distort speech.
    current.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    current.source = current.context.createMediaStreamSource(current.stream);
    current.source.connect(current.node);
    setButtons("recording");
  } catch (error) {
    releaseAudio(current);
    current.ws?.close();
    session = null;
    setButtons("idle");
    showStatus(`Could not start: ${error.message}`, true);
  }
}

function stop() {
  const current = session;
  if (!current || stopButton.disabled) return;
  setButtons("stopping");
  showStatus("Finishing the last sentence…");
  // The worklet sends its last partial frame, then "flushed"; only then does the page send the end.
  current.node.port.postMessage("flush");
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", stop);
setButtons("idle");
