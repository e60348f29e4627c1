/* fedcoord/client.h: libfedclient, the client SDK of the fedcoord federated-learning coordinator.
 *
 * This header is the whole contract. A training program opens a client (TLS 1.3 to the
 * coordinator, server certificate and host name verified, then Hello/Welcome), asks for tasks,
 * trains or evaluates on the task's model, and submits the result:
 *
 *     fc_client_config cfg = FC_CLIENT_CONFIG_INIT;
 *     cfg.server = "coord.example.org:7070"; cfg.ca_file = "ca.pem";
 *     cfg.client_name = "site-3"; cfg.token = getenv("FEDCOORD_TOKEN");
 *     fc_client *c = NULL;
 *     if (fc_client_open(&cfg, &c) != FC_OK) { puts(c ? fc_client_error(c) : "no memory"); ... }
 *     for (;;) {
 *         fc_task *t = NULL;
 *         fc_status st = fc_client_next_task(c, 600000, &t);
 *         if (st != FC_OK || t == NULL) break;        // error, or the server said "done"
 *         ... train on fc_task_tensor(t, i, &info) ...
 *         st = fc_client_submit(c, t, FC_SUBMIT_WEIGHTS, weights, n_examples, metrics, n);
 *         fc_task_free(t);
 *     }
 *     fc_client_close(c);
 *
 * Threads. All calls block. One fc_client belongs to one thread at a time: it has no locks, so
 * two threads must never call into the same client concurrently. Different clients in different
 * threads are independent. An fc_task may be read from any thread while no one frees it.
 *
 * Errors. Every fallible call returns an fc_status (FC_OK = 0) and leaves a human-readable
 * detail in fc_client_error(c), e.g. "server error 42 SHAPE_MISMATCH: update for round 12 has
 * tensor 'fc1.weight' shape [64,10], round expects [64,64]". fc_strerror() names a code.
 *
 * Memory. The SDK never aborts on out-of-memory: it returns FC_ERR_NOMEM. It holds one copy of
 * the current task's model (in the fc_task) plus about 3 MiB of buffers per client.
 *
 * Reconnection (docs/sdk.md, "Retry behaviour"). After the session is established, a broken
 * connection (peer closed, reset, no data for io_timeout_ms) is repaired inside the call that
 * noticed it: the client reconnects with exponential backoff and jitter, presents the resume
 * token of the last Welcome, and continues:
 *   - fc_client_next_task: keeps waiting (timeout_ms bounds the waiting; the reconnect
 *     attempts themselves are bounded by the reconnect policy), and resumes a model download
 *     from the bytes it already holds;
 *   - fc_client_submit: resumes the upload from the offset the server acknowledges (0 if the
 *     server kept nothing);
 *   - fc_client_report_eval: sends the EvalResult again (at-least-once);
 *   - fc_client_open: retries the first connection the same way while the server is
 *     unreachable (refused, reset, timed out).
 * Never retried, returned at once: certificate or host name verification failures (FC_ERR_TLS),
 * authentication refusals (FC_ERR_AUTH), protocol version mismatch (FC_ERR_VERSION), and every
 * Error frame the server sends about a request (its code mapped to fc_status). When the
 * reconnect attempts are used up the call returns FC_ERR_CLOSED with the last cause in the
 * detail, and the client is left disconnected: the next call starts a fresh attempt series.
 * fc_client_close never reconnects.
 *
 * Heartbeats. The SDK has no background thread: it sends heartbeats only while the caller is
 * inside a call. The server's heartbeats (sent when it has had nothing to say for its announced
 * interval) are absorbed silently by any call, at any point of an exchange. If local training outlasts the server's idle timeout, the server closes the
 * session; the next call notices, reconnects with the resume token and carries on as above.
 */
#ifndef FEDCOORD_CLIENT_H
#define FEDCOORD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FC_API __attribute__((visibility("default")))
#else
#define FC_API
#endif

