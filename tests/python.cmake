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
# `cmake --install --component python` puts an importable module into site-packages (into a DESTDIR here).
if(TARGET fastvlm_python AND FASTVLM_PYTHON)
  set(_dest ${PROJECT_BINARY_DIR}/tests/python_install)
  add_test(NAME python.install
           COMMAND sh -c "rm -rf '${_dest}' && DESTDIR='${_dest}' '${CMAKE_COMMAND}' --install '${PROJECT_BINARY_DIR}' --component python >/dev/null && cd / && PYTHONPATH='${_dest}${FASTVLM_PYTHON_INSTALL_DIR}' '${FASTVLM_PYTHON}' -c 'import fastvlm, sys; assert fastvlm.__file__.startswith(sys.argv[1]), fastvlm.__file__; print(fastvlm.__file__)' '${_dest}'")
  set_tests_properties(python.install PROPERTIES LABELS "python" TIMEOUT 120)
endif()
