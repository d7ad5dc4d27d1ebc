#!/usr/bin/env python3
"""Deterministic tokenizer conformance corpus (JSON Lines: one JSON string per line).

usage: gen_corpus.py OUT_SHARED.jsonl OUT_QWEN3.jsonl

OUT_SHARED: >= 6000 strings for which Qwen2 folders and the Qwen3 tokenizer.json must agree:
English, code, CJK, Arabic, Hindi, emoji and ZWJ sequences, digits, whitespace runs, newlines,
\\r\\n, contractions (also uppercase), <|im_start|> <|im_end|> <|endoftext|> inside text, NFC cases,
random assigned code points, and mixtures. Kept out on purpose (documented in docs/tokenizer.md):
  - every added token other than the three Qwen2 specials (Qwen3 / Qwen2.5 ones are plain text
    for Qwen2 folders): see OUT_QWEN3;
  - U+0085, U+FEFF (JavaScript's \\s differs from Oniguruma's, which fastvlm follows) and U+017F
    (Oniguruma's (?i) folds it to 's'; the JS port of the regex does not);
  - code points unassigned in Unicode 14 (Python's unicodedata): utf8proc 2.8 knows Unicode 15,
    node's ICU is newer.
OUT_QWEN3: strings with the Qwen3/Qwen2.5 added tokens (<think>, <tool_call>, <|box_start|> ...).
"""
import json
import random
import sys
import unicodedata

SEED = 20240611
EXCLUDED = {"\u0085", "\ufeff", "\u017f"}
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
QWEN3_ONLY = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
              "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
              "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
              "</think>"]

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant.",
    "Describe the image in detail.",
    "It's a beautiful day, isn't it? I'd say we'll go out; they've already left.",
    "Dr. Smith's cat—named \"Whiskers\"—weighs 4.5 kg (about 10 lbs).",
    "What is shown in this picture? Please answer briefly.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong said: 'That's one small step for man.'",
    "E-mail me at john.doe@example.com or visit https://example.org/path?q=1&r=2#frag.",
    "Prices rose 3.75% year-over-year, from $1,234.56 to $1,280.85.",
    "SHE'LL SAY HE'S RIGHT, BUT WE'RE NOT SURE THEY'VE SEEN IT; I'M TOLD YOU'D AGREE.",
    "A man in a red jacket is riding a bicycle down a busy street at dusk.",
    "Note:   multiple   spaces,\ttabs,\tand trailing spaces   ",
    "Line one\nLine two\n\nLine four after a blank line\n",
    "Windows line endings\r\nare here\r\n\r\nand here.",
    "¿Dónde está la biblioteca? Ça va très bien, merci. Straße, Größe, Äpfel.",
    "Ελληνικά: Καλημέρα κόσμε. Русский: Привет, мир! Українська: Слава Україні.",
    "naïve café résumé coöperate façade jalapeño piñata",
]
WORDS = ("the of and to in is you that it he was for on are as with his they at be this from have or by one had "
         "not but what all were when we there can an your which their said if do will each about how up out them "
         "then she many some so these would other into has more her two like him see time could no make than first "
         "been its who now people my made over did down only way find use may water long little very after words "
         "called just where most know image picture photo shows large small red blue green dog cat street car "
         "building person woman man child tree sky cloud table chair window").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re",
                "'rE", "'Ll", "'lL", "'vE", "'x", "'", "''", "'s'", "’s", "`s"]
