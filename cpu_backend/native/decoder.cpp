// The cpu target's native engine: the whole Llama-family decoder for per-group 4-bit-container weights
// (2/3/4-bit codes) and 8-bit weights, int8 activations per weight group (the int8 path MatMulNBits takes at accuracy_level 4 and
// llama.cpp takes with Q8_0), fp32 everything else. Built at first use by cpu_backend/native_build.py.
//
// Weight layout of one quantized Linear (N outputs, K inputs, group size g, R = ceil(N/16) blocks of 16 rows,
// G = K/g groups; cpu_backend/native_pack.py writes it):
//   lines uint8 (R, G, g/8, 64): for row block r, group j, step p: byte 4*i + b (i = row in block 0..15,
//       b = 0..3) holds code[16r + i, j*g + 8p + b] in its low nibble and code[16r + i, j*g + 8p + 4 + b] in its
//       high nibble. One 64-byte line = 16 rows x 8 codes.
//   8-bit codes: lines uint8 (R, G, g/4, 64): byte 4*i + b holds code[16r + i, j*g + 4p + b] (16 rows x 4 codes).
//   dense 2-bit codes (g a multiple of 16): lines uint8 (R, G, g/16, 64): bits 2c..2c+1 of byte 4*i + b hold
//       code[16r + i, j*g + 16p + 4c + b], c = 0..3 (16 rows x 16 codes).
//   dense 3-bit codes (g a multiple of 32): lines uint8 (R, G, g/32, 192), three 64-byte parts per step for codes
//       k = j*g + 32p + 4c + b (c = 0..7): part 0 their low two bits for c = 0..3 and part 1 for c = 4..7 (bits
//       2(c mod 4).. of byte 4*i + b), part 2 their third bit (bit c of byte 4*i + b). 16 rows x 32 codes.
//   Other 2- and 3-bit groups take the 4-bit nibble layout.
//   meta uint8 (R, G, 48): 16 fp16 scales (rows 16r..16r+15 of group j), then 16 uint8 zero points;
//   or, with group minimums (GGUF Q4_1 imports; zero points 0), (R, G, 64): 16 fp16 scales, then 16 fp16 minimums,
//   W[n, k] = code * scale + min, so y[n] = sum_j s_j * (scale[n,j] * sum_k code*q + min[n,j] * sum_k q).
// Rows past N (padding of the last block) have code 0, scale 0, zero 0.
// W[n, k] = (code - zero) * scale. Activations per token and group: s = max|x| / 127, q = round-half-even(x * (1/s))
// (0 when s == 0), so y[n] = sum_j scale[n,j] * s_j * (sum_k code*q - zero[n,j] * sum_k q), exact in int32.
// Per-tensor W8A8 checkpoints (SmoothQuant) give a projection a static s instead: q = clamp(round(x * (1/s)), +-127).
#include <torch/extension.h>
#include <immintrin.h>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define EDGEAWQ_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define EDGEAWQ_AVX512 0
#else
#error "edgeawq native kernels need AVX2 + FMA + F16C (or AVX-512 VNNI)"
#endif

namespace {

// ---- threads: PyTorch's own OpenMP team ------------------------------------------------------------------
// The parallel loops run on the OpenMP runtime PyTorch already loaded (libgomp: this module links the same
// soname, so the process has one runtime and one team). PyTorch's ops and these kernels then share the same
// `threads` threads: nothing spins against anything. (A pool of our own measured 10-15% slower decode here:
// libgomp's workers keep spinning for milliseconds after every parallel PyTorch op and took a core from it.)
class Pool {
  public:
    explicit Pool(int threads) : n_(std::max(1, threads)) {}
    // fn(begin, end) over [0, n) split into contiguous parts, one per thread; returns when all parts are done.
    // fn must not throw (it runs on worker threads).
    void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const {
        if (n_ == 1 || n <= 1) { fn(0, n); return; }
#pragma omp parallel num_threads(n_)
        {
            const int64_t i = omp_get_thread_num(), k = omp_get_num_threads();
            const int64_t b = n * i / k, e = n * (i + 1) / k;
            if (b < e) fn(b, e);
        }
    }
  private:
    int n_;
};

// ---- 8-wide helpers (AVX2 + FMA; both builds) -------------------------------------------------------------
// exp(x) for x in float32: 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), p a degree-6
// polynomial (relative error < 2e-7 on the clamped range [-87.3, 88.7]).
inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

inline int32_t hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

// ---- 16-float vectors (GCC vector extensions: one zmm with AVX-512, two ymm with AVX2) -----------------------
typedef float v16f __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));

inline v16f splat(float x) { return v16f{} + x; }
inline v16f load16(const float* p) { v16f v; __builtin_memcpy(&v, p, 64); return v; }
inline void store16(float* p, v16f v) { __builtin_memcpy(p, &v, 64); }

// ---- KV cache element types: 16 stored values -> 16 floats; one float -> its stored value -----------------
// kKvF32 float; kKvBF16 bf16 bits (round to nearest even); kKvF16 IEEE half (F16C); kKvI8 int8 codes, a float
// scale per (slot, KV head) and one per (KV head, dim) (docs/native_engine.md).
enum KvKind { kKvF32 = 0, kKvBF16 = 1, kKvF16 = 2, kKvI8 = 3 };
template <int KIND> struct KvElem;
template <> struct KvElem<kKvF32> { using type = float; };
template <> struct KvElem<kKvBF16> { using type = uint16_t; };
template <> struct KvElem<kKvF16> { using type = uint16_t; };
template <> struct KvElem<kKvI8> { using type = int8_t; };

template <int KIND>
inline v16f load_kv16(const typename KvElem<KIND>::type* p) {
    if constexpr (KIND == kKvF32) {
        return load16(p);
    } else if constexpr (KIND == kKvBF16) {                     // bf16 bits widened: the float's top half
        v16f v;
#if EDGEAWQ_AVX512
        const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
        __builtin_memcpy(&v, &w, 64);
#else
        const __m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
        const __m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p + 8))), 16);
        __builtin_memcpy(&v, &lo, 32);
        __builtin_memcpy((char*)&v + 32, &hi, 32);
#endif
        return v;
    } else if constexpr (KIND == kKvF16) {
        v16f v;
#if EDGEAWQ_AVX512
        const __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
        __builtin_memcpy(&v, &w, 64);
#else
        const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
        const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8)));
        __builtin_memcpy(&v, &lo, 32);
        __builtin_memcpy((char*)&v + 32, &hi, 32);
#endif
        return v;
    } else {                                                    // int8 codes, sign-extended and converted
        v16f v;
#if EDGEAWQ_AVX512
        const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
        __builtin_memcpy(&v, &w, 64);
#else
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8))));
        __builtin_memcpy(&v, &lo, 32);
        __builtin_memcpy((char*)&v + 32, &hi, 32);
#endif
        return v;
    }
}

inline uint16_t to_bf16(float x) {                  // round to nearest even (finite x)
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline uint16_t to_f16(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }

// exp as exp8 above, 16 lanes; round-to-nearest-even of n by the 1.5 * 2^23 trick (|x / ln 2| < 2^22).
inline v16f exp16(v16f x) {
    x = x < -87.3f ? splat(-87.3f) : x;
    x = x > 88.7f ? splat(88.7f) : x;
    const v16f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v16f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16f p = splat(1.0f / 720.0f);
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;
    return p * (v16f)e;
}

// ---- int8 activations ------------------------------------------------------------------------------------
struct QActs {
    std::vector<int8_t> q;      // (M, K)
    std::vector<float> scale;   // (M, G)
    std::vector<int32_t> sum;   // (M, G)
};

// fixed > 0: one static scale s = fixed for every row and group (per-tensor W8A8 checkpoints), codes clamped to
// [-127, 127]; else s = max|x| / 127 per row and group.
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t g, QActs& a, const Pool& pool, float fixed = 0.f) {
    const int64_t G = K / g;
    a.q.resize(M * K); a.scale.resize(M * G); a.sum.resize(M * G);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    pool.run(M * G, [&](int64_t b, int64_t e) {
        for (int64_t mg = b; mg < e; ++mg) {
            const float* xs = x + mg * g;                         // row m, group j: contiguous since K = G * g
            float s = fixed;
            if (fixed <= 0.f) {
                __m256 vmax = _mm256_setzero_ps();
                for (int64_t k = 0; k < g; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xs + k)));
                s = hmax8(vmax) / 127.f;
            }
            const float inv = s > 0.f ? 1.f / s : 0.f;
            const __m256 vinv = _mm256_set1_ps(inv);
            int8_t* q = a.q.data() + mg * g;
            __m256i vsum = _mm256_setzero_si256();
            for (int64_t k = 0; k < g; k += 8) {
                // cvtps rounds half to even (the default MXCSR mode), like nearbyint
                __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xs + k), vinv));
                if (fixed > 0.f) v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
                vsum = _mm256_add_epi32(vsum, v);
                const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(w, w));
            }
            a.scale[mg] = s; a.sum[mg] = hsum8i(vsum);
        }
    });
}

