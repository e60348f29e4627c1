/* frame.c: frame encoding, incremental frame decoding, and Envelope unpacking.
 *
 * Owns the byte layer of the wire protocol. It never interprets a message's meaning (wire.c
 * does), never allocates a buffer larger than the frame the length prefix announces (and never
 * before checking that prefix against max_frame), and never reads outside the caller's bytes.
 *
 * Unpacking runs in two steps. First a schema-driven scan walks the Envelope's wire bytes with
 * the protobuf-c descriptors: every tag, varint, length, wire type, packed array and string is
 * checked, so an error names the field and the byte offset (protobuf-c itself only returns NULL).
 * Then protobuf-c unpacks, with an allocator that counts bytes against a budget proportional to
 * the frame size: protobuf-c allocates a few dozen bytes of bookkeeping per field occurrence, so
 * a frame of tiny fields could otherwise cost far more memory than its size.
 *
 * Why the scan validates strings: protobuf-c 1.4 accepts invalid UTF-8 in proto3 strings and
 * hands strings to C NUL-terminated, so an embedded NUL would silently shorten a name (both
 * verified against the installed library).
 *
 * Why the budget is 48 bytes per frame byte (FC_FRAME_UNPACK_BUDGET): measured peaks with this
 * allocator (16-byte headers included) are 20x for the densest legitimate header (ModelBegin
 * with 1-letter tensor names), 21x for a flood of repeated scalars, 34x for a Hello full of empty
 * capability strings, and 48x+ only for floods of empty sub-messages (map entries, specs), which
 * no valid message contains. At the 4 MiB default frame size that caps one unpack at ~192 MiB
 * even for hostile input; unpacking runs on one thread at a time per loop.
 */
#include "proto/frame.h"

#include <assert.h>
#include <string.h>

#include "core/alloc.h"

static size_t effective_max(size_t max_frame) {
    if (max_frame == 0)
        return FC_FRAME_MAX_DEFAULT;
    return max_frame > FC_FRAME_MAX_CEILING ? FC_FRAME_MAX_CEILING : max_frame;
}

/* ---- varints ---- */

static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

enum varint_result { VARINT_OK, VARINT_TRUNCATED, VARINT_TOO_LONG, VARINT_OVERFLOW };

/* Reads a varint of at most max_bytes (<= 10) bytes. A 10-byte varint whose last byte is above 1
 * does not fit in 64 bits and is rejected (protobuf-c would silently drop the high bits). */
static enum varint_result get_varint(const uint8_t *p, size_t len, size_t max_bytes,
                                     uint64_t *out, size_t *used) {
    uint64_t v = 0;
    for (size_t i = 0; i < max_bytes; i++) {
        if (i >= len)
            return VARINT_TRUNCATED;
        uint8_t b = p[i];
        if (i == 9 && (b & 0x80))
            return VARINT_TOO_LONG;
        if (i == 9 && b > 1)
            return VARINT_OVERFLOW;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            *used = i + 1;
            return VARINT_OK;
        }
    }
    return max_bytes < len ? VARINT_TOO_LONG : VARINT_TRUNCATED;
}

static const char *varint_problem(enum varint_result r) {
    switch (r) {
    case VARINT_OK:
        return "ok";
    case VARINT_TRUNCATED:
        return "truncated varint";
    case VARINT_TOO_LONG:
        return "varint too long";
    case VARINT_OVERFLOW:
        return "varint overflows 64 bits";
    }
    return "bad varint";
}

/* ---- encoding ---- */

fc_status fc_frame_encode(const fc_envelope *env, size_t max_frame, fc_buf *out, fc_error *err) {
    size_t max = effective_max(max_frame);
    if (!env || !out)
        return fc_error_set(err, FC_ERR_INVALID, "fc_frame_encode: NULL argument");
    if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY__NOT_SET)
        return fc_error_set(err, FC_ERR_INVALID,
                            "refusing to encode an Envelope without a body (seq %llu)",
                            (unsigned long long)env->seq);
    size_t n = protobuf_c_message_get_packed_size(&env->base);
    if (n > max)
        return fc_error_set(err, FC_ERR_LIMIT,
                            "Envelope (body field %d) packs to %zu bytes, above the maximum "
                            "frame size %zu",
                            (int)env->body_case, n, max);
    assert(n > 0); /* a set body always packs to at least its tag and length */
    fc_status st = fc_buf_reserve(out, FC_FRAME_PREFIX_BYTES + n);
    if (st != FC_OK)
        return fc_error_set(err, st, "cannot allocate a %zu-byte frame", n + FC_FRAME_PREFIX_BYTES);
    uint8_t *p = out->data + out->len;
    fc_store_u32be(p, (uint32_t)n);
    size_t packed = protobuf_c_message_pack(&env->base, p + FC_FRAME_PREFIX_BYTES);
    assert(packed == n);
    (void)packed;
    out->len += FC_FRAME_PREFIX_BYTES + n;
    return FC_OK;
}

