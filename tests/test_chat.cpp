// text/chat.hpp: the chat prompt, the image placeholder split and id lists.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "fastvlm/core/error.hpp"
#include "fastvlm/text/chat.hpp"

using namespace fastvlm;

TEST(Chat, PromptAndImageSplit) {
    EXPECT_EQ(text::image_prompt("Describe the image."),
              "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nDescribe the "
              "image.<|im_end|>\n<|im_start|>assistant\n");
    std::vector<std::string> chunks;
    auto enc = [&](const std::string& s) {
        chunks.push_back(s);
        return std::vector<std::int32_t>{std::int32_t(s.size())};
    };
    EXPECT_EQ(text::tokenize_with_image("ab<image>\ncd", enc), (std::vector<std::int32_t>{2, -200, 3}));
    EXPECT_EQ(chunks, (std::vector<std::string>{"ab", "\ncd"}));
    EXPECT_EQ(text::tokenize_with_image("<image>", enc), (std::vector<std::int32_t>{-200}));
    EXPECT_EQ(text::parse_id_list("1, 2,-200,3"), (std::vector<std::int32_t>{1, 2, -200, 3}));
    EXPECT_THROW(text::parse_id_list("1,x"), Error);
    EXPECT_THROW(text::parse_id_list("99999999999"), Error);
}
