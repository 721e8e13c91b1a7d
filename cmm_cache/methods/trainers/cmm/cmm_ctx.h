/* The vector helpers and the run state of cmm_loop.c (included, not compiled alone). */
#ifndef CMM_CTX_H
#define CMM_CTX_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cmm_pool.h"

#define VL 16                 /* floats per vector (64 bytes) */
#define MAXB 64               /* largest batch the kernel takes (Python falls back above) */
#define NCHUNK 8              /* chunks of every parallel pass (fixed: determinism) */
typedef float vf __attribute__((vector_size(VL * 4)));

/* Unaligned vector access typed as float (memcpy would let every store alias the context's pointer fields,
 * forcing the compiler to reload them in the inner loops). */
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
static inline vf ld(const float *p) { return *(const vfu *)p; }
static inline void st(float *p, vf a) { *(vfu *)p = a; }
static inline vf splat(float a) { return (vf){0} + a; } /* one broadcast (a lane loop became 16 masked ones) */
static inline vf vsqrt(vf a) { vf r; for (int k = 0; k < VL; k++) r[k] = sqrtf(a[k]); return r; }
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
/* Horizontal sum as a tree (a chain of 15 scalar adds would dominate the T pass). */
static inline float hsum(vf a) {
  vf8 lo, hi;
  memcpy(&lo, &a, sizeof lo);
  memcpy(&hi, (char *)&a + sizeof lo, sizeof hi);
  vf8 s8 = lo + hi;
  vf4 l4, h4;
  memcpy(&l4, &s8, sizeof l4);
  memcpy(&h4, (char *)&s8 + sizeof l4, sizeof h4);
  vf4 s4 = l4 + h4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

#include "cmm_pool.h"


static float dot(const float *p, const float *q, int L) {
  vf s0 = splat(0), s1 = splat(0);
  int k = 0;
  for (; k + 2 * VL <= L; k += 2 * VL) {
    s0 += ld(p + k) * ld(q + k);
    s1 += ld(p + k + VL) * ld(q + k + VL);
  }
  for (; k < L; k += VL) s0 += ld(p + k) * ld(q + k);
  return hsum(s0 + s1);
}

static inline void chunk_range(int n, int chunk, int nchunks, int *a, int *b) {
  *a = (int)((int64_t)n * chunk / nchunks);
  *b = (int)((int64_t)n * (chunk + 1) / nchunks);
}

/* ------------------------------------------------------------------------ */
/* The state of one run. Rows are padded to `ld` floats (a multiple of VL, zero */
/* in the padding, and not a multiple of 1 KiB so rows do not alias in caches).  */

typedef struct {
  int B, C, d, N, ld;
  int tch;             /* chunks of the T passes: 1 for a small T (never split), else NCHUNK */
  int use_map, triplet, norm_T, cmm_only, logit;
  float alpha, margin, wd, beta1, beta2, eps;
  const float *x;      /* [N, d] normalized samples (caller's memory) */
  const int64_t *y;    /* [N] */
  const float *p0y;    /* [N] softmax(100 v̂ T0ᵀ)[y] (probability fusion) */
  float *block;        /* one allocation holding everything below */
  float *W, *mW, *vW;  /* [d, ld]: W with u = v̂ W + v̂ (row i of W = input feature i) */
  float *T, *mT, *vT;  /* [C, ld] */
  float *T0;           /* [C, ld] (logit fusion) */
  float *xb, *xn;      /* [B, ld] this step's and the next step's samples */
  float *xt, *xnt;     /* [d, B] the same, transposed (x[b, i] for one i are adjacent) */
  float *u, *uh;       /* [B, ld] u = v̂ W + v̂ and û */
  float un[MAXB];      /* |u_b| */
  float *guh, *gu;     /* [B, ld] ∂L/∂û, ∂L/∂u */
  float *part;         /* [NCHUNK, B, ld] partial sums of the parallel passes */
  float *R;            /* [2B, C] A Tᵀ, A = [û; v̂] */
  float *Z0;           /* [B, C] v̂ T0ᵀ (logit fusion) */
  float *Gs, *Gc;      /* [B, C] ∂L/∂s (scaled by 1/|T_j| when T is normalized in s); triplet ∂L/∂c / |T_j| */
  float *GsT, *GcT;    /* [C, B] the same, transposed for the T pass */
  float *inv, *cf;     /* [C] 1/|T_j|, coefficient of T_j in gT */
  char *tri_row;       /* [C] row j has a triplet term this step */
  int64_t u_step;      /* the iteration whose u is in `u` (-1: none) */
  pool_t pool;
  /* per-pass arguments */
  const int64_t *cur, *nxt;
  double step_size, inv_bc2s, decay;
} ctx_t;

#endif