/* Tags of the chunk layout (field number << 3 | wire type). */
#define TAG_ENV_SEQ 0x08u            /* Envelope.seq = 1, varint */
#define TAG_ENV_CHUNK ((16u << 3) | 2) /* Envelope.chunk = 16, length-delimited */
#define TAG_CHUNK_INDEX 0x08u        /* Chunk.tensor_index = 1, varint */
#define TAG_CHUNK_OFFSET 0x10u       /* Chunk.offset = 2, varint */
#define TAG_CHUNK_DATA 0x1au         /* Chunk.data = 3, length-delimited */

fc_status fc_frame_chunk_header(uint64_t seq, uint32_t tensor_index, uint64_t offset,
                                size_t data_len, size_t max_frame,
                                uint8_t hdr[FC_FRAME_CHUNK_HEADER_MAX], size_t *hdr_len,
                                fc_error *err) {
    size_t max = effective_max(max_frame);
    if (data_len == 0)
        return fc_error_set(err, FC_ERR_CHUNK, "chunk of tensor %u at offset %llu has no data",
                            tensor_index, (unsigned long long)offset);
    if (data_len > FC_CHUNK_MAX_DATA)
        return fc_error_set(err, FC_ERR_LIMIT, "chunk of %zu bytes exceeds the %zu-byte chunk limit",
                            data_len, FC_CHUNK_MAX_DATA);
    /* Field order and omission of zero values follow protobuf-c's packer (proto3: zero scalars
     * are not written), so the bytes equal protobuf_c_message_pack's. */
    size_t chunk_len = 0;
    if (tensor_index)
        chunk_len += 1 + varint_size(tensor_index);
    if (offset)
        chunk_len += 1 + varint_size(offset);
    chunk_len += 1 + varint_size(data_len) + data_len;
    size_t env_len = 0;
    if (seq)
        env_len += 1 + varint_size(seq);
    env_len += 2 + varint_size(chunk_len) + chunk_len;
    if (env_len > max)
        return fc_error_set(err, FC_ERR_LIMIT,
                            "chunk frame of %zu bytes exceeds the maximum frame size %zu", env_len,
                            max);
    uint8_t *p = hdr;
    fc_store_u32be(p, (uint32_t)env_len);
    p += FC_FRAME_PREFIX_BYTES;
    if (seq) {
        *p++ = TAG_ENV_SEQ;
        p += put_varint(p, seq);
    }
    p += put_varint(p, TAG_ENV_CHUNK);
    p += put_varint(p, chunk_len);
    if (tensor_index) {
        *p++ = TAG_CHUNK_INDEX;
        p += put_varint(p, tensor_index);
    }
    if (offset) {
        *p++ = TAG_CHUNK_OFFSET;
        p += put_varint(p, offset);
    }
    *p++ = TAG_CHUNK_DATA;
    p += put_varint(p, data_len);
    *hdr_len = (size_t)(p - hdr);
    assert(*hdr_len <= FC_FRAME_CHUNK_HEADER_MAX);
    assert(*hdr_len + data_len == FC_FRAME_PREFIX_BYTES + env_len);
    return FC_OK;
}

