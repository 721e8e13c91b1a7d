/* The CMM training loop on the CPU, in one call per segment of iterations.
 *
 * Built on first use by cmm_cache/cpu_kernel.py with the system C compiler and
 * loaded through ctypes: no Python or torch headers, only raw float pointers.
 * It computes exactly the step of cmm_cache/fit.py (the hand-derived gradients
 * of cmm_grads, then AdamW as torch's fused kernel does it), but fuses the
 * passes over the d×d map W into one: for each row i of W it forms the rank-B
 * gradient gW[i,:] = Σ_b v̂[b,i] ∂L/∂u[b,:] in registers (gW is never
 * written), applies AdamW to W, m, v, and accumulates the next step's
 * u = v̂' W + v̂' with the freshly updated row (the batches are known up front).
 * A step then reads and writes W, m and v once, and nothing else of size d².
 *
 * Determinism: every parallel pass is cut into a fixed number of chunks that
 * does not depend on the number of threads, and partial sums are reduced in a
 * fixed order, so 1 and 2 threads give bit-identical weights (the thread count
 * may change between segments without changing a run's numbers).
 *
 * Threads: helpers spin only briefly, then sleep on a condition variable; the
 * caller takes chunks itself, so a descheduled helper costs at most the chunk
 * it holds. Python decides the thread count per segment by measuring.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cmm_ctx.h"

static size_t round_up(size_t a, size_t m) { return (a + m - 1) / m * m; }

void *cmm_new(int B, int C, int d, int N, const int *flags, const float *params,
              const float *x, const int64_t *y, const float *p0y, const float *T0) {
  if (B < 1 || B > MAXB || C < 2 || d < 1) return NULL;
  ctx_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->B = B; c->C = C; c->d = d; c->N = N;
  c->ld = (int)round_up(d, VL);
  if ((c->ld * 4) % 1024 == 0) c->ld += VL;
  c->use_map = flags[0]; c->triplet = flags[1]; c->norm_T = flags[2]; c->cmm_only = flags[3]; c->logit = flags[4];
  c->alpha = params[0]; c->margin = params[1]; c->wd = params[2];
  c->beta1 = params[3]; c->beta2 = params[4]; c->eps = params[5];
  c->x = x; c->y = y; c->p0y = p0y;
  size_t L = c->ld, dd = c->use_map ? (size_t)d * L : 0, CL = (size_t)C * L, BL = (size_t)B * L;
  size_t dB = (size_t)d * B, BC = (size_t)B * C;
  /* sizes in floats, each padded to 64 bytes, plus a distinct skew so the big arrays do not alias */
  size_t sizes[] = {dd, dd, dd, CL, CL, CL, c->logit ? CL : 0, BL, BL, dB, dB, BL, BL, BL, BL,
                    NCHUNK * BL, 2 * BC, BC, BC, BC, BC, BC, C, C, C};
  float **dst[] = {&c->W, &c->mW, &c->vW, &c->T, &c->mT, &c->vT, &c->T0, &c->xb, &c->xn, &c->xt, &c->xnt,
                   &c->u, &c->uh, &c->guh, &c->gu, &c->part, &c->R, &c->Z0, &c->Gs, &c->Gc, &c->GsT, &c->GcT,
                   &c->inv, &c->cf,
                   (float **)&c->tri_row};
  int n = (int)(sizeof sizes / sizeof sizes[0]);
  size_t total = 0;
  for (int i = 0; i < n; i++) total += round_up(sizes[i], VL) + VL * (i % 7);
  if (posix_memalign((void **)&c->block, 64, (total + VL) * sizeof(float)) != 0) { free(c); return NULL; }
  memset(c->block, 0, (total + VL) * sizeof(float));
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    off += VL * (i % 7);
    *dst[i] = c->block + off;
    off += round_up(sizes[i], VL);
  }
  for (int j = 0; j < C; j++) {
    memcpy(c->T + (size_t)j * L, T0 + (size_t)j * d, d * sizeof(float));
    if (c->logit) memcpy(c->T0 + (size_t)j * L, T0 + (size_t)j * d, d * sizeof(float));
  }
  c->u_step = -1;
  /* A small T is never worth a hand-off; the chunk count depends on the shape only (determinism). */
  c->tch = (size_t)C * c->ld >= 65536 ? NCHUNK : 1;
  pthread_mutex_init(&c->pool.mu, NULL);
  pthread_cond_init(&c->pool.cv, NULL);
  return c;
}

