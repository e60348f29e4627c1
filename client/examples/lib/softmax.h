/* softmax.h: multinomial logistic (softmax) regression on the digits features.
 *
 * Parameters are one flat f32 vector of EX_SM_PARAMS values, in the order of the model's
 * tensors: "fc.weight" [10,64] row-major (W[k][j] at k*64 + j) then "fc.bias" [10]. So the flat
 * vector is exactly what the aggregation code sees (tensors concatenated in order).
 *
 *   logits z_k = b_k + sum_j W[k][j] x_j,  p = softmax(z),  loss = -log p_y
 *   d loss / d W[k][j] = (p_k - [k == y]) x_j,  d loss / d b_k = p_k - [k == y]
 *
 * Sums over features and over a batch are accumulated in double; parameters are stored as f32.
 * Training is mini-batch SGD on the mean batch loss, with the optional FedProx term
 * mu * (w - w_t) added to each gradient (core/prox.h).
 *
 * This module owns the arithmetic and the mapping to fc_model; it never does I/O.
 */
#ifndef EX_SOFTMAX_H
#define EX_SOFTMAX_H

#include <stddef.h>
#include <stdint.h>

#include "client/examples/lib/digits.h"
#include "client/examples/lib/rng.h"
#include "core/status.h"
#include "core/tensor.h"

#define EX_SM_WEIGHTS (EX_DIGITS_CLASSES * EX_DIGITS_FEATURES)
#define EX_SM_PARAMS (EX_SM_WEIGHTS + EX_DIGITS_CLASSES)
#define EX_SM_WEIGHT_NAME "fc.weight"
#define EX_SM_BIAS_NAME "fc.bias"

typedef struct ex_train_config {
    size_t epochs; /* local passes over the examples, >= 1 */
    double lr;     /* step size, finite, > 0 */
    size_t batch;  /* examples per step, >= 1 (the last batch of an epoch may be smaller) */
    double mu;     /* FedProx coefficient, finite, >= 0; 0 = plain SGD */
} ex_train_config;

/* Loss of one example and, if grad is not NULL, adds its gradient (scaled by `scale`) to grad
 * (EX_SM_PARAMS doubles). x has EX_DIGITS_FEATURES values. Returns -log p_y. */
double ex_sm_example(const float *w, const float *x, unsigned y, double scale, double *grad);

/* Mean loss over the examples idx[0..count) of d, and its gradient (mean of the per-example
 * gradients) into grad (EX_SM_PARAMS doubles, overwritten) if not NULL. count must be > 0. */
double ex_sm_loss_grad(const float *w, const ex_dataset *d, const size_t *idx, size_t count,
                       double *grad);

/* Predicted class (argmax of the logits; lowest class on ties). */
unsigned ex_sm_predict(const float *w, const float *x);

/* Mean loss and number of correct predictions over idx[0..count) (mean loss 0 when count = 0). */
void ex_sm_evaluate(const float *w, const ex_dataset *d, const size_t *idx, size_t count,
                    double *mean_loss, size_t *correct);

/* Trains w in place on idx[0..count) of d: cfg->epochs passes, each over a fresh shuffle drawn
 * from rng, in batches of cfg->batch. If cfg->mu > 0, anchor (EX_SM_PARAMS values, the model the
 * round started from) must be given and mu * (w - anchor) is added to every gradient. Writes the
 * mean batch loss of the last epoch (before each step) to *last_epoch_loss if not NULL.
 * Errors: FC_ERR_INVALID (bad config, count 0, mu > 0 without anchor), FC_ERR_NON_FINITE (the
 * loss became NaN or infinite: lr too large), FC_ERR_NOMEM. Does not block. */
fc_status ex_sm_train(float *w, const ex_dataset *d, const size_t *idx, size_t count,
                      const ex_train_config *cfg, const float *anchor, ex_rng *rng,
                      double *last_epoch_loss, fc_error *err);

/* Called by ex_sm_train_hooked after every batch gradient has been rounded to f32 (g32, EX_SM_PARAMS
 * values) and before the step, with the current weights w. It may change g32 (e.g. add a
 * proximal term). A non-FC_OK return stops training with that status (err filled by the hook). */
typedef fc_status (*ex_grad_hook)(void *user, float *g32, const float *w, fc_error *err);

/* ex_sm_train with cfg->mu ignored and, instead, hook (may be NULL) applied to every gradient:
 * the networked trainer adds FedProx through the SDK's fc_task_prox_add this way. With a hook
 * that adds mu * (w - anchor) the result is bit-identical to ex_sm_train with that mu and anchor.
 * Errors: those of ex_sm_train, and the hook's. */
fc_status ex_sm_train_hooked(float *w, const ex_dataset *d, const size_t *idx, size_t count,
                             const ex_train_config *cfg, ex_grad_hook hook, void *user,
                             ex_rng *rng, double *last_epoch_loss, fc_error *err);

/* Builds an fc_model (must be empty) owning copies of w as "fc.weight" f32 [10,64] and
 * "fc.bias" f32 [10]. Errors: FC_ERR_NOMEM; *out is left empty on error. */
fc_status ex_sm_to_model(const float *w, fc_model *out, fc_error *err);

/* Reads a model with exactly those two tensors (any float dtype, converted to f32) into w.
 * Errors: FC_ERR_SHAPE naming the tensor and the expected layout, FC_ERR_DTYPE, and
 * FC_ERR_NON_FINITE for a NaN or infinite value. w is untouched on error. */
fc_status ex_sm_from_model(const fc_model *m, float *w, fc_error *err);

#endif
