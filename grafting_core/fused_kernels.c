/* Fused CPU passes for Graft.step; grafting_core/fused.py compiles this file and calls it.
 *
 * Each pass walks a list of contiguous tensors cut into fixed chunks that threads share;
 * every chunk writes its sums of squares (in double) to its own slot and the slots are
 * added per tensor in a fixed order after the pass, so no result depends on the thread
 * count; the pass hands back their roots, the norms, rounded to the tensor's precision
 * (as the reference path's norms are), so that nothing is left to compute in Python. Within a chunk, blocks of BLOCK elements are summed in the tensor's precision (a
 * float chain per SIMD lane: at most ~1e-5 relative in float32, ~1e-7 typically) and added
 * in double: summing every element in double made the float passes 10-25 % slower (the
 * conversions and one long dependency chain), at no accuracy a float32 norm needs. The
 * update arithmetic is grafting_core/rules.py's in the tensor's own precision, up to
 * rounding (Adam multiplies by its bias corrections' reciprocals: one division per
 * element, not three).
 * The file is compiled twice: REAL = float (suffix f32) and double (f64).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FUSED_COMMON
#define FUSED_COMMON
#ifdef _OPENMP
#define THREAD() omp_get_thread_num()
#else
#define THREAD() 0
#endif
/* The passes (Task.op). These enums and NCOEF are numbered as in fused.py, which writes them
 * again; tests/test_fused_codes.py reads both files and compares. */
enum { SUMSQ_COPY, DIFF_SUMSQ_RESTORE, DIFF_SUMSQ, BLEND, PROPOSE, APPLY, ZERO_IF, PROPOSE_M,
       PROPOSE_D, SUMSQ };
/* How PROPOSE and PROPOSE_M treat the gradients (Task.guard): as they are; summing ‖g‖²
 * per tensor first; and also skipping non-finite layers (their gradients zeroed first). */
enum { UNGUARDED, GRAD_SUMS, SKIP_NONFINITE };
/* Rule kinds (fused.py maps rules and their flags to them): SGD without buffer, SGD with
 * momentum, Adam/AdamW, AdaGrad, RMSprop without and with momentum (not centred), signSGD
 * without and with momentum (Signum), Lion. */
enum { PLAIN, MOMENTUM, ADAM, ADAGRAD, RMSPROP, RMSPROP_MOMENTUM, SIGN, SIGN_MOMENTUM, LION };
enum { NCOEF = 10 };             /* per tensor and rule; the meaning of each is in Coef */
enum { BLOCK = 1024 };           /* elements summed in REAL before the sum goes to double */
/* Lion's step reads its moment before the update: as D its state advances in APPLY. */
#define IN_APPLY(K) ((K) == LION)

typedef struct {
    int op, kind_m, kind_d, use_w, guard;
    int64_t n;                 /* tensors */
    const int64_t *numel;      /* elements of tensor i */
    const int64_t *first;      /* first chunk of tensor i; first[n] = all chunks */
    void *const *ptr[6];       /* pointer tables: grad, weight, M's 2 buffers, D's 2 */
    const double *coef_m, *coef_d;
    const void *scale;         /* REAL per tensor: APPLY, BLEND's scale; ZERO_IF: 1 where
                                * the gradient is to be zeroed */
    int64_t segments;          /* guarded passes: runs of whole layers, scanned then proposed */
    const int64_t *segment;    /* first tensor of each segment; segment[segments] = n */
    const int64_t *layer;      /* a layer number (< n) per tensor, NULL: one tensor a layer */
    void *norms;               /* out, REAL: 3 rows of n norms (a rule's two, ‖g‖²'s root) */
    double *partial;           /* graft_pass's own: 3 sums of squares per chunk */
    double *grad_sums;         /* and ‖g‖² per tensor, its chunks' in order (guarded) */
} Task;
#endif

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define F(name) CAT(name, SUFFIX)

