/* net.h: the daemon's one connection layer (TCP listeners on libuv, TLS over memory BIOs).
 *
 * net owns sockets, TLS sessions, output queues, timeouts and connection limits. It carries
 * opaque bytes: it never parses a protocol (frames and HTTP belong to the owner, who registers
 * callbacks) and it never blocks the loop. Everything here runs on the one loop thread; no
 * function is thread-safe.
 *
 * Life of a connection (see docs/transport.md):
 *   accept -> NET_HANDSHAKE -> on_open -> NET_OPEN -> on_data... -> NET_CLOSING -> NET_CLOSED
 *   -> on_close (always the last callback, exactly once per accepted connection).
 * A connection rejected at accept (connection limits) goes straight to NET_CLOSED and still
 * gets on_close with FC_ERR_LIMIT. The net_conn memory stays valid until on_close has returned
 * and every net_conn_ref has been released by net_conn_unref.
 *
 * The process must ignore SIGPIPE (signal(SIGPIPE, SIG_IGN)) before running the loop: libuv
 * writes to sockets with write(2), which raises SIGPIPE when the peer has gone.
 */
#ifndef FC_SERVER_NET_H
#define FC_SERVER_NET_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/status.h"

typedef struct net_listener net_listener;
typedef struct net_conn net_conn;

typedef enum net_state {
    NET_HANDSHAKE = 0, /* accepted, TLS handshake running (plain listeners skip it) */
    NET_OPEN,          /* on_open delivered; data flows both ways */
    NET_CLOSING,       /* flushing the last output, close_notify, FIN; reads are discarded */
    NET_CLOSED,        /* uv_close issued; on_close follows in the close callback */
} net_state;

/* "handshake", "open", "closing", "closed". */
const char *net_state_name(net_state st);

/* Minimum TLS protocol version. NET_TLS_DEFAULT means TLS 1.3. */
typedef enum net_tls_version { NET_TLS_DEFAULT = 0, NET_TLS_1_2 = 12, NET_TLS_1_3 = 13 } net_tls_version;

/* Mutual TLS. OFF: no client certificate is requested. OPTIONAL: requested; a presented
 * certificate must verify against ca_file, none is fine. REQUIRE: one must be presented and
 * verify. With a verified client certificate its subject CN is the peer identity. */
typedef enum net_mtls { NET_MTLS_OFF = 0, NET_MTLS_OPTIONAL, NET_MTLS_REQUIRE } net_mtls;

typedef struct net_tls_config {
    const char *cert_file;     /* PEM certificate chain, leaf first (required) */
    const char *key_file;      /* PEM private key matching the leaf (required) */
    const char *ca_file;       /* PEM CA bundle for client certificates; required unless mtls OFF */
    net_mtls mtls;
    net_tls_version min_version;
} net_tls_config;

/* Parses "1.2" or "1.3". Returns FC_OK or FC_ERR_CONFIG with a detail. */
fc_status net_tls_parse_version(const char *s, net_tls_version *out, fc_error *err);
/* Parses "off", "optional" or "require". Returns FC_OK or FC_ERR_CONFIG with a detail. */
fc_status net_mtls_parse(const char *s, net_mtls *out, fc_error *err);

/* Limits, per listener. A zero timeout or rate disables that check; zero connection counts
 * mean "no limit". net_limits_default fills the defaults documented in docs/transport.md. */
typedef struct net_limits {
    uint64_t handshake_timeout_ms; /* accept -> handshake done, else FC_ERR_TIMEOUT */
    uint64_t idle_timeout_ms;      /* no received bytes for this long while open: FC_ERR_TIMEOUT */
    uint64_t min_rate_bps;         /* while net_set_partial is on: plaintext bytes per second */
    uint64_t rate_window_ms;       /* measured over consecutive windows of this length */
    size_t max_connections;        /* live connections on this listener */
    size_t max_per_peer;           /* live connections from one IPv4 /32 or IPv6 /64 */
    size_t output_high_water;      /* queued output above this: on_backpressure(c, 1) */
    size_t max_output_bytes;       /* a net_write that would queue more: FC_ERR_LIMIT, closed */
    uint64_t close_linger_ms;      /* CLOSING: time allowed to flush output and see the FIN */
} net_limits;

void net_limits_default(net_limits *l);

/* Callbacks. on_data and on_close are required, the others optional. Every callback may call
 * any net_ function on any connection, including net_close on its own. */
