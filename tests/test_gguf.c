/* test_gguf.c - GGUF reader/writer: round trips of every value type, nested
 * arrays, tensor layout and alignment, and rejection (with a message, never a
 * crash) of truncated, corrupted and hostile files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "gguf.h"

/* Builds a small file in memory with every metadata type and three tensors. */
static uint8_t *build_sample(size_t *size_out, uint32_t alignment) {
    gguf_writer *w = gguf_writer_new();
    if (alignment) gguf_writer_set_u32(w, "general.alignment", alignment);
    gguf_writer_set_str(w, "general.architecture", "deepseek4");
    gguf_writer_set_u32(w, "t.u32", 4000000000u);
    gguf_writer_set_i32(w, "t.i32", -7);
    gguf_writer_set_u64(w, "t.u64", 1ull << 40);
    gguf_writer_set_f32(w, "t.f32", 1.5f);
    gguf_writer_set_f64(w, "t.f64", -2.25);
    gguf_writer_set_bool(w, "t.bool", true);
    uint8_t u8s[3] = {1, 2, 255};
    gguf_writer_set_arr(w, "t.arr_u8", GGUF_TYPE_UINT8, u8s, 3);
    int16_t i16s[2] = {-300, 300};
    gguf_writer_set_arr(w, "t.arr_i16", GGUF_TYPE_INT16, i16s, 2);
    float fs[4] = {0.5f, -1, 2, 3};
    gguf_writer_set_arr(w, "t.arr_f32", GGUF_TYPE_FLOAT32, fs, 4);
    const char *strs[3] = {"a", "", "h\xc3\xa9llo"};
    gguf_writer_set_arr_str(w, "t.arr_str", strs, 3);
    int64_t i64s[2] = {-1, INT64_MAX};
    gguf_writer_set_arr(w, "t.arr_i64", GGUF_TYPE_INT64, i64s, 2);
    /* nested: [[1,2],[3]] built via set_value */
    uint32_t a0[2] = {1, 2}, a1[1] = {3};
    gguf_value items[2] = {
        {.type = GGUF_TYPE_ARRAY, .arr = {.elem_type = GGUF_TYPE_UINT32, .count = 2, .raw = (const uint8_t *)a0}},
        {.type = GGUF_TYPE_ARRAY, .arr = {.elem_type = GGUF_TYPE_UINT32, .count = 1, .raw = (const uint8_t *)a1}},
    };
    gguf_value nested = {.type = GGUF_TYPE_ARRAY, .arr = {.elem_type = GGUF_TYPE_ARRAY, .count = 2, .items = items}};
    gguf_writer_set_value(w, "t.nested", &nested);

    uint64_t ne0[2] = {4, 3}, ne1[1] = {64}, ne2[3] = {32, 2, 2};
    assert_int_equal(gguf_writer_add_tensor(w, "tens_a", 2, ne0, DS4_TYPE_F32), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "tens_b", 1, ne1, DS4_TYPE_F16), 1);
    assert_int_equal(gguf_writer_add_tensor(w, "tens_c", 3, ne2, DS4_TYPE_Q8_0), 2);

    char *buf = NULL;
    size_t size = 0;
    FILE *fp = open_memstream(&buf, &size);
    assert_true(gguf_writer_begin(w, fp));
    float a[12];
    for (int i = 0; i < 12; i++) a[i] = (float)i;
    assert_true(gguf_writer_write_data(w, a, 20)); /* in two pieces */
    assert_true(gguf_writer_write_data(w, (uint8_t *)a + 20, 28));
    uint16_t b[64];
    for (int i = 0; i < 64; i++) b[i] = (uint16_t)(0x3c00 + i);
    assert_true(gguf_writer_write_data(w, b, sizeof b));
    uint8_t c[4 * 34];
    for (size_t i = 0; i < sizeof c; i++) c[i] = (uint8_t)(i * 7);
    assert_true(gguf_writer_write_data(w, c, sizeof c));
    assert_true(gguf_writer_finish(w));
    fclose(fp);
    gguf_writer_free(w);
    *size_out = size;
    return (uint8_t *)buf;
}

