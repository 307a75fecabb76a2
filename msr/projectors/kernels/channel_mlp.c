/* MS-Resampler's channel-wise fusion (paper Eq. 7-8) as one pass over the columns, on CPU.
 *
 *   out[p] = b2 + sum_k w2[k] * GELU(b1[k] + sum_e w1[k][e] * z[e][p])      z: (E, P), out: (P)
 *
 * Every column p (one token and channel) is independent. The columns go in blocks of BLOCK that
 * stay in L1; within a block, the loop runs over the hidden units k outside and over vectors of V
 * columns inside (GCC/Clang vector extensions, lowered by -march=native to AVX-512, AVX2 or NEON),
 * so the parameter-gradient sums of unit k stay in registers. E is a compile-time constant for
 * E <= 4 (the paper's E = 1 and 3 included), which unrolls the loops over branches. The (H, P)
 * hidden layer never exists in memory: the backward recomputes it.
 *
 * GELU is the exact (erf) one: GELU(x) = x Phi(x), GELU'(x) = Phi(x) + x phi(x), with
 * Phi(x) = (1 + erf(x / sqrt 2)) / 2. The forward takes erf from Abramowitz-Stegun 7.1.28 (no exp,
 * |error| <= 3e-7); the backward from 7.1.26 (|error| <= 1.5e-7, the form PyTorch's vectorised CPU
 * erf uses), whose exp(-x^2/2) is also phi's, so erf and exp are evaluated once per hidden value.
 * Arithmetic is fp32: bf16 inputs are widened exactly and outputs rounded once (to nearest even).
 * Parameter gradients are summed per lane in fp32 over a chunk of CHUNK columns, then in double,
 * one row of sums per chunk.
 *
 * Threads: the caller splits the columns into ranges (starting on chunk boundaries) and runs them
 * concurrently; each range writes its own slice of the outputs and its own rows of sums.
 */
#include <stdint.h>
#include <string.h>

#define V 16        /* columns per vector: 16 fp32 lanes */
#define BLOCK 256   /* columns per L1 block (a multiple of V) */
#define CHUNK 4096  /* columns per row of parameter-gradient sums (a multiple of BLOCK) */
#define MAX_E 16
#define MAX_H 64
#define INLINE static inline __attribute__((always_inline))

typedef float vf __attribute__((vector_size(4 * V)));
typedef int32_t vi __attribute__((vector_size(4 * V)));  /* comparison masks */
typedef uint32_t vu __attribute__((vector_size(4 * V))); /* fp32 bit patterns */
typedef uint16_t vh __attribute__((vector_size(2 * V))); /* bf16 bit patterns */

INLINE vf splat(float a) { return (vf){0} + a; }
INLINE vf blend(vi mask, vf a, vf b) { return (vf)(((vu)a & (vu)mask) | ((vu)b & ~(vu)mask)); }
INLINE vf vabs(vf x) { return (vf)((vu)x & 0x7fffffffu); }

/* exp(-x^2/2) as 2^y, y = -x^2 / (2 ln 2): y = n + f with n = round(y) (by the 1.5 * 2^23 trick,
 * whose low mantissa bits are then n itself) and 2^f from its degree-6 Taylor polynomial on
 * |f| <= 1/2 (relative error ~1e-7). y is clamped at -126 (2^-126: every smaller value is 0 here). */
INLINE vf exp_half_square(vf x) {
    vf y = x * x * -0.72134752044448170f;
    y = blend(y < -126.0f, splat(-126.0f), y);
    const vf shifted = y + 12582912.0f;
    const vf f = y - (shifted - 12582912.0f);
    vf p = splat(1.5403530393381609e-4f);
    p = p * f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 2.4022650695910071e-1f;
    p = p * f + 6.9314718055994531e-1f;
    p = p * f + 1.0f;
    return p * (vf)(((vu)shifted - 0x4b400000u + 127u) << 23); /* times 2^n */
}

/* Phi(x) from (1 - erf|u|) / 2, u = x / sqrt 2: itself for x < 0, one minus it otherwise. */
INLINE vf phi_from_tail(vf x, vf half_erfc) {
    return blend(x < 0.0f, half_erfc, 1.0f - half_erfc);
}

