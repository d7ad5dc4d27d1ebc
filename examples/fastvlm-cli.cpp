// fastvlm-cli — command-line front end. `fastvlm-cli --help` lists the commands.
// To add a command: examples/cli/<cmd>.hpp defines `fastvlm::cli::Command <cmd>_command()`; include it
// here and append it to commands().
#include <vector>

#include "cli/args.hpp"
#include "cli/batch.hpp"
#include "cli/chat.hpp"
#include "cli/dump.hpp"
#include "cli/embed.hpp"
#include "cli/eval.hpp"
#include "cli/run.hpp"
#include "cli/stream.hpp"
#include "cli/tokenize.hpp"

namespace {
std::vector<fastvlm::cli::Command> commands() {
    return {
        fastvlm::cli::embed_command(),
        fastvlm::cli::run_command(),
        fastvlm::cli::chat_command(),
        fastvlm::cli::dump_command(),
        fastvlm::cli::tokenize_command(),
        fastvlm::cli::eval_command(),
        fastvlm::cli::batch_command(),
        fastvlm::cli::stream_command(),
    };
}
}  // namespace

int main(int argc, char** argv) { return fastvlm::cli::dispatch(argc, argv, commands()); }
