/* wire.c: building, validating and naming the messages of the wire protocol.
 *
 * Owns the per-message rules of docs/protocol.md and the error-code table. It never tracks
 * session state, never touches sockets, and never sends a raw fc_status number: every error on
 * the wire goes through the explicit table below.
 */
#include "proto/wire.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

/* ---- versions ---- */

static const char *role_name(fc_wire_role r) { return r == FC_WIRE_SERVER ? "server" : "client"; }

fc_status fc_wire_check_version(fc_wire_role local, uint32_t peer_major, uint32_t peer_minor,
                                fc_error *err) {
    fc_wire_role peer = local == FC_WIRE_SERVER ? FC_WIRE_CLIENT : FC_WIRE_SERVER;
    if (peer_major == 0)
        return fc_error_set(err, FC_ERR_VERSION,
                            "%s sent no protocol version (0.%u), %s speaks %u.%u",
                            role_name(peer), peer_minor, role_name(local), FC_PROTOCOL_MAJOR,
                            FC_PROTOCOL_MINOR);
    if (peer_major != FC_PROTOCOL_MAJOR)
        return fc_error_set(err, FC_ERR_VERSION,
                            "%s speaks protocol %u.%u, %s speaks %u.%u: major versions must match",
                            role_name(peer), peer_major, peer_minor, role_name(local),
                            FC_PROTOCOL_MAJOR, FC_PROTOCOL_MINOR);
    return FC_OK;
}

/* ---- error codes ---- */

/* Stable wire codes. Numbers and names never change and are never reused; new rows go at the
 * end. docs/protocol.md ("Error codes") documents each row; tests/unit/test_wire.c pins every
 * number. Statuses absent here (TLS, CONFIG, DB, CORRUPT, AGAIN, CLOSED) are local matters and
 * travel as INTERNAL. */
static const fc_wire_error_code error_table[] = {
    {1, "INTERNAL", FC_ERR_SYSTEM, 1, "the sender failed internally; not caused by the receiver"},
    {2, "RESOURCE_EXHAUSTED", FC_ERR_NOMEM, 0,
     "the sender is out of memory or staging space; retry later"},
    {3, "BUSY", FC_ERR_BUSY, 1, "too many connections or uploads; reconnect later"},
    {4, "TIMEOUT", FC_ERR_TIMEOUT, 1, "handshake, idle, progress or task deadline passed"},
    {5, "IO_ERROR", FC_ERR_IO, 0, "the sender's storage failed; retry later"},
    {10, "MALFORMED", FC_ERR_FORMAT, 1, "a frame or message could not be decoded"},
    {11, "LIMIT_EXCEEDED", FC_ERR_LIMIT, 1, "a frame, field or list exceeded its size limit"},
    {12, "PROTOCOL_VIOLATION", FC_ERR_PROTOCOL, 1,
     "unknown message type, or a message not allowed at this point of the session"},
    {13, "VERSION_MISMATCH", FC_ERR_VERSION, 1, "the protocol major versions differ"},
    {14, "UNSUPPORTED", FC_ERR_UNSUPPORTED, 0, "a feature or capability the sender lacks"},
    {20, "UNAUTHENTICATED", FC_ERR_AUTH, 1, "the credential is missing, unknown or revoked"},
    {30, "INVALID_ARGUMENT", FC_ERR_INVALID, 0, "a field has a value outside its definition"},
    {31, "NOT_FOUND", FC_ERR_NOT_FOUND, 0, "the model version, round or session does not exist"},
    {32, "ALREADY_EXISTS", FC_ERR_EXISTS, 0, "an update for this round was already accepted"},
    {33, "WRONG_STATE", FC_ERR_STATE, 0,
     "valid request, but the round or task no longer allows it (closed, not selected)"},
    {34, "OUT_OF_RANGE", FC_ERR_RANGE, 0, "an offset or resume point is beyond the data"},
    {40, "BAD_CHUNK", FC_ERR_CHUNK, 0,
     "a chunk's tensor index, offset or length is out of bounds, overlaps, or leaves a gap"},
    {41, "HASH_MISMATCH", FC_ERR_HASH, 0, "the SHA-256 of the received data does not match"},
    {42, "SHAPE_MISMATCH", FC_ERR_SHAPE, 0,
     "tensor names, order, dtypes or shapes differ from the round's model"},
    {43, "UNSUPPORTED_DTYPE", FC_ERR_DTYPE, 0, "a dtype that is unknown or not accepted"},
    {44, "SIZE_OVERFLOW", FC_ERR_OVERFLOW, 0, "a shape's byte size does not fit in 64 bits"},
    {45, "NON_FINITE", FC_ERR_NON_FINITE, 0, "an update or metric contains NaN or infinity"},
    {46, "UPDATE_REJECTED", FC_ERR_REQUIREMENT, 0,
     "the update failed a server rule (norm bound, num_examples, staleness)"},
};

#define ERROR_TABLE_LEN (sizeof error_table / sizeof error_table[0])

const fc_wire_error_code *fc_wire_error_table(size_t *count) {
    *count = ERROR_TABLE_LEN;
    return error_table;
}

const fc_wire_error_code *fc_wire_error_by_code(uint32_t code) {
    for (size_t i = 0; i < ERROR_TABLE_LEN; i++)
        if (error_table[i].code == code)
            return &error_table[i];
    return NULL;
}

const fc_wire_error_code *fc_wire_error_for_status(fc_status st) {
    for (size_t i = 0; i < ERROR_TABLE_LEN; i++)
        if (error_table[i].status == st)
            return &error_table[i];
    return &error_table[0]; /* INTERNAL */
}

