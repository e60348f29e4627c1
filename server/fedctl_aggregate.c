/* fedctl_aggregate.c: `fedctl aggregate`, offline aggregation of delta files.
 *
 * Runs exactly the code the daemon runs (aggregators/round.c and the rule tables) over
 * safetensors inputs given on the command line, so operators can replay or test a round without
 * a server. Inputs are memory-mapped; when a file's tensors share one dtype and the canonical
 * order, the rule reads the mapping directly (no copy), so inputs larger than memory work for
 * rules that stream or work in coordinate blocks.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregators/agg.h"
#include "core/alloc.h"
#include "core/safetensors.h"
#include "server/fedctl.h"

#define CMD "aggregate"
/* Elements converted per step when writing the output. */
#define WRITE_BLOCK 65536

static const char usage_text[] =
    "usage: fedctl aggregate --rule NAME [--param KEY=VALUE]... [--weights N1,N2,...]\n"
    "                        [--base MODEL.safetensors] [--report FILE.json]\n"
    "                        -o OUT.safetensors DELTA1.safetensors DELTA2.safetensors ...\n"
    "\n"
    "Combines client deltas with an aggregation rule, exactly as the daemon does.\n"
    "\n"
    "  --rule NAME         aggregation rule (see docs/aggregators.md)\n"
    "  --param KEY=VALUE   a rule parameter; repeat for several\n"
    "  --weights LIST      comma-separated num_examples, one per input, in order (default 1 each)\n"
    "  --base MODEL        write base + D instead of D\n"
    "  --report FILE       write the rule's JSON report to FILE instead of stdout\n"
    "  -o OUT              output safetensors file (f32, same tensor names and shapes)\n"
    "\n"
    "Inputs may be f32, f16, bf16 or f64 and must have the same tensor names and shapes.\n"
    "Updates are indexed in command-line order; ties go to the lower index.\n"
    "Exit status: 0 on success, 1 on an I/O failure, 2 on bad input (one line on stderr).\n";

typedef struct input {
    const char *path;
    fc_st_file *file;
    const void *flat;  /* dim elements of flat_dtype, in the canonical tensor order */
    fc_dtype flat_dtype;
    double *owned;     /* set when the file needed conversion or reordering */
} input;

typedef struct options {
    const char *rule;
    const char *weights;
    const char *base;
    const char *report;
    const char *out;
    agg_kv *params;
    size_t n_params;
    const char **inputs;
    size_t n_inputs;
} options;

static int parse_args(int argc, char **argv, options *o) {
    o->params = fc_calloc((size_t)argc, sizeof *o->params);
    o->inputs = fc_calloc((size_t)argc, sizeof *o->inputs);
    if (!o->params || !o->inputs)
        return fedctl_failed(CMD, "out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--rule") == 0)
            slot = &o->rule;
        else if (strcmp(a, "--weights") == 0)
            slot = &o->weights;
        else if (strcmp(a, "--base") == 0)
            slot = &o->base;
        else if (strcmp(a, "--report") == 0)
            slot = &o->report;
        else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0)
            slot = &o->out;
        if (slot || strcmp(a, "--param") == 0) {
            if (i + 1 >= argc)
                return fedctl_bad_input(CMD, "option %s needs a value", a);
            const char *v = argv[++i];
            if (slot) {
                if (*slot)
                    return fedctl_bad_input(CMD, "option %s given twice", a);
                *slot = v;
                continue;
            }
            char *eq = strchr(v, '=');
            if (!eq || eq == v)
                return fedctl_bad_input(CMD, "--param '%s': expected KEY=VALUE", v);
            *eq = '\0';
            o->params[o->n_params].key = v;
            o->params[o->n_params].value = eq + 1;
            o->n_params++;
            continue;
        }
        if (a[0] == '-' && a[1] != '\0')
            return fedctl_bad_input(CMD, "unknown option '%s' (see fedctl aggregate --help)", a);
        o->inputs[o->n_inputs++] = a;
    }
    if (!o->rule)
        return fedctl_bad_input(CMD, "--rule is required (rules: %s)", agg_rule_names());
    if (!o->out)
        return fedctl_bad_input(CMD, "-o OUT.safetensors is required");
    if (o->n_inputs == 0)
        return fedctl_bad_input(CMD, "no input delta files given");
    return FEDCTL_OK;
}

