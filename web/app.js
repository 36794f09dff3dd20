// The page: records the microphone through an AudioWorklet, streams 16 kHz Int16 frames over the
// WebSocket (protocol v1, docs/protocol.md) and shows each sentence growing on its own line.
// The page never holds an app secret: it asks the server's /v1/sign for a single-use link.

const startButton = document.getElementById("start");
const stopButton = document.getElementById("stop");
const copyButton = document.getElementById("copy");
const downloadTxtButton = document.getElementById("download-txt");
const downloadSrtButton = document.getElementById("download-srt");
const clearButton = document.getElementById("clear");
const statusLine = document.getElementById("status");
const transcript = document.getElementById("transcript");
const level = document.getElementById("level");
const languageSelect = document.getElementById("language");
const LANGUAGE_NAMES = { en: "English", zh: "中文 Chinese" };

const CLOSE_MESSAGES = {
  4401: "The server refused the link",
  4403: "The server refused the audio",
  4408: "The session timed out",
  4413: "A frame was too large",
  4429: "Too many sessions for this app right now",
  4500: "The recogniser failed",
  4503: "No recogniser is free right now; try again shortly",
};
// Messages kept for a socket that is not open yet or is being replaced (100 ms each: 10 s).
const MAX_QUEUED = 100;

// One session at a time; `session` is null when idle.
let session = null;
// Lines carry times from the start of the transcript (the first session since the last Clear), so
// that sentences of several sessions line up in one .srt.
let transcriptStartedAt = null;
// A link fetched ahead of time, so that Start connects at once; it may expire before it is used,
// in which case the server answers 401 and the page fetches a fresh one and retries once.
let prefetchedLink = null;

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function setPhase(phase) {
  startButton.disabled = phase !== "idle";
  languageSelect.disabled = phase !== "idle";
  stopButton.disabled = phase !== "recording";
  // Keep keyboard focus on the button that does the next thing.
  if (phase === "recording") stopButton.focus();
  if (phase === "idle" && document.activeElement === stopButton) startButton.focus();
}

async function fetchLink() {
  let response;
  try {
    response = await fetch("/v1/sign", { cache: "no-store" });
  } catch {
    throw new Error("cannot reach the server");
  }
  if (!response.ok) {
    throw new Error(`this server does not hand out links to the page (HTTP ${response.status})`);
  }
  return (await response.json()).url;
}

function prefetchLink() {
  prefetchedLink = fetchLink();
  prefetchedLink.catch(() => {}); // reported when Start uses it
}

function takeLink() {
  const link = prefetchedLink ?? fetchLink();
  prefetchedLink = null;
  return link;
}

function lineFor(speechId) {
  let line = transcript.querySelector(`p[data-speech-id="${CSS.escape(speechId)}"]`);
  if (!line) {
    line = document.createElement("p");
    line.dataset.speechId = speechId;
    const at = document.createElement("time");
    const text = document.createElement("span");
    text.className = "text";
    line.append(at, text);
    transcript.appendChild(line);
  }
  return line;
}

function clockText(ms) {
  const seconds = Math.floor(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function showLine(current, data) {
  const line = lineFor(data.speech_id);
  const begin = current.offsetMs + data.begin_time;
  line.dataset.begin = begin;
  line.dataset.end = current.offsetMs + data.end_time;
  line.querySelector("time").textContent = clockText(begin);
  line.querySelector("time").dateTime = `PT${(begin / 1000).toFixed(1)}S`;
  line.querySelector(".text").textContent = data.result;
  line.classList.toggle("partial", data.status === "partial");
  if (data.status === "final" && !data.result) line.remove();
  updateTranscriptButtons();
}

function finalLines() {
  return [...transcript.querySelectorAll("p:not(.partial)")].map((line) => ({
    text: line.querySelector(".text").textContent,
    begin: Number(line.dataset.begin),
    end: Number(line.dataset.end),
  }));
}

function updateTranscriptButtons() {
  const empty = transcript.querySelector("p") === null;
  copyButton.disabled = empty;
  clearButton.disabled = empty;
  downloadTxtButton.disabled = downloadSrtButton.disabled = finalLines().length === 0;
}

function srtClock(ms) {
  const pad = (n, width) => String(Math.floor(n)).padStart(width, "0");
  return `${pad(ms / 3600000, 2)}:${pad((ms / 60000) % 60, 2)}:${pad((ms / 1000) % 60, 2)},${pad(ms % 1000, 3)}`;
}

function download(name, type, body) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([body], { type }));
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function downloadText() {
  download("transcript.txt", "text/plain;charset=utf-8", finalLines().map((line) => `${line.text}\n`).join(""));
}

// One cue per sentence (the command line's `transcribe --format srt` also splits long ones at word times).
function downloadSubtitles() {
  const cues = finalLines().map(
    (line, index) => `${index + 1}\n${srtClock(line.begin)} --> ${srtClock(line.end)}\n${line.text}\n\n`,
  );
  download("transcript.srt", "application/x-subrip;charset=utf-8", cues.join(""));
}

function clearTranscript() {
  transcript.replaceChildren();
  // A session still running keeps its own times; the next one starts the clock again.
  transcriptStartedAt = session ? transcriptStartedAt : null;
  updateTranscriptButtons();
  showStatus(session ? statusLine.textContent : "Transcript cleared.");
}

function send(current, message) {
  if (current.ws?.readyState === WebSocket.OPEN) {
    current.ws.send(message);
    // Until the server confirms the stream, keep what was sent: a refused link loses none of it.
    if (!current.started) current.unconfirmed.push(message);
  } else if (current.queue.length < MAX_QUEUED) {
    current.queue.push(message);
  }
}

function connect(current, url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      current.ws = ws;
      const queued = current.queue;
      current.queue = [];
      queued.forEach((message) => send(current, message));
      resolve(ws);
    };
    ws.onerror = () => reject(new Error("cannot reach the server"));
    ws.onmessage = (event) => onServerMessage(current, event);
    ws.onclose = (event) => onClose(current, ws, event);
  });
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
    current.error = { code: message.code, text: message.message };
    return;
  }
  const data = message.data;
  if (data.status === "start") {
    current.started = true;
    transcriptStartedAt ??= current.openedAt;
    current.offsetMs = current.openedAt - transcriptStartedAt;
    current.unconfirmed = [];
    if (current.phase === "recording") showStatus("Recording… speak now.");
  } else if (data.status === "partial" || data.status === "final") {
    showLine(current, data);
  } else if (data.status === "end") {
    current.ended = true;
  }
}