// ---- quantized matmul: y (M, N) = x (M, K) @ W^T (+ bias) -------------------------------------------------
struct QLinear {
    torch::Tensor lines, meta, bias;   // bias: float32 (N,) or undefined
    int64_t N = 0, K = 0, g = 0;
    bool mins = false;                 // meta holds fp16 minimums instead of uint8 zero points (64 bytes a group)
    int bits = 4;                      // the lines' layout: 4 (nibbles, also 2/3-bit codes), 8, dense 2 or dense 3
};

// Dense 2- and 3-bit codes: the codes of quad c (4 consecutive codes of each of the 16 rows) rebuilt as bytes from
// the step's parts: low bits = (part >> 2(c mod 4)) & 3, third bit = bit c of the third part moved to bit 2.
// Shifts are 16-bit: each byte's masked bits come from the same byte (shift counts <= 5 towards bit 2).
#if EDGEAWQ_AVX512
template <int BITS, int C>
inline __m512i dense_quad(__m512i v0, __m512i v1, __m512i hb) {
    const __m512i src = C < 4 ? v0 : v1;
    const __m512i low = _mm512_and_si512((C % 4) ? _mm512_srli_epi16(src, 2 * (C % 4)) : src, _mm512_set1_epi8(3));
    if (BITS == 2) return low;
    const __m512i h = C >= 2 ? _mm512_srli_epi16(hb, C - 2) : _mm512_slli_epi16(hb, 2 - C);
    return _mm512_ternarylogic_epi32(low, h, _mm512_set1_epi8(4), 0xF8);                  // low | (h & 4)
}

template <int T, int BITS, int C>
inline void dense_step(__m512i v0, __m512i v1, __m512i hb, const int32_t* const* xq, __m512i* ia) {
    if constexpr (C < (BITS == 2 ? 4 : 8)) {
        const __m512i code = dense_quad<BITS, C>(v0, v1, hb);
        for (int t = 0; t < T; ++t) ia[t] = _mm512_dpbusd_epi32(ia[t], code, _mm512_set1_epi32(xq[t][C]));
        dense_step<T, BITS, C + 1>(v0, v1, hb, xq, ia);
    }
}

#else
template <int BITS, int C>
inline __m256i dense_quad(__m256i v0, __m256i v1, __m256i hb) {
    const __m256i src = C < 4 ? v0 : v1;
    const __m256i low = _mm256_and_si256((C % 4) ? _mm256_srli_epi16(src, 2 * (C % 4)) : src, _mm256_set1_epi8(3));
    if (BITS == 2) return low;
    const __m256i h = C >= 2 ? _mm256_srli_epi16(hb, C - 2) : _mm256_slli_epi16(hb, 2 - C);
    return _mm256_or_si256(low, _mm256_and_si256(h, _mm256_set1_epi8(4)));
}

// sum16[t] += maddubs(code of quad C, x quad C): u8 codes <= 7 times s8 activations, pair sums <= 1778, at most 8
// quads added (14224) before they are widened: no int16 saturation.
template <int T, int BITS, int C>
inline void dense_step(__m256i v0, __m256i v1, __m256i hb, const int32_t* const* xq, __m256i* sum16) {
    if constexpr (C < (BITS == 2 ? 4 : 8)) {
        const __m256i code = dense_quad<BITS, C>(v0, v1, hb);
        for (int t = 0; t < T; ++t)
            sum16[t] = _mm256_add_epi16(sum16[t], _mm256_maddubs_epi16(code, _mm256_set1_epi32(xq[t][C])));
        dense_step<T, BITS, C + 1>(v0, v1, hb, xq, sum16);
    }
}
#endif

#if EDGEAWQ_AVX512
// acc[t] += scale * s_t * (dot[t] - zero * sum_t) for one group record mj (16 fp16 scales, 16 uint8 zero points).
template <int T>
inline void add_group_zero_points(const uint8_t* mj, const __m512i* dot, const QActs& a, int64_t m0, int64_t G,
                                  int64_t j, __m512* acc) {
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mj)));
    const __m512i z = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mj + 32)));
    for (int t = 0; t < T; ++t) {
        const int64_t mg = (m0 + t) * G + j;
        const __m512i d = _mm512_sub_epi32(dot[t], _mm512_mullo_epi32(z, _mm512_set1_epi32(a.sum[mg])));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_set1_ps(a.scale[mg])), acc[t]);
    }
}

// T tokens x one 16-row block over all groups; y rows strided by ldy.
template <int T, bool MINS>
inline void block_kernel(const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
    const int64_t G = w.K / w.g, steps = w.g / 8, MB = MINS ? 64 : 48;
    const uint8_t* lines = w.lines.data_ptr<uint8_t>() + r * G * steps * 64;
    const uint8_t* meta = w.meta.data_ptr<uint8_t>() + r * G * MB;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; ++j) {
        __m512i ia[T], ib[T];
        for (int t = 0; t < T; ++t) { ia[t] = _mm512_setzero_si512(); ib[t] = _mm512_setzero_si512(); }
        const uint8_t* L = lines + j * steps * 64;
        for (int64_t p = 0; p < steps; ++p) {
            if (T == 1) _mm_prefetch((const char*)(L + p * 64 + 2048), _MM_HINT_NTA);
            const __m512i v = _mm512_loadu_si512(L + p * 64);
            const __m512i lo = _mm512_and_si512(v, low);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            for (int t = 0; t < T; ++t) {
                const int32_t* xq = reinterpret_cast<const int32_t*>(a.q.data() + (m0 + t) * w.K + j * w.g + 8 * p);
                ia[t] = _mm512_dpbusd_epi32(ia[t], lo, _mm512_set1_epi32(xq[0]));
                ib[t] = _mm512_dpbusd_epi32(ib[t], hi, _mm512_set1_epi32(xq[1]));
            }
        }
        const uint8_t* mj = meta + j * MB;
        __m512i dot[T];
        for (int t = 0; t < T; ++t) dot[t] = _mm512_add_epi32(ia[t], ib[t]);
        if (MINS) {
            const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mj)));
            const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mj + 32)));
            for (int t = 0; t < T; ++t) {
                const int64_t mg = (m0 + t) * G + j;
                const __m512 as = _mm512_set1_ps(a.scale[mg]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_mul_ps(s, as), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_set1_ps((float)a.sum[mg]), _mm512_mul_ps(mn, as), acc[t]);
            }
            continue;
        }
        add_group_zero_points<T>(mj, dot, a, m0, G, j, acc);
    }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}
#else
// acc[t][h] += scale * s_t * (dot[t][h] - zero * sum_t), rows 8h..8h+7 of one group record mj.
template <int T>
inline void add_group_zero_points(const uint8_t* mj, __m256i (*dot)[2], const QActs& a, int64_t m0, int64_t G,
                                  int64_t j, int h, __m256 (*acc)[2]) {
    const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mj + 16 * h)));
    const __m256i z = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mj + 32 + 8 * h)));
    for (int t = 0; t < T; ++t) {
        const int64_t mg = (m0 + t) * G + j;
        const __m256i d = _mm256_sub_epi32(dot[t][h], _mm256_mullo_epi32(z, _mm256_set1_epi32(a.sum[mg])));
        acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, _mm256_set1_ps(a.scale[mg])), acc[t][h]);
    }
}

template <int T>
inline void store_rows(__m256 (*acc)[2], float* y, int64_t ldy) {
    for (int t = 0; t < T; ++t) {
        _mm256_storeu_ps(y + t * ldy, acc[t][0]);
        _mm256_storeu_ps(y + t * ldy + 8, acc[t][1]);
    }
}