/* A rule's coefficients for one tensor, in fused.py's order. Flags are folded into
 * numbers so that the loops have no branches: with wd = 0 the decay term is + 0·w; SGD's
 * first step has keep_buf = 0, take_g = 1 (the buffer starts at g); without Nesterov
 * the step is 0·g + 1·buf. */
typedef struct {
    REAL lr, wd, wd_after;        /* all: lr, coupled decay (g += wd·w), decoupled (AdamW,
                                   * Lion); AdaGrad's lr is its decayed lr at this step */
    REAL a, b, c, d, e, f;        /* SGD: momentum, keep_buf, take_g, nes_g, nes_buf;
                                   * Adam: 1-beta1, beta2, 1-beta2, eps, 1/bc1, 1/sqrt(bc2);
                                   * AdaGrad: -, -, -, eps; RMSprop: momentum, alpha,
                                   * 1-alpha, eps; signSGD: 1-momentum; Lion: 1-beta1,
                                   * 1-beta2. LARS is SGD's, LAMB Adam's (see fused.py) */
    REAL trust;                   /* not read here: LARS's trust coefficient, LAMB's lr */
} F(Coef);

static F(Coef) F(coef)(const double *k) {
    F(Coef) c = {(REAL)k[0], (REAL)k[1], (REAL)k[2], (REAL)k[3], (REAL)k[4],
                 (REAL)k[5], (REAL)k[6], (REAL)k[7], (REAL)k[8], (REAL)k[9]};
    return c;
}

static inline __attribute__((always_inline)) REAL F(sign)(const REAL x) {
    return (REAL)((x > 0) - (x < 0));
}

/* torch's lerp (ATen/native/Lerp.h): s + w·(e − s), or e − (e − s)·(1 − w) for w >= 1/2. */
static inline __attribute__((always_inline)) REAL F(lerp)(const REAL s, const REAL e,
                                                          const REAL w) {
    return w < (REAL)0.5 ? s + w * (e - s) : e - (e - s) * (1 - w);
}

/* One rule's proposed step for one element; with `update` it also advances the state (the
 * step reads the new state, except Lion's, which reads the old one). */
static inline __attribute__((always_inline)) REAL F(rule)(
        const int kind, const F(Coef) k, REAL g, REAL w, REAL *s0, REAL *s1, const int update) {
    g = g + k.wd * w;
    if (kind == PLAIN) return g * -k.lr;
    if (kind == MOMENTUM) {
        REAL buf = *s0;
        if (update) *s0 = buf = buf * (k.a * k.b) + k.c * g;
        return (k.d * g + k.e * buf) * -k.lr;
    }
    if (kind == ADAGRAD) {
        REAL sum = *s0;
        if (update) *s0 = sum = sum + g * g;
        return g / (SQRT(sum) + k.d) * -k.lr;
    }
    if (kind == RMSPROP || kind == RMSPROP_MOMENTUM) {
        REAL v = *s0;
        if (update) {
            v = v * k.b;
            *s0 = v = v + k.c * g * g;
        }
        if (kind == RMSPROP) return g / (SQRT(v) + k.d) * -k.lr;
        REAL buf = *s1;
        if (update) *s1 = buf = buf * k.a + g / (SQRT(v) + k.d);
        return buf * -k.lr;
    }
    if (kind == SIGN) return F(sign)(g) * -k.lr;
    if (kind == SIGN_MOMENTUM) {
        REAL buf = *s0;
        if (update) *s0 = buf = F(lerp)(buf, g, k.a);
        return F(sign)(buf) * -k.lr;
    }
    if (kind == LION) {
        const REAL m = *s0;
        const REAL step = (F(sign)(F(lerp)(m, g, k.a)) + k.wd_after * w) * -k.lr;
        if (update) *s0 = F(lerp)(m, g, k.b);
        return step;
    }
    REAL m = *s0, v = *s1;
    if (update) {
        *s0 = m = m + k.a * (g - m);
        v = v * k.b;
        *s1 = v = v + k.c * g * g;
    }
    REAL step = m * k.e / (SQRT(v) * k.f + k.d);  /* one division: the rest multiplies */
    return (step + k.wd_after * w) * -k.lr;
}