void cmm_free(void *h) {
  ctx_t *c = (ctx_t *)h;
  if (!c) return;
  pool_stop(&c->pool);
  pthread_mutex_destroy(&c->pool.mu);
  pthread_cond_destroy(&c->pool.cv);
  free(c->block);
  free(c);
}

/* Copy W ([d, d], u = v̂ W + v̂) and T ([C, d]) out. */
void cmm_get(void *h, float *W, float *T) {
  ctx_t *c = (ctx_t *)h;
  if (W && c->use_map)
    for (int i = 0; i < c->d; i++) memcpy(W + (size_t)i * c->d, c->W + (size_t)i * c->ld, c->d * sizeof(float));
  for (int j = 0; j < c->C; j++) memcpy(T + (size_t)j * c->d, c->T + (size_t)j * c->ld, c->d * sizeof(float));
}

/* ------------------------------------------------------------------------ */
/* Passes */


/* Load a batch: rows into xs [B, ld] (zero padding stays) and transposed into xts [d, B]. */
static void gather(ctx_t *c, const int64_t *idx, float *xs, float *xts) {
  int B = c->B, d = c->d;
  for (int b = 0; b < B; b++) {
    const float *src = c->x + (size_t)idx[b] * d;
    memcpy(xs + (size_t)b * c->ld, src, d * sizeof(float));
    for (int i = 0; i < d; i++) xts[(size_t)i * B + b] = src[i];
  }
}

/* u_part[chunk] = xs[:, rows] W[rows, :] for the chunk's rows (the first chunk also adds xs). */
static inline __attribute__((always_inline)) void upass_impl(ctx_t *c, int chunk, const int B) {
  int i0, i1, L = c->ld;
  chunk_range(c->d, chunk, NCHUNK, &i0, &i1);
  float *out = c->part + (size_t)chunk * B * L;
  for (int j = 0; j < L; j += VL) {
    vf acc[MAXB];
    for (int b = 0; b < B; b++) acc[b] = chunk == 0 ? ld(c->xn + (size_t)b * L + j) : splat(0);
    for (int i = i0; i < i1; i++) {
      vf w = ld(c->W + (size_t)i * L + j);
      const float *xi = c->xnt + (size_t)i * B;
      for (int b = 0; b < B; b++) acc[b] += w * xi[b];
    }
    for (int b = 0; b < B; b++) st(out + (size_t)b * L + j, acc[b]);
  }
}
static void upass8(void *a, int k) { upass_impl((ctx_t *)a, k, 8); }
static void upassn(void *a, int k) { upass_impl((ctx_t *)a, k, ((ctx_t *)a)->B); }

/* u = Σ_chunks part, in chunk order. */
static void reduce_parts(ctx_t *c, float *u, int nchunks) {
  size_t n = (size_t)c->B * c->ld;
  memcpy(u, c->part, n * sizeof(float));
  for (int k = 1; k < nchunks; k++) {
    const float *p = c->part + (size_t)k * n;
    for (size_t e = 0; e < n; e += VL) st(u + e, ld(u + e) + ld(p + e));
  }
}

/* Σ_b gu[b] xi[b] as a tree of four independent products per level (a short dependency chain). */
static inline __attribute__((always_inline)) vf rowgrad(const vf *gu, const float *xi, const int B) {
  if (B % 4 == 0) {
    vf g0 = gu[0] * xi[0], g1 = gu[1] * xi[1], g2 = gu[2] * xi[2], g3 = gu[3] * xi[3];
    for (int b = 4; b < B; b += 4) {
      g0 += gu[b] * xi[b];
      g1 += gu[b + 1] * xi[b + 1];
      g2 += gu[b + 2] * xi[b + 2];
      g3 += gu[b + 3] * xi[b + 3];
    }
    return (g0 + g1) + (g2 + g3);
  }
  vf g = gu[0] * xi[0];
  for (int b = 1; b < B; b++) g += gu[b] * xi[b];
  return g;
}