// AVX2: the 64-byte line as two halves of 8 rows. 4-bit codes: u8 x s8 pairs with maddubs, then pairs of int16 with
// madd. 8-bit codes (MODE 2): 0..255 do not fit maddubs' int16 pair sums, so even and odd bytes go to int16 lanes
// and madd pairs them with the matching activations (c0 x0 + c2 x2, then c1 x1 + c3 x3) into one int32 per row.
template <int T, int MODE>
inline void block_kernel(const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
    constexpr int SPAN = MODE == 2 ? 4 : MODE == 3 ? 32 : MODE == 4 ? 16 : 8;   // codes per row and step
    constexpr int BYTES = MODE == 3 ? 192 : 64;                                   // bytes per step
    const int64_t G = w.K / w.g, steps = w.g / SPAN, MB = MODE == 1 ? 64 : 48;
    const uint8_t* lines = w.lines.data_ptr<uint8_t>() + r * G * steps * BYTES;
    const uint8_t* meta = w.meta.data_ptr<uint8_t>() + r * G * MB;
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), even = _mm256_set1_epi16(0x00FF);
    __m256 acc[T][2];
    for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t j = 0; j < G; ++j) {
        __m256i ia[T][2];
        for (int t = 0; t < T; ++t) ia[t][0] = ia[t][1] = _mm256_setzero_si256();
        const uint8_t* L = lines + j * steps * BYTES;
        if (MODE >= 3) {
            constexpr int DB = MODE == 3 ? 3 : 2;
            for (int64_t p = 0; p < steps; ++p) {
                const int32_t* xq[T];
                for (int t = 0; t < T; ++t)
                    xq[t] = reinterpret_cast<const int32_t*>(a.q.data() + (m0 + t) * w.K + j * w.g + SPAN * p);
                for (int h = 0; h < 2; ++h) {
                    const uint8_t* S = L + p * BYTES + 32 * h;
                    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(S));
                    const __m256i v1 = DB == 3 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(S + 64)) : v0;
                    const __m256i hb = DB == 3 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(S + 128)) : v0;
                    __m256i sum16[T];
                    for (int t = 0; t < T; ++t) sum16[t] = _mm256_setzero_si256();
                    dense_step<T, DB, 0>(v0, v1, hb, xq, sum16);
                    for (int t = 0; t < T; ++t) ia[t][h] = _mm256_add_epi32(ia[t][h], _mm256_madd_epi16(sum16[t], ones));
                }
            }
        } else if (MODE == 2) {
            for (int64_t p = 0; p < steps; ++p) {
                __m256i xe[T], xo[T];
                for (int t = 0; t < T; ++t) {
                    const int8_t* xq = a.q.data() + (m0 + t) * w.K + j * w.g + 4 * p;
                    xe[t] = _mm256_set1_epi32((int32_t)(((uint32_t)(uint16_t)(int16_t)xq[2] << 16) | (uint16_t)(int16_t)xq[0]));
                    xo[t] = _mm256_set1_epi32((int32_t)(((uint32_t)(uint16_t)(int16_t)xq[3] << 16) | (uint16_t)(int16_t)xq[1]));
                }
                for (int h = 0; h < 2; ++h) {
                    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(L + p * 64 + 32 * h));
                    const __m256i lo = _mm256_and_si256(v, even), hi = _mm256_srli_epi16(v, 8);
                    for (int t = 0; t < T; ++t)
                        ia[t][h] = _mm256_add_epi32(ia[t][h], _mm256_add_epi32(_mm256_madd_epi16(lo, xe[t]),
                                                                               _mm256_madd_epi16(hi, xo[t])));
                }
            }
        } else {
            for (int64_t p = 0; p < steps; ++p) {
                for (int h = 0; h < 2; ++h) {
                    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(L + p * 64 + 32 * h));
                    const __m256i lo = _mm256_and_si256(v, low);
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    for (int t = 0; t < T; ++t) {
                        const int32_t* xq = reinterpret_cast<const int32_t*>(a.q.data() + (m0 + t) * w.K + j * w.g + 8 * p);
                        const __m256i pl = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xq[0]));
                        const __m256i ph = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xq[1]));
                        ia[t][h] = _mm256_add_epi32(ia[t][h], _mm256_madd_epi16(_mm256_add_epi16(pl, ph), ones));
                    }
                }
            }
        }
        const uint8_t* mj = meta + j * MB;
        for (int h = 0; h < 2; ++h) {
            if (MODE == 1) {
                const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mj + 16 * h)));
                const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mj + 32 + 16 * h)));
                for (int t = 0; t < T; ++t) {
                    const int64_t mg = (m0 + t) * G + j;
                    const __m256 as = _mm256_set1_ps(a.scale[mg]);
                    acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[t][h]), _mm256_mul_ps(s, as), acc[t][h]);
                    acc[t][h] = _mm256_fmadd_ps(_mm256_set1_ps((float)a.sum[mg]), _mm256_mul_ps(mn, as), acc[t][h]);
                }
                continue;
            }
            add_group_zero_points<T>(mj, ia, a, m0, G, j, h, acc);
        }
    }
    store_rows<T>(acc, y, ldy);
}
#endif

#if EDGEAWQ_AVX512
// AVX-512, dense 3-bit codes, one token (decode): no shifts. Each quad's low bits are masked in place (value
// 4^q * low, q = c mod 4) and its third bit too (value 2^c * bit, worth 4 * bit), and each vpdpbusd goes to the
// accumulator of its factor 2^-e (e = 2q for low bits, c - 2 for third bits, -2..6); a group's dot is then
// sum_e acc_e * 2^-e, exact (every product in acc_e is a multiple of 2^e).
template <int E>
inline __m512i scaled(__m512i v) {
    if constexpr (E < 0) return _mm512_slli_epi32(v, -E);
    else if constexpr (E == 0) return v;
    else return _mm512_srai_epi32(v, E);
}

inline void block_kernel_dense3_one(const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y) {
    const int64_t G = w.K / w.g, steps = w.g / 32;
    const uint8_t* lines = w.lines.data_ptr<uint8_t>() + r * G * steps * 192;
    const uint8_t* meta = w.meta.data_ptr<uint8_t>() + r * G * 48;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; ++j) {
        __m512i A[9];                                              // A[e + 2]: factor 2^-e
        for (auto& v : A) v = _mm512_setzero_si512();
        const uint8_t* L = lines + j * steps * 192;
        for (int64_t p = 0; p < steps; ++p) {
            const uint8_t* S = L + p * 192;
            _mm_prefetch((const char*)(S + 2048), _MM_HINT_NTA);
            _mm_prefetch((const char*)(S + 2048 + 64), _MM_HINT_NTA);
            _mm_prefetch((const char*)(S + 2048 + 128), _MM_HINT_NTA);
            const __m512i part[2] = {_mm512_loadu_si512(S), _mm512_loadu_si512(S + 64)};
            const __m512i hb = _mm512_loadu_si512(S + 128);
            const int32_t* xq = reinterpret_cast<const int32_t*>(a.q.data() + m0 * w.K + j * w.g + 32 * p);
#pragma GCC unroll 8
            for (int c = 0; c < 8; ++c) {
                const int q = c % 4;
                const __m512i x = _mm512_set1_epi32(xq[c]);
                const __m512i low = _mm512_and_si512(part[c / 4], _mm512_set1_epi8((char)(3 << (2 * q))));
                A[2 * q + 2] = _mm512_dpbusd_epi32(A[2 * q + 2], low, x);
                const __m512i bit = _mm512_and_si512(hb, _mm512_set1_epi8((char)(1 << c)));
                A[c] = _mm512_dpbusd_epi32(A[c], bit, x);
            }
        }
        __m512i dot = _mm512_add_epi32(scaled<-2>(A[0]), scaled<-1>(A[1]));
        dot = _mm512_add_epi32(dot, _mm512_add_epi32(A[2], scaled<1>(A[3])));
        dot = _mm512_add_epi32(dot, _mm512_add_epi32(scaled<2>(A[4]), scaled<3>(A[5])));
        dot = _mm512_add_epi32(dot, _mm512_add_epi32(scaled<4>(A[6]), scaled<5>(A[7])));
        dot = _mm512_add_epi32(dot, scaled<6>(A[8]));
        add_group_zero_points<1>(meta + j * 48, &dot, a, m0, G, j, &acc);
    }
    _mm512_storeu_ps(y, acc);
}

// AVX-512, dense codes: per step 64 (2-bit) or 192 (3-bit) bytes, one vpdpbusd per quad of codes; zero points.
template <int T, int BITS>
inline void block_kernel_dense(const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
    if constexpr (T == 1 && BITS == 3) {
        block_kernel_dense3_one(w, a, m0, r, y);
        return;
    }
    constexpr int SPAN = BITS == 2 ? 16 : 32, BYTES = BITS == 2 ? 64 : 192;      // codes per row, bytes per step
    const int64_t G = w.K / w.g, steps = w.g / SPAN;
    const uint8_t* lines = w.lines.data_ptr<uint8_t>() + r * G * steps * BYTES;
    const uint8_t* meta = w.meta.data_ptr<uint8_t>() + r * G * 48;
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; ++j) {
        __m512i ia[T];
        for (int t = 0; t < T; ++t) ia[t] = _mm512_setzero_si512();
        const uint8_t* L = lines + j * steps * BYTES;
        for (int64_t p = 0; p < steps; ++p) {
            const uint8_t* S = L + p * BYTES;
            if (T == 1) {
                _mm_prefetch((const char*)(S + 2048), _MM_HINT_NTA);
                if (BITS == 3) {
                    _mm_prefetch((const char*)(S + 2048 + 64), _MM_HINT_NTA);
                    _mm_prefetch((const char*)(S + 2048 + 128), _MM_HINT_NTA);
                }
            }
            const __m512i v0 = _mm512_loadu_si512(S);
            const __m512i v1 = BITS == 3 ? _mm512_loadu_si512(S + 64) : v0;
            const __m512i hb = BITS == 3 ? _mm512_loadu_si512(S + 128) : v0;
            const int32_t* xq[T];
            for (int t = 0; t < T; ++t)
                xq[t] = reinterpret_cast<const int32_t*>(a.q.data() + (m0 + t) * w.K + j * w.g + SPAN * p);
            dense_step<T, BITS, 0>(v0, v1, hb, xq, ia);
        }
        add_group_zero_points<T>(meta + j * 48, ia, a, m0, G, j, acc);
    }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}
#endif

