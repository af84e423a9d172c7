// The official Node OpenAI SDK against the server, as a Node user calls it. Prints what
// each call returned (or the error it raised) as one JSON object; tests/e2e/test_node_sdk.py
// checks it. Usage: node transcribe.mjs BASE_URL AUDIO_FILE MODEL
import { readFile } from "node:fs/promises";
import OpenAI, { toFile } from "openai";

const [baseURL, audioPath, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const audio = await readFile(audioPath);
const file = () => toFile(audio, "speech.wav");

async function outcome(call) {
  try {
    return { ok: await call() };
  } catch (error) {
    return { status: error.status, error: error.error };
  }
}

async function streamed(params) {
  const events = [];
  for await (const event of await client.audio.transcriptions.create({ ...params, stream: true })) {
    events.push(event);
  }
  return events;
}

const transcribe = async (params) => client.audio.transcriptions.create({ model, file: await file(), ...params });
const translate = async (params) => client.audio.translations.create({ model, file: await file(), ...params });

const results = {
  plain: await outcome(() => transcribe({})),
  keywords: await outcome(() => transcribe({ keywords: ["Granite", "vLLM"] })),
  prompt: await outcome(() => transcribe({ prompt: "Granite, vLLM" })),
  languages: await outcome(() => transcribe({ languages: ["en", "fr"], include: ["logprobs"] })),
  restricted: await outcome(() => transcribe({ languages: ["fr", "es"] })),
  badLanguage: await outcome(() => transcribe({ languages: ["en", "xx"] })),
  verbose: await outcome(() => transcribe({
    response_format: "verbose_json", timestamp_granularities: ["segment"], languages: ["de"],
  })),
  stream: await outcome(async () => streamed({ model, file: await file(), keywords: ["Granite"] })),
  speakers: await outcome(() => transcribe({ known_speaker_names: ["agent"] })),
  diarized: await outcome(() => transcribe({ response_format: "diarized_json" })),
  // Translations take the same list fields (the SDK's types don't list them there yet; it
  // sends what it is given).
  translation: await outcome(() => translate({})),
  translationKeywords: await outcome(() => translate({ keywords: ["Granite", "vLLM"], include: ["logprobs"] })),
};
console.log(JSON.stringify(results));