/* The fused W pass for the chunk's rows: gW = v̂ᵀ ∂L/∂u (never stored), AdamW, next u. */
static inline __attribute__((always_inline)) void wpass_impl(ctx_t *c, int chunk, const int B, const int next) {
  int i0, i1;
  const int L = c->ld;
  float *restrict W = c->W, *restrict mW = c->mW, *restrict vW = c->vW;
  const float *restrict gup = c->gu, *restrict xt = c->xt, *restrict xnt = c->xnt, *restrict xn = c->xn;
  chunk_range(c->d, chunk, NCHUNK, &i0, &i1);
  const vf decay = splat((float)c->decay), ss = splat((float)c->step_size), ibc = splat((float)c->inv_bc2s);
  const vf b1 = splat(c->beta1), ob1 = splat(1 - c->beta1), b2 = splat(c->beta2), ob2 = splat(1 - c->beta2);
  const vf eps = splat(c->eps);
  float *restrict out = c->part + (size_t)chunk * B * L;
#ifndef CMM_RB
#define CMM_RB 4
#endif
  enum { RB = CMM_RB };
  for (int ib = i0; ib < i1; ib += RB) {
    int ie = ib + RB < i1 ? ib + RB : i1;
    for (int j = 0; j < L; j += VL) {
      vf gu[MAXB], acc[MAXB];
      for (int b = 0; b < B; b++) gu[b] = ld(gup + (size_t)b * L + j);
      if (next) {
        for (int b = 0; b < B; b++)
          acc[b] = ib > i0 ? ld(out + (size_t)b * L + j) : (chunk == 0 ? ld(xn + (size_t)b * L + j) : splat(0));
      }
      for (int i = ib; i < ie; i++) {
        size_t o = (size_t)i * L + j;
        const float *xi = xt + (size_t)i * B;
        vf g = rowgrad(gu, xi, B);
        vf m = ld(mW + o), v = ld(vW + o);
        m = b1 * m + ob1 * g;
        v = b2 * v + ob2 * g * g;
        vf w = ld(W + o) * decay - ss * m / (vsqrt(v) * ibc + eps);
        st(mW + o, m);
        st(vW + o, v);
        st(W + o, w);
        if (next) {
          const float *xni = xnt + (size_t)i * B;
          for (int b = 0; b < B; b++) acc[b] += w * xni[b];
        }
      }
      if (next)
        for (int b = 0; b < B; b++) st(out + (size_t)b * L + j, acc[b]);
    }
  }
}
static void wpass8n(void *a, int k) { wpass_impl((ctx_t *)a, k, 8, 1); }
static void wpass8(void *a, int k) { wpass_impl((ctx_t *)a, k, 8, 0); }
static void wpassnn(void *a, int k) { wpass_impl((ctx_t *)a, k, ((ctx_t *)a)->B, 1); }
static void wpassn(void *a, int k) { wpass_impl((ctx_t *)a, k, ((ctx_t *)a)->B, 0); }

/* Rows of A = [û; v̂] (2B rows with the triplet term, else B). */
static inline const float *arow(const ctx_t *c, int a) {
  return a < c->B ? c->uh + (size_t)a * c->ld : c->xb + (size_t)(a - c->B) * c->ld;
}


/* Dots of rows t0 (and t1, if not NULL) with up to 8 rows q[0..n): out0[r * stride] = q_r · t0, likewise out1.
 * Two T rows share each load of q (the loads, not the FMAs, bound this pass). */
static inline __attribute__((always_inline)) void dots_impl(const float *t0, const float *t1, const float *const *q,
                                                           const int n, int L, float *out0, float *out1,
                                                           size_t stride) {
  vf a0[8], a1[8];
  for (int r = 0; r < 8; r++) a0[r] = a1[r] = splat(0);
  if (t1) {
    for (int k = 0; k < L; k += VL) {
      vf x0 = ld(t0 + k), x1 = ld(t1 + k);
      for (int r = 0; r < n; r++) {
        vf qk = ld(q[r] + k);
        a0[r] += qk * x0;
        a1[r] += qk * x1;
      }
    }
    for (int r = 0; r < n; r++) out1[r * stride] = hsum(a1[r]);
  } else {
    for (int k = 0; k < L; k += VL) {
      vf x0 = ld(t0 + k);
      for (int r = 0; r < n; r++) a0[r] += ld(q[r] + k) * x0;
    }
  }
  for (int r = 0; r < n; r++) out0[r * stride] = hsum(a0[r]);
}