// AVX-512, 8-bit codes: one 64-byte line = 16 rows x 4 consecutive codes, one vpdpbusd per line; zero points.
#if EDGEAWQ_AVX512
template <int T>
inline void block_kernel8(const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
    const int64_t G = w.K / w.g, steps = w.g / 4;
    const uint8_t* lines = w.lines.data_ptr<uint8_t>() + r * G * steps * 64;
    const uint8_t* meta = w.meta.data_ptr<uint8_t>() + r * G * 48;
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < G; ++j) {
        __m512i ia[T];
        for (int t = 0; t < T; ++t) ia[t] = _mm512_setzero_si512();
        const uint8_t* L = lines + j * steps * 64;
        for (int64_t p = 0; p < steps; ++p) {
            if (T == 1) _mm_prefetch((const char*)(L + p * 64 + 2048), _MM_HINT_NTA);
            const __m512i v = _mm512_loadu_si512(L + p * 64);
            for (int t = 0; t < T; ++t) {
                const int32_t* xq = reinterpret_cast<const int32_t*>(a.q.data() + (m0 + t) * w.K + j * w.g + 4 * p);
                ia[t] = _mm512_dpbusd_epi32(ia[t], v, _mm512_set1_epi32(xq[0]));
            }
        }
        add_group_zero_points<T>(meta + j * 48, ia, a, m0, G, j, acc);
    }
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, acc[t]);
}
#endif

#if EDGEAWQ_AVX512
constexpr int TILE = 8;
#else
constexpr int TILE = 4;
#endif

// MODE 0: 4-bit codes with zero points, 1: 4-bit codes with group minimums, 2: 8-bit codes with zero points,
// 3: dense 3-bit codes, 4: dense 2-bit codes (zero points).
template <int T, int MODE>
inline void run_block(const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
#if EDGEAWQ_AVX512
    if (MODE == 2) block_kernel8<T>(w, a, m0, r, y, ldy);
    else if (MODE == 3) block_kernel_dense<T, 3>(w, a, m0, r, y, ldy);
    else if (MODE == 4) block_kernel_dense<T, 2>(w, a, m0, r, y, ldy);
    else block_kernel<T, MODE == 1>(w, a, m0, r, y, ldy);
#else
    block_kernel<T, MODE>(w, a, m0, r, y, ldy);
#endif
}

template <int MODE>
void tile_kernel_of(int rows, const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
    switch (rows) {
        case 1: run_block<1, MODE>(w, a, m0, r, y, ldy); break;
        case 2: run_block<2, MODE>(w, a, m0, r, y, ldy); break;
        case 3: run_block<3, MODE>(w, a, m0, r, y, ldy); break;
        case 4: run_block<4, MODE>(w, a, m0, r, y, ldy); break;
#if EDGEAWQ_AVX512
        case 5: run_block<5, MODE>(w, a, m0, r, y, ldy); break;
        case 6: run_block<6, MODE>(w, a, m0, r, y, ldy); break;
        case 7: run_block<7, MODE>(w, a, m0, r, y, ldy); break;
        case 8: run_block<8, MODE>(w, a, m0, r, y, ldy); break;
#endif
        default: TORCH_CHECK(false, "tile of ", rows, " rows");
    }
}

void tile_kernel(int rows, const QLinear& w, const QActs& a, int64_t m0, int64_t r, float* y, int64_t ldy) {
    if (w.bits == 8) tile_kernel_of<2>(rows, w, a, m0, r, y, ldy);
    else if (w.bits == 3) tile_kernel_of<3>(rows, w, a, m0, r, y, ldy);
    else if (w.bits == 2) tile_kernel_of<4>(rows, w, a, m0, r, y, ldy);
    else if (w.mins) tile_kernel_of<1>(rows, w, a, m0, r, y, ldy);
    else tile_kernel_of<0>(rows, w, a, m0, r, y, ldy);
}

// y (M, ldy >= 16 R) gets x @ W^T in its first N columns (+ bias); x already quantized in `a`.
void qmatmul(const QLinear& w, const QActs& a, int64_t M, float* y, int64_t ldy, const Pool& pool) {
    const int64_t R = (w.N + 15) / 16;
    const int64_t chunk = 128;                         // tokens per pass over the weights (activations stay in L2)
    for (int64_t c0 = 0; c0 < M; c0 += chunk) {
        const int64_t c1 = std::min(M, c0 + chunk);
        pool.run(R, [&](int64_t rb, int64_t re) {
            float tmp[TILE * 16];
            for (int64_t r = rb; r < re; ++r) {
                const bool full = 16 * r + 16 <= w.N;
                for (int64_t m = c0; m < c1; m += TILE) {
                    const int rows = (int)std::min<int64_t>(TILE, c1 - m);
                    if (full) {
                        tile_kernel(rows, w, a, m, r, y + m * ldy + 16 * r, ldy);
                    } else {
                        tile_kernel(rows, w, a, m, r, tmp, 16);
                        for (int t = 0; t < rows; ++t)
                            for (int64_t i = 0; i < w.N - 16 * r; ++i) y[(m + t) * ldy + 16 * r + i] = tmp[t * 16 + i];
                    }
                }
            }
        });
    }
    if (w.bias.defined()) {
        const float* b = w.bias.data_ptr<float>();
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < w.N; ++n) y[m * ldy + n] += b[n];
    }
}

QLinear make_linear(torch::Tensor lines, torch::Tensor meta, c10::optional<torch::Tensor> bias, int64_t N, int64_t K,
                    int64_t g) {
    TORCH_CHECK(lines.dtype() == torch::kUInt8 && lines.is_contiguous(), "lines: contiguous uint8");
    TORCH_CHECK(meta.dtype() == torch::kUInt8 && meta.is_contiguous(), "meta: contiguous uint8");
    TORCH_CHECK(g % 8 == 0 && K % g == 0, "group size must divide K and be a multiple of 8");
    const int64_t R = (N + 15) / 16, G = K / g;
    // bytes per (row block, group): dense 2-bit 4g, dense 3-bit 6g, nibbles 8g, 8-bit 16g: the size names the layout
    const int64_t four = R * G * (g / 8) * 64, eight = R * G * (g / 4) * 64;
    const int64_t two = g % 16 == 0 ? R * G * (g / 16) * 64 : -1, three = g % 32 == 0 ? R * G * (g / 32) * 192 : -1;
    const int64_t n = lines.numel();
    TORCH_CHECK(n == four || n == eight || n == two || n == three, "lines has ", n, " bytes, expected ", four,
                " (4-bit codes), ", eight, " (8-bit codes)", two > 0 ? ", " + std::to_string(two) + " (dense 2-bit)" : "",
                three > 0 ? " or " + std::to_string(three) + " (dense 3-bit)" : "");
    TORCH_CHECK(meta.numel() == R * G * 48 || meta.numel() == R * G * 64, "meta has ", meta.numel(),
                " bytes, expected ", R * G * 48, " (zero points) or ", R * G * 64, " (group minimums)");
    QLinear w;
    w.lines = lines; w.meta = meta; w.N = N; w.K = K; w.g = g;
    w.mins = meta.numel() == R * G * 64;
    w.bits = n == eight ? 8 : n == two ? 2 : n == three ? 3 : 4;
    TORCH_CHECK(!(w.mins && w.bits != 4), "group minimums come with 4-bit codes only");
    if (bias && bias->defined()) {
        TORCH_CHECK(bias->dtype() == torch::kFloat32 && bias->numel() == N, "bias: float32 (N,)");
        w.bias = bias->contiguous();
    }
    return w;
}

// ---- attention micro-kernels (a tile of queries against 16 keys / a run of value rows) ---------------------
// Register blocking: QB query vectors share every key load (KB x 16 keys per step); QV queries x CB 16-dim chunks share every value load.
#if EDGEAWQ_AVX512
// Fewer than 4 queries (a decode step of a model without grouped KV heads): kScoreKB1 x 16 keys per call and
// kValueCB1 chunks per value load, enough independent accumulators to cover the FMA latency.
constexpr int kScoreQB = 8, kScoreKB = 2, kValueQV = 4, kValueCB = 4, kScoreKB1 = 4, kValueCB1 = 8;
#else
constexpr int kScoreQB = 4, kScoreKB = 1, kValueQV = 2, kValueCB = 2, kScoreKB1 = 2, kValueCB1 = 2;
#endif
constexpr int kScoreKBMost = kScoreKB1 > kScoreKB ? kScoreKB1 : kScoreKB;

// dst[q * ldd + 16 b + 0:16] = (sum_i Q[q * hd + i] * key_i[b][0:16]) * mult[b][0:16] for q < QB, b < KB; kt[b]: 16
// keys transposed (hd rows of 16 stored values: see Decoder::set_cache).
// pf[0:npf]: tiles of hd x 16 stored values (key or value tiles) to prefetch while this runs, row i's line of
// each at step i: a tile is 4 KB for fp16 (one page), and the hardware prefetchers stop at page boundaries, so
// without it every tile of a deep cache starts with misses that one thread's few keys in flight cannot hide.
template <int KIND, int QB, int KB>
inline void score_keys(const float* Q, int64_t hd, const typename KvElem<KIND>::type* const* kt, const v16f* mult,
                       float* dst, int64_t ldd, const void* const* pf = nullptr, int npf = 0) {
    using T = typename KvElem<KIND>::type;
    constexpr int64_t kRowBytes = 16 * sizeof(T), kRowsPerLine = kRowBytes >= 64 ? 1 : 64 / kRowBytes;
    v16f a[QB][KB];
    for (int q = 0; q < QB; ++q)
        for (int k = 0; k < KB; ++k) a[q][k] = splat(0.f);
    for (int64_t i = 0; i < hd; ++i) {
        if (i % kRowsPerLine == 0)
            for (int p = 0; p < npf; ++p) _mm_prefetch((const char*)pf[p] + i * kRowBytes, _MM_HINT_T0);
        v16f key[KB];
        for (int k = 0; k < KB; ++k) key[k] = load_kv16<KIND>(kt[k] + 16 * i);
        for (int q = 0; q < QB; ++q) {
            const float x = Q[q * hd + i];
            for (int k = 0; k < KB; ++k) a[q][k] += key[k] * x;
        }
    }
    for (int q = 0; q < QB; ++q)
        for (int k = 0; k < KB; ++k) store16(dst + q * ldd + 16 * k, a[q][k] * mult[k]);
}