/* Phi(x), forward: erf by Abramowitz-Stegun 7.1.28, 1 - (1 + a1 u + ... + a6 u^6)^-16. */
INLINE vf phi_forward(vf x) {
    const vf u = 0.70710678118654752f * vabs(x);
    vf q = splat(0.0000430638f);
    q = q * u + 0.0002765672f;
    q = q * u + 0.0001520143f;
    q = q * u + 0.0092705272f;
    q = q * u + 0.0422820123f;
    q = q * u + 0.0705230784f;
    q = q * u + 1.0f;
    q = q * q; /* ^2 */
    q = q * q; /* ^4 */
    q = q * q; /* ^8 */
    q = q * q; /* ^16 */
    return phi_from_tail(x, 0.5f / q);
}

/* Phi(x) and e = exp(-x^2/2), backward: erf by Abramowitz-Stegun 7.1.26,
 * 1 - t (a1 + a2 t + ... + a5 t^4) exp(-u^2) with t = 1 / (1 + p u). phi(x) = e / sqrt(2 pi). */
INLINE vf phi_backward(vf x, vf *e) {
    const vf t = 1.0f / (1.0f + 0.3275911f * 0.70710678118654752f * vabs(x));
    vf poly = splat(1.061405429f);
    poly = poly * t - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    *e = exp_half_square(x);
    return phi_from_tail(x, 0.5f * poly * t * *e);
}

/* A block's columns [p0, p0 + n) as fp32 in dst[e][BLOCK]; unused lanes are 0. */
INLINE void load_block_f32(const float *src, int64_t P, int64_t E, int64_t p0, int64_t n,
                           float dst[][BLOCK]) {
    for (int64_t e = 0; e < E; e++) {
        memcpy(dst[e], src + e * P + p0, 4 * n);
        memset(dst[e] + n, 0, 4 * (BLOCK - n));
    }
}

INLINE void load_block_bf16(const uint16_t *src, int64_t P, int64_t E, int64_t p0, int64_t n,
                            float dst[][BLOCK]) {
    for (int64_t e = 0; e < E; e++) {
        uint16_t tmp[BLOCK] = {0};
        memcpy(tmp, src + e * P + p0, 2 * n);
        for (int64_t v = 0; v < BLOCK; v += V) {
            vh h;
            memcpy(&h, tmp + v, sizeof(h));
            const vu bits = __builtin_convertvector(h, vu) << 16; /* exact */
            memcpy(dst[e] + v, &bits, sizeof(bits));
        }
    }
}

INLINE void store_block_f32(float *dst, int64_t P, int64_t E, int64_t p0, int64_t n,
                            float src[][BLOCK]) {
    for (int64_t e = 0; e < E; e++) memcpy(dst + e * P + p0, src[e], 4 * n);
}

INLINE void store_block_bf16(uint16_t *dst, int64_t P, int64_t E, int64_t p0, int64_t n,
                             float src[][BLOCK]) {
    for (int64_t e = 0; e < E; e++) {
        uint16_t tmp[BLOCK];
        for (int64_t v = 0; v < BLOCK; v += V) {
            vu bits;
            memcpy(&bits, src[e] + v, sizeof(bits));
            const vu rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16; /* nearest even */
            const vu nan = (vu)((bits & 0x7fffffffu) > 0x7f800000u);
            const vu out = (rounded & ~nan) | (((bits >> 16) | 0x40u) & nan); /* quiet NaN */
            const vh h = __builtin_convertvector(out, vh);
            memcpy(tmp + v, &h, sizeof(h));
        }
        memcpy(dst + e * P + p0, tmp, 2 * n);
    }
}

INLINE vf at(const float *row, int64_t v) {
    vf x;
    memcpy(&x, row + v, sizeof(x));
    return x;
}

INLINE void put(float *row, int64_t v, vf x) { memcpy(row + v, &x, sizeof(x)); }

/* out (1 row of BLOCK) = b2 + sum_k w2[k] GELU(x_k) for one block of inputs zb (E rows). */
INLINE void forward_block(float zb[][BLOCK], float out[][BLOCK], int64_t E, int64_t H,
                          const float *w1, const float *b1, const float *w2, float b2) {
    for (int64_t v = 0; v < BLOCK; v += V) put(out[0], v, splat(b2));
    for (int64_t k = 0; k < H; k++) {
        const float *w = w1 + k * E;
        for (int64_t v = 0; v < BLOCK; v += V) {
            vf x = splat(b1[k]);
            for (int64_t e = 0; e < E; e++) x += w[e] * at(zb[e], v);
            put(out[0], v, at(out[0], v) + w2[k] * x * phi_forward(x));
        }
    }
}

