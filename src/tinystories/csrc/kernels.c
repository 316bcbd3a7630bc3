/* Attention kernels, fp32 on the CPU (see tinystories/kernels.py): decode_attention for one
   decode step of a batch, rms_norm and silu_mul for the rest of that step, and
   attention_forward / attention_backward over whole sequences for training, at the end.

   decode_attention

   For each row b at position p = pos[b]:
     1. rotate its query heads and its new key heads by RoPE angle p (when a table is given);
     2. write the new key and value into the cache at slot p;
     3. attend each query head to its key/value head's slots [lo, p], lo = max(0, p + 1 - window),
        and write the result to out.

   Why a kernel of its own: at head dims of 4-64 and a few hundred keys, PyTorch's
   scaled_dot_product_attention spends most of its time on per-(row, head) overhead
   (hundreds of microseconds a step at 64 rows), and the steps around it (rotation,
   cache write) are a dozen microsecond-sized kernels each.

   Layouts (all contiguous):
     qkv   (B, H + 2K, D): query heads, then key heads, then value heads; rotated in place.
           With RoPE, each query and key head is in pair order: dims (2i, 2i + 1) are the
           real and imaginary parts of pair i.
     rope  (max_pos, D/2, 2): cos and sin of position t at frequency i, or NULL.
     kv    (B, 2K, M, D): one layer's cache; heads [0, K) are keys, [K, 2K) values.
     out   (B, H, D).
   Query head h reads key/value head h / (H / K), as grouped-query attention does. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Eight floats, as one AVX register (two on 128-bit SIMD); any alignment. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));

/* Lane j of the result is the sum of p[j]'s eight lanes: eight dot products finished at once
   by a tree of shuffles, instead of one horizontal sum per key. */
#define EVEN_ODD(x, y) (__builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) + \
                        __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15))
#define PAIRS(x, y) (__builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) + \
                     __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15))

static inline v8 sum_lanes(const v8 p[8])
{
    v8 a0 = EVEN_ODD(p[0], p[1]), a1 = EVEN_ODD(p[2], p[3]), a2 = EVEN_ODD(p[4], p[5]), a3 = EVEN_ODD(p[6], p[7]);
    v8 b0 = PAIRS(a0, a1), b1 = PAIRS(a2, a3);
    return __builtin_shufflevector(b0, b1, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(b0, b1, 4, 5, 6, 7, 12, 13, 14, 15);
}

#define INLINE static inline __attribute__((always_inline))

/* The first key a query at position p sees: p + 1 - window in a local layer (window > 0), else 0. */
INLINE int64_t first_key(int64_t p, int window) { return (window > 0 && p + 1 > window) ? p + 1 - window : 0; }

/* out[t] = q . keys[t] for t < n: q and each key are C chunks, the keys packed one after another. */
INLINE void dots(const v8 *q, const float *keys, int n, const int C, float *out)
{
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        v8 prod[8];
        for (int j = 0; j < 8; j++) {
            const v8 *k = (const v8 *)keys + (int64_t)(t + j) * C;
            prod[j] = q[0] * k[0];
            for (int c = 1; c < C; c++) prod[j] += q[c] * k[c];
        }
        *(v8 *)(out + t) = sum_lanes(prod);
    }
    for (; t < n; t++) {
        const v8 *k = (const v8 *)keys + (int64_t)t * C;
        v8 prod = q[0] * k[0];
        for (int c = 1; c < C; c++) prod += q[c] * k[c];
        float s = 0.0f;
        for (int d = 0; d < 8; d++) s += prod[d];
        out[t] = s;
    }
}

/* exp(x) for x <= 0, with 0 below exp(-80) ~ 2e-35 (far below a float's resolution next to the
   largest term, 1). Without the cut, the peaked attention of a trained model makes denormal
   weights, and arithmetic on denormals is many times slower (5.5x for a whole decode step,
   measured); the process's denormal mode is left alone on purpose. Branch-free, so it vectorises. */