// acc[q * lda + 16 c0 ...] (CB chunks of 16 dims) += sum_{j < n} P[q * ldp + j] * value_j[16 c0 ...] for q < QV;
// value row j at rows16[j / 16] + (j % 16) * hd (rows of hd stored values, 16 consecutive rows per pointer).
template <int KIND, int QV, int CB>
inline void add_values(const float* P, int64_t ldp, const typename KvElem<KIND>::type* const* rows16, int64_t n,
                       int64_t hd, int64_t c0, float* acc, int64_t lda) {
    v16f a[QV][CB];
    for (int q = 0; q < QV; ++q)
        for (int c = 0; c < CB; ++c) a[q][c] = load16(acc + q * lda + 16 * (c0 + c));
    for (int64_t j = 0; j < n; ++j) {
        const auto* v = rows16[j / 16] + (j % 16) * hd + 16 * c0;
        v16f x[CB];
        for (int c = 0; c < CB; ++c) x[c] = load_kv16<KIND>(v + 16 * c);
        for (int q = 0; q < QV; ++q) {
            const float p = P[q * ldp + j];
            for (int c = 0; c < CB; ++c) a[q][c] += x[c] * p;
        }
    }
    for (int q = 0; q < QV; ++q)
        for (int c = 0; c < CB; ++c) store16(acc + q * lda + 16 * (c0 + c), a[q][c]);
}

// max(p[0:n]) (n >= 1), 16 lanes at a time.
inline float max_of(const float* p, int64_t n) {
    float mx = -INFINITY;
    int64_t j = 0;
    if (n >= 16) {
        v16f m = load16(p);
        for (j = 16; j + 16 <= n; j += 16) {
            const v16f x = load16(p + j);
            m = x > m ? x : m;
        }
        for (int t = 0; t < 16; ++t) mx = std::max(mx, m[t]);
    }
    for (; j < n; ++j) mx = std::max(mx, p[j]);
    return mx;
}

// Per-thread scratch of the tiled attention.
struct TileScratch {
    std::vector<float> q, p, acc, mx, sum, vscale;
    std::vector<const void*> rows16;
};

// Steps of one decoder layer as --profile reports them (each projection includes quantizing its input; the
// residual adds are in o_proj and down_proj).
constexpr int kPhases = 9;
const char* const kPhaseNames[kPhases] = {"input_norm", "qkv_proj", "rope_kv_store", "attention", "o_proj",
                                          "post_norm", "gate_up_proj", "silu_mul", "down_proj"};

double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- the decoder -----------------------------------------------------------------------------------------
struct Layer {
    torch::Tensor input_norm, post_norm;    // float32 (D,)
    QLinear qkv, o, gate_up, down;
    int64_t window = 0;                     // 0 = full attention, else sliding window length
    torch::Tensor k_channel, v_channel;     // int8 KV cache: static per-channel scales (undefined: dynamic)
    float act_qkv = 0, act_o = 0, act_gu = 0, act_down = 0;   // static int8 input scales (0 = dynamic)
};

class Decoder {
  public:
    Decoder(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t ffn, double eps,
            torch::Tensor cos, torch::Tensor sin, int64_t threads)
        : D_(hidden), nh_(heads), kvh_(kv_heads), hd_(head_dim), F_(ffn), eps_((float)eps),
          cos_(cos.contiguous()), sin_(sin.contiguous()), pool_((int)threads) {
        TORCH_CHECK(cos_.dtype() == torch::kFloat32 && cos_.dim() == 2 && cos_.size(1) == head_dim / 2,
                    "cos: float32 (positions, head_dim / 2)");
        TORCH_CHECK(heads % kv_heads == 0 && head_dim % 16 == 0, "heads: a multiple of kv_heads; head_dim: of 16");
        TORCH_CHECK(hidden % 8 == 0 && ffn % 8 == 0, "hidden and ffn sizes must be multiples of 8");
    }

    void add_layer(torch::Tensor input_norm, torch::Tensor post_norm, std::vector<torch::Tensor> qkv,
                   c10::optional<torch::Tensor> qkv_bias, std::vector<torch::Tensor> o,
                   std::vector<torch::Tensor> gate_up, std::vector<torch::Tensor> down, int64_t g_qkv, int64_t g_o,
                   int64_t g_gu, int64_t g_down, int64_t window) {
        const int64_t qkv_n = (nh_ + 2 * kvh_) * hd_;
        Layer L;
        L.input_norm = input_norm.to(torch::kFloat32).contiguous();
        L.post_norm = post_norm.to(torch::kFloat32).contiguous();
        L.qkv = make_linear(qkv.at(0), qkv.at(1), qkv_bias, qkv_n, D_, g_qkv);
        L.o = make_linear(o.at(0), o.at(1), c10::nullopt, D_, nh_ * hd_, g_o);
        L.gate_up = make_linear(gate_up.at(0), gate_up.at(1), c10::nullopt, 2 * F_, D_, g_gu);
        L.down = make_linear(down.at(0), down.at(1), c10::nullopt, D_, F_, g_down);
        L.window = window;
        layers_.push_back(std::move(L));
    }

    // Static int8 input scales of layer i's four projections (per-tensor W8A8; 0 = dynamic, the default).
    void set_act_scales(int64_t i, double qkv, double o, double gate_up, double down) {
        TORCH_CHECK(i >= 0 && i < (int64_t)layers_.size(), "layer index out of range");
        TORCH_CHECK(qkv >= 0 && o >= 0 && gate_up >= 0 && down >= 0, "act scales must be >= 0");
        Layer& L = layers_[i];
        L.act_qkv = (float)qkv; L.act_o = (float)o; L.act_gu = (float)gate_up; L.act_down = (float)down;
    }

    // The KV cache, in blocks of `bs` slots (bs a multiple of 16). Per layer, updated in place: values float32
    // (P, kv_heads, bs, head_dim); keys float32 (P, kv_heads, bs / 16, head_dim, 16), i.e. slot o of block p, dim i
    // at [p, kv, o / 16, i, o % 16]. table: int32 (B, nb), row b's slot s lives in block table[b, s / bs] at offset
    // s % bs (-1: no block). A contiguous cache is one block of all the slots per row: P = B, table[b] = {b}.
    // The table is read at every forward: the caller may change its entries in place between calls.
    // Element types: float32, bfloat16, float16 or int8 (the same for keys and values in every layer). int8 adds
    // per layer key_scales / value_scales float32 (P, kv_heads, bs): a stored code q of slot o, dim i stands for
    // q * scale[p, kv, o] * channel[kv * head_dim + i] (channel scales: set_kv_channel_scales, default 1).
    void set_cache(std::vector<torch::Tensor> keys, std::vector<torch::Tensor> values, torch::Tensor table,
                   std::vector<torch::Tensor> key_scales, std::vector<torch::Tensor> value_scales) {
        TORCH_CHECK(keys.size() == layers_.size() && values.size() == layers_.size(), "one cache per layer");
        const auto dt = values.at(0).scalar_type();
        TORCH_CHECK(dt == torch::kFloat32 || dt == torch::kBFloat16 || dt == torch::kFloat16 || dt == torch::kInt8,
                    "KV cache dtype: float32, bfloat16, float16 or int8");
        const int kind = dt == torch::kFloat32 ? kKvF32 : dt == torch::kBFloat16 ? kKvBF16
                         : dt == torch::kFloat16 ? kKvF16 : kKvI8;
        for (size_t i = 0; i < keys.size(); ++i) {
            const auto& k = keys[i];
            const auto& v = values[i];
            TORCH_CHECK(v.scalar_type() == dt && v.is_contiguous() && v.dim() == 4 && v.size(1) == kvh_ &&
                        v.size(3) == hd_ && v.size(2) % 16 == 0 && v.sizes() == values[0].sizes(),
                        "values: (blocks, kv_heads, 16n, head_dim), the same in every layer");
            TORCH_CHECK(k.scalar_type() == dt && k.is_contiguous() && k.dim() == 5 && k.size(0) == v.size(0) &&
                        k.size(1) == kvh_ && k.size(2) * 16 == v.size(2) && k.size(3) == hd_ && k.size(4) == 16,
                        "keys: (blocks, kv_heads, block / 16, head_dim, 16), the values' dtype");
        }
        if (kind == kKvI8) {
            TORCH_CHECK(key_scales.size() == layers_.size() && value_scales.size() == layers_.size(),
                        "an int8 cache needs key and value scales per layer");
            for (size_t i = 0; i < keys.size(); ++i)
                for (const auto* s : {&key_scales[i], &value_scales[i]})
                    TORCH_CHECK(s->dtype() == torch::kFloat32 && s->is_contiguous() && s->dim() == 3 &&
                                s->size(0) == values[i].size(0) && s->size(1) == kvh_ && s->size(2) == values[i].size(2),
                                "KV scales: float32 (blocks, kv_heads, block)");
        }
        TORCH_CHECK(table.dtype() == torch::kInt32 && table.is_contiguous() && table.dim() == 2,
                    "table: contiguous int32 (batch, blocks per row)");
        keys_ = std::move(keys); values_ = std::move(values); table_ = std::move(table);
        key_scales_ = std::move(key_scales); value_scales_ = std::move(value_scales);
        kv_kind_ = kind;
    }