/* The rule passes, specialised on the rule kinds and on reading w or g. */
#define PROPOSE_LOOP(KM, KD, USE_W)                                                \
    _Pragma("omp simd simdlen(16) reduction(+:s0, s1)")                                        \
    for (int64_t j = lo; j < hi; j++) {                                            \
        REAL wj = USE_W ? w[j] : 0;                                                \
        REAL dm = F(rule)(KM, km, g[j], wj, m0 + j, m1 + j, 1);                    \
        REAL dd = F(rule)(KD, kd, g[j], wj, d0 + j, d1 + j, 1);                    \
        s0 += dm * dm;                                                             \
        s1 += dd * dd;                                                             \
    }
#define PROPOSE_W(KM, KD) \
    if (t->use_w) { PROPOSE_LOOP(KM, KD, 1) } else { PROPOSE_LOOP(KM, KD, 0) }
#define PROPOSE_PAIR(KD) \
    if (t->kind_m == PLAIN) { PROPOSE_W(PLAIN, KD) } \
    else if (t->kind_m == MOMENTUM) { PROPOSE_W(MOMENTUM, KD) } \
    else { PROPOSE_W(ADAM, KD) }
/* One child alone (a pair with a kind PROPOSE is not specialised on): its state, ‖Δ‖². */
#define ONE_LOOP(K, UPDATE, USE_W)                                                 \
    _Pragma("omp simd simdlen(16) reduction(+:s0)")                                \
    for (int64_t j = lo; j < hi; j++) {                                            \
        REAL d = F(rule)(K, km, g[j], USE_W ? w[j] : 0, m0 + j, m1 + j, UPDATE);   \
        s0 += d * d;                                                               \
    }
#define ONE_W(K, UPDATE) \
    if (t->use_w) { ONE_LOOP(K, UPDATE, 1) } else { ONE_LOOP(K, UPDATE, 0) }
#define ONE(K) \
    if (IN_APPLY(K) && t->op == PROPOSE_D) { ONE_W(K, 0) } else { ONE_W(K, 1) } break;
#define APPLY_LOOP(KD, USE_G)                                                      \
    _Pragma("omp simd simdlen(16) reduction(+:s0)")                                            \
    for (int64_t j = lo; j < hi; j++) {                                            \
        REAL wj = w[j];                                                            \
        REAL dd = F(rule)(KD, kd, USE_G ? g[j] : 0, wj, d0 + j, d1 + j, IN_APPLY(KD)); \
        s0 += wj * wj;                                                             \
        w[j] = wj + dd * s;                                                        \
    }

/* ‖g‖² of g[start, end): its halves as two streams (one alone leaves the memory system
 * idle: ~15 % slower from memory, one thread). */
static double F(sumsq)(const REAL *g, const int64_t start, const int64_t end) {
    const int64_t half = (end - start) / 2;
    const REAL *h = g + half;
    double sum0 = 0, sum1 = 0;
    for (int64_t lo = start; lo < start + half; lo += BLOCK) {
        const int64_t hi = lo + BLOCK < start + half ? lo + BLOCK : start + half;
        REAL s0 = 0, s1 = 0;
        _Pragma("omp simd simdlen(16) reduction(+:s0, s1)")
        for (int64_t j = lo; j < hi; j++) {
            s0 += g[j] * g[j];
            s1 += h[j] * h[j];
        }
        sum0 += s0;
        sum1 += s1;
    }
    if ((end - start) % 2)
        sum0 += (double)g[end - 1] * g[end - 1];
    return sum0 + sum1;
}