fc_status fc_frame_encode_chunk(uint64_t seq, uint32_t tensor_index, uint64_t offset,
                                const void *data, size_t data_len, size_t max_frame, fc_buf *out,
                                fc_error *err) {
    uint8_t hdr[FC_FRAME_CHUNK_HEADER_MAX];
    size_t hdr_len;
    fc_status st =
        fc_frame_chunk_header(seq, tensor_index, offset, data_len, max_frame, hdr, &hdr_len, err);
    if (st != FC_OK)
        return st;
    if ((st = fc_buf_reserve(out, hdr_len + data_len)) != FC_OK)
        return fc_error_set(err, st, "cannot allocate a %zu-byte chunk frame", hdr_len + data_len);
    memcpy(out->data + out->len, hdr, hdr_len);
    memcpy(out->data + out->len + hdr_len, data, data_len);
    out->len += hdr_len + data_len;
    return FC_OK;
}

/* ---- incremental decoding ---- */

void fc_frame_decoder_init(fc_frame_decoder *d, size_t max_frame) {
    memset(d, 0, sizeof *d);
    d->max_frame = effective_max(max_frame);
    d->failed = FC_OK;
}

void fc_frame_decoder_free(fc_frame_decoder *d) {
    fc_free(d->buf);
    d->buf = NULL;
    d->buf_cap = 0;
}

static fc_status decoder_fail(fc_frame_decoder *d, fc_status st) {
    d->failed = st;
    return st;
}

/* Checks a complete length prefix; the stream offset in messages is that of the prefix. */
static fc_status check_length(fc_frame_decoder *d, uint32_t n, uint64_t at, fc_error *err) {
    if (n == 0)
        return decoder_fail(d, fc_error_set(err, FC_ERR_FORMAT,
                                            "frame %llu at stream byte %llu: length 0 (an "
                                            "Envelope must carry a body)",
                                            (unsigned long long)d->frames + 1,
                                            (unsigned long long)at));
    if (n > d->max_frame)
        return decoder_fail(d, fc_error_set(err, FC_ERR_LIMIT,
                                            "frame %llu at stream byte %llu: length %u exceeds "
                                            "the maximum frame size %zu",
                                            (unsigned long long)d->frames + 1,
                                            (unsigned long long)at, n, d->max_frame));
    return FC_OK;
}

void fc_frame_decoder_passed(fc_frame_decoder *d, uint64_t frame_bytes) {
    if (d->prefix_have != 0 || d->failed != FC_OK)
        return;
    d->bytes += frame_bytes;
    d->frames++;
}

fc_status fc_frame_decoder_feed(fc_frame_decoder *d, const void *data, size_t len,
                                size_t *consumed, fc_frame *frame, fc_error *err) {
    const uint8_t *p = data;
    size_t left = len;
    fc_status st;
    *consumed = 0;
    if (d->failed != FC_OK)
        return fc_error_set(err, d->failed, "frame stream already failed (%s); it cannot resume",
                            fc_strerror(d->failed));
    if (left == 0)
        return FC_ERR_AGAIN;

    if (d->prefix_have == 0 && left >= FC_FRAME_PREFIX_BYTES) {
        /* On a frame boundary: a frame wholly inside the input is returned in place. */
        uint32_t n = fc_load_u32be(p);
        if ((st = check_length(d, n, d->bytes, err)) != FC_OK)
            return st;
        if (left - FC_FRAME_PREFIX_BYTES >= n) {
            frame->data = p + FC_FRAME_PREFIX_BYTES;
            frame->len = n;
            *consumed = FC_FRAME_PREFIX_BYTES + (size_t)n;
            d->bytes += *consumed;
            d->frames++;
            return FC_OK;
        }
    }

    if (d->prefix_have < FC_FRAME_PREFIX_BYTES) {
        size_t take = FC_FRAME_PREFIX_BYTES - d->prefix_have;
        if (take > left)
            take = left;
        memcpy(d->prefix + d->prefix_have, p, take);
        d->prefix_have += take;
        p += take;
        left -= take;
        d->bytes += take;
        if (d->prefix_have < FC_FRAME_PREFIX_BYTES) {
            *consumed = len;
            return FC_ERR_AGAIN;
        }
        uint32_t n = fc_load_u32be(d->prefix);
        if ((st = check_length(d, n, d->bytes - FC_FRAME_PREFIX_BYTES, err)) != FC_OK) {
            *consumed = len - left;
            return st;
        }
        if (d->buf_cap < n) {
            /* Exactly the announced size: never more than max_frame, checked above. */
            uint8_t *nb = fc_realloc(d->buf, n);
            if (!nb) {
                *consumed = len - left;
                return decoder_fail(d, fc_error_set(err, FC_ERR_NOMEM,
                                                    "cannot allocate a %u-byte frame buffer", n));
            }
            d->buf = nb;
            d->buf_cap = n;
        }
        d->frame_len = n;
        d->frame_have = 0;
    }

    size_t take = d->frame_len - d->frame_have;
    if (take > left)
        take = left;
    memcpy(d->buf + d->frame_have, p, take);
    d->frame_have += take;
    left -= take;
    d->bytes += take;
    *consumed = len - left;
    if (d->frame_have < d->frame_len)
        return FC_ERR_AGAIN;
    frame->data = d->buf;
    frame->len = d->frame_len;
    d->prefix_have = 0;
    d->frame_len = d->frame_have = 0;
    d->frames++;
    return FC_OK;
}