    // Static per-channel scales of an int8 cache (calibrated; checkpoint tensors): layer i's keys and values,
    // float32 (kv_heads * head_dim,) each. A layer with them divides each key / value by them channel-wise before its
    // scale per (slot, KV head) is taken (y = x / channel, s = max|y| / 127, q = round(y / s)): channels of outlier
    // range no longer set the step of the others.
    void set_kv_channel_scales(int64_t i, torch::Tensor keys, torch::Tensor values) {
        TORCH_CHECK(i >= 0 && i < (int64_t)layers_.size(), "layer index out of range");
        for (const auto* s : {&keys, &values})
            TORCH_CHECK(s->dtype() == torch::kFloat32 && s->numel() == kvh_ * hd_ && (*s > 0).all().item<bool>(),
                        "channel scales: positive float32 (kv_heads * head_dim,)");
        layers_[i].k_channel = keys.contiguous();
        layers_[i].v_channel = values.contiguous();
    }

    // h: float32 (M, D) embedded tokens, updated in place through every layer (not the final norm).
    // rows, slots: int64 (M,): each token's batch row and its cache slot (= its RoPE position); a token sees
    // the slots of its row up to its own (and within the layer's window).
    void forward(torch::Tensor h, torch::Tensor rows, torch::Tensor slots) {
        TORCH_CHECK(h.dtype() == torch::kFloat32 && h.is_contiguous() && h.dim() == 2 && h.size(1) == D_, "h");
        const int64_t M = h.size(0);
        TORCH_CHECK(rows.numel() == M && slots.numel() == M, "rows/slots");
        auto rows_c = rows.to(torch::kInt64).contiguous(), slots_c = slots.to(torch::kInt64).contiguous();
        const int64_t* row = rows_c.data_ptr<int64_t>();
        const int64_t* slot = slots_c.data_ptr<int64_t>();
        TORCH_CHECK(!keys_.empty(), "set_cache first");
        const int64_t B = table_.size(0), nb = table_.size(1), bs = values_[0].size(2), P = values_[0].size(0);
        const int32_t* tab = table_.data_ptr<int32_t>();
        for (int64_t m = 0; m < M; ++m) {
            TORCH_CHECK(row[m] >= 0 && row[m] < B, "row out of range");
            TORCH_CHECK(slot[m] >= 0 && slot[m] < nb * bs && slot[m] < cos_.size(0), "slot ", slot[m], " out of range");
            for (int64_t j = 0; j <= slot[m] / bs; ++j)      // every block the token's attention reads
                TORCH_CHECK(tab[row[m] * nb + j] >= 0 && tab[row[m] * nb + j] < P, "row ", row[m], ": block ", j,
                            " of slot ", slot[m], " is not allocated");
        }
        const int64_t qkv_n = (nh_ + 2 * kvh_) * hd_;
        std::vector<float> x(M * D_), qkv(M * (16 * ((qkv_n + 15) / 16))), att(M * nh_ * hd_),
            gu(M * 2 * F_ + 16), act(M * F_), out(M * D_);
        const int64_t ld_qkv = 16 * ((qkv_n + 15) / 16);
        float* hp = h.data_ptr<float>();
        if (profiling_ && profile_.size() != layers_.size() * kPhases) profile_.assign(layers_.size() * kPhases, 0.0);
        double t = profiling_ ? seconds_now() : 0.0;
        auto mark = [&](size_t li, int phase) {              // time since the previous mark -> (layer, phase)
            if (!profiling_) return;
            const double now = seconds_now();
            profile_[li * kPhases + phase] += now - t;
            t = now;
        };
        for (size_t li = 0; li < layers_.size(); ++li) {
            const Layer& L = layers_[li];
            rms_norm(hp, L.input_norm, M, x.data());
            mark(li, 0);
            quantize_rows(x.data(), M, D_, L.qkv.g, acts_, pool_, L.act_qkv);
            qmatmul(L.qkv, acts_, M, qkv.data(), ld_qkv, pool_);
            mark(li, 1);
            switch (kv_kind_) {
                case kKvBF16: rope_and_store<kKvBF16>(qkv.data(), ld_qkv, M, row, slot, li); break;
                case kKvF16: rope_and_store<kKvF16>(qkv.data(), ld_qkv, M, row, slot, li); break;
                case kKvI8: rope_and_store<kKvI8>(qkv.data(), ld_qkv, M, row, slot, li); break;
                default: rope_and_store<kKvF32>(qkv.data(), ld_qkv, M, row, slot, li);
            }
            mark(li, 2);
            switch (kv_kind_) {
                case kKvBF16: attention<kKvBF16>(qkv.data(), ld_qkv, M, row, slot, li, att.data()); break;
                case kKvF16: attention<kKvF16>(qkv.data(), ld_qkv, M, row, slot, li, att.data()); break;
                case kKvI8: attention<kKvI8>(qkv.data(), ld_qkv, M, row, slot, li, att.data()); break;
                default: attention<kKvF32>(qkv.data(), ld_qkv, M, row, slot, li, att.data());
            }
            mark(li, 3);
            quantize_rows(att.data(), M, nh_ * hd_, L.o.g, acts_, pool_, L.act_o);
            qmatmul(L.o, acts_, M, out.data(), D_, pool_);
            reduce(out.data(), M * D_);
            for (int64_t i = 0; i < M * D_; ++i) hp[i] += out[i];
            mark(li, 4);
            rms_norm(hp, L.post_norm, M, x.data());
            mark(li, 5);
            quantize_rows(x.data(), M, D_, L.gate_up.g, acts_, pool_, L.act_gu);
            qmatmul(L.gate_up, acts_, M, gu.data(), 2 * F_, pool_);
            mark(li, 6);
            silu_mul(gu.data(), M, act.data());
            mark(li, 7);
            quantize_rows(act.data(), M, F_, L.down.g, acts_, pool_, L.act_down);
            qmatmul(L.down, acts_, M, out.data(), D_, pool_);
            reduce(out.data(), M * D_);
            for (int64_t i = 0; i < M * D_; ++i) hp[i] += out[i];
            mark(li, 8);
        }
    }

    // Tensor parallel: `fn(t)` sums t (float32 (M * hidden,), a view of the partial o_proj / down_proj output)
    // in place over the ranks; called with the GIL held, after each of the two projections of every layer.
    void set_reducer(py::object fn) { reducer_ = std::move(fn); }

    // Per-phase wall time (--profile): while on, forward adds each layer's step times to a (layers, kPhases)
    // table of seconds (phase names: profile_phases()); take_profile() returns it flattened and zeroes it.
    void set_profiling(bool on) {
        profiling_ = on;
        profile_.assign(layers_.size() * kPhases, 0.0);
    }
    std::vector<double> take_profile() {
        std::vector<double> out(profile_);
        std::fill(profile_.begin(), profile_.end(), 0.0);
        return out;
    }

  private:
    void reduce(float* p, int64_t n) {
        if (!reducer_) return;
        py::gil_scoped_acquire gil;
        reducer_(torch::from_blob(p, {n}, torch::kFloat32));
    }

    void rms_norm(const float* h, const torch::Tensor& w, int64_t M, float* y) {
        const float* wp = w.data_ptr<float>();
        pool_.run(M, [&](int64_t b, int64_t e) {
            for (int64_t m = b; m < e; ++m) {
                const float* r = h + m * D_;
                double ss = 0;
                for (int64_t i = 0; i < D_; ++i) ss += (double)r[i] * r[i];
                const float inv = 1.f / std::sqrt((float)(ss / D_) + eps_);
                for (int64_t i = 0; i < D_; ++i) y[m * D_ + i] = wp[i] * (r[i] * inv);
            }
        });
    }