fc_status fc_wire_status_for_code(uint32_t code) {
    const fc_wire_error_code *row = fc_wire_error_by_code(code);
    return row ? row->status : error_table[0].status;
}

/* ---- names ---- */

const char *fc_wire_body_name(Fedcoord__V1__Envelope__BodyCase body) {
    switch (body) {
    case FEDCOORD__V1__ENVELOPE__BODY__NOT_SET:
        return "none";
    case FEDCOORD__V1__ENVELOPE__BODY_HELLO:
        return "hello";
    case FEDCOORD__V1__ENVELOPE__BODY_WELCOME:
        return "welcome";
    case FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT:
        return "heartbeat";
    case FEDCOORD__V1__ENVELOPE__BODY_TASK:
        return "task";
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_REQUEST:
        return "model_request";
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN:
        return "model_begin";
    case FEDCOORD__V1__ENVELOPE__BODY_CHUNK:
        return "chunk";
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_END:
        return "model_end";
    case FEDCOORD__V1__ENVELOPE__BODY_UPDATE_BEGIN:
        return "update_begin";
    case FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END:
        return "update_end";
    case FEDCOORD__V1__ENVELOPE__BODY_EVAL_RESULT:
        return "eval_result";
    case FEDCOORD__V1__ENVELOPE__BODY_ACK:
        return "ack";
    case FEDCOORD__V1__ENVELOPE__BODY_ERROR:
        return "error";
    case FEDCOORD__V1__ENVELOPE__BODY_BYE:
        return "bye";
    case _FEDCOORD__V1__ENVELOPE__BODY__CASE_IS_INT_SIZE:
        break;
    }
    return "unknown";
}

/* ---- field checks shared by builders and the validator ---- */

static fc_status check_string(const char *msg, const char *field, const char *s, size_t max,
                              int required, fc_error *err) {
    size_t n = s ? strlen(s) : 0;
    if (required && n == 0)
        return fc_error_set(err, FC_ERR_INVALID, "%s.%s is empty", msg, field);
    if (n > max)
        return fc_error_set(err, FC_ERR_LIMIT, "%s.%s is %zu bytes, above the limit %zu", msg,
                            field, n, max);
    return FC_OK;
}

static fc_status check_bytes(const char *msg, const char *field, size_t len, size_t max,
                             fc_error *err) {
    if (len > max)
        return fc_error_set(err, FC_ERR_LIMIT, "%s.%s is %zu bytes, above the limit %zu", msg,
                            field, len, max);
    return FC_OK;
}

static fc_status check_sha(const char *msg, const char *field, size_t len, fc_error *err) {
    if (len != FC_WIRE_SHA256_BYTES)
        return fc_error_set(err, FC_ERR_INVALID, "%s.%s is %zu bytes, a SHA-256 is %u", msg, field,
                            len, FC_WIRE_SHA256_BYTES);
    return FC_OK;
}

static fc_status check_list(const char *msg, const char *field, size_t n, size_t max,
                            fc_error *err) {
    if (n > max)
        return fc_error_set(err, FC_ERR_LIMIT, "%s.%s has %zu entries, above the limit %zu", msg,
                            field, n, max);
    return FC_OK;
}

static fc_status check_strings(const char *msg, const char *field, char *const *v, size_t n,
                               fc_error *err) {
    fc_status st = check_list(msg, field, n, FC_WIRE_MAX_LIST, err);
    for (size_t i = 0; st == FC_OK && i < n; i++) {
        size_t len = v[i] ? strlen(v[i]) : 0;
        if (len == 0)
            st = fc_error_set(err, FC_ERR_INVALID, "%s.%s[%zu] is empty", msg, field, i);
        else if (len > FC_WIRE_MAX_SHORT_STRING)
            st = fc_error_set(err, FC_ERR_LIMIT, "%s.%s[%zu] is %zu bytes, above the limit %u",
                              msg, field, i, len, FC_WIRE_MAX_SHORT_STRING);
    }
    return st;
}

typedef struct metric_ref {
    const char *name;
    double value;
} metric_ref;

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks that n names (gathered through get) are unique; O(n log n). */
static fc_status check_unique(const char *msg, const char *field, const char *const *names,
                              size_t n, fc_error *err) {
    if (n < 2)
        return FC_OK;
    const char **sorted = fc_mallocarray(n, sizeof *sorted);
    if (!sorted)
        return fc_error_set(err, FC_ERR_NOMEM, "%s.%s: cannot check %zu names", msg, field, n);
    memcpy(sorted, names, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_str_ptr);
    fc_status st = FC_OK;
    for (size_t i = 1; i < n; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            st = fc_error_set(err, FC_ERR_INVALID, "%s.%s: name '%.200s' appears twice", msg,
                              field, sorted[i]);
            break;
        }
    fc_free(sorted);
    return st;
}

static fc_status check_metrics(const char *msg, const metric_ref *m, size_t n, fc_error *err) {
    fc_status st = check_list(msg, "metrics", n, FC_WIRE_MAX_LIST, err);
    if (st != FC_OK)
        return st;
    const char *names[FC_WIRE_MAX_LIST];
    for (size_t i = 0; i < n; i++) {
        size_t len = m[i].name ? strlen(m[i].name) : 0;
        if (len == 0)
            return fc_error_set(err, FC_ERR_INVALID, "%s.metrics[%zu] has an empty name", msg, i);
        if (len > FC_WIRE_MAX_SHORT_STRING)
            return fc_error_set(err, FC_ERR_LIMIT,
                                "%s.metrics[%zu] name is %zu bytes, above the limit %u", msg, i,
                                len, FC_WIRE_MAX_SHORT_STRING);
        if (!isfinite(m[i].value))
            return fc_error_set(err, FC_ERR_NON_FINITE, "%s.metrics['%.200s'] is not finite", msg,
                                m[i].name);
        names[i] = m[i].name;
    }
    return check_unique(msg, "metrics", names, n, err);
}

