# `fastvlm-cli embed` end to end against the golden data (fp32: max|err| <= 1e-4 x max|ref|).
if(FASTVLM_BUILD_EXAMPLES AND FASTVLM_PYTHON)
  set(_g "${FASTVLM_SHARED_DIR}/golden")
  set(_d "${CMAKE_CURRENT_SOURCE_DIR}/data")
  set(_check ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/vision_cli_check.py --cli $<TARGET_FILE:fastvlm-cli>)
  set(_o "${CMAKE_CURRENT_BINARY_DIR}/vision_cli")
  file(MAKE_DIRECTORY ${_o})

  add_test(NAME vision_cli.shared_fused
           COMMAND ${_check} --out ${_o}/fused.safetensors --ref ${_g}/fastvithd_small_io.safetensors
                   --ref-name image_features_fused --
                   --weights ${_g}/fastvithd_small_weights_fused.safetensors --config ${_g}/fastvithd_small_config.json
                   --pixels ${_g}/fastvithd_small_io.safetensors --dump-stages --threads 2)
  add_test(NAME vision_cli.shared_unfused
           COMMAND ${_check} --out ${_o}/unfused.safetensors --ref ${_g}/fastvithd_small_io.safetensors
                   --ref-name image_features --
                   --weights ${_g}/fastvithd_small_weights.safetensors --config ${_g}/fastvithd_small_config.json
                   --pixels ${_g}/fastvithd_small_io.safetensors --dump-stages --threads 2)
  add_test(NAME vision_cli.shared_tiny_vlm_model_folder
           COMMAND ${_check} --out ${_o}/tiny.safetensors --ref ${_g}/tiny_vlm_io.safetensors --ref-name image_features --
                   --model ${_g}/tiny-vlm --pixels ${_g}/tiny_vlm_io.safetensors --threads 1)
  add_test(NAME vision_cli.own_vision_small_unfused
           COMMAND ${_check} --out ${_o}/small.safetensors --ref ${_d}/vision_small/io.safetensors --ref-name image_features --
                   --weights ${_d}/vision_small/weights_unfused.safetensors --config ${_d}/vision_small/config.json
                   --pixels ${_d}/vision_small/io.safetensors --dump-stages)
  add_test(NAME vision_cli.own_vision_192
           COMMAND ${_check} --out ${_o}/v192.safetensors --ref ${_d}/vision_192/io.safetensors
                   --ref-name image_features_fused --
                   --weights ${_d}/vision_192/weights_fused.safetensors --config ${_d}/vision_192/config.json
                   --pixels ${_d}/vision_192/io.safetensors --dump-stages)
  # Bad input: a clear error naming the file, exit code 1.
  add_test(NAME vision_cli.missing_model
           COMMAND $<TARGET_FILE:fastvlm-cli> embed --model ${_o}/no-such-folder --pixels x.safetensors --out ${_o}/x.safetensors)
  set_tests_properties(vision_cli.missing_model PROPERTIES WILL_FAIL TRUE)
  add_test(NAME vision_cli.missing_model_message
           COMMAND $<TARGET_FILE:fastvlm-cli> embed --model ${_o}/no-such-folder --pixels x.safetensors --out ${_o}/x.safetensors)
  set_tests_properties(vision_cli.missing_model_message PROPERTIES PASS_REGULAR_EXPRESSION "no-such-folder: no such model folder")
  add_test(NAME vision_cli.wrong_prefix
           COMMAND $<TARGET_FILE:fastvlm-cli> embed --weights ${_g}/fastvithd_small_weights_fused.safetensors
                   --config ${_g}/fastvithd_small_config.json --prefix model.x. --pixels ${_g}/fastvithd_small_io.safetensors
                   --out ${_o}/x.safetensors)
  set_tests_properties(vision_cli.wrong_prefix PROPERTIES PASS_REGULAR_EXPRESSION "no FastViTHD stem under prefix 'model.x.'")
endif()
