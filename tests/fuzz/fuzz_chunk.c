/* fuzz_chunk.c: drives the chunk reassembler (proto/stream.c) with a layout and a sequence of
 * chunk operations derived from the input.
 *
 * Input layout (every read past the end yields zeros, so any input is valid):
 *   byte 0         number of tensors - 1 (mod 6), bit 7: perturb the announced total
 *   per tensor     dtype byte (low 3 bits; values 0 and 5..7 are invalid dtypes), ndim byte
 *                  (mod 4), one byte per dimension (mod 17), name byte (mod 8: names repeat)
 *   2 bytes        max_chunk - 1 (mod 4096)
 *   1 byte         max_total_bytes choice; bit 7 arms allocation-failure injection
 *   1 byte         mode: even = "structured", odd = "raw"
 * structured: the model data comes from the input; the splitter cuts it, and one op byte per
 *   chunk sends it as is, drops it, repeats it, shifts its offset, trims it, or reorders it.
 *   Oracles: a rejected chunk changes nothing; an untouched stream finishes with FC_OK; any
 *   accepted finish means the staged bytes equal the source.
 * raw: arbitrary (kind, tensor index, offset, length) operations, including resume checks and
 *   end messages with right, wrong and short hashes. Oracle: no crash, no leak, received never
 *   decreases and never exceeds the total.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "proto/stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct input {
    const uint8_t *p;
    size_t len, pos;
} input;

static uint8_t take8(input *in) {
    return in->pos < in->len ? in->p[in->pos++] : 0;
}

static uint64_t take64(input *in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | take8(in);
    return v;
}

static int exhausted(const input *in) {
    return in->pos >= in->len;
}

#define MAX_TENSORS 6
#define POOL_BYTES 4096 /* >= the largest max_chunk used, so any accepted length is in bounds */

static uint8_t pool[POOL_BYTES];

static const char *const names[8] = {"a", "b", "fc1.weight", "fc1.bias", "x", "y", "z", "w"};

static void check(int cond) {
    if (!cond)
        abort();
}

/* Adds a chunk and checks that a rejection left the stage untouched. */
static fc_status add(fc_stage *s, uint32_t idx, uint64_t off, const void *d, size_t len) {
    uint64_t before = fc_stage_received(s);
    fc_error err = {0};
    fc_status st = fc_stage_add_chunk(s, idx, off, d, len, &err);
    uint64_t after = fc_stage_received(s);
    if (st == FC_OK) {
        check(after == before + len);
    } else {
        check(after == before);
        check(err.code == st && err.msg[0] != '\0');
    }
    check(after <= fc_stage_total(s));
    return st;
}