INLINE float exp_or_zero(float x) { return expf(fmaxf(x, -80.0f)) * (float)(x >= -80.0f); }

/* s[t] = exp(s[t] - max s) in place; returns the sum, and the max through *max. */
INLINE float exp_shifted(float *s, int n, float *max)
{
    float m = s[0];
    for (int t = 1; t < n; t++) m = s[t] > m ? s[t] : m;
    float sum = 0.0f;
    for (int t = 0; t < n; t++) {
        s[t] = exp_or_zero(s[t] - m);
        sum += s[t];
    }
    *max = m;
    return sum;
}

/* out = sum over t < n of w[t] * vals[t] (C chunks each, rows packed). Each multiply-add waits
   about four cycles for the one before it on the same accumulator, so consecutive rows go to
   different accumulators: four at head dims up to 16 (one or two chunks; with two the loop sat
   on that latency, 1.4x slower at head dim 8), two above, where the chunks themselves are
   independent chains. */
INLINE void weighted_sum(const float *w, const float *vals, int n, const int C, v8 *out)
{
    const int U = C <= 2 ? 4 : 2;
    v8 acc[4][C];
    for (int u = 0; u < U; u++)
        for (int c = 0; c < C; c++) acc[u][c] = (v8){0};
    int t = 0;
    for (; t + U <= n; t += U)
        for (int u = 0; u < U; u++) {
            const v8 *v = (const v8 *)vals + (int64_t)(t + u) * C;
            for (int c = 0; c < C; c++) acc[u][c] += w[t + u] * v[c];
        }
    for (; t < n; t++)
        for (int c = 0; c < C; c++) acc[0][c] += w[t] * ((const v8 *)vals + (int64_t)t * C)[c];
    for (int c = 0; c < C; c++) {
        v8 sum = acc[0][c];
        for (int u = 1; u < U; u++) sum += acc[u][c];
        out[c] = sum;
    }
}

/* Head dim 4, keys packed (stride 4): two keys to a vector. For 16 keys, the first two levels of
   sum_lanes's tree leave each vector holding eight whole dot products, in the order (0, 2, 4, 6,
   1, 3, 5, 7) of its eight keys; one shuffle puts them in order. */
INLINE void dots4(const float *q, const float *keys, int n, float *out)
{
    v8 qq = {q[0], q[1], q[2], q[3], q[0], q[1], q[2], q[3]};
    int t = 0;
    for (; t + 16 <= n; t += 16) {
        v8 p[8];
        for (int j = 0; j < 8; j++) p[j] = qq * *(const v8 *)(keys + (t + 2 * j) * 4);
        v8 b0 = PAIRS(EVEN_ODD(p[0], p[1]), EVEN_ODD(p[2], p[3]));
        v8 b1 = PAIRS(EVEN_ODD(p[4], p[5]), EVEN_ODD(p[6], p[7]));
        *(v8 *)(out + t) = __builtin_shufflevector(b0, b0, 0, 4, 1, 5, 2, 6, 3, 7);
        *(v8 *)(out + t + 8) = __builtin_shufflevector(b1, b1, 0, 4, 1, 5, 2, 6, 3, 7);
    }
    for (; t < n; t++) out[t] = q[0] * keys[t * 4] + q[1] * keys[t * 4 + 1] + q[2] * keys[t * 4 + 2] + q[3] * keys[t * 4 + 3];
}

/* out (4 floats) = sum over t < n of w[t] * vals[t], vals packed (stride 4): two rows to a vector. */
INLINE void weighted_sum4(const float *w, const float *vals, int n, float *out)
{
    v8 acc = {0};
    int t = 0;
    for (; t + 2 <= n; t += 2) {
        v8 ww = {w[t], w[t], w[t], w[t], w[t + 1], w[t + 1], w[t + 1], w[t + 1]};
        acc += ww * *(const v8 *)(vals + t * 4);
    }
    for (int d = 0; d < 4; d++) out[d] = acc[d] + acc[4 + d] + (t < n ? w[t] * vals[t * 4 + d] : 0.0f);
}

