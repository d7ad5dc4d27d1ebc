// Fuzz target: the JSONL request file of `fastvlm-cli batch` (and Model.batch_jsonl in Python):
// split into lines the way examples/cli/batch.hpp reads them (io::read_line with a line-length limit —
// 4 KiB here, `--max-line-bytes` in the CLI — a too-long line becoming batch::too_long_line; UTF-8 BOM
// dropped on the first line, blank lines skipped), each line through batch::parse_line, then the output
// line the CLI writes for it: batch::output for a malformed line, for a failed and for a successful
// result, dumped with batch::dump. No model and no file access (image paths are only recorded).
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "fastvlm/batch_jsonl.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace fastvlm;
    std::istringstream in{std::string(fuzz::as_text(data, size))};
    std::string s;
    for (std::size_t n = 1;; ++n) {
#if __has_include("fastvlm/io/files.hpp")  // the line-length limit of the CLI
        constexpr std::size_t kMaxLine = 4096;
        batch::Line too_long;
        const io::LineStatus st = io::read_line(in, s, kMaxLine, "fuzz.jsonl");
        if (st == io::LineStatus::eof) break;
        if (st == io::LineStatus::too_long) {
            too_long = batch::too_long_line(n, kMaxLine);
            FUZZ_CHECK(!too_long.req && !too_long.error.empty());
            fuzz::sink(batch::dump(batch::output(too_long, nullptr)));
            continue;
        }
        FUZZ_CHECK(s.size() <= kMaxLine);
#else
        if (!std::getline(in, s)) break;
#endif
        if (n == 1 && s.size() >= 3 && s.compare(0, 3, "\xEF\xBB\xBF") == 0) s.erase(0, 3);
        if (batch::trim(s).empty()) continue;
        const batch::Line b = batch::parse_line(s, n, "/nonexistent/fuzz-batch", 256);  // never throws (documented)
        FUZZ_CHECK(b.line == n);
        FUZZ_CHECK(b.req.has_value() == b.error.empty());
        fuzz::sink(batch::dump(batch::output(b, nullptr)));
        if (!b.req) continue;
        FUZZ_CHECK(b.req->max_new_tokens >= 0);
        Result failed;
        failed.error_kind = ErrorKind::invalid_request;
        failed.error = "image 1 of 1: " + b.req->prompt;
        fuzz::sink(batch::dump(batch::output(b, &failed)));
        Result ok;
        ok.text = b.req->prompt;  // any text the model could generate
        ok.ids = {1, 2, 3};
        ok.prompt_tokens = 7;
        fuzz::sink(batch::dump(batch::output(b, &ok)));
        fuzz::sink(batch::correct(b, ok));
    }
    return 0;
}