static fc_status check_config(const char *msg, const fc_wire_kv *kv, size_t n, fc_error *err) {
    fc_status st = check_list(msg, "config", n, FC_WIRE_MAX_LIST, err);
    if (st != FC_OK)
        return st;
    const char *keys[FC_WIRE_MAX_LIST];
    for (size_t i = 0; i < n; i++) {
        size_t klen = kv[i].key ? strlen(kv[i].key) : 0;
        size_t vlen = kv[i].value ? strlen(kv[i].value) : 0;
        if (klen == 0)
            return fc_error_set(err, FC_ERR_INVALID, "%s.config[%zu] has an empty key", msg, i);
        if (klen > FC_WIRE_MAX_SHORT_STRING)
            return fc_error_set(err, FC_ERR_LIMIT,
                                "%s.config[%zu] key is %zu bytes, above the limit %u", msg, i,
                                klen, FC_WIRE_MAX_SHORT_STRING);
        if (vlen > FC_WIRE_MAX_TEXT)
            return fc_error_set(err, FC_ERR_LIMIT,
                                "%s.config['%.200s'] value is %zu bytes, above the limit %u", msg,
                                kv[i].key, vlen, FC_WIRE_MAX_TEXT);
        keys[i] = kv[i].key;
    }
    return check_unique(msg, "config", keys, n, err);
}

/* Validates specs given as (name, dtype, ndim, shape) and sums their bytes. */
typedef struct spec_ref {
    const char *name;
    int dtype;
    size_t ndim;
    const uint64_t *shape;
} spec_ref;

static fc_status check_spec(const char *msg, size_t i, const spec_ref *s, uint64_t *nbytes,
                            fc_error *err) {
    size_t len = s->name ? strlen(s->name) : 0;
    if (len == 0)
        return fc_error_set(err, FC_ERR_INVALID, "%s.tensors[%zu] has an empty name", msg, i);
    if (len > FC_MAX_TENSOR_NAME)
        return fc_error_set(err, FC_ERR_LIMIT,
                            "%s.tensors[%zu] name is %zu bytes, above the limit %d", msg, i, len,
                            FC_MAX_TENSOR_NAME);
    if (s->dtype <= 0 || fc_dtype_size((fc_dtype)s->dtype) == 0)
        return fc_error_set(err, FC_ERR_DTYPE, "%s.tensors[%zu] '%.200s' has unknown dtype %d",
                            msg, i, s->name, s->dtype);
    if (s->ndim > FC_MAX_DIMS)
        return fc_error_set(err, FC_ERR_LIMIT,
                            "%s.tensors[%zu] '%.200s' has %zu dimensions, at most %d allowed", msg,
                            i, s->name, s->ndim, FC_MAX_DIMS);
    fc_tensor_spec t = {.name = (char *)s->name, .dtype = (fc_dtype)s->dtype,
                        .ndim = (uint32_t)s->ndim};
    if (s->ndim)
        memcpy(t.shape, s->shape, s->ndim * sizeof t.shape[0]);
    if (fc_spec_nbytes(&t, nbytes) != FC_OK) {
        char shape[256];
        return fc_error_set(err, FC_ERR_OVERFLOW,
                            "%s.tensors[%zu] '%.200s' shape %s: byte size does not fit in 64 bits",
                            msg, i, s->name, fc_shape_format(t.ndim, t.shape, shape, sizeof shape));
    }
    return FC_OK;
}

static fc_status check_specs(const char *msg, const spec_ref *specs, size_t n, uint64_t *total,
                             fc_error *err) {
    if (n > FC_WIRE_MAX_TENSORS)
        return fc_error_set(err, FC_ERR_LIMIT, "%s lists %zu tensors, above the limit %u", msg, n,
                            FC_WIRE_MAX_TENSORS);
    uint64_t sum = 0;
    const char **names = n ? fc_mallocarray(n, sizeof *names) : NULL;
    if (n && !names)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: cannot check %zu tensor specs", msg, n);
    fc_status st = FC_OK;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb;
        if ((st = check_spec(msg, i, &specs[i], &nb, err)) != FC_OK)
            goto done;
        if (__builtin_add_overflow(sum, nb, &sum)) {
            st = fc_error_set(err, FC_ERR_OVERFLOW,
                              "%s: total tensor bytes overflow 64 bits at tensors[%zu]", msg, i);
            goto done;
        }
        names[i] = specs[i].name;
    }
    st = check_unique(msg, "tensors", names, n, err);
    if (st == FC_OK && total)
        *total = sum;
done:
    fc_free(names);
    return st;
}