/* dots and weighted_sum over packed rows (stride D) for head dim 4 or a multiple of 8, as the
   decode and training kernels use them. D is a constant in the specialised copies (FOR_D), so the
   branch folds away. */
INLINE void dots_packed(const float *q, const float *keys, int n, const int D, float *out)
{
    if (D == 4) dots4(q, keys, n, out);
    else dots((const v8 *)q, keys, n, D / 8, out);
}

INLINE void weighted_sum_packed(const float *w, const float *vals, int n, const int D, float *out)
{
    if (D == 4) weighted_sum4(w, vals, n, out);
    else weighted_sum(w, vals, n, D / 8, (v8 *)out);
}

#define FOR_D(CALL)                                                                 \
    switch (D) {                                                                    \
    case 4: { const int D_ = 4; CALL; } break;                                      \
    case 8: { const int D_ = 8; CALL; } break;                                      \
    case 16: { const int D_ = 16; CALL; } break;                                    \
    case 32: { const int D_ = 32; CALL; } break;                                    \
    case 48: { const int D_ = 48; CALL; } break;                                    \
    case 64: { const int D_ = 64; CALL; } break;                                    \
    default: { const int D_ = D; CALL; } break;                                     \
    }

/* One row, any head dim: plain loops. `scores` holds M floats. */
static void attend_row_any(float *x, int64_t p, float *kv, float *out,
                           int H, int K, int D, int M, int window, float scale, float *scores)
{
    const int G = H / K;
    int64_t lo = first_key(p, window);
    int n = (int)(p + 1 - lo);  /* >= 1: a token always sees itself */
    for (int qh = 0; qh < H; qh++) {
        int h = qh / G;
        const float *q = x + qh * D;
        const float *keys = kv + ((int64_t)h * M + lo) * D;
        const float *vals = kv + ((int64_t)(K + h) * M + lo) * D;
        for (int t = 0; t < n; t++) {
            float s = 0.0f;
            for (int d = 0; d < D; d++) s += q[d] * keys[(int64_t)t * D + d];
            scores[t] = s * scale;
        }
        float m, sum = exp_shifted(scores, n, &m);
        float *o = out + qh * D;
        for (int d = 0; d < D; d++) o[d] = 0.0f;
        for (int t = 0; t < n; t++)
            for (int d = 0; d < D; d++) o[d] += scores[t] * vals[(int64_t)t * D + d];
        for (int d = 0; d < D; d++) o[d] /= sum;
    }
}

/* One row for head dim 4 or a multiple of 8 (a constant in the specialised copies, see FOR_D):
   the cache rows are packed, so the training kernels' helpers serve. `scores` holds M floats. */
INLINE void attend_row(const float *x, int64_t p, const float *kv, float *out,
                       int H, int K, const int D, int M, int window, float scale, float *scores)
{
    const int G = H / K;
    int64_t lo = first_key(p, window);
    int n = (int)(p + 1 - lo);
    for (int qh = 0; qh < H; qh++) {
        int h = qh / G;
        float q[D], acc[D];
        for (int d = 0; d < D; d++) q[d] = x[qh * D + d] * scale;
        dots_packed(q, kv + ((int64_t)h * M + lo) * D, n, D, scores);
        float m, sum = exp_shifted(scores, n, &m);
        weighted_sum_packed(scores, kv + ((int64_t)(K + h) * M + lo) * D, n, D, acc);
        for (int d = 0; d < D; d++) out[qh * D + d] = acc[d] * (1.0f / sum);
    }
}