static void test_roundtrip(void **state) {
    (void)state;
    size_t size;
    uint8_t *buf = build_sample(&size, 0);
    char err[256] = {0};
    gguf_file *f = gguf_open_memory(buf, size, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_alignment(f), 32);
    assert_int_equal(gguf_n_kv(f), 13);
    gguf_str s;
    assert_true(gguf_get_str(f, "general.architecture", &s));
    assert_true(gguf_str_eq(s, "deepseek4"));
    uint32_t u32;
    assert_true(gguf_get_u32(f, "t.u32", &u32));
    assert_int_equal(u32, 4000000000u);
    assert_false(gguf_get_u32(f, "t.u64", &u32)); /* out of range */
    uint64_t u64;
    assert_true(gguf_get_u64(f, "t.u64", &u64));
    assert_true(u64 == (1ull << 40));
    assert_false(gguf_get_u64(f, "t.i32", &u64)); /* negative */
    double d;
    assert_true(gguf_get_f64(f, "t.f32", &d));
    assert_true(d == 1.5);
    assert_true(gguf_get_f64(f, "t.f64", &d));
    assert_true(d == -2.25);
    assert_true(gguf_get_f64(f, "t.i32", &d));
    assert_true(d == -7);
    bool b;
    assert_true(gguf_get_bool(f, "t.bool", &b));
    assert_true(b);
    const gguf_value *v = gguf_get(f, "t.arr_u8");
    assert_int_equal(gguf_arr_len(v), 3);
    int64_t i64;
    assert_true(gguf_arr_i64(v, 2, &i64));
    assert_int_equal(i64, 255);
    assert_false(gguf_arr_i64(v, 3, &i64));
    v = gguf_get(f, "t.arr_i16");
    assert_true(gguf_arr_i64(v, 0, &i64));
    assert_int_equal(i64, -300);
    v = gguf_get(f, "t.arr_f32");
    assert_true(gguf_arr_f64(v, 1, &d));
    assert_true(d == -1);
    v = gguf_get(f, "t.arr_str");
    assert_int_equal(gguf_arr_len(v), 3);
    assert_true(gguf_arr_str(v, 2, &s));
    assert_true(gguf_str_eq(s, "h\xc3\xa9llo"));
    assert_true(gguf_arr_str(v, 1, &s));
    assert_int_equal(s.len, 0);
    v = gguf_get(f, "t.arr_i64");
    assert_true(gguf_arr_i64(v, 1, &i64));
    assert_true(i64 == INT64_MAX);
    v = gguf_get(f, "t.nested");
    assert_int_equal(gguf_arr_len(v), 2);
    assert_int_equal(v->arr.elem_type, GGUF_TYPE_ARRAY);
    assert_true(gguf_arr_i64(&v->arr.items[0], 1, &i64));
    assert_int_equal(i64, 2);
    assert_true(gguf_arr_i64(&v->arr.items[1], 0, &i64));
    assert_int_equal(i64, 3);
    assert_null(gguf_get(f, "missing"));

    assert_int_equal(gguf_n_tensors(f), 3);
    const gguf_tensor *t = gguf_find_tensor(f, "tens_a");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->ne[1], 3);
    assert_int_equal(t->nbytes, 48);
    assert_int_equal(((const float *)t->data)[11], 11);
    t = gguf_find_tensor(f, "tens_b");
    assert_int_equal(t->offset % 32, 0);
    assert_int_equal(((const uint16_t *)t->data)[63], 0x3c00 + 63);
    t = gguf_find_tensor(f, "tens_c");
    assert_int_equal(t->nbytes, 4 * 34);
    assert_int_equal(t->offset % 32, 0);
    assert_int_equal(((const uint8_t *)t->data)[5], 35);
    assert_int_equal(gguf_data_offset(f) % 32, 0);
    assert_null(gguf_find_tensor(f, "tens_d"));

    /* copy every value through set_value and compare the serialised bytes */
    gguf_writer *w = gguf_writer_new();
    for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.data);
        gguf_writer_set_value(w, key, &kv->value);
    }
    char *buf2 = NULL;
    size_t size2 = 0;
    FILE *fp = open_memstream(&buf2, &size2);
    assert_true(gguf_writer_begin(w, fp));
    assert_true(gguf_writer_finish(w));
    fclose(fp);
    gguf_writer_free(w);
    /* same header + metadata bytes (after the tensor count, which differs) */
    size_t kv_bytes = size2 - 24;
    while (kv_bytes > 0 && buf2[24 + kv_bytes - 1] == 0) kv_bytes--; /* strip padding */
    assert_memory_equal(buf + 24, buf2 + 24, kv_bytes);
    free(buf2);
    gguf_close(f);
    free(buf);
}

