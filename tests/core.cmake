# A precision policy that names a format with no kernel must fail at compile time, readably.
add_test(NAME core.policy_without_kernel_fails_to_compile
         COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only -I${PROJECT_SOURCE_DIR}/include
                 ${CMAKE_CURRENT_SOURCE_DIR}/compile_fail/bad_policy.cpp)
set_tests_properties(core.policy_without_kernel_fails_to_compile PROPERTIES
    PASS_REGULAR_EXPRESSION "no matrix kernel multiplies these weights with this compute format")