/* Rows [b0, b1): rotate, write the cache, attend. */
static void rows(float *qkv, const float *rope, const int64_t *pos, float *kv, float *out,
                 int b0, int b1, int H, int K, int D, int M, int window, float scale, float *scores)
{
    for (int b = b0; b < b1; b++) {
        float *x = qkv + (int64_t)b * (H + 2 * K) * D;
        float *cache = kv + (int64_t)b * 2 * K * M * D;
        float *o = out + (int64_t)b * H * D;
        int64_t p = pos[b];
        if (rope) {
            const float *r = rope + p * D;  /* (D/2, 2) */
            for (int h = 0; h < H + K; h++) {
                float *v = x + h * D;
                for (int i = 0; i < D; i += 2) {
                    float a = v[i], c = v[i + 1], cs = r[i], sn = r[i + 1];
                    v[i] = a * cs - c * sn;
                    v[i + 1] = a * sn + c * cs;
                }
            }
        }
        for (int h = 0; h < 2 * K; h++)
            memcpy(cache + ((int64_t)h * M + p) * D, x + (H + h) * D, D * sizeof(float));
        if (D == 4 || D % 8 == 0)
            FOR_D(attend_row(x, p, cache, o, H, K, D_, M, window, scale, scores))
        else
            attend_row_any(x, p, cache, o, H, K, D, M, window, scale, scores);
    }
}

/* Returns 0, or -1 when scratch memory could not be had. threads > 1 splits the rows. */
int decode_attention(float *qkv, const float *rope, const int64_t *pos, float *kv, float *out,
                     int B, int H, int K, int D, int M, int window, float scale, int threads)
{
    int failed = 0;
    if (threads > B) threads = B;
#pragma omp parallel num_threads(threads > 1 ? threads : 1) reduction(| : failed)
    {
        int n = 1, id = 0;
#ifdef _OPENMP
        n = omp_get_num_threads();
        id = omp_get_thread_num();
#endif
        float *scores = malloc(sizeof(float) * (size_t)M);
        if (!scores) {
            failed = 1;
        } else {
            int b0 = (int)((int64_t)B * id / n), b1 = (int)((int64_t)B * (id + 1) / n);
            rows(qkv, rope, pos, kv, out, b0, b1, H, K, D, M, window, scale, scores);
            free(scores);
        }
    }
    return failed ? -1 : 0;
}

/* RMSNorm of B rows of C floats: out = x / sqrt(mean(x^2) + eps) * weight. One call instead of
   PyTorch's composite (about ten kernels on the CPU), which dominates a one-row decode step. */
void rms_norm(const float *x, const float *weight, float *out, int B, int C, float eps)
{
    for (int b = 0; b < B; b++) {
        const float *row = x + (int64_t)b * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += row[c] * row[c];
        float r = 1.0f / sqrtf(ss / C + eps);
        float *o = out + (int64_t)b * C;
        for (int c = 0; c < C; c++) o[c] = row[c] * r * weight[c];
    }
}

/* Causal attention over whole sequences, forward and backward, for training and scoring (head dim
   4 or a multiple of 8). q, k and v are (B, T, heads, D) with any strides for b, t and the head (in
   floats) and D contiguous, as the fused projection leaves them; y and dy are (B, T, H, D) and dq
   (B, T, H, D), dk and dv (B, K, T, D), all contiguous; lse (B, H, T) holds each query's
   log-sum-exp of its scaled scores, from which the backward pass recomputes the probabilities
   instead of storing them. Query i attends to keys [max(0, i + 1 - window), i] (window 0: all
   of [0, i]). Work is split by (row, key/value head); each task first copies its key and value
   rows next to each other (they are hundreds of bytes apart in the projection), and the G query
   heads that read them, and write their gradients, share the task: no two threads write the
   same memory. */

typedef struct {
    const float *p;
    int64_t sb, st, sh;  /* strides of b, t and the head, in floats */
} strided;

INLINE const float *at(strided x, int b, int t, int h) { return x.p + b * x.sb + t * x.st + h * x.sh; }