/* Gradients of one block: gzb (E rows) = dL/dz, and the lane sums of dL/dw1, dL/db1, dL/dw2 and
 * dL/db2 grow. */
INLINE void backward_block(float zb[][BLOCK], const float *gb, float gzb[][BLOCK], int64_t E,
                           int64_t H, const float *w1, const float *b1, const float *w2,
                           vf sw1[][MAX_E], vf *sb1, vf *sw2, vf *sb2) {
    for (int64_t e = 0; e < E; e++) memset(gzb[e], 0, sizeof(gzb[e]));
    for (int64_t v = 0; v < BLOCK; v += V) *sb2 += at(gb, v); /* dL/db2 */
    for (int64_t k = 0; k < H; k++) {
        const float *w = w1 + k * E;
        vf aw1[MAX_E], ab1 = splat(0.0f), aw2 = splat(0.0f);
        for (int64_t e = 0; e < E; e++) aw1[e] = splat(0.0f);
        for (int64_t v = 0; v < BLOCK; v += V) {
            vf zv[MAX_E], x = splat(b1[k]), ex;
            for (int64_t e = 0; e < E; e++) {
                zv[e] = at(zb[e], v);
                x += w[e] * zv[e];
            }
            const vf g = at(gb, v), cdf = phi_backward(x, &ex);
            aw2 += x * cdf * g;                                            /* dL/dw2[k] */
            const vf gx = w2[k] * g * (cdf + x * ex * 0.39894228040143268f); /* dL/dx_k */
            ab1 += gx;                                                     /* dL/db1[k] */
            for (int64_t e = 0; e < E; e++) {
                aw1[e] += gx * zv[e];                        /* dL/dw1[k][e] */
                put(gzb[e], v, at(gzb[e], v) + w[e] * gx);   /* dL/dz[e] */
            }
        }
        for (int64_t e = 0; e < E; e++) sw1[k][e] += aw1[e];
        sb1[k] += ab1;
        sw2[k] += aw2;
    }
}

/* One chunk's lane sums into a row of doubles: gw1 (H*E), gb1 (H), gw2 (H), gb2 (1). */
static void flush(vf sw1[][MAX_E], const vf *sb1, const vf *sw2, vf sb2, int64_t E, int64_t H,
                  double *row) {
    double t2 = 0.0;
    for (int64_t i = 0; i < V; i++) t2 += sb2[i];
    row[H * E + 2 * H] = t2;
    for (int64_t k = 0; k < H; k++) {
        double tb = 0.0, tw = 0.0;
        for (int64_t i = 0; i < V; i++) {
            tb += sb1[k][i];
            tw += sw2[k][i];
        }
        row[H * E + k] = tb;
        row[H * E + H + k] = tw;
        for (int64_t e = 0; e < E; e++) {
            double t = 0.0;
            for (int64_t i = 0; i < V; i++) t += sw1[k][e][i];
            row[k * E + e] = t;
        }
    }
}

#define FORWARD(T, SUFFIX)                                                                        \
    INLINE void forward_##SUFFIX(const T *z, T *out, int64_t P, int64_t E, int64_t H,           \
                                 const float *w1, const float *b1, const float *w2, float b2,    \
                                 int64_t start, int64_t stop) {                                   \
        float zb[MAX_E][BLOCK], ob[1][BLOCK];                                                     \
        for (int64_t p0 = start; p0 < stop; p0 += BLOCK) {                                        \
            const int64_t n = stop - p0 < BLOCK ? stop - p0 : BLOCK;                              \
            load_block_##SUFFIX(z, P, E, p0, n, zb);                                              \
            forward_block(zb, ob, E, H, w1, b1, w2, b2);                                          \
            store_block_##SUFFIX(out, 0, 1, p0, n, ob);                                           \
        }                                                                                         \
    }                                                                                             \
    void msr_channel_mlp_forward_##SUFFIX(const T *z, T *out, int64_t P, int64_t E, int64_t H,   \
                                          const float *w1, const float *b1, const float *w2,     \
                                          float b2, int64_t start, int64_t stop) {                \
        switch (E) { /* a constant E unrolls the loops over branches */                           \
        case 1: forward_##SUFFIX(z, out, P, 1, H, w1, b1, w2, b2, start, stop); break;           \
        case 2: forward_##SUFFIX(z, out, P, 2, H, w1, b1, w2, b2, start, stop); break;           \
        case 3: forward_##SUFFIX(z, out, P, 3, H, w1, b1, w2, b2, start, stop); break;           \
        case 4: forward_##SUFFIX(z, out, P, 4, H, w1, b1, w2, b2, start, stop); break;           \
        default: forward_##SUFFIX(z, out, P, E, H, w1, b1, w2, b2, start, stop);                 \
        }                                                                                         \
    }

