// Reference engine worker in Node.js for the asr-actors engine protocol v1 (docs/engine-protocol.md).
//
//   node index.js --redis redis://127.0.0.1:6379/0 [--engine node-echo] [--concurrency 8]
//
// Its "recogniser" is an energy VAD: each sentence (speech between pauses of 300 ms or more) is reported
// as its duration and level, growing as partials and closed by a final. Everything else is the contract:
// liveness key, claiming, the audio and results channels, sequence numbers, flush, cancel, errors, drain.

import { createClient } from "redis";
import os from "node:os";
import crypto from "node:crypto";

const PROTOCOL_VERSION = 1;
const PREFIX = "asr:";
const HEADER_BYTES = 10; // kind (1), sequence number (8, big-endian), session id length (1)
const FRAME_MS = 30;
const PAUSE_MS = 300; // silence that ends a sentence
const SPEECH_RMS = 500; // Int16 RMS above which a 30 ms frame counts as speech
const PARTIAL_EVERY_MS = 100;

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index >= 0 ? process.argv[index + 1] : fallback;
}

const config = {
  redis: option("redis", process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0"),
  engine: option("engine", "node-echo"),
  concurrency: Number(option("concurrency", "8")),
  heartbeatMs: Number(option("heartbeat-ms", "1000")),
  ttlMs: Number(option("ttl-ms", "3000")),
  idleMs: Number(option("idle-ms", "40000")), // [bus] audio_timeout: longer than the gateway's idle timeout
};
const workerId = `${config.engine}-${os.hostname()}-${process.pid}-${crypto.randomBytes(3).toString("hex")}`;
const log = (...parts) => console.error(new Date().toISOString(), workerId, ...parts);

// Three connections: commands and publishing; blocking BRPOP; subscriptions (a subscribed connection
// can do nothing else).
const commands = createClient({ url: config.redis });
const claimer = commands.duplicate();
const subscriber = commands.duplicate();
for (const client of [commands, claimer, subscriber]) client.on("error", (error) => log("redis:", error.message));

let draining = false;
let running = 0;

function decodeAudio(buffer) {
  if (buffer.length < HEADER_BYTES) throw new Error("audio message shorter than its header");
  const kind = String.fromCharCode(buffer[0]);
  if (!"AEC".includes(kind)) throw new Error(`unknown audio message kind ${JSON.stringify(kind)}`);
  const seq = Number(buffer.readBigUInt64BE(1));
  const length = buffer[9];
  const session = buffer.subarray(HEADER_BYTES, HEADER_BYTES + length).toString("utf8");
  return { kind, seq, session, pcm: buffer.subarray(HEADER_BYTES + length) };
}

// The recogniser: 30 ms frames, RMS energy, sentences between pauses.
class EnergyVad {
  constructor(sampleRate) {
    this.frameBytes = (sampleRate * FRAME_MS) / 1000 * 2;
    this.pending = Buffer.alloc(0);
    this.position = 0; // ms of audio consumed
    this.sentence = null; // { begin, end, energy, frames, lastPartial }
    this.sentences = 0;
  }

  text(sentence) {
    const seconds = ((sentence.end - sentence.begin) / 1000).toFixed(1);
    const level = Math.round(20 * Math.log10(Math.sqrt(sentence.energy / sentence.frames) / 32768));
    return `sentence ${this.sentences + 1}: ${seconds} s at ${level} dBFS`;
  }

  feed(pcm, out) {
    this.pending = Buffer.concat([this.pending, pcm]);
    while (this.pending.length >= this.frameBytes) {
      this.frame(this.pending.subarray(0, this.frameBytes), out);
      this.pending = this.pending.subarray(this.frameBytes);
    }
  }

  frame(frame, out) {
    let sum = 0;
    for (let i = 0; i + 1 < frame.length; i += 2) sum += frame.readInt16LE(i) ** 2;
    const meanSquare = sum / (frame.length / 2);
    const speech = Math.sqrt(meanSquare) > SPEECH_RMS;
    const start = this.position;
    this.position += FRAME_MS;
    if (speech) {
      if (!this.sentence) this.sentence = { begin: start, end: this.position, energy: 0, frames: 0, lastPartial: start };
      const sentence = this.sentence;
      sentence.end = this.position;
      sentence.energy += meanSquare;
      sentence.frames += 1;
      if (this.position - sentence.lastPartial >= PARTIAL_EVERY_MS) {
        sentence.lastPartial = this.position;
        out.push({ type: "partial", text: this.text(sentence), begin_ms: sentence.begin, end_ms: sentence.end });
      }
    } else if (this.sentence && this.position - this.sentence.end >= PAUSE_MS) {
      this.close(out);
    }
  }

  close(out) {
    const sentence = this.sentence;
    out.push({ type: "final", text: this.text(sentence), begin_ms: sentence.begin, end_ms: sentence.end });
    this.sentences += 1;
    this.sentence = null;
  }

  finish(out) {
    // The flush: audio that ends inside a sentence still becomes its final.
    if (this.pending.length > 0) this.frame(Buffer.concat([this.pending, Buffer.alloc(this.frameBytes - this.pending.length)]), out);
    if (this.sentence) this.close(out);
  }
}

async function serve(request) {
  const { session, attempt } = request;
  const resultsChannel = `${PREFIX}results:${session}`;
  const audioChannel = `${PREFIX}audio:${session}:${attempt}`;
  let seq = 0;
  // Results go out strictly in order, one publish after another.
  let outbox = Promise.resolve();
  const send = (fields) => {
    const message = JSON.stringify({ session, seq: seq++, attempt, ...fields });
    outbox = outbox.then(() => commands.publish(resultsChannel, message));
    return outbox;
  };

  if (request.version !== PROTOCOL_VERSION) {
    return send({ type: "refused", message: `engine protocol version ${request.version} is not ${PROTOCOL_VERSION}`, unavailable: true });
  }
  if (request.sample_rate !== 16000 && request.sample_rate !== 8000) {
    return send({ type: "refused", message: `node-echo takes 8000 or 16000 Hz, not ${request.sample_rate}`, unavailable: false });
  }

  const vad = new EnergyVad(request.sample_rate);
  let expected = 0;
  let idleTimer;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));

  // Ends the session once; never throws (it runs from event handlers).
  let ended = false;
  const end = async (fields) => {
    if (ended) return;
    ended = true;
    clearTimeout(idleTimer);
    try {
      await subscriber.unsubscribe(audioChannel);
      if (fields) await send(fields);
    } catch (error) {
      log("ending the session:", error.message);
    }
    finished();
  };
  const armIdle = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => end({ type: "failed", message: "no audio from the gateway" }), config.idleMs);
  };

  const onAudio = (buffer) => {
    let frame;
    try {
      frame = decodeAudio(buffer);
    } catch (error) {
      end({ type: "failed", message: `The audio stream broke: ${error.message}` });
      return;
    }
    if (frame.session !== session || frame.seq < expected) return; // another session's, or a repeat
    if (frame.kind === "C") {
      end(null); // the gateway gave the session up: stop without results
      return;
    }
    if (frame.seq > expected) {
      end({ type: "failed", message: `The audio stream broke: sequence gap at ${expected}` });
      return;
    }
    expected += 1;
    armIdle();
    const out = [];
    if (frame.kind === "E") {
      vad.finish(out);
      out.forEach(send);
      end({ type: "end" });
      return;
    }
    vad.feed(frame.pcm, out);
    out.forEach(send);
  };

  // Subscribed before the claim is announced, so no audio can be published unheard.
  await subscriber.subscribe(audioChannel, onAudio, true);
  await commands.incr(`${PREFIX}claims:${session}`);
  await commands.expire(`${PREFIX}claims:${session}`, 3600);
  await send({ type: "claim", worker: workerId });
  armIdle();
  await done;
  await outbox;
}