CODE = [
    "def f(x):\n    return x ** 2 + 1\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v.size(); }\n",
    "const add = (a, b) => a + b; // arrow function\nconsole.log(add(2, 3));\n",
    "{\"name\": \"fastvlm\", \"version\": \"0.1.0\", \"tags\": [\"vlm\", \"cpu\"]}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "if x != None and y <= 3:\n        print(f\"{x=} {y!r}\")\n",
    "<div class=\"box\"><p>Hello &amp; welcome</p></div>",
    "$ git commit -m 'fix: off-by-one' && make -j$(nproc)",
    "    \n    \n\tindented\n\t\tdouble\n",
    "x=[1,2,3];y={a:1,b:2};z=(x||y)&&!w;",
    "/* block\n * comment\n */\nstatic_assert(sizeof(T) == 34);",
    "matrix[i][j] += alpha * (A[i, k] @ B[k, j]) ** -0.5",
    "    def __init__(self, *args, **kwargs) -> None:\n        super().__init__(*args, **kwargs)\n",
]
CJK_TEXT = ["你好，世界！", "这是一张图片。", "图片中有一只猫在睡觉。", "我们今天去公园散步吧",
            "日本語のテキストです。", "こんにちは、世界。カタカナとひらがな", "東京タワーは333メートルです",
            "한국어 문장입니다.", "안녕하세요 세계", "中文English混合123测试", "「引用」『二重』【括弧】〈山括弧〉",
            "全角：ＡＢＣ１２３！？", "半角ｶﾀｶﾅ"]
ARABIC = ["مرحبا بالعالم", "هذه صورة لقطة", "العربية لغة جميلة.", "السَّلَامُ عَلَيْكُمْ", "١٢٣٤٥ ٦٧٨٩٠",
          "قال: «نعم»، ثم ذهب.", "فارسی: سلام دنیا ۱۲۳"]
HINDI = ["नमस्ते दुनिया", "यह एक तस्वीर है।", "हिन्दी भाषा में लिखा गया पाठ", "०१२३४५६७८९", "क्षत्रिय ज्ञान श्री",
         "বাংলা লেখা", "தமிழ் எழுத்து", "ภาษาไทยง่ายนิดเดียว"]
EMOJI = ["😀", "😂", "👍", "👍🏽", "❤️", "🇺🇸", "🇯🇵", "1️⃣", "#️⃣", "👨‍👩‍👧‍👦", "👩‍💻", "🏳️‍🌈", "🧑🏿‍🚀",
         "👁️‍🗨️", "🐈‍⬛", "😶‍🌫️", "🫠", "🦀", "🎉🎉🎉", "☕", "✅", "⚠️", "🙏🏻", "💯"]
NFC_CASES = ["e\u0301", "A\u030a", "\u212b", "\u1100\u1161", "\u1100\u1161\u11a8", "a\u0323\u0302", "a\u0302\u0323",
             "\u1e9b\u0323", "o\u0308\u0304", "\u0958", "\u2126", "\u00c5\u0301", "\uff21", "\ufb01", "\u0065\u0300\u0316",
             "\u0915\u093c", "\u05d0\u05b8", "Cafe\u0301 na\u0308ive", "\u0041\u030a\u0301"]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\v", "\f", "\u00a0", "\u3000", "\u2003", "\u2009",
      "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u1680", " \n", "\n ", "\t\n", " \r\n ", "\n\n\n"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "—", "–", "…", "«", "»", "“", "”", "‘", "’", "•",
                                                     "→", "±", "×", "÷", "€", "£", "¥", "©", "®", "°", "§", "¶"]


def assigned_code_points():
    """Assigned (Unicode 14) non-surrogate code points, grouped for sampling."""
    groups = {"L": [], "N": [], "M": [], "P": [], "S": [], "Z": [], "C": []}
    for cp in list(range(0x20, 0x3400)) + list(range(0xA000, 0xD800)) + list(range(0xF900, 0x10000)) + \
            list(range(0x10000, 0x1FAFF)):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat in ("Cn", "Cs") or ch in EXCLUDED:
            continue
        groups[cat[0]].append(ch)
    return groups