async function retryWithFreshLink(current) {
  current.retried = true;
  current.error = null;
  current.queue = [...current.unconfirmed, ...current.queue];
  current.unconfirmed = [];
  current.ws = null;
  try {
    await connect(current, `${await fetchLink()}&lang=${encodeURIComponent(languageSelect.value)}`);
  } catch (error) {
    finish(current, `Could not reconnect: ${error.message}.`, true);
  }
}

function onClose(current, ws, event) {
  if (ws !== current.ws) return; // a replaced socket
  if (event.code === 4401 && !current.started && !current.retried) {
    // Most likely the prefetched link expired while the page sat open: one fresh link, one retry.
    retryWithFreshLink(current);
    return;
  }
  if (current.ended) {
    finish(current, "Session ended.", false);
  } else if (current.error) {
    const known = CLOSE_MESSAGES[event.code] ?? "The server ended the session";
    finish(current, `${known}: ${current.error.text} (${current.error.code}).`, true);
  } else {
    finish(current, `The connection to the server was lost (code ${event.code}).`, true);
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

function finish(current, message, isError) {
  releaseAudio(current);
  if (current.ws?.readyState === WebSocket.OPEN) current.ws.close();
  if (session === current) session = null;
  current.phase = "idle";
  setPhase("idle");
  showStatus(message, isError);
  prefetchLink();
}

async function start() {
  if (session) return; // a second Start while starting or recording never opens a second socket
  const current = {
    phase: "starting", started: false, ended: false, retried: false, error: null,
    audioReleased: false, queue: [], unconfirmed: [], ws: null, openedAt: Date.now(), offsetMs: 0,
  };
  session = current;
  setPhase("starting");
  showStatus("Connecting…");
  try {
    // The audio graph is built before the microphone opens, so that no early audio is lost.
    current.context = new AudioContext();
    await current.context.audioWorklet.addModule("recorder-worklet.js").catch(() => {
      throw new Error("cannot reach the server");
    });
    current.node = new AudioWorkletNode(current.context, "recorder");
    const mute = current.context.createGain();
    mute.gain.value = 0;
    current.node.connect(mute).connect(current.context.destination);
    current.node.port.onmessage = (event) => {
      if (event.data instanceof ArrayBuffer) {
        send(current, event.data);
      } else if (event.data.type === "level") {
        level.value = Math.min(1, event.data.rms * 4);
      } else if (event.data.type === "flushed") {
        send(current, JSON.stringify({ status: "end" }));
        releaseAudio(current);
      }
    };

    const language = encodeURIComponent(languageSelect.value);
    await connect(current, `${await takeLink()}&lang=${language}`);
    // Raw capture: browser echo cancellation, noise suppression and gain control distort speech.
    current.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    if (session !== current) return; // the session ended while the microphone was opening
    current.source = current.context.createMediaStreamSource(current.stream);
    current.source.connect(current.node);
    current.phase = "recording";
    setPhase("recording");
    showStatus("Recording… speak now.");
  } catch (error) {
    finish(current, `Could not start: ${error.message}.`, true);
  }
}

function stop() {
  const current = session;
  if (!current || current.phase !== "recording") return;
  current.phase = "stopping";
  setPhase("stopping");
  showStatus("Finishing the last sentence…");
  // The worklet sends its last partial frame, then "flushed"; only then does the page send the end.
  current.node.port.postMessage("flush");
}

async function copyTranscript() {
  const text = [...transcript.querySelectorAll("p .text")].map((line) => line.textContent).join("\n");
  try {
    await navigator.clipboard.writeText(text);
    showStatus("Transcript copied.");
  } catch {
    showStatus("Copying is not allowed here; select the text instead.", true);
  }
}

// The languages this server routes, each marked unavailable (with the reason) if its engine is not ready.
async function loadLanguages() {
  let listed;
  try {
    listed = (await (await fetch("/v1/languages", { cache: "no-store" })).json()).languages;
  } catch {
    return; // keep the built-in English option
  }
  languageSelect.replaceChildren(
    ...listed.map((language) => {
      const option = new Option(LANGUAGE_NAMES[language.code] ?? language.code, language.code);
      if (!language.available) {
        option.disabled = true;
        option.textContent += " (unavailable)";
        option.title = language.reason;
      }
      return option;
    }),
  );
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", stop);
copyButton.addEventListener("click", copyTranscript);
downloadTxtButton.addEventListener("click", downloadText);
downloadSrtButton.addEventListener("click", downloadSubtitles);
clearButton.addEventListener("click", clearTranscript);
setPhase("idle");
prefetchLink();
loadLanguages();