async function claimLoop() {
  const queue = `${PREFIX}queue:${config.engine}`;
  while (!draining) {
    if (running >= config.concurrency) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    let popped;
    try {
      popped = await claimer.brPop(queue, 1);
    } catch (error) {
      if (draining) break;
      log("claim failed:", error.message);
      await new Promise((resolve) => setTimeout(resolve, config.heartbeatMs));
      continue;
    }
    if (!popped) continue;
    let request;
    try {
      request = JSON.parse(popped.element);
    } catch {
      log("dropped a malformed request");
      continue;
    }
    running += 1;
    serve(request)
      .catch((error) => log("session failed:", error.message))
      .finally(() => (running -= 1));
  }
}

async function main() {
  await Promise.all([commands.connect(), claimer.connect(), subscriber.connect()]);
  const key = `${PREFIX}worker:${workerId}`;
  const beat = () => commands.set(key, config.engine, { PX: config.ttlMs }).catch((error) => log("heartbeat:", error.message));
  await beat();
  const heartbeat = setInterval(beat, config.heartbeatMs);
  log(`serving engine ${config.engine}`);

  const drain = () => {
    if (draining) return;
    draining = true;
    log("draining: no new sessions, finishing the running ones");
  };
  process.on("SIGTERM", drain);
  process.on("SIGINT", drain);

  await claimLoop();
  while (running > 0) await new Promise((resolve) => setTimeout(resolve, 50));
  clearInterval(heartbeat);
  await commands.del(key);
  await Promise.all([commands.quit(), claimer.disconnect(), subscriber.quit()]);
  log("stopped");
}

main().catch((error) => {
  log("fatal:", error.message);
  process.exit(1);
});