static void test_alignment_key(void **state) {
    (void)state;
    size_t size;
    uint8_t *buf = build_sample(&size, 256);
    char err[256] = {0};
    gguf_file *f = gguf_open_memory(buf, size, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(gguf_alignment(f), 256);
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) assert_int_equal(gguf_tensor_at(f, i)->offset % 256, 0);
    assert_int_equal(gguf_data_offset(f) % 256, 0);
    gguf_close(f);
    free(buf);
}

/* Every truncation of a valid file is rejected with a message. */
static void test_truncated(void **state) {
    (void)state;
    size_t size;
    uint8_t *buf = build_sample(&size, 0);
    char err0[256];
    gguf_file *full = gguf_open_memory(buf, size, err0, sizeof err0);
    assert_non_null(full);
    uint64_t last_data_end = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(full); i++) {
        const gguf_tensor *t = gguf_tensor_at(full, i);
        uint64_t end = gguf_data_offset(full) + t->offset + t->nbytes;
        if (end > last_data_end) last_data_end = end;
    }
    gguf_close(full);
    for (size_t n = 0; n < size; n++) {
        char err[256] = {0};
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        gguf_file *f = gguf_open_memory(copy, n, err, sizeof err);
        /* the last tensor's padding is not needed: a file may end right after its data */
        if (f) {
            assert_true(n >= last_data_end);
            gguf_close(f);
        } else {
            assert_true(strlen(err) > 10);
        }
        free(copy);
    }
    free(buf);
}

static uint8_t *find_bytes(uint8_t *buf, size_t size, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= size; i++)
        if (memcmp(buf + i, needle, n) == 0 && i >= 8) return buf + i;
    fprintf(stderr, "test bug: '%s' not found in the sample file\n", needle);
    abort();
}

/* Start of a tensor's info record (its u64 name length) in a serialised file. */
static uint8_t *tensor_info_at(uint8_t *buf, size_t size, const char *name) {
    uint8_t *p = find_bytes(buf, size, name);
    if (!p || p < buf + 8) fail_msg("tensor %s not found", name);
    return p - 8;
}