/* With n a constant the accumulators live in registers; the general n (a batch tail) is rare. */
static void dots8x2(const float *t0, const float *t1, const float *const *q, int n, int L, float *out0, float *out1,
                    size_t stride) {
  if (n == 8)
    dots_impl(t0, t1, q, 8, L, out0, out1, stride);
  else
    dots_impl(t0, t1, q, n, L, out0, out1, stride);
}

/* T pass 1, the chunk's classes j: R[a, j] = A_a · T_j, 1/|T_j|, and v̂ T0ᵀ for logit fusion. */
static void tpass1(void *arg, int chunk) {
  ctx_t *c = (ctx_t *)arg;
  int j0, j1, L = c->ld, B = c->B, C = c->C, na = c->triplet ? 2 * B : B;
  chunk_range(C, chunk, c->tch, &j0, &j1);
  const float *rows[2 * MAXB], *xrows[MAXB];
  for (int a = 0; a < na; a++) rows[a] = arow(c, a);
  for (int b = 0; b < B; b++) xrows[b] = c->xb + (size_t)b * L;
  for (int j = j0; j < j1; j += 2) {
    int two = j + 1 < j1;
    const float *t = c->T + (size_t)j * L, *t1 = two ? t + L : NULL;
    for (int a = 0; a < na; a += 8) {
      float *o = c->R + (size_t)a * C + j;
      dots8x2(t, t1, rows + a, na - a < 8 ? na - a : 8, L, o, o + 1, C);
    }
    c->inv[j] = 1.0f / sqrtf(dot(t, t, L));
    if (two) c->inv[j + 1] = 1.0f / sqrtf(dot(t1, t1, L));
    if (c->logit) {
      const float *z = c->T0 + (size_t)j * L;
      for (int b = 0; b < B; b += 8) {
        float *o = c->Z0 + (size_t)b * C + j;
        dots8x2(z, two ? z + L : NULL, xrows + b, B - b < 8 ? B - b : 8, L, o, o + 1, C);
      }
    }
  }
}

/* T pass 2 for rows j0..j1 (at most 4): gT (never stored), AdamW on T, and ∂L/∂û += Gs T (old T) into gp.
 * Rows go in blocks so that û and the ∂L/∂û accumulators are loaded once per block, not per row. */
static inline __attribute__((always_inline)) void tblock(ctx_t *c, int j0, int j1, float *restrict gp, const int B) {
  const int L = c->ld;
  float *restrict T = c->T, *restrict mT = c->mT, *restrict vT = c->vT;
  const float *restrict uhp = c->uh, *restrict xb = c->xb, *restrict GsT = c->GsT, *restrict GcT = c->GcT;
  const float *restrict cfp = c->cf;
  const char *restrict tri_row = c->tri_row;
  const vf decay = splat((float)c->decay), ss = splat((float)c->step_size), ibc = splat((float)c->inv_bc2s);
  const vf b1 = splat(c->beta1), ob1 = splat(1 - c->beta1), b2 = splat(c->beta2), ob2 = splat(1 - c->beta2);
  const vf eps = splat(c->eps);
  const int map = c->use_map;
  for (int k = 0; k < L; k += VL) {
    vf uh[MAXB], acc[MAXB];
    for (int b = 0; b < B; b++) uh[b] = ld(uhp + (size_t)b * L + k);
    for (int b = 0; b < B; b++) acc[b] = map ? ld(gp + (size_t)b * L + k) : splat(0);
    for (int j = j0; j < j1; j++) {
      size_t o = (size_t)j * L + k;
      const float *gs = GsT + (size_t)j * B;
      vf t = ld(T + o);
      vf g = rowgrad(uh, gs, B) + splat(cfp[j]) * t;
      if (tri_row[j]) {
        const float *gc = GcT + (size_t)j * B;
        for (int b = 0; b < B; b++) g += gc[b] * ld(xb + (size_t)b * L + k);
      }
      if (map)
        for (int b = 0; b < B; b++) acc[b] += gs[b] * t;
      vf m = ld(mT + o), v = ld(vT + o);
      m = b1 * m + ob1 * g;
      v = b2 * v + ob2 * g * g;
      st(mT + o, m);
      st(vT + o, v);
      st(T + o, t * decay - ss * m / (vsqrt(v) * ibc + eps));
    }
    if (map)
      for (int b = 0; b < B; b++) st(gp + (size_t)b * L + k, acc[b]);
  }
}