/* The project's status codes. Inside the fedcoord source tree core/status.h defines the same
 * enum (this block is then skipped: include core headers first); the numbers are stable. */
#ifndef FC_STATUS_H
typedef enum fc_status {
    FC_OK = 0,
    FC_ERR_NOMEM = 1,        /* out of memory */
    FC_ERR_INVALID = 2,      /* invalid argument */
    FC_ERR_IO = 3,           /* input/output error (socket, file) */
    FC_ERR_FORMAT = 4,       /* malformed input */
    FC_ERR_OVERFLOW = 5,     /* size arithmetic overflow */
    FC_ERR_LIMIT = 6,        /* limit exceeded */
    FC_ERR_NOT_FOUND = 7,    /* not found (e.g. a config key) */
    FC_ERR_EXISTS = 8,       /* already exists */
    FC_ERR_PROTOCOL = 9,     /* protocol violation */
    FC_ERR_VERSION = 10,     /* incompatible protocol version */
    FC_ERR_AUTH = 11,        /* authentication failed */
    FC_ERR_TLS = 12,         /* TLS error (handshake, certificate, host name) */
    FC_ERR_HASH = 13,        /* SHA-256 mismatch */
    FC_ERR_SHAPE = 14,       /* tensor name, dtype or shape mismatch */
    FC_ERR_DTYPE = 15,       /* unsupported dtype */
    FC_ERR_CONFIG = 16,      /* configuration error */
    FC_ERR_STATE = 17,       /* operation not allowed in this state */
    FC_ERR_DB = 18,          /* database error */
    FC_ERR_CORRUPT = 19,     /* stored data is corrupt */
    FC_ERR_AGAIN = 20,       /* more input needed */
    FC_ERR_CLOSED = 21,      /* connection closed */
    FC_ERR_TIMEOUT = 22,     /* timed out */
    FC_ERR_UNSUPPORTED = 23, /* not supported */
    FC_ERR_NON_FINITE = 24,  /* non-finite value */
    FC_ERR_REQUIREMENT = 25, /* requirement not met */
    FC_ERR_BUSY = 26,        /* resource busy */
    FC_ERR_RANGE = 27,       /* value out of range */
    FC_ERR_CHUNK = 28,       /* bad chunk */
    FC_ERR_SYSTEM = 29,      /* system call failed */
} fc_status;

/* A one-line description of a status ("SHA-256 mismatch"). Never NULL; never blocks. */
FC_API const char *fc_strerror(fc_status st);
#endif

/* Tensor element types; the numbers are the wire's. Data is always little-endian, C order. */
#ifndef FC_TENSOR_H
typedef enum fc_dtype {
    FC_DTYPE_INVALID = 0,
    FC_DTYPE_F32 = 1,
    FC_DTYPE_F16 = 2,
    FC_DTYPE_BF16 = 3,
    FC_DTYPE_F64 = 4,
} fc_dtype;
#define FC_MAX_DIMS 8
#endif

typedef struct fc_client fc_client; /* opaque; owned by the caller until fc_client_close */
typedef struct fc_task fc_task;     /* opaque; owned by the caller until fc_task_free */

/* ---- configuration ---- */

/* Filled in by the caller. Start from FC_CLIENT_CONFIG_INIT so that `size` is right and every
 * optional field is zero (= default). The SDK copies what it needs during fc_client_open; the
 * strings need not outlive that call. Fields are only ever appended; `size` tells the library
 * which ones the caller knows. */
