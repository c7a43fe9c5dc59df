# Included by CMake right after llama.cpp's project() call (CMAKE_PROJECT_llama.cpp_INCLUDE, set
# by native_build.py). llama-cpp-python forces LLAMA_BUILD_COMMON on, which compiles llama.cpp's
# `common` library and the HTTP client it links (about half of the compile time), although the
# Python package loads only libllama and ggml. Turning it off here, before llama.cpp reads the
# option, leaves them out.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
