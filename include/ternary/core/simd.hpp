// xsimd (and with it <immintrin.h>), for every header with SIMD kernels.
//
// GCC before 13 warns (-Wuninitialized, -Wmaybe-uninitialized) inside its own AVX-512
// intrinsics once they are inlined into our kernels: the headers' `__m512i __Y = __Y;`, GCC bug
// 105593, fixed in GCC 13. It shows with -march=native on an AVX-512 machine (41 warnings for
// tests/test_loss.cpp alone with g++ 12). The warnings point into <immintrin.h>, so they are
// silenced for that header's lines only, here, where it is first included (Eigen's headers
// include this one first too, backend/cpu/matmul.hpp); warnings in our own code stay on.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13 && \
    (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include <xsimd/xsimd.hpp>