static void run_structured(input *in, fc_stage *s, const fc_tensor_spec *specs, size_t count,
                           size_t max_chunk) {
    uint64_t total = fc_stage_total(s);
    /* Source model data: the rest of the input, repeated (zeros if none). */
    fc_model m = FC_MODEL_INIT;
    size_t seed_start = in->pos;
    for (size_t i = 0; i < count; i++) {
        fc_error err = {0};
        if (fc_model_add(&m, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape, NULL,
                         &err) != FC_OK)
            goto out; /* only allocation failure can get here: the stage accepted the layout */
        uint8_t *d = m.tensors[i].data;
        for (uint64_t k = 0; k < m.tensors[i].nbytes; k++)
            d[k] = in->len > seed_start ? in->p[seed_start + (k * 7 + i) % (in->len - seed_start)]
                                        : (uint8_t)k;
    }
    uint8_t hash[FC_SHA256_BYTES];
    if (fc_stream_model_sha256(&m, hash, NULL) != FC_OK)
        goto out;

    fc_stream_splitter sp;
    check(fc_stream_split_model(&sp, &m, max_chunk, 0, NULL) == FC_OK);
    check(fc_stream_split_total(&sp) == total);
    int tampered = 0;
    fc_chunk_desc c, held;
    int have_held = 0;
    while (fc_stream_split_next(&sp, &c)) {
        uint8_t op = take8(in) % 16;
        fc_status st;
        switch (op) {
        case 1: /* drop */
            tampered = 1;
            continue;
        case 2: /* repeat: the second copy is always refused (overlap, or the same refusal) */
            st = add(s, c.tensor_index, c.offset, c.data, c.len);
            if (!tampered)
                check(st == FC_OK);
            check(add(s, c.tensor_index, c.offset, c.data, c.len) != FC_OK);
            continue;
        case 3: /* shifted offset */
            (void)add(s, c.tensor_index, c.offset + take8(in), c.data, c.len);
            tampered = 1; /* a shift of 0 is accepted; the oracle then only checks the hash */
            continue;
        case 4: /* trimmed length */
            if (c.len > 1) {
                tampered = 1;
                (void)add(s, c.tensor_index, c.offset, c.data, c.len - 1);
                continue;
            }
            break;
        case 5: /* hold back and send after the next one */
            if (!have_held) {
                held = c;
                have_held = 1;
                tampered = 1;
                continue;
            }
            break;
        case 6: /* wrong tensor index */
            tampered = 1;
            (void)add(s, c.tensor_index + 1 + take8(in), c.offset, c.data, c.len);
            continue;
        default:
            break;
        }
        st = add(s, c.tensor_index, c.offset, c.data, c.len);
        if (!tampered)
            check(st == FC_OK);
        if (have_held) {
            (void)add(s, held.tensor_index, held.offset, held.data, held.len);
            have_held = 0;
        }
    }
    fc_error err = {0};
    fc_status st = fc_stage_finish(s, hash, sizeof hash, &err);
    if (!tampered)
        check(st == FC_OK);
    if (st == FC_OK) {
        fc_model view = FC_MODEL_INIT;
        if (fc_stage_view_model(s, &view, NULL) == FC_OK) {
            check(view.count == m.count);
            for (size_t i = 0; i < m.count; i++)
                check(view.tensors[i].nbytes == m.tensors[i].nbytes &&
                      (m.tensors[i].nbytes == 0 ||
                       memcmp(view.tensors[i].data, m.tensors[i].data,
                              (size_t)m.tensors[i].nbytes) == 0));
            fc_model_free(&view);
        }
    } else {
        check(!fc_stage_complete(s));
    }
out:
    fc_model_free(&m);
}