FORWARD(float, f32)
FORWARD(uint16_t, bf16)

/* Columns [start, stop), start a multiple of CHUNK; sums gets one row of H*E + 2H + 1 doubles per chunk,
 * so the sums do not depend on how the columns were split between threads. gz may be NULL. */
#define BACKWARD(T, SUFFIX)                                                                       \
    INLINE void backward_##SUFFIX(const T *z, const T *grad, T *gz, double *sums, int64_t P,     \
                                  int64_t E, int64_t H, const float *w1, const float *b1,        \
                                  const float *w2, int64_t start, int64_t stop) {                 \
        static __thread vf sw1[MAX_H][MAX_E], sb1[MAX_H], sw2[MAX_H];                             \
        vf sb2;                                                                                   \
        float zb[MAX_E][BLOCK], gzb[MAX_E][BLOCK], gb[1][BLOCK];                                  \
        for (int64_t c0 = start; c0 < stop; c0 += CHUNK) {                                        \
            const int64_t c1 = stop - c0 < CHUNK ? stop : c0 + CHUNK;                             \
            sb2 = splat(0.0f);                                                                    \
            for (int64_t k = 0; k < H; k++) {                                                     \
                sb1[k] = sw2[k] = splat(0.0f);                                                    \
                for (int64_t e = 0; e < E; e++) sw1[k][e] = splat(0.0f);                          \
            }                                                                                     \
            for (int64_t p0 = c0; p0 < c1; p0 += BLOCK) {                                         \
                const int64_t n = c1 - p0 < BLOCK ? c1 - p0 : BLOCK;                              \
                load_block_##SUFFIX(z, P, E, p0, n, zb);                                          \
                load_block_##SUFFIX(grad, 0, 1, p0, n, gb); /* 0 past n: adds nothing */         \
                backward_block(zb, gb[0], gzb, E, H, w1, b1, w2, sw1, sb1, sw2, &sb2);           \
                if (gz) store_block_##SUFFIX(gz, P, E, p0, n, gzb);                               \
            }                                                                                     \
            flush(sw1, sb1, sw2, sb2, E, H, sums + ((c0 - start) / CHUNK) * (H * E + 2 * H + 1));  \
        }                                                                                         \
    }                                                                                             \
    void msr_channel_mlp_backward_##SUFFIX(const T *z, const T *grad, T *gz, double *sums,       \
                                           int64_t P, int64_t E, int64_t H, const float *w1,     \
                                           const float *b1, const float *w2, int64_t start,      \
                                           int64_t stop) {                                        \
        switch (E) {                                                                              \
        case 1: backward_##SUFFIX(z, grad, gz, sums, P, 1, H, w1, b1, w2, start, stop); break;   \
        case 2: backward_##SUFFIX(z, grad, gz, sums, P, 2, H, w1, b1, w2, start, stop); break;   \
        case 3: backward_##SUFFIX(z, grad, gz, sums, P, 3, H, w1, b1, w2, start, stop); break;   \
        case 4: backward_##SUFFIX(z, grad, gz, sums, P, 4, H, w1, b1, w2, start, stop); break;   \
        default: backward_##SUFFIX(z, grad, gz, sums, P, E, H, w1, b1, w2, start, stop);         \
        }                                                                                         \
    }

BACKWARD(float, f32)
BACKWARD(uint16_t, bf16)

/* The limits the caller checks before calling. */
int64_t msr_channel_mlp_max_branches(void) { return MAX_E; }
int64_t msr_channel_mlp_max_hidden(void) { return MAX_H; }
int64_t msr_channel_mlp_chunk(void) { return CHUNK; }