/* Rows t < T of head h of row b, packed: out is (T, D). */
static void pack(strided x, int b, int h, int T, int D, float *out)
{
    for (int t = 0; t < T; t++) memcpy(out + (int64_t)t * D, at(x, b, t, h), sizeof(float) * (size_t)D);
}

INLINE void forward_head(strided q, const float *keys, const float *vals, float *y, float *lse, int b, int h,
                         int T, int H, const int D, int window, float scale, float *s)
{
    for (int i = 0; i < T; i++) {
        int lo = (int)first_key(i, window), n = i + 1 - lo;
        float qi[D], acc[D];
        const float *qraw = at(q, b, i, h);
        for (int d = 0; d < D; d++) qi[d] = qraw[d] * scale;
        dots_packed(qi, keys + (int64_t)lo * D, n, D, s);
        float m, sum = exp_shifted(s, n, &m);
        weighted_sum_packed(s, vals + (int64_t)lo * D, n, D, acc);
        float *yi = y + (((int64_t)b * T + i) * H + h) * D;
        for (int d = 0; d < D; d++) yi[d] = acc[d] * (1.0f / sum);
        lse[((int64_t)b * H + h) * T + i] = m + logf(sum);
    }
}

/* dk, dv: this task's (T, D) gradient rows, accumulated into. */
INLINE void backward_head(strided q, const float *keys, const float *vals, const float *y, const float *dy,
                          const float *lse, float *dq, float *dk, float *dv, int b, int h, int T, int H,
                          const int D, int window, float scale, float *p, float *dp)
{
    for (int i = 0; i < T; i++) {
        int lo = (int)first_key(i, window), n = i + 1 - lo;
        int64_t row = ((int64_t)b * T + i) * H + h;
        const float *yi = y + row * D, *qraw = at(q, b, i, h);
        /* Local copies: the gradient stores below could alias q and dy for all the compiler knows, and
           it would reload them for every key. */
        float qr[D], dyi[D], qi[D], dqi[D], delta = 0.0f, l = lse[((int64_t)b * H + h) * T + i];
        for (int d = 0; d < D; d++) {
            qr[d] = qraw[d];
            dyi[d] = dy[row * D + d];
            qi[d] = qr[d] * scale;
            delta += dyi[d] * yi[d];
        }
        const float *k0 = keys + (int64_t)lo * D, *v0 = vals + (int64_t)lo * D;
        dots_packed(qi, k0, n, D, p);  /* scaled scores */
        for (int t = 0; t < n; t++) p[t] = exp_or_zero(p[t] - l);  /* probabilities */
        dots_packed(dyi, v0, n, D, dp);  /* dL/dp */
        for (int t = 0; t < n; t++) dp[t] = p[t] * (dp[t] - delta) * scale;  /* dL/d(q.k) */
        weighted_sum_packed(dp, k0, n, D, dqi);
        for (int d = 0; d < D; d++) dq[row * D + d] = dqi[d];
        float *dkt = dk + (int64_t)lo * D, *dvt = dv + (int64_t)lo * D;
        if (D % 8 == 0) {  /* whole vectors: gcc does not vectorise the float loop below as well */
            const int C = D / 8;
            v8 *dk8 = (v8 *)dkt, *dv8 = (v8 *)dvt;
            const v8 *q8 = (const v8 *)qr, *g8 = (const v8 *)dyi;
            for (int t = 0; t < n; t++)
                for (int c = 0; c < C; c++) {
                    dk8[t * C + c] += dp[t] * q8[c];
                    dv8[t * C + c] += p[t] * g8[c];
                }
        } else {
            for (int t = 0; t < n; t++)
                for (int d = 0; d < D; d++) {
                    dkt[t * D + d] += dp[t] * qr[d];
                    dvt[t * D + d] += p[t] * dyi[d];
                }
        }
    }
}