/* Gathers wire specs into spec_refs (allocated; caller frees). */
static fc_status refs_from_wire(Fedcoord__V1__TensorSpec *const *in, size_t n, spec_ref **out,
                                fc_error *err) {
    *out = NULL;
    if (n == 0)
        return FC_OK;
    if (n > FC_WIRE_MAX_TENSORS)
        return fc_error_set(err, FC_ERR_LIMIT, "%zu tensors listed, above the limit %u", n,
                            FC_WIRE_MAX_TENSORS);
    spec_ref *r = fc_mallocarray(n, sizeof *r);
    if (!r)
        return fc_error_set(err, FC_ERR_NOMEM, "cannot check %zu tensor specs", n);
    for (size_t i = 0; i < n; i++) {
        r[i].name = in[i]->name;
        r[i].dtype = (int)in[i]->dtype;
        r[i].ndim = in[i]->n_shape;
        r[i].shape = in[i]->shape;
    }
    *out = r;
    return FC_OK;
}

static fc_status check_wire_specs(const char *msg, Fedcoord__V1__TensorSpec *const *in, size_t n,
                                  uint64_t *total, fc_error *err) {
    spec_ref *refs;
    fc_status st = refs_from_wire(in, n, &refs, err);
    if (st != FC_OK)
        return fc_error_prefix(err, "%s", msg);
    st = check_specs(msg, refs, n, total, err);
    fc_free(refs);
    return st;
}

/* ---- converting specs ---- */

void fc_wire_specs_free(fc_tensor_spec *specs, size_t n) {
    if (!specs)
        return;
    for (size_t i = 0; i < n; i++)
        fc_free(specs[i].name);
    fc_free(specs);
}

fc_status fc_wire_specs_from_wire(Fedcoord__V1__TensorSpec *const *in, size_t n,
                                  fc_tensor_spec **out, uint64_t *total_bytes, fc_error *err) {
    *out = NULL;
    fc_status st = check_wire_specs("tensor specs", in, n, total_bytes, err);
    if (st != FC_OK)
        return st;
    if (n == 0)
        return FC_OK;
    fc_tensor_spec *s = fc_calloc(n, sizeof *s);
    if (!s)
        return fc_error_set(err, FC_ERR_NOMEM, "cannot allocate %zu tensor specs", n);
    for (size_t i = 0; i < n; i++) {
        s[i].name = fc_strdup(in[i]->name);
        if (!s[i].name) {
            fc_wire_specs_free(s, n);
            return fc_error_set(err, FC_ERR_NOMEM, "cannot copy tensor name %zu", i);
        }
        s[i].dtype = (fc_dtype)in[i]->dtype;
        s[i].ndim = (uint32_t)in[i]->n_shape;
        if (in[i]->n_shape)
            memcpy(s[i].shape, in[i]->shape, in[i]->n_shape * sizeof s[i].shape[0]);
    }
    *out = s;
    return FC_OK;
}

/* Fills m->specs/spec_ptrs from core specs, validating them first. The wire structs borrow the
 * names and shapes of `in`. */
static fc_status specs_to_wire(fc_wire_msg *m, const char *msg, const fc_tensor_spec *in, size_t n,
                               uint64_t *total, fc_error *err) {
    if (n > FC_WIRE_MAX_TENSORS)
        return fc_error_set(err, FC_ERR_LIMIT, "%s lists %zu tensors, above the limit %u", msg, n,
                            FC_WIRE_MAX_TENSORS);
    spec_ref *refs = n ? fc_mallocarray(n, sizeof *refs) : NULL;
    if (n && !refs)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: cannot check %zu tensor specs", msg, n);
    for (size_t i = 0; i < n; i++) {
        refs[i].name = in[i].name;
        refs[i].dtype = (int)in[i].dtype;
        refs[i].ndim = in[i].ndim;
        refs[i].shape = in[i].shape;
    }
    fc_status st = check_specs(msg, refs, n, total, err);
    fc_free(refs);
    if (st != FC_OK || n == 0)
        return st;
    m->specs = fc_calloc(n, sizeof *m->specs);
    m->spec_ptrs = fc_calloc(n, sizeof *m->spec_ptrs);
    if (!m->specs || !m->spec_ptrs)
        return fc_error_set(err, FC_ERR_NOMEM, "%s: cannot allocate %zu tensor specs", msg, n);
    for (size_t i = 0; i < n; i++) {
        Fedcoord__V1__TensorSpec *w = &m->specs[i];
        fedcoord__v1__tensor_spec__init(w);
        w->name = in[i].name;
        w->dtype = (Fedcoord__V1__DType)in[i].dtype;
        w->n_shape = in[i].ndim;
        w->shape = (uint64_t *)in[i].shape;
        m->spec_ptrs[i] = w;
    }
    return FC_OK;
}

/* ---- builders ---- */

static void msg_init(fc_wire_msg *m, uint64_t seq, Fedcoord__V1__Envelope__BodyCase body) {
    memset(m, 0, sizeof *m);
    fedcoord__v1__envelope__init(&m->env);
    m->env.seq = seq;
    m->env.body_case = body;
}

void fc_wire_msg_free(fc_wire_msg *m) {
    fc_free(m->specs);
    fc_free(m->spec_ptrs);
    fc_free(m->entries);
    fc_free(m->entry_ptrs);
    m->specs = NULL;
    m->spec_ptrs = NULL;
    m->entries = NULL;
    m->entry_ptrs = NULL;
}

static ProtobufCBinaryData bin(fc_wire_bytes b) {
    ProtobufCBinaryData d = {b.len, (uint8_t *)b.data};
    return d;
}

static ProtobufCBinaryData sha(const uint8_t *p) {
    ProtobufCBinaryData d = {p ? FC_WIRE_SHA256_BYTES : 0, (uint8_t *)p};
    return d;
}

/* protobuf-c packs a NULL string as absent, but the generated init uses "" for proto3 strings;
 * keep that convention so packed output never depends on NULL vs "". */
static char *str(const char *s) { return (char *)(s ? s : ""); }

