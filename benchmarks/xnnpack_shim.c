/* A tiny C ABI over XNNPACK's NCHW 1x1 convolution, for the head-to-head in bench_spmm_conv.py.
 * XNNPACK picks its sparse SpMM micro-kernel (the "Fast Sparse ConvNets" path) for an NCHW 1x1,
 * stride-1, unpadded, ungrouped convolution and packs only the nonzero weights, so a zero-filled dense
 * kernel gives its sparse path. Built at benchmark time:
 *   cc -O2 -shared -fPIC xnnpack_shim.c -o xnnpack_shim.so -lXNNPACK -lpthreadpool
 * No thread pool is passed: XNNPACK runs single-threaded. */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <xnnpack.h>

static int g_initialized = 0;

int xs_init(void) {
  if (!g_initialized) {
    if (xnn_initialize(NULL) != xnn_status_success) return -1;
    g_initialized = 1;
  }
  return 0;
}

/* kernel: [c_out][c_in] fp32 (zeros dropped by XNNPACK); bias: [c_out]. Returns NULL on failure. */
void* xs_create(size_t c_in, size_t c_out, const float* kernel, const float* bias, float out_min, float out_max) {
  if (xs_init() != 0) return NULL;
  xnn_operator_t op = NULL;
  if (xnn_create_convolution2d_nchw_f32(0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, c_in, c_out, c_in, c_out, kernel, bias,
                                        out_min, out_max, 0, &op) != xnn_status_success)
    return NULL;
  return op;
}

int xs_setup(void* op, size_t n, size_t h, size_t w, const float* in, float* out) {
  return xnn_setup_convolution2d_nchw_f32((xnn_operator_t)op, n, h, w, in, out, NULL) == xnn_status_success ? 0 : -1;
}

int xs_run(void* op) { return xnn_run_operator((xnn_operator_t)op, NULL) == xnn_status_success ? 0 : -1; }

/* Seconds for `iters` back-to-back runs. */
double xs_time(void* op, int iters) {
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < iters; ++i) xnn_run_operator((xnn_operator_t)op, NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  return (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
}

void xs_delete(void* op) { xnn_delete_operator((xnn_operator_t)op); }