int attention_forward(const float *qp, int64_t qsb, int64_t qst, int64_t qsh,
                      const float *kp, int64_t ksb, int64_t kst, int64_t ksh,
                      const float *vp, int64_t vsb, int64_t vst, int64_t vsh,
                      float *y, float *lse, int B, int T, int H, int K, int D, int window, float scale,
                      int threads)
{
    strided q = {qp, qsb, qst, qsh}, k = {kp, ksb, kst, ksh}, v = {vp, vsb, vst, vsh};
    const int G = H / K;
    int failed = 0;
#pragma omp parallel for num_threads(threads > 1 ? threads : 1) schedule(dynamic, 1) reduction(| : failed)
    for (int task = 0; task < B * K; task++) {
        float *buf = malloc(sizeof(float) * (size_t)T * (1 + 2 * (size_t)D));
        if (!buf) {
            failed = 1;
            continue;
        }
        float *s = buf, *keys = buf + T, *vals = keys + (size_t)T * D;
        int b = task / K, kh = task % K;
        pack(k, b, kh, T, D, keys);
        pack(v, b, kh, T, D, vals);
        for (int g = 0; g < G; g++)
            FOR_D(forward_head(q, keys, vals, y, lse, b, kh * G + g, T, H, D_, window, scale, s));
        free(buf);
    }
    return failed ? -1 : 0;
}

/* dk and dv must be zeroed by the caller. */
int attention_backward(const float *qp, int64_t qsb, int64_t qst, int64_t qsh,
                       const float *kp, int64_t ksb, int64_t kst, int64_t ksh,
                       const float *vp, int64_t vsb, int64_t vst, int64_t vsh,
                       const float *y, const float *dy, const float *lse, float *dq, float *dk, float *dv,
                       int B, int T, int H, int K, int D, int window, float scale, int threads)
{
    strided q = {qp, qsb, qst, qsh}, k = {kp, ksb, kst, ksh}, v = {vp, vsb, vst, vsh};
    const int G = H / K;
    int failed = 0;
#pragma omp parallel for num_threads(threads > 1 ? threads : 1) schedule(dynamic, 1) reduction(| : failed)
    for (int task = 0; task < B * K; task++) {
        float *buf = malloc(sizeof(float) * (size_t)T * (2 + 2 * (size_t)D));
        if (!buf) {
            failed = 1;
            continue;
        }
        float *p = buf, *dp = buf + T, *keys = buf + 2 * T, *vals = keys + (size_t)T * D;
        int b = task / K, kh = task % K;
        pack(k, b, kh, T, D, keys);
        pack(v, b, kh, T, D, vals);
        float *dkh = dk + (int64_t)task * T * D, *dvh = dv + (int64_t)task * T * D;  /* (b, kh) of (B, K, T, D) */
        for (int g = 0; g < G; g++)
            FOR_D(backward_head(q, keys, vals, y, dy, lse, dq, dkh, dvh, b, kh * G + g, T, H, D_, window, scale,
                                p, dp));
        free(buf);
    }
    return failed ? -1 : 0;
}

/* SwiGLU of B rows: out[b, j] = silu(h[b, j]) * h[b, F + j] for j < F, h (B, 2F) holding the gate
   columns, then the up columns. One call instead of four PyTorch kernels in a decode step. */
void silu_mul(const float *h, float *out, int B, int F)
{
    for (int b = 0; b < B; b++) {
        const float *gate = h + (int64_t)b * 2 * F, *up = gate + F;
        float *o = out + (int64_t)b * F;
        /* exp's argument capped at 80 (exp(80) ~ 5.5e34): under -ffast-math an infinite exp would turn
           the quotient for a very negative gate into NaN instead of 0. */
        for (int j = 0; j < F; j++) o[j] = gate[j] / (1.0f + expf(fminf(-gate[j], 80.0f))) * up[j];
    }
}