fc_status fc_wire_hello(fc_wire_msg *m, uint64_t seq, const fc_wire_hello_args *a, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_HELLO);
    Fedcoord__V1__Hello *h = &m->body.hello;
    fedcoord__v1__hello__init(h);
    h->protocol_major = FC_PROTOCOL_MAJOR;
    h->protocol_minor = FC_PROTOCOL_MINOR;
    h->client_name = str(a->client_name);
    h->token = bin(a->token);
    h->capabilities = (char **)a->capabilities;
    h->n_capabilities = a->n_capabilities;
    h->resume_token = bin(a->resume_token);
    h->software = str(a->software);
    m->env.hello = h;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_welcome(fc_wire_msg *m, uint64_t seq, const fc_wire_welcome_args *a,
                          fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_WELCOME);
    Fedcoord__V1__Welcome *w = &m->body.welcome;
    fedcoord__v1__welcome__init(w);
    w->protocol_major = FC_PROTOCOL_MAJOR;
    w->protocol_minor = FC_PROTOCOL_MINOR;
    w->session_id = str(a->session_id);
    w->resume_token = bin(a->resume_token);
    w->heartbeat_interval_ms = a->heartbeat_interval_ms;
    w->max_frame_bytes = a->max_frame_bytes;
    w->max_chunk_bytes = a->max_chunk_bytes;
    w->capabilities = (char **)a->capabilities;
    w->n_capabilities = a->n_capabilities;
    w->software = str(a->software);
    m->env.welcome = w;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_heartbeat(fc_wire_msg *m, uint64_t seq, uint64_t unix_ms, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT);
    fedcoord__v1__heartbeat__init(&m->body.heartbeat);
    m->body.heartbeat.unix_ms = unix_ms;
    m->env.heartbeat = &m->body.heartbeat;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_task(fc_wire_msg *m, uint64_t seq, const fc_wire_task_args *a, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_TASK);
    Fedcoord__V1__Task *t = &m->body.task;
    fedcoord__v1__task__init(t);
    m->env.task = t;
    t->round = a->round;
    t->kind = (Fedcoord__V1__TaskKind)a->kind;
    t->model_version = a->model_version;
    t->model_sha256 = sha(a->model_sha256);
    t->model_bytes = a->model_bytes;
    t->deadline_unix_ms = a->deadline_unix_ms;
    fc_status st = check_config("task", a->config, a->n_config, err);
    if (st != FC_OK)
        return st;
    if (a->n_config) {
        Fedcoord__V1__Task__ConfigEntry *e = fc_calloc(a->n_config, sizeof *e);
        Fedcoord__V1__Task__ConfigEntry **p = fc_calloc(a->n_config, sizeof *p);
        m->entries = e;
        m->entry_ptrs = (void **)p;
        if (!e || !p)
            return fc_error_set(err, FC_ERR_NOMEM, "task: cannot allocate %zu config entries",
                                a->n_config);
        for (size_t i = 0; i < a->n_config; i++) {
            fedcoord__v1__task__config_entry__init(&e[i]);
            e[i].key = (char *)a->config[i].key;
            e[i].value = str(a->config[i].value);
            p[i] = &e[i];
        }
        t->config = p;
        t->n_config = a->n_config;
    }
    if ((st = specs_to_wire(m, "task", a->tensors, a->n_tensors, NULL, err)) != FC_OK)
        return st;
    t->tensors = m->spec_ptrs;
    t->n_tensors = a->n_tensors;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_model_request(fc_wire_msg *m, uint64_t seq, uint64_t version, uint64_t offset,
                                fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_MODEL_REQUEST);
    fedcoord__v1__model_request__init(&m->body.model_request);
    m->body.model_request.version = version;
    m->body.model_request.offset = offset;
    m->env.model_request = &m->body.model_request;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_model_begin(fc_wire_msg *m, uint64_t seq, uint64_t version,
                              const fc_tensor_spec *tensors, size_t n_tensors,
                              uint64_t total_bytes, const uint8_t *sha256, uint64_t offset,
                              fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN);
    Fedcoord__V1__ModelBegin *b = &m->body.model_begin;
    fedcoord__v1__model_begin__init(b);
    m->env.model_begin = b;
    b->version = version;
    b->total_bytes = total_bytes;
    b->sha256 = sha(sha256);
    b->offset = offset;
    fc_status st = specs_to_wire(m, "model_begin", tensors, n_tensors, NULL, err);
    if (st != FC_OK)
        return st;
    b->tensors = m->spec_ptrs;
    b->n_tensors = n_tensors;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_chunk(fc_wire_msg *m, uint64_t seq, uint32_t tensor_index, uint64_t offset,
                        const void *data, size_t len, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_CHUNK);
    Fedcoord__V1__Chunk *c = &m->body.chunk;
    fedcoord__v1__chunk__init(c);
    c->tensor_index = tensor_index;
    c->offset = offset;
    c->data.data = (uint8_t *)data;
    c->data.len = len;
    m->env.chunk = c;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_model_end(fc_wire_msg *m, uint64_t seq, uint64_t version, const uint8_t *sha256,
                            fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_MODEL_END);
    fedcoord__v1__model_end__init(&m->body.model_end);
    m->body.model_end.version = version;
    m->body.model_end.sha256 = sha(sha256);
    m->env.model_end = &m->body.model_end;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_update_begin(fc_wire_msg *m, uint64_t seq, const fc_wire_update_begin_args *a,
                               fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_UPDATE_BEGIN);
    Fedcoord__V1__UpdateBegin *u = &m->body.update_begin;
    fedcoord__v1__update_begin__init(u);
    m->env.update_begin = u;
    u->round = a->round;
    u->base_version = a->base_version;
    u->total_bytes = a->total_bytes;
    u->is_delta = a->is_delta ? 1 : 0;
    u->resume_offset = a->resume_offset;
    fc_status st = specs_to_wire(m, "update_begin", a->tensors, a->n_tensors, NULL, err);
    if (st != FC_OK)
        return st;
    u->tensors = m->spec_ptrs;
    u->n_tensors = a->n_tensors;
    return fc_wire_validate(&m->env, err);
}

