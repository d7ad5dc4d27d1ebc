# The example programs on the shipped scene model (models/fastvlm-scenes; docs/scene-model.md). Both are
# built in compiled mode (examples/CMakeLists.txt: linked with fastvlm_presets), so these also prove that
# a user's file compiled with FASTVLM_COMPILED_LIB finds every symbol it needs in the library:
#   examples.describe  Model<fp32> + Session: describes one scene, then the chat turn; exit 0
#   examples.engine    Model<int8> + Engine: three scenes submitted at once, one answer line per image,
#                      the first scene's description as the scene data holds it
# The scene images come from the scene_model.scenes_500000 fixture (tests/scene_model.cmake).
function(fastvlm_example_tests)
  if(NOT TARGET describe OR NOT TARGET engine OR NOT TARGET fastvlm-cli OR NOT FASTVLM_PYTHON)
    return()  # the same conditions as the scene fixture's (tests/scene_model.cmake)
  endif()
  set(_model ${PROJECT_SOURCE_DIR}/models/fastvlm-scenes)
  set(_scenes ${PROJECT_BINARY_DIR}/tests/scene_model/scenes_500000)
  add_test(NAME examples.describe COMMAND $<TARGET_FILE:describe> ${_model} ${_scenes}/scene_0500000.png)
  set_tests_properties(examples.describe PROPERTIES FIXTURES_REQUIRED scene_model_scenes LABELS "scene" TIMEOUT 300
                       PASS_REGULAR_EXPRESSION "tokens, TTFT")
  add_test(NAME examples.engine COMMAND $<TARGET_FILE:engine> ${_model} ${_scenes}/scene_0500000.png
                                        ${_scenes}/scene_0500001.png ${_scenes}/scene_0500002.png)
  set_tests_properties(examples.engine PROPERTIES FIXTURES_REQUIRED scene_model_scenes LABELS "scene" TIMEOUT 300
                       PASS_REGULAR_EXPRESSION
                       "scene_0500000.png: A blue square on the left, a red square in the center and a red triangle on the right.\n.*scene_0500001.png: .*scene_0500002.png: ")
endfunction()
fastvlm_example_tests()
