// Reference engine worker in Node.js for the asr-actors engine protocol v2 (docs/engine-protocol.md).
//
//   node index.js --redis redis://127.0.0.1:6379/0 [--engine node-echo] [--concurrency 8]
//
// Its "recogniser" is an energy VAD: each sentence (speech between pauses of 300 ms or more) is reported
// as its duration and level, growing as partials and closed by a final. Everything else is the contract:
// liveness key, claiming, the inbox and its record batches, sequence numbers, flush, cancel, errors, drain.

import { createClient } from "redis";
import os from "node:os";
import crypto from "node:crypto";

const PROTOCOL_VERSION = 2;
const PREFIX = "asr:v2:";
// kind (1), attempt (4), sequence number (8), session id length (1), payload length (4); big-endian
const HEADER_BYTES = 18;
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

// Three connections: commands and publishing; blocking BRPOP; the inbox subscription (a subscribed
// connection can do nothing else).
const commands = createClient({ url: config.redis });
const claimer = commands.duplicate();
const subscriber = commands.duplicate();
for (const client of [commands, claimer, subscriber]) client.on("error", (error) => log("redis:", error.message));

let draining = false;
let running = 0;

// One PUBLISH holds one or more records. Framing that does not add up ends the batch (the records
// after it are lost, which their sessions see as a sequence gap).
function* decodeBatch(buffer) {
  let offset = 0;
  while (offset < buffer.length) {
    if (buffer.length - offset < HEADER_BYTES) throw new Error("record shorter than its header");
    const kind = String.fromCharCode(buffer[offset]);
    const attempt = buffer.readUInt32BE(offset + 1);
    const seq = Number(buffer.readBigUInt64BE(offset + 5));
    const sessionLength = buffer[offset + 13];
    const payloadLength = buffer.readUInt32BE(offset + 14);
    const start = offset + HEADER_BYTES;
    offset = start + sessionLength + payloadLength;
    if (offset > buffer.length) throw new Error("record longer than its batch");
    const session = buffer.subarray(start, start + sessionLength).toString("utf8");
    yield { kind, attempt, seq, session, payload: buffer.subarray(start + sessionLength, offset) };
  }
}

function encodeRecord(kind, session, attempt, seq, payload) {
  const id = Buffer.from(session, "utf8");
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(kind, 0, "latin1");
  header.writeUInt32BE(attempt, 1);
  header.writeBigUInt64BE(BigInt(seq), 5);
  header[13] = id.length;
  header.writeUInt32BE(payload.length, 14);
  return Buffer.concat([header, id, payload]);
}

// The sessions this worker serves, by "<session>:<attempt>": each gets the records of its placement.
const placements = new Map();
const inbox = `${PREFIX}inbox:${workerId}`;
function onInbox(buffer) {
  try {
    for (const record of decodeBatch(buffer)) placements.get(`${record.session}:${record.attempt}`)?.(record);
  } catch (error) {
    log("dropped the rest of a malformed batch:", error.message);
  }
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
  const gatewayInbox = `${PREFIX}inbox:${request.reply_to}`;
  const placement = `${session}:${attempt}`;
  let seq = 0;
  // Results go out strictly in order, one record per publish (a batch of one is a batch).
  let outbox = Promise.resolve();
  const send = (fields) => {
    const record = encodeRecord("R", session, attempt, seq++, Buffer.from(JSON.stringify(fields), "utf8"));
    outbox = outbox.then(() => commands.publish(gatewayInbox, record));
    return outbox;
  };

  if (request.version !== PROTOCOL_VERSION) {
    return send({ type: "refused", message: `engine protocol version ${request.version} is not ${PROTOCOL_VERSION}`, unavailable: true });
  }
  if (request.sample_rate !== 16000 && request.sample_rate !== 8000) {
    return send({ type: "refused", message: `node-echo takes 8000 or 16000 Hz, not ${request.sample_rate}`, unavailable: false });
  }
  // Session options (docs/protocol.md): node-echo honours none; those marked advisory it may run without.
  const options = request.options || {};
  const advisory = new Set(Array.isArray(options.advisory) ? options.advisory : []);
  const unhonoured = Object.keys(options).filter((name) => name !== "advisory" && !advisory.has(name));
  if (unhonoured.length > 0) {
    return send({ type: "refused", message: `node-echo does not take the option(s) ${unhonoured.join(", ")}`, unavailable: false });
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
    placements.delete(placement);
    try {
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

  const onRecord = (frame) => {
    if (frame.kind === "C") {
      end(null); // the gateway gave the session up: stop without results
      return;
    }
    if (frame.kind !== "A" && frame.kind !== "E") {
      end({ type: "failed", message: `The audio stream broke: record of kind ${JSON.stringify(frame.kind)}` });
      return;
    }
    if (frame.seq < expected) return; // a repeat
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
    if (frame.payload.length % 2) {
      end({ type: "failed", message: "The audio stream broke: odd number of PCM bytes" });
      return;
    }
    vad.feed(frame.payload, out);
    out.forEach(send);
  };

  // Routed before the claim is announced, so that no audio record arrives unheard.
  placements.set(placement, onRecord);
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
    if (typeof request.reply_to !== "string" || !request.reply_to) {
      log("dropped a request without reply_to");
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
  // The inbox is subscribed before the worker announces itself: no session can be claimed unheard.
  await subscriber.subscribe(inbox, onInbox, true);
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
