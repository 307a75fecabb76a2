/* MS-Resampler's channel-wise fusion (paper Eq. 7-8) as one pass over the columns, on CPU.
 *
 *   out[p] = b2 + sum_k w2[k] * GELU(b1[k] + sum_e w1[k][e] * z[e][p])      z: (E, P), out: (P)
 *
 * Every column p (one token and channel) is independent, so the work is a loop over p in tiles of
 * TILE columns: the tile's E inputs, its hidden pre-activations and the running outputs stay in L1,
 * and every inner loop is a plain loop over the tile that the compiler vectorises. The hidden layer
 * (H, P) never exists in memory: the backward recomputes it per tile and evaluates erf and exp once
 * per hidden value for both GELU(x) and GELU'(x).
 *
 * GELU is the exact (erf) one: GELU(x) = x Phi(x), GELU'(x) = Phi(x) + x phi(x), with
 * Phi(x) = (1 + erf(x / sqrt 2)) / 2. The forward takes erf from Abramowitz-Stegun 7.1.28 (no exp,
 * |error| <= 3e-7); the backward from 7.1.26 (|error| <= 1.5e-7, the form PyTorch's vectorised CPU
 * erf uses), whose exp(-x^2/2) is also phi's, so erf and exp are evaluated once per hidden value.
 * Arithmetic is fp32: bf16 inputs are widened exactly and outputs rounded once (to nearest even).
 * Parameter gradients are summed per lane in fp32 over a chunk of CHUNK columns, then in double,
 * one row of sums per chunk.
 *
 * Threads: the caller splits the columns into ranges and runs them concurrently; each range writes
 * its own slice of the outputs and its own rows of sums.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TILE 64
#define MAX_E 16
#define MAX_H 64
#define CHUNK 4096 /* columns per row of parameter-gradient sums (a multiple of TILE) */

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* exp(x) for x <= 0 (here x = -u^2): Cephes expf's range reduction and polynomial, branch free.
 * n = round(x / ln 2) by the 1.5 * 2^23 trick, whose low mantissa bits are then n itself. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float magic = 12582912.0f;
    const float shifted = x * 1.44269504088896341f + magic;
    const float n = shifted - magic;
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } scale = {.f = shifted};
    scale.i = (scale.i - 0x4b400000 + 127) << 23; /* 2^n */
    return p * scale.f;
}

/* erfc(|u|) / 2 for u = x / sqrt(2), and exp(-u^2) = sqrt(2 pi) phi(x): Phi(x) is the first for
 * x < 0 and one minus it otherwise. */
static inline float half_erfc_abs(float x, float e) {
    const float t = 1.0f / (1.0f + 0.3275911f * 0.70710678118654752f * fabsf(x));
    float poly = 1.061405429f;
    poly = poly * t - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    return 0.5f * poly * t * e;
}

/* Phi(x) without exp, for the forward: Abramowitz-Stegun 7.1.28, erf(u) = 1 - (1 + a1 u + ... +
 * a6 u^6)^-16 for u >= 0, |error| <= 3e-7 (so Phi is off by <= 1.5e-7, as with 7.1.26). */
static inline float phi_forward(float x) {
    const float u = 0.70710678118654752f * fabsf(x);
    float q = 0.0000430638f;
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
    const float half_erfc = 0.5f / q;
    return x < 0.0f ? half_erfc : 1.0f - half_erfc;
}

#define PHI_EXP(x) exp_neg(-0.5f * (x) * (x))
#define PHI(x, e) ((x) < 0.0f ? half_erfc_abs(x, e) : 1.0f - half_erfc_abs(x, e))
#define INV_SQRT_2PI 0.39894228040143268f

/* The tile's inputs as fp32: zt[e][i] for its n <= TILE columns starting at p0. */
#define LOAD_TILE(T, TO_F32)                                                                      \
    static void load_##T(const T *src, int64_t P, int64_t E, int64_t p0, int64_t n,             \
                         float zt[][TILE]) {                                                      \
        for (int64_t e = 0; e < E; e++)                                                           \
            for (int64_t i = 0; i < n; i++) zt[e][i] = TO_F32(src[e * P + p0 + i]);               \
    }

static inline float id_f32(float v) { return v; }
LOAD_TILE(float, id_f32)
LOAD_TILE(uint16_t, bf16_to_f32)

static void forward_tile(float zt[][TILE], int64_t n, int64_t E, int64_t H, const float *w1,
                         const float *b1, const float *w2, float b2, float *acc) {
    float pre[TILE];
    for (int64_t i = 0; i < n; i++) acc[i] = b2;
    for (int64_t k = 0; k < H; k++) {
        for (int64_t i = 0; i < n; i++) pre[i] = b1[k];
        for (int64_t e = 0; e < E; e++) {
            const float w = w1[k * E + e];
            for (int64_t i = 0; i < n; i++) pre[i] += w * zt[e][i];
        }
        const float v = w2[k];
        for (int64_t i = 0; i < n; i++) {
            const float x = pre[i];
            acc[i] += v * x * phi_forward(x);
        }
    }
}

#define FORWARD(T, NAME, LOAD, FROM_F32)                                                          \
    void NAME(const T *z, T *out, int64_t P, int64_t E, int64_t H, const float *w1,              \
              const float *b1, const float *w2, float b2, int64_t start, int64_t stop) {          \
        float zt[MAX_E][TILE], acc[TILE];                                                         \
        for (int64_t p0 = start; p0 < stop; p0 += TILE) {                                         \
            const int64_t n = stop - p0 < TILE ? stop - p0 : TILE;                                \
            LOAD(z, P, E, p0, n, zt);                                                             \
            forward_tile(zt, n, E, H, w1, b1, w2, b2, acc);                                       \
            for (int64_t i = 0; i < n; i++) out[p0 + i] = FROM_F32(acc[i]);                       \
        }                                                                                         \
    }

