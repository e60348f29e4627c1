/* wire.h: the messages of the fedcoord wire protocol, shared by the server and the client SDK.
 *
 * This module knows what each message means at the level of a single message: it builds every
 * message as an Envelope ready for fc_frame_encode, validates received Envelopes (limits, tensor
 * specs, hash lengths, finite metrics), converts tensor specs between core/tensor.h and the wire,
 * maps fc_status to the stable wire error codes and back, and checks protocol versions. It never
 * tracks session state or sequences of messages (the server's and SDK's session code does that),
 * and never touches sockets. docs/protocol.md is the specification this file implements.
 */
#ifndef FC_WIRE_H
#define FC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "core/tensor.h"
#include "proto/frame.h"

/* ---- protocol version ---- */

#define FC_PROTOCOL_MAJOR 1u
#define FC_PROTOCOL_MINOR 0u

typedef enum fc_wire_role { FC_WIRE_CLIENT = 1, FC_WIRE_SERVER = 2 } fc_wire_role;

/* Checks the peer's protocol version against ours. `local` is our role. Majors must be equal;
 * minors may differ (a minor only adds fields or capabilities). Returns FC_OK or FC_ERR_VERSION
 * with a detail such as "client speaks protocol 2.1, server speaks 1.0: major versions must
 * match". A major of 0 means the peer sent no version. */
fc_status fc_wire_check_version(fc_wire_role local, uint32_t peer_major, uint32_t peer_minor,
                                fc_error *err);

/* ---- limits (docs/protocol.md, "Limits") ---- */

#define FC_WIRE_MAX_TENSORS 1000000u   /* tensor specs in one header */
#define FC_WIRE_MAX_SHORT_STRING 256u  /* client_name, session_id, software, cap., keys */
#define FC_WIRE_MAX_TEXT 4096u         /* error message, ack detail, bye reason, config value */
#define FC_WIRE_MAX_TOKEN 1024u        /* credential and resume token bytes */
#define FC_WIRE_MAX_LIST 256u          /* capabilities, config entries, metrics */
#define FC_WIRE_SHA256_BYTES 32u
#define FC_WIRE_MIN_FRAME 65536u       /* smallest max_frame_bytes a Welcome may announce */

/* ---- wire error codes ---- */

/* One row of the error-code table. `code` and `name` are what travels; `status` is the fc_status
 * a receiver reports; `fatal` is the default of Error.fatal when a sender uses this code. */
typedef struct fc_wire_error_code {
    uint32_t code;
    const char *name;
    fc_status status;
    int fatal;
    const char *meaning;
} fc_wire_error_code;

/* The whole table, in code order. Codes and names are stable forever; rows are only appended. */
const fc_wire_error_code *fc_wire_error_table(size_t *count);

/* Row for a wire code, or NULL for an unknown code. */
const fc_wire_error_code *fc_wire_error_by_code(uint32_t code);

/* Row to send for a status. Statuses without a row of their own (FC_OK included) map to
 * INTERNAL: they describe local trouble the peer cannot act on. Never NULL. */
const fc_wire_error_code *fc_wire_error_for_status(fc_status st);

/* The status a received code means. Unknown codes (from a newer minor version) mean what
 * INTERNAL means; the Error's own fatal flag still applies. */
fc_status fc_wire_status_for_code(uint32_t code);

#define FC_WIRE_CODE_INTERNAL 1u

/* ---- building messages ---- */

/* An outgoing message: an Envelope plus storage for its body and conversions. Strings and byte
 * ranges passed to the builders are borrowed: keep them alive until the message is encoded.
 * Tensor specs, config and metrics are converted into storage the message owns; release it with
 * fc_wire_msg_free (also after a builder failed). Not shared between threads. */