typedef struct fc_client_config {
    size_t size;             /* sizeof(fc_client_config) as compiled by the caller */
    const char *server;      /* "host:port", "192.0.2.7:7070" or "[2001:db8::7]:7070" (required) */
    const char *ca_file;     /* PEM bundle that issued the server certificate (required) */
    const char *server_name; /* name to verify in the certificate; NULL = the host of `server` */
    const char *cert_file;   /* optional client certificate (mutual TLS), PEM */
    const char *key_file;    /* its private key, PEM; required with cert_file */
    const char *token;       /* credential from `fedctl client add`; NULL under mutual TLS */
    const char *client_name; /* identity the token was issued to (required with a token) */
    uint32_t connect_timeout_ms; /* TCP connect + TLS handshake + Welcome; 0 = 10000 */
    uint32_t io_timeout_ms;      /* longest silence tolerated from the server in the middle of
                                    an exchange, and while idle; 0 = 120000 */
    int reconnect_max_attempts;  /* attempts per broken connection; 0 = 8; < 0 = never retry */
    uint32_t reconnect_base_ms;  /* first backoff delay; 0 = 250 */
    uint32_t reconnect_max_ms;   /* backoff ceiling; 0 = 30000 */
    uint64_t max_model_bytes;    /* largest model accepted from the server; 0 = 16 GiB */
} fc_client_config;

#define FC_CLIENT_CONFIG_INIT {sizeof(fc_client_config), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

/* ---- connection ---- */

/* Connects to cfg->server, performs a TLS 1.3 handshake that verifies the server certificate
 * against cfg->ca_file and the host name (or cfg->server_name), then sends Hello and waits for
 * Welcome, checking the protocol version. Transport failures are retried as described above.
 * Ownership: on return *out holds a client handle whenever memory allowed, even on failure, so
 * that fc_client_error(*out) can explain; the caller must pass it to fc_client_close. *out is
 * NULL only for FC_ERR_NOMEM or a NULL cfg/out.
 * Blocks up to the connect timeout per attempt, plus backoff between attempts.
 * Returns FC_OK, FC_ERR_INVALID / FC_ERR_CONFIG (bad config: missing field, unreadable PEM,
 * unparsable address, size too small), FC_ERR_TLS (handshake, certificate or host name
 * verification failed), FC_ERR_AUTH (token refused), FC_ERR_VERSION (the server speaks another
 * major version), FC_ERR_PROTOCOL (the server broke the protocol), FC_ERR_CLOSED (reconnect
 * attempts used up), FC_ERR_TIMEOUT, FC_ERR_NOMEM. */
FC_API fc_status fc_client_open(const fc_client_config *cfg, fc_client **out);

/* Sends Bye (best effort, bounded by the I/O timeout), closes the connection and frees c and
 * everything it owns. Tasks returned earlier stay valid (they are owned by the caller). NULL is
 * fine. Never reconnects. Blocks at most io_timeout_ms. */
FC_API void fc_client_close(fc_client *c);

/* The detail of the last error on c ("" if none). Owned by c; valid until the next call on c.
 * Never NULL for a non-NULL c. */
FC_API const char *fc_client_error(const fc_client *c);
/* The status of the last failed call on c (FC_OK if none). */
FC_API fc_status fc_client_last_status(const fc_client *c);

/* ---- tasks ---- */

typedef enum fc_task_type { FC_TASK_TYPE_TRAIN = 1, FC_TASK_TYPE_EVALUATE = 2 } fc_task_type;

/* Waits up to timeout_ms (0 = forever) for the server's next task, sending heartbeats while
 * waiting and accepting the server's. When a Task arrives, downloads its model (ModelRequest,
 * ModelBegin, Chunk..., ModelEnd) into memory owned by the task and checks its SHA-256 against
 * both the Task and ModelEnd; a mismatch is retried once from byte 0, then FC_ERR_HASH.
 * A server without a model asks one client to propose it (a train Task for round 0, model
 * version 0, no tensors). The caller never sees that task: with an initial model set
 * (fc_client_set_initial_model) this call uploads it as the proposal (weights, num_examples 1)
 * and then keeps waiting; without one it answers the server with a non-fatal UNSUPPORTED error
 * and keeps waiting. A refused proposal ends the call with the server's error (the session
 * stays up); a connection lost during the proposal is repaired and the call keeps waiting (the
 * server asks again if it still needs a model).
 * Ownership: on FC_OK, *out is a new task the caller frees with fc_task_free, or NULL when the
 * server ended the federation with Bye ("done"; fc_client_error then holds its reason and c is
 * disconnected: later calls return FC_ERR_CLOSED).
 * Blocks until a task, done, an error or the timeout. Retries after connection loss (above).
 * Returns FC_OK, FC_ERR_TIMEOUT (no task within timeout_ms; the session stays up),
 * FC_ERR_HASH, FC_ERR_SHAPE / FC_ERR_LIMIT / FC_ERR_PROTOCOL / FC_ERR_CHUNK (the server sent an
 * inconsistent model or frame), an fc_status mapped from a server Error frame, FC_ERR_CLOSED,
 * FC_ERR_NOMEM. */
