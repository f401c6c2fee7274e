/* main.c - ds4-quantize: DeepSeek V4 Flash official checkpoint -> DS4 GGUF.
 *
 *   ds4-quantize --hf DIR --out FILE.gguf --recipe f32|f16|q8|q2|q4
 *                [--imatrix FILE.dat] [--threads N]
 *                [--experts T] [--down T] [--attention T] [--shared T]
 *                [--output T] [--embedding T] [--dense T] [--dry-run]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "convert.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ds4-quantize --hf DIR --out FILE.gguf --recipe f32|f16|q8|q2|q4 [options]\n"
            "\n"
            "Converts DeepSeek's official V4 Flash checkpoint directory (config.json,\n"
            "model.safetensors.index.json + shards, optional tokenizer.json) to a DS4 GGUF.\n"
            "\n"
            "recipes:\n"
            "  q2   routed experts IQ2_XXS (gate/up) + Q2_K (down); attention, shared expert and\n"
            "       output Q8_0; embedding, HC, router, compressor, indexer F16; vectors F32\n"
            "  q4   as q2 but routed experts Q4_K\n"
            "  q8   every matrix Q8_0; f16 / f32: every matrix F16 / F32 (exact references)\n"
            "\n"
            "options:\n"
            "  --imatrix FILE.dat   importance matrix (llama.cpp legacy format) for routed experts\n"
            "  --threads N          worker threads (default: all cores)\n"
            "  --experts T          routed experts (gate, up and down unless --down is given)\n"
            "  --down T             routed down projection\n"
            "  --attention T        attention projections (q_a, q_b, kv, output_a, output_b)\n"
            "  --shared T           shared expert\n"
            "  --output T           LM head\n"
            "  --embedding T        token embedding\n"
            "  --dense T            HC, router, compressor and indexer matrices\n"
            "  --dry-run            print the plan (tensor -> type) and write nothing\n"
            "types: F32 F16 BF16 Q8_0 Q4_K Q2_K IQ2_XXS. A type whose block does not divide a\n"
            "tensor's row length falls back to Q8_0, then F16 (each fallback is reported).\n");
}

static bool parse_type(const char *flag, const char *v, ds4_dtype *out) {
    if (ds4_dtype_from_name(v, out)) {
        switch (*out) {
        case DS4_TYPE_F32: case DS4_TYPE_F16: case DS4_TYPE_BF16: case DS4_TYPE_Q8_0:
        case DS4_TYPE_Q4_K: case DS4_TYPE_Q2_K: case DS4_TYPE_IQ2_XXS: return true;
        default: break;
        }
    }
    fprintf(stderr, "ds4-quantize: %s: unsupported type '%s' (F32 F16 BF16 Q8_0 Q4_K Q2_K IQ2_XXS)\n", flag, v);
    return false;
}

int main(int argc, char **argv) {
    convert_options opt = {0};
    const char *recipe = NULL;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    opt.n_threads = ncpu > 0 ? (int)ncpu : 1;
    bool down_set = false;
    ds4_dtype t;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--dry-run")) {
            opt.dry_run = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "ds4-quantize: %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--hf")) opt.hf_dir = v;
        else if (!strcmp(a, "--out")) opt.out_path = v;
        else if (!strcmp(a, "--recipe")) recipe = v;
        else if (!strcmp(a, "--imatrix")) opt.imatrix_path = v;
        else if (!strcmp(a, "--threads")) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 256) {
                fprintf(stderr, "ds4-quantize: --threads must be in [1, 256]\n");
                return 2;
            }
            opt.n_threads = (int)n;
        } else {
            static const struct { const char *flag; ds4_family fam[4]; int n; } fams[] = {
                {"--experts", {DS4_FAM_EXPERT_GATE_UP, DS4_FAM_EXPERT_DOWN}, 2},
                {"--down", {DS4_FAM_EXPERT_DOWN}, 1},
                {"--attention", {DS4_FAM_ATTN_PROJ}, 1},
                {"--shared", {DS4_FAM_SHARED}, 1},
                {"--output", {DS4_FAM_OUTPUT}, 1},
                {"--embedding", {DS4_FAM_EMBED}, 1},
                {"--dense", {DS4_FAM_HC, DS4_FAM_ROUTER, DS4_FAM_COMPRESSOR, DS4_FAM_INDEXER}, 4},
            };
            bool known = false;
            for (size_t k = 0; k < sizeof fams / sizeof fams[0]; k++) {
                if (strcmp(a, fams[k].flag) != 0) continue;
                known = true;
                if (!parse_type(a, v, &t)) return 2;
                for (int j = 0; j < fams[k].n; j++) {
                    if (fams[k].fam[j] == DS4_FAM_EXPERT_DOWN && down_set && strcmp(a, "--down") != 0) continue;
                    opt.has_override[fams[k].fam[j]] = true;
                    opt.override_type[fams[k].fam[j]] = t;
                }
                if (!strcmp(a, "--down")) down_set = true;
            }
            if (!known) {
                fprintf(stderr, "ds4-quantize: unknown option '%s' (see --help)\n", a);
                return 2;
            }
        }
    }
    if (!opt.hf_dir || (!opt.out_path && !opt.dry_run) || !recipe) {
        fprintf(stderr, "ds4-quantize: --hf, --out and --recipe are required\n\n");
        usage(stderr);
        return 2;
    }
    if (!convert_recipe_from_name(recipe, &opt.recipe)) {
        fprintf(stderr, "ds4-quantize: unknown recipe '%s' (f32, f16, q8, q2, q4)\n", recipe);
        return 2;
    }
    return convert_run(&opt);
}