fc_status fc_frame_decoder_finish(const fc_frame_decoder *d, fc_error *err) {
    if (d->failed != FC_OK)
        return fc_error_set(err, d->failed, "frame stream had failed (%s)",
                            fc_strerror(d->failed));
    if (d->prefix_have == 0)
        return FC_OK;
    if (d->prefix_have < FC_FRAME_PREFIX_BYTES)
        return fc_error_set(err, FC_ERR_FORMAT,
                            "stream ended inside frame %llu: %zu of %d length-prefix bytes",
                            (unsigned long long)d->frames + 1, d->prefix_have,
                            FC_FRAME_PREFIX_BYTES);
    return fc_error_set(err, FC_ERR_FORMAT,
                        "stream ended inside frame %llu: %zu of %zu Envelope bytes received",
                        (unsigned long long)d->frames + 1, d->frame_have, d->frame_len);
}

size_t fc_frame_decoder_pending(const fc_frame_decoder *d) {
    return d->prefix_have + d->frame_have;
}

size_t fc_frame_decoder_trim(fc_frame_decoder *d) {
    if (d->prefix_have != 0 || !d->buf)
        return 0;
    size_t released = d->buf_cap;
    fc_frame_decoder_free(d);
    return released;
}

/* ---- schema-driven scan ---- */

/* Nesting of our schema is Envelope > Task > TensorSpec / map entry (3); leave room for growth
 * but bound protobuf-c's recursion. */
#define SCAN_MAX_DEPTH 16
#define MAX_FIELD_NUMBER ((1u << 29) - 1)

enum {
    WIRE_VARINT = 0,
    WIRE_64BIT = 1,
    WIRE_LEN = 2,
    WIRE_START_GROUP = 3,
    WIRE_END_GROUP = 4,
    WIRE_32BIT = 5,
};

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. NUL is
 * refused too: protobuf-c hands strings to C as NUL-terminated, so an embedded NUL would make
 * the string silently shorter. Returns the offset of the first bad byte, or len if valid. */
static size_t utf8_check(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c == 0)
            return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i <= n)
            return i;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += n + 1;
    }
    return len;
}

static int wire_type_for(ProtobufCType type) {
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_BOOL:
    case PROTOBUF_C_TYPE_ENUM:
        return WIRE_VARINT;
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return WIRE_32BIT;
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return WIRE_64BIT;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return WIRE_LEN;
    }
    return -1;
}

/* Checks a packed repeated scalar's contents. */
static int packed_ok(int elem_wire, const uint8_t *p, size_t len) {
    if (elem_wire == WIRE_32BIT)
        return len % 4 == 0;
    if (elem_wire == WIRE_64BIT)
        return len % 8 == 0;
    size_t pos = 0;
    while (pos < len) {
        uint64_t v;
        size_t used;
        if (get_varint(p + pos, len - pos, 10, &v, &used) != VARINT_OK)
            return 0;
        pos += used;
    }
    return 1;
}

