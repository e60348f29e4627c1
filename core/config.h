/* config.h: the INI configuration loader (on libinih) with a caller-supplied, typed schema.
 *
 * config.c owns parsing, validating and storing configuration values. It knows nothing about
 * the daemon's keys: the caller passes a static table of fc_config_key (the schema), and every
 * value from a file or from `--set` is checked against it at the point it is set, with an error
 * that names the source, the line, the section.key, the bad value and what is accepted:
 *
 *   fedcoord.ini:12: [round] min_clients = "-3": expected an integer in 1..100000
 *   --set: [round] min_clients = "x": expected an integer in 1..100000
 *
 * It never does I/O beyond reading the one file it is given, never logs, and never aborts on
 * bad input; only a getter asked for a key the schema does not have aborts (a programming
 * error). A fc_config is not thread-safe while it is being loaded or set; once loading is done,
 * the getters may be called from any thread.
 *
 * The accepted syntax and value types are described in docs/configuration-format.md.
 */
#ifndef FC_CONFIG_H
#define FC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/status.h"

typedef enum fc_config_type {
    FC_CONFIG_STRING = 1, /* any text without control characters */
    FC_CONFIG_PATH,       /* a file or folder path; same syntax as string, documented as a path */
    FC_CONFIG_BOOL,       /* true/false, yes/no, on/off, 1/0 (any letter case) */
    FC_CONFIG_INT,        /* signed 64-bit decimal integer */
    FC_CONFIG_SIZE,       /* unsigned 64-bit byte count with optional suffix: 16k, 4MiB, 1G */
    FC_CONFIG_DOUBLE,     /* finite decimal number: 0.5, -1e-3 */
    FC_CONFIG_DURATION,   /* non-negative duration in milliseconds: 500ms, 30s, 5m, 1h30m */
    FC_CONFIG_ENUM,       /* one of the entry's choices (exact match) */
} fc_config_type;

/* Flags of a schema entry. */
#define FC_CONFIG_REQUIRED 1u /* string/path only: fc_config_check_required fails if unset */

/* One schema entry. Bounds and the default are written in the same syntax as a file value
 * ("4MiB", "30s", "0.5"), so the schema reads like the documentation it generates.
 *   def:     the default. NULL is allowed only for string and path (meaning: unset, "").
 *   min/max: inclusive bounds, or NULL for the type's own limit. Only for int, size, double and
 *            duration.
 *   choices: FC_CONFIG_ENUM only: a NULL-terminated list of accepted values.
 * Section and key names are 1..40 characters of [A-Za-z0-9_-]; a (section, key) pair is
 * unique. fc_config_new checks all of this. */
typedef struct fc_config_key {
    const char *section;
    const char *key;
    fc_config_type type;
    const char *def;
    const char *min;
    const char *max;
    const char *const *choices;
    unsigned flags;
    const char *help;
} fc_config_key;

typedef enum fc_config_source {
    FC_CONFIG_FROM_DEFAULT = 0,
    FC_CONFIG_FROM_FILE,
    FC_CONFIG_FROM_OVERRIDE,
} fc_config_source;

typedef struct fc_config fc_config;

/* The longest line a configuration file may have, without its line terminator. This follows
 * from libinih's fixed line buffer (INI_MAX_LINE); longer lines are errors, not truncated. */
#define FC_CONFIG_MAX_LINE 197
/* The largest configuration file accepted. */
#define FC_CONFIG_MAX_FILE (1024 * 1024)

/* Validates the schema and creates a configuration holding every default. The schema (an
 * array of n entries and all strings it points to) is borrowed and must outlive the config.
 * On success *out owns a config that fc_config_free frees. Returns FC_OK, FC_ERR_INVALID with
 * a detail naming the bad schema entry, or FC_ERR_NOMEM. Does not block. */
fc_status fc_config_new(const fc_config_key *schema, size_t n, fc_config **out, fc_error *err);

void fc_config_free(fc_config *cfg);