static inline __attribute__((always_inline)) void tpass2_impl(ctx_t *c, int chunk, const int B) {
  int j0, j1;
  chunk_range(c->C, chunk, c->tch, &j0, &j1);
  float *gp = c->part + (size_t)chunk * B * c->ld;
  if (c->use_map) memset(gp, 0, (size_t)B * c->ld * sizeof(float));
  for (int j = j0; j < j1; j += 4) tblock(c, j, j + 4 < j1 ? j + 4 : j1, gp, B);
}
static void tpass2_8(void *a, int k) { tpass2_impl((ctx_t *)a, k, 8); }
static void tpass2_n(void *a, int k) { tpass2_impl((ctx_t *)a, k, ((ctx_t *)a)->B); }

/* The step's small part: softmax, fusion, triplet; ∂L/∂s, ∂L/∂c and the loss. */
static float middle(ctx_t *c) {
  int B = c->B, C = c->C;
  const int64_t *idx = c->cur;
  float loss = 0, scale = 100.0f;
  if (c->norm_T || c->triplet) memset(c->cf, 0, C * sizeof(float));
  for (int b = 0; b < B; b++) {
    int64_t yb = c->y[idx[b]];
    float *s = c->R + (size_t)b * C, *g = c->Gs + (size_t)b * C;
    if (c->norm_T)
      for (int j = 0; j < C; j++) s[j] *= c->inv[j];
    float mx = -INFINITY, sum = 0;
    for (int j = 0; j < C; j++) {
      float z = c->logit ? c->alpha * scale * s[j] + scale * c->Z0[(size_t)b * C + j] : scale * s[j];
      g[j] = z;
      mx = z > mx ? z : mx;
    }
    for (int j = 0; j < C; j++) sum += (g[j] = expf(g[j] - mx));
    for (int j = 0; j < C; j++) g[j] /= sum;
    float py = g[yb], r;
    if (c->cmm_only) {
      r = scale / B;
      loss -= logf(py);
    } else if (c->logit) {
      r = c->alpha * scale / B;
      loss -= logf(py);
    } else {
      float P = c->alpha * py + c->p0y[idx[b]];
      r = (c->alpha * scale / B) * py / P;
      loss -= logf(P);
    }
    for (int j = 0; j < C; j++) g[j] *= r;
    g[yb] -= r;
    if (c->norm_T)
      for (int j = 0; j < C; j++) {
        c->cf[j] -= g[j] * s[j];
        g[j] *= c->inv[j];
      }
  }
  loss /= B;
  if (c->triplet) {
    memset(c->Gc, 0, (size_t)B * C * sizeof(float));
    memset(c->tri_row, 0, C);
    float tri = 0;
    for (int b = 0; b < B; b++) {
      int64_t yb = c->y[idx[b]];
      const float *r = c->R + (size_t)(B + b) * C;
      float cpos = r[yb] * c->inv[yb], cneg = -INFINITY;
      int jn = -1;
      for (int j = 0; j < C; j++) {
        float cj = r[j] * c->inv[j];
        if (j != yb && cj > cneg) { cneg = cj; jn = j; }
      }
      float hinge = cneg - cpos + c->margin;
      if (hinge > 0) {
        float act = 1.0f / B;
        tri += hinge;
        c->Gc[(size_t)b * C + jn] += act * c->inv[jn];
        c->Gc[(size_t)b * C + yb] -= act * c->inv[yb];
        c->cf[jn] -= act * cneg;
        c->cf[yb] += act * cpos;
        c->tri_row[jn] = c->tri_row[yb] = 1;
      }
    }
    loss += tri / B;
  }
  if (c->norm_T || c->triplet)
    for (int j = 0; j < C; j++) c->cf[j] *= c->inv[j] * c->inv[j];
  for (int b = 0; b < B; b++)
    for (int j = 0; j < C; j++) c->GsT[(size_t)j * B + b] = c->Gs[(size_t)b * C + j];
  if (c->triplet)
    for (int b = 0; b < B; b++)
      for (int j = 0; j < C; j++) c->GcT[(size_t)j * B + b] = c->Gc[(size_t)b * C + j];
  return loss;
}

