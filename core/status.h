/* status.h: the one error space of fedcoord.
 *
 * Every fallible function in the project returns an fc_status. FC_OK is 0; errors are positive.
 * The list below is append-only: a code's number never changes, because numbers reach logs,
 * the database and (through an explicit mapping in proto/) the wire.
 *
 * Functions that can explain a failure also take an `fc_error *err` (which may be NULL) and fill
 * it with a human-readable detail through fc_error_set(). The detail says what was wrong and
 * where, e.g. "model.safetensors: tensor 'fc1.weight' data_offsets [0, 12) but shape [4,4] f32
 * needs 64 bytes".
 */
#ifndef FC_STATUS_H
#define FC_STATUS_H

#include <stddef.h>

/* X(name, number, description). Append only. */
#define FC_STATUS_MAP(X)                                                                          \
    X(OK, 0, "success")                                                                           \
    X(ERR_NOMEM, 1, "out of memory")                                                              \
    X(ERR_INVALID, 2, "invalid argument")                                                         \
    X(ERR_IO, 3, "input/output error")                                                            \
    X(ERR_FORMAT, 4, "malformed input")                                                           \
    X(ERR_OVERFLOW, 5, "size arithmetic overflow")                                                \
    X(ERR_LIMIT, 6, "limit exceeded")                                                             \
    X(ERR_NOT_FOUND, 7, "not found")                                                              \
    X(ERR_EXISTS, 8, "already exists")                                                            \
    X(ERR_PROTOCOL, 9, "protocol violation")                                                      \
    X(ERR_VERSION, 10, "incompatible version")                                                    \
    X(ERR_AUTH, 11, "authentication failed")                                                      \
    X(ERR_TLS, 12, "TLS error")                                                                   \
    X(ERR_HASH, 13, "SHA-256 mismatch")                                                           \
    X(ERR_SHAPE, 14, "tensor name, dtype or shape mismatch")                                      \
    X(ERR_DTYPE, 15, "unsupported dtype")                                                         \
    X(ERR_CONFIG, 16, "configuration error")                                                      \
    X(ERR_STATE, 17, "operation not allowed in this state")                                       \
    X(ERR_DB, 18, "database error")                                                               \
    X(ERR_CORRUPT, 19, "stored data is corrupt")                                                  \
    X(ERR_AGAIN, 20, "more input needed")                                                         \
    X(ERR_CLOSED, 21, "connection closed")                                                        \
    X(ERR_TIMEOUT, 22, "timed out")                                                               \
    X(ERR_UNSUPPORTED, 23, "not supported")                                                       \
    X(ERR_NON_FINITE, 24, "non-finite value")                                                     \
    X(ERR_REQUIREMENT, 25, "requirement not met")                                                 \
    X(ERR_BUSY, 26, "resource busy")                                                              \
    X(ERR_RANGE, 27, "value out of range")                                                        \
    X(ERR_CHUNK, 28, "bad chunk")                                                                 \
    X(ERR_SYSTEM, 29, "system call failed")

typedef enum fc_status {
#define FC_STATUS_ENUM(name, num, desc) FC_##name = num,
    FC_STATUS_MAP(FC_STATUS_ENUM)
#undef FC_STATUS_ENUM
} fc_status;

/* A one-line description of the code ("SHA-256 mismatch"). Never NULL. */
const char *fc_strerror(fc_status st);

/* The code's stable name without prefix ("ERR_HASH"). Never NULL. */
const char *fc_status_name(fc_status st);

#define FC_ERROR_MSG_MAX 512

/* A status plus a detail message. Zero-initialise before use: `fc_error err = {0};`. */
typedef struct fc_error {
    fc_status code;
    char msg[FC_ERROR_MSG_MAX];
} fc_error;

/* Sets err (if not NULL) to code and a printf-formatted detail. Returns code, so callers can
 * write `return fc_error_set(err, FC_ERR_FORMAT, "...", ...);`. */
fc_status fc_error_set(fc_error *err, fc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes err->msg with "prefix: ", keeping the code. Used to add the file name or context
 * as an error travels up. Returns err->code (FC_OK if err is NULL). */
fc_status fc_error_prefix(fc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The detail if one is set, else fc_strerror(code). */
const char *fc_error_text(const fc_error *err);

#endif
