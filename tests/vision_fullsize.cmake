# Full-size FastViTHD (1024², 629 tensors with the real names/shapes, synthetic BF16 weights), LABELS slow.
#   vision_fullsize.setup     writes the vision-only synthetic model folder (≈250 MB, reused when current)
#   vision_fullsize.embed_*   fastvlm-cli embed on a 1024×1024 image: [1, 256, 3072], finite
#   vision_fullsize.vs_torch  fp32 features vs the PyTorch reference (tests/reference/fastvithd_ref.py via
#                             bench/pytorch_vision.py) on the same pixels: max|err| <= 1e-4 x max|ref|
#   vision_fullsize.vs_torch_512  the same at --image-size 512 (64 tokens): the override against PyTorch
if(FASTVLM_BUILD_EXAMPLES AND FASTVLM_PYTHON)
  set(_dir "${CMAKE_CURRENT_BINARY_DIR}/vision_fullsize")
  set(_py ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/vision_fullsize.py --dir ${_dir})
  add_test(NAME vision_fullsize.setup COMMAND ${_py})
  set_tests_properties(vision_fullsize.setup PROPERTIES FIXTURES_SETUP vision_fullsize LABELS slow TIMEOUT 600)
  foreach(p fp32 bf16 int8)
    add_test(NAME vision_fullsize.embed_${p} COMMAND ${_py} --cli $<TARGET_FILE:fastvlm-cli> --precision ${p})
    set_tests_properties(vision_fullsize.embed_${p} PROPERTIES FIXTURES_REQUIRED vision_fullsize LABELS slow TIMEOUT 900
                         RUN_SERIAL TRUE)
  endforeach()
  add_test(NAME vision_fullsize.torch_features
           COMMAND ${FASTVLM_PYTHON} ${PROJECT_SOURCE_DIR}/bench/pytorch_vision.py --model ${_dir} --runs 1 --warmup 0
                   --save-features ${_dir}/torch_features.safetensors)
  set_tests_properties(vision_fullsize.torch_features PROPERTIES FIXTURES_REQUIRED vision_fullsize
                       FIXTURES_SETUP vision_fullsize_torch LABELS slow TIMEOUT 1800 RUN_SERIAL TRUE SKIP_RETURN_CODE 77
                       ENVIRONMENT OPENBLAS_NUM_THREADS=2)
  add_test(NAME vision_fullsize.vs_torch
           COMMAND ${_py} --cli $<TARGET_FILE:fastvlm-cli> --pixels-from ${_dir}/torch_features.safetensors
                   --compare-to ${_dir}/torch_features.safetensors --tol 1e-4)
  set_tests_properties(vision_fullsize.vs_torch PROPERTIES FIXTURES_REQUIRED "vision_fullsize;vision_fullsize_torch"
                       LABELS slow TIMEOUT 900 RUN_SERIAL TRUE)
  add_test(NAME vision_fullsize.torch_features_512
           COMMAND ${FASTVLM_PYTHON} ${PROJECT_SOURCE_DIR}/bench/pytorch_vision.py --model ${_dir} --runs 1 --warmup 0
                   --image-size 512 --save-features ${_dir}/torch_features_512.safetensors)
  set_tests_properties(vision_fullsize.torch_features_512 PROPERTIES FIXTURES_REQUIRED vision_fullsize
                       FIXTURES_SETUP vision_fullsize_torch512 LABELS slow TIMEOUT 900 RUN_SERIAL TRUE SKIP_RETURN_CODE 77
                       ENVIRONMENT OPENBLAS_NUM_THREADS=2)
  add_test(NAME vision_fullsize.vs_torch_512
           COMMAND ${_py} --cli $<TARGET_FILE:fastvlm-cli> --image-size 512 --pixels-from ${_dir}/torch_features_512.safetensors
                   --compare-to ${_dir}/torch_features_512.safetensors --tol 1e-4)
  set_tests_properties(vision_fullsize.vs_torch_512 PROPERTIES FIXTURES_REQUIRED "vision_fullsize;vision_fullsize_torch512"
                       LABELS slow TIMEOUT 900 RUN_SERIAL TRUE)
endif()
