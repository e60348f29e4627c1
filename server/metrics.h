/* metrics.h: a small Prometheus registry and its text exposition (format 0.0.4).
 *
 * metrics owns metric families (counters, gauges, histograms with fixed buckets) and their
 * series. Label names and every label value set are fixed when a series is registered, so an
 * update never allocates and nothing a peer sends can grow the registry. It never does I/O and
 * knows nothing of HTTP: the API renders the registry into a buffer. Loop thread only: no
 * function is thread-safe.
 */
#ifndef FC_SERVER_METRICS_H
#define FC_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/status.h"

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;
typedef struct metrics_series metrics_series;

typedef enum metrics_type {
    METRICS_COUNTER = 1,
    METRICS_GAUGE = 2,
    METRICS_HISTOGRAM = 3,
} metrics_type;

#define METRICS_MAX_LABELS 4
#define METRICS_MAX_BUCKETS 32

/* A new empty registry in *out (metrics_free). FC_ERR_NOMEM. */
fc_status metrics_new(metrics_registry **out, fc_error *err);
/* Frees the registry, its families and series. NULL is allowed. */
void metrics_free(metrics_registry *r);

/* Registers a family. name must match [a-zA-Z_:][a-zA-Z0-9_:]* and be new in r; help is any
 * text (escaped on output); label_names (nlabels <= METRICS_MAX_LABELS) match
 * [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", are distinct, and for a histogram are not
 * "le". buckets (histograms only, 1..METRICS_MAX_BUCKETS finite upper bounds, strictly
 * increasing; the +Inf bucket is implicit) are copied. *out is owned by r. Errors:
 * FC_ERR_INVALID naming the bad name or bucket, FC_ERR_EXISTS, FC_ERR_NOMEM. */
fc_status metrics_family_add(metrics_registry *r, metrics_type type, const char *name,
                             const char *help, const char *const *label_names, size_t nlabels,
                             const double *buckets, size_t nbuckets, metrics_family **out,
                             fc_error *err);

/* Registers the series of f with these label values (one per label name of f; any UTF-8 text,
 * escaped on output; NULL when f has no labels). Values are copied. *out is owned by r.
 * Errors: FC_ERR_EXISTS (same values already registered), FC_ERR_INVALID, FC_ERR_NOMEM. */
fc_status metrics_series_add(metrics_family *f, const char *const *label_values,
                             metrics_series **out, fc_error *err);
/* The series of f whose label values equal label_values, or NULL. */
metrics_series *metrics_series_find(const metrics_family *f, const char *const *label_values);
/* The family named name, or NULL. */
metrics_family *metrics_family_find(const metrics_registry *r, const char *name);

/* Counter: adds v (v must be >= 0 and finite; anything else is ignored, counters never go
 * down). Gauge: set / add. Histogram: observe (NaN is ignored). Calling the wrong kind on a
 * series is an internal error (assert). */
void metrics_counter_add(metrics_series *s, double v);
void metrics_gauge_set(metrics_series *s, double v);
void metrics_gauge_add(metrics_series *s, double v);
void metrics_histogram_observe(metrics_series *s, double v);
/* The current value of a counter or gauge; a histogram's sum. */
double metrics_value(const metrics_series *s);
/* A histogram's observation count. */
uint64_t metrics_histogram_count(const metrics_series *s);

/* Appends the text exposition of every family, in registration order: "# HELP", "# TYPE",
 * then one line per series (histograms: _bucket{le=...} cumulative, _sum, _count). A family
 * without series prints only its HELP and TYPE lines. Errors: FC_ERR_NOMEM (out unchanged
 * beyond what was appended). */
fc_status metrics_render(const metrics_registry *r, fc_buf *out, fc_error *err);

/* Formats v the way the exposition does: shortest text that reads back as v ("0.1", "3",
 * "1e+20"), "+Inf", "-Inf", "NaN". buf must hold 32 bytes. Returns buf. */
char *metrics_format_value(double v, char *buf, size_t size);

/* ---- the daemon's metric set (issue 6) ---- */

/* Reasons an update can be rejected; the last one, "other", takes anything unknown. */
extern const char *const metrics_reject_reasons[];
extern const size_t metrics_reject_reason_count;

typedef struct metrics_fedcoord {
    metrics_registry *reg;             /* owned by the caller of metrics_fedcoord_new */
    metrics_series *rounds_committed;  /* fedcoord_rounds_total{state="committed"} */
    metrics_series *rounds_failed;     /* fedcoord_rounds_total{state="failed"} */
    metrics_series *updates_accepted;  /* fedcoord_updates_accepted_total */
    metrics_family *updates_rejected;  /* fedcoord_updates_rejected_total{reason} */
    metrics_series *bytes_received;    /* fedcoord_bytes_received_total */
    metrics_series *round_duration;    /* fedcoord_round_duration_seconds (histogram) */
    metrics_series *aggregation_time;  /* fedcoord_aggregation_seconds (histogram) */
    metrics_series *commit_latency;    /* fedcoord_commit_latency_seconds (histogram) */
    metrics_series *connected_clients; /* fedcoord_connected_clients (gauge) */
    metrics_series *staging_bytes;     /* fedcoord_staging_bytes (gauge) */
    metrics_series *current_round;     /* fedcoord_current_round (gauge) */
    metrics_series *model_version;     /* fedcoord_model_version (gauge) */
    metrics_series *http_requests[5];  /* fedcoord_http_requests_total{code="1xx".."5xx"} */
    /* asynchronous mode (stay 0 in sync mode) */
    metrics_series *buffer_fill;       /* fedcoord_buffer_fill (gauge) */
    metrics_series *buffer_size;       /* fedcoord_buffer_size (gauge) */
    metrics_series *tasks_in_flight;   /* fedcoord_tasks_in_flight (gauge) */
    metrics_series *versions_per_min;  /* fedcoord_versions_per_minute (gauge) */
    metrics_series *staleness;         /* fedcoord_update_staleness (histogram, versions) */
} metrics_fedcoord;

/* Creates a registry holding the daemon's metric set (names, help, buckets in
 * docs/http-api.md) and fills *m with its series. Free with metrics_free(m->reg). */
fc_status metrics_fedcoord_new(metrics_fedcoord *m, fc_error *err);
/* Counts one rejected update under reason (one of metrics_reject_reasons, else "other"). */
void metrics_fedcoord_reject(metrics_fedcoord *m, const char *reason);
/* Counts one HTTP response with this status (100..599; others are ignored). */
void metrics_fedcoord_http(metrics_fedcoord *m, int status);

#endif
