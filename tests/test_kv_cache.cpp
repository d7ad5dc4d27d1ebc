// text/kv_cache.hpp: the paged KV pool.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "fastvlm/text/kv_cache.hpp"

using namespace fastvlm;

TEST(KVPool, PagesComeFromOneHugePageRangeAndAreReused) {
    // A budget of at least 2 MiB is one address range with transparent huge pages (Linux); a smaller one
    // allocates page by page. Either way: distinct, aligned, writable pages, reused after they return.
    for (std::size_t budget : {std::size_t(8) << 20, std::size_t(1) << 20}) {
        const text::KVShape shape{24, 128};
        text::KVPool pool(shape, text::KVType::bf16, budget, 16);
        const Index total = pool.total_pages();
        ASSERT_GE(total, 5);
        std::vector<void*> pages;
        for (Index i = 0; i < total; ++i) {
            pages.push_back(pool.take_page());
            ASSERT_EQ(reinterpret_cast<std::uintptr_t>(pages.back()) % kAlignment, 0u);
            std::memset(pages.back(), int(i & 0x7f), pool.page_bytes());
        }
        EXPECT_THROW(pool.take_page(), Error);
        for (Index i = 0; i < total; ++i) {
            const auto* b = static_cast<const unsigned char*>(pages[std::size_t(i)]);
            ASSERT_EQ(b[0], i & 0x7f);
            ASSERT_EQ(b[pool.page_bytes() - 1], i & 0x7f) << "pages overlap";
        }
        EXPECT_EQ(pool.allocated_bytes(), std::size_t(total) * pool.page_bytes());
#if defined(__linux__)
        EXPECT_EQ(pool.huge_page_arena(), budget >= (std::size_t(2) << 20));
#endif
        pool.put_page(pages[2]);
        EXPECT_EQ(pool.take_page(), pages[2]);
        EXPECT_EQ(pool.allocated_bytes(), std::size_t(total) * pool.page_bytes());
        for (void* p : pages) pool.put_page(p);
        EXPECT_EQ(pool.used_pages(), 0);
    }
}