FC_API fc_status fc_client_next_task(fc_client *c, uint32_t timeout_ms, fc_task **out);

/* Frees a task and its model. NULL is fine. Never blocks. */
FC_API void fc_task_free(fc_task *t);

/* Task fields. Never block; t must not be NULL. */
FC_API uint64_t fc_task_round(const fc_task *t);
FC_API fc_task_type fc_task_get_kind(const fc_task *t);
FC_API uint64_t fc_task_model_version(const fc_task *t);
/* Deadline in Unix milliseconds, 0 = none. */
FC_API uint64_t fc_task_deadline_ms(const fc_task *t);

/* Raw config value for key ("lr", "local_epochs", "mu", ...), or NULL if absent. The string is
 * owned by t. */
FC_API const char *fc_task_config(const fc_task *t, const char *key);
/* Typed config getters. On FC_OK *out holds the parsed value. FC_ERR_NOT_FOUND if the key is
 * absent (*out is then set to def), FC_ERR_FORMAT if the value is not a finite number / an
 * integer in range (*out = def; fc_task_config shows the raw text). */
FC_API fc_status fc_task_config_double(const fc_task *t, const char *key, double def,
                                       double *out);
FC_API fc_status fc_task_config_int64(const fc_task *t, const char *key, int64_t def,
                                      int64_t *out);
/* Conveniences for the usual keys: "lr", "local_epochs" (falling back to "epochs") and "mu";
 * each returns def when the key is absent or malformed. */
FC_API double fc_task_lr(const fc_task *t, double def);
FC_API int64_t fc_task_epochs(const fc_task *t, int64_t def);
FC_API double fc_task_mu(const fc_task *t, double def);

/* One tensor of the task's model. Pointers are owned by the task and valid until fc_task_free.
 * data is the model as downloaded (little-endian, C order); it may be unaligned when an earlier
 * tensor's byte size is not a multiple of this dtype's size: copy with memcpy then. */
