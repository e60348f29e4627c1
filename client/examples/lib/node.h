/* node.h: the pieces of the networked example trainer (client/examples/trainer.c) that do not
 * need a server: reading a secret from a file, the initial model of the demo, and turning the
 * model of a task (as tensor views) into the flat softmax parameter vector.
 *
 * This module owns no state. It never talks to the network; only ex_read_secret_file and
 * ex_write_initial_model touch files.
 */
#ifndef EX_NODE_H
#define EX_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "client/examples/lib/softmax.h"
#include "core/status.h"
#include "core/tensor.h"

/* Longest secret (a fedctl token is 43 characters) accepted from a file. */
#define EX_SECRET_MAX 1024

/* Reads the first line of path (a token written by `fedctl client add`) into out (cap bytes,
 * NUL-terminated), without the line end and surrounding blanks. Errors (FC_ERR_IO unreadable,
 * FC_ERR_FORMAT empty, more than one non-empty line, or a control character, FC_ERR_LIMIT longer
 * than cap - 1 or EX_SECRET_MAX bytes) name the file; the secret itself is never printed. */
fc_status ex_read_secret_file(const char *path, char *out, size_t cap, fc_error *err);

/* The demo's initial model: all zeros when std == 0, else weights (not biases) drawn from
 * N(0, std^2) with the generator seeded by ex_seed_derive(seed, EX_INIT_STREAM, 0); biases 0.
 * std must be finite and >= 0 (FC_ERR_INVALID). */
#define EX_INIT_STREAM 0x696e6974u /* "init" */
fc_status ex_sm_init(float *w, uint64_t seed, double std, fc_error *err);

/* Writes w as a safetensors file ("fc.weight" f32 [10,64], "fc.bias" f32 [10]) with metadata
 * "format" = "fedcoord-demo-softmax". Errors: those of fc_st_write_model, FC_ERR_NOMEM. */
fc_status ex_write_initial_model(const char *path, const float *w, fc_error *err);

/* One tensor as a task shows it (mirrors fc_tensor_info of the SDK without depending on it). */
typedef struct ex_tensor_view {
    const char *name;
    fc_dtype dtype;
    uint32_t ndim;
    const uint64_t *shape;
    uint64_t nbytes;
    const void *data; /* may be unaligned */
} ex_tensor_view;

/* Copies a received model into w (EX_SM_PARAMS floats): exactly two f32 tensors, "fc.weight"
 * [10,64] then "fc.bias" [10], finite values. Errors: FC_ERR_SHAPE (count, name, shape or byte
 * size differs: the message names the tensor, what it is and what is expected), FC_ERR_DTYPE
 * (not f32: the SDK's FedProx helper needs f32), FC_ERR_NON_FINITE. w is untouched on error. */
fc_status ex_sm_from_views(const ex_tensor_view *v, size_t count, float *w, fc_error *err);

#endif