/* Loads an INI file. Every entry is validated against the schema; the first problem in file
 * order (an unknown section or key, a duplicate key, a line that is not a section, key = value
 * or comment, an over-long line, a bad or out-of-range value) fails the whole load with
 * FC_ERR_CONFIG and a detail "PATH:LINE: ...". A failed load leaves cfg unchanged. Values set
 * by fc_config_set are never replaced by a file, whatever the order of the calls. Returns
 * FC_OK, FC_ERR_CONFIG, FC_ERR_IO (cannot open or read the file), or FC_ERR_NOMEM. Blocks on
 * the file read. */
fc_status fc_config_load_file(fc_config *cfg, const char *path, fc_error *err);

/* The same as fc_config_load_file for text already in memory (len bytes, NUL bytes allowed and
 * rejected as errors); name is used in messages in place of the path. Does not block. */
fc_status fc_config_load_string(fc_config *cfg, const char *name, const char *text, size_t len,
                                fc_error *err);

/* Applies one override "section.key=value" (the argument of `--set`), validated as a file
 * value would be. source names the origin in messages and in the dump (NULL means "--set").
 * The value is trimmed and may be quoted as in a file; it may not contain ';' after a blank,
 * and "key=value" must fit in FC_CONFIG_MAX_LINE, so that the dump can write it. A later
 * override of the same key replaces an earlier one. On error cfg is unchanged. Returns FC_OK,
 * FC_ERR_CONFIG, or FC_ERR_NOMEM. Does not block. */
fc_status fc_config_set(fc_config *cfg, const char *assignment, const char *source,
                        fc_error *err);

/* Fails with FC_ERR_CONFIG naming the first FC_CONFIG_REQUIRED key that is unset or empty. */
fc_status fc_config_check_required(const fc_config *cfg, fc_error *err);

/* Typed getters: the effective value (override, else file, else default). Asking for a key
 * that is not in the schema, or with the getter of another type, aborts: it is a bug in the
 * caller, not a runtime condition. Strings are owned by cfg and valid until the next load,
 * set or free. */
const char *fc_config_get_string(const fc_config *cfg, const char *section, const char *key);
const char *fc_config_get_path(const fc_config *cfg, const char *section, const char *key);
bool fc_config_get_bool(const fc_config *cfg, const char *section, const char *key);
int64_t fc_config_get_int(const fc_config *cfg, const char *section, const char *key);
uint64_t fc_config_get_size(const fc_config *cfg, const char *section, const char *key);
double fc_config_get_double(const fc_config *cfg, const char *section, const char *key);
int64_t fc_config_get_duration_ms(const fc_config *cfg, const char *section, const char *key);
/* An enum's value as text, and as its index in the entry's choices. */
const char *fc_config_get_enum(const fc_config *cfg, const char *section, const char *key);
size_t fc_config_get_enum_index(const fc_config *cfg, const char *section, const char *key);

/* Where the effective value came from. If where is not NULL it receives "default", "PATH:LINE"
 * or the override's source; the string is owned by cfg. Aborts on an unknown key. */
fc_config_source fc_config_source_of(const fc_config *cfg, const char *section, const char *key,
                                     const char **where);

/* Appends the effective configuration to out as INI text, in schema order, each value followed
 * by a comment saying where it came from ("; default", "; fedcoord.ini:12", "; --set"). The
 * output loads back into an equal configuration. Returns FC_OK or FC_ERR_NOMEM (out then holds
 * a partial dump). */
fc_status fc_config_dump(const fc_config *cfg, fc_buf *out);

/* Appends the schema as a Markdown table (section, key, type, default, range, description),
 * for docs/configuration.md. Returns FC_OK or FC_ERR_NOMEM. */
fc_status fc_config_schema_markdown(const fc_config_key *schema, size_t n, fc_buf *out);

/* The type's name as used in messages and documentation ("integer", "size", ...). */
const char *fc_config_type_name(fc_config_type type);

#endif
