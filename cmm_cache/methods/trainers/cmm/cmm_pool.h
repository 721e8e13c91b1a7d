/* Helpers of cmm_loop.c: the floating-point mode and a small thread pool (included, not compiled alone). */
#ifndef CMM_POOL_H
#define CMM_POOL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define MAXT 8 /* threads */

/* ------------------------------------------------------------------------ */
/* Denormals: as the loss saturates, gradients and the AdamW moments of many weights decay
 * through the subnormal range (below 1e-38), where x86 arithmetic is many times slower (a
 * DTD-sized run measured 3× slower). Values that small change no update (eps = 1e-8 dominates
 * the AdamW denominator), so the loop flushes them to zero (FTZ/DAZ) and restores the caller's mode. */

static unsigned flush_denormals(void) {
#if defined(__SSE__)
  unsigned old = _mm_getcsr();
  _mm_setcsr(old | 0x8040); /* FTZ | DAZ */
  return old;
#elif defined(__aarch64__)
  uint64_t old;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(old));
  __asm__ __volatile__("msr fpcr, %0" : : "r"(old | (1ull << 24))); /* FZ */
  return (unsigned)old;
#else
  return 0;
#endif
}

static void restore_denormals(unsigned old) {
#if defined(__SSE__)
  _mm_setcsr(old);
#elif defined(__aarch64__)
  uint64_t v = old;
  __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
#else
  (void)old;
#endif
}

/* ------------------------------------------------------------------------ */
/* A small pool: chunks are claimed with one compare-and-swap on (gen, next). */

typedef void (*chunk_fn)(void *arg, int chunk);

typedef struct {
  _Atomic uint64_t state;      /* generation << 32 | chunks << 16 | next chunk */
  _Atomic int done;
  _Atomic int quit;
  _Atomic int sleepers;
  chunk_fn fn;
  void *arg;
  int nhelpers;
  pthread_t th[MAXT];
  pthread_mutex_t mu;
  pthread_cond_t cv;
} pool_t;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Claim and run chunks of generation `gen` until none is left. The chunk count
 * lives in the state word, so a successful claim proves the pass is still the
 * current one (fn and arg are not rewritten before all its chunks are done). */
static void take_chunks(pool_t *p, uint32_t gen) {
  for (;;) {
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    uint32_t g = (uint32_t)(s >> 32), n = (uint32_t)(s >> 16) & 0xffff, next = (uint32_t)s & 0xffff;
    if (g != gen || next >= n) return;
    if (atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel, memory_order_acquire)) {
      p->fn(p->arg, (int)next);
      atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
  }
}

static void *helper_main(void *arg) {
  pool_t *p = (pool_t *)arg;
  flush_denormals(); /* this thread only ever runs the loop's passes */
  uint32_t seen = (uint32_t)(atomic_load(&p->state) >> 32);
  while (!atomic_load(&p->quit)) {
    uint32_t gen = seen;
    /* Spin ~100 µs for the next pass (a step's serial part is shorter), then sleep. */
    for (int i = 0; i < 20000; i++) {
      gen = (uint32_t)(atomic_load_explicit(&p->state, memory_order_acquire) >> 32);
      if (gen != seen || atomic_load(&p->quit)) break;
      cpu_relax();
    }
    if (gen == seen) {
      pthread_mutex_lock(&p->mu);
      atomic_fetch_add(&p->sleepers, 1);
      while (!atomic_load(&p->quit) && (uint32_t)(atomic_load(&p->state) >> 32) == seen)
        pthread_cond_wait(&p->cv, &p->mu);
      atomic_fetch_sub(&p->sleepers, 1);
      pthread_mutex_unlock(&p->mu);
      continue;
    }
    seen = gen;
    take_chunks(p, gen);
  }
  return NULL;
}

static int pool_grow(pool_t *p, int nhelpers) {
  while (p->nhelpers < nhelpers && p->nhelpers < MAXT - 1) {
    if (pthread_create(&p->th[p->nhelpers], NULL, helper_main, p) != 0) return -1;
    p->nhelpers++;
  }
  return 0;
}

/* Run fn(arg, 0..nchunks-1), on the caller and (if use_helpers) the helpers. */
static void pool_run(pool_t *p, int use_helpers, chunk_fn fn, void *arg, int nchunks) {
  if (!use_helpers || p->nhelpers == 0) {
    for (int c = 0; c < nchunks; c++) fn(arg, c);
    return;
  }
  p->fn = fn;
  p->arg = arg;
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  uint32_t gen = (uint32_t)(atomic_load(&p->state) >> 32) + 1;
  atomic_store_explicit(&p->state, (uint64_t)gen << 32 | (uint64_t)nchunks << 16, memory_order_release);
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
  }
  take_chunks(p, gen);
  /* Only chunks a helper already holds are left: wait, yielding the core after a short spin. */
  for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < nchunks; i++) {
    if (i < 4000) cpu_relax(); else sched_yield();
  }
}

static void pool_stop(pool_t *p) {
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->quit, 1);
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nhelpers; i++) pthread_join(p->th[i], NULL);
  p->nhelpers = 0;
}

#endif
