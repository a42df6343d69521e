# What `cmake --install build [--prefix P]` puts where, for programs built on Apiary:
#   P/include/apiary/{core,harness,sim,real,analysis}/...   headers (#include "core/dht/node.hpp")
#   P/lib/libapiary_*.a                                     the libraries
#   P/bin/apiary, P/bin/apiary-train                        the commands
#   P/lib/cmake/Apiary/ApiaryConfig.cmake                   find_package(Apiary) with targets
#     Apiary::core (the protocols), Apiary::harness (scenarios and workloads), Apiary::sim
#     (ns-3, if built), Apiary::live (Boost.Asio), Apiary::torch (LibTorch, if built),
#     Apiary::results (HDF5 results files).
include(CMakePackageConfigHelpers)
set(APIARY_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR}/apiary)
set(APIARY_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/Apiary)

foreach(dir core harness sim real analysis)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${dir} DESTINATION ${APIARY_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.hpp")
endforeach()
install(FILES ${CMAKE_BINARY_DIR}/generated/apiary/version.hpp DESTINATION ${APIARY_INSTALL_INCLUDEDIR}/apiary)

set(_exported apiary_core apiary_harness_objects apiary_harness apiary_results apiary_real_objects apiary_real)
set_target_properties(apiary_core PROPERTIES EXPORT_NAME core)
set_target_properties(apiary_harness_objects PROPERTIES EXPORT_NAME harness_objects)
set_target_properties(apiary_harness PROPERTIES EXPORT_NAME harness)
set_target_properties(apiary_results PROPERTIES EXPORT_NAME results)
set_target_properties(apiary_real_objects PROPERTIES EXPORT_NAME live_objects)
set_target_properties(apiary_real PROPERTIES EXPORT_NAME live)
if(APIARY_WITH_NS3)
  list(APPEND _exported apiary_sim apiary_ns3)
  set_target_properties(apiary_sim PROPERTIES EXPORT_NAME sim)
  set_target_properties(apiary_ns3 PROPERTIES EXPORT_NAME ns3_cxx20)
  install(DIRECTORY ${CMAKE_BINARY_DIR}/ns3-shadow/ DESTINATION ${APIARY_INSTALL_INCLUDEDIR}/ns3-shadow)
endif()
if(APIARY_WITH_TORCH)
  list(APPEND _exported apiary_torch)
  set_target_properties(apiary_torch PROPERTIES EXPORT_NAME torch)
endif()
install(TARGETS ${_exported} EXPORT ApiaryTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${APIARY_INSTALL_INCLUDEDIR})
install(TARGETS apiary RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(APIARY_WITH_TORCH)
  install(TARGETS apiary-train RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(EXPORT ApiaryTargets NAMESPACE Apiary:: DESTINATION ${APIARY_INSTALL_CMAKEDIR})

set(APIARY_PACKAGE_WITH_NS3 ${APIARY_WITH_NS3})
set(APIARY_PACKAGE_WITH_TORCH ${APIARY_WITH_TORCH})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ApiaryConfig.cmake.in ${CMAKE_BINARY_DIR}/ApiaryConfig.cmake
  INSTALL_DESTINATION ${APIARY_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/ApiaryConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/ApiaryConfig.cmake ${CMAKE_BINARY_DIR}/ApiaryConfigVersion.cmake
  DESTINATION ${APIARY_INSTALL_CMAKEDIR})

# Libraries built with sanitizers (APIARY_SANITIZE) need them when a program built on them links.
if(APIARY_SANITIZE)
  target_link_options(apiary_core INTERFACE $<INSTALL_INTERFACE:-fsanitize=${APIARY_SANITIZE}>)
endif()