typedef struct fc_tensor_info {
    const char *name;
    fc_dtype dtype;
    uint32_t ndim;                /* 0 = scalar */
    uint64_t shape[FC_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    const void *data;
} fc_tensor_info;

FC_API size_t fc_task_tensor_count(const fc_task *t);
/* Fills *out for tensor i. FC_ERR_RANGE if i >= fc_task_tensor_count(t). */
FC_API fc_status fc_task_tensor(const fc_task *t, size_t i, fc_tensor_info *out);
/* Index of the tensor called name, or -1. */
FC_API long fc_task_find_tensor(const fc_task *t, const char *name);

/* FedProx: grad[k] += mu * (w[k] - w_t[k]) for every element k of f32 tensor i, where w_t is the
 * task's model (Li et al. 2020). grad and w hold fc_task_tensor(t, i).numel floats. Pass
 * mu = fc_task_mu(t, 0.0) for the server's coefficient. Never blocks, never allocates.
 * FC_ERR_RANGE (bad i), FC_ERR_DTYPE (tensor not f32), FC_ERR_INVALID (NULL pointer, mu negative
 * or not finite; grad untouched). */
FC_API fc_status fc_task_prox_add(const fc_task *t, size_t i, float *grad, const float *w,
                                  double mu);

/* ---- initial model ---- */

/* One tensor of a model the caller describes. */
typedef struct fc_tensor_desc {
    const char *name;      /* 1..1024 bytes of UTF-8, unique within the model */
    fc_dtype dtype;        /* FC_DTYPE_F32, F16, BF16 or F64 */
    size_t ndim;           /* 0 = scalar (one element); at most FC_MAX_DIMS */
    const uint64_t *shape; /* ndim dimensions; may be NULL when ndim is 0 */
    const void *data;      /* numel * dtype size bytes, little-endian, C order */
} fc_tensor_desc;

/* Sets the model this client proposes when the server has none yet (see fc_client_next_task).
 * tensors[0..n) are checked (n 1..65536, names non-empty and unique, dtype known, ndim at most
 * FC_MAX_DIMS, sizes without overflow, data non-NULL for tensors with bytes) and copied: the
 * caller's arrays and data need not outlive the call. The copy costs one model's worth of
 * memory until it is replaced, cleared (n = 0, tensors NULL) or the client is closed. Replacing
 * is atomic: on failure the previous initial model stays. Never blocks; sends nothing.
 * Returns FC_OK, FC_ERR_INVALID (NULL pointers, bad name, ndim, n), FC_ERR_DTYPE,
 * FC_ERR_EXISTS (two tensors with the same name), FC_ERR_OVERFLOW (a size does not fit),
 * FC_ERR_LIMIT (more than 65536 tensors), FC_ERR_NOMEM; the detail names the tensor. */
FC_API fc_status fc_client_set_initial_model(fc_client *c, size_t n, const fc_tensor_desc *tensors);

/* ---- results ---- */

typedef struct fc_metric {
    const char *name; /* 1..256 bytes, unique within one call */
    double value;     /* finite */
} fc_metric;

typedef enum fc_submit_kind {
    FC_SUBMIT_WEIGHTS = 0, /* the trained weights w_i: the SDK uploads w_i - w_t */
    FC_SUBMIT_DELTA = 1,   /* a delta the caller computed; uploaded as is */
} fc_submit_kind;

/* Uploads the result of a train task: UpdateBegin, Chunk frames, UpdateEnd with the SHA-256 of
 * the uploaded data and num_examples and the metrics, then waits for the server's Ack.
 * tensors[i] points at fc_task_tensor(t, i).nbytes bytes with the task's dtype and shape, for
 * every i < fc_task_tensor_count(t). With FC_SUBMIT_WEIGHTS the SDK computes w_i - w_t element
 * by element in the tensor's dtype (f16/bf16 through f32, rounded once), streaming: it never
 * holds a second copy of the model. Borrowed pointers only: nothing is kept after return.
 * Blocks until the server accepts or rejects the update. Resumes after connection loss (above).
 * Returns FC_OK (accepted), FC_ERR_INVALID (NULL pointers, num_examples 0, non-finite metric,
 * bad metric name, t not a train task), FC_ERR_STATE (c disconnected for good), a server Error
 * mapped to fc_status (e.g. FC_ERR_SHAPE, FC_ERR_HASH, FC_ERR_NON_FINITE, FC_ERR_REQUIREMENT
 * for a rejected update, FC_ERR_STATE when the round is closed), FC_ERR_CLOSED, FC_ERR_NOMEM. */
FC_API fc_status fc_client_submit(fc_client *c, const fc_task *t, fc_submit_kind kind,
                                  const void *const *tensors, uint64_t num_examples,
                                  const fc_metric *metrics, size_t n_metrics);

/* Reports the result of an evaluate task (EvalResult) and waits for the server's Ack.
 * Blocks; resends after connection loss. Returns FC_OK, FC_ERR_INVALID (num_examples 0,
 * non-finite metric, t not an evaluate task), a server Error mapped to fc_status,
 * FC_ERR_CLOSED, FC_ERR_NOMEM. */
FC_API fc_status fc_client_report_eval(fc_client *c, const fc_task *t, uint64_t num_examples,
                                       const fc_metric *metrics, size_t n_metrics);

#ifdef __cplusplus
}
#endif

#endif
