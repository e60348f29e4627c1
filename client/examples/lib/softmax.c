/* softmax.c: softmax regression forward, loss, gradient, SGD and the fc_model mapping (see
 * softmax.h). It owns only scratch memory of one training call; it never does I/O. */
#include "client/examples/lib/softmax.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/prox.h"

enum { K = EX_DIGITS_CLASSES, F = EX_DIGITS_FEATURES };

static void logits(const float *w, const float *x, double *z) {
    for (int k = 0; k < K; k++) {
        const float *row = w + k * F;
        double s = w[EX_SM_WEIGHTS + k];
        for (int j = 0; j < F; j++)
            s += (double)row[j] * (double)x[j];
        z[k] = s;
    }
}

double ex_sm_example(const float *w, const float *x, unsigned y, double scale, double *grad) {
    double z[K];
    logits(w, x, z);
    double zmax = z[0];
    for (int k = 1; k < K; k++)
        if (z[k] > zmax)
            zmax = z[k];
    double sum = 0;
    for (int k = 0; k < K; k++) {
        z[k] = exp(z[k] - zmax); /* z now holds unnormalised probabilities */
        sum += z[k];
    }
    /* -log p_y = log(sum) - (z_y - zmax), computed from the shifted logit for accuracy. */
    double loss = log(sum) - log(z[y]);
    if (grad) {
        for (int k = 0; k < K; k++) {
            double gk = scale * (z[k] / sum - (k == (int)y ? 1.0 : 0.0));
            double *grow = grad + k * F;
            for (int j = 0; j < F; j++)
                grow[j] += gk * (double)x[j];
            grad[EX_SM_WEIGHTS + k] += gk;
        }
    }
    return loss;
}

double ex_sm_loss_grad(const float *w, const ex_dataset *d, const size_t *idx, size_t count,
                       double *grad) {
    if (grad)
        memset(grad, 0, EX_SM_PARAMS * sizeof *grad);
    double total = 0, scale = 1.0 / (double)count;
    for (size_t i = 0; i < count; i++)
        total += ex_sm_example(w, d->x + idx[i] * F, d->y[idx[i]], scale, grad);
    return total / (double)count;
}

unsigned ex_sm_predict(const float *w, const float *x) {
    double z[K];
    logits(w, x, z);
    unsigned best = 0;
    for (unsigned k = 1; k < K; k++)
        if (z[k] > z[best])
            best = k;
    return best;
}

void ex_sm_evaluate(const float *w, const ex_dataset *d, const size_t *idx, size_t count,
                    double *mean_loss, size_t *correct) {
    double total = 0;
    size_t ok = 0;
    for (size_t i = 0; i < count; i++) {
        const float *x = d->x + idx[i] * F;
        total += ex_sm_example(w, x, d->y[idx[i]], 0, NULL);
        ok += ex_sm_predict(w, x) == d->y[idx[i]];
    }
    if (mean_loss)
        *mean_loss = count ? total / (double)count : 0;
    if (correct)
        *correct = ok;
}

typedef struct prox_hook_ctx {
    const float *anchor;
    double mu;
} prox_hook_ctx;

static fc_status prox_hook(void *user, float *g32, const float *w, fc_error *err) {
    const prox_hook_ctx *p = user;
    fc_status st = fc_prox_add(g32, w, p->anchor, EX_SM_PARAMS, p->mu);
    if (st != FC_OK)
        return fc_error_set(err, st, "train: FedProx term failed");
    return FC_OK;
}

fc_status ex_sm_train(float *w, const ex_dataset *d, const size_t *idx, size_t count,
                      const ex_train_config *cfg, const float *anchor, ex_rng *rng,
                      double *last_epoch_loss, fc_error *err) {
    if (!cfg)
        return fc_error_set(err, FC_ERR_INVALID, "train: missing argument");
    if (!isfinite(cfg->mu) || cfg->mu < 0)
        return fc_error_set(err, FC_ERR_INVALID, "train: mu %g must be >= 0", cfg->mu);
    if (cfg->mu > 0 && !anchor)
        return fc_error_set(err, FC_ERR_INVALID, "train: mu %g needs the round's model", cfg->mu);
    prox_hook_ctx p = {anchor, cfg->mu};
    return ex_sm_train_hooked(w, d, idx, count, cfg, cfg->mu > 0 ? prox_hook : NULL, &p, rng,
                              last_epoch_loss, err);
}