typedef struct net_callbacks {
    /* Handshake done (or, for plain listeners, just accepted). net_write is allowed from now. */
    void (*on_open)(net_conn *c);
    /* Plaintext received. The bytes are valid only during the call: consume or copy them. */
    void (*on_data)(net_conn *c, const uint8_t *data, size_t len);
    /* A limit is about to close c (status FC_ERR_TIMEOUT or FC_ERR_LIMIT, detail e.g.
     * "handshake not completed within 10000 ms"). The owner may net_write one last message
     * (only if c is NET_OPEN); the layer then flushes it and closes. Not called for
     * connections rejected at accept, nor when the output queue limit itself was exceeded. */
    void (*on_limit)(net_conn *c, fc_status status, const char *detail);
    /* Output queue crossed output_high_water (blocked=1), or drained to at most half of it
     * again (blocked=0). Called synchronously from net_write for blocked=1. */
    void (*on_backpressure)(net_conn *c, int blocked);
    /* The last callback for c. reason is FC_OK only if the owner closed with FC_OK. */
    void (*on_close)(net_conn *c, fc_status reason, const char *detail);
} net_callbacks;

typedef struct net_listener_config {
    const char *name;     /* for logs: "client", "http" */
    const char *host;     /* numeric IPv4 or IPv6 address: "0.0.0.0", "::", "127.0.0.1" */
    int port;             /* 0..65535; 0 picks a free port (see net_listener_port) */
    int plain;            /* 1: no TLS. Refused unless host is a loopback address. */
    net_tls_config tls;   /* ignored when plain */
    net_limits limits;
    net_callbacks cb;
    void *user;           /* owner's pointer, see net_listener_user */
} net_listener_config;

/* Creates the TLS context, binds and listens (SO_REUSEADDR, backlog 511). The config strings
 * are copied. On success *out is a listener that net_listener_close releases. Errors:
 * FC_ERR_CONFIG (bad address, unreadable or mismatched PEM files, plain on a non-loopback
 * address, bad limits), FC_ERR_IO (bind/listen failed, e.g. address in use), FC_ERR_NOMEM. */
fc_status net_listener_open(uv_loop_t *loop, const net_listener_config *cfg, net_listener **out,
                            fc_error *err);

/* The bound port (useful after port 0). */
int net_listener_port(const net_listener *l);
void *net_listener_user(const net_listener *l);
/* Live connections (accepted, not yet closed, not counting those rejected at accept). */
size_t net_listener_count(const net_listener *l);

/* Stops accepting. Existing connections continue. The listener's memory is released once the
 * listening socket and every connection are closed; then on_closed (may be NULL) is called.
 * Call at most once. */
void net_listener_close(net_listener *l, void (*on_closed)(void *arg), void *arg);

/* Gracefully closes every connection of l with reason and detail (on_close follows for each). */
void net_close_all(net_listener *l, fc_status reason, const char *detail);

/* ---- connections ---- */

/* Queues plaintext for encryption and sending; the bytes are copied. Returns FC_OK,
 * FC_ERR_STATE (not yet NET_OPEN), FC_ERR_CLOSED (closing or closed), or FC_ERR_LIMIT when the
 * queue would exceed max_output_bytes; then the connection is being closed with FC_ERR_LIMIT.
 * May call on_backpressure(c, 1) before returning. */
fc_status net_write(net_conn *c, const void *data, size_t len);

/* Starts a graceful close: pending output is flushed (bounded by close_linger_ms), TLS
 * close_notify is sent, then FIN; on_close(c, reason, detail) follows from the close
 * callback. Idempotent: later calls do nothing (the first reason wins). detail may be NULL. */
void net_close(net_conn *c, fc_status reason, const char *detail);

/* Stops delivering on_data (no on_data call after this returns) and stops reading the socket.
 * Idle and progress-rate checks are suspended while paused. Resuming delivers any plaintext
 * already received from a later loop iteration, never from inside net_resume_reading. */
void net_pause_reading(net_conn *c);
void net_resume_reading(net_conn *c);

/* The owner is inside a frame (partial=1) or between frames (0). While set, fewer than
 * min_rate_bps * rate_window_ms / 1000 plaintext bytes in a window closes c with FC_ERR_LIMIT.
 * Setting it when already set keeps the current window. While set, the connection also keeps
 * its TLS record buffers and its grown input BIO between reads (data is flowing); between
 * frames they are given back, so idle connections hold none. */
void net_set_partial(net_conn *c, int partial);

/* Keep c's memory valid beyond on_close (e.g. for work on the thread pool). Each ref needs one
 * unref; after on_close, the last unref frees. Check net_conn_state() != NET_OPEN before use. */
void net_conn_ref(net_conn *c);
void net_conn_unref(net_conn *c);

net_state net_conn_state(const net_conn *c);
/* A process-wide unique, never reused id (1, 2, ...): safe to keep after c is gone. */
uint64_t net_conn_id(const net_conn *c);
/* "127.0.0.1:50312" or "[::1]:50312". */
const char *net_conn_peer(const net_conn *c);
/* The verified client certificate's subject CN, or NULL (no mTLS, no certificate, plain). */
const char *net_conn_identity(const net_conn *c);
/* Ciphertext (or plain) bytes queued and not yet written to the socket. */
size_t net_conn_queued(const net_conn *c);
net_listener *net_conn_listener(const net_conn *c);
void net_conn_set_user(net_conn *c, void *user);
void *net_conn_user(const net_conn *c);

#endif