/* Walks one message's bytes [p, p+len), which start at byte `base` of the Envelope. */
static fc_status scan_message(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                              size_t base, int depth, fc_error *err) {
    if (depth > SCAN_MAX_DEPTH)
        return fc_error_set(err, FC_ERR_FORMAT, "byte %zu: %s nested deeper than %d levels", base,
                            desc->short_name, SCAN_MAX_DEPTH);
    size_t pos = 0;
    while (pos < len) {
        size_t at = base + pos;
        uint64_t tag;
        size_t used;
        enum varint_result vr = get_varint(p + pos, len - pos, 5, &tag, &used);
        if (vr != VARINT_OK)
            return fc_error_set(err, FC_ERR_FORMAT, "byte %zu: %s: %s in a field tag", at,
                                desc->short_name, varint_problem(vr));
        uint64_t number = tag >> 3;
        int wire = (int)(tag & 7);
        if (number == 0 || number > MAX_FIELD_NUMBER)
            return fc_error_set(err, FC_ERR_FORMAT, "byte %zu: %s: invalid field number %llu", at,
                                desc->short_name, (unsigned long long)number);
        pos += used;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(desc, (unsigned)number);
        const char *fname = f ? f->name : "(unknown)";
        const uint8_t *payload = p + pos;
        size_t plen = 0;
        switch (wire) {
        case WIRE_VARINT: {
            uint64_t v;
            vr = get_varint(p + pos, len - pos, 10, &v, &used);
            if (vr != VARINT_OK)
                return fc_error_set(err, FC_ERR_FORMAT, "byte %zu: %s.%s (field %llu): %s",
                                    base + pos, desc->short_name, fname,
                                    (unsigned long long)number, varint_problem(vr));
            pos += used;
            break;
        }
        case WIRE_64BIT:
        case WIRE_32BIT: {
            size_t need = wire == WIRE_64BIT ? 8 : 4;
            if (len - pos < need)
                return fc_error_set(err, FC_ERR_FORMAT,
                                    "byte %zu: %s.%s (field %llu): truncated %zu-byte value",
                                    base + pos, desc->short_name, fname,
                                    (unsigned long long)number, need);
            pos += need;
            break;
        }
        case WIRE_LEN: {
            uint64_t l;
            vr = get_varint(p + pos, len - pos, 5, &l, &used);
            if (vr != VARINT_OK)
                return fc_error_set(err, FC_ERR_FORMAT, "byte %zu: %s.%s (field %llu): %s in a length",
                                    base + pos, desc->short_name, fname,
                                    (unsigned long long)number, varint_problem(vr));
            pos += used;
            if (l > len - pos)
                return fc_error_set(err, FC_ERR_FORMAT,
                                    "byte %zu: %s.%s (field %llu): length %llu runs past the end "
                                    "of its enclosing %zu bytes",
                                    at, desc->short_name, fname, (unsigned long long)number,
                                    (unsigned long long)l, len);
            payload = p + pos;
            plen = (size_t)l;
            pos += plen;
            break;
        }
        case WIRE_START_GROUP:
        case WIRE_END_GROUP:
            return fc_error_set(err, FC_ERR_FORMAT,
                                "byte %zu: %s: field %llu uses a group (wire type %d), which "
                                "this protocol does not allow",
                                at, desc->short_name, (unsigned long long)number, wire);
        default:
            return fc_error_set(err, FC_ERR_FORMAT, "byte %zu: %s: field %llu has wire type %d",
                                at, desc->short_name, (unsigned long long)number, wire);
        }
        if (!f)
            continue; /* unknown fields are skipped (and kept by protobuf-c) */

        int want = wire_type_for(f->type);
        int repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
        if (wire == WIRE_LEN && repeated && want != WIRE_LEN) {
            if (!packed_ok(want, payload, plen))
                return fc_error_set(err, FC_ERR_FORMAT,
                                    "byte %zu: %s.%s (field %llu): malformed packed array", at,
                                    desc->short_name, fname, (unsigned long long)number);
            continue;
        }
        if (wire != want)
            return fc_error_set(err, FC_ERR_FORMAT,
                                "byte %zu: %s.%s (field %llu): wire type %d, expected %d", at,
                                desc->short_name, fname, (unsigned long long)number, wire, want);
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            size_t bad = utf8_check(payload, plen);
            if (bad != plen)
                return fc_error_set(err, FC_ERR_FORMAT,
                                    "byte %zu: %s.%s (field %llu): string is not valid UTF-8 "
                                    "(or contains NUL) at its byte %zu",
                                    at, desc->short_name, fname, (unsigned long long)number, bad);
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            fc_status st = scan_message(f->descriptor, payload, plen,
                                        base + (size_t)(payload - p), depth + 1, err);
            if (st != FC_OK)
                return fc_error_prefix(err, "%s.%s", desc->short_name, fname);
        }
    }
    return FC_OK;
}