    void silu_mul(const float* gu, int64_t M, float* y) {
        pool_.run(M * (F_ / 8), [&](int64_t b, int64_t e) {
            const int64_t per_row = F_ / 8;
            const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
            for (int64_t c = b; c < e; ++c) {
                const int64_t m = c / per_row, i = 8 * (c % per_row);
                const __m256 g = _mm256_loadu_ps(gu + m * 2 * F_ + i), u = _mm256_loadu_ps(gu + m * 2 * F_ + F_ + i);
                const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, g))));
                _mm256_storeu_ps(y + m * F_ + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), u));
            }
        });
    }

    // RoPE (rotate-half pairs (i, i + hd/2)) on q and k in place; k and v written to their cache slots in the
    // cache's element type (keys transposed in blocks of 16 slots: see set_cache; int8: see set_cache and
    // set_kv_channel_scales).
    template <int KIND>
    void rope_and_store(float* qkv, int64_t ld, int64_t M, const int64_t* row, const int64_t* slot, size_t li) {
        using T = typename KvElem<KIND>::type;
        const int64_t half = hd_ / 2, bs = values_[li].size(2), nb = table_.size(1);
        const int32_t* tab = table_.data_ptr<int32_t>();
        T* K = (T*)keys_[li].data_ptr();
        T* V = (T*)values_[li].data_ptr();
        const Layer& L = layers_[li];
        const float* kc = KIND == kKvI8 && L.k_channel.defined() ? L.k_channel.data_ptr<float>() : nullptr;
        const float* vc = KIND == kKvI8 && L.v_channel.defined() ? L.v_channel.data_ptr<float>() : nullptr;
        std::vector<float> tmp(hd_);
        for (int64_t m = 0; m < M; ++m) {
            const int64_t blk = tab[row[m] * nb + slot[m] / bs], o = slot[m] % bs;
            const float* c = cos_.data_ptr<float>() + slot[m] * half;
            const float* s = sin_.data_ptr<float>() + slot[m] * half;
            float* t = qkv + m * ld;
            for (int64_t head = 0; head < nh_ + kvh_; ++head) {
                float* x = t + head * hd_;
                for (int64_t i = 0; i < half; ++i) {
                    const float a = x[i], b = x[i + half];
                    x[i] = a * c[i] - b * s[i];
                    x[i + half] = b * c[i] + a * s[i];
                }
            }
            for (int64_t kv = 0; kv < kvh_; ++kv) {
                const float* k = t + (nh_ + kv) * hd_;
                const float* v = t + (nh_ + kvh_ + kv) * hd_;
                T* kt = K + (((blk * kvh_ + kv) * (bs / 16) + o / 16) * hd_) * 16 + o % 16;
                T* vt = V + ((blk * kvh_ + kv) * bs + o) * hd_;
                if constexpr (KIND == kKvI8) {
                    const int64_t at = (blk * kvh_ + kv) * bs + o;
                    key_scales_[li].data_ptr<float>()[at] = quantize_kv(k, kc ? kc + kv * hd_ : nullptr, tmp.data());
                    for (int64_t i = 0; i < hd_; ++i) kt[16 * i] = (int8_t)tmp[i];
                    value_scales_[li].data_ptr<float>()[at] = quantize_kv(v, vc ? vc + kv * hd_ : nullptr, tmp.data());
                    for (int64_t i = 0; i < hd_; ++i) vt[i] = (int8_t)tmp[i];
                } else {
                    for (int64_t i = 0; i < hd_; ++i) kt[16 * i] = store_kv<KIND>(k[i]);
                    for (int64_t i = 0; i < hd_; ++i) vt[i] = store_kv<KIND>(v[i]);
                }
            }
        }
    }

    template <int KIND>
    static typename KvElem<KIND>::type store_kv(float x) {
        if constexpr (KIND == kKvBF16) return to_bf16(x);
        else if constexpr (KIND == kKvF16) return to_f16(x);
        else return x;
    }

    // x (head_dim,) -> codes q (as floats, in [-127, 127]) and the slot scale s, x[i] ~ q[i] * s * channel[i]:
    // y = x / channel (channel = 1 without channel scales), s = max|y| / 127, q = round(y * (1 / s)) (all 0 when y
    // is 0). Rounding half to even.
    float quantize_kv(const float* x, const float* channel, float* q) const {
        float amax = 0.f;
        for (int64_t i = 0; i < hd_; ++i) {
            q[i] = channel ? x[i] / channel[i] : x[i];
            amax = std::max(amax, std::fabs(q[i]));
        }
        const float s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
        for (int64_t i = 0; i < hd_; ++i) q[i] = std::nearbyint(q[i] * inv);
        return s;
    }

    // Attention of the call's M tokens, each against its row's cached slots up to its own (within the layer's
    // window), written to out (M, heads * head_dim). Tokens are taken in tiles: runs of consecutive tokens of one
    // row at consecutive slots, at most max(1, kTileQueries / group) tokens (a decode step: one token per row). One
    // task per (KV head, tile), KV head major, so each thread's share spans every tile (the tiles late in a prompt
    // read the most keys).
    static constexpr int64_t kTileQueries = 64;
    template <int KIND>
    void attention(const float* qkv, int64_t ld, int64_t M, const int64_t* row, const int64_t* slot, size_t li,
                   float* out) {
        const int64_t most = std::max<int64_t>(1, kTileQueries / (nh_ / kvh_));
        std::vector<int64_t> first, count;                                  // the tiles
        for (int64_t m = 0; m < M; ++m) {
            if (!first.empty() && count.back() < most && row[m] == row[m - 1] && slot[m] == slot[m - 1] + 1)
                ++count.back();
            else { first.push_back(m); count.push_back(1); }
        }
        const int64_t nt = (int64_t)first.size();
        pool_.run(nt * kvh_, [&](int64_t b, int64_t e) {
            TileScratch w;
            for (int64_t task = b; task < e; ++task) {
                const int64_t kv = task / nt, t = task % nt;
                attend_tile<KIND>(qkv, ld, first[t], count[t], row[first[t]], slot[first[t]], kv, li, w, out);
            }
        });
    }

    // Tokens m0..m0+n-1 of row r at slots s..s+n-1, KV head kv: their n * group query vectors (query t * group + h =
    // token t, head h of the group) against the row's keys, kSegment slots at a time with an online softmax (a
    // running max and sum per query, the output rescaled when the max grows). Segments start at multiples of
    // kSegment and every query's sums run in the same order whatever its tile, so a query's result depends neither
    // on its tile (a prompt's prefill equals its token-by-token decode) nor on the cache's block size. Scores 16 keys
    // at a time from the transposed key blocks (no horizontal sums). int8: the keys' channel scales multiply q, their
    // slot scales the scores; the values' slot scales multiply the probabilities, their channel scales the output.
    static constexpr int64_t kSegment = 256;
    template <int KIND>
    void attend_tile(const float* qkv, int64_t ld, int64_t m0, int64_t n, int64_t r, int64_t s, int64_t kv,
                     size_t li, TileScratch& w, float* out) {
        using T = typename KvElem<KIND>::type;
        const int64_t bs = values_[li].size(2), nb = table_.size(1), group = nh_ / kvh_, nq = n * group,
                      chunks = hd_ / 16, window = layers_[li].window;
        const int32_t* rt = table_.data_ptr<int32_t>() + r * nb;             // the row's blocks
        const T* K = (const T*)keys_[li].data_ptr();
        const T* V = (const T*)values_[li].data_ptr();
        const float* ks = KIND == kKvI8 ? key_scales_[li].data_ptr<float>() : nullptr;
        const float* vs = KIND == kKvI8 ? value_scales_[li].data_ptr<float>() : nullptr;
        const Layer& L = layers_[li];
        const float* kc = KIND == kKvI8 && L.k_channel.defined() ? L.k_channel.data_ptr<float>() : nullptr;
        const float* vc = KIND == kKvI8 && L.v_channel.defined() ? L.v_channel.data_ptr<float>() : nullptr;
        const float scale = 1.f / std::sqrt((float)hd_);
        w.q.resize(nq * hd_); w.p.resize(nq * kSegment); w.acc.assign(nq * hd_, 0.f);
        w.mx.assign(nq, -INFINITY); w.sum.assign(nq, 0.f); w.vscale.resize(kSegment); w.rows16.resize(kSegment / 16);
        for (int64_t t = 0; t < n; ++t)                                      // Q (nq, hd), * key channel scales
            for (int64_t h = 0; h < group; ++h) {
                const float* q = qkv + (m0 + t) * ld + (kv * group + h) * hd_;
                float* d = w.q.data() + (t * group + h) * hd_;
                for (int64_t i = 0; i < hd_; ++i) d[i] = kc ? q[i] * kc[kv * hd_ + i] : q[i];
            }
        const int64_t last = s + n - 1, first = window > 0 ? std::max<int64_t>(0, s - window + 1) : 0;
        for (int64_t seg = first / kSegment * kSegment; seg <= last; seg += kSegment) {
            const int64_t c0 = std::max(seg, first / 16 * 16);               // 16-aligned slots [c0, c1)
            const int64_t c1 = std::min(seg + kSegment, (last / 16 + 1) * 16), len = c1 - c0;
            const T** rows16 = (const T**)w.rows16.data();
            const T* kt[kScoreKBMost];                                       // scores (nq, len)
            v16f mult[kScoreKBMost];
            const int64_t step = nq < 4 ? kScoreKB1 : kScoreKB;              // 16-key tiles scored per call
            for (int64_t j = c0; j < c1;) {                                  // step x 16 keys at a time
                const int64_t kb = std::min<int64_t>(step, (c1 - j) / 16);
                for (int64_t k = 0; k < kb; ++k, j += 16) {
                    const int64_t blk = rt[j / bs], base = (blk * kvh_ + kv) * bs + j % bs;
                    kt[k] = K + ((blk * kvh_ + kv) * (bs / 16) + (j % bs) / 16) * hd_ * 16;
                    rows16[(j - c0) / 16] = V + base * hd_;
                    mult[k] = splat(scale);
                    if constexpr (KIND == kKvI8) {
                        mult[k] *= load16(ks + base);
                        store16(w.vscale.data() + (j - c0), load16(vs + base));
                    }
                }
                float* dst = w.p.data() + (j - 16 * kb - c0);
                const float* Q = w.q.data();
                const void* pf[2 * kScoreKBMost];                            // the next keys, these keys' values
                int npf = 0;
                for (int64_t k = 0, jn = j; k < step && jn <= last; ++k, jn += 16) {
                    const int64_t blk = rt[jn / bs];
                    pf[npf++] = K + ((blk * kvh_ + kv) * (bs / 16) + (jn % bs) / 16) * hd_ * 16;
                }
                for (int64_t k = 0; k < kb; ++k) pf[npf++] = rows16[(j - 16 * (kb - k) - c0) / 16];
                int64_t q = 0;
                if (kb == kScoreKB1 && step == kScoreKB1) {                  // fewer than 4 queries (MHA decode)
                    for (; q < nq; ++q, npf = 0)
                        score_keys<KIND, 1, kScoreKB1>(Q + q * hd_, hd_, kt, mult, dst + q * kSegment, kSegment, pf,
                                                       npf);
                } else if (kb == kScoreKB && step == kScoreKB) {
                    for (; q + kScoreQB <= nq; q += kScoreQB, npf = 0)
                        score_keys<KIND, kScoreQB, kScoreKB>(Q + q * hd_, hd_, kt, mult, dst + q * kSegment, kSegment,
                                                             pf, npf);
                    for (; q + 4 <= nq; q += 4, npf = 0)                     // a decode step's group of 4 heads
                        score_keys<KIND, 4, kScoreKB>(Q + q * hd_, hd_, kt, mult, dst + q * kSegment, kSegment, pf,
                                                      npf);
                    for (; q < nq; ++q, npf = 0)
                        score_keys<KIND, 1, kScoreKB>(Q + q * hd_, hd_, kt, mult, dst + q * kSegment, kSegment, pf,
                                                      npf);
                }
                for (; q < nq; ++q)
                    for (int64_t k = 0; k < kb; ++k)
                        score_keys<KIND, 1, 1>(Q + q * hd_, hd_, kt + k, mult + k, dst + q * kSegment + 16 * k, kSegment);
            }
            for (int64_t q = 0; q < nq; ++q) {                               // online softmax, query by query
                const int64_t hi = s + q / group, lo = window > 0 ? std::max<int64_t>(0, hi - window + 1) : 0;
                const int64_t a = std::max(lo, c0), b = std::min(hi, c1 - 1); // the query's slots here: [a, b]
                float* p = w.p.data() + q * kSegment;
                if (a > b) { std::fill(p, p + len, 0.f); continue; }
                const float mx = std::max(w.mx[q], max_of(p + (a - c0), b + 1 - a));
                const float corr = std::exp(w.mx[q] - mx);                     // 0 on the first segment
                w.mx[q] = mx;
                std::fill(p, p + (a - c0), 0.f);
                std::fill(p + (b + 1 - c0), p + len, 0.f);
                v16f tot = splat(0.f);
                int64_t j = a - c0;
                for (; j + 16 <= b + 1 - c0; j += 16) {
                    const v16f e = exp16(load16(p + j) - mx);
                    tot += e;
                    store16(p + j, KIND == kKvI8 ? e * load16(w.vscale.data() + j) : e);
                }
                float total = 0.f;
                for (int t = 0; t < 16; ++t) total += tot[t];
                for (; j <= b - c0; ++j) {
                    const float e = std::exp(p[j] - mx);
                    total += e;
                    p[j] = KIND == kKvI8 ? e * w.vscale[j] : e;
                }
                w.sum[q] = w.sum[q] * corr + total;
                if (corr != 1.f) {
                    float* o = w.acc.data() + q * hd_;
                    for (int64_t i = 0; i < hd_; ++i) o[i] *= corr;
                }
            }
            // acc (nq, hd) += P V over the rows up to the last query's slot (the slots after the call's last token
            // are unwritten: a paged pool is not zeroed, and 0 * NaN is NaN)
            auto rows = [&](int64_t q_end) { return std::min(c1, s + (q_end - 1) / group + 1) - c0; };
            int64_t q = 0;
            for (; q + kValueQV <= nq; q += kValueQV)
                if (rows(q + kValueQV) > 0) add_value_rows<KIND, kValueQV>(w, q, rows(q + kValueQV), chunks, rows16);
            for (; q < nq; ++q)
                if (rows(q + 1) > 0) add_value_rows<KIND, 1>(w, q, rows(q + 1), chunks, rows16);
        }
        for (int64_t q = 0; q < nq; ++q) {
            const int64_t t = q / group, h = q % group;
            float* o = out + (m0 + t) * nh_ * hd_ + (kv * group + h) * hd_;
            const float* a = w.acc.data() + q * hd_;
            const float inv = 1.f / w.sum[q];
            for (int64_t i = 0; i < hd_; ++i) o[i] = a[i] * inv * (vc ? vc[kv * hd_ + i] : 1.f);
        }
    }

    template <int KIND, int QV>
    static void add_value_rows(TileScratch& w, int64_t q, int64_t len, int64_t chunks,
                               const typename KvElem<KIND>::type* const* rows16) {
        const int64_t hd = 16 * chunks;
        int64_t c = 0;
        if constexpr (QV == 1)
            for (; c + kValueCB1 <= chunks; c += kValueCB1)
                add_values<KIND, 1, kValueCB1>(w.p.data() + q * kSegment, kSegment, rows16, len, hd, c,
                                               w.acc.data() + q * hd, hd);
        for (; c + kValueCB <= chunks; c += kValueCB)
            add_values<KIND, QV, kValueCB>(w.p.data() + q * kSegment, kSegment, rows16, len, hd, c,
                                           w.acc.data() + q * hd, hd);
        for (; c < chunks; ++c)
            add_values<KIND, QV, 1>(w.p.data() + q * kSegment, kSegment, rows16, len, hd, c, w.acc.data() + q * hd, hd);
    }

    int64_t D_, nh_, kvh_, hd_, F_;
    float eps_;
    torch::Tensor cos_, sin_;
    std::vector<Layer> layers_;
    std::vector<torch::Tensor> keys_, values_;
    torch::Tensor table_;
    std::vector<torch::Tensor> key_scales_, value_scales_;
    int kv_kind_ = kKvF32;
    Pool pool_;
    QActs acts_;
    bool profiling_ = false;
    std::vector<double> profile_;
    py::object reducer_;
};

