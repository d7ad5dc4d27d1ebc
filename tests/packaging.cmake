# Packaging: install + find_package, add_subdirectory, and the single header compiling on its own.
add_test(NAME packaging.find_package
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/packaging/run_consumer.sh find_package ${PROJECT_SOURCE_DIR}
                 ${PROJECT_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/consumer-find)
add_test(NAME packaging.add_subdirectory
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/packaging/run_consumer.sh add_subdirectory ${PROJECT_SOURCE_DIR}
                 ${PROJECT_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/consumer-subdir)
add_test(NAME packaging.single_include_fresh
         COMMAND ${FASTVLM_PYTHON} ${PROJECT_SOURCE_DIR}/scripts/amalgamate.py --check)
add_test(NAME packaging.single_include_compiles
         COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only -march=native -I${PROJECT_SOURCE_DIR}/single_include
                 -I${FASTVLM_STB_INCLUDE_DIR} -x c++ ${CMAKE_CURRENT_SOURCE_DIR}/packaging/consumer/main.cpp)
set_tests_properties(packaging.find_package packaging.add_subdirectory packaging.single_include_compiles
                     PROPERTIES LABELS "slow;packaging" TIMEOUT 600)