/* UpdateEnd and EvalResult metrics entries have distinct generated types of the same layout. */
#define BUILD_METRICS(m, entry_t, init_fn, metrics, n, dst, ndst, msgname)                        \
    do {                                                                                          \
        if ((n) > FC_WIRE_MAX_LIST)                                                               \
            return fc_error_set(err, FC_ERR_LIMIT, "%s.metrics has %zu entries, above the "       \
                                "limit %u", msgname, (size_t)(n), FC_WIRE_MAX_LIST);             \
        if ((n) == 0)                                                                             \
            break;                                                                                \
        entry_t *e_ = fc_calloc((n), sizeof *e_);                                                 \
        entry_t **p_ = fc_calloc((n), sizeof *p_);                                                \
        (m)->entries = e_;                                                                        \
        (m)->entry_ptrs = (void **)p_;                                                            \
        if (!e_ || !p_)                                                                           \
            return fc_error_set(err, FC_ERR_NOMEM, "%s: cannot allocate %zu metrics", msgname,    \
                                (size_t)(n));                                                     \
        for (size_t i_ = 0; i_ < (n); i_++) {                                                     \
            init_fn(&e_[i_]);                                                                     \
            e_[i_].key = str((metrics)[i_].name);                                                 \
            e_[i_].value = (metrics)[i_].value;                                                   \
            p_[i_] = &e_[i_];                                                                     \
        }                                                                                         \
        (dst) = p_;                                                                               \
        (ndst) = (n);                                                                             \
    } while (0)

fc_status fc_wire_update_end(fc_wire_msg *m, uint64_t seq, const uint8_t *sha256,
                             uint64_t num_examples, const fc_wire_metric *metrics,
                             size_t n_metrics, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END);
    Fedcoord__V1__UpdateEnd *u = &m->body.update_end;
    fedcoord__v1__update_end__init(u);
    m->env.update_end = u;
    u->sha256 = sha(sha256);
    u->num_examples = num_examples;
    BUILD_METRICS(m, Fedcoord__V1__UpdateEnd__MetricsEntry,
                  fedcoord__v1__update_end__metrics_entry__init, metrics, n_metrics, u->metrics,
                  u->n_metrics, "update_end");
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_eval_result(fc_wire_msg *m, uint64_t seq, uint64_t round,
                              uint64_t model_version, uint64_t num_examples,
                              const fc_wire_metric *metrics, size_t n_metrics, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_EVAL_RESULT);
    Fedcoord__V1__EvalResult *r = &m->body.eval_result;
    fedcoord__v1__eval_result__init(r);
    m->env.eval_result = r;
    r->round = round;
    r->model_version = model_version;
    r->num_examples = num_examples;
    BUILD_METRICS(m, Fedcoord__V1__EvalResult__MetricsEntry,
                  fedcoord__v1__eval_result__metrics_entry__init, metrics, n_metrics, r->metrics,
                  r->n_metrics, "eval_result");
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_ack(fc_wire_msg *m, uint64_t seq, uint64_t ref_seq, uint64_t offset,
                      const char *detail, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_ACK);
    fedcoord__v1__ack__init(&m->body.ack);
    m->body.ack.ref_seq = ref_seq;
    m->body.ack.offset = offset;
    m->body.ack.detail = str(detail);
    m->env.ack = &m->body.ack;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_error(fc_wire_msg *m, uint64_t seq, fc_status st, int fatal, uint64_t ref_seq,
                        const char *message, fc_error *err) {
    const fc_wire_error_code *row = fc_wire_error_for_status(st);
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_ERROR);
    Fedcoord__V1__Error *e = &m->body.error;
    fedcoord__v1__error__init(e);
    e->code = row->code;
    e->name = (char *)row->name;
    e->message = str(message);
    e->fatal = fatal < 0 ? row->fatal : fatal != 0;
    e->ref_seq = ref_seq;
    m->env.error = e;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_bye(fc_wire_msg *m, uint64_t seq, const char *reason, fc_error *err) {
    msg_init(m, seq, FEDCOORD__V1__ENVELOPE__BODY_BYE);
    fedcoord__v1__bye__init(&m->body.bye);
    m->body.bye.reason = str(reason);
    m->env.bye = &m->body.bye;
    return fc_wire_validate(&m->env, err);
}

fc_status fc_wire_encode(const fc_wire_msg *m, size_t max_frame, fc_buf *out, fc_error *err) {
    return fc_frame_encode(&m->env, max_frame, out, err);
}

/* ---- validation ---- */

fc_status fc_wire_validate_chunk(const fc_chunk_view *v, fc_error *err) {
    if (v->data_len == 0)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk (seq %llu) of tensor %u at offset %llu "
                            "carries no data",
                            (unsigned long long)v->seq, v->tensor_index,
                            (unsigned long long)v->offset);
    if (v->data_len > FC_CHUNK_MAX_DATA)
        return fc_error_set(err, FC_ERR_LIMIT,
                            "chunk (seq %llu) carries %zu bytes, above the limit %zu",
                            (unsigned long long)v->seq, v->data_len, FC_CHUNK_MAX_DATA);
    return FC_OK;
}

