"""Build flags for llama.cpp, which llama-cpp-python compiles at set-up, from this CPU's flags;
and the record that ties the built library to the CPU it was built for.

Why not GGML_NATIVE: -march=native on an Intel Xeon with AMX compiles ggml's AMX path, which
crashed on the first decode on the project's machines; and a build made on one CPU can die with
"Illegal instruction" on another (AVX-VNNI, built on Intel, run on an AMD EPYC). So each
instruction set is named from /proc/cpuinfo, AMX is always off, and the signature of the flags
is recorded beside the build: the engine refuses a library built for other flags.

`python -m inferlab.native_build cmake-args | record | check`."""

from __future__ import annotations

import os
import sys

# ggml's CMake option -> every /proc/cpuinfo flag it compiles for
OPTIONS = (
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
)
FIXED = (
    "-DGGML_NATIVE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_BF16=OFF",
    # the library alone: no tools, examples, tests, server or multimodal part (FACTS.md: a
    # 6-minute build became 3.6 minutes without them)
    "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAVA_BUILD=OFF", "-DLLAMA_CURL=OFF",
)
# leaves out llama.cpp's `common` library, which llama-cpp-python forces on (see the file)
LEAN_INCLUDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_cpp_lean.cmake")
RECORD = os.path.join(sys.prefix, "inferlab-llama-cpp-build.txt")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def enabled(flags: set[str]) -> list[str]:
    return [option for option, needs in OPTIONS if all(n in flags for n in needs)]


def cmake_args(flags: set[str]) -> str:
    on = set(enabled(flags))
    return " ".join([*FIXED, f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={LEAN_INCLUDE}",
                     *(f"-D{option}={'ON' if option in on else 'OFF'}" for option, _ in OPTIONS)])


def signature(flags: set[str]) -> str:
    return ",".join(enabled(flags)) or "none"


def build_problem() -> str | None:
    """Why the installed llama.cpp must not run on this CPU, or None when it may."""
    try:
        with open(RECORD) as f:
            built_for = f.read().strip()
    except OSError:
        return "llama-cpp-python was not built by inferlab's set-up (run `make venv`)"
    here = signature(cpu_flags())
    if built_for != here:
        return (f"llama.cpp was built for another CPU ({built_for}; this one: {here}): "
                "run `make venv` to rebuild it")
    return None


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "cmake-args"
    if command == "cmake-args":
        print(cmake_args(cpu_flags()))
    elif command == "record":
        with open(RECORD, "w") as f:
            f.write(signature(cpu_flags()) + "\n")
    elif command == "check":
        problem = build_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 1
    else:
        print(f"unknown command {command!r}: cmake-args | record | check", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
