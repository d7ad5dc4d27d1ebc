# fastvlm-server end to end on the shipped scene model (tests/server/server_test.py, 127.0.0.1 only):
#   server.errors         every error case (401, 400 …, 404, 413, 429, 504, malformed HTTP, a client that
#                         disconnects mid-stream) then a right answer; runs in the sanitizer build too
#   server_npm_setup      installs the official `openai` npm package into <build>/npm-openai (once)
#   server.openai_client  that client: plain + streaming answers == fastvlm-cli batch, 32 concurrent streams
#   server.scaleout       two replicas behind HAProxy (server/haproxy.cfg), one killed mid-run
if(NOT TARGET fastvlm-server OR NOT FASTVLM_PYTHON)
  return()
endif()
find_program(FASTVLM_NODE NAMES node nodejs)
find_program(FASTVLM_NPM NAMES npm)
set(FASTVLM_OPENAI_NPM_VERSION 4.95.0 CACHE STRING "Version of the openai npm package the server is tested with")
set(_srv_test ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/server/server_test.py --server $<TARGET_FILE:fastvlm-server>
    --model ${PROJECT_SOURCE_DIR}/models/fastvlm-scenes)
add_test(NAME server.errors COMMAND ${_srv_test} --work ${PROJECT_BINARY_DIR}/tests/server_errors --errors-only)
set_tests_properties(server.errors PROPERTIES LABELS "server" TIMEOUT 600 RUN_SERIAL TRUE)
if(NOT TARGET fastvlm-cli)  # the client test compares with fastvlm-cli batch
  return()
endif()
add_test(NAME server_npm_setup
         COMMAND ${CMAKE_COMMAND} "-DNPM=${FASTVLM_NPM}" "-DPREFIX=${PROJECT_BINARY_DIR}/npm-openai"
                 "-DVERSION=${FASTVLM_OPENAI_NPM_VERSION}" -P ${CMAKE_CURRENT_SOURCE_DIR}/server/npm_setup.cmake)
set_tests_properties(server_npm_setup PROPERTIES FIXTURES_SETUP server_npm TIMEOUT 600 LABELS "server;slow")
add_test(NAME server.openai_client
         COMMAND ${_srv_test} --cli $<TARGET_FILE:fastvlm-cli> --work ${PROJECT_BINARY_DIR}/tests/server_client --client-only
                 --node ${FASTVLM_NODE} --npm-prefix ${PROJECT_BINARY_DIR}/npm-openai)
set_tests_properties(server.openai_client PROPERTIES FIXTURES_REQUIRED server_npm LABELS "server;slow" TIMEOUT 900
                     RUN_SERIAL TRUE)

# Scale-out: two replicas (1 thread each) behind HAProxy with server/haproxy.cfg; 40 requests, one
# replica killed mid-run, every answer right (tests/server/scaleout_test.py).
find_program(FASTVLM_HAPROXY NAMES haproxy PATHS /usr/sbin /sbin)
if(FASTVLM_HAPROXY)
  add_test(NAME server.scaleout
           COMMAND ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/server/scaleout_test.py --server $<TARGET_FILE:fastvlm-server>
                   --cli $<TARGET_FILE:fastvlm-cli> --haproxy ${FASTVLM_HAPROXY}
                   --model ${PROJECT_SOURCE_DIR}/models/fastvlm-scenes --work ${PROJECT_BINARY_DIR}/tests/server_scaleout)
  set_tests_properties(server.scaleout PROPERTIES LABELS "server;slow" TIMEOUT 300 RUN_SERIAL TRUE)
else()
  message(WARNING "haproxy not found (Debian: haproxy): the server.scaleout test is skipped")
endif()