fc_status fc_wire_chunk_view(const fc_envelope *env, fc_chunk_view *out, fc_error *err) {
    if (env->body_case != FEDCOORD__V1__ENVELOPE__BODY_CHUNK || !env->chunk)
        return fc_error_set(err, FC_ERR_PROTOCOL, "expected a chunk, got %s (seq %llu)",
                            fc_wire_body_name(env->body_case), (unsigned long long)env->seq);
    out->seq = env->seq;
    out->tensor_index = env->chunk->tensor_index;
    out->offset = env->chunk->offset;
    out->data = env->chunk->data.data;
    out->data_len = env->chunk->data.len;
    return FC_OK;
}

static fc_status validate_metrics_update(const Fedcoord__V1__UpdateEnd *u, fc_error *err) {
    metric_ref refs[FC_WIRE_MAX_LIST];
    fc_status st = check_list("update_end", "metrics", u->n_metrics, FC_WIRE_MAX_LIST, err);
    if (st != FC_OK)
        return st;
    for (size_t i = 0; i < u->n_metrics; i++) {
        refs[i].name = u->metrics[i]->key;
        refs[i].value = u->metrics[i]->value;
    }
    return check_metrics("update_end", refs, u->n_metrics, err);
}

static fc_status validate_metrics_eval(const Fedcoord__V1__EvalResult *r, fc_error *err) {
    metric_ref refs[FC_WIRE_MAX_LIST];
    fc_status st = check_list("eval_result", "metrics", r->n_metrics, FC_WIRE_MAX_LIST, err);
    if (st != FC_OK)
        return st;
    for (size_t i = 0; i < r->n_metrics; i++) {
        refs[i].name = r->metrics[i]->key;
        refs[i].value = r->metrics[i]->value;
    }
    return check_metrics("eval_result", refs, r->n_metrics, err);
}

static fc_status validate_config(const Fedcoord__V1__Task *t, fc_error *err) {
    fc_wire_kv kv[FC_WIRE_MAX_LIST];
    fc_status st = check_list("task", "config", t->n_config, FC_WIRE_MAX_LIST, err);
    if (st != FC_OK)
        return st;
    for (size_t i = 0; i < t->n_config; i++) {
        kv[i].key = t->config[i]->key;
        kv[i].value = t->config[i]->value;
    }
    return check_config("task", kv, t->n_config, err);
}

static fc_status validate_total(const char *msg, uint64_t declared, uint64_t sum, fc_error *err) {
    if (declared != sum)
        return fc_error_set(err, FC_ERR_SHAPE,
                            "%s declares %llu bytes but its tensors hold %llu bytes", msg,
                            (unsigned long long)declared, (unsigned long long)sum);
    return FC_OK;
}