typedef struct fc_wire_msg {
    fc_envelope env;
    union {
        Fedcoord__V1__Hello hello;
        Fedcoord__V1__Welcome welcome;
        Fedcoord__V1__Heartbeat heartbeat;
        Fedcoord__V1__Task task;
        Fedcoord__V1__ModelRequest model_request;
        Fedcoord__V1__ModelBegin model_begin;
        Fedcoord__V1__Chunk chunk;
        Fedcoord__V1__ModelEnd model_end;
        Fedcoord__V1__UpdateBegin update_begin;
        Fedcoord__V1__UpdateEnd update_end;
        Fedcoord__V1__EvalResult eval_result;
        Fedcoord__V1__Ack ack;
        Fedcoord__V1__Error error;
        Fedcoord__V1__Bye bye;
    } body;
    /* owned conversion storage */
    Fedcoord__V1__TensorSpec *specs;
    Fedcoord__V1__TensorSpec **spec_ptrs;
    void *entries;      /* map entries (config or metrics) */
    void **entry_ptrs;
} fc_wire_msg;

typedef struct fc_wire_bytes {
    const uint8_t *data;
    size_t len;
} fc_wire_bytes;

typedef struct fc_wire_kv {
    const char *key;
    const char *value;
} fc_wire_kv;

typedef struct fc_wire_metric {
    const char *name;
    double value;
} fc_wire_metric;

typedef struct fc_wire_hello_args {
    const char *client_name;
    fc_wire_bytes token;
    const char *const *capabilities;
    size_t n_capabilities;
    fc_wire_bytes resume_token;
    const char *software;
} fc_wire_hello_args;

typedef struct fc_wire_welcome_args {
    const char *session_id;
    fc_wire_bytes resume_token;
    uint32_t heartbeat_interval_ms;
    uint32_t max_frame_bytes;
    uint32_t max_chunk_bytes;
    const char *const *capabilities;
    size_t n_capabilities;
    const char *software;
} fc_wire_welcome_args;

typedef enum fc_task_kind { FC_TASK_TRAIN = 1, FC_TASK_EVALUATE = 2 } fc_task_kind;

typedef struct fc_wire_task_args {
    uint64_t round;
    fc_task_kind kind;
    uint64_t model_version;
    const fc_wire_kv *config;
    size_t n_config;
    const fc_tensor_spec *tensors;
    size_t n_tensors;
    const uint8_t *model_sha256; /* FC_WIRE_SHA256_BYTES */
    uint64_t model_bytes;
    uint64_t deadline_unix_ms;
} fc_wire_task_args;

typedef struct fc_wire_update_begin_args {
    uint64_t round;
    uint64_t base_version;
    const fc_tensor_spec *tensors;
    size_t n_tensors;
    uint64_t total_bytes;
    int is_delta;
    uint64_t resume_offset;
} fc_wire_update_begin_args;

/* Each builder initialises *m (no prior init needed) as Envelope{seq, body} and returns FC_OK,
 * FC_ERR_NOMEM, or FC_ERR_INVALID / FC_ERR_SHAPE / FC_ERR_DTYPE / FC_ERR_OVERFLOW / FC_ERR_LIMIT
 * when an argument could never pass fc_wire_validate (so a bad message is caught at the sender).
 * Call fc_wire_msg_free(m) afterwards in every case. */
fc_status fc_wire_hello(fc_wire_msg *m, uint64_t seq, const fc_wire_hello_args *a, fc_error *err);
fc_status fc_wire_welcome(fc_wire_msg *m, uint64_t seq, const fc_wire_welcome_args *a,
                          fc_error *err);
fc_status fc_wire_heartbeat(fc_wire_msg *m, uint64_t seq, uint64_t unix_ms, fc_error *err);
fc_status fc_wire_task(fc_wire_msg *m, uint64_t seq, const fc_wire_task_args *a, fc_error *err);
fc_status fc_wire_model_request(fc_wire_msg *m, uint64_t seq, uint64_t version, uint64_t offset,
                                fc_error *err);
fc_status fc_wire_model_begin(fc_wire_msg *m, uint64_t seq, uint64_t version,
                              const fc_tensor_spec *tensors, size_t n_tensors,
                              uint64_t total_bytes, const uint8_t *sha256, uint64_t offset,
                              fc_error *err);
/* data is borrowed; 1..FC_CHUNK_MAX_DATA bytes. For bulk data prefer fc_frame_encode_chunk. */
fc_status fc_wire_chunk(fc_wire_msg *m, uint64_t seq, uint32_t tensor_index, uint64_t offset,
                        const void *data, size_t len, fc_error *err);