// A standalone quantized Linear (the lm_head, and the tests): x float32 (M, K) -> float32 (M, N).
class Linear {
  public:
    Linear(torch::Tensor lines, torch::Tensor meta, c10::optional<torch::Tensor> bias, int64_t N, int64_t K,
           int64_t g, int64_t threads)
        : w_(make_linear(lines, meta, bias, N, K, g)), pool_((int)threads) {}
    torch::Tensor forward(torch::Tensor x) {
        TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.size(1) == w_.K, "x: float32 (M, K)");
        auto xc = x.contiguous();
        const int64_t M = x.size(0), R = (w_.N + 15) / 16;
        auto y = torch::empty({M, 16 * R}, torch::kFloat32);
        quantize_rows(xc.data_ptr<float>(), M, w_.K, w_.g, acts_, pool_);
        qmatmul(w_, acts_, M, y.data_ptr<float>(), 16 * R, pool_);
        return 16 * R == w_.N ? y : y.narrow(1, 0, w_.N).contiguous();
    }
  private:
    QLinear w_;
    Pool pool_;
    QActs acts_;
};

}  // namespace

std::string isa() { return EDGEAWQ_AVX512 ? "avx512vnni" : "avx2"; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("isa", &isa, "the instruction set this build uses: avx512vnni or avx2");
    py::class_<Linear>(m, "Linear")
        .def(py::init<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, int64_t, int64_t, int64_t,
                      int64_t>())
        .def("forward", &Linear::forward, py::call_guard<py::gil_scoped_release>());
    py::class_<Decoder>(m, "Decoder")
        .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, torch::Tensor, torch::Tensor, int64_t>())
        .def("add_layer", &Decoder::add_layer)
        .def("set_act_scales", &Decoder::set_act_scales)
        .def("set_cache", &Decoder::set_cache)
        .def("set_kv_channel_scales", &Decoder::set_kv_channel_scales)
        .def("forward", &Decoder::forward, py::call_guard<py::gil_scoped_release>())
        .def("set_reducer", &Decoder::set_reducer)
        .def("set_profiling", &Decoder::set_profiling)
        .def("take_profile", &Decoder::take_profile);
    m.def("profile_phases", [] { return std::vector<std::string>(kPhaseNames, kPhaseNames + kPhases); },
          "names of the per-layer phases Decoder.take_profile() reports, in order");
}