/* ---- counting allocator for protobuf-c ---- */

typedef struct alloc_budget {
    size_t used;
    size_t limit;
    int over_budget;
    int out_of_memory;
} alloc_budget;

/* Each block carries its size in a header, so frees can be counted. 16 bytes keep the
 * alignment malloc gives. */
#define ALLOC_HDR 16

static void *budget_alloc(void *data, size_t size) {
    alloc_budget *b = data;
    size_t total;
    if (__builtin_add_overflow(size, (size_t)ALLOC_HDR, &total) || b->used > b->limit ||
        total > b->limit - b->used) {
        b->over_budget = 1;
        return NULL;
    }
    uint8_t *p = fc_malloc(total);
    if (!p) {
        b->out_of_memory = 1;
        return NULL;
    }
    memcpy(p, &total, sizeof total);
    b->used += total;
    return p + ALLOC_HDR;
}

static void budget_free(void *data, void *ptr) {
    if (!ptr)
        return;
    uint8_t *p = (uint8_t *)ptr - ALLOC_HDR;
    if (data) {
        alloc_budget *b = data;
        size_t total;
        memcpy(&total, p, sizeof total);
        b->used -= total;
    }
    fc_free(p);
}

/* Frees blocks made by budget_alloc after the budget itself is gone. */
static ProtobufCAllocator free_allocator = {budget_alloc, budget_free, NULL};

fc_status fc_envelope_unpack(const uint8_t *data, size_t len, fc_envelope **out, fc_error *err) {
    *out = NULL;
    if (len == 0)
        return fc_error_set(err, FC_ERR_FORMAT, "empty Envelope (an Envelope must carry a body)");
    if (len > FC_FRAME_MAX_CEILING)
        return fc_error_set(err, FC_ERR_LIMIT, "Envelope of %zu bytes exceeds %zu", len,
                            FC_FRAME_MAX_CEILING);
    fc_status st = scan_message(&fedcoord__v1__envelope__descriptor, data, len, 0, 0, err);
    if (st != FC_OK)
        return st;

    alloc_budget budget = {0, FC_FRAME_UNPACK_BUDGET(len), 0, 0};
    ProtobufCAllocator a = {budget_alloc, budget_free, &budget};
    fc_envelope *env = fedcoord__v1__envelope__unpack(&a, len, data);
    if (!env) {
        if (budget.over_budget)
            return fc_error_set(err, FC_ERR_LIMIT,
                                "unpacking the %zu-byte Envelope needs more than its %zu-byte "
                                "memory budget (too many tiny fields)",
                                len, budget.limit);
        if (budget.out_of_memory)
            return fc_error_set(err, FC_ERR_NOMEM, "out of memory unpacking a %zu-byte Envelope",
                                len);
        return fc_error_set(err, FC_ERR_FORMAT, "protobuf-c rejected the %zu-byte Envelope", len);
    }
    if (env->body_case == FEDCOORD__V1__ENVELOPE__BODY__NOT_SET) {
        if (env->base.n_unknown_fields > 0)
            fc_error_set(err, FC_ERR_PROTOCOL,
                         "unknown message type: Envelope (seq %llu) has no body this peer knows "
                         "(first unknown field %u)",
                         (unsigned long long)env->seq, env->base.unknown_fields[0].tag);
        else
            fc_error_set(err, FC_ERR_PROTOCOL,
                         "unknown message type: Envelope (seq %llu) carries no body",
                         (unsigned long long)env->seq);
        fc_envelope_free(env);
        return FC_ERR_PROTOCOL;
    }
    *out = env;
    return FC_OK;
}

void fc_envelope_free(fc_envelope *env) {
    if (env)
        protobuf_c_message_free_unpacked(&env->base, &free_allocator);
}

/* ---- zero-copy chunk path ---- */