static int parse_weights(const options *o, double *weights) {
    for (size_t i = 0; i < o->n_inputs; i++)
        weights[i] = 1.0;
    if (!o->weights)
        return FEDCTL_OK;
    const char *p = o->weights;
    size_t count = 0;
    for (;;) {
        char *end;
        errno = 0;
        double w = strtod(p, &end);
        if (end == p || errno == ERANGE || !isfinite(w) || w < 0 || (*end != ',' && *end))
            return fedctl_bad_input(CMD,
                                    "--weights: value %zu is not a finite number >= 0 (got '%s')",
                                    count + 1, o->weights);
        if (count >= o->n_inputs)
            return fedctl_bad_input(CMD, "--weights has more values than the %zu input files",
                                    o->n_inputs);
        weights[count++] = w;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    if (count != o->n_inputs)
        return fedctl_bad_input(CMD, "--weights has %zu values for %zu input files", count,
                                o->n_inputs);
    return FEDCTL_OK;
}

/* Finds in m the tensor that matches ref (same name and shape); -1 and a message if none. */
static long match_tensor(const fc_model *m, const fc_tensor *ref, const char *path, char *msg,
                         size_t msglen) {
    long j = fc_model_find(m, ref->spec.name);
    if (j < 0) {
        snprintf(msg, msglen, "%s: has no tensor '%s'", path, ref->spec.name);
        return -1;
    }
    const fc_tensor_spec *s = &m->tensors[j].spec;
    int same = s->ndim == ref->spec.ndim;
    for (uint32_t d = 0; same && d < s->ndim; d++)
        same = s->shape[d] == ref->spec.shape[d];
    if (!same) {
        char a[160], b[160];
        snprintf(msg, msglen, "%s: tensor '%s' has shape %s, expected %s", path, s->name,
                 fc_shape_format(s->ndim, s->shape, a, sizeof a),
                 fc_shape_format(ref->spec.ndim, ref->spec.shape, b, sizeof b));
        return -1;
    }
    return j;
}

/* Checks f against the reference layout and sets in->flat: a pointer into the mapping when the
 * file already is the flat vector, else an owned f64 copy in the reference order. */
static int prepare_input(input *in, const fc_model *ref, size_t dim) {
    const fc_model *m = fc_st_model(in->file);
    char msg[FC_ERROR_MSG_MAX];
    if (m->count != ref->count)
        return fedctl_bad_input(CMD, "%s: has %zu tensors, expected %zu like %s", in->path,
                                m->count, ref->count, "the first input");
    int direct = 1;
    for (size_t i = 0; i < ref->count; i++) {
        long j = match_tensor(m, &ref->tensors[i], in->path, msg, sizeof msg);
        if (j < 0)
            return fedctl_bad_input(CMD, "%s", msg);
        if ((size_t)j != i || m->tensors[j].spec.dtype != m->tensors[0].spec.dtype)
            direct = 0;
    }
    if (direct && m->count > 0) {
        in->flat = m->tensors[0].data;
        in->flat_dtype = m->tensors[0].spec.dtype;
        return FEDCTL_OK;
    }
    in->owned = fc_mallocarray(dim ? dim : 1, sizeof(double));
    if (!in->owned)
        return fedctl_failed(CMD, "%s: out of memory converting to f64", in->path);
    size_t pos = 0;
    for (size_t i = 0; i < ref->count; i++) {
        const fc_tensor *t = &m->tensors[fc_model_find(m, ref->tensors[i].spec.name)];
        size_t n = (size_t)(t->nbytes / fc_dtype_size(t->spec.dtype));
        if (fc_convert_to_f64(t->spec.dtype, t->data, n, in->owned + pos) != FC_OK)
            return fedctl_bad_input(CMD, "%s: tensor '%s' has an unsupported dtype", in->path,
                                    t->spec.name);
        pos += n;
    }
    in->flat = in->owned;
    in->flat_dtype = FC_DTYPE_F64;
    return FEDCTL_OK;
}

static int write_report(const options *o, const agg_report *rep) {
    fc_buf json = FC_BUF_INIT;
    if (agg_report_to_json(rep, &json) != FC_OK || fc_buf_append(&json, "\n", 1) != FC_OK) {
        fc_buf_free(&json);
        return fedctl_failed(CMD, "out of memory writing the report");
    }
    FILE *f = o->report ? fopen(o->report, "w") : stdout;
    if (!f) {
        int e = errno;
        fc_buf_free(&json);
        return fedctl_bad_input(CMD, "--report %s: %s", o->report, strerror(e));
    }
    size_t w = fwrite(json.data, 1, json.len, f);
    int rc = (w == json.len) ? 0 : -1;
    if (o->report ? fclose(f) != 0 : fflush(f) != 0)
        rc = -1;
    fc_buf_free(&json);
    if (rc != 0)
        return fedctl_failed(CMD, "writing the report to %s failed",
                             o->report ? o->report : "stdout");
    return FEDCTL_OK;
}

/* Streams D (or base + D) to the output file as f32, tensor by tensor, in blocks. */
static int write_output(const options *o, const fc_model *ref, const double *delta,
                        const fc_model *base) {
    fc_tensor_spec *specs = fc_calloc(ref->count ? ref->count : 1, sizeof *specs);
    float *block = fc_mallocarray(WRITE_BLOCK, sizeof(float));
    double *base_block = base ? fc_mallocarray(WRITE_BLOCK, sizeof(double)) : NULL;
    fc_st_writer *w = NULL;
    fc_error err = {0};
    int rc = FEDCTL_OK;
    if (!specs || !block || (base && !base_block)) {
        rc = fedctl_failed(CMD, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < ref->count; i++) {
        specs[i] = ref->tensors[i].spec;
        specs[i].dtype = FC_DTYPE_F32;
    }
    if (fc_st_writer_begin(o->out, specs, ref->count, NULL, 0, &w, &err) != FC_OK) {
        rc = fedctl_bad_input(CMD, "-o %s", fc_error_text(&err));
        goto done;
    }
    size_t pos = 0;
    for (size_t i = 0; i < ref->count; i++) {
        const fc_tensor *t = &ref->tensors[i];
        size_t n = (size_t)(t->nbytes / fc_dtype_size(t->spec.dtype));
        const fc_tensor *bt = base ? &base->tensors[fc_model_find(base, t->spec.name)] : NULL;
        size_t esize = bt ? fc_dtype_size(bt->spec.dtype) : 0;
        for (size_t off = 0; off < n; off += WRITE_BLOCK) {
            size_t k = n - off < WRITE_BLOCK ? n - off : WRITE_BLOCK;
            if (bt) {
                fc_convert_to_f64(bt->spec.dtype, (const uint8_t *)bt->data + off * esize, k,
                                  base_block);
                for (size_t e = 0; e < k; e++)
                    block[e] = (float)(base_block[e] + delta[pos + off + e]);
            } else {
                for (size_t e = 0; e < k; e++)
                    block[e] = (float)delta[pos + off + e];
            }
            if (fc_st_writer_write(w, block, k * sizeof(float), &err) != FC_OK) {
                fc_st_writer_abort(w);
                w = NULL;
                rc = fedctl_failed(CMD, "-o %s: %s", o->out, fc_error_text(&err));
                goto done;
            }
        }
        pos += n;
    }
    fc_st_writer *finishing = w;
    w = NULL;
    if (fc_st_writer_finish(finishing, &err) != FC_OK)
        rc = fedctl_failed(CMD, "-o %s: %s", o->out, fc_error_text(&err));
done:
    fc_st_writer_abort(w);
    fc_free(base_block);
    fc_free(block);
    fc_free(specs);
    return rc;
}

static int run(int argc, char **argv) {
    options o;
    memset(&o, 0, sizeof o);
    input *inputs = NULL;
    double *weights = NULL, *delta = NULL;
    fc_st_file *base_file = NULL;
    agg_round *round = NULL;
    agg_report rep;
    agg_report_init(&rep);
    fc_error err = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc != FEDCTL_OK)
        goto done;
    const agg_rule *rule = agg_rule_find(o.rule);
    if (!rule) {
        rc = fedctl_bad_input(CMD, "unknown rule '%s' (rules: %s)", o.rule, agg_rule_names());
        goto done;
    }
    inputs = fc_calloc(o.n_inputs, sizeof *inputs);
    weights = fc_calloc(o.n_inputs, sizeof *weights);
    if (!inputs || !weights) {
        rc = fedctl_failed(CMD, "out of memory");
        goto done;
    }
    if ((rc = parse_weights(&o, weights)) != FEDCTL_OK)
        goto done;
    for (size_t i = 0; i < o.n_inputs; i++) {
        inputs[i].path = o.inputs[i];
        if (fc_st_open(o.inputs[i], &inputs[i].file, &err) != FC_OK) {
            rc = fedctl_bad_input(CMD, "%s", fc_error_text(&err));
            goto done;
        }
    }
    const fc_model *ref = fc_st_model(inputs[0].file);
    uint64_t numel;
    if (fc_model_numel(ref, &numel) != FC_OK || numel > SIZE_MAX / sizeof(double)) {
        rc = fedctl_bad_input(CMD, "%s: model too large for this machine", inputs[0].path);
        goto done;
    }
    size_t dim = (size_t)numel;
    for (size_t i = 0; i < o.n_inputs; i++)
        if ((rc = prepare_input(&inputs[i], ref, dim)) != FEDCTL_OK)
            goto done;
    const fc_model *base = NULL;
    if (o.base) {
        if (fc_st_open(o.base, &base_file, &err) != FC_OK) {
            rc = fedctl_bad_input(CMD, "--base %s", fc_error_text(&err));
            goto done;
        }
        base = fc_st_model(base_file);
        char msg[FC_ERROR_MSG_MAX];
        if (base->count != ref->count) {
            rc = fedctl_bad_input(CMD, "--base %s: has %zu tensors, the deltas have %zu", o.base,
                                  base->count, ref->count);
            goto done;
        }
        for (size_t i = 0; i < ref->count; i++)
            if (match_tensor(base, &ref->tensors[i], o.base, msg, sizeof msg) < 0) {
                rc = fedctl_bad_input(CMD, "--base %s", msg);
                goto done;
            }
    }

    agg_params params = {o.params, o.n_params};
    agg_context ctx = {.dim = dim, .round = 0, .num_registered = o.n_inputs};
    if (agg_round_begin(rule, &params, &ctx, NULL, 0, &round, &err) != FC_OK) {
        rc = fedctl_bad_input(CMD, "%s", fc_error_text(&err));
        goto done;
    }
    uint64_t *ids = fc_calloc(o.n_inputs, sizeof *ids);
    if (!ids) {
        rc = fedctl_failed(CMD, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < o.n_inputs; i++)
        ids[i] = i;
    fc_status st = agg_round_expect(round, ids, o.n_inputs, &err);
    fc_free(ids);
    for (size_t i = 0; st == FC_OK && i < o.n_inputs; i++) {
        agg_update u = {.client_id = i,
                        .client_name = inputs[i].path,
                        .dtype = inputs[i].flat_dtype,
                        .data = inputs[i].flat,
                        .data_stable = 1,
                        .weight = weights[i]};
        st = agg_round_add(round, &u, &err);
    }
    if (st != FC_OK) {
        rc = fedctl_failed(CMD, "%s", fc_error_text(&err));
        goto done;
    }
    delta = fc_mallocarray(dim ? dim : 1, sizeof *delta);
    if (!delta) {
        rc = fedctl_failed(CMD, "out of memory for %zu parameters", dim);
        goto done;
    }
    st = agg_round_finish(round, delta, &rep, &err);
    if (st != FC_OK) {
        write_report(&o, &rep);
        rc = st == FC_ERR_NOMEM || st == FC_ERR_IO ? fedctl_failed(CMD, "%s", fc_error_text(&err))
                                                   : fedctl_bad_input(CMD, "%s",
                                                                      fc_error_text(&err));
        goto done;
    }
    if (rep.empty) {
        /* Too few updates remain: the daemon would leave the model unchanged; offline there is
         * nothing to write. */
        write_report(&o, &rep);
        rc = fedctl_bad_input(CMD, "no update to aggregate: %s",
                              rep.note[0] ? rep.note : "every input was dropped");
        goto done;
    }
    if ((rc = write_output(&o, ref, delta, base)) != FEDCTL_OK)
        goto done;
    rc = write_report(&o, &rep);
done:
    agg_round_free(round);
    agg_report_free(&rep);
    fc_free(delta);
    fc_st_close(base_file);
    for (size_t i = 0; inputs && i < o.n_inputs; i++) {
        fc_free(inputs[i].owned);
        fc_st_close(inputs[i].file);
    }
    fc_free(inputs);
    fc_free(weights);
    fc_free(o.params);
    fc_free(o.inputs);
    return rc;
}

const fedctl_command fedctl_cmd_aggregate = {
    .name = "aggregate",
    .summary = "combine delta files with an aggregation rule, offline",
    .usage = usage_text,
    .run = run,
};
