// Prototype for benchmarks/gemv_vnni.py: int4 g128 asymmetric GEMV (M = 1) with AVX-512 VNNI, the weight rows
// interleaved by 16 so that each 32-bit lane accumulates one row (no horizontal sums); activations quantized to
// int8 per group of 128 (as MatMulNBits accuracy_level 4 does). Not used by the toolkit: it measures whether a
// GEMV of our own could beat ONNX Runtime's on this machine.
#include <torch/extension.h>
#include <immintrin.h>
#include <omp.h>

// packed: (N/16, K/128, 16 steps of 64 bytes): within a group, for step pair p (0..15) one 64-byte line holds
// low nibbles = 16 rows x 4 codes of k = 8p..8p+3 (row-major lanes: row r -> bytes 4r..4r+3),
// high nibbles = the same for k = 8p+4..8p+7.
// scales, zs: (N/16, K/128, 16) float: s[row, g] and z[row, g] * s[row, g].
torch::Tensor gemv(torch::Tensor x, torch::Tensor packed, torch::Tensor scales, torch::Tensor zs, int64_t N) {
    const int64_t K = x.size(0), G = K / 128, R = N / 16;
    // quantize x per group of 128 to int8: xq, sx[g], sumq[g]
    auto xq = torch::empty({K}, torch::kInt8);
    std::vector<float> sx(G), sq(G);
    const float* xp = x.data_ptr<float>();
    int8_t* q = xq.data_ptr<int8_t>();
    for (int64_t g = 0; g < G; ++g) {
        float m = 0; for (int j = 0; j < 128; ++j) m = std::max(m, std::abs(xp[g*128+j]));
        float s = m / 127.f, inv = s > 0 ? 1.f / s : 0.f; int sum = 0;
        for (int j = 0; j < 128; ++j) { int v = (int)std::nearbyint(xp[g*128+j] * inv); q[g*128+j] = (int8_t)v; sum += v; }
        sx[g] = s; sq[g] = (float)sum;
    }
    auto y = torch::empty({N}, torch::kFloat32);
    float* yp = y.data_ptr<float>();
    const uint8_t* W = packed.data_ptr<uint8_t>();
    const float* S = scales.data_ptr<float>();
    const float* Z = zs.data_ptr<float>();
    const __m512i mask = _mm512_set1_epi8(0x0F);
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
        __m512 acc = _mm512_setzero_ps();
        const uint8_t* w = W + r * G * 1024;
        for (int64_t g = 0; g < G; ++g) {
            const int32_t* xg = reinterpret_cast<const int32_t*>(q + g * 128);
            __m512i ai = _mm512_setzero_si512();
            for (int p = 0; p < 16; ++p) {
                __m512i v = _mm512_loadu_si512(w + g * 1024 + p * 64);
                __m512i lo = _mm512_and_si512(v, mask);
                __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                ai = _mm512_dpbusd_epi32(ai, lo, _mm512_set1_epi32(xg[2*p]));
                ai = _mm512_dpbusd_epi32(ai, hi, _mm512_set1_epi32(xg[2*p+1]));
            }
            const float* s = S + (r * G + g) * 16; const float* z = Z + (r * G + g) * 16;
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), _mm512_mul_ps(_mm512_loadu_ps(s), _mm512_set1_ps(sx[g])), acc);
            acc = _mm512_fnmadd_ps(_mm512_loadu_ps(z), _mm512_set1_ps(sx[g] * sq[g]), acc);
        }
        _mm512_storeu_ps(yp + r * 16, acc);
    }
    return y;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("gemv", &gemv); }
