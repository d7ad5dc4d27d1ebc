# The generated hostile-input suite (tests/hostile/README.md) against this build's own front ends:
# fastvlm-cli, fastvlm-server and the Python module, whichever this build has. One ctest entry,
# LABELS hostile; --quick (fewer seeded mutations) in a sanitizer build. Failing inputs, each with a
# repro.sh, are kept under <build>/tests/hostile_failures.
if(FASTVLM_PYTHON AND (TARGET fastvlm-cli OR TARGET fastvlm-server OR TARGET fastvlm_python))
  set(_hostile ${FASTVLM_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/hostile.py --keep ${PROJECT_BINARY_DIR}/tests/hostile_failures)
  if(TARGET fastvlm-cli)
    list(APPEND _hostile --cli $<TARGET_FILE:fastvlm-cli>)
  endif()
  if(TARGET fastvlm-server)
    list(APPEND _hostile --server $<TARGET_FILE:fastvlm-server>)
  endif()
  if(TARGET fastvlm_python)
    list(APPEND _hostile --python-module-dir $<TARGET_FILE_DIR:fastvlm_python>)
  endif()
  if(FASTVLM_SANITIZE)
    list(APPEND _hostile --quick)
  endif()
  add_test(NAME hostile COMMAND ${_hostile})
  set_tests_properties(hostile PROPERTIES LABELS "hostile" TIMEOUT 900 RUN_SERIAL TRUE)
endif()
