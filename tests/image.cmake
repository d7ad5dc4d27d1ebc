# When the library is configured without libjpeg (FASTVLM_WITH_LIBJPEG=OFF): test_image again, with JPEG decoded by libjpeg(-turbo) instead of stb_image (FASTVLM_USE_LIBJPEG):
# then JPEG files match Pillow bit for bit, as both use the system libjpeg (docs/preprocessing.md).
find_package(JPEG QUIET)
if(JPEG_FOUND AND TARGET test_image AND NOT FASTVLM_WITH_LIBJPEG)
  add_executable(test_image_libjpeg ${CMAKE_CURRENT_SOURCE_DIR}/test_image.cpp)
  target_link_libraries(test_image_libjpeg PRIVATE fastvlm::fastvlm fastvlm_project_flags JPEG::JPEG
                        GTest::gtest GTest::gtest_main)
  get_target_property(_fastvlm_image_defs test_image COMPILE_DEFINITIONS)
  target_compile_definitions(test_image_libjpeg PRIVATE ${_fastvlm_image_defs} FASTVLM_USE_LIBJPEG
                             FASTVLM_IMAGE_LIVE_DIR="image_live_libjpeg")
  gtest_discover_tests(test_image_libjpeg TEST_PREFIX libjpeg. DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 900)
endif()