fc_status fc_wire_model_end(fc_wire_msg *m, uint64_t seq, uint64_t version, const uint8_t *sha256,
                            fc_error *err);
fc_status fc_wire_update_begin(fc_wire_msg *m, uint64_t seq, const fc_wire_update_begin_args *a,
                               fc_error *err);
fc_status fc_wire_update_end(fc_wire_msg *m, uint64_t seq, const uint8_t *sha256,
                             uint64_t num_examples, const fc_wire_metric *metrics,
                             size_t n_metrics, fc_error *err);
fc_status fc_wire_eval_result(fc_wire_msg *m, uint64_t seq, uint64_t round,
                              uint64_t model_version, uint64_t num_examples,
                              const fc_wire_metric *metrics, size_t n_metrics, fc_error *err);
fc_status fc_wire_ack(fc_wire_msg *m, uint64_t seq, uint64_t ref_seq, uint64_t offset,
                      const char *detail, fc_error *err);
/* Error for status st: code and name from fc_wire_error_for_status. fatal < 0 takes the table's
 * default for the code. message may be NULL. */
#define FC_WIRE_FATAL_DEFAULT (-1)
fc_status fc_wire_error(fc_wire_msg *m, uint64_t seq, fc_status st, int fatal, uint64_t ref_seq,
                        const char *message, fc_error *err);
fc_status fc_wire_bye(fc_wire_msg *m, uint64_t seq, const char *reason, fc_error *err);

/* Appends m as one frame to out (fc_frame_encode). */
fc_status fc_wire_encode(const fc_wire_msg *m, size_t max_frame, fc_buf *out, fc_error *err);

void fc_wire_msg_free(fc_wire_msg *m);

/* ---- receiving ---- */

/* Checks one received Envelope against the per-message rules of docs/protocol.md (every string
 * and list within its limit, known enums, tensor specs valid and totals consistent, SHA-256
 * fields 32 bytes, metrics finite, num_examples >= 1, chunk data 1..FC_CHUNK_MAX_DATA bytes).
 * Errors: FC_ERR_PROTOCOL (no body), FC_ERR_LIMIT, FC_ERR_INVALID, FC_ERR_DTYPE,
 * FC_ERR_OVERFLOW, FC_ERR_SHAPE, FC_ERR_CHUNK, FC_ERR_NON_FINITE, FC_ERR_RANGE; the detail names
 * the message, field and index. Rules that need session context (state, round, offsets against
 * the staged size) are the session's. */
fc_status fc_wire_validate(const fc_envelope *env, fc_error *err);

/* fc_envelope_unpack followed by fc_wire_validate; *out is NULL on error. */
fc_status fc_wire_decode(const uint8_t *data, size_t len, fc_envelope **out, fc_error *err);

/* Checks a chunk's own limits: 1..FC_CHUNK_MAX_DATA bytes of data. */
fc_status fc_wire_validate_chunk(const fc_chunk_view *v, fc_error *err);

/* Fills a view of an unpacked Chunk Envelope (pointers into env). FC_ERR_PROTOCOL if env's body
 * is not a chunk. */
fc_status fc_wire_chunk_view(const fc_envelope *env, fc_chunk_view *out, fc_error *err);

/* Message name of a body ("hello", "model_begin", ...), "none" for no body. */
const char *fc_wire_body_name(Fedcoord__V1__Envelope__BodyCase body);

/* Converts and validates n wire specs into a new array of fc_tensor_spec with owned names
 * (free with fc_wire_specs_free). Checks: n <= FC_WIRE_MAX_TENSORS, names 1..FC_MAX_TENSOR_NAME
 * bytes and unique, dtype known, at most FC_MAX_DIMS dims, byte sizes and their total fit in 64
 * bits. *total_bytes (may be NULL) receives the sum of the tensors' byte sizes. */
fc_status fc_wire_specs_from_wire(Fedcoord__V1__TensorSpec *const *in, size_t n,
                                  fc_tensor_spec **out, uint64_t *total_bytes, fc_error *err);
void fc_wire_specs_free(fc_tensor_spec *specs, size_t n);

#endif