fc_status ex_sm_train_hooked(float *w, const ex_dataset *d, const size_t *idx, size_t count,
                             const ex_train_config *cfg, ex_grad_hook hook, void *user,
                             ex_rng *rng, double *last_epoch_loss, fc_error *err) {
    if (!w || !d || !cfg || !rng || (!idx && count > 0))
        return fc_error_set(err, FC_ERR_INVALID, "train: missing argument");
    if (count == 0)
        return fc_error_set(err, FC_ERR_INVALID, "train: no training examples");
    if (cfg->epochs == 0 || cfg->batch == 0)
        return fc_error_set(err, FC_ERR_INVALID, "train: epochs %zu and batch %zu must be >= 1",
                            cfg->epochs, cfg->batch);
    if (!isfinite(cfg->lr) || cfg->lr <= 0)
        return fc_error_set(err, FC_ERR_INVALID, "train: learning rate %g must be > 0", cfg->lr);
    fc_status st = FC_OK;
    size_t *order = fc_mallocarray(count, sizeof *order);
    double *g = fc_mallocarray(EX_SM_PARAMS, sizeof *g);
    float *g32 = fc_mallocarray(EX_SM_PARAMS, sizeof *g32);
    if (!order || !g || !g32) {
        st = fc_error_set(err, FC_ERR_NOMEM, "train: out of memory");
        goto done;
    }
    memcpy(order, idx, count * sizeof *order);
    double epoch_loss = 0;
    for (size_t e = 0; e < cfg->epochs; e++) {
        ex_rng_shuffle(rng, order, count);
        double loss_sum = 0;
        size_t batches = 0;
        for (size_t start = 0; start < count; start += cfg->batch) {
            size_t m = count - start < cfg->batch ? count - start : cfg->batch;
            double loss = ex_sm_loss_grad(w, d, order + start, m, g);
            if (!isfinite(loss)) {
                st = fc_error_set(err, FC_ERR_NON_FINITE,
                                  "train: loss became %g in epoch %zu (learning rate %g too large?)",
                                  loss, e + 1, cfg->lr);
                goto done;
            }
            loss_sum += loss;
            batches++;
            for (size_t i = 0; i < EX_SM_PARAMS; i++)
                g32[i] = (float)g[i];
            if (hook && (st = hook(user, g32, w, err)) != FC_OK)
                goto done;
            for (size_t i = 0; i < EX_SM_PARAMS; i++)
                w[i] = (float)((double)w[i] - cfg->lr * (double)g32[i]);
        }
        epoch_loss = loss_sum / (double)batches;
    }
    if (last_epoch_loss)
        *last_epoch_loss = epoch_loss;
done:
    fc_free(order);
    fc_free(g);
    fc_free(g32);
    return st;
}

fc_status ex_sm_to_model(const float *w, fc_model *out, fc_error *err) {
    const uint64_t wshape[2] = {K, F}, bshape[1] = {K};
    fc_model m = FC_MODEL_INIT;
    fc_status st = fc_model_add(&m, EX_SM_WEIGHT_NAME, FC_DTYPE_F32, 2, wshape, w, err);
    if (st == FC_OK)
        st = fc_model_add(&m, EX_SM_BIAS_NAME, FC_DTYPE_F32, 1, bshape, w + EX_SM_WEIGHTS, err);
    if (st != FC_OK) {
        fc_model_free(&m);
        return st;
    }
    *out = m;
    return FC_OK;
}

fc_status ex_sm_from_model(const fc_model *m, float *w, fc_error *err) {
    static const char *const names[2] = {EX_SM_WEIGHT_NAME, EX_SM_BIAS_NAME};
    static const uint32_t ndims[2] = {2, 1};
    static const uint64_t shapes[2][2] = {{K, F}, {K, 0}};
    static const char *const want[2] = {"[10,64]", "[10]"};
    if (!m || !w)
        return fc_error_set(err, FC_ERR_INVALID, "softmax model: missing argument");
    if (m->count != 2)
        return fc_error_set(err, FC_ERR_SHAPE,
                            "softmax model: %zu tensors, expected 2 (fc.weight [10,64], "
                            "fc.bias [10])",
                            m->count);
    float tmp[EX_SM_PARAMS];
    size_t off = 0;
    for (int t = 0; t < 2; t++) {
        const fc_tensor *x = &m->tensors[t];
        char got[96];
        if (strcmp(x->spec.name, names[t]) != 0)
            return fc_error_set(err, FC_ERR_SHAPE, "softmax model: tensor %d is '%s', expected '%s'",
                                t, x->spec.name, names[t]);
        if (x->spec.ndim != ndims[t] || x->spec.shape[0] != shapes[t][0] ||
            (ndims[t] == 2 && x->spec.shape[1] != shapes[t][1]))
            return fc_error_set(err, FC_ERR_SHAPE, "softmax model: tensor '%s' has shape %s, expected %s",
                                names[t], fc_shape_format(x->spec.ndim, x->spec.shape, got, sizeof got),
                                want[t]);
        size_t n = t == 0 ? EX_SM_WEIGHTS : K;
        if (x->nbytes != n * fc_dtype_size(x->spec.dtype) || !x->data)
            return fc_error_set(err, FC_ERR_SHAPE, "softmax model: tensor '%s' has %llu bytes for %zu elements",
                                names[t], (unsigned long long)x->nbytes, n);
        fc_status st = fc_convert_to_f32(x->spec.dtype, x->data, n, tmp + off);
        if (st != FC_OK)
            return fc_error_set(err, st, "softmax model: tensor '%s' has dtype %s", names[t],
                                fc_dtype_name(x->spec.dtype));
        for (size_t i = 0; i < n; i++)
            if (!isfinite(tmp[off + i]))
                return fc_error_set(err, FC_ERR_NON_FINITE,
                                    "softmax model: tensor '%s' element %zu is not finite", names[t], i);
        off += n;
    }
    memcpy(w, tmp, sizeof tmp);
    return FC_OK;
}
