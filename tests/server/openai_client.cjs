// The official `openai` npm client against fastvlm-server (run by tests/server/server_test.py):
// plain and streaming chat completions with base64 images, then 32 concurrent streaming clients.
// Every answer must equal the reference (fastvlm-cli batch, greedy). Env: FASTVLM_URL, FASTVLM_KEY,
// FASTVLM_CASES (JSON [{image, prompt, answer}]), NODE_PATH (where `openai` is installed).
const fs = require("fs");
const OpenAI = require("openai");

const client = new OpenAI({ baseURL: process.env.FASTVLM_URL, apiKey: process.env.FASTVLM_KEY, timeout: 300000, maxRetries: 0 });
const cases = JSON.parse(fs.readFileSync(process.env.FASTVLM_CASES, "utf8"));
let failures = 0;
function check(cond, what) {
  if (!cond) {
    failures++;
    console.log("FAIL:", what);
  }
}
function messages(c) {
  const mime = c.image.endsWith(".png") ? "image/png" : "image/jpeg";
  const url = `data:${mime};base64,${fs.readFileSync(c.image).toString("base64")}`;
  return [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text: c.prompt }] }];
}
async function plain(c) {
  const r = await client.chat.completions.create({ model: "fastvlm-scenes", messages: messages(c), max_tokens: 64 });
  check(r.object === "chat.completion", "object");
  check(r.choices.length === 1 && r.choices[0].message.role === "assistant", "one assistant choice");
  check(r.choices[0].message.content === c.answer, `plain ${c.prompt}: ${JSON.stringify(r.choices[0].message.content)} vs ${JSON.stringify(c.answer)}`);
  check(["stop", "length"].includes(r.choices[0].finish_reason), "finish_reason");
  check(r.usage.prompt_tokens > 0 && r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, "usage");
}
async function streamed(c, usage) {
  const s = await client.chat.completions.create({
    model: "fastvlm-scenes", messages: messages(c), max_tokens: 64, stream: true,
    stream_options: usage ? { include_usage: true } : undefined,
  });
  let text = "", finish = null, sawUsage = null, chunks = 0;
  for await (const ch of s) {
    chunks++;
    if (ch.usage) sawUsage = ch.usage;
    for (const choice of ch.choices) {
      if (choice.delta && choice.delta.content) text += choice.delta.content;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  check(text === c.answer, `stream ${c.prompt}: ${JSON.stringify(text)} vs ${JSON.stringify(c.answer)}`);
  check(finish === "stop" || finish === "length", "stream finish_reason");
  if (usage) check(sawUsage && sawUsage.completion_tokens > 0, "stream usage chunk");
  return chunks;
}
(async () => {
  const t0 = Date.now();
  for (const c of cases) await plain(c);
  let chunks = 0;
  for (const [i, c] of cases.entries()) chunks += await streamed(c, i % 2 === 0);
  check(chunks > cases.length * 3, `streaming sends several chunks per answer (${chunks})`);
  const models = await client.models.list();
  check(models.data.length === 1 && models.data[0].id === "fastvlm-scenes", "models.list");
  // Error surfaced by the client: a 400 as OpenAI.BadRequestError.
  try {
    await client.chat.completions.create({ model: "x", messages: [{ role: "user", content: "hi" }], n: 2 });
    check(false, "n = 2 must fail");
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError && e.status === 400, `n = 2: BadRequestError (${e})`);
  }
  // Load: 32 concurrent streaming clients (bounded: each request ≤ 64 tokens, 5 min client timeout).
  const t1 = Date.now();
  await Promise.all(Array.from({ length: 32 }, (_, i) => streamed(cases[i % cases.length], false)));
  console.log(`openai client: ${cases.length} plain + ${cases.length} streaming in ${(t1 - t0) / 1000}s, ` +
              `32 concurrent streams in ${(Date.now() - t1) / 1000}s, ${failures} failure(s)`);
  process.exit(failures ? 1 : 0);
})().catch((e) => {
  console.log("FAIL: unexpected", e);
  process.exit(1);
});
