// Drives the page in Debian's Firefox ESR, headless, over WebDriver BiDi (puppeteer-core, no browser
// download), with known speech as the microphone, and prints the transcript as JSON.
//
//   node page.mjs --url http://127.0.0.1:PORT/ --audio speech.wav --rate 44100|48000 --finals N
//
// The microphone: an init script replaces getUserMedia with a MediaStream played from an AudioBuffer
// (the WAV, decoded at `rate`), and makes every AudioContext of the page run at `rate`, so that the
// page's capture and resampling are exercised at 44.1 and 48 kHz (Firefox refuses to connect a stream
// to a context of another rate, as real devices would never ask it to).
import { readFileSync } from "node:fs";
import puppeteer from "puppeteer-core";

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index >= 0 ? process.argv[index + 1] : fallback;
}

const url = option("url");
const audio = readFileSync(option("audio")).toString("base64");
const rate = Number(option("rate", "48000"));
const finals = Number(option("finals", "1"));
const timeoutMs = Number(option("timeout-ms", "60000"));

function fakeMicrophone(wavBase64, sampleRate) {
  const Original = window.AudioContext;
  window.AudioContext = class extends Original {
    constructor(options = {}) {
      super({ ...options, sampleRate });
    }
  };
  navigator.mediaDevices.getUserMedia = async () => {
    const context = new window.AudioContext();
    const bytes = Uint8Array.from(atob(wavBase64), (c) => c.charCodeAt(0));
    const buffer = await context.decodeAudioData(bytes.buffer);
    const source = context.createBufferSource();
    source.buffer = buffer;
    const destination = context.createMediaStreamDestination();
    source.connect(destination);
    source.start();
    window.__microphoneEndsAt = performance.now() + buffer.duration * 1000;
    return destination.stream;
  };
}

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX ?? "/usr/bin/firefox-esr",
  headless: true,
  // No sound device here: Firefox's mock audio backend clocks the AudioContexts (without it they stay
  // suspended: measured with Debian's firefox-esr; its "null" backend and force_null_context do not run).
  extraPrefsFirefox: {
    "media.navigator.permission.disabled": true,
    "media.autoplay.default": 0,
    "media.cubeb.force_mock_context": true,
  },
});
try {
  const page = await browser.newPage();
  await page.evaluateOnNewDocument(fakeMicrophone, audio, rate);
  await page.goto(url);
  await page.click("#start");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("Recording"), {
    timeout: timeoutMs,
  });
  const contextRate = await page.evaluate(() => new AudioContext().sampleRate);
  await page.waitForFunction(
    (count) =>
      document.querySelectorAll("#transcript p:not(.partial)").length >= count &&
      performance.now() > (window.__microphoneEndsAt ?? Infinity),
    { timeout: timeoutMs, polling: 200 },
    finals,
  );
  await page.click("#stop");
  await page.waitForFunction(() => !document.getElementById("start").disabled, { timeout: timeoutMs });
  const lines = await page.$$eval("#transcript p", (els) =>
    els.map((e) => [e.className, e.querySelector(".text").textContent]),
  );
  const status = await page.$eval("#status", (e) => e.textContent);
  console.log(JSON.stringify({ browser: await browser.version(), contextRate, lines, status }));
} finally {
  await browser.close();
}
