#!/usr/bin/env bash
# Build llama.cpp's Python binding (llama-cpp-python, which compiles llama.cpp from its sdist) once, cache the
# wheel, install it. About 8 minutes on 2 cores the first time; seconds afterwards (the cached wheel).
#   bash scripts/build_llamacpp.sh && python3 -m pytest -q -m llamacpp
# The build is portable x86-64 (AVX2/FMA/F16C, no AVX-512, no AMX; -DGGML_NATIVE=OFF): the cache may be reused
# on another machine, and some sandboxes report AMX in cpuid but trap its instructions (seen here: Q8_0 matmuls
# died with SIGILL in a native build). Set LLAMACPP_WHEELS to cache somewhere else than ~/.cache/adapruner-wheels.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VERSION="0.3.36"   # vendors a llama.cpp whose deci architecture reads per-layer head/MLP counts and o/down biases
WHEELS="${LLAMACPP_WHEELS:-$HOME/.cache/adapruner-wheels}"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PYTHON" -m pip wheel --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -w "$WHEELS"
fi
"$PYTHON" -m pip install --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl
"$PYTHON" -m pip install "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl  # its dependencies
"$PYTHON" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
