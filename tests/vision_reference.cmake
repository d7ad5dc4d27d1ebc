# Own PyTorch reference of FastViTHD (tests/reference/fastvithd_ref.py):
#  - vision_reference_shared_golden: full-size key names/shapes/order vs ../shared/golden manifests (fused
#    and unfused), our reparameterization vs the original's fused weights (max rel diff <= 1e-6), and the
#    float64 forward of the unfused, fused and re-fused small model vs every stored intermediate
#    (max |diff| <= 1e-6; reached: 6e-8 unfused, 1.9e-7 fused).
#  - vision_goldens_current: regenerating tests/data/vision_* gives the committed files (max |diff| <= 1e-6).
#  - vision_synthetic_pytorch: tools/make_synthetic_checkpoint.py vision_tensors() at full width, 256x256
#    input, through the reference: finite features with std > 0.05.
# Exit code 77 (torch or ../shared/golden missing) counts as skipped.
if(FASTVLM_PYTHON)
  add_test(NAME vision_reference_shared_golden
           COMMAND ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/reference/fastvithd_ref.py
                   --golden ${FASTVLM_SHARED_DIR}/golden)
  add_test(NAME vision_goldens_current
           COMMAND ${FASTVLM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/reference/make_vision_goldens.py
                   --check ${CMAKE_CURRENT_SOURCE_DIR}/data)
  add_test(NAME vision_synthetic_pytorch
           COMMAND ${FASTVLM_PYTHON} ${PROJECT_SOURCE_DIR}/bench/pytorch_vision.py
                   --image-size 256 --runs 1 --check)
  set_tests_properties(vision_reference_shared_golden vision_goldens_current vision_synthetic_pytorch
      PROPERTIES LABELS "slow;python" SKIP_RETURN_CODE 77 TIMEOUT 600)
endif()