static void F(chunk)(const Task *t, int64_t i, int64_t start, int64_t end, double *out) {
#define AT(k) (t->ptr[k] ? (REAL *)t->ptr[k][i] : 0)
    REAL *g = AT(0), *w = AT(1), *m0 = AT(2), *m1 = AT(3), *d0 = AT(4), *d1 = AT(5);
#undef AT
    const double zeros[NCOEF] = {0};
    const F(Coef) km = F(coef)(t->coef_m ? t->coef_m + i * NCOEF : zeros);
    const F(Coef) kd = F(coef)(t->coef_d ? t->coef_d + i * NCOEF : zeros);
    const REAL s = t->scale ? ((const REAL *)t->scale)[i] : 0;
    if (t->op == SUMSQ) {  /* read only: ‖g‖², ‖w‖² (either may be absent); ‖g‖² as the
                            * guarded scan's, bit for bit */
        out[0] = g ? F(sumsq)(g, start, end) : 0;
        out[1] = w ? F(sumsq)(w, start, end) : 0;
        return;
    }
    if (t->op == ZERO_IF && s != 0)
        for (int64_t j = start; j < end; j++) g[j] = 0;  /* a skipped layer's gradient */
    double sum0 = 0, sum1 = 0;
    for (int64_t lo = start; lo < end; lo += BLOCK) {
        const int64_t hi = lo + BLOCK < end ? lo + BLOCK : end;
        REAL s0 = 0, s1 = 0;  /* a block's sums in REAL, the chunk's in double */
        switch (t->op) {
        case SUMSQ_COPY:  /* ‖g‖², and the weights w copied to the scratch (slot 2) with ‖w‖² */
            _Pragma("omp simd simdlen(16) reduction(+:s0, s1)")
            for (int64_t j = lo; j < hi; j++) {
                const REAL wj = w[j];
                s0 += g[j] * g[j];
                m0[j] = wj;
                s1 += wj * wj;
            }
            break;
        case DIFF_SUMSQ_RESTORE:  /* g: the weights after a child's step, w: the scratch */
            _Pragma("omp simd simdlen(16) reduction(+:s0)")
            for (int64_t j = lo; j < hi; j++) {
                REAL d = g[j] - w[j];
                s0 += d * d;
                g[j] = w[j];
            }
            break;
        case DIFF_SUMSQ:
            _Pragma("omp simd simdlen(16) reduction(+:s0)")
            for (int64_t j = lo; j < hi; j++) { REAL d = g[j] - w[j]; s0 += d * d; }
            break;
        case BLEND:  /* w_new = scale · (w_after_D − w_before) + w_before */
            _Pragma("omp simd")
            for (int64_t j = lo; j < hi; j++) g[j] = (g[j] - w[j]) * s + w[j];
            break;
        case PROPOSE:
            if (t->kind_d == PLAIN) { PROPOSE_PAIR(PLAIN) }
            else if (t->kind_d == MOMENTUM) { PROPOSE_PAIR(MOMENTUM) }
            else { PROPOSE_PAIR(ADAM) }
            break;
        case PROPOSE_M:  /* slots 2, 3 and coef_m hold the child's, kind_m its kind */
        case PROPOSE_D:
            switch (t->kind_m) {
            case PLAIN: ONE(PLAIN)
            case MOMENTUM: ONE(MOMENTUM)
            case ADAM: ONE(ADAM)
            case ADAGRAD: ONE(ADAGRAD)
            case RMSPROP: ONE(RMSPROP)
            case RMSPROP_MOMENTUM: ONE(RMSPROP_MOMENTUM)
            case SIGN: ONE(SIGN)
            case SIGN_MOMENTUM: ONE(SIGN_MOMENTUM)
            case LION: ONE(LION)
            }
            break;
        case APPLY:  /* w += scale · Δ_D, Δ_D recomputed from D's updated state (g if needed) */
            switch (t->kind_d) {
            case PLAIN: APPLY_LOOP(PLAIN, 1) break;
            case MOMENTUM:  /* Nesterov: the step reads g again */
                if (g) { APPLY_LOOP(MOMENTUM, 1) } else { APPLY_LOOP(MOMENTUM, 0) } break;
            case ADAM: APPLY_LOOP(ADAM, 0) break;
            case ADAGRAD: APPLY_LOOP(ADAGRAD, 1) break;
            case RMSPROP: APPLY_LOOP(RMSPROP, 1) break;
            case RMSPROP_MOMENTUM: APPLY_LOOP(RMSPROP_MOMENTUM, 0) break;
            case SIGN: APPLY_LOOP(SIGN, 1) break;
            case SIGN_MOMENTUM: APPLY_LOOP(SIGN_MOMENTUM, 0) break;
            case LION: APPLY_LOOP(LION, 1) break;
            }
            break;
        }
        sum0 += s0;
        sum1 += s1;
    }
    out[0] = sum0;
    out[1] = sum1;
}

