/* unicode_tables.h - the Unicode facts the tokenizer's pre-tokenizer needs:
 * strict UTF-8 decoding and a per-code-point class byte.
 *
 * The DeepSeek V4 split rules are regular expressions over the general
 * categories L, M, N, P, S and the White_Space property. Hugging Face
 * tokenizers evaluates them with Oniguruma, whose tables are Unicode 16.0;
 * unicode_tables.c is generated from that same version so a newly assigned
 * character classifies exactly as the reference does. */
#ifndef DS4_UNICODE_TABLES_H
#define DS4_UNICODE_TABLES_H

#include <stddef.h>
#include <stdint.h>

enum {
    UCLASS_L = 1,   /* letter: Lu Ll Lt Lm Lo */
    UCLASS_M = 2,   /* mark: Mn Mc Me */
    UCLASS_N = 4,   /* number: Nd Nl No */
    UCLASS_P = 8,   /* punctuation: Pc Pd Ps Pe Pi Pf Po */
    UCLASS_S = 16,  /* symbol: Sm Sc Sk So */
    UCLASS_WS = 32, /* White_Space property (regex \s) */
};

extern const uint16_t unicode_class_index[0x110000 >> 7];
extern const uint8_t unicode_class_blocks[][128];

static inline unsigned unicode_class(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    return unicode_class_blocks[unicode_class_index[cp >> 7]][cp & 127];
}

/* Decode one well-formed UTF-8 sequence at s[0..n) (n >= 1). Returns its
 * length (1-4) and stores the code point; returns 0 when s does not start a
 * well-formed sequence (overlong, surrogate, > U+10FFFF, bad or missing
 * continuation byte): the caller treats that one byte on its own. */
static inline size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2) return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
        *cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0; /* > U+10FFFF */
        *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        return 4;
    }
    return 0;
}

/* Encode cp (< 0x110000) as UTF-8 into out (4 bytes room); returns length. */
static inline size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

#endif