def main():
    out_shared, out_qwen3 = sys.argv[1], sys.argv[2]
    rng = random.Random(SEED)
    groups = assigned_code_points()
    corpus = []

    def add(s):
        corpus.append(s)

    def words(n):
        ws = [rng.choice(WORDS) for _ in range(n)]
        for i in range(len(ws)):
            r = rng.random()
            if r < 0.1:
                ws[i] = ws[i].capitalize()
            elif r < 0.13:
                ws[i] = ws[i].upper()
        return " ".join(ws)

    def sentence():
        s = words(rng.randint(3, 14))
        s = s[0].upper() + s[1:]
        if rng.random() < 0.3:
            i = rng.randint(0, len(s))
            s = s[:i] + rng.choice([",", ";", ":", " -", " (" + words(2) + ")"]) + s[i:]
        return s + rng.choice([".", ".", "?", "!", "...", ""])

    def rand_chars(n, cats="LNMPSZC"):
        return "".join(rng.choice(groups[rng.choice(cats)]) for _ in range(n))

    def number():
        k = rng.random()
        if k < 0.3:
            return str(rng.randint(0, 10 ** rng.randint(1, 12)))
        if k < 0.5:
            return f"{rng.uniform(-1e4, 1e4):.{rng.randint(1, 5)}f}"
        if k < 0.65:
            return f"{rng.randint(1, 999)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}"
        if k < 0.8:
            return f"+1 ({rng.randint(200, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        return f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/{rng.randint(1900, 2100)}"

    fragments = [
        lambda: sentence(),
        lambda: rng.choice(ENGLISH),
        lambda: rng.choice(CODE),
        lambda: rng.choice(CJK_TEXT),
        lambda: rng.choice(ARABIC),
        lambda: rng.choice(HINDI),
        lambda: "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4))),
        lambda: number(),
        lambda: "".join(rng.choice(WS) for _ in range(rng.randint(1, 5))),
        lambda: rng.choice(WORDS) + rng.choice(CONTRACTIONS),
        lambda: rng.choice(SPECIALS),
        lambda: rng.choice(NFC_CASES),
        lambda: rng.choice(PUNCT) * rng.randint(1, 3),
        lambda: rand_chars(rng.randint(1, 6)),
        lambda: "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 12))),
        lambda: "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(rng.randint(1, 6))),
    ]

    # 1. every fixed list verbatim
    for lst in (ENGLISH, CODE, CJK_TEXT, ARABIC, HINDI, EMOJI, NFC_CASES, WS, PUNCT, CONTRACTIONS, SPECIALS):
        for s in lst:
            add(s)
    # 2. edge cases
    for s in ["", " ", "a", "'", "''s", "'s", "'S", "I'M", "HE'LL", "we'LL", "don't", "DON'T", "y'all", "rock'n'roll",
              " " * 100, "\n" * 50, "\r\n" * 20, " \t \t ", "a" * 1000, "1" * 300, "!" * 200, "ab" * 400,
              "你" * 2000, "😀" * 100, "x" + " " * 37 + "y", "  leading", "trailing  ", "\n\nleading newlines",
              "<|im_start|>", "<|im_start|><|im_end|>", "<|im_end|><|im_end|>", "<|im_start", "im_start|>",
              "<|im_end|>>", "<<|im_end|>", "<|<|im_end|>|>", "<|endoftext|>text<|endoftext|>", "< |im_end| >",
              "<|IM_END|>", "<|im_end|> ", " <|im_end|>", "\n<|im_start|>\n", "<|im_start|>system\nYou are a helpful "
              "assistant.<|im_end|>\n<|im_start|>user\n"]:
        add(s)
    # 3. categories: ~300 strings each
    for _ in range(300):
        add(sentence() + " " + sentence())
        add(" ".join(sentence() for _ in range(rng.randint(3, 8))))
        add(words(rng.randint(1, 6)) + rng.choice(CONTRACTIONS) + " " + words(rng.randint(1, 4)))
        add(rng.choice(CODE) + rng.choice(CODE))
        add("".join(rng.choice(CJK_TEXT) for _ in range(rng.randint(1, 3))))
        add(rng.choice(ARABIC) + " " + number() + " " + rng.choice(ARABIC))
        add(rng.choice(HINDI) + rng.choice(WS) + rng.choice(HINDI))
        add(sentence() + " " + "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 5))))
        add(number() + rng.choice(WS) + number())
        add("".join(rng.choice(WS + ["a", "1", "."]) for _ in range(rng.randint(2, 12))))
        add(sentence() + rng.choice(SPECIALS) + sentence())
        add(rng.choice(SPECIALS) + rng.choice(["system", "user", "assistant"]) + "\n" + sentence() +
            rng.choice(SPECIALS) + rng.choice(["", "\n"]))
        add(rand_chars(rng.randint(1, 30)))
        add(rand_chars(rng.randint(1, 20), "LM") + " " + rand_chars(rng.randint(1, 20), "NPS"))
        add(words(3) + rng.choice(NFC_CASES) + words(2))
    # 4. random mixtures of fragments
    while len(corpus) < 6500:
        add("".join(rng.choice(fragments)() for _ in range(rng.randint(2, 8))))

    for s in corpus:
        assert not any(c in EXCLUDED for c in s), repr(s)
        assert not any(t in s for t in QWEN3_ONLY), repr(s)
    seen, unique = set(), []
    for s in corpus:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    with open(out_shared, "w", encoding="utf-8") as f:
        for s in unique:
            f.write(json.dumps(s) + "\n")

    qwen3 = []
    for t in QWEN3_ONLY:
        qwen3 += [t, "a" + t + "b", " " + t + " ", t + t, t[:-1], "x" + t.upper()]
    for _ in range(300):
        k = rng.randint(1, 4)
        parts = [rng.choice(fragments)() if rng.random() < 0.6 else rng.choice(QWEN3_ONLY + SPECIALS)
                 for _ in range(k + 2)]
        qwen3.append("".join(parts))
    qwen3 += ["<think>\nLet me think.\n</think>\n\nThe answer is 42.",
              "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
              "<|vision_start|><|image_pad|><|vision_end|>Describe it."]
    with open(out_qwen3, "w", encoding="utf-8") as f:
        for s in qwen3:
            assert not any(c in EXCLUDED for c in s)
            f.write(json.dumps(s) + "\n")
    print(f"gen_corpus: {len(unique)} shared strings, {len(qwen3)} Qwen3-special strings")


if __name__ == "__main__":
    main()
