# ns-3 3.37's singleton.h and simulation-singleton.h declare constructors as `Singleton<T>(...)`,
# which g++ 12 rejects in C++20. We generate corrected copies of the *installed* headers at
# configure time (only the constructor spelling changes) and force-include them into every
# translation unit that sees ns-3, so their include guards shadow the originals even when an
# ns-3 header includes them with quotes.
set(_shadow ${CMAKE_BINARY_DIR}/ns3-shadow/ns3)
file(MAKE_DIRECTORY ${_shadow})
foreach(_h singleton.h simulation-singleton.h)
  find_file(_src_${_h} NAMES ns3/${_h} PATHS /usr/include NO_DEFAULT_PATH REQUIRED)
  file(READ ${_src_${_h}} _text)
  string(REGEX REPLACE "Singleton<T>\\(" "Singleton(" _text "${_text}")
  string(REGEX REPLACE "~Singleton<T>\\(" "~Singleton(" _text "${_text}")
  # Quoted includes resolve next to the including file; point them at the installed headers.
  string(REGEX REPLACE "#include \"([a-z0-9-]+\\.h)\"" "#include <ns3/\\1>" _text "${_text}")
  file(WRITE ${_shadow}/${_h} "${_text}")
endforeach()
add_library(apiary_ns3 INTERFACE)
target_include_directories(apiary_ns3 SYSTEM BEFORE INTERFACE $<BUILD_INTERFACE:${CMAKE_BINARY_DIR}/ns3-shadow>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/apiary/ns3-shadow>)
# Installed with Apiary (cmake/Install.cmake), so that a program built on its sim headers compiles them the same way.
set(_installed_shadow "$<INSTALL_PREFIX>/${CMAKE_INSTALL_INCLUDEDIR}/apiary/ns3-shadow/ns3")
target_compile_options(apiary_ns3 INTERFACE
  "SHELL:-include $<BUILD_INTERFACE:${_shadow}>$<INSTALL_INTERFACE:${_installed_shadow}>/singleton.h"
  "SHELL:-include $<BUILD_INTERFACE:${_shadow}>$<INSTALL_INTERFACE:${_installed_shadow}>/simulation-singleton.h")
target_link_libraries(apiary_ns3 INTERFACE ns3::libcore ns3::libnetwork ns3::libinternet)