static void run_raw(input *in, fc_stage *s, size_t count) {
    for (int ops = 0; ops < 4096 && !exhausted(in); ops++) {
        uint8_t kind = take8(in);
        switch (kind % 8) {
        case 0:
        case 1:
        case 2: { /* a plausible chunk: small index, small offset */
            uint32_t idx = take8(in) % (uint32_t)(count + 2);
            uint64_t off = (uint64_t)take8(in) << (take8(in) % 12);
            size_t len = ((size_t)take8(in) << 8 | take8(in)) % (POOL_BYTES + 64);
            (void)add(s, idx, off, pool, len);
            break;
        }
        case 3: { /* the next expected bytes, in whatever tensor holds them */
            uint64_t at = fc_stage_received(s), start = 0;
            for (size_t i = 0; i < count; i++) {
                const fc_tensor_spec *sp = fc_stage_spec(s, i);
                uint64_t n = 0;
                check(fc_spec_nbytes(sp, &n) == FC_OK);
                if (at < start + n) {
                    size_t len = (size_t)(take8(in) + 1) * fc_dtype_size(sp->dtype);
                    if (len > n - (at - start))
                        len = (size_t)(n - (at - start));
                    if (len > POOL_BYTES)
                        len = POOL_BYTES;
                    (void)add(s, (uint32_t)i, at - start, pool, len);
                    break;
                }
                start += n;
            }
            break;
        }
        case 4: { /* arbitrary 64-bit fields */
            uint32_t idx = (uint32_t)take64(in);
            uint64_t off = take64(in);
            size_t len = (size_t)(take64(in) % (POOL_BYTES + 1));
            (void)add(s, idx, off, pool, len);
            break;
        }
        case 5: { /* end with an input-supplied hash of input-supplied length */
            uint8_t h[FC_SHA256_BYTES];
            for (size_t i = 0; i < sizeof h; i++)
                h[i] = take8(in);
            size_t hl = take8(in) % 40;
            uint64_t before = fc_stage_received(s);
            fc_error err = {0};
            fc_status st = fc_stage_finish(s, h, hl > FC_SHA256_BYTES ? FC_SHA256_BYTES : hl, &err);
            check(fc_stage_received(s) == before);
            if (st == FC_OK)
                check(fc_stage_complete(s) && before == fc_stage_total(s));
            break;
        }
        case 6: { /* resume check */
            uint64_t r = fc_stage_received(s) + (uint64_t)(int8_t)take8(in);
            fc_status st = fc_stage_check_resume(s, r, NULL);
            if (st == FC_OK)
                check(r == fc_stage_received(s));
            break;
        }
        default: { /* view */
            fc_model view = FC_MODEL_INIT;
            if (fc_stage_view_model(s, &view, NULL) == FC_OK)
                check(fc_stage_complete(s) && view.count == count);
            fc_model_free(&view);
            break;
        }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    input in = {data, size, 0};
    uint8_t head = take8(&in);
    size_t count = (size_t)(head % MAX_TENSORS) + 1;
    fc_tensor_spec specs[MAX_TENSORS];
    memset(specs, 0, sizeof specs);
    uint64_t total = 0;
    int total_overflow = 0;
    for (size_t i = 0; i < count; i++) {
        uint8_t dt = take8(&in) & 7;
        specs[i].dtype = (fc_dtype)dt;
        specs[i].ndim = take8(&in) % 4;
        for (uint32_t k = 0; k < specs[i].ndim; k++)
            specs[i].shape[k] = take8(&in) % 17;
        specs[i].name = (char *)(uintptr_t)names[take8(&in) % 8];
        uint64_t n = 0;
        if (fc_spec_nbytes(&specs[i], &n) == FC_OK)
            total_overflow |= __builtin_add_overflow(total, n, &total);
    }
    (void)total_overflow;
    size_t max_chunk = (((size_t)take8(&in) << 8) | take8(&in)) % POOL_BYTES + 1;
    uint8_t limits = take8(&in);
    static const uint64_t max_totals[4] = {0, 1024, 64 * 1024, 200 * 1024};
    fc_stage_config cfg = {.max_total_bytes = max_totals[limits & 3],
                           .max_tensors = (limits & 4) ? 4 : 0,
                           .max_chunk = max_chunk};
    uint64_t announced = (head & 0x80) ? total + 1 + take8(&in) : total;
    uint8_t mode = take8(&in);
    for (size_t i = 0; i < POOL_BYTES; i++)
        pool[i] = (uint8_t)(i * 31 + mode);

    if (limits & 0x80)
        fc_alloc_fail_after(take8(&in) % 16);
    fc_stage *s = NULL;
    fc_error err = {0};
    fc_status st = fc_stage_create(specs, count, announced, &cfg, &s, &err);
    if (st != FC_OK) {
        fc_alloc_fail_after(-1);
        check(s == NULL && err.code == st && err.msg[0] != '\0');
        return 0;
    }
    check(fc_stage_total(s) == total && fc_stage_received(s) == 0);

    /* The splitter needs every element to fit a chunk; otherwise use raw mode. */
    size_t max_es = 0;
    for (size_t i = 0; i < count; i++)
        if (fc_dtype_size(specs[i].dtype) > max_es)
            max_es = fc_dtype_size(specs[i].dtype);
    if ((mode & 1) == 0 && max_chunk >= max_es)
        run_structured(&in, s, specs, count, max_chunk);
    else
        run_raw(&in, s, count);
    fc_alloc_fail_after(-1);
    fc_stage_free(s);
    return 0;
}
