// Runs on the audio thread: mixes the microphone to mono, resamples from the device's own rate to
// 16 kHz (no reliance on AudioContext({sampleRate}), which Firefox refuses for microphone streams),
// converts to Int16 and posts one 100 ms frame (1600 samples) at a time.
//
// Resampling is a low-pass filter at the device's rate, then linear interpolation at 16 kHz. The filter
// is a Blackman-windowed sinc: 7.2 kHz cutoff, 63 taps (a 10 kHz tone comes out 75-85 dB down at 44.1
// and 48 kHz); without it everything between 8 kHz and the Nyquist frequency folds into the speech band.
const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600;
const LEVEL_EVERY_FRAMES = 1;
const CUTOFF_HZ = 7200;
const TAPS = 63;

function lowPassTaps(rate) {
  const cutoff = CUTOFF_HZ / rate;
  const middle = (TAPS - 1) / 2;
  const taps = new Float32Array(TAPS);
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window =
      0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1));
    taps[i] = sinc * window;
    sum += taps[i];
  }
  for (let i = 0; i < TAPS; i++) taps[i] /= sum; // unity gain at 0 Hz
  return taps;
}

class RecorderProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    // Input samples per output sample (3 at 48 kHz, 2.75625 at 44.1 kHz).
    this.ratio = sampleRate / TARGET_RATE;
    this.taps = lowPassTaps(sampleRate);
    this.history = new Float32Array(TAPS - 1); // the last raw samples, for the filter's next block
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
    const filtered = this.lowPass(mono);
    const joined = new Float32Array(this.pending.length + filtered.length);
    joined.set(this.pending);
    joined.set(filtered, this.pending.length);
    this.resample(joined);
    return true;
  }

  lowPass(block) {
    const taps = this.taps;
    const padded = new Float32Array(this.history.length + block.length);
    padded.set(this.history);
    padded.set(block, this.history.length);
    const out = new Float32Array(block.length);
    for (let n = 0; n < block.length; n++) {
      let sum = 0;
      for (let k = 0; k < TAPS; k++) sum += taps[k] * padded[n + k];
      out[n] = sum;
    }
    this.history = padded.slice(block.length);
    return out;
  }

  resample(input) {
    // The input is band-limited now: linear interpolation between neighbours is enough.
    let position = this.position;
    while (position + 1 < input.length) {
      const index = Math.floor(position);
      const fraction = position - index;
      this.push(input[index] * (1 - fraction) + input[index + 1] * fraction);
      position += this.ratio;
    }
    const consumed = Math.floor(position);
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
