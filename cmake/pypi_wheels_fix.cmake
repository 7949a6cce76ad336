# Passed by `make build` as -DCMAKE_PROJECT_INCLUDE: adapts the build to ROS 2 Jazzy from PyPI wheels in a venv
# inside the source tree. An apt-installed Jazzy needs none of this.
#
# 1. The *_msgs wheels' exported targets name Python and NumPy include paths of the machine that built the
#    wheels (/opt/python/cp311-cp311/...): point them at this interpreter's.
# 2. rosidl_generator_py adds NumPy's include path (inside .venv, so inside the source tree) as a PUBLIC include
#    of our own Python typesupport library; CMake refuses to export a source-tree path. It is needed only to
#    compile, so keep it as a $<BUILD_INTERFACE:...>.
# Imported targets only exist once the whole CMakeLists.txt has run, hence the deferred call.

set(_SOP_WHEEL_PYTHON_INCLUDE "/opt/python/cp311-cp311/include/python3.11")
set(_SOP_WHEEL_NUMPY_INCLUDE "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include")

function(_sop_fix_wheel_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development NumPy)
  get_property(imported DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(target IN LISTS imported)
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs MATCHES "/opt/python/cp311-cp311")
      list(TRANSFORM dirs REPLACE "^${_SOP_WHEEL_PYTHON_INCLUDE}$" "${Python3_INCLUDE_DIRS}")
      list(TRANSFORM dirs REPLACE "^${_SOP_WHEEL_NUMPY_INCLUDE}$" "${Python3_NumPy_INCLUDE_DIRS}")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${dirs}")
    endif()
  endforeach()

  get_property(own DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY BUILDSYSTEM_TARGETS)
  foreach(target IN LISTS own)
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "INTERFACE_LIBRARY" OR type STREQUAL "UTILITY")
      continue()
    endif()
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs)
      list(TRANSFORM dirs REPLACE "^(${CMAKE_SOURCE_DIR}/\\.venv/.*)$" "$<BUILD_INTERFACE:\\1>")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${dirs}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _sop_fix_wheel_include_dirs)
