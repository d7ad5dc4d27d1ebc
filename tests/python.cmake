# The Python module (python/, FASTVLM_BUILD_PYTHON): pytest over python/tests — API round trips,
# streaming, numpy/PIL inputs, errors as exceptions, threads, chat, Ctrl-C, and distributed captioning
# on a Dask LocalCluster (2 worker processes x 1 thread on 127.0.0.1, one killed mid-run) compared
# line for line with `fastvlm-cli batch`. Needs Debian python3-pytest, python3-distributed.
if(TARGET fastvlm_python AND TARGET fastvlm-cli AND FASTVLM_PYTHON)
  add_test(NAME python.pytest
           COMMAND ${FASTVLM_PYTHON} -m pytest -q -p no:cacheprovider ${PROJECT_SOURCE_DIR}/python/tests)
  set_tests_properties(python.pytest PROPERTIES LABELS "python" TIMEOUT 900
      ENVIRONMENT "FASTVLM_PYTHON_DIR=${PROJECT_BINARY_DIR}/python;FASTVLM_CLI=$<TARGET_FILE:fastvlm-cli>;FASTVLM_SOURCE=${PROJECT_SOURCE_DIR}")
endif()