/* û from u, and |u|. */
static void normalize_u(ctx_t *c) {
  int L = c->ld;
  for (int b = 0; b < c->B; b++) {
    const float *u = (c->use_map ? c->u : c->xb) + (size_t)b * L;
    float n = sqrtf(dot(u, u, L));
    c->un[b] = n;
    float *uh = c->uh + (size_t)b * L;
    for (int k = 0; k < L; k++) uh[k] = u[k] / n;
  }
}

/* ∂L/∂u = (∂L/∂û − û (û·∂L/∂û)) / |u|. */
static void grad_u(ctx_t *c) {
  int L = c->ld;
  for (int b = 0; b < c->B; b++) {
    const float *uh = c->uh + (size_t)b * L, *gh = c->guh + (size_t)b * L;
    float *g = c->gu + (size_t)b * L;
    float p = dot(uh, gh, L), inv = 1.0f / c->un[b];
    for (int k = 0; k < L; k++) g[k] = (gh[k] - uh[k] * p) * inv;
  }
}

/* Iterations t0..t1-1 of a run of `iters` with batches [iters, B] and learning rates [iters].
 * losses[t - t0] receives each iteration's loss. Returns 0, or -1 if threads could not start. */
int cmm_run(void *h, const int64_t *batches, const double *lrs, int64_t iters, int64_t t0, int64_t t1, int nthreads,
            float *losses) {
  ctx_t *c = (ctx_t *)h;
  int B = c->B, par = nthreads > 1;
  if (par && pool_grow(&c->pool, (nthreads < MAXT ? nthreads : MAXT) - 1) != 0) return -1;
  int par_T = par && c->tch > 1;
  unsigned fp_mode = flush_denormals();
  chunk_fn up = B == 8 ? upass8 : upassn;
  for (int64_t t = t0; t < t1; t++) {
    c->cur = batches + t * B;
    c->nxt = t + 1 < iters ? batches + (t + 1) * B : NULL;
    if (c->use_map && c->u_step != t) {  /* first step of a run (or after a gap): u from scratch */
      gather(c, c->cur, c->xn, c->xnt);
      pool_run(&c->pool, par, up, c, NCHUNK);
      reduce_parts(c, c->u, NCHUNK);
    }
    gather(c, c->cur, c->xb, c->xt);
    normalize_u(c);
    double lr = lrs[t], step = (double)(t + 1);
    c->decay = 1.0 - lr * c->wd;
    c->step_size = lr / (1.0 - pow(c->beta1, step));
    c->inv_bc2s = 1.0 / sqrt(1.0 - pow(c->beta2, step));
    pool_run(&c->pool, par_T, tpass1, c, c->tch);
    losses[t - t0] = middle(c);
    pool_run(&c->pool, par_T, B == 8 ? tpass2_8 : tpass2_n, c, c->tch);
    if (!c->use_map) continue;
    reduce_parts(c, c->guh, c->tch);
    grad_u(c);
    int next = c->nxt != NULL;
    if (next) gather(c, c->nxt, c->xn, c->xnt);
    chunk_fn w = B == 8 ? (next ? wpass8n : wpass8) : (next ? wpassnn : wpassn);
    pool_run(&c->pool, par, w, c, NCHUNK);
    if (next) {
      reduce_parts(c, c->u, NCHUNK);
      c->u_step = t + 1;
    }
  }
  restore_denormals(fp_mode);
  return 0;
}

int cmm_abi_version(void) { return 1; }