FORWARD(float, msr_channel_mlp_forward_f32, load_float, id_f32)
FORWARD(uint16_t, msr_channel_mlp_forward_bf16, load_uint16_t, f32_to_bf16)

/* One chunk's parameter-gradient sums per lane i of the tile: gw1[k][e], gb1[k], gw2[k]. */
typedef struct {
    float gw1[MAX_H][MAX_E][TILE];
    float gb1[MAX_H][TILE];
    float gw2[MAX_H][TILE];
} LaneSums;

static void clear(LaneSums *s, int64_t E, int64_t H) {
    for (int64_t k = 0; k < H; k++) {
        for (int64_t e = 0; e < E; e++) memset(s->gw1[k][e], 0, sizeof(s->gw1[k][e]));
        memset(s->gb1[k], 0, sizeof(s->gb1[k]));
        memset(s->gw2[k], 0, sizeof(s->gw2[k]));
    }
}

/* The lane sums into one row of double sums: gw1 (H*E), gb1 (H), gw2 (H). */
static void flush(const LaneSums *s, int64_t E, int64_t H, double *row) {
    for (int64_t k = 0; k < H; k++) {
        for (int64_t e = 0; e < E; e++) {
            double t = 0.0;
            for (int64_t i = 0; i < TILE; i++) t += s->gw1[k][e][i];
            row[k * E + e] = t;
        }
        double tb = 0.0, tw = 0.0;
        for (int64_t i = 0; i < TILE; i++) {
            tb += s->gb1[k][i];
            tw += s->gw2[k][i];
        }
        row[H * E + k] = tb;
        row[H * E + H + k] = tw;
    }
}

static void backward_tile(float zt[][TILE], const float *gt, int64_t n, int64_t E, int64_t H,
                          const float *w1, const float *b1, const float *w2, float gzt[][TILE],
                          LaneSums *s) {
    float pre[TILE], gpre[TILE];
    for (int64_t e = 0; e < E; e++)
        for (int64_t i = 0; i < n; i++) gzt[e][i] = 0.0f;
    for (int64_t k = 0; k < H; k++) {
        for (int64_t i = 0; i < n; i++) pre[i] = b1[k];
        for (int64_t e = 0; e < E; e++) {
            const float w = w1[k * E + e];
            for (int64_t i = 0; i < n; i++) pre[i] += w * zt[e][i];
        }
        const float v = w2[k];
        float *sb = s->gb1[k], *sw = s->gw2[k];
        for (int64_t i = 0; i < n; i++) {
            const float x = pre[i], e = PHI_EXP(x), cdf = PHI(x, e);
            sw[i] += x * cdf * gt[i];                             /* dL/dw2[k] */
            gpre[i] = v * gt[i] * (cdf + x * e * INV_SQRT_2PI);   /* dL/dpre */
            sb[i] += gpre[i];                                     /* dL/db1[k] */
        }
        for (int64_t e = 0; e < E; e++) {
            const float w = w1[k * E + e];
            float *se = s->gw1[k][e];
            for (int64_t i = 0; i < n; i++) {
                se[i] += gpre[i] * zt[e][i]; /* dL/dw1[k][e] */
                gzt[e][i] += w * gpre[i];    /* dL/dz[e] */
            }
        }
    }
}

/* Columns [start, stop) with start a multiple of CHUNK; sums gets one row of S = H*E + 2H doubles
 * per chunk, so the sums do not depend on how the columns were split between threads. gz may be
 * NULL (no gradient wanted for z). */
#define BACKWARD(T, NAME, LOAD, TO_F32, FROM_F32)                                                 \
    void NAME(const T *z, const T *grad, T *gz, double *sums, int64_t P, int64_t E, int64_t H,   \
              const float *w1, const float *b1, const float *w2, int64_t start, int64_t stop) {   \
        static __thread LaneSums s;                                                               \
        float zt[MAX_E][TILE], gzt[MAX_E][TILE], gt[TILE];                                        \
        const int64_t S = H * E + 2 * H;                                                          \
        for (int64_t c0 = start; c0 < stop; c0 += CHUNK) {                                        \
            const int64_t c1 = stop - c0 < CHUNK ? stop : c0 + CHUNK;                             \
            clear(&s, E, H);                                                                      \
            for (int64_t p0 = c0; p0 < c1; p0 += TILE) {                                          \
                const int64_t n = c1 - p0 < TILE ? c1 - p0 : TILE;                                \
                LOAD(z, P, E, p0, n, zt);                                                         \
                for (int64_t i = 0; i < n; i++) gt[i] = TO_F32(grad[p0 + i]);                     \
                backward_tile(zt, gt, n, E, H, w1, b1, w2, gzt, &s);                              \
                if (gz)                                                                           \
                    for (int64_t e = 0; e < E; e++)                                               \
                        for (int64_t i = 0; i < n; i++) gz[e * P + p0 + i] = FROM_F32(gzt[e][i]); \
            }                                                                                     \
            flush(&s, E, H, sums + ((c0 - start) / CHUNK) * S);                                   \
        }                                                                                         \
    }

BACKWARD(float, msr_channel_mlp_backward_f32, load_float, id_f32, id_f32)
BACKWARD(uint16_t, msr_channel_mlp_backward_bf16, load_uint16_t, bf16_to_f32, f32_to_bf16)

/* The limits the caller checks before calling. */
int64_t msr_channel_mlp_max_branches(void) { return MAX_E; }
int64_t msr_channel_mlp_max_hidden(void) { return MAX_H; }
int64_t msr_channel_mlp_chunk(void) { return CHUNK; }