static void expect_error(uint8_t *buf, size_t size, const char *fragment) {
    char err[256] = {0};
    gguf_file *f = gguf_open_memory(buf, size, err, sizeof err);
    if (f) gguf_close(f);
    assert_null(f);
    if (!strstr(err, fragment)) fail_msg("error '%s' does not mention '%s'", err, fragment);
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void test_corrupted(void **state) {
    (void)state;
    size_t size;
    uint8_t *orig = build_sample(&size, 0);
    uint8_t *buf = malloc(size);

    memcpy(buf, orig, size);
    buf[0] = 'X';
    expect_error(buf, size, "not a GGUF file");

    memcpy(buf, orig, size);
    put_u32(buf + 4, 2);
    expect_error(buf, size, "version 2");

    memcpy(buf, orig, size);
    put_u64(buf + 8, 1ull << 60); /* tensor count */
    expect_error(buf, size, "tensors");

    memcpy(buf, orig, size);
    put_u64(buf + 16, 1ull << 60); /* kv count */
    expect_error(buf, size, "metadata entries");

    /* string length running past the end */
    memcpy(buf, orig, size);
    uint8_t *p = find_bytes(buf, size, "deepseek4");
    put_u64(p - 8, 1ull << 50);
    expect_error(buf, size, "truncated");

    /* array count huge */
    memcpy(buf, orig, size);
    p = find_bytes(buf, size, "t.arr_f32");
    put_u64(p + 9 + 4 + 4, 1ull << 61);
    expect_error(buf, size, "t.arr_f32");

    /* bad value type */
    memcpy(buf, orig, size);
    p = find_bytes(buf, size, "t.bool");
    put_u32(p + 6, 77);
    expect_error(buf, size, "value type 77");

    /* tensor type unknown, dims invalid, offset misaligned / out of range */
    memcpy(buf, orig, size);
    p = tensor_info_at(buf, size, "tens_a"); /* u64 name length, then the name */
    uint8_t *ndim = p + 14, *dims = ndim + 4, *type = dims + 16, *off = type + 4;
    put_u32(type, 99);
    expect_error(buf, size, "unknown ggml type 99");
    memcpy(buf, orig, size);
    put_u32(ndim, 0);
    expect_error(buf, size, "dimensions");
    memcpy(buf, orig, size);
    put_u64(off, 8);
    expect_error(buf, size, "not aligned");
    memcpy(buf, orig, size);
    put_u64(off, 1ull << 40);
    expect_error(buf, size, "runs past the end");
    memcpy(buf, orig, size);
    put_u64(dims, 1ull << 62);
    put_u64(dims + 8, 1ull << 62);
    expect_error(buf, size, "overflows");

    /* Q8_0 row length not a multiple of 32 */
    memcpy(buf, orig, size);
    p = tensor_info_at(buf, size, "tens_c");
    put_u64(p + 14 + 4, 33);
    expect_error(buf, size, "block size");

    /* duplicate tensor name */
    memcpy(buf, orig, size);
    p = tensor_info_at(buf, size, "tens_b");
    p[8 + 5] = 'a';
    expect_error(buf, size, "duplicate tensor name 'tens_a'");

    free(buf);
    free(orig);
}

static void test_writer_errors(void **state) {
    (void)state;
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_u32(w, "k", 1);
    gguf_writer_set_u32(w, "k", 2);
    assert_non_null(gguf_writer_error(w));
    gguf_writer_free(w);

    w = gguf_writer_new();
    uint64_t ne[1] = {33};
    assert_int_equal(gguf_writer_add_tensor(w, "x", 1, ne, DS4_TYPE_Q8_0), -1);
    assert_non_null(strstr(gguf_writer_error(w), "x"));
    gguf_writer_free(w);

    w = gguf_writer_new();
    ne[0] = 8;
    gguf_writer_add_tensor(w, "x", 1, ne, DS4_TYPE_F32);
    char *buf = NULL;
    size_t size = 0;
    FILE *fp = open_memstream(&buf, &size);
    assert_true(gguf_writer_begin(w, fp));
    float x[8] = {0};
    assert_true(gguf_writer_write_data(w, x, 16));
    assert_false(gguf_writer_finish(w)); /* incomplete */
    assert_non_null(strstr(gguf_writer_error(w), "not fully written"));
    fclose(fp);
    free(buf);
    gguf_writer_free(w);
}

static void test_open_file_errors(void **state) {
    (void)state;
    char err[512];
    assert_null(gguf_open("/nonexistent/x.gguf", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/x.gguf"));
    char path[] = "/tmp/ds4_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_null(gguf_open(path, err, sizeof err));
    assert_non_null(strstr(err, "empty"));
    size_t size;
    uint8_t *buf = build_sample(&size, 0);
    FILE *fp = fopen(path, "wb");
    fwrite(buf, 1, size, fp);
    fclose(fp);
    gguf_file *f = gguf_open(path, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(gguf_n_tensors(f), 3);
    gguf_close(f);
    unlink(path);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),       cmocka_unit_test(test_alignment_key),
        cmocka_unit_test(test_truncated),       cmocka_unit_test(test_corrupted),
        cmocka_unit_test(test_writer_errors),   cmocka_unit_test(test_open_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
