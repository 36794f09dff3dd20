// Runs on the audio thread: mixes the microphone to mono, resamples from the device's own rate to
// 16 kHz (no reliance on AudioContext({sampleRate}), which Firefox refuses for microphone streams),
// converts to Int16 and posts one 100 ms frame (1600 samples) at a time.
const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600;
const LEVEL_EVERY_FRAMES = 1;

class RecorderProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    // Input samples per output sample (3 at 48 kHz, 2.75625 at 44.1 kHz).
    this.ratio = sampleRate / TARGET_RATE;
    this.pending = new Float32Array(0);
    this.position = 0; // centre of the next output sample, in input samples from pending[0]
    this.frame = new Int16Array(FRAME_SAMPLES);
    this.filled = 0;
    this.sumSquares = 0;
    this.framesSinceLevel = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.postFrame(this.filled);
        this.port.postMessage({ type: "flushed" });
      }
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const mono = new Float32Array(channels[0].length);
    for (const channel of channels) {
      for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    }
    const joined = new Float32Array(this.pending.length + mono.length);
    joined.set(this.pending);
    joined.set(mono, this.pending.length);
    this.resample(joined);
    return true;
  }

  resample(input) {
    // Box-filter the input over one output period before picking each sample: a cheap low-pass that
    // keeps energy above 8 kHz from folding back into the speech band.
    const half = Math.max(this.ratio / 2, 0.5);
    let position = this.position;
    while (position + half < input.length - 1) {
      const low = Math.max(0, Math.ceil(position - half));
      const high = Math.min(input.length - 1, Math.floor(position + half));
      let sum = 0;
      for (let i = low; i <= high; i++) sum += input[i];
      this.push(sum / (high - low + 1));
      position += this.ratio;
    }
    const consumed = Math.max(0, Math.floor(position - half) - 1);
    this.pending = input.slice(consumed);
    this.position = position - consumed;
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.sumSquares += clipped * clipped;
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === FRAME_SAMPLES) this.postFrame(FRAME_SAMPLES);
  }

  postFrame(samples) {
    if (samples > 0) {
      const out = this.frame.slice(0, samples);
      this.port.postMessage(out.buffer, [out.buffer]);
      if (++this.framesSinceLevel >= LEVEL_EVERY_FRAMES) {
        this.port.postMessage({ type: "level", rms: Math.sqrt(this.sumSquares / samples) });
        this.framesSinceLevel = 0;
      }
    }
    this.sumSquares = 0;
    this.filled = 0;
  }
}

registerProcessor("recorder", RecorderProcessor);