static fc_status validate_body(const fc_envelope *env, fc_error *err) {
    fc_status st;
    uint64_t sum = 0;
    switch (env->body_case) {
    case FEDCOORD__V1__ENVELOPE__BODY_HELLO: {
        const Fedcoord__V1__Hello *h = env->hello;
        if ((st = check_string("hello", "client_name", h->client_name, FC_WIRE_MAX_SHORT_STRING,
                               0, err)) ||
            (st = check_bytes("hello", "token", h->token.len, FC_WIRE_MAX_TOKEN, err)) ||
            (st = check_strings("hello", "capabilities", h->capabilities, h->n_capabilities,
                                err)) ||
            (st = check_bytes("hello", "resume_token", h->resume_token.len, FC_WIRE_MAX_TOKEN,
                              err)) ||
            (st = check_string("hello", "software", h->software, FC_WIRE_MAX_SHORT_STRING, 0,
                               err)))
            return st;
        return FC_OK;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_WELCOME: {
        const Fedcoord__V1__Welcome *w = env->welcome;
        if ((st = check_string("welcome", "session_id", w->session_id, FC_WIRE_MAX_SHORT_STRING,
                               1, err)) ||
            (st = check_bytes("welcome", "resume_token", w->resume_token.len, FC_WIRE_MAX_TOKEN,
                              err)) ||
            (st = check_strings("welcome", "capabilities", w->capabilities, w->n_capabilities,
                                err)) ||
            (st = check_string("welcome", "software", w->software, FC_WIRE_MAX_SHORT_STRING, 0,
                               err)))
            return st;
        if (w->heartbeat_interval_ms == 0)
            return fc_error_set(err, FC_ERR_INVALID, "welcome.heartbeat_interval_ms is 0");
        if (w->max_frame_bytes < FC_WIRE_MIN_FRAME)
            return fc_error_set(err, FC_ERR_INVALID,
                                "welcome.max_frame_bytes %u is below the minimum %u",
                                w->max_frame_bytes, FC_WIRE_MIN_FRAME);
        if (w->max_chunk_bytes == 0 || w->max_chunk_bytes > FC_CHUNK_MAX_DATA)
            return fc_error_set(err, FC_ERR_INVALID,
                                "welcome.max_chunk_bytes %u is outside 1..%zu", w->max_chunk_bytes,
                                FC_CHUNK_MAX_DATA);
        if ((size_t)w->max_chunk_bytes + 64 > w->max_frame_bytes)
            return fc_error_set(err, FC_ERR_INVALID,
                                "welcome.max_chunk_bytes %u does not fit max_frame_bytes %u with "
                                "64 bytes of framing",
                                w->max_chunk_bytes, w->max_frame_bytes);
        return FC_OK;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_HEARTBEAT:
        return FC_OK;
    case FEDCOORD__V1__ENVELOPE__BODY_TASK: {
        const Fedcoord__V1__Task *t = env->task;
        if (t->kind != FEDCOORD__V1__TASK_KIND__TASK_KIND_TRAIN &&
            t->kind != FEDCOORD__V1__TASK_KIND__TASK_KIND_EVALUATE)
            return fc_error_set(err, FC_ERR_INVALID, "task.kind %d is not train (1) or evaluate (2)",
                                (int)t->kind);
        if ((st = validate_config(t, err)) ||
            (st = check_wire_specs("task", t->tensors, t->n_tensors, &sum, err)) ||
            (st = check_sha("task", "model_sha256", t->model_sha256.len, err)) ||
            (st = validate_total("task", t->model_bytes, sum, err)))
            return st;
        return FC_OK;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_REQUEST:
        return FC_OK;
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_BEGIN: {
        const Fedcoord__V1__ModelBegin *b = env->model_begin;
        if ((st = check_wire_specs("model_begin", b->tensors, b->n_tensors, &sum, err)) ||
            (st = check_sha("model_begin", "sha256", b->sha256.len, err)) ||
            (st = validate_total("model_begin", b->total_bytes, sum, err)))
            return st;
        if (b->offset > b->total_bytes)
            return fc_error_set(err, FC_ERR_RANGE,
                                "model_begin.offset %llu is beyond total_bytes %llu",
                                (unsigned long long)b->offset,
                                (unsigned long long)b->total_bytes);
        return FC_OK;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_CHUNK: {
        fc_chunk_view v;
        if ((st = fc_wire_chunk_view(env, &v, err)) != FC_OK)
            return st;
        return fc_wire_validate_chunk(&v, err);
    }
    case FEDCOORD__V1__ENVELOPE__BODY_MODEL_END:
        return check_sha("model_end", "sha256", env->model_end->sha256.len, err);
    case FEDCOORD__V1__ENVELOPE__BODY_UPDATE_BEGIN: {
        const Fedcoord__V1__UpdateBegin *u = env->update_begin;
        if ((st = check_wire_specs("update_begin", u->tensors, u->n_tensors, &sum, err)) ||
            (st = validate_total("update_begin", u->total_bytes, sum, err)))
            return st;
        if (u->resume_offset > u->total_bytes)
            return fc_error_set(err, FC_ERR_RANGE,
                                "update_begin.resume_offset %llu is beyond total_bytes %llu",
                                (unsigned long long)u->resume_offset,
                                (unsigned long long)u->total_bytes);
        return FC_OK;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_UPDATE_END: {
        const Fedcoord__V1__UpdateEnd *u = env->update_end;
        if ((st = check_sha("update_end", "sha256", u->sha256.len, err)))
            return st;
        if (u->num_examples == 0)
            return fc_error_set(err, FC_ERR_INVALID, "update_end.num_examples is 0");
        return validate_metrics_update(u, err);
    }
    case FEDCOORD__V1__ENVELOPE__BODY_EVAL_RESULT: {
        const Fedcoord__V1__EvalResult *r = env->eval_result;
        if (r->num_examples == 0)
            return fc_error_set(err, FC_ERR_INVALID, "eval_result.num_examples is 0");
        return validate_metrics_eval(r, err);
    }
    case FEDCOORD__V1__ENVELOPE__BODY_ACK:
        return check_string("ack", "detail", env->ack->detail, FC_WIRE_MAX_TEXT, 0, err);
    case FEDCOORD__V1__ENVELOPE__BODY_ERROR: {
        const Fedcoord__V1__Error *e = env->error;
        if (e->code == 0)
            return fc_error_set(err, FC_ERR_INVALID, "error.code 0 is reserved");
        if ((st = check_string("error", "name", e->name, FC_WIRE_MAX_SHORT_STRING, 0, err)) ||
            (st = check_string("error", "message", e->message, FC_WIRE_MAX_TEXT, 0, err)))
            return st;
        return FC_OK;
    }
    case FEDCOORD__V1__ENVELOPE__BODY_BYE:
        return check_string("bye", "reason", env->bye->reason, FC_WIRE_MAX_TEXT, 0, err);
    case FEDCOORD__V1__ENVELOPE__BODY__NOT_SET:
    case _FEDCOORD__V1__ENVELOPE__BODY__CASE_IS_INT_SIZE:
        break;
    }
    return fc_error_set(err, FC_ERR_PROTOCOL, "unknown message type (body field %d, seq %llu)",
                        (int)env->body_case, (unsigned long long)env->seq);
}

fc_status fc_wire_validate(const fc_envelope *env, fc_error *err) {
    fc_status st = validate_body(env, err);
    if (st != FC_OK && env->body_case != FEDCOORD__V1__ENVELOPE__BODY__NOT_SET)
        fc_error_prefix(err, "seq %llu", (unsigned long long)env->seq);
    return st;
}

fc_status fc_wire_decode(const uint8_t *data, size_t len, fc_envelope **out, fc_error *err) {
    fc_envelope *env;
    fc_status st = fc_envelope_unpack(data, len, &env, err);
    if (st != FC_OK) {
        *out = NULL;
        return st;
    }
    if ((st = fc_wire_validate(env, err)) != FC_OK) {
        fc_envelope_free(env);
        *out = NULL;
        return st;
    }
    *out = env;
    return FC_OK;
}