/* The tensor of chunk c: the last i in [lo, hi] with first[i] <= c. */
static int64_t F(tensor_of)(const Task *t, int64_t c, int64_t lo, int64_t hi) {
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (t->first[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

static void F(run_chunk)(const Task *t, int64_t c, int64_t i) {
    const int64_t lo = (c - t->first[i]) * CHUNK;
    const int64_t hi = lo + CHUNK < t->numel[i] ? lo + CHUNK : t->numel[i];
    F(chunk)(t, i, lo, hi, t->partial + 3 * c);
}

/* Whether the layers of a segment's tensors [a, b) are finite, from their ‖g‖² (as
 * fused.py's norms would be: per tensor in REAL, per layer summed in REAL); into skip[]. */
static void F(flags)(const Task *t, int64_t a, int64_t b, REAL *acc, double *skip) {
    for (int64_t i = a; i < b; i++) {
        const REAL norm = (REAL)sqrt(t->grad_sums[i]);
        if (t->layer) acc[t->layer[i]] = 0;
        else skip[i] = !isfinite(norm);
    }
    if (!t->layer) return;
    for (int64_t i = a; i < b; i++) {
        const REAL norm = (REAL)sqrt(t->grad_sums[i]);
        acc[t->layer[i]] += norm * norm;
    }
    for (int64_t i = a; i < b; i++) skip[i] = !isfinite(acc[t->layer[i]]);
}

/* A guarded pass's segment [a, b) after its scan: ‖g‖² per tensor and the skip flags. */
static void F(scanned)(const Task *t, int64_t a, int64_t b, REAL *acc, double *skip) {
    for (int64_t i = a; i < b; i++) {
        double sum = 0;
        for (int64_t c = t->first[i]; c < t->first[i + 1]; c++) sum += t->partial[3 * c + 2];
        t->grad_sums[i] = sum;
    }
    if (t->guard == SKIP_NONFINITE) F(flags)(t, a, b, acc, skip);
}

/* Chunk c of tensor i in a guarded pass: ‖g‖² (scan) or, after the scan, the zeroing of a
 * skipped layer's gradient and the proposal. */
static void F(guarded_chunk)(const Task *t, int64_t c, int64_t i, int scan, const double *skip) {
    const int64_t start = (c - t->first[i]) * CHUNK;
    const int64_t end = start + CHUNK < t->numel[i] ? start + CHUNK : t->numel[i];
    REAL *g = (REAL *)t->ptr[0][i];
    if (scan) {
        t->partial[3 * c + 2] = F(sumsq)(g, start, end);
        return;
    }
    if (skip[i])  /* a skipped layer: its children see a zero gradient */
        for (int64_t j = start; j < end; j++) g[j] = 0;
    F(chunk)(t, i, start, end, t->partial + 3 * c);
}

/* A guarded PROPOSE/PROPOSE_M, segment by segment (whole layers): the segment's gradients
 * are scanned for ‖g‖², its layers flagged finite or not, then its chunks are proposed
 * while they are still in the core's cache (a non-finite layer's gradient zeroed first):
 * one pass over the gradients from memory, not two. A segment of up to SOLO chunks is one
 * thread's (segments go out dynamically: no barrier between them); a larger one is shared,
 * each thread proposing the chunks it scanned, at the cost of two barriers. */
static int F(guarded)(const Task *t, int threads) {
    enum { SOLO = 32 };  /* 2 MiB of float32 gradient: within one core's L2 here */
    const int64_t chunks = t->first[t->n];
    int *owner = malloc(chunks * sizeof(int));
    REAL *acc = malloc(t->n * sizeof(REAL));  /* per layer; layers never span segments */
    double *skip = calloc(t->n, sizeof(double));
    if (!owner || !acc || !skip) {
        free(owner), free(acc), free(skip);
        return 1;
    }
#pragma omp parallel num_threads(threads > 1 ? threads : 1)
    {
        #pragma omp for schedule(dynamic, 1) nowait
        for (int64_t s = 0; s < t->segments; s++) {
            const int64_t a = t->segment[s], b = t->segment[s + 1];
            if (t->first[b] - t->first[a] > SOLO) continue;
            for (int scan = 1; scan >= 0; scan--) {
                for (int64_t i = a; i < b; i++)
                    for (int64_t c = t->first[i]; c < t->first[i + 1]; c++)
                        F(guarded_chunk)(t, c, i, scan, skip);
                if (scan) F(scanned)(t, a, b, acc, skip);
            }
        }
        for (int64_t s = 0; s < t->segments; s++) {
            const int64_t a = t->segment[s], b = t->segment[s + 1];
            const int64_t lo = t->first[a], hi = t->first[b];
            if (hi - lo <= SOLO) continue;
            #pragma omp for schedule(dynamic, 1)
            for (int64_t c = lo; c < hi; c++) {
                owner[c] = THREAD();
                F(guarded_chunk)(t, c, F(tensor_of)(t, c, a, b - 1), 1, skip);
            }
            #pragma omp single
            F(scanned)(t, a, b, acc, skip);
            const int me = THREAD();
            for (int64_t i = a; i < b; i++)
                for (int64_t c = t->first[i]; c < t->first[i + 1]; c++)
                    if (owner[c] == me) F(guarded_chunk)(t, c, i, 0, skip);
        }
    }
    free(owner), free(acc), free(skip);
    return 0;
}

/* One pass over every chunk, shared out by OpenMP among up to `threads` threads. The kernels
 * link libgomp.so.1, which torch has loaded already: they run on the very thread team of
 * torch's own CPU kernels (two runtimes would have two teams spinning for the same cores).
 * Chunks go out dynamically, so a thread that another process slows down takes fewer. */
int F(graft_pass)(const Task *task, int threads) {
    Task own = *task;
    const Task *t = &own;
    const int64_t chunks = t->first[t->n];
    own.partial = malloc(3 * chunks * sizeof(double));
    own.grad_sums = calloc(t->n, sizeof(double));  /* stays 0 unless guarded */
    int failed = !own.partial || !own.grad_sums;
    if (!failed && t->guard != UNGUARDED) {
        failed = F(guarded)(t, threads);
    } else if (!failed) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads > 1 ? threads : 1)
        for (int64_t c = 0; c < chunks; c++) F(run_chunk)(t, c, F(tensor_of)(t, c, 0, t->n - 1));
    }
    REAL *norms = t->norms;
    for (int64_t i = 0; !failed && i < t->n; i++) {
        double s0 = 0, s1 = 0;
        for (int64_t c = t->first[i]; c < t->first[i + 1]; c++) {
            s0 += t->partial[3 * c];
            s1 += t->partial[3 * c + 1];
        }
        norms[i] = (REAL)sqrt(s0);  /* as torch rounds a double norm to REAL */
        norms[t->n + i] = (REAL)sqrt(s1);
        norms[2 * t->n + i] = (REAL)sqrt(t->grad_sums[i]);
    }
    free(own.partial), free(own.grad_sums);
    return failed;
}
