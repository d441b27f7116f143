/*
 * libFuzzer harness for the JSON reader that sweep and collect use on job
 * results and on compile.py's size reports. Each input is parsed as JSON text of exactly that many bytes,
 * with no terminating NUL, so the parser must stay within its length.
 *
 * Build and run with `make fuzz`.
 */
#define LLC_TESTING
#include "../../llc.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = xmalloc(size, "the input");
    const char *error = NULL;
    JsonValue v;
    memcpy(text, data, size);
    if (json_parse(text, size, &v, &error) == 0) {
        json_get(&v, "complete");
        json_value_free(&v);
    }
    free(text);
    return 0;
}
