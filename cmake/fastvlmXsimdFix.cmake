# Debian's xsimd 8.1 package exports `INTERFACE_LINK_LIBRARIES xtl` although xsimd needs xtl only
# for its optional xtl::xcomplex support (off here); without libxtl-dev that becomes `-lxtl` and
# the link fails. Provide an empty `xtl` target so the name resolves to nothing.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_fastvlm_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_fastvlm_xsimd_libs MATCHES "xtl")
    add_library(xtl INTERFACE IMPORTED GLOBAL)
  endif()
  unset(_fastvlm_xsimd_libs)
endif()