int fc_frame_peek_chunk(const uint8_t *data, size_t len, fc_chunk_view *out) {
    fc_chunk_view v = {0};
    const uint8_t *chunk = NULL;
    size_t chunk_len = 0, pos = 0, used;
    uint64_t tag, x;
    int have_seq = 0;
    while (pos < len) {
        if (get_varint(data + pos, len - pos, 5, &tag, &used) != VARINT_OK)
            return 0;
        pos += used;
        if (tag == TAG_ENV_SEQ && !have_seq) {
            if (get_varint(data + pos, len - pos, 10, &v.seq, &used) != VARINT_OK)
                return 0;
            pos += used;
            have_seq = 1;
        } else if (tag == TAG_ENV_CHUNK && !chunk) {
            if (get_varint(data + pos, len - pos, 5, &x, &used) != VARINT_OK)
                return 0;
            pos += used;
            if (x > len - pos)
                return 0;
            chunk = data + pos;
            chunk_len = (size_t)x;
            pos += chunk_len;
        } else {
            return 0;
        }
    }
    if (!chunk)
        return 0;
    int have_index = 0, have_offset = 0, have_data = 0;
    pos = 0;
    while (pos < chunk_len) {
        if (get_varint(chunk + pos, chunk_len - pos, 5, &tag, &used) != VARINT_OK)
            return 0;
        pos += used;
        if (tag == TAG_CHUNK_INDEX && !have_index) {
            if (get_varint(chunk + pos, chunk_len - pos, 10, &x, &used) != VARINT_OK ||
                x > UINT32_MAX)
                return 0;
            v.tensor_index = (uint32_t)x;
            have_index = 1;
            pos += used;
        } else if (tag == TAG_CHUNK_OFFSET && !have_offset) {
            if (get_varint(chunk + pos, chunk_len - pos, 10, &v.offset, &used) != VARINT_OK)
                return 0;
            have_offset = 1;
            pos += used;
        } else if (tag == TAG_CHUNK_DATA && !have_data) {
            if (get_varint(chunk + pos, chunk_len - pos, 5, &x, &used) != VARINT_OK)
                return 0;
            pos += used;
            if (x > chunk_len - pos)
                return 0;
            v.data = chunk + pos;
            v.data_len = (size_t)x;
            have_data = 1;
            pos += v.data_len;
        } else {
            return 0;
        }
    }
    if (!have_data)
        v.data = chunk; /* empty payload: a valid pointer with length 0 */
    *out = v;
    return 1;
}

int fc_frame_peek_chunk_head(const uint8_t *env, size_t have, size_t env_len, fc_chunk_view *out,
                             size_t *data_at) {
    fc_chunk_view v = {0};
    size_t pos, used;
    uint64_t tag, x;
    if (have > env_len)
        have = env_len;
    if (get_varint(env, have, 5, &tag, &used) != VARINT_OK)
        return 0;
    pos = used;
    if (tag == TAG_ENV_SEQ) {
        if (get_varint(env + pos, have - pos, 10, &v.seq, &used) != VARINT_OK)
            return 0;
        pos += used;
        if (get_varint(env + pos, have - pos, 5, &tag, &used) != VARINT_OK)
            return 0;
        pos += used;
    }
    if (tag != TAG_ENV_CHUNK || get_varint(env + pos, have - pos, 5, &x, &used) != VARINT_OK)
        return 0;
    pos += used;
    if (x != env_len - pos) /* the chunk is the Envelope's last field */
        return 0;
    int have_index = 0, have_offset = 0;
    while (pos < env_len) { /* pos <= have <= env_len throughout */
        if (get_varint(env + pos, have - pos, 5, &tag, &used) != VARINT_OK)
            return 0;
        pos += used;
        if (tag == TAG_CHUNK_INDEX && !have_index) {
            if (get_varint(env + pos, have - pos, 10, &x, &used) != VARINT_OK || x > UINT32_MAX)
                return 0;
            v.tensor_index = (uint32_t)x;
            have_index = 1;
        } else if (tag == TAG_CHUNK_OFFSET && !have_offset) {
            if (get_varint(env + pos, have - pos, 10, &v.offset, &used) != VARINT_OK)
                return 0;
            have_offset = 1;
        } else if (tag == TAG_CHUNK_DATA) {
            if (get_varint(env + pos, have - pos, 5, &x, &used) != VARINT_OK)
                return 0;
            pos += used;
            if (x != env_len - pos) /* the data is the chunk's last field */
                return 0;
            v.data_len = (size_t)x;
            *data_at = pos;
            *out = v;
            return 1;
        } else {
            return 0;
        }
        pos += used;
    }
    return 0;
}
