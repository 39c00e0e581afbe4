# `cmake --install <build> --prefix P` (docs/install.md): the normlab CLI, the
# library (libnormlab.a, or libnormlab.so.<version> with -DBUILD_SHARED_LIBS=ON),
# the public headers, a CMake package (find_package(normlab) ->
# normlab::normlab) and a pkg-config file (normlab.pc). Everything lands
# relative to P: the CMake package is relocatable, normlab.pc is written with P
# at install time.
#
# Installed builds should run on any x86-64 CPU: the default NORMLAB_ARCH=dispatch
# does (x86-64-v2, kernels also for AVX2/AVX-512 chosen at run time); native
# makes a library only for CPUs like the one that built it. The CMake package
# records the value as normlab_ARCH.
include(CMakePackageConfigHelpers)

set(NORMLAB_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/normlab")

install(TARGETS normlab_lib
  EXPORT normlab-targets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS normlab RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})  # the CLI, not exported
install(DIRECTORY include/normlab DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp")
install(EXPORT normlab-targets NAMESPACE normlab:: DESTINATION ${NORMLAB_CMAKE_DIR})

if(BUILD_SHARED_LIBS)
  set(NORMLAB_INSTALLED_SHARED ON)
else()
  set(NORMLAB_INSTALLED_SHARED OFF)
endif()
configure_package_config_file(cmake/normlab-config.cmake.in
  "${PROJECT_BINARY_DIR}/normlab-config.cmake" INSTALL_DESTINATION ${NORMLAB_CMAKE_DIR})
# 0.x: minor releases break the API, so only the same major.minor matches.
write_basic_package_version_file("${PROJECT_BINARY_DIR}/normlab-config-version.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/normlab-config.cmake"
              "${PROJECT_BINARY_DIR}/normlab-config-version.cmake"
        DESTINATION ${NORMLAB_CMAKE_DIR})

# pkg-config: the static library needs its dependencies on the link line
# (Libs), the shared one carries them as DT_NEEDED (Libs.private, for --static).
# OpenMP: the flag (-fopenmp), which links the compiler's runtime (GNU libgomp;
# clang's libomp implements the same GOMP_ entry points).
set(NORMLAB_PC_DEPS "-ldnnl -lz ${OpenMP_CXX_FLAGS}")
if(NORMLAB_MPI)
  list(JOIN MPI_CXX_LIBRARIES " " NORMLAB_PC_MPI)
  string(APPEND NORMLAB_PC_DEPS " ${NORMLAB_PC_MPI}")
endif()
if(BUILD_SHARED_LIBS)
  set(NORMLAB_PC_LIBS "-L\${libdir} -lnormlab")
  set(NORMLAB_PC_LIBS_PRIVATE "${NORMLAB_PC_DEPS}")
else()
  set(NORMLAB_PC_LIBS "-L\${libdir} -lnormlab ${NORMLAB_PC_DEPS}")
  set(NORMLAB_PC_LIBS_PRIVATE "")
endif()
set(NORMLAB_PC_PREFIX "@NORMLAB_PC_PREFIX@")  # filled in below, when installing
configure_file(cmake/normlab.pc.in "${PROJECT_BINARY_DIR}/normlab.pc.in" @ONLY)
# The prefix is known only when installing (cmake --install --prefix P).
install(CODE "
  set(NORMLAB_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${PROJECT_BINARY_DIR}/normlab.pc.in\" \"${PROJECT_BINARY_DIR}/normlab.pc\" @ONLY)
")
install(FILES "${PROJECT_BINARY_DIR}/normlab.pc" DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
