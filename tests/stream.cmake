# fastvlm-cli stream on a real ffmpeg pipe (tests/stream_test.py): every-frame answers equal batch's,
# latest frame wins under --fps-limit, garbage / broken / truncated frames are skipped with a message.
# Exit 77 (skip) only when ffmpeg is missing (Debian: ffmpeg, installed by scripts/setup.sh).
if(TARGET fastvlm-cli AND FASTVLM_PYTHON)
  add_test(NAME stream.ffmpeg_pipe
           COMMAND ${FASTVLM_PYTHON} ${PROJECT_SOURCE_DIR}/tests/stream_test.py --cli $<TARGET_FILE:fastvlm-cli>
                   --model ${PROJECT_SOURCE_DIR}/models/fastvlm-scenes --work ${PROJECT_BINARY_DIR}/tests/stream)
  set_tests_properties(stream.ffmpeg_pipe PROPERTIES LABELS "python;stream" SKIP_RETURN_CODE 77 TIMEOUT 600)
endif()
