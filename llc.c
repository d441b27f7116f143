/*
 * llc.c: the Local Learning Coefficient (LLC) of Tracr-compiled transformers,
 * estimated with SGLD as devinterp does, in one C99 file with libc and libm.
 *
 * The file reads in the order data flows: utilities, random numbers, matrix
 * multiplication, the weight file, the model's forward pass, its backward
 * pass, losses and datasets, the SGLD estimator, and the command line.
 * Shapes use R = rows (token positions of a batch, laid end to end),
 * D = d_model, HK = n_heads * d_head, M = d_mlp, O = n_outputs, T = tokens of
 * one sequence including BOS.
 *
 * Build: cc -O2 -o llc llc.c -lm     (tests compile it with -DLLC_TESTING,
 * which leaves out main; -march=native turns on the x86-64 SIMD kernels,
 * -DLLC_NO_SIMD and -DLLC_NO_THREADS turn off SIMD and POSIX threads)
 */
#define _XOPEN_SOURCE 700
#define _FILE_OFFSET_BITS 64

#include "llc.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <unistd.h>

#if !defined(LLC_NO_THREADS)
#define LLC_THREADS 1
#include <pthread.h>
#else
#define LLC_THREADS 0
#endif

/* ---------------------------------------------------------------------------
 * Utilities: fail-fast allocation, arenas, time, peak memory, interrupts,
 * atomic output files
 * ------------------------------------------------------------------------- */

#define LLC_PI 3.14159265358979323846

static const char *g_program = "llc";   /* prefix of every message, e.g. "llc estimate" */
static int g_quiet = 0;                 /* no progress lines on stderr */

static void die(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", g_program);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void warn(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: warning: ", g_program);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void progress(const char *fmt, ...) {
    va_list ap;
    if (g_quiet) return;
    fprintf(stderr, "%s: ", g_program);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void *xmalloc(size_t n, const char *what) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory allocating %zu bytes for %s", n, what);
    return p;
}

static void *xcalloc(size_t count, size_t size, const char *what) {
    void *p;
    if (size && count > SIZE_MAX / size) die("size overflow allocating %s", what);
    p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu bytes for %s", count * size, what);
    return p;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n, "a string");
    memcpy(p, s, n);
    return p;
}

/* One block of memory sized up front and handed out in pieces aligned to
 * ARENA_ALIGN bytes (a cache line, enough for any SIMD load), then freed
 * whole. An arena whose base is NULL only measures: arena_take() counts the
 * bytes and returns NULL, so one layout function both sizes and fills it. */
typedef struct {
    unsigned char *base;   /* aligned start, or NULL when measuring */
    void *block;           /* what malloc returned */
    size_t size, used;
} Arena;

enum { ARENA_ALIGN = 64 };

static size_t arena_round_up(size_t bytes) {
    return (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
}

static void arena_init(Arena *a, size_t size, const char *what) {
    if (size > SIZE_MAX - ARENA_ALIGN) die("size overflow allocating %s", what);
    a->block = xcalloc(size + ARENA_ALIGN, 1, what);
    a->base = (unsigned char *)a->block + (ARENA_ALIGN - (uintptr_t)a->block % ARENA_ALIGN) % ARENA_ALIGN;
    a->size = size;
    a->used = 0;
}

static Arena arena_measuring(void) {
    Arena a;
    memset(&a, 0, sizeof a);
    a.size = SIZE_MAX;
    return a;
}

/* Returns count * size zeroed bytes (NULL when measuring). */
static void *arena_take(Arena *a, size_t count, size_t size) {
    size_t start = 0, bytes = 0;
    int fits = a->used <= SIZE_MAX - ARENA_ALIGN && (!size || count <= (SIZE_MAX / 2) / size);
    if (fits) {
        start = arena_round_up(a->used);
        bytes = count * size;
        fits = start <= a->size && bytes <= a->size - start;
    }
    if (!fits) {
        /* a measuring arena saturates at SIZE_MAX, a size that arena_init rejects */
        if (!a->base) {
            a->used = SIZE_MAX;
            return NULL;
        }
        die("internal error: an arena of %zu bytes is too small", a->size);
    }
    a->used = start + bytes;
    return a->base ? a->base + start : NULL;
}

static void arena_free(Arena *a) {
    free(a->block);
    memset(a, 0, sizeof *a);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Peak resident set size of this process in bytes, from getrusage(), or -1
 * when it fails. ru_maxrss counts kilobytes on Linux and the BSDs but bytes
 * on macOS. */
static long long peak_memory_bytes(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
#ifdef __APPLE__
    return (long long)usage.ru_maxrss;
#else
    return (long long)usage.ru_maxrss * 1024;
#endif
}

/* Set by SIGINT or SIGTERM; long loops finish their current step and stop,
 * and the command exits with status 130 either way. */
static volatile sig_atomic_t g_interrupted = 0;

/* The temporary file of the output being written, or NULL. A second signal
 * removes it before ending the program, so no stray file is left. */
static const char *volatile g_tmp_path = NULL;

static void on_interrupt(int sig) {
    if (g_interrupted) {
        const char *tmp = g_tmp_path;
        if (tmp) unlink(tmp);
        signal(sig, SIG_DFL);   /* a second Ctrl-C or SIGTERM ends the program at once */
        raise(sig);
        return;
    }
    g_interrupted = 1;
}

/* Catches SIGINT and SIGTERM, each unless it is ignored (shells ignore
 * SIGINT for background jobs, and nohup-like wrappers may ignore more). */
static void install_interrupt_handlers(void) {
    static const int signals[2] = {SIGINT, SIGTERM};
    int i;
    for (i = 0; i < 2; i++) {
        struct sigaction sa, old;
        if (sigaction(signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_interrupt;
        sigemptyset(&sa.sa_mask);
        sigaction(signals[i], &sa, NULL);
    }
}

/* Returns the path that path names after following symbolic links, which
 * may not exist yet (writing through a dangling link creates its target).
 * A relative link target is taken from the link's folder. Returns NULL with
 * errno set to ELOOP after 40 links, as the kernel does. */
static char *resolve_symlinks(const char *path) {
    char *p = xstrdup(path), target[4096];
    int depth;
    for (depth = 0; depth < 40; depth++) {
        struct stat st;
        const char *slash;
        char *next;
        ssize_t n;
        size_t size;
        if (lstat(p, &st) != 0 || !S_ISLNK(st.st_mode)) return p;
        n = readlink(p, target, sizeof target - 1);
        if (n < 0) return p;   /* opening p reports the error */
        target[n] = 0;
        slash = strrchr(p, '/');
        size = (slash ? (size_t)(slash - p) + 1 : 0) + (size_t)n + 1;
        next = xmalloc(size, "a path");
        if (target[0] == '/' || !slash) snprintf(next, size, "%s", target);
        else snprintf(next, size, "%.*s%s", (int)(slash - p) + 1, p, target);
        free(p);
        p = next;
    }
    free(p);
    errno = ELOOP;
    return NULL;
}

/* Returns STDOUT_FILENO or STDERR_FILENO when st is the file that stream
 * writes to, else -1. */
static int standard_stream_of(const struct stat *st) {
    static const int fds[2] = {STDOUT_FILENO, STDERR_FILENO};
    int i;
    for (i = 0; i < 2; i++) {
        struct stat sf;
        if (fstat(fds[i], &sf) == 0 && sf.st_dev == st->st_dev && sf.st_ino == st->st_ino) return fds[i];
    }
    return -1;
}

/* Returns 1 when path must be written in place, not through a temporary
 * file. That is so when it exists and is not a regular file (a FIFO, or a
 * device such as /dev/null or /dev/stdout), and when it is the file that
 * llc's own stdout or stderr goes to. Sets *stream_fd to that stream's
 * descriptor, or to -1. */
static int output_is_stream(const char *path, int *stream_fd) {
    struct stat st;
    *stream_fd = -1;
    if (stat(path, &st) != 0) return 0;
    *stream_fd = standard_stream_of(&st);
    return !S_ISREG(st.st_mode) || *stream_fd >= 0;
}

/* An output file written under a temporary name, flushed to disk and renamed
 * over the final path on commit, so readers never see a half-written file
 * and a failure or Ctrl-C leaves the previous file in place. When the path
 * is a symbolic link, the file it resolves to is replaced and the link
 * stays. A stream (see output_is_stream) is written directly. */
typedef struct {
    FILE *f;
    char *path;       /* as given, for messages */
    char *target;     /* the file replaced on commit: path with symbolic links followed */
    char *tmp_path;   /* NULL when writing a stream directly */
} AtomicFile;

static int atomic_open(AtomicFile *af, const char *path) {
    size_t n;
    int stream_fd;
    memset(af, 0, sizeof *af);
    if (output_is_stream(path, &stream_fd)) {
        /* A stream cannot be replaced by rename, so this write is not atomic:
         * a failure or Ctrl-C can leave part of the output in it. An output
         * to llc's own stdout or stderr goes through a duplicate of that
         * descriptor, which shares its file offset, so the output neither
         * truncates nor overwrites what llc prints there. */
        if (stream_fd >= 0) {
            int fd;
            fflush(stream_fd == STDOUT_FILENO ? stdout : stderr);
            fd = dup(stream_fd);
            af->f = fd >= 0 ? fdopen(fd, "wb") : NULL;
            if (!af->f && fd >= 0) close(fd);
        } else {
            af->f = fopen(path, "wb");
        }
        if (!af->f) {
            fprintf(stderr, "%s: cannot write %s: %s\n", g_program, path, strerror(errno));
            return -1;
        }
        af->path = xstrdup(path);
        return 0;
    }
    af->target = resolve_symlinks(path);
    if (!af->target) {
        fprintf(stderr, "%s: cannot write %s: %s\n", g_program, path, strerror(errno));
        return -1;
    }
    n = strlen(af->target) + 32;
    af->path = xstrdup(path);
    af->tmp_path = xmalloc(n, "a file name");
    snprintf(af->tmp_path, n, "%s.tmp%ld", af->target, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f) {
        fprintf(stderr, "%s: cannot write %s: creating the temporary file %s failed: %s\n", g_program, path,
                af->tmp_path, strerror(errno));
        free(af->path);
        free(af->target);
        free(af->tmp_path);
        return -1;
    }
    g_tmp_path = af->tmp_path;
    return 0;
}

static void atomic_free(AtomicFile *af) {
    g_tmp_path = NULL;
    free(af->path);
    free(af->target);
    free(af->tmp_path);
    af->path = af->target = af->tmp_path = NULL;
}

static int atomic_commit(AtomicFile *af) {
    struct stat st;
    int failed = ferror(af->f) != 0;
    failed |= fflush(af->f) != 0;
    /* a replaced file keeps its permission bits (a new one gets the umask's) */
    if (!failed && af->tmp_path && stat(af->target, &st) == 0) (void)fchmod(fileno(af->f), st.st_mode & 07777);
    if (!failed && af->tmp_path && fsync(fileno(af->f)) != 0 && errno != EINVAL) failed = 1;   /* EINVAL: cannot sync */
    failed |= fclose(af->f) != 0;
    af->f = NULL;
    if (!failed && af->tmp_path && rename(af->tmp_path, af->target) != 0) failed = 1;
    if (failed) {
        fprintf(stderr, "%s: cannot write %s: %s\n", g_program, af->path, strerror(errno));
        if (af->tmp_path) remove(af->tmp_path);
    }
    atomic_free(af);
    return failed ? -1 : 0;
}

/* The absolute path that writing path creates or replaces: symbolic links
 * followed, then its folder resolved with realpath. NULL when the folder
 * does not exist. */
static char *output_file_key(const char *path) {
    char *target = resolve_symlinks(path), *slash, *folder, *key = NULL;
    const char *base;
    if (!target) return NULL;
    slash = strrchr(target, '/');
    if (slash) {
        *slash = 0;
        folder = realpath(slash == target ? "/" : target, NULL);
        base = slash + 1;
    } else {
        folder = realpath(".", NULL);
        base = target;
    }
    if (folder) {
        size_t n = strlen(folder) + strlen(base) + 2;
        key = xmalloc(n, "a path");
        snprintf(key, n, "%s/%s", strcmp(folder, "/") ? folder : "", base);
    }
    free(folder);
    free(target);
    return key;
}

/* Returns 1 when writing output would replace or feed the file named by
 * other: the same existing file (hard and symbolic links included), or the
 * same new path once links and folders are resolved. Character devices such
 * as /dev/null or a terminal never count, because writing several outputs
 * to one replaces nothing. */
static int output_overlaps(const char *output, const char *other) {
    struct stat so, sb;
    char *a, *b;
    int same;
    if (stat(output, &so) == 0 && stat(other, &sb) == 0)
        return so.st_dev == sb.st_dev && so.st_ino == sb.st_ino && !S_ISCHR(so.st_mode);
    a = output_file_key(output);
    b = output_file_key(other);
    same = a && b ? !strcmp(a, b) : !strcmp(output, other);
    free(a);
    free(b);
    return same;
}

/* Writes text as one CSV field (RFC 4180): in double quotes when it
 * contains a comma, a double quote, CR or LF, with each double quote
 * doubled. */
static void csv_field(FILE *f, const char *text) {
    const char *c;
    if (!strpbrk(text, ",\"\r\n")) {
        fputs(text, f);
        return;
    }
    fputc('"', f);
    for (c = text; *c; c++) {
        if (*c == '"') fputc('"', f);
        fputc(*c, f);
    }
    fputc('"', f);
}

/* A streaming JSON writer with two-space indentation. Non-finite numbers
 * are written as null, because JSON has no NaN or infinity. */
typedef struct {
    FILE *f;
    int depth;
    int has_items[64];   /* per nesting level: an item was written, so the next needs a comma */
    int inline_depth;    /* arrays from this depth on stay on one line; 0 = none */
} Json;

static void json_init(Json *j, FILE *f) {
    memset(j, 0, sizeof *j);
    j->f = f;
}

/* Returns the length (1 to 4) of the valid UTF-8 sequence at s, or 0 when
 * s[0] starts none. Stray continuation bytes, overlong forms, UTF-16
 * surrogates, code points above U+10FFFF and cut-short sequences are
 * invalid. Reads no byte past a NUL. */
static int utf8_sequence_length(const unsigned char *s) {
    unsigned char lo = 0x80, hi = 0xbf;   /* the valid range of the second byte */
    int n, k;
    if (s[0] < 0x80) return 1;
    if (s[0] < 0xc2) return 0;
    if (s[0] < 0xe0) {
        n = 2;
    } else if (s[0] < 0xf0) {
        n = 3;
        if (s[0] == 0xe0) lo = 0xa0;   /* overlong below U+0800 */
        if (s[0] == 0xed) hi = 0x9f;   /* surrogates U+D800..U+DFFF */
    } else if (s[0] < 0xf5) {
        n = 4;
        if (s[0] == 0xf0) lo = 0x90;   /* overlong below U+10000 */
        if (s[0] == 0xf4) hi = 0x8f;   /* above U+10FFFF */
    } else {
        return 0;
    }
    if (s[1] < lo || s[1] > hi) return 0;
    for (k = 2; k < n; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    return n;
}

/* Writes s as a JSON string. Each byte that is not part of valid UTF-8 (a
 * file name in another encoding, say) becomes U+FFFD, because JSON text
 * must be UTF-8. */
static void json_string_body(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x80) {
            int n = utf8_sequence_length((const unsigned char *)s);
            if (n == 0) {
                fputs("\\ufffd", f);
            } else {
                fwrite(s, 1, (size_t)n, f);
                s += n - 1;
            }
        } else if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void json_item(Json *j, const char *key) {
    int on_one_line = j->inline_depth && j->depth >= j->inline_depth;
    if (j->has_items[j->depth]) fputc(',', j->f);
    if (j->depth > 0) {
        if (on_one_line) {
            if (j->has_items[j->depth]) fputc(' ', j->f);
        } else {
            fprintf(j->f, "\n%*s", 2 * j->depth, "");
        }
    }
    j->has_items[j->depth] = 1;
    if (key) {
        json_string_body(j->f, key);
        fputs(": ", j->f);
    }
}

static void json_open(Json *j, const char *key, char bracket) {
    json_item(j, key);
    fputc(bracket, j->f);
    j->depth++;
    j->has_items[j->depth] = 0;
}

static void json_close(Json *j, char bracket) {
    int on_one_line = j->inline_depth && j->depth >= j->inline_depth;
    int had_items = j->has_items[j->depth];
    j->depth--;
    if (had_items && !on_one_line) fprintf(j->f, "\n%*s", 2 * j->depth, "");
    fputc(bracket, j->f);
    if (j->depth == 0) fputc('\n', j->f);
}

static void json_object(Json *j, const char *key) { json_open(j, key, '{'); }
static void json_object_end(Json *j) { json_close(j, '}'); }
static void json_array(Json *j, const char *key) { json_open(j, key, '['); }
static void json_array_end(Json *j) { json_close(j, ']'); }

static void json_str(Json *j, const char *key, const char *value) {
    json_item(j, key);
    if (value) json_string_body(j->f, value);
    else fputs("null", j->f);
}

static void json_num(Json *j, const char *key, double value) {
    json_item(j, key);
    if (isfinite(value)) fprintf(j->f, "%.9g", value);
    else fputs("null", j->f);
}

static void json_int(Json *j, const char *key, long long value) {
    json_item(j, key);
    fprintf(j->f, "%lld", value);
}

static void json_uint(Json *j, const char *key, unsigned long long value) {
    json_item(j, key);
    fprintf(j->f, "%llu", value);
}

static void json_bool(Json *j, const char *key, int value) {
    json_item(j, key);
    fputs(value ? "true" : "false", j->f);
}

/* A small JSON reader for the files llc itself writes (job results) and
 * for compile.py's size reports: a tree of values, nesting at most 64 deep. */
typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue {
    JsonType type;
    double number;             /* JSON_NUMBER, and 0/1 for JSON_BOOL */
    unsigned long long integer;   /* exact value of a JSON_NUMBER when is_integer */
    int is_integer;            /* the number is written as digits only and is below 2^64 */
    char *string;              /* JSON_STRING */
    int n;                     /* items of an array or object */
    struct JsonValue *items;
    char **keys;               /* JSON_OBJECT: the key of each item */
} JsonValue;

typedef struct {
    const char *p, *end;
    int depth;
    const char *error;
} JsonParser;

static void json_value_free(JsonValue *v) {
    int i;
    for (i = 0; i < v->n; i++) {
        json_value_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
    memset(v, 0, sizeof *v);
}

static void json_skip_space(JsonParser *jp) {
    while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r')) jp->p++;
}

static int json_fail(JsonParser *jp, const char *why) {
    if (!jp->error) jp->error = why;
    return -1;
}

/* Appends the UTF-8 encoding of code point c to buf. */
static size_t utf8_encode(char *buf, unsigned c) {
    if (c < 0x80) return buf[0] = (char)c, 1;
    if (c < 0x800) return buf[0] = (char)(0xc0 | c >> 6), buf[1] = (char)(0x80 | (c & 0x3f)), 2;
    if (c < 0x10000)
        return buf[0] = (char)(0xe0 | c >> 12), buf[1] = (char)(0x80 | ((c >> 6) & 0x3f)),
               buf[2] = (char)(0x80 | (c & 0x3f)), 3;
    buf[0] = (char)(0xf0 | c >> 18), buf[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    buf[2] = (char)(0x80 | ((c >> 6) & 0x3f)), buf[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

static int json_parse_string(JsonParser *jp, char **out) {
    const char *start = ++jp->p;   /* after the opening quote */
    char *s = xmalloc((size_t)(jp->end - start) + 1, "a JSON string");
    size_t n = 0;
    while (jp->p < jp->end && *jp->p != '"') {
        unsigned char c = (unsigned char)*jp->p++;
        if (c < 0x20) return free(s), json_fail(jp, "control character in a string");
        if (c != '\\') {
            s[n++] = (char)c;
            continue;
        }
        if (jp->p >= jp->end) break;
        c = (unsigned char)*jp->p++;
        if (c == 'u') {
            unsigned code = 0;
            int k;
            if (jp->end - jp->p < 4) return free(s), json_fail(jp, "short \\u escape");
            for (k = 0; k < 4; k++) {
                char h = *jp->p++;
                code = code * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
                if (!isxdigit((unsigned char)h)) return free(s), json_fail(jp, "bad \\u escape");
            }
            n += utf8_encode(s + n, code);   /* 4 bytes at most for 6 input bytes */
        } else {
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t", *at = strchr(from, (int)c);
            if (!at || !c) return free(s), json_fail(jp, "bad escape");
            s[n++] = to[at - from];
        }
    }
    if (jp->p >= jp->end) return free(s), json_fail(jp, "unterminated string");
    jp->p++;
    s[n] = 0;
    *out = s;
    return 0;
}

/* Returns 1 when the text at jp->p starts with word; reads no byte past jp->end. */
static int json_starts_with(const JsonParser *jp, const char *word) {
    size_t n = strlen(word);
    return (size_t)(jp->end - jp->p) >= n && !memcmp(jp->p, word, n);
}

static int json_parse_value(JsonParser *jp, JsonValue *v) {
    memset(v, 0, sizeof *v);
    json_skip_space(jp);
    if (jp->p >= jp->end) return json_fail(jp, "unexpected end of input");
    if (++jp->depth > 64) return json_fail(jp, "nesting deeper than 64");
    if (*jp->p == '{' || *jp->p == '[') {
        int is_object = *jp->p == '{', capacity = 0;
        char close = is_object ? '}' : ']';
        v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
        jp->p++;
        json_skip_space(jp);
        if (jp->p < jp->end && *jp->p == close) {
            jp->p++;
            jp->depth--;
            return 0;
        }
        for (;;) {
            char *key = NULL;
            if (v->n == capacity) {
                capacity = capacity ? 2 * capacity : 8;
                v->items = realloc(v->items, (size_t)capacity * sizeof(JsonValue));
                if (is_object) v->keys = realloc(v->keys, (size_t)capacity * sizeof(char *));
                if (!v->items || (is_object && !v->keys)) die("out of memory reading JSON");
            }
            if (is_object) {
                json_skip_space(jp);
                if (jp->p >= jp->end || *jp->p != '"') return json_fail(jp, "expected a key");
                if (json_parse_string(jp, &key)) return -1;
                json_skip_space(jp);
                if (jp->p >= jp->end || *jp->p != ':') return free(key), json_fail(jp, "expected ':'");
                jp->p++;
                v->keys[v->n] = key;
            }
            if (json_parse_value(jp, &v->items[v->n])) {
                v->n++;
                return -1;
            }
            v->n++;
            json_skip_space(jp);
            if (jp->p < jp->end && *jp->p == ',') {
                jp->p++;
                continue;
            }
            if (jp->p < jp->end && *jp->p == close) {
                jp->p++;
                break;
            }
            return json_fail(jp, "expected ',' or a closing bracket");
        }
    } else if (*jp->p == '"') {
        v->type = JSON_STRING;
        if (json_parse_string(jp, &v->string)) return -1;
    } else if (json_starts_with(jp, "true") || json_starts_with(jp, "false")) {
        v->type = JSON_BOOL;
        v->number = *jp->p == 't';
        jp->p += *jp->p == 't' ? 4 : 5;
    } else if (json_starts_with(jp, "null")) {
        v->type = JSON_NULL;
        jp->p += 4;
    } else {
        char *end;
        char buf[64];
        size_t len = 0;
        while (jp->p + len < jp->end && len < sizeof buf - 1 && jp->p[len] &&
               strchr("+-0123456789.eE", jp->p[len]))
            len++;
        memcpy(buf, jp->p, len);
        buf[len] = 0;
        v->type = JSON_NUMBER;
        v->number = strtod(buf, &end);
        if (len == 0 || *end) return json_fail(jp, "invalid value");
        /* a double stores integers exactly only up to 2^53, and seeds go up to 2^64 - 1 */
        if (strspn(buf, "0123456789") == len) {
            errno = 0;
            v->integer = strtoull(buf, NULL, 10);
            v->is_integer = errno == 0;
        }
        jp->p += len;
    }
    jp->depth--;
    return 0;
}

/* Parses text (len bytes) into v; returns 0, or -1 with *error set. */
static int json_parse(const char *text, size_t len, JsonValue *v, const char **error) {
    JsonParser jp;
    jp.p = text;
    jp.end = text + len;
    jp.depth = 0;
    jp.error = NULL;
    if (json_parse_value(&jp, v) == 0) {
        json_skip_space(&jp);
        if (jp.p == jp.end) return 0;
        json_fail(&jp, "text after the value");
    }
    json_value_free(v);
    *error = jp.error;
    return -1;
}

static const JsonValue *json_get(const JsonValue *v, const char *key) {
    int i;
    if (!v || v->type != JSON_OBJECT) return NULL;
    for (i = 0; i < v->n; i++)
        if (!strcmp(v->keys[i], key)) return &v->items[i];
    return NULL;
}

/* The number at key, or fallback when it is absent or not a number (null). */
static double json_number(const JsonValue *v, const char *key, double fallback) {
    const JsonValue *x = json_get(v, key);
    return x && (x->type == JSON_NUMBER || x->type == JSON_BOOL) ? x->number : fallback;
}

/* Stores the integer at key in *out and returns 1 when it is written as
 * digits only and fits 64 bits unsigned; returns 0 otherwise. */
static int json_uint64(const JsonValue *v, const char *key, unsigned long long *out) {
    const JsonValue *x = json_get(v, key);
    if (!x || x->type != JSON_NUMBER || !x->is_integer) return 0;
    *out = x->integer;
    return 1;
}

static const char *json_string(const JsonValue *v, const char *key) {
    const JsonValue *x = json_get(v, key);
    return x && x->type == JSON_STRING ? x->string : NULL;
}

/* Reads a whole regular file into memory (NUL-terminated); returns NULL on
 * error, with errno EINVAL when path is not a regular file. */
static char *read_file(const char *path, size_t *len) {
    /* O_NONBLOCK and the check: a FIFO would block, and a folder reads as an error */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    struct stat st;
    FILE *f;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (fd < 0) return NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !(f = fdopen(fd, "rb"))) {
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    for (;;) {
        size_t got;
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            buf = realloc(buf, cap);
            if (!buf) die("out of memory reading %s", path);
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

/* ---------------------------------------------------------------------------
 * Random numbers: xoshiro256** (Blackman and Vigna, 2018), seeded through
 * splitmix64. Each SGLD chain gets its own stream by jumping 2^128 steps
 * ahead, so results do not depend on how chains are spread over threads.
 * ------------------------------------------------------------------------- */

typedef struct {
    uint64_t s[4];
    int has_spare;       /* Box-Muller makes normals in pairs */
    double spare;
} Rng;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static void normal_tables_ensure(void);

static void rng_seed(Rng *r, uint64_t seed) {
    int i;
    for (i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
    r->has_spare = 0;
    normal_tables_ensure();   /* so rng_fill_normal() never races to build them */
}

/* One step of xoshiro256** on a state held by the caller, so that loops
 * can keep it in registers. */
static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static uint64_t rng_next(Rng *r) { return xoshiro_next(r->s); }

/* Advances the stream by 2^128 draws: the jump polynomial of xoshiro256. */
static void rng_jump(Rng *r) {
    static const uint64_t jump[4] = {0x180ec6d33cfd0abaULL, 0xd5a61266f0c9392cULL,
                                     0xa9582618e03fc9aaULL, 0x39abdc4529b1661cULL};
    uint64_t t[4] = {0, 0, 0, 0};
    int i, b;
    for (i = 0; i < 4; i++) {
        for (b = 0; b < 64; b++) {
            if (jump[i] & (1ULL << b)) {
                t[0] ^= r->s[0];
                t[1] ^= r->s[1];
                t[2] ^= r->s[2];
                t[3] ^= r->s[3];
            }
            rng_next(r);
        }
    }
    memcpy(r->s, t, sizeof t);
    r->has_spare = 0;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(Rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

/* Uniform integer in [0, n), without modulo bias. */
static uint64_t rng_below(Rng *r, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do x = rng_next(r); while (x >= limit);
    return x % n;
}

/* Standard normal by the Box-Muller transform, for one-off draws such as
 * initial weights and test data, whose seeded values other features and
 * their tests depend on. The SGLD noise comes from rng_fill_normal(). */
static double rng_normal(Rng *r) {
    double u1, u2, radius;
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    do u1 = rng_uniform(r); while (u1 <= 0.0);
    u2 = rng_uniform(r);
    radius = sqrt(-2.0 * log(u1));
    r->spare = radius * sin(2.0 * LLC_PI * u2);
    r->has_spare = 1;
    return radius * cos(2.0 * LLC_PI * u2);
}

/* Standard normals by the ziggurat method (Marsaglia and Tsang, "The
 * Ziggurat Method for Generating Random Variables", J. Stat. Softw. 5(8),
 * 2000) with 256 layers of equal area v under f(x) = exp(-x^2 / 2).
 * Layer i spans [0, zig_x[i]] and lies between heights f(zig_x[i]) and
 * f(zig_x[i + 1]); layer 0 is the base strip, whose tail beyond
 * zig_x[1] = r is sampled exactly. About 99 % of draws take one random
 * number, a multiply and a compare. Box-Muller needs a log, a sine and a
 * cosine per pair, which dominated SGLD steps, as SGLD draws one normal per
 * parameter and step. */
enum { ZIG_LAYERS = 256 };
#define ZIG_R 3.6541528853610088     /* start of the tail */
#define ZIG_V 4.92867323399e-3       /* area of each layer */

static double zig_x[ZIG_LAYERS + 1];   /* layer widths, zig_x[ZIG_LAYERS] = 0 */
static double zig_f[ZIG_LAYERS + 1];   /* f(zig_x[i]) */

static void normal_tables_init(void) {
    int i;
    zig_x[0] = ZIG_V / exp(-0.5 * ZIG_R * ZIG_R);   /* base strip: rectangle plus tail, as one width */
    zig_x[1] = ZIG_R;
    for (i = 1; i < ZIG_LAYERS - 1; i++) {
        /* the layer above i has area v: x[i] (f(x[i+1]) - f(x[i])) = v */
        zig_x[i + 1] = sqrt(-2.0 * log(ZIG_V / zig_x[i] + exp(-0.5 * zig_x[i] * zig_x[i])));
    }
    zig_x[ZIG_LAYERS] = 0.0;
    for (i = 0; i <= ZIG_LAYERS; i++) zig_f[i] = exp(-0.5 * zig_x[i] * zig_x[i]);
}

#if LLC_THREADS
static pthread_once_t normal_tables_once = PTHREAD_ONCE_INIT;
static void normal_tables_ensure(void) { pthread_once(&normal_tables_once, normal_tables_init); }
#else
static void normal_tables_ensure(void) {
    static int done = 0;
    if (!done) normal_tables_init(), done = 1;
}
#endif

static double rng_ziggurat(Rng *r);

/* Finishes a draw that fell outside its layer's inner rectangle: the tail
 * for layer 0, else the wedge test, which on rejection starts over. */
static double normal_outside_rectangle(Rng *r, int layer, double x, double sign) {
    if (layer == 0) {
        /* the tail beyond r, by Marsaglia's exponential rejection */
        double a, b;
        do {
            double u1, u2;
            do u1 = rng_uniform(r); while (u1 <= 0.0);
            do u2 = rng_uniform(r); while (u2 <= 0.0);
            a = -log(u1) / ZIG_R;
            b = -log(u2);
        } while (2.0 * b < a * a);
        return sign * (ZIG_R + a);
    }

    /* the wedge between the inner rectangle and f: accept under f */
    if (zig_f[layer] + rng_uniform(r) * (zig_f[layer + 1] - zig_f[layer]) < exp(-0.5 * x * x))
        return sign * x;
    return rng_ziggurat(r);
}

/* The first step of a draw from 64 random bits: bits 0-7 pick the layer,
 * bit 8 the sign, bits 11-63 the position within the layer's width.
 * Returns 1 when the draw is inside the layer's inner rectangle. */
static int normal_from_bits(uint64_t bits, int *layer, double *x, double *sign) {
    *layer = (int)(bits & (ZIG_LAYERS - 1));
    *sign = (double)(1 - 2 * (int)((bits >> 8) & 1));   /* arithmetic, since a branch here is a coin flip */
    *x = (double)(bits >> 11) * 0x1.0p-53 * zig_x[*layer];
    return *x < zig_x[*layer + 1];
}

/* One ziggurat normal. */
static double rng_ziggurat(Rng *r) {
    int layer;
    double x, sign;
    if (normal_from_bits(rng_next(r), &layer, &x, &sign)) return sign * x;
    return normal_outside_rectangle(r, layer, x, sign);
}

/* Stores n standard normals in out, the same numbers as n calls of
 * rng_ziggurat(). The state lives in a local copy whose address never
 * leaves this function, so compilers keep it in registers. The rare draws
 * outside the inner rectangles finish on a second copy. */
static void rng_fill_normal(Rng *r, real *out, size_t n) {
    Rng local = *r;
    size_t j;
    for (j = 0; j < n; j++) {
        int layer;
        double x, sign;
        if (normal_from_bits(xoshiro_next(local.s), &layer, &x, &sign)) {
            out[j] = (real)(sign * x);
        } else {
            Rng outside = local;
            out[j] = (real)normal_outside_rectangle(&outside, layer, x, sign);
            local = outside;
        }
    }
    *r = local;
}

static void rng_shuffle(Rng *r, int *a, int n) {
    int i;
    for (i = n - 1; i > 0; i--) {
        int j = (int)rng_below(r, (uint64_t)i + 1), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---------------------------------------------------------------------------
 * Matrix multiplication: the three shapes a forward and backward pass need,
 * all row-major and all optionally accumulating into C.
 *   matmul_nn: C[M,N] (+)= A[M,K]   B[K,N]
 *   matmul_nt: C[M,N] (+)= A[M,K]   B[N,K]^T
 *   matmul_tn: C[M,N] (+)= A[K,M]^T B[K,N]
 * All three run one blocked driver, gemm(), over a micro-kernel chosen at
 * compile time: AVX-512 or AVX2 with FMA on x86-64, NEON on arm64 (float32
 * only), or the portable C kernel, which is always built and is the only
 * one with -DLLC_NO_SIMD. The *_ref loops accumulate in double and are the
 * reference that tests compare every kernel with; only the tests build them.
 * ------------------------------------------------------------------------- */

#ifdef LLC_TESTING
static void matmul_nn_ref(real *C, const real *A, const real *B, int M, int K, int N, int acc) {
    int i, j, k;
    for (i = 0; i < M; i++) {
        for (j = 0; j < N; j++) {
            double sum = acc ? C[(size_t)i * N + j] : 0.0;
            for (k = 0; k < K; k++) sum += (double)A[(size_t)i * K + k] * B[(size_t)k * N + j];
            C[(size_t)i * N + j] = (real)sum;
        }
    }
}

static void matmul_nt_ref(real *C, const real *A, const real *B, int M, int K, int N, int acc) {
    int i, j, k;
    for (i = 0; i < M; i++) {
        for (j = 0; j < N; j++) {
            double sum = acc ? C[(size_t)i * N + j] : 0.0;
            for (k = 0; k < K; k++) sum += (double)A[(size_t)i * K + k] * B[(size_t)j * K + k];
            C[(size_t)i * N + j] = (real)sum;
        }
    }
}

static void matmul_tn_ref(real *C, const real *A, const real *B, int M, int K, int N, int acc) {
    int i, j, k;
    for (i = 0; i < M; i++) {
        for (j = 0; j < N; j++) {
            double sum = acc ? C[(size_t)i * N + j] : 0.0;
            for (k = 0; k < K; k++) sum += (double)A[(size_t)k * M + i] * B[(size_t)k * N + j];
            C[(size_t)i * N + j] = (real)sum;
        }
    }
}
#endif

/* A micro-kernel computes an m x n tile of C (m <= MR, n <= NR) from kc steps:
 *   tile[i, j] = sum_k A(i, k) b[k * ldb + j],   A(i, k) = a[i * rs_a + k * cs_a]
 * and stores it into c (row stride ldc), adding to what is there when add
 * is set. b holds NR contiguous values per k, rows of B in place or a
 * packed copy, of which only the first n are read. A is read in place
 * through its two strides, which serve both A and A^T. Kernels never read
 * or write past row m or column n, so edge tiles need no copies. */
typedef void MicroKernelFn(int kc, const real *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const real *b,
                           ptrdiff_t ldb, real *c, ptrdiff_t ldc, int m, int n, int add);

typedef struct {
    const char *name;
    int mr, nr;
    MicroKernelFn *run;
} MatmulKernel;

/* Block sizes: a KC x NC block of op(B) fits in L2 (256 KiB in float32).
 * One KC x NR sliver of it stays in L1 while the kernel runs it against MC
 * rows of A, which stay in L2 for the next sliver. */
enum { MM_KC = 256, MM_NC = 256, MM_MC = 96 };

/* Reals of scratch that gemm() packs B into. */
#define MM_PACK_REALS ((size_t)MM_KC * MM_NC)

/* The offset of row i of an m-row tile of A: rows past m repeat row m - 1,
 * so SIMD kernels compute them from valid memory and then drop them. */
#define MM_ROW(i, m, rs) ((ptrdiff_t)((i) < (m) ? (i) : (m) - 1) * (rs))

/* Plain loops over an m x n tile, for the portable kernel and for the edge
 * tiles of the NEON kernel. */
static void tile_scalar(int kc, const real *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const real *b, ptrdiff_t ldb,
                        real *c, ptrdiff_t ldc, int m, int n, int add) {
    int i, j, k;
    for (i = 0; i < m; i++) {
        for (j = 0; j < n; j++) {
            real sum = 0;
            for (k = 0; k < kc; k++) sum += a[i * rs_a + k * cs_a] * b[k * ldb + j];
            c[i * ldc + j] = add ? c[i * ldc + j] + sum : sum;
        }
    }
}

/* The portable kernel: a 4 x 8 tile kept in a local array that compilers
 * hold in registers and may vectorise. */
enum { PORTABLE_MR = 4, PORTABLE_NR = 8 };

static void kernel_portable(int kc, const real *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const real *b,
                            ptrdiff_t ldb, real *c, ptrdiff_t ldc, int m, int n, int add) {
    real tile[PORTABLE_MR][PORTABLE_NR];
    int i, j, k;
    if (m < PORTABLE_MR || n < PORTABLE_NR) {
        tile_scalar(kc, a, rs_a, cs_a, b, ldb, c, ldc, m, n, add);
        return;
    }
    memset(tile, 0, sizeof tile);
    for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
        for (i = 0; i < PORTABLE_MR; i++) {
            const real aik = a[i * rs_a];
            for (j = 0; j < PORTABLE_NR; j++) tile[i][j] += aik * b[j];
        }
    }
    for (i = 0; i < PORTABLE_MR; i++, c += ldc)
        for (j = 0; j < PORTABLE_NR; j++) c[j] = add ? c[j] + tile[i][j] : tile[i][j];
}

static const MatmulKernel matmul_portable = {"portable", PORTABLE_MR, PORTABLE_NR, kernel_portable};

#if !defined(LLC_NO_SIMD) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LLC_SIMD 1

#ifndef LLC_DOUBLE
/* 6 x 16 float32 tile: 12 ymm accumulators, two ymm of B and one broadcast
 * of A per row and step, so both FMA ports stay busy. Columns past n are
 * masked off in loads and stores. */
static void kernel_avx2(int kc, const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const float *b,
                        ptrdiff_t ldb, float *c, ptrdiff_t ldc, int m, int n, int add) {
    const ptrdiff_t r1 = MM_ROW(1, m, rs_a), r2 = MM_ROW(2, m, rs_a), r3 = MM_ROW(3, m, rs_a);
    const ptrdiff_t r4 = MM_ROW(4, m, rs_a), r5 = MM_ROW(5, m, rs_a);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
    const __m256i mask_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8), lanes);
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m256 b0, b1, ai;
    int k;

#define FMA_ROWS()                                                                                 \
    do {                                                                                           \
        ai = _mm256_broadcast_ss(a);                                                               \
        c00 = _mm256_fmadd_ps(ai, b0, c00), c01 = _mm256_fmadd_ps(ai, b1, c01);                    \
        ai = _mm256_broadcast_ss(a + r1);                                                          \
        c10 = _mm256_fmadd_ps(ai, b0, c10), c11 = _mm256_fmadd_ps(ai, b1, c11);                    \
        ai = _mm256_broadcast_ss(a + r2);                                                          \
        c20 = _mm256_fmadd_ps(ai, b0, c20), c21 = _mm256_fmadd_ps(ai, b1, c21);                    \
        ai = _mm256_broadcast_ss(a + r3);                                                          \
        c30 = _mm256_fmadd_ps(ai, b0, c30), c31 = _mm256_fmadd_ps(ai, b1, c31);                    \
        ai = _mm256_broadcast_ss(a + r4);                                                          \
        c40 = _mm256_fmadd_ps(ai, b0, c40), c41 = _mm256_fmadd_ps(ai, b1, c41);                    \
        ai = _mm256_broadcast_ss(a + r5);                                                          \
        c50 = _mm256_fmadd_ps(ai, b0, c50), c51 = _mm256_fmadd_ps(ai, b1, c51);                    \
    } while (0)

    if (n == 16) {
        for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
            b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
            FMA_ROWS();
        }
    } else {
        for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
            b0 = _mm256_maskload_ps(b, mask_lo), b1 = _mm256_maskload_ps(b + 8, mask_hi);
            FMA_ROWS();
        }
    }
#undef FMA_ROWS

#define STORE_ROW(row, lo, hi)                                                                     \
    do {                                                                                           \
        float *cr = c + (row) * ldc;                                                               \
        if ((row) >= m) break;                                                                     \
        if (add) {                                                                                 \
            lo = _mm256_add_ps(lo, _mm256_maskload_ps(cr, mask_lo));                               \
            hi = _mm256_add_ps(hi, _mm256_maskload_ps(cr + 8, mask_hi));                           \
        }                                                                                          \
        if (n == 16) {                                                                             \
            _mm256_storeu_ps(cr, lo);                                                              \
            _mm256_storeu_ps(cr + 8, hi);                                                          \
        } else {                                                                                   \
            _mm256_maskstore_ps(cr, mask_lo, lo);                                                  \
            _mm256_maskstore_ps(cr + 8, mask_hi, hi);                                              \
        }                                                                                          \
    } while (0)
    STORE_ROW(0, c00, c01);
    STORE_ROW(1, c10, c11);
    STORE_ROW(2, c20, c21);
    STORE_ROW(3, c30, c31);
    STORE_ROW(4, c40, c41);
    STORE_ROW(5, c50, c51);
#undef STORE_ROW
}

static const MatmulKernel matmul_simd = {"AVX2+FMA 6x16 float32", 6, 16, kernel_avx2};
#else
/* 6 x 8 float64 tile, the same register plan with 4 doubles per ymm. */
static void kernel_avx2(int kc, const double *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const double *b,
                        ptrdiff_t ldb, double *c, ptrdiff_t ldc, int m, int n, int add) {
    const ptrdiff_t r1 = MM_ROW(1, m, rs_a), r2 = MM_ROW(2, m, rs_a), r3 = MM_ROW(3, m, rs_a);
    const ptrdiff_t r4 = MM_ROW(4, m, rs_a), r5 = MM_ROW(5, m, rs_a);
    const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i mask_lo = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), lanes);
    const __m256i mask_hi = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - 4), lanes);
    __m256d c00 = _mm256_setzero_pd(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256d c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    __m256d b0, b1, ai;
    int k;

#define FMA_ROWS()                                                                                 \
    do {                                                                                           \
        ai = _mm256_broadcast_sd(a);                                                               \
        c00 = _mm256_fmadd_pd(ai, b0, c00), c01 = _mm256_fmadd_pd(ai, b1, c01);                    \
        ai = _mm256_broadcast_sd(a + r1);                                                          \
        c10 = _mm256_fmadd_pd(ai, b0, c10), c11 = _mm256_fmadd_pd(ai, b1, c11);                    \
        ai = _mm256_broadcast_sd(a + r2);                                                          \
        c20 = _mm256_fmadd_pd(ai, b0, c20), c21 = _mm256_fmadd_pd(ai, b1, c21);                    \
        ai = _mm256_broadcast_sd(a + r3);                                                          \
        c30 = _mm256_fmadd_pd(ai, b0, c30), c31 = _mm256_fmadd_pd(ai, b1, c31);                    \
        ai = _mm256_broadcast_sd(a + r4);                                                          \
        c40 = _mm256_fmadd_pd(ai, b0, c40), c41 = _mm256_fmadd_pd(ai, b1, c41);                    \
        ai = _mm256_broadcast_sd(a + r5);                                                          \
        c50 = _mm256_fmadd_pd(ai, b0, c50), c51 = _mm256_fmadd_pd(ai, b1, c51);                    \
    } while (0)

    if (n == 8) {
        for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
            b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
            FMA_ROWS();
        }
    } else {
        for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
            b0 = _mm256_maskload_pd(b, mask_lo), b1 = _mm256_maskload_pd(b + 4, mask_hi);
            FMA_ROWS();
        }
    }
#undef FMA_ROWS

#define STORE_ROW(row, lo, hi)                                                                     \
    do {                                                                                           \
        double *cr = c + (row) * ldc;                                                              \
        if ((row) >= m) break;                                                                     \
        if (add) {                                                                                 \
            lo = _mm256_add_pd(lo, _mm256_maskload_pd(cr, mask_lo));                               \
            hi = _mm256_add_pd(hi, _mm256_maskload_pd(cr + 4, mask_hi));                           \
        }                                                                                          \
        if (n == 8) {                                                                              \
            _mm256_storeu_pd(cr, lo);                                                              \
            _mm256_storeu_pd(cr + 4, hi);                                                          \
        } else {                                                                                   \
            _mm256_maskstore_pd(cr, mask_lo, lo);                                                  \
            _mm256_maskstore_pd(cr + 4, mask_hi, hi);                                              \
        }                                                                                          \
    } while (0)
    STORE_ROW(0, c00, c01);
    STORE_ROW(1, c10, c11);
    STORE_ROW(2, c20, c21);
    STORE_ROW(3, c30, c31);
    STORE_ROW(4, c40, c41);
    STORE_ROW(5, c50, c51);
#undef STORE_ROW
}

static const MatmulKernel matmul_simd = {"AVX2+FMA 6x8 float64", 6, 8, kernel_avx2};
#endif

#if !defined(LLC_NO_SIMD) && defined(__AVX512F__)
/* AVX-512: a 12 x 16 float32 tile (12 x 8 in float64) in 12 zmm
 * accumulators, one zmm of B and one broadcast of A per row and step.
 * Columns past n are masked off, rows past m repeat row m - 1. */
#ifndef LLC_DOUBLE
#define AVX512_LANES 16
#define AVX512_VEC __m512
#define AVX512_SET1 _mm512_set1_ps
#define AVX512_ZERO _mm512_setzero_ps
#define AVX512_FMADD _mm512_fmadd_ps
#define AVX512_ADD _mm512_add_ps
#define AVX512_MASKZ_LOAD _mm512_maskz_loadu_ps
#define AVX512_MASK_STORE _mm512_mask_storeu_ps
#else
#define AVX512_LANES 8
#define AVX512_VEC __m512d
#define AVX512_SET1 _mm512_set1_pd
#define AVX512_ZERO _mm512_setzero_pd
#define AVX512_FMADD _mm512_fmadd_pd
#define AVX512_ADD _mm512_add_pd
#define AVX512_MASKZ_LOAD _mm512_maskz_loadu_pd
#define AVX512_MASK_STORE _mm512_mask_storeu_pd
#endif

static void kernel_avx512(int kc, const real *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const real *b,
                          ptrdiff_t ldb, real *c, ptrdiff_t ldc, int m, int n, int add) {
    const ptrdiff_t r1 = MM_ROW(1, m, rs_a), r2 = MM_ROW(2, m, rs_a), r3 = MM_ROW(3, m, rs_a);
    const ptrdiff_t r4 = MM_ROW(4, m, rs_a), r5 = MM_ROW(5, m, rs_a), r6 = MM_ROW(6, m, rs_a);
    const ptrdiff_t r7 = MM_ROW(7, m, rs_a), r8 = MM_ROW(8, m, rs_a), r9 = MM_ROW(9, m, rs_a);
    const ptrdiff_t r10 = MM_ROW(10, m, rs_a), r11 = MM_ROW(11, m, rs_a);
    const __mmask16 mask = (__mmask16)((1u << n) - 1);
    AVX512_VEC c0 = AVX512_ZERO(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
    AVX512_VEC c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    int k;
    for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
        const AVX512_VEC b0 = AVX512_MASKZ_LOAD(mask, b);
        c0 = AVX512_FMADD(AVX512_SET1(a[0]), b0, c0);
        c1 = AVX512_FMADD(AVX512_SET1(a[r1]), b0, c1);
        c2 = AVX512_FMADD(AVX512_SET1(a[r2]), b0, c2);
        c3 = AVX512_FMADD(AVX512_SET1(a[r3]), b0, c3);
        c4 = AVX512_FMADD(AVX512_SET1(a[r4]), b0, c4);
        c5 = AVX512_FMADD(AVX512_SET1(a[r5]), b0, c5);
        c6 = AVX512_FMADD(AVX512_SET1(a[r6]), b0, c6);
        c7 = AVX512_FMADD(AVX512_SET1(a[r7]), b0, c7);
        c8 = AVX512_FMADD(AVX512_SET1(a[r8]), b0, c8);
        c9 = AVX512_FMADD(AVX512_SET1(a[r9]), b0, c9);
        c10 = AVX512_FMADD(AVX512_SET1(a[r10]), b0, c10);
        c11 = AVX512_FMADD(AVX512_SET1(a[r11]), b0, c11);
    }

#define STORE_ROW(row, acc)                                                                        \
    do {                                                                                           \
        real *cr = c + (row) * ldc;                                                                \
        if ((row) >= m) break;                                                                     \
        if (add) acc = AVX512_ADD(acc, AVX512_MASKZ_LOAD(mask, cr));                               \
        AVX512_MASK_STORE(cr, mask, acc);                                                          \
    } while (0)
    STORE_ROW(0, c0);
    STORE_ROW(1, c1);
    STORE_ROW(2, c2);
    STORE_ROW(3, c3);
    STORE_ROW(4, c4);
    STORE_ROW(5, c5);
    STORE_ROW(6, c6);
    STORE_ROW(7, c7);
    STORE_ROW(8, c8);
    STORE_ROW(9, c9);
    STORE_ROW(10, c10);
    STORE_ROW(11, c11);
#undef STORE_ROW
}

#ifndef LLC_DOUBLE
static const MatmulKernel matmul_avx512 = {"AVX-512 12x16 float32", 12, 16, kernel_avx512};
#else
static const MatmulKernel matmul_avx512 = {"AVX-512 12x8 float64", 12, 8, kernel_avx512};
#endif
#endif

#elif !defined(LLC_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON) && !defined(LLC_DOUBLE)
#include <arm_neon.h>
#define LLC_SIMD 1

/* 8 x 8 float32 tile: 16 of NEON's 32 q registers accumulate, two hold B.
 * Edge tiles take the scalar loops. */
static void kernel_neon(int kc, const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a, const float *b,
                        ptrdiff_t ldb, float *c, ptrdiff_t ldc, int m, int n, int add) {
    float32x4_t acc[8][2];
    int i, k;
    if (m < 8 || n < 8) {
        tile_scalar(kc, a, rs_a, cs_a, b, ldb, c, ldc, m, n, add);
        return;
    }
    for (i = 0; i < 8; i++) acc[i][0] = acc[i][1] = vdupq_n_f32(0.0f);
    for (k = 0; k < kc; k++, a += cs_a, b += ldb) {
        const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
        for (i = 0; i < 8; i++) {
            const float32x4_t ai = vdupq_n_f32(a[i * rs_a]);
            acc[i][0] = vfmaq_f32(acc[i][0], ai, b0);
            acc[i][1] = vfmaq_f32(acc[i][1], ai, b1);
        }
    }
    for (i = 0; i < 8; i++, c += ldc) {
        if (add) {
            acc[i][0] = vaddq_f32(acc[i][0], vld1q_f32(c));
            acc[i][1] = vaddq_f32(acc[i][1], vld1q_f32(c + 4));
        }
        vst1q_f32(c, acc[i][0]);
        vst1q_f32(c + 4, acc[i][1]);
    }
}

static const MatmulKernel matmul_simd = {"NEON 8x8 float32", 8, 8, kernel_neon};
#endif

#ifndef LLC_SIMD
#define LLC_SIMD 0
#endif

/* Every kernel compiled in, narrowest first. matmul_nn, matmul_nt and
 * matmul_tn use the last, the widest that the compiler targets. */
static const MatmulKernel *const matmul_kernels[] = {
    &matmul_portable,
#if LLC_SIMD
    &matmul_simd,
#endif
#ifdef AVX512_LANES
    &matmul_avx512,
#endif
};

#define MATMUL_N_KERNELS ((int)(sizeof matmul_kernels / sizeof matmul_kernels[0]))
#define matmul_kernel (matmul_kernels[MATMUL_N_KERNELS - 1])

/* Packs kc rows of op(B), `width` columns from B on, into an NR-wide sliver
 * (NR values per row), zero padded past width. */
static void pack_b_sliver(real *bp, const real *B, ptrdiff_t rs_b, ptrdiff_t cs_b, int kc, int width,
                          int NR) {
    int k, j;
    for (k = 0; k < kc; k++, bp += NR) {
        const real *row = B + k * rs_b;
        for (j = 0; j < width; j++) bp[j] = row[j * cs_b];
        for (j = width; j < NR; j++) bp[j] = 0;
    }
}

/* C[M,N] (+)= op(A) op(B) with op(A)(i, k) = A[i * rs_a + k * cs_a] and
 * op(B)(k, j) = B[k * rs_b + j * cs_b]; C has row stride ldc. pack is
 * scratch of MM_PACK_REALS reals. When rows of op(B) are contiguous
 * (cs_b == 1) the kernel reads B in place; otherwise each KC x NC block of
 * op(B) is packed into slivers first. */
static void gemm(const MatmulKernel *kern, real *pack, int M, int N, int K, const real *A,
                 ptrdiff_t rs_a, ptrdiff_t cs_a, const real *B, ptrdiff_t rs_b, ptrdiff_t cs_b, real *C,
                 ptrdiff_t ldc, int acc) {
    const int MR = kern->mr, NR = kern->nr, in_place = cs_b == 1;
    int i0, j0, k0, i, j;

    if (K == 0) {
        if (!acc)
            for (i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(real));
        return;
    }
    for (j0 = 0; j0 < N; j0 += MM_NC) {
        int nc = N - j0 < MM_NC ? N - j0 : MM_NC;
        for (k0 = 0; k0 < K; k0 += MM_KC) {
            int kc = K - k0 < MM_KC ? K - k0 : MM_KC;
            int add = acc || k0 > 0;   /* later K blocks add to the earlier ones */
            const real *Bk = B + k0 * rs_b + j0 * cs_b;

            if (!in_place) {
                for (j = 0; j < nc; j += NR) {
                    int width = nc - j < NR ? nc - j : NR;
                    pack_b_sliver(pack + (size_t)(j / NR) * kc * NR, Bk + j * cs_b, rs_b, cs_b, kc, width, NR);
                }
            }

            for (i0 = 0; i0 < M; i0 += MM_MC) {
                int mc = M - i0 < MM_MC ? M - i0 : MM_MC;
                for (j = 0; j < nc; j += NR) {
                    int n = nc - j < NR ? nc - j : NR;
                    const real *b = in_place ? Bk + j : pack + (size_t)(j / NR) * kc * NR;
                    ptrdiff_t ldb = in_place ? rs_b : NR;
                    for (i = 0; i < mc; i += MR) {
                        int m = mc - i < MR ? mc - i : MR;
                        kern->run(kc, A + (i0 + i) * rs_a + k0 * cs_a, rs_a, cs_a, b, ldb,
                                  C + (i0 + i) * ldc + j0 + j, ldc, m, n, add);
                    }
                }
            }
        }
    }
}

static void matmul_nn(real *pack, real *C, const real *A, const real *B, int M, int K, int N, int acc) {
    gemm(matmul_kernel, pack, M, N, K, A, K, 1, B, N, 1, C, N, acc);
}

static void matmul_nt(real *pack, real *C, const real *A, const real *B, int M, int K, int N, int acc) {
    gemm(matmul_kernel, pack, M, N, K, A, K, 1, B, 1, K, C, N, acc);
}

static void matmul_tn(real *pack, real *C, const real *A, const real *B, int M, int K, int N, int acc) {
    gemm(matmul_kernel, pack, M, N, K, A, 1, M, B, N, 1, C, N, acc);
}

/* C[i, :] += bias for every row i: the product of a column of ones
 * (stride 0) and the bias row, so that it runs on the SIMD kernel. */
static void add_bias(real *pack, real *C, const real *bias, int M, int N) {
    static const real one = 1;
    gemm(matmul_kernel, pack, M, N, 1, &one, 0, 0, bias, N, 1, C, N, 1);
}

/* dbias[j] += sum over rows of dC[i, j]: a row of ones times dC. */
static void add_bias_grad(real *pack, real *dbias, const real *dC, int M, int N) {
    static const real one = 1;
    gemm(matmul_kernel, pack, 1, N, M, &one, 0, 0, dC, N, 1, dbias, N, 1);
}

/* ---------------------------------------------------------------------------
 * Weight file (LLCW, documented in llc.h). Every file is untrusted: each
 * count, dimension, string length, offset and value is checked before use,
 * with overflow-safe size arithmetic, and a rejection names the file and
 * the field.
 * ------------------------------------------------------------------------- */

enum { LLCW_MAX_LAYERS = 1024, LLCW_MAX_HEADS = 1024, LLCW_MAX_DIM = 1 << 24,
       LLCW_MAX_META = 1024 };

/* The maximum number of values (trainable and fixed) in a model: 2^34, or
 * 64 GiB in float32. A sparse tensor describes any number of zeros in 4
 * bytes, so this limit, not the file size, bounds the arena that a file can
 * make llc allocate. The fuzz harness lowers it to stay within its memory
 * limit. */
#define LLCW_MAX_VALUES (1ULL << 34)
static unsigned long long g_max_model_values = LLCW_MAX_VALUES;

/* Per layer, in canonical order: query, key, value, output projection, MLP. */
enum { T_WQ, T_BQ, T_WK, T_BK, T_WV, T_BV, T_WO, T_BO, T_W1, T_B1, T_W2, T_B2, N_LAYER_TENSORS };

static const char *const layer_tensor_suffix[N_LAYER_TENSORS] = {
    "attn/query/w",   "attn/query/b", "attn/key/w",     "attn/key/b",
    "attn/value/w",   "attn/value/b", "attn/linear/w",  "attn/linear/b",
    "mlp/linear_1/w", "mlp/linear_1/b", "mlp/linear_2/w", "mlp/linear_2/b"};

/* Canonical order: token_embed, pos_embed, the layers, unembed/w, unembed/b. */
static int model_tensor_count(int n_layers) { return 4 + N_LAYER_TENSORS * n_layers; }

/* Stores the name and shape of canonical tensor k; 1-D tensors get rows = 1. */
static void model_tensor_shape(const ModelConfig *c, int k, char *name, size_t name_size,
                               int *rows, int *cols) {
    int hk = c->n_heads * c->d_head, last = 2 + N_LAYER_TENSORS * c->n_layers;
    if (k == 0) {
        snprintf(name, name_size, "token_embed/embeddings");
        *rows = c->n_vocab, *cols = c->d_model;
    } else if (k == 1) {
        snprintf(name, name_size, "pos_embed/embeddings");
        *rows = c->max_seq_len + 1, *cols = c->d_model;
    } else if (k == last) {
        snprintf(name, name_size, "unembed/w");
        *rows = c->d_model, *cols = c->n_outputs;
    } else if (k == last + 1) {
        snprintf(name, name_size, "unembed/b");
        *rows = 1, *cols = c->n_outputs;
    } else {
        int layer = (k - 2) / N_LAYER_TENSORS, t = (k - 2) % N_LAYER_TENSORS;
        static const int is_bias[N_LAYER_TENSORS] = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
        snprintf(name, name_size, "transformer/layer_%d/%s", layer, layer_tensor_suffix[t]);
        switch (t) {
        case T_WQ: case T_WK: case T_WV: *rows = c->d_model, *cols = hk; break;
        case T_BQ: case T_BK: case T_BV: *cols = hk; break;
        case T_WO: *rows = hk, *cols = c->d_model; break;
        case T_W1: *rows = c->d_model, *cols = c->d_mlp; break;
        case T_B1: *cols = c->d_mlp; break;
        case T_W2: *rows = c->d_mlp, *cols = c->d_model; break;
        default: *cols = c->d_model; break;   /* T_BO, T_B2 */
        }
        if (is_bias[t]) *rows = 1;
    }
}

/* Returns 1 for the 1-D tensors (the biases), 0 for the matrices. A matrix
 * can have one row (d_model 1), so the shape alone does not tell. */
static int model_tensor_is_bias(const ModelConfig *c, int k) {
    int last = 2 + N_LAYER_TENSORS * c->n_layers;
    if (k < 2 || k == last) return 0;
    if (k == last + 1) return 1;
    return (k - 2) % N_LAYER_TENSORS % 2 == 1;   /* the layer's w, b pairs alternate */
}

/* Returns the canonical index of a tensor name, or -1. */
static int model_tensor_index(const ModelConfig *c, const char *name) {
    static const char prefix[] = "transformer/layer_";
    if (!strcmp(name, "token_embed/embeddings")) return 0;
    if (!strcmp(name, "pos_embed/embeddings")) return 1;
    if (!strcmp(name, "unembed/w")) return 2 + N_LAYER_TENSORS * c->n_layers;
    if (!strcmp(name, "unembed/b")) return 3 + N_LAYER_TENSORS * c->n_layers;
    if (!strncmp(name, prefix, sizeof prefix - 1)) {
        const char *p = name + sizeof prefix - 1;
        long layer = 0;
        int t, digits = 0;
        while (isdigit((unsigned char)*p) && digits < 6) layer = layer * 10 + (*p++ - '0'), digits++;
        if (digits == 0 || *p != '/' || (digits > 1 && p[-digits] == '0')) return -1;
        if (layer >= c->n_layers) return -1;
        for (t = 0; t < N_LAYER_TENSORS; t++)
            if (!strcmp(p + 1, layer_tensor_suffix[t])) return 2 + N_LAYER_TENSORS * (int)layer + t;
    }
    return -1;
}

/* Points w's named fields at the tensors: trainable ones in params, fixed
 * ones in fixed. The same layout serves weights, gradients and chains. */
static void weights_bind(const Model *m, real *params, real *fixed, Weights *w) {
    int k;
    for (k = 0; k < m->n_tensors; k++) {
        const TensorInfo *t = &m->tensors[k];
        real *p = (t->trainable ? params : fixed) + t->offset;
        int last = 2 + N_LAYER_TENSORS * m->cfg.n_layers;
        if (k == 0) w->token_embed = p;
        else if (k == 1) w->pos_embed = p;
        else if (k == last) w->unembed_w = p;
        else if (k == last + 1) w->unembed_b = p;
        else {
            LayerWeights *lw = &w->layer[(k - 2) / N_LAYER_TENSORS];
            real **slot[N_LAYER_TENSORS] = {&lw->wq, &lw->bq, &lw->wk, &lw->bk, &lw->wv, &lw->bv,
                                            &lw->wo, &lw->bo, &lw->w1, &lw->b1, &lw->w2, &lw->b2};
            *slot[(k - 2) % N_LAYER_TENSORS] = p;
        }
    }
}

static void weights_alloc(const Model *m, Weights *w) {
    memset(w, 0, sizeof *w);
    w->layer = xcalloc((size_t)m->cfg.n_layers, sizeof(LayerWeights), "layer weights");
}

/* Lays out the tensors of m->cfg with the given trainable flags (canonical
 * order), allocates the zeroed arena and binds m->w. Returns 0, or -1 when
 * the arena cannot be allocated. */
static int model_layout_try(Model *m, const int *trainable) {
    int k;
    size_t total;
    m->n_tensors = model_tensor_count(m->cfg.n_layers);
    m->tensors = xcalloc((size_t)m->n_tensors, sizeof(TensorInfo), "the tensor table");
    m->n_params = m->n_fixed = 0;
    for (k = 0; k < m->n_tensors; k++) {
        TensorInfo *t = &m->tensors[k];
        model_tensor_shape(&m->cfg, k, t->name, sizeof t->name, &t->rows, &t->cols);
        t->numel = (size_t)t->rows * (size_t)t->cols;
        t->trainable = trainable[k];
        t->offset = t->trainable ? m->n_params : m->n_fixed;
        if (t->trainable) m->n_params += t->numel;
        else m->n_fixed += t->numel;
    }
    total = m->n_params + m->n_fixed;
    if (total > SIZE_MAX / sizeof(real) / 2) return -1;
    m->params = calloc(total ? total : 1, sizeof(real));
    if (!m->params) return -1;
    m->fixed = m->params + m->n_params;
    weights_alloc(m, &m->w);
    weights_bind(m, m->params, m->fixed, &m->w);
    return 0;
}

static void model_layout(Model *m, const int *trainable) {
    if (model_layout_try(m, trainable) != 0)
        die("out of memory allocating the %zu values of a model", m->n_params + m->n_fixed);
}

void model_free(Model *m) {
    int i;
    if (m->vocab)
        for (i = 0; i < m->cfg.n_vocab; i++) free(m->vocab[i]);
    if (m->output_values)
        for (i = 0; i < m->cfg.n_outputs; i++) free(m->output_values[i]);
    if (m->residual_labels)
        for (i = 0; i < m->cfg.d_model; i++) free(m->residual_labels[i]);
    for (i = 0; i < m->n_meta; i++) {
        if (m->meta_keys) free(m->meta_keys[i]);
        if (m->meta_values) free(m->meta_values[i]);
    }
    free(m->vocab);
    free(m->output_values);
    free(m->output_dims);
    free(m->residual_labels);
    free(m->meta_keys);
    free(m->meta_values);
    free(m->tensors);
    free(m->params);
    free(m->w.layer);
    memset(m, 0, sizeof *m);
}

const char *model_meta(const Model *m, const char *key) {
    int i;
    for (i = 0; i < m->n_meta; i++)
        if (!strcmp(m->meta_keys[i], key)) return m->meta_values[i];
    return NULL;
}

static void model_set_meta(Model *m, const char *key, const char *value) {
    int i;
    for (i = 0; i < m->n_meta; i++) {
        if (!strcmp(m->meta_keys[i], key)) {
            free(m->meta_values[i]);
            m->meta_values[i] = xstrdup(value);
            return;
        }
    }
    m->meta_keys = realloc(m->meta_keys, (size_t)(m->n_meta + 1) * sizeof(char *));
    m->meta_values = realloc(m->meta_values, (size_t)(m->n_meta + 1) * sizeof(char *));
    if (!m->meta_keys || !m->meta_values) die("out of memory for model metadata");
    m->meta_keys[m->n_meta] = xstrdup(key);
    m->meta_values[m->n_meta] = xstrdup(value);
    m->n_meta++;
}

size_t model_count_nonzero(const Model *m) {
    size_t i, n = 0;
    for (i = 0; i < m->n_params; i++) n += m->params[i] != 0;
    return n;
}

/* Bounds-checked reading of a file whose size is known. */
typedef struct {
    FILE *f;
    const char *path;
    uint64_t pos, size;   /* pos <= size always */
    int failed;
} Reader;

static int reader_fail(Reader *r, const char *fmt, ...) {
    va_list ap;
    if (r->failed) return -1;
    r->failed = 1;
    fprintf(stderr, "%s: %s: ", g_program, r->path);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return -1;
}

static uint64_t reader_left(const Reader *r) { return r->size - r->pos; }

static int read_bytes(Reader *r, void *dst, size_t n, const char *what) {
    if (r->failed) return -1;
    if (n > reader_left(r))
        return reader_fail(r, "file ends at byte %llu while reading %s; the file is truncated",
                           (unsigned long long)r->size, what);
    if (n && fread(dst, 1, n, r->f) != n)
        return reader_fail(r, "read error at byte %llu (%s)", (unsigned long long)r->pos, what);
    r->pos += n;
    return 0;
}

static uint32_t le32(const unsigned char *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int read_u32(Reader *r, uint32_t *v, const char *what) {
    unsigned char b[4];
    if (read_bytes(r, b, 4, what)) return -1;
    *v = le32(b);
    return 0;
}

static int read_u64(Reader *r, uint64_t *v, const char *what) {
    unsigned char b[8];
    if (read_bytes(r, b, 8, what)) return -1;
    *v = (uint64_t)le32(b) | (uint64_t)le32(b + 4) << 32;
    return 0;
}

/* Reads a u32 that must lie in [lo, hi]. */
static int read_count(Reader *r, int *v, uint32_t lo, uint32_t hi, const char *what) {
    uint32_t u;
    if (read_u32(r, &u, what)) return -1;
    if (u < lo || u > hi)
        return reader_fail(r, "%s is %lu; it must be in [%lu, %lu]", what, (unsigned long)u,
                           (unsigned long)lo, (unsigned long)hi);
    *v = (int)u;
    return 0;
}

/* Checks that s[0..n) is UTF-8 as RFC 3629 defines it (no overlong forms, no
 * surrogates, nothing above U+10FFFF) and contains no control character (C0,
 * DEL or C1), so that printing it cannot drive a terminal. Tab, newline and
 * carriage return pass when allow_layout is set. */
static int check_text(Reader *r, const unsigned char *s, size_t n, int allow_layout, const char *what) {
    size_t i = 0, len, k;
    while (i < n) {
        unsigned c = s[i];
        uint32_t cp;
        if (c < 0x80) len = 1, cp = c;
        else if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
        else return reader_fail(r, "%s is not valid UTF-8 (byte 0x%02x at offset %zu)", what, c, i);
        if (len > n - i) return reader_fail(r, "%s is not valid UTF-8 (it ends inside a character)", what);
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return reader_fail(r, "%s is not valid UTF-8 (byte 0x%02x at offset %zu)", what,
                                   (unsigned)s[i + k], i + k);
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return reader_fail(r, "%s is not valid UTF-8 (an overlong or out-of-range character at "
                               "offset %zu)", what, i);
        if ((cp < 0x20 && !(allow_layout && (cp == '\t' || cp == '\n' || cp == '\r'))) ||
            (cp >= 0x7f && cp <= 0x9f))
            return reader_fail(r, "%s contains the control character U+%04lX at offset %zu", what,
                               (unsigned long)cp, i);
        i += len;
    }
    return 0;
}

static int read_string(Reader *r, char **out, int allow_layout, const char *what) {
    uint32_t n;
    char *s;
    *out = NULL;
    if (read_u32(r, &n, what)) return -1;
    if (n > LLCW_MAX_STRING)
        return reader_fail(r, "%s has length %lu; strings are at most %u bytes", what,
                           (unsigned long)n, LLCW_MAX_STRING);
    if (n > reader_left(r))
        return reader_fail(r, "%s of %lu bytes runs past the end of the file", what, (unsigned long)n);
    s = xmalloc((size_t)n + 1, what);
    if (read_bytes(r, s, n, what) || check_text(r, (const unsigned char *)s, n, allow_layout, what)) {
        free(s);
        return -1;
    }
    s[n] = 0;
    *out = s;
    return 0;
}

/* Reads n strings. Each takes at least 4 bytes, so n is checked against the
 * bytes left before the table is allocated: a tiny file cannot make llc
 * allocate a table for millions of strings. */
static int read_strings(Reader *r, char ***out, int n, const char *count_name, const char *what) {
    int i;
    char name[80];
    *out = NULL;
    if ((uint64_t)n > reader_left(r) / 4)
        return reader_fail(r, "%s is %d, but only %llu bytes are left, too few for %d strings; "
                           "the file is truncated or %s is wrong", count_name, n,
                           (unsigned long long)reader_left(r), n, count_name);
    *out = xcalloc((size_t)n, sizeof(char *), what);
    for (i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s %d", what, i);
        if (read_string(r, &(*out)[i], 0, name)) return -1;
    }
    return 0;
}

static int compare_strings(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Returns the index of the first duplicated string, or -1. */
static int find_duplicate(char **s, int n) {
    char **sorted = xmalloc((size_t)(n ? n : 1) * sizeof(char *), "a sort buffer");
    int i, dup = -1;
    memcpy(sorted, s, (size_t)n * sizeof(char *));
    qsort(sorted, (size_t)n, sizeof(char *), compare_strings);
    for (i = 1; i < n && dup < 0; i++) {
        if (!strcmp(sorted[i - 1], sorted[i])) {
            int j;
            for (j = 0; j < n; j++)
                if (!strcmp(s[j], sorted[i])) { dup = j; break; }
        }
    }
    free(sorted);
    return dup;
}

typedef struct {
    int index;          /* canonical tensor index */
    int trainable;
    int sparse;
    uint64_t offset, n_bytes;
} DirEntry;

static float float_from_le(const unsigned char *b) {
    uint32_t u = le32(b);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Reads one tensor's data into dst (numel values, zeroed beforehand). The
 * directory check has put bytes offset .. offset + n_bytes inside the file. */
static int read_tensor_data(Reader *r, const DirEntry *e, const TensorInfo *t, real *dst) {
    enum { CHUNK = 1 << 14 };
    unsigned char buf[4 * CHUNK];
    if (fseeko(r->f, (off_t)e->offset, SEEK_SET) != 0)
        return reader_fail(r, "cannot seek to the data of tensor %s", t->name);
    r->pos = e->offset;
    if (!e->sparse) {
        size_t done = 0;
        if (e->n_bytes != 4 * (uint64_t)t->numel)
            return reader_fail(r, "tensor %s has %llu data bytes; its shape %dx%d needs %llu", t->name,
                               (unsigned long long)e->n_bytes, t->rows, t->cols,
                               (unsigned long long)(4 * (uint64_t)t->numel));
        while (done < t->numel) {
            size_t n = t->numel - done < CHUNK ? t->numel - done : CHUNK, i;
            if (read_bytes(r, buf, 4 * n, t->name)) return -1;
            for (i = 0; i < n; i++) {
                float v = float_from_le(buf + 4 * i);
                if (!isfinite(v))
                    return reader_fail(r, "tensor %s has a non-finite value (%g) at index %zu",
                                       t->name, (double)v, done + i);
                dst[done + i] = (real)v;
            }
            done += n;
        }
    } else {
        uint32_t nnz, *idx, prev = 0;
        size_t i;
        if (e->n_bytes < 4) return reader_fail(r, "sparse tensor %s has no count", t->name);
        if (read_u32(r, &nnz, t->name)) return -1;
        if (nnz > t->numel)
            return reader_fail(r, "sparse tensor %s has %lu entries but only %zu values", t->name,
                               (unsigned long)nnz, t->numel);
        /* n_bytes fits in the file, so this also bounds the allocation below */
        if (e->n_bytes != 4 + 8 * (uint64_t)nnz)
            return reader_fail(r, "sparse tensor %s has %llu data bytes; %lu entries need %llu",
                               t->name, (unsigned long long)e->n_bytes, (unsigned long)nnz,
                               (unsigned long long)(4 + 8 * (uint64_t)nnz));
        idx = xmalloc((size_t)nnz * sizeof(uint32_t), "sparse indices");
        for (i = 0; i < nnz; i++) {
            unsigned char b[4];
            if (read_bytes(r, b, 4, t->name)) { free(idx); return -1; }
            idx[i] = le32(b);
            if (idx[i] >= t->numel) {
                free(idx);
                return reader_fail(r, "sparse tensor %s: index %lu at entry %zu is past the end of its "
                                   "%zu values", t->name, (unsigned long)le32(b), i, t->numel);
            }
            if (i > 0 && idx[i] <= prev) {
                free(idx);
                return reader_fail(r, "sparse tensor %s: index %lu at entry %zu follows index %lu; "
                                   "indices must increase", t->name, (unsigned long)le32(b), i,
                                   (unsigned long)prev);
            }
            prev = idx[i];
        }
        for (i = 0; i < nnz; i++) {
            unsigned char b[4];
            unsigned long at = idx[i];
            float v;
            if (read_bytes(r, b, 4, t->name)) { free(idx); return -1; }
            v = float_from_le(b);
            if (!isfinite(v)) {
                free(idx);
                return reader_fail(r, "tensor %s has a non-finite value (%g) at index %lu", t->name,
                                   (double)v, at);
            }
            dst[at] = (real)v;
        }
        free(idx);
    }
    return 0;
}

/* Reads an LLCW model of size bytes from f, positioned at its first byte;
 * with header_only set, stops before the values and stores only the
 * configuration and the parameter counts. path names the file in messages.
 * Returns 0, or -1 after printing one line naming the file and the problem;
 * m is then empty. */
static int model_read_stream(Model *m, FILE *f, uint64_t size, const char *path, int header_only) {
    Reader r;
    char magic[4];
    uint32_t version, flags, kind;
    int n_output_dims, n_labels, n_tensors, n_meta, i, dup;
    int *trainable = NULL;
    DirEntry *dir = NULL;
    ModelConfig *c = &m->cfg;
    uint64_t n_values = 0;

    memset(m, 0, sizeof *m);
    memset(&r, 0, sizeof r);
    r.f = f;
    r.path = path;
    r.size = size;

    /* Fixed header. */
    if (read_bytes(&r, magic, 4, "the magic number")) goto fail;
    if (memcmp(magic, LLCW_MAGIC, 4) != 0) {
        reader_fail(&r, "not an LLCW weight file (bad magic); convert Tracr models with "
                        "tracr_weights/convert.py or compile them with tracr_weights/compile.py");
        goto fail;
    }
    if (read_u32(&r, &version, "the version")) goto fail;
    if (version != LLCW_VERSION_DENSE && version != LLCW_VERSION_SPARSE) {
        reader_fail(&r, "format version %lu is not supported (this llc reads versions 1 and 2)",
                    (unsigned long)version);
        goto fail;
    }
    if (read_u32(&r, &flags, "flags")) goto fail;
    if (flags & ~1u) {
        reader_fail(&r, "unknown flags 0x%lx (only bit 0, causal, is defined)", (unsigned long)flags);
        goto fail;
    }
    c->causal = (int)(flags & 1u);
    if (read_count(&r, &c->n_layers, 1, LLCW_MAX_LAYERS, "n_layers")) goto fail;
    if (read_count(&r, &c->n_heads, 1, LLCW_MAX_HEADS, "n_heads")) goto fail;
    if (read_count(&r, &c->d_model, 1, LLCW_MAX_DIM, "d_model")) goto fail;
    if (read_count(&r, &c->d_head, 1, LLCW_MAX_DIM, "d_head")) goto fail;
    if (read_count(&r, &c->d_mlp, 1, LLCW_MAX_DIM, "d_mlp")) goto fail;
    if (read_count(&r, &c->max_seq_len, 1, LLCW_MAX_DIM, "max_seq_len")) goto fail;
    if (read_count(&r, &c->n_vocab, 2, LLCW_MAX_DIM, "n_vocab")) goto fail;
    if (read_count(&r, &c->bos_id, 0, (uint32_t)c->n_vocab - 1, "bos_id")) goto fail;
    if (read_count(&r, &c->pad_id, 0, (uint32_t)c->n_vocab - 1, "pad_id")) goto fail;
    if (c->n_vocab == 2 && c->bos_id != c->pad_id) {
        reader_fail(&r, "the vocabulary contains only BOS and PAD; a model needs at least one input token");
        goto fail;
    }
    if (read_u32(&r, &kind, "output_kind")) goto fail;
    if (kind > 1) {
        reader_fail(&r, "output_kind is %lu; it must be 0 (categorical) or 1 (numerical)",
                    (unsigned long)kind);
        goto fail;
    }
    c->output_kind = (int)kind;
    if (read_count(&r, &c->n_outputs, 1, LLCW_MAX_DIM, "n_outputs")) goto fail;
    if (c->output_kind == OUTPUT_NUMERICAL && c->n_outputs != 1) {
        reader_fail(&r, "a numerical output has n_outputs 1, not %d", c->n_outputs);
        goto fail;
    }
    if ((size_t)c->n_heads * (size_t)c->d_head > LLCW_MAX_DIM) {
        reader_fail(&r, "n_heads * d_head = %zu exceeds the limit %d",
                    (size_t)c->n_heads * (size_t)c->d_head, LLCW_MAX_DIM);
        goto fail;
    }
    if (read_count(&r, &n_output_dims, 0, (uint32_t)c->n_outputs, "n_output_dims")) goto fail;
    if (n_output_dims != 0 && n_output_dims != c->n_outputs) {
        reader_fail(&r, "n_output_dims is %d; it must be 0 or n_outputs (%d)", n_output_dims,
                    c->n_outputs);
        goto fail;
    }
    if (read_count(&r, &n_labels, 0, (uint32_t)c->d_model, "n_residual_labels")) goto fail;
    if (n_labels != 0 && n_labels != c->d_model) {
        reader_fail(&r, "n_residual_labels is %d; it must be 0 or d_model (%d)", n_labels, c->d_model);
        goto fail;
    }
    if (read_count(&r, &n_meta, 0, LLCW_MAX_META, "n_meta")) goto fail;
    n_tensors = model_tensor_count(c->n_layers);
    if (read_count(&r, &i, 0, UINT32_MAX >> 1, "n_tensors")) goto fail;
    if (i != n_tensors) {
        reader_fail(&r, "n_tensors is %d; a model with %d layers has %d tensors", i, c->n_layers,
                    n_tensors);
        goto fail;
    }

    /* Strings and output dims. */
    if (read_strings(&r, &m->vocab, c->n_vocab, "n_vocab", "vocab entry")) goto fail;
    if ((dup = find_duplicate(m->vocab, c->n_vocab)) >= 0) {
        reader_fail(&r, "vocab entry %d (\"%s\") appears twice", dup, m->vocab[dup]);
        goto fail;
    }
    if (read_strings(&r, &m->output_values, c->n_outputs, "n_outputs", "output value")) goto fail;
    if ((dup = find_duplicate(m->output_values, c->n_outputs)) >= 0) {
        reader_fail(&r, "output value %d (\"%s\") appears twice", dup, m->output_values[dup]);
        goto fail;
    }
    if (n_output_dims) {
        if ((uint64_t)n_output_dims * 4 > reader_left(&r)) {
            reader_fail(&r, "file ends at byte %llu while reading the output dims; the file is truncated",
                        (unsigned long long)r.size);
            goto fail;
        }
        m->output_dims = xcalloc((size_t)n_output_dims, sizeof(int), "output dims");
        for (i = 0; i < n_output_dims; i++)
            if (read_count(&r, &m->output_dims[i], 0, (uint32_t)c->d_model - 1, "an output dim"))
                goto fail;
    }
    if (n_labels && read_strings(&r, &m->residual_labels, n_labels, "n_residual_labels",
                                 "residual label"))
        goto fail;
    m->meta_keys = xcalloc((size_t)n_meta, sizeof(char *), "metadata");
    m->meta_values = xcalloc((size_t)n_meta, sizeof(char *), "metadata");
    m->n_meta = n_meta;
    for (i = 0; i < n_meta; i++) {
        if (read_string(&r, &m->meta_keys[i], 0, "a metadata key")) goto fail;
        if (read_string(&r, &m->meta_values[i], 1, "a metadata value")) goto fail;
    }

    /* Tensor directory: every canonical tensor exactly once, with its shape. */
    dir = xcalloc((size_t)n_tensors, sizeof(DirEntry), "the tensor directory");
    trainable = xcalloc((size_t)n_tensors, sizeof(int), "the tensor directory");
    for (i = 0; i < n_tensors; i++) dir[i].index = -1;
    for (i = 0; i < n_tensors; i++) {
        char *name = NULL, expect[64];
        int k, rows = 1, cols = 1;
        uint32_t ndim, dims[2] = {0, 0}, flag, enc = 0;
        DirEntry e;
        if (read_string(&r, &name, 0, "a tensor name")) goto fail;
        k = model_tensor_index(c, name);
        if (k < 0) {
            reader_fail(&r, "unexpected tensor \"%s\" (see llc.h for the tensor names)", name);
            free(name);
            goto fail;
        }
        if (dir[k].index >= 0) {
            reader_fail(&r, "tensor %s appears twice", name);
            free(name);
            goto fail;
        }
        free(name);
        model_tensor_shape(c, k, expect, sizeof expect, &rows, &cols);
        if (read_u32(&r, &ndim, "a tensor's ndim")) goto fail;
        if (ndim != 1 && ndim != 2) {
            reader_fail(&r, "tensor %s has %lu dimensions; it must have 1 or 2", expect,
                        (unsigned long)ndim);
            goto fail;
        }
        if (read_u32(&r, &dims[0], "a tensor's shape")) goto fail;
        if (ndim == 2 && read_u32(&r, &dims[1], "a tensor's shape")) goto fail;
        if ((int)ndim != (model_tensor_is_bias(c, k) ? 1 : 2) ||
            (ndim == 1 ? dims[0] != (uint32_t)cols : (dims[0] != (uint32_t)rows || dims[1] != (uint32_t)cols))) {
            char got[48];
            if (ndim == 1) snprintf(got, sizeof got, "[%lu]", (unsigned long)dims[0]);
            else snprintf(got, sizeof got, "[%lu, %lu]", (unsigned long)dims[0], (unsigned long)dims[1]);
            if (model_tensor_is_bias(c, k))
                reader_fail(&r, "tensor %s has shape %s; the config needs [%d]", expect, got, cols);
            else
                reader_fail(&r, "tensor %s has shape %s; the config needs [%d, %d]", expect, got,
                            rows, cols);
            goto fail;
        }
        /* rows and cols are at most 2^24 + 1, so the product fits in 64 bits */
        if ((uint64_t)rows * (uint64_t)cols > UINT32_MAX) {
            reader_fail(&r, "tensor %s has %llu values; the format allows %lu", expect,
                        (unsigned long long)rows * (unsigned long long)cols, (unsigned long)UINT32_MAX);
            goto fail;
        }
        n_values += (uint64_t)rows * (uint64_t)cols;
        if (read_u32(&r, &flag, "a trainable flag")) goto fail;
        if (flag > 1) {
            reader_fail(&r, "tensor %s has trainable flag %lu; it must be 0 or 1", expect,
                        (unsigned long)flag);
            goto fail;
        }
        if (version == LLCW_VERSION_SPARSE && read_u32(&r, &enc, "an encoding")) goto fail;
        if (enc > 1) {
            reader_fail(&r, "tensor %s has encoding %lu; it must be 0 (dense) or 1 (sparse)", expect,
                        (unsigned long)enc);
            goto fail;
        }
        e.index = k;
        e.trainable = (int)flag;
        e.sparse = (int)enc;
        if (read_u64(&r, &e.offset, "a tensor offset")) goto fail;
        if (read_u64(&r, &e.n_bytes, "a tensor size")) goto fail;
        dir[k] = e;
        trainable[k] = e.trainable;
    }
    for (i = 0; i < n_tensors; i++) {
        char name[64];
        int rows, cols;
        if (dir[i].index < 0) {
            model_tensor_shape(c, i, name, sizeof name, &rows, &cols);
            reader_fail(&r, "tensor %s is missing", name);
            goto fail;
        }
        model_tensor_shape(c, i, name, sizeof name, &rows, &cols);
        if (dir[i].offset > r.size || dir[i].n_bytes > r.size - dir[i].offset) {
            reader_fail(&r, "the data of tensor %s (%llu bytes at byte %llu) runs past the end of the "
                        "file (%llu bytes)", name, (unsigned long long)dir[i].n_bytes,
                        (unsigned long long)dir[i].offset, (unsigned long long)r.size);
            goto fail;
        }
        if (dir[i].offset < r.pos) {
            reader_fail(&r, "the data of tensor %s starts at byte %llu, inside the header (which ends "
                        "at byte %llu)", name, (unsigned long long)dir[i].offset,
                        (unsigned long long)r.pos);
            goto fail;
        }
    }

    /* Values. The arena is checked against the limit before it is allocated. */
    if (n_values > g_max_model_values || n_values > SIZE_MAX / sizeof(real) / 2) {
        reader_fail(&r, "the tensors contain %llu values (%.3g GB as %s); llc loads at most %llu",
                    (unsigned long long)n_values, (double)n_values * sizeof(real) / 1e9, LLC_REAL_NAME,
                    g_max_model_values);
        goto fail;
    }
    if (header_only) {
        m->n_params = m->n_fixed = 0;
        for (i = 0; i < n_tensors; i++) {
            char name[64];
            int rows, cols;
            model_tensor_shape(c, i, name, sizeof name, &rows, &cols);
            if (trainable[i]) m->n_params += (size_t)rows * (size_t)cols;
            else m->n_fixed += (size_t)rows * (size_t)cols;
        }
        free(dir);
        free(trainable);
        return 0;
    }
    if (model_layout_try(m, trainable) != 0) {
        reader_fail(&r, "cannot allocate %.3g GB for the %llu values of the model",
                    (double)n_values * sizeof(real) / 1e9, (unsigned long long)n_values);
        goto fail;
    }
    for (i = 0; i < n_tensors; i++) {
        const TensorInfo *t = &m->tensors[i];
        if (read_tensor_data(&r, &dir[i], t, (t->trainable ? m->params : m->fixed) + t->offset))
            goto fail;
    }
    free(dir);
    free(trainable);
    return 0;

fail:
    free(dir);
    free(trainable);
    model_free(m);
    return -1;
}

/* Opens path and reads it with model_read_stream. */
static int model_read(Model *m, const char *path, int header_only) {
    struct stat st;
    FILE *f;
    int fd, rc;

    memset(m, 0, sizeof *m);
    /* O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer */
    fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        fprintf(stderr, "%s: cannot open %s: %s%s\n", g_program, path, strerror(err),
                err == ENOENT ? " (python3 tracr_weights/compile.py PROGRAM --max-seq-len N -o FILE compiles "
                                "a model; --list shows the programs)" : "");
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "%s: %s is not a regular file\n", g_program, path);
        close(fd);
        return -1;
    }
    f = fdopen(fd, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot read %s: %s\n", g_program, path, strerror(errno));
        close(fd);
        return -1;
    }
    rc = model_read_stream(m, f, (uint64_t)st.st_size, path, header_only);
    fclose(f);
    return rc;
}

int model_load(Model *m, const char *path) { return model_read(m, path, 0); }

/* Reads only the header of a weight file: its configuration and its
 * numbers of trainable and fixed values, without allocating them. */
static int model_peek(const char *path, ModelConfig *cfg, size_t *n_params, size_t *n_fixed) {
    Model m;
    if (model_read(&m, path, 1) != 0) return -1;
    *cfg = m.cfg;
    *n_params = m.n_params;
    *n_fixed = m.n_fixed;
    model_free(&m);
    return 0;
}

static void put_u32(FILE *f, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    fwrite(b, 1, 4, f);
}

static void put_u64(FILE *f, uint64_t v) {
    put_u32(f, (uint32_t)v);
    put_u32(f, (uint32_t)(v >> 32));
}

static void put_string(FILE *f, const char *s) {
    size_t n = strlen(s);
    if (n > LLCW_MAX_STRING) n = LLCW_MAX_STRING;
    put_u32(f, (uint32_t)n);
    fwrite(s, 1, n, f);
}

static void put_f32(FILE *f, real v) {
    float x = (float)v;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    put_u32(f, u);
}

static const real *model_tensor_data(const Model *m, int k) {
    const TensorInfo *t = &m->tensors[k];
    return (t->trainable ? m->params : m->fixed) + t->offset;
}

/* Writes m atomically. Tensors whose non-zeros take less room as (index,
 * value) pairs are stored sparse, which makes the file version 2. */
int model_save(const Model *m, const char *path) {
    AtomicFile af;
    const ModelConfig *c = &m->cfg;
    size_t *nnz = xcalloc((size_t)m->n_tensors, sizeof(size_t), "tensor counts");
    int *sparse = xcalloc((size_t)m->n_tensors, sizeof(int), "tensor encodings");
    int k, i, any_sparse = 0;
    uint64_t offset;
    long header_end;

    for (k = 0; k < m->n_tensors; k++) {
        const real *v = model_tensor_data(m, k);
        size_t j;
        for (j = 0; j < m->tensors[k].numel; j++) nnz[k] += (float)v[j] != 0.0f;
        sparse[k] = 4 + 8 * nnz[k] < 4 * m->tensors[k].numel;
        any_sparse |= sparse[k];
    }
    if (atomic_open(&af, path)) {
        free(nnz);
        free(sparse);
        return -1;
    }

    fwrite(LLCW_MAGIC, 1, 4, af.f);
    put_u32(af.f, any_sparse ? LLCW_VERSION_SPARSE : LLCW_VERSION_DENSE);
    put_u32(af.f, c->causal ? 1u : 0u);
    put_u32(af.f, (uint32_t)c->n_layers);
    put_u32(af.f, (uint32_t)c->n_heads);
    put_u32(af.f, (uint32_t)c->d_model);
    put_u32(af.f, (uint32_t)c->d_head);
    put_u32(af.f, (uint32_t)c->d_mlp);
    put_u32(af.f, (uint32_t)c->max_seq_len);
    put_u32(af.f, (uint32_t)c->n_vocab);
    put_u32(af.f, (uint32_t)c->bos_id);
    put_u32(af.f, (uint32_t)c->pad_id);
    put_u32(af.f, (uint32_t)c->output_kind);
    put_u32(af.f, (uint32_t)c->n_outputs);
    put_u32(af.f, m->output_dims ? (uint32_t)c->n_outputs : 0u);
    put_u32(af.f, m->residual_labels ? (uint32_t)c->d_model : 0u);
    put_u32(af.f, (uint32_t)m->n_meta);
    put_u32(af.f, (uint32_t)m->n_tensors);
    for (i = 0; i < c->n_vocab; i++) put_string(af.f, m->vocab[i]);
    for (i = 0; i < c->n_outputs; i++) put_string(af.f, m->output_values[i]);
    if (m->output_dims)
        for (i = 0; i < c->n_outputs; i++) put_u32(af.f, (uint32_t)m->output_dims[i]);
    if (m->residual_labels)
        for (i = 0; i < c->d_model; i++) put_string(af.f, m->residual_labels[i]);
    for (i = 0; i < m->n_meta; i++) {
        put_string(af.f, m->meta_keys[i]);
        put_string(af.f, m->meta_values[i]);
    }

    /* The directory's size is known, so data offsets follow from it. */
    header_end = ftell(af.f);
    for (k = 0; k < m->n_tensors; k++) {
        const TensorInfo *t = &m->tensors[k];
        header_end += 4 + (long)strlen(t->name) + 4 + (model_tensor_is_bias(c, k) ? 4 : 8) + 4 + 16;
        header_end += any_sparse ? 4 : 0;
    }
    offset = (uint64_t)header_end;
    for (k = 0; k < m->n_tensors; k++) {
        const TensorInfo *t = &m->tensors[k];
        uint64_t n_bytes = sparse[k] ? 4 + 8 * (uint64_t)nnz[k] : 4 * (uint64_t)t->numel;
        put_string(af.f, t->name);
        if (model_tensor_is_bias(c, k)) {
            put_u32(af.f, 1);
            put_u32(af.f, (uint32_t)t->cols);
        } else {
            put_u32(af.f, 2);
            put_u32(af.f, (uint32_t)t->rows);
            put_u32(af.f, (uint32_t)t->cols);
        }
        put_u32(af.f, (uint32_t)t->trainable);
        if (any_sparse) put_u32(af.f, (uint32_t)sparse[k]);
        put_u64(af.f, offset);
        put_u64(af.f, n_bytes);
        offset += n_bytes;
    }
    for (k = 0; k < m->n_tensors; k++) {
        const real *v = model_tensor_data(m, k);
        size_t j, n = m->tensors[k].numel;
        if (sparse[k]) {
            put_u32(af.f, (uint32_t)nnz[k]);
            for (j = 0; j < n; j++)
                if ((float)v[j] != 0.0f) put_u32(af.f, (uint32_t)j);
            for (j = 0; j < n; j++)
                if ((float)v[j] != 0.0f) put_f32(af.f, v[j]);
        } else {
            for (j = 0; j < n; j++) put_f32(af.f, v[j]);
        }
    }
    free(nnz);
    free(sparse);
    return atomic_commit(&af);
}

/* ---------------------------------------------------------------------------
 * Forward pass. Every activation that the backward pass needs is kept in the
 * workspace, per layer, with row stride max_rows.
 * ------------------------------------------------------------------------- */

struct Workspace {
    int max_rows, max_seqs, max_T;
    size_t att_per_layer;   /* attention weights of one layer: max_seqs * H * T * T */
    real *x_in;     /* [L][max_rows, D] residual entering each layer */
    real *q, *k, *v;/* [L][max_rows, HK] */
    real *att;      /* [L][att_per_layer] softmax weights, per sequence and head [T, T] */
    real *z;        /* [L][max_rows, HK] attention output before the projection */
    real *x_mid;    /* [L][max_rows, D] residual after attention */
    real *hid;      /* [L][max_rows, M] relu output of the MLP */
    real *x_out;    /* [max_rows, D] final residual */
    real *y;        /* [max_rows, O] outputs */
    real *dx;       /* [max_rows, D] gradient of the residual */
    real *dq, *dk, *dv, *dz;   /* [max_rows, HK] */
    real *dhid;     /* [max_rows, M] */
    real *datt;     /* [max_T, max_T] gradient of one sequence and head's attention */
    real *pack;     /* [MM_PACK_REALS] scratch of the matmul kernels */
    Batch batch;    /* the batch of the last forward pass */
    Arena owned;    /* the arena of a workspace_new() workspace; empty inside a chain's arena */
};

/* Saturating size arithmetic: SIZE_MAX stands for any size that overflows,
 * and no allocation of it can succeed. */
static size_t size_mul(size_t a, size_t b) { return b && a > SIZE_MAX / b ? SIZE_MAX : a * b; }

/* Points ws's buffers into the arena (or only measures them). */
static void workspace_layout(Workspace *ws, Arena *a, const ModelConfig *c, int max_seqs) {
    size_t R, L = (size_t)c->n_layers, D = (size_t)c->d_model;
    size_t HK = (size_t)c->n_heads * (size_t)c->d_head, M = (size_t)c->d_mlp, T;
    memset(ws, 0, sizeof *ws);
    /* row indices are ints */
    if ((size_t)max_seqs * ((size_t)c->max_seq_len + 1) > INT_MAX)
        die("a batch of %d sequences of %d positions has more than %d rows; use a smaller batch",
            max_seqs, c->max_seq_len + 1, INT_MAX);
    ws->max_seqs = max_seqs;
    ws->max_T = c->max_seq_len + 1;
    ws->max_rows = max_seqs * ws->max_T;
    R = (size_t)ws->max_rows;
    T = (size_t)ws->max_T;
    /* attention alone is max_seqs * heads * T^2 per layer, which overflows for absurd models */
    ws->att_per_layer = size_mul(size_mul((size_t)max_seqs, (size_t)c->n_heads), size_mul(T, T));
    ws->x_in = arena_take(a, size_mul(L, size_mul(R, D)), sizeof(real));
    ws->q = arena_take(a, size_mul(L, size_mul(R, HK)), sizeof(real));
    ws->k = arena_take(a, size_mul(L, size_mul(R, HK)), sizeof(real));
    ws->v = arena_take(a, size_mul(L, size_mul(R, HK)), sizeof(real));
    ws->att = arena_take(a, size_mul(L, ws->att_per_layer), sizeof(real));
    ws->z = arena_take(a, size_mul(L, size_mul(R, HK)), sizeof(real));
    ws->x_mid = arena_take(a, size_mul(L, size_mul(R, D)), sizeof(real));
    ws->hid = arena_take(a, size_mul(L, size_mul(R, M)), sizeof(real));
    ws->x_out = arena_take(a, size_mul(R, D), sizeof(real));
    ws->y = arena_take(a, size_mul(R, (size_t)c->n_outputs), sizeof(real));
    ws->dx = arena_take(a, size_mul(R, D), sizeof(real));
    ws->dq = arena_take(a, size_mul(R, HK), sizeof(real));
    ws->dk = arena_take(a, size_mul(R, HK), sizeof(real));
    ws->dv = arena_take(a, size_mul(R, HK), sizeof(real));
    ws->dz = arena_take(a, size_mul(R, HK), sizeof(real));
    ws->dhid = arena_take(a, size_mul(R, M), sizeof(real));
    ws->datt = arena_take(a, size_mul(T, T), sizeof(real));
    ws->pack = arena_take(a, MM_PACK_REALS, sizeof(real));
}

size_t workspace_bytes(const ModelConfig *c, int max_seqs) {
    Arena a = arena_measuring();
    Workspace ws;
    arena_take(&a, 1, sizeof(Workspace));
    workspace_layout(&ws, &a, c, max_seqs);
    return a.used;
}

Workspace *workspace_new(const ModelConfig *c, int max_seqs) {
    Arena a;
    Workspace *ws;
    arena_init(&a, workspace_bytes(c, max_seqs), "the activations");
    ws = arena_take(&a, 1, sizeof(Workspace));
    workspace_layout(ws, &a, c, max_seqs);
    ws->owned = a;
    return ws;
}

void workspace_free(Workspace *ws) {
    Arena a;
    if (!ws) return;
    a = ws->owned;   /* ws lives inside it */
    arena_free(&a);
}

/* x[r] = token_embed[ids[r]] + pos_embed[t], t the position within its sequence. */
static void embed_forward(real *x, const Batch *b, const real *token_embed, const real *pos_embed,
                          int D) {
    int s, t, i;
    for (s = 0; s < b->n_seqs; s++) {
        for (t = 0; t < b->seq_start[s + 1] - b->seq_start[s]; t++) {
            int r = b->seq_start[s] + t;
            const real *te = token_embed + (size_t)b->ids[r] * D, *pe = pos_embed + (size_t)t * D;
            for (i = 0; i < D; i++) x[(size_t)r * D + i] = te[i] + pe[i];
        }
    }
}

static void embed_backward(real *dtoken_embed, real *dpos_embed, const Batch *b, const real *dx,
                           int D) {
    int s, t, i;
    for (s = 0; s < b->n_seqs; s++) {
        for (t = 0; t < b->seq_start[s + 1] - b->seq_start[s]; t++) {
            int r = b->seq_start[s] + t;
            real *dte = dtoken_embed + (size_t)b->ids[r] * D, *dpe = dpos_embed + (size_t)t * D;
            for (i = 0; i < D; i++) {
                dte[i] += dx[(size_t)r * D + i];
                dpe[i] += dx[(size_t)r * D + i];
            }
        }
    }
}

/* Attention scores and outputs of every sequence and head:
 * att[t, u] = softmax_u(q[t] . k[u] / sqrt(d_head)), z[t] = sum_u att[t, u] v[u].
 * The softmax subtracts the row maximum; with causal set, keys u > t get
 * weight 0. A head's q, k, v and z are the [T, d_head] column block h of
 * the [T, HK] rows of one sequence, so the products run on gemm() with row
 * stride HK. */
static void attention_forward(real *z, real *att, const real *q, const real *k, const real *v,
                              const Batch *b, int n_heads, int d_head, int causal, real *pack) {
    int HK = n_heads * d_head, s, h, t, u;
    double scale = 1.0 / sqrt((double)d_head);
    real *a = att;
    for (s = 0; s < b->n_seqs; s++) {
        int r0 = b->seq_start[s], T = b->seq_start[s + 1] - r0;
        for (h = 0; h < n_heads; h++, a += (size_t)T * T) {
            size_t head = (size_t)r0 * HK + (size_t)h * d_head;

            /* scores a[T, T] = q k^T */
            gemm(matmul_kernel, pack, T, T, d_head, q + head, HK, 1, k + head, 1, HK, a, T, 0);

            for (t = 0; t < T; t++) {
                real *row = a + (size_t)t * T;
                int n_keys = causal ? t + 1 : T;
                double max = -DBL_MAX, sum = 0.0;
                for (u = 0; u < n_keys; u++) {
                    row[u] = (real)(row[u] * scale);
                    if (row[u] > max) max = row[u];
                }
                for (u = 0; u < n_keys; u++) {
                    row[u] = (real)exp(row[u] - max);
                    sum += row[u];
                }
                for (u = 0; u < n_keys; u++) row[u] = (real)(row[u] / sum);
                for (u = n_keys; u < T; u++) row[u] = 0;
            }

            /* z[T, d_head] = a v */
            gemm(matmul_kernel, pack, T, d_head, T, a, T, 1, v + head, HK, 1, z + head, HK, 0);
        }
    }
}

/* Given dz, stores the gradients of q, k and v. Every row of the batch
 * belongs to a sequence, so each block is written once and nothing needs
 * zeroing. datt is scratch of T * T reals. */
static void attention_backward(real *dq, real *dk, real *dv, real *datt, const real *dz,
                               const real *att, const real *q, const real *k, const real *v,
                               const Batch *b, int n_heads, int d_head, real *pack) {
    int HK = n_heads * d_head, s, h, t, u;
    double scale = 1.0 / sqrt((double)d_head);
    const real *a = att;
    for (s = 0; s < b->n_seqs; s++) {
        int r0 = b->seq_start[s], T = b->seq_start[s + 1] - r0;
        for (h = 0; h < n_heads; h++, a += (size_t)T * T) {
            size_t head = (size_t)r0 * HK + (size_t)h * d_head;

            /* z = a v: datt = dz v^T and dv = a^T dz */
            gemm(matmul_kernel, pack, T, T, d_head, dz + head, HK, 1, v + head, 1, HK, datt, T, 0);
            gemm(matmul_kernel, pack, T, d_head, T, a, 1, T, dz + head, HK, 1, dv + head, HK, 0);

            /* softmax: dscore[t, u] = a[t, u] (datt[t, u] - sum_w a[t, w] datt[t, w]), times the
             * scale of the scores; stored over datt */
            for (t = 0; t < T; t++) {
                const real *arow = a + (size_t)t * T;
                real *drow = datt + (size_t)t * T;
                double weighted = 0.0;
                for (u = 0; u < T; u++) weighted += (double)arow[u] * drow[u];
                for (u = 0; u < T; u++) drow[u] = (real)(arow[u] * (drow[u] - weighted) * scale);
            }

            /* scores = q k^T: dq = dscore k and dk = dscore^T q */
            gemm(matmul_kernel, pack, T, d_head, T, datt, T, 1, k + head, HK, 1, dq + head, HK, 0);
            gemm(matmul_kernel, pack, T, d_head, T, datt, 1, T, q + head, HK, 1, dk + head, HK, 0);
        }
    }
}

const real *model_forward(const ModelConfig *c, const Weights *w, Workspace *ws, const Batch *b) {
    int R = b->n_rows, D = c->d_model, HK = c->n_heads * c->d_head, M = c->d_mlp, l;
    size_t i, stride_d = (size_t)ws->max_rows * D, stride_hk = (size_t)ws->max_rows * HK;
    size_t stride_m = (size_t)ws->max_rows * M;
    if (b->n_seqs > ws->max_seqs || R > ws->max_rows) die("internal error: batch exceeds the workspace");
    ws->batch = *b;

    embed_forward(ws->x_in, b, w->token_embed, w->pos_embed, D);

    for (l = 0; l < c->n_layers; l++) {
        const LayerWeights *lw = &w->layer[l];
        real *x = ws->x_in + l * stride_d, *x_mid = ws->x_mid + l * stride_d;
        real *q = ws->q + l * stride_hk, *k = ws->k + l * stride_hk, *v = ws->v + l * stride_hk;
        real *z = ws->z + l * stride_hk, *hid = ws->hid + l * stride_m;
        real *x_next = l + 1 < c->n_layers ? ws->x_in + (l + 1) * stride_d : ws->x_out;

        /* attention: x_mid = x + attn(x) Wo + bo */
        matmul_nn(ws->pack, q, x, lw->wq, R, D, HK, 0);
        add_bias(ws->pack, q, lw->bq, R, HK);
        matmul_nn(ws->pack, k, x, lw->wk, R, D, HK, 0);
        add_bias(ws->pack, k, lw->bk, R, HK);
        matmul_nn(ws->pack, v, x, lw->wv, R, D, HK, 0);
        add_bias(ws->pack, v, lw->bv, R, HK);
        attention_forward(z, ws->att + l * ws->att_per_layer, q, k, v, b, c->n_heads, c->d_head,
                          c->causal, ws->pack);
        memcpy(x_mid, x, (size_t)R * D * sizeof(real));
        matmul_nn(ws->pack, x_mid, z, lw->wo, R, HK, D, 1);
        add_bias(ws->pack, x_mid, lw->bo, R, D);

        /* MLP: x_next = x_mid + relu(x_mid W1 + b1) W2 + b2 */
        matmul_nn(ws->pack, hid, x_mid, lw->w1, R, D, M, 0);
        add_bias(ws->pack, hid, lw->b1, R, M);
        for (i = 0; i < (size_t)R * M; i++) hid[i] = hid[i] > 0 ? hid[i] : 0;
        memcpy(x_next, x_mid, (size_t)R * D * sizeof(real));
        matmul_nn(ws->pack, x_next, hid, lw->w2, R, M, D, 1);
        add_bias(ws->pack, x_next, lw->b2, R, D);
    }

    matmul_nn(ws->pack, ws->y, ws->x_out, w->unembed_w, R, D, c->n_outputs, 0);
    add_bias(ws->pack, ws->y, w->unembed_b, R, c->n_outputs);
    return ws->y;
}

/* ---------------------------------------------------------------------------
 * Backward pass: the layers of model_forward in reverse. Gradients are added
 * into g, so the caller zeroes it first.
 * ------------------------------------------------------------------------- */

void model_backward(const ModelConfig *c, const Weights *w, const Weights *g, Workspace *ws,
                    const real *dy) {
    const Batch *b = &ws->batch;
    int R = b->n_rows, D = c->d_model, HK = c->n_heads * c->d_head, M = c->d_mlp, O = c->n_outputs;
    size_t stride_d = (size_t)ws->max_rows * D, stride_hk = (size_t)ws->max_rows * HK;
    size_t stride_m = (size_t)ws->max_rows * M;
    real *dx = ws->dx;
    size_t i;
    int l;

    /* y = x_out U + ub */
    matmul_tn(ws->pack, g->unembed_w, ws->x_out, dy, D, R, O, 1);
    add_bias_grad(ws->pack, g->unembed_b, dy, R, O);
    matmul_nt(ws->pack, dx, dy, w->unembed_w, R, O, D, 0);

    for (l = c->n_layers - 1; l >= 0; l--) {
        const LayerWeights *lw = &w->layer[l];
        const LayerWeights *lg = &g->layer[l];
        const real *x = ws->x_in + l * stride_d, *x_mid = ws->x_mid + l * stride_d;
        const real *q = ws->q + l * stride_hk, *k = ws->k + l * stride_hk, *v = ws->v + l * stride_hk;
        const real *z = ws->z + l * stride_hk, *hid = ws->hid + l * stride_m;

        /* MLP: x_next = x_mid + relu(x_mid W1 + b1) W2 + b2; dx contains d x_next and becomes d x_mid */
        matmul_tn(ws->pack, lg->w2, hid, dx, M, R, D, 1);
        add_bias_grad(ws->pack, lg->b2, dx, R, D);
        matmul_nt(ws->pack, ws->dhid, dx, lw->w2, R, D, M, 0);
        for (i = 0; i < (size_t)R * M; i++)
            if (hid[i] <= 0) ws->dhid[i] = 0;
        matmul_tn(ws->pack, lg->w1, x_mid, ws->dhid, D, R, M, 1);
        add_bias_grad(ws->pack, lg->b1, ws->dhid, R, M);
        matmul_nt(ws->pack, dx, ws->dhid, lw->w1, R, M, D, 1);

        /* attention: x_mid = x + z Wo + bo; dx contains d x_mid and becomes d x */
        matmul_tn(ws->pack, lg->wo, z, dx, HK, R, D, 1);
        add_bias_grad(ws->pack, lg->bo, dx, R, D);
        matmul_nt(ws->pack, ws->dz, dx, lw->wo, R, D, HK, 0);
        attention_backward(ws->dq, ws->dk, ws->dv, ws->datt, ws->dz, ws->att + l * ws->att_per_layer,
                           q, k, v, b, c->n_heads, c->d_head, ws->pack);
        matmul_tn(ws->pack, lg->wq, x, ws->dq, D, R, HK, 1);
        add_bias_grad(ws->pack, lg->bq, ws->dq, R, HK);
        matmul_tn(ws->pack, lg->wk, x, ws->dk, D, R, HK, 1);
        add_bias_grad(ws->pack, lg->bk, ws->dk, R, HK);
        matmul_tn(ws->pack, lg->wv, x, ws->dv, D, R, HK, 1);
        add_bias_grad(ws->pack, lg->bv, ws->dv, R, HK);
        matmul_nt(ws->pack, dx, ws->dq, lw->wq, R, HK, D, 1);
        matmul_nt(ws->pack, dx, ws->dk, lw->wk, R, HK, D, 1);
        matmul_nt(ws->pack, dx, ws->dv, lw->wv, R, HK, D, 1);
    }

    embed_backward(g->token_embed, g->pos_embed, b, dx, D);
}

/* ---------------------------------------------------------------------------
 * Datasets and losses. A dataset is a set of input sequences with, per
 * token position, a categorical label or a numerical target and the
 * reference outputs (a teacher's, or the model's own at w*) that the KL loss
 * compares with. Losses average over the non-BOS positions of a batch.
 * ------------------------------------------------------------------------- */

typedef struct {
    int n;          /* sequences */
    int stride;     /* max_seq_len + 1: row i * stride + t is position t of sequence i */
    int n_outputs;
    int *len;       /* [n] tokens, BOS included */
    int *ids;       /* [n * stride] */
    int *label;     /* [n * stride] output id of categorical targets; -1 at BOS or when unknown */
    real *target;   /* [n * stride * O] MSE target: the value, or the one-hot of label */
    real *ref;      /* [n * stride * O] reference outputs for the KL loss */
    int labels_from_file;
} Dataset;

static void dataset_alloc(Dataset *d, int n, const ModelConfig *c) {
    size_t rows = (size_t)n * (size_t)(c->max_seq_len + 1);
    /* batches index dataset rows with ints */
    if (rows > INT_MAX)
        die("%d sequences of %d positions are more than %d rows; use fewer samples", n,
            c->max_seq_len + 1, INT_MAX);
    memset(d, 0, sizeof *d);
    d->n = n;
    d->stride = c->max_seq_len + 1;
    d->n_outputs = c->n_outputs;
    d->len = xcalloc((size_t)n, sizeof(int), "the dataset");
    d->ids = xcalloc(rows, sizeof(int), "the dataset");
    d->label = xcalloc(rows, sizeof(int), "the dataset");
    d->target = xcalloc(rows * (size_t)c->n_outputs, sizeof(real), "the dataset");
    d->ref = xcalloc(rows * (size_t)c->n_outputs, sizeof(real), "the dataset");
}

static void dataset_free(Dataset *d) {
    free(d->len);
    free(d->ids);
    free(d->label);
    free(d->target);
    free(d->ref);
    memset(d, 0, sizeof *d);
}

/* Refills every sequence of d with BOS and then tokens drawn uniformly from
 * the vocab without BOS and PAD: max_seq_len of them, or with full_length
 * unset a length drawn uniformly from 1 .. max_seq_len. With varied set,
 * every other sequence draws its tokens from a random subset of the vocab
 * instead (of a size uniform in 1 .. vocab), so that repeated tokens and
 * constant sequences, rare under uniform draws, are common. */
static void dataset_fill_random(Dataset *d, const ModelConfig *c, int full_length, int varied, Rng *rng) {
    int i, t, k, n_tokens = c->n_vocab - 2 + (c->bos_id == c->pad_id);
    int lo = c->bos_id < c->pad_id ? c->bos_id : c->pad_id;
    int hi = c->bos_id < c->pad_id ? c->pad_id : c->bos_id;
    int *subset = xmalloc((size_t)n_tokens * sizeof(int), "a token subset");
    for (i = 0; i < d->n; i++) {
        int *ids = d->ids + (size_t)i * d->stride, n_subset = n_tokens;
        for (k = 0; k < n_tokens; k++) subset[k] = k;
        if (varied && i % 2 == 1) {
            rng_shuffle(rng, subset, n_tokens);
            n_subset = 1 + (int)rng_below(rng, (uint64_t)n_tokens);
        }
        d->len[i] = full_length ? d->stride : 2 + (int)rng_below(rng, (uint64_t)c->max_seq_len);
        ids[0] = c->bos_id;
        for (t = 1; t < d->len[i]; t++) {
            int id = subset[rng_below(rng, (uint64_t)n_subset)];
            /* skip over the BOS and PAD ids */
            if (id >= lo) id++;
            if (id >= hi && hi != lo) id++;
            ids[t] = id;
        }
    }
    free(subset);
}

/* n sequences of full length: BOS, then max_seq_len random tokens. */
static void dataset_random(Dataset *d, const ModelConfig *c, int n, Rng *rng) {
    dataset_alloc(d, n, c);
    dataset_fill_random(d, c, 1, 0, rng);
}

static int vocab_lookup(const Model *m, const char *token) {
    int i;
    for (i = 0; i < m->cfg.n_vocab; i++)
        if (!strcmp(m->vocab[i], token)) return i;
    return -1;
}

static int output_lookup(const Model *m, const char *value) {
    int i;
    for (i = 0; i < m->cfg.n_outputs; i++)
        if (!strcmp(m->output_values[i], value)) return i;
    return -1;
}

/* Reads one line without its line ending (LF, CRLF or a lone CR) into buf
 * (size bytes). Returns its length, -1 at the end of the file, -2 for a
 * line that does not fit, -3 for a NUL byte and -4 for a read error. */
static long read_line(FILE *f, char *buf, size_t size) {
    size_t n = 0;
    int ch;
    while ((ch = getc(f)) != EOF && ch != '\n') {
        if (ch == '\r') {
            int next = getc(f);
            if (next != '\n' && next != EOF) ungetc(next, f);
            break;
        }
        if (ch == 0) return -3;
        if (n + 1 >= size) return -2;
        buf[n++] = (char)ch;
    }
    if (ch == EOF && ferror(f)) return -4;
    if (ch == EOF && n == 0) return -1;
    buf[n] = 0;
    return (long)n;
}

/* Returns why token id may not be an input: unknown (id < 0), BOS or padding. */
static const char *token_error(const ModelConfig *c, int id) {
    if (id < 0) return "is not in the model's vocabulary";
    if (id == c->bos_id) return "is the BOS token, which llc adds itself";
    return "is the padding token, which is not an input token";
}

/* Writes the model's input tokens (the vocabulary without BOS and padding),
 * each after a space. */
static void print_input_tokens(FILE *f, const Model *m) {
    int id;
    for (id = 0; id < m->cfg.n_vocab; id++)
        if (id != m->cfg.bos_id && id != m->cfg.pad_id) fprintf(f, " %s", m->vocab[id]);
}

/* Reads inputs from a text file: one sequence per line, tokens separated by
 * spaces, BOS not written; optionally "|" and one label per token (an output
 * value, or a number for a numerical output). Blank lines and lines starting
 * with # are skipped. path names the file in messages. Returns 0, or -1
 * after printing the line at fault. */
static int dataset_parse(Dataset *d, const Model *m, FILE *f, const char *path) {
    const ModelConfig *c = &m->cfg;
    char line[1 << 16];
    int capacity = 64, n = 0, lineno = 0, with_labels = -1;
    long len;
    Dataset tmp;
    dataset_alloc(&tmp, capacity, c);
    while ((len = read_line(f, line, sizeof line)) != -1) {
        char *bar, *tok, *save = NULL;
        int t = 1, k, labelled;
        lineno++;
        if (len == -2) {
            fprintf(stderr, "%s: %s:%d: line is longer than %zu bytes\n", g_program, path, lineno,
                    sizeof line - 1);
            goto fail;
        }
        if (len == -3) {
            fprintf(stderr, "%s: %s:%d: line contains a NUL byte; inputs are text\n", g_program, path,
                    lineno);
            goto fail;
        }
        if (len == -4) {
            fprintf(stderr, "%s: cannot read inputs file %s: %s\n", g_program, path, strerror(errno));
            goto fail;
        }
        for (tok = line; isspace((unsigned char)*tok); tok++) {}
        if (*tok == 0 || *tok == '#') continue;
        if (n == capacity) {
            Dataset bigger;
            size_t old_rows = (size_t)capacity * tmp.stride, O = (size_t)c->n_outputs;
            if (capacity > INT_MAX / 2) {
                fprintf(stderr, "%s: %s:%d: more than %d input sequences\n", g_program, path, lineno,
                        capacity);
                goto fail;
            }
            dataset_alloc(&bigger, capacity * 2, c);
            memcpy(bigger.len, tmp.len, (size_t)capacity * sizeof(int));
            memcpy(bigger.ids, tmp.ids, old_rows * sizeof(int));
            memcpy(bigger.label, tmp.label, old_rows * sizeof(int));
            memcpy(bigger.target, tmp.target, old_rows * O * sizeof(real));
            dataset_free(&tmp);
            tmp = bigger;
            capacity *= 2;
        }
        bar = strchr(line, '|');
        labelled = bar != NULL;
        if (with_labels < 0) with_labels = labelled;
        if (labelled != with_labels) {
            fprintf(stderr, "%s: %s:%d: either every line has labels after \"|\" or none does\n",
                    g_program, path, lineno);
            goto fail;
        }
        if (bar) *bar = 0;
        tmp.ids[(size_t)n * tmp.stride] = c->bos_id;
        for (tok = strtok_r(line, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save)) {
            int id = vocab_lookup(m, tok);
            if (id < 0 || id == c->bos_id || id == c->pad_id) {
                fprintf(stderr, "%s: %s:%d: token \"%s\" %s; the input tokens are", g_program, path, lineno, tok,
                        token_error(c, id));
                print_input_tokens(stderr, m);
                fputc('\n', stderr);
                goto fail;
            }
            if (t > c->max_seq_len) {
                fprintf(stderr, "%s: %s:%d: more than max_seq_len = %d tokens\n", g_program, path,
                        lineno, c->max_seq_len);
                goto fail;
            }
            tmp.ids[(size_t)n * tmp.stride + t++] = id;
        }
        if (t == 1) {
            fprintf(stderr, "%s: %s:%d: no tokens before \"|\"\n", g_program, path, lineno);
            goto fail;
        }
        tmp.len[n] = t;
        for (k = 0; k < tmp.stride; k++) tmp.label[(size_t)n * tmp.stride + k] = -1;
        if (bar) {
            int j = 1;
            for (tok = strtok_r(bar + 1, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save)) {
                size_t row = (size_t)n * tmp.stride + j;
                if (j >= t) break;
                if (c->output_kind == OUTPUT_CATEGORICAL) {
                    int id = output_lookup(m, tok);
                    if (id < 0) {
                        fprintf(stderr, "%s: %s:%d: label \"%s\" is not an output value of the model\n",
                                g_program, path, lineno, tok);
                        goto fail;
                    }
                    tmp.label[row] = id;
                    tmp.target[row * c->n_outputs + id] = 1;
                } else {
                    char *end;
                    double v = strtod(tok, &end);
                    if (*end || !isfinite(v) || !isfinite((double)(real)v)) {
                        fprintf(stderr, "%s: %s:%d: label \"%s\" is not a finite %s number\n", g_program,
                                path, lineno, tok, LLC_REAL_NAME);
                        goto fail;
                    }
                    tmp.target[row] = (real)v;
                }
                j++;
            }
            if (j != t || tok) {
                fprintf(stderr, "%s: %s:%d: %d tokens but %s labels\n", g_program, path, lineno, t - 1,
                        tok ? "more" : "fewer");
                goto fail;
            }
        }
        n++;
    }
    if (n == 0) {
        fprintf(stderr, "%s: inputs file %s has no sequences\n", g_program, path);
        dataset_free(&tmp);
        return -1;
    }
    tmp.n = n;
    tmp.labels_from_file = with_labels == 1;
    *d = tmp;
    return 0;
fail:
    dataset_free(&tmp);
    return -1;
}

static int dataset_read(Dataset *d, const Model *m, const char *path) {
    FILE *f = fopen(path, "r");
    int rc;
    if (!f) {
        fprintf(stderr, "%s: cannot open inputs file %s: %s\n", g_program, path, strerror(errno));
        return -1;
    }
    rc = dataset_parse(d, m, f, path);
    fclose(f);
    return rc;
}

/* Gathers sequences into a batch; row_src[r] is the dataset row of batch row r. */
static Batch batch_gather(const Dataset *d, const int *samples, int n, int *ids, int *seq_start,
                          int *row_src) {
    Batch b;
    int i, t, r = 0;
    for (i = 0; i < n; i++) {
        const int *src = d->ids + (size_t)samples[i] * d->stride;
        seq_start[i] = r;
        for (t = 0; t < d->len[samples[i]]; t++, r++) {
            ids[r] = src[t];
            row_src[r] = samples[i] * d->stride + t;
        }
    }
    seq_start[n] = r;
    b.n_seqs = n;
    b.n_rows = r;
    b.ids = ids;
    b.seq_start = seq_start;
    return b;
}

static int argmax(const real *v, int n) {
    int i, best = 0;
    for (i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static double log_sum_exp(const real *v, int n) {
    double max = v[0], sum = 0.0;
    int i;
    for (i = 1; i < n; i++)
        if (v[i] > max) max = v[i];
    for (i = 0; i < n; i++) sum += exp(v[i] - max);
    return max + log(sum);
}

static const char *loss_name(LossKind k) {
    if (k == LOSS_CE) return "ce";
    if (k == LOSS_MSE) return "mse";
    return "kl";
}

/* Returns the mean loss of outputs y [n_rows, O] over the non-BOS rows that
 * have a target, and when dy is not NULL stores d loss / d y there. */
static double loss_compute(LossKind kind, const real *y, const Batch *b, const int *row_src,
                           const Dataset *d, real *dy) {
    int O = d->n_outputs, s, t, j, n_rows = 0;
    double total = 0.0;
    if (dy) memset(dy, 0, (size_t)b->n_rows * O * sizeof(real));
    for (s = 0; s < b->n_seqs; s++)
        for (t = b->seq_start[s] + 1; t < b->seq_start[s + 1]; t++)
            n_rows += kind != LOSS_CE || d->label[row_src[t]] >= 0;
    if (n_rows == 0) return 0.0;

    for (s = 0; s < b->n_seqs; s++) {
        for (t = b->seq_start[s] + 1; t < b->seq_start[s + 1]; t++) {
            const real *yr = y + (size_t)t * O;
            size_t src = (size_t)row_src[t];
            real *dyr = dy ? dy + (size_t)t * O : NULL;
            if (kind == LOSS_CE) {
                /* lse = max + log(sum_j e_j) with e_j = exp(y_j - max); d loss / d y_j = e_j / sum,
                 * minus 1 at the label, so each exp serves both */
                int label = d->label[src];
                double max = yr[0], sum = 0.0;
                if (label < 0) continue;
                for (j = 1; j < O; j++)
                    if (yr[j] > max) max = yr[j];
                for (j = 0; j < O; j++) {
                    double e = exp(yr[j] - max);
                    sum += e;
                    if (dyr) dyr[j] = (real)e;
                }
                total += max + log(sum) - yr[label];
                if (dyr) {
                    for (j = 0; j < O; j++) dyr[j] = (real)(dyr[j] / (sum * n_rows));
                    dyr[label] -= (real)(1.0 / n_rows);
                }
            } else if (kind == LOSS_MSE) {
                const real *target = d->target + src * O;
                for (j = 0; j < O; j++) {
                    double diff = (double)yr[j] - target[j];
                    total += diff * diff / O;
                    if (dyr) dyr[j] = (real)(2.0 * diff / ((double)n_rows * O));
                }
            } else {
                /* KL(p || q), p = softmax(reference), q = softmax(y) */
                const real *ref = d->ref + src * O;
                double lse_p = log_sum_exp(ref, O), lse_q = log_sum_exp(yr, O);
                for (j = 0; j < O; j++) {
                    double log_p = ref[j] - lse_p, log_q = yr[j] - lse_q, p = exp(log_p);
                    if (p > 0) total += p * (log_p - log_q);
                    if (dyr) dyr[j] = (real)((exp(log_q) - p) / n_rows);
                }
            }
        }
    }
    return total / n_rows;
}

/* Runs ref_model over the dataset, using ws (room for at least one
 * sequence), and stores its outputs in d->ref. Unless the labels came from a
 * file, also makes them the targets: the argmax for a categorical output,
 * the value for a numerical one. */
static void dataset_label_with(Dataset *d, const Model *ref_model, Workspace *ws) {
    const ModelConfig *c = &ref_model->cfg;
    int O = c->n_outputs, batch_size = ws->max_seqs, i, r, j, n;
    int *samples = xmalloc((size_t)batch_size * sizeof(int), "a batch");
    int *ids = xmalloc((size_t)ws->max_rows * sizeof(int), "a batch");
    int *row_src = xmalloc((size_t)ws->max_rows * sizeof(int), "a batch");
    int *seq_start = xmalloc((size_t)(batch_size + 1) * sizeof(int), "a batch");
    for (i = 0; i < d->n; i += batch_size) {
        const real *y;
        Batch b;
        n = d->n - i < batch_size ? d->n - i : batch_size;
        for (j = 0; j < n; j++) samples[j] = i + j;
        b = batch_gather(d, samples, n, ids, seq_start, row_src);
        y = model_forward(c, &ref_model->w, ws, &b);
        for (r = 0; r < b.n_rows; r++) {
            size_t src = (size_t)row_src[r];
            int is_bos = (int)(src % (size_t)d->stride) == 0;
            memcpy(d->ref + src * O, y + (size_t)r * O, (size_t)O * sizeof(real));
            if (d->labels_from_file) continue;
            if (c->output_kind == OUTPUT_CATEGORICAL) {
                int best = argmax(y + (size_t)r * O, O);
                d->label[src] = is_bos ? -1 : best;
                /* mse compares with the reference outputs themselves, so it is zero at the reference */
                memcpy(d->target + src * O, y + (size_t)r * O, (size_t)O * sizeof(real));
            } else {
                d->label[src] = -1;
                d->target[src] = y[r];
            }
        }
    }
    free(samples);
    free(ids);
    free(row_src);
    free(seq_start);
}

static void dataset_label(Dataset *d, const Model *ref_model, int batch_size) {
    Workspace *ws = workspace_new(&ref_model->cfg, batch_size);
    dataset_label_with(d, ref_model, ws);
    workspace_free(ws);
}

/* ---------------------------------------------------------------------------
 * SGLD and the LLC, with devinterp's semantics (estimate_learning_coeff,
 * devinterp 1.2/1.3):
 *   w <- w - (lr/2) (nbeta grad L_batch(w) + localization (w - w*)) + sqrt(lr) N(0, noise_level^2)
 *   step i is recorded as draw (i - burnin) / every when i >= burnin and
 *   (i + 1 - burnin) % every == 0, so draw d is step burnin + (d + 1) every - 1.
 *   The recorded value is the minibatch loss before that step's update, so
 *   with no burn-in and every = 1 draw 0 is the loss at w*.
 *   init_loss = mean loss at w* over the first min(chains, batches) batches
 *   of the unshuffled samples; llc per chain = nbeta (mean of its draws -
 *   init_loss), then mean and sample std over the chains.
 * ------------------------------------------------------------------------- */

double sgld_default_nbeta(int batch) {
    return batch > 1 ? (double)batch / log((double)batch) : 1.0;
}

/* Steps of one chain: burn-in, then draws * every. Step numbers are ints, so
 * llc_estimate accepts at most INT_MAX. */
static long long sgld_steps_per_chain(const SgldSettings *s) {
    return (long long)s->draws * s->every + s->burnin;
}

static int cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

typedef struct {
    const LlcProblem *p;
    const SgldSettings *s;
    LlcResult *r;
    int next_chain;
    long long steps_done, steps_total;
    unsigned long long n_updates, n_unchanged;
    unsigned long long n_updates_nonzero, n_unchanged_nonzero;   /* of parameters non-zero at w* */
    double t_start, t_last_report;
#if LLC_THREADS
    pthread_mutex_t lock;
#endif
} EstimateJob;

static void job_lock(EstimateJob *job) {
#if LLC_THREADS
    pthread_mutex_lock(&job->lock);
#else
    (void)job;
#endif
}

static void job_unlock(EstimateJob *job) {
#if LLC_THREADS
    pthread_mutex_unlock(&job->lock);
#else
    (void)job;
#endif
}

/* Records finished steps and prints progress at most every two seconds. */
static void job_report(EstimateJob *job, long steps) {
    double now;
    job_lock(job);
    job->steps_done += steps;
    now = now_seconds();
    if (now - job->t_last_report >= 2.0) {
        double elapsed = now - job->t_start, share = (double)job->steps_done / job->steps_total;
        job->t_last_report = now;
        progress("SGLD %lld/%lld steps (%.0f%%), %.1f s elapsed, about %.0f s left", job->steps_done,
                 job->steps_total, 100.0 * share, elapsed, share > 0 ? elapsed / share - elapsed : 0.0);
    }
    job_unlock(job);
}

/* Returns the sample ids of minibatch `index` of an epoch, given its order. */
static int batch_samples(const int *order, int n_samples, int batch, int index, const int **out) {
    int start = index * batch;
    *out = order + start;
    return n_samples - start < batch ? n_samples - start : batch;
}

/* Normals drawn per block of the SGLD update; the block stays in L1. */
enum { SGLD_NOISE_BLOCK = 1024 };

/* Bytes of the estimator's own state per chain: parameters, gradient,
 * sample order and a block of normals, in one arena (the problem's
 * chain_new adds its own). */
/* The Metropolis-adjusted Langevin acceptance probability min(1, exp(A)) of
 * the SGLD step from w0 (drift d0, potential U0) to w1 (d1, U1) with step
 * size eps, as devinterp's MalaAcceptanceRate computes it:
 *   A = U0 - U1 - ||w0 - w1 + (eps/2) d1||^2 / (2 eps) + ||w1 - w0 + (eps/2) d0||^2 / (2 eps)
 * The drift d = nbeta grad L + localization (w - w*) and the potential
 * U = nbeta L + localization/2 ||w - w*||^2 use minibatch losses. It does
 * not change the chain; values near 1 mean steps too small to explore, far
 * below 0.9 steps too large to sample accurately. The arithmetic is done in
 * `real` in devinterp's order (the sums accumulate in double), so the
 * float32 build reproduces devinterp's float32 values. */
static double mala_acceptance(const real *w0, const real *d0, double U0, const real *w1, const real *d1, double U1,
                              double eps, size_t n) {
    const real half_eps = (real)eps * (real)0.5, two_eps = (real)2 * (real)eps;
    double back = 0.0, forth = 0.0;
    real log_back, log_forth, a;
    size_t j;
    for (j = 0; j < n; j++) {
        real to_w0 = (w0[j] - w1[j]) - half_eps * -d1[j];
        real to_w1 = (w1[j] - w0[j]) - half_eps * -d0[j];
        back += (double)(to_w0 * to_w0);
        forth += (double)(to_w1 * to_w1);
    }
    log_back = -(real)back / two_eps;
    log_forth = -(real)forth / two_eps;
    a = log_back - log_forth + (real)U0 - (real)U1;
    if (!isfinite(a)) return 0.0;
    return a >= 0 ? 1.0 : exp((double)a);
}

static size_t sgld_chain_bytes(const LlcProblem *p) {
    Arena a = arena_measuring();
    int k;
    for (k = 0; k < 5; k++) arena_take(&a, p->n_params, sizeof(real));   /* w, grad, drift, previous w and drift */
    arena_take(&a, (size_t)p->n_samples, sizeof(int));
    arena_take(&a, (size_t)p->n_samples, sizeof(int));   /* the previous minibatch */
    arena_take(&a, SGLD_NOISE_BLOCK, sizeof(real));
    return a.used;
}

static void run_chain(EstimateJob *job, int c) {
    const LlcProblem *p = job->p;
    const SgldSettings *s = job->s;
    LlcResult *r = job->r;
    size_t n = p->n_params, j, j0;
    int n_batches = (p->n_samples + s->batch - 1) / s->batch;
    long n_steps = (long)s->draws * s->every + s->burnin, i;
    Arena state;
    real *w, *grad, *xi, *drift, *w_prev, *drift_prev;
    int *order, *prev_samples, prev_nb = 0;
    double potential_prev = 0.0, mala_sum = 0.0;
    long mala_count = 0;
    const real half_lr = (real)(s->lr / 2), sqrt_lr = (real)sqrt(s->lr), nbeta = (real)r->nbeta;
    const real localization = (real)s->localization, noise = (real)s->noise_level;
    const int noisy = s->noise_level != 0;   /* even where noise_level rounds to 0 as a real */
    unsigned long long n_unchanged = 0, n_unchanged_nonzero = 0, n_nonzero = 0;
    long reported = 0;
    void *chain;
    Rng rng;
    int k;

    arena_init(&state, sgld_chain_bytes(p), "a chain's parameters");
    w = arena_take(&state, n, sizeof(real));
    grad = arena_take(&state, n, sizeof(real));
    drift = arena_take(&state, n, sizeof(real));
    w_prev = arena_take(&state, n, sizeof(real));
    drift_prev = arena_take(&state, n, sizeof(real));
    order = arena_take(&state, (size_t)p->n_samples, sizeof(int));
    prev_samples = arena_take(&state, (size_t)p->n_samples, sizeof(int));
    xi = arena_take(&state, SGLD_NOISE_BLOCK, sizeof(real));

    /* chain c uses the stream that starts c + 1 jumps after the seed's */
    rng_seed(&rng, s->seed);
    for (k = 0; k <= c; k++) rng_jump(&rng);
    memcpy(w, p->w_star, n * sizeof(real));
    for (k = 0; k < p->n_samples; k++) order[k] = k;
    chain = p->chain_new(p, w);

    for (i = 0; i < n_steps && !g_interrupted; i++) {
        int b = (int)(i % n_batches), nb, diverged = 0;
        const int *samples;
        double loss;

        if (b == 0 && s->shuffle) rng_shuffle(&rng, order, p->n_samples);
        nb = batch_samples(order, p->n_samples, s->batch, b, &samples);
        loss = p->loss_grad(chain, samples, nb, grad);

        if (i >= s->burnin && (i + 1 - s->burnin) % s->every == 0) {
            int draw = (int)((i - s->burnin) / s->every);
            r->loss_trace[(size_t)c * s->draws + draw] = loss;
            if (isfinite(loss)) r->draws_done[c] = draw + 1;
        }

        /* drift d = nbeta g + localization (w - w*) and potential U = nbeta L + localization/2 ||w - w*||^2,
         * then the MALA acceptance of the step that led here */
        {
            double distance2 = 0.0, potential;
            for (j = 0; j < n; j++) {
                real offset = w[j] - p->w_star[j];
                drift[j] = nbeta * grad[j] + localization * offset;
                distance2 += (double)offset * offset;
            }
            potential = r->nbeta * loss + 0.5 * s->localization * distance2;
            if (i > 0 && isfinite(potential)) {
                /* devinterp's formula takes U here on this step's minibatch and U at the previous point on
                 * the previous one; with mala_same_batch both use the previous minibatch */
                double here = potential;
                if (s->mala_same_batch)
                    here = r->nbeta * p->loss_grad(chain, prev_samples, prev_nb, NULL) +
                           0.5 * s->localization * distance2;
                mala_sum += mala_acceptance(w_prev, drift_prev, potential_prev, w, drift, here, s->lr, n);
                mala_count++;
            }
            potential_prev = potential;
            memcpy(prev_samples, samples, (size_t)nb * sizeof(int));
            prev_nb = nb;
            memcpy(w_prev, w, n * sizeof(real));
            memcpy(drift_prev, drift, n * sizeof(real));
        }

        /* w <- w - (lr/2) d + sqrt(lr) noise xi, with the normals xi drawn a block at a time */
        for (j0 = 0; j0 < n; j0 += SGLD_NOISE_BLOCK) {
            size_t len = n - j0 < SGLD_NOISE_BLOCK ? n - j0 : SGLD_NOISE_BLOCK;
            real *wb = w + j0;
            const real *db = drift + j0, *w0 = p->w_star + j0;
            rng_fill_normal(&rng, xi, len);
            for (j = 0; j < len; j++) {
                real old = wb[j];
                real step = -half_lr * db[j] + sqrt_lr * noise * xi[j];
                /* With lr > 0 the exact step is zero only when drift and noise are. Otherwise an unchanged w is
                 * a lost update, also where the rounded step underflowed to 0. */
                int lost;
                wb[j] = old + step;
                lost = wb[j] == old && (db[j] != 0 || (noisy && xi[j] != 0));
                n_unchanged += lost;
                n_unchanged_nonzero += lost && w0[j] != 0;
                diverged |= !isfinite(wb[j]);
            }
        }
        if (!isfinite(loss) || diverged) {
            /* The first draw without a finite loss is the number of draws recorded, because draws_done
             * counts a draw of this step only when its loss, taken before the update, is finite. */
            r->diverged_step[c] = (int)i;
            r->diverged_draw[c] = i >= s->burnin ? r->draws_done[c] : -1;
            break;
        }
        if (((i + 1) & 15) == 0) {
            job_report(job, i + 1 - reported);
            reported = i + 1;
        }
    }
    job_report(job, i - reported);
    r->mala_chain[c] = mala_count ? mala_sum / mala_count : NAN;
    for (j = 0; j < n; j++) n_nonzero += p->w_star[j] != 0;
    job_lock(job);
    job->n_updates += (unsigned long long)i * n;
    job->n_unchanged += n_unchanged;
    job->n_updates_nonzero += (unsigned long long)i * n_nonzero;
    job->n_unchanged_nonzero += n_unchanged_nonzero;
    job_unlock(job);

    p->chain_free(chain);
    arena_free(&state);
}

static void *chain_worker(void *arg) {
    EstimateJob *job = arg;
    for (;;) {
        int c;
        job_lock(job);
        c = job->next_chain++;
        job_unlock(job);
        if (c >= job->s->chains) break;
        run_chain(job, c);
    }
    return NULL;
}

/* The loss at w*: init_loss is the mean over the first min(chains, batches)
 * unshuffled batches. The gradient statistics use the first K = min(16,
 * batches) of them: the norm of their mean gradient and its standard error
 * sqrt(trace(covariance) / K). At a minimum of the loss the mean
 * gradient is noise of about that size. Far above it, w* is not a minimum,
 * which the LLC assumes. */
static void loss_at_w_star(const LlcProblem *p, const SgldSettings *s, LlcResult *r) {
    int n_batches = (p->n_samples + s->batch - 1) / s->batch, k, nb;
    int use = s->chains < n_batches ? s->chains : n_batches;
    int K = n_batches < 16 ? n_batches : 16;
    if (K < use) K = use;
    int *order = xmalloc((size_t)p->n_samples * sizeof(int), "the sample order");
    real *w = xmalloc(p->n_params * sizeof(real), "a copy of w*");
    real *grad = xmalloc(p->n_params * sizeof(real), "a gradient");
    double *mean = xcalloc(p->n_params, sizeof(double), "the mean gradient"), sum = 0.0, norm2 = 0.0, sq = 0.0;
    size_t j;
    void *chain;
    memcpy(w, p->w_star, p->n_params * sizeof(real));
    for (k = 0; k < p->n_samples; k++) order[k] = k;
    chain = p->chain_new(p, w);
    for (k = 0; k < K; k++) {
        const int *samples;
        double loss;
        nb = batch_samples(order, p->n_samples, s->batch, k, &samples);
        loss = p->loss_grad(chain, samples, nb, grad);
        if (k < use) sum += loss;
        for (j = 0; j < p->n_params; j++) {
            mean[j] += grad[j];
            sq += (double)grad[j] * grad[j];
        }
    }
    for (j = 0; j < p->n_params; j++) {
        mean[j] /= K;
        norm2 += mean[j] * mean[j];
    }
    r->init_loss = sum / use;
    r->grad_batches = K;
    r->grad_norm = sqrt(norm2);
    /* sum over batches of ||g_k - mean||^2 = sum ||g_k||^2 - K ||mean||^2 */
    r->grad_noise = K > 1 ? sqrt(fmax(sq - K * norm2, 0.0) / (K - 1) / K) : NAN;
    /* NOTE: with a single batch (full-batch data) there is no noise estimate, and
     * a gradient norm above 1e-3 is taken to mean w* is not a minimum. */
    r->not_minimum = K > 1 ? r->grad_norm > 3 * r->grad_noise && r->grad_norm > 1e-6 : r->grad_norm > 1e-3;
    p->chain_free(chain);
    free(order);
    free(w);
    free(grad);
    free(mean);
}

/* Split-R-hat (Gelman et al.) of the chains' loss traces over their first n
 * draws: each chain is split into halves, and the variance between the
 * halves' means is compared with the variance within them. Near 1 when the
 * chains sample the same distribution. */
static double split_r_hat(const double *trace, const int *ok, int chains, int draws, int n) {
    int half = n / 2, m = 0, c, h, d;
    double grand = 0.0, between = 0.0, within = 0.0, means[2 * 4096];
    if (half < 2) return NAN;
    for (c = 0; c < chains && m < 2 * 4096 - 1; c++) {
        if (!ok[c]) continue;
        for (h = 0; h < 2; h++) {
            const double *x = trace + (size_t)c * draws + h * half;
            double mu = 0.0, var = 0.0;
            for (d = 0; d < half; d++) mu += x[d];
            mu /= half;
            for (d = 0; d < half; d++) var += (x[d] - mu) * (x[d] - mu);
            within += var / (half - 1);
            means[m++] = mu;
            grand += mu;
        }
    }
    if (m < 4) return NAN;
    grand /= m;
    for (c = 0; c < m; c++) between += (means[c] - grand) * (means[c] - grand);
    between = half * between / (m - 1);
    within /= m;
    if (within <= 0) return between > 0 ? INFINITY : 1.0;
    return sqrt(((half - 1.0) / half * within + between / half) / within);
}

/* Least-squares slope of x[0 .. n-1] against its index. */
static double trace_slope(const double *x, int n) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int d;
    for (d = 0; d < n; d++) sx += d, sy += x[d], sxx += (double)d * d, sxy += d * x[d];
    return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

/* Trace diagnostics over the chains that did not diverge: split-R-hat; the
 * least-squares slope of the second half of the draws, averaged over the
 * chains, and whether it is flat: within three standard errors of zero,
 * the error estimated from the spread of the chains' own slopes (so that
 * the autocorrelation within a chain is accounted for), or with a single
 * chain when its change across the half is within one standard deviation
 * of its values (settled, which calibration requires of every chain count);
 * and the chains whose mean lies below init_loss. */
static void trace_diagnostics(LlcResult *r) {
    int *ok = xcalloc((size_t)r->chains, sizeof(int), "chain flags");
    int c, d, n = r->draws, n_ok = 0, start, len, n_mala = 0;
    double *mean_trace = xcalloc((size_t)r->draws, sizeof(double), "a trace");
    double var = 0, mala = 0, slope_sum = 0, slope_sq = 0, mean_value = 0;
    for (c = 0; c < r->chains; c++) {
        ok[c] = r->diverged_step[c] < 0 && r->draws_done[c] > 0;
        if (!ok[c]) continue;
        n_ok++;
        if (r->draws_done[c] < n) n = r->draws_done[c];
        if (isfinite(r->llc_chain[c]) && r->llc_chain[c] < 0) r->n_below_init++;
        if (isfinite(r->mala_chain[c])) mala += r->mala_chain[c], n_mala++;
    }
    r->mala_mean = n_mala ? mala / n_mala : NAN;
    r->r_hat = n_ok >= 2 ? split_r_hat(r->loss_trace, ok, r->chains, r->draws, n) : NAN;
    r->second_half_slope = r->second_half_change = r->second_half_std = NAN;
    r->flat = 0;
    if (n_ok > 0 && n >= 4) {
        start = n / 2;
        len = n - start;
        for (d = 0; d < n; d++)
            for (c = 0; c < r->chains; c++)
                if (ok[c]) mean_trace[d] += r->loss_trace[(size_t)c * r->draws + d] / n_ok;
        for (c = 0; c < r->chains; c++) {
            double b;
            if (!ok[c]) continue;
            b = trace_slope(r->loss_trace + (size_t)c * r->draws + start, len);
            slope_sum += b;
            slope_sq += b * b;
        }
        for (d = start; d < n; d++) mean_value += mean_trace[d] / len;
        for (d = start; d < n; d++) var += (mean_trace[d] - mean_value) * (mean_trace[d] - mean_value);
        r->second_half_slope = slope_sum / n_ok;
        r->second_half_change = r->second_half_slope * len;
        r->second_half_std = sqrt(var / (len - 1));
        r->settled = fabs(r->second_half_change) <= r->second_half_std;
        if (n_ok >= 2) {
            double sd = sqrt(fmax(slope_sq - n_ok * r->second_half_slope * r->second_half_slope, 0.0) / (n_ok - 1));
            r->flat = fabs(r->second_half_slope) <= 3 * sd / sqrt((double)n_ok);
        } else {
            r->flat = r->settled;
        }
    }
    free(ok);
    free(mean_trace);
}

int llc_estimate(const LlcProblem *p, const SgldSettings *s, LlcResult *r) {
    EstimateJob job;
    int c, n_threads, n_ok = 0;
    size_t k;
    double sum = 0.0, sq = 0.0;

    memset(r, 0, sizeof *r);
    if (s->chains < 1 || s->draws < 1 || s->every < 1 || s->burnin < 0 || s->batch < 1 ||
        p->n_samples < 1 || !(s->lr > 0) || sgld_steps_per_chain(s) > INT_MAX)
        return -1;
    r->chains = s->chains;
    r->draws = s->draws;
    r->nbeta = s->nbeta > 0 ? s->nbeta : sgld_default_nbeta(s->batch);
    r->loss_trace = xmalloc((size_t)s->chains * s->draws * sizeof(double), "the loss trace");
    r->llc_chain = xcalloc((size_t)s->chains, sizeof(double), "the chain results");
    r->diverged_step = xmalloc((size_t)s->chains * sizeof(int), "the chain results");
    r->diverged_draw = xmalloc((size_t)s->chains * sizeof(int), "the chain results");
    r->draws_done = xcalloc((size_t)s->chains, sizeof(int), "the chain results");
    for (k = 0; k < (size_t)s->chains * s->draws; k++) r->loss_trace[k] = NAN;
    for (c = 0; c < s->chains; c++) r->diverged_step[c] = r->diverged_draw[c] = -1;

    memset(&job, 0, sizeof job);
    job.p = p;
    job.s = s;
    job.r = r;
    job.steps_total = (long long)s->chains * sgld_steps_per_chain(s);
    job.t_start = job.t_last_report = now_seconds();
    r->mala_chain = xmalloc((size_t)s->chains * sizeof(double), "the chain results");
    for (c = 0; c < s->chains; c++) r->mala_chain[c] = NAN;
    loss_at_w_star(p, s, r);
    if (!isfinite(r->init_loss)) {
        /* nothing to sample from: every chain counts as diverged at its first step */
        for (c = 0; c < s->chains; c++) {
            r->diverged_step[c] = 0;
            r->diverged_draw[c] = s->burnin > 0 ? -1 : 0;
            r->llc_chain[c] = NAN;
        }
        r->n_diverged = s->chains;
        r->llc_mean = r->llc_std = NAN;
        r->mala_mean = r->r_hat = NAN;
        r->second_half_slope = r->second_half_change = r->second_half_std = NAN;
        return 0;
    }

    n_threads = s->threads > 0 ? s->threads : cpu_count();
    if (n_threads > s->chains) n_threads = s->chains;
#if LLC_THREADS
    pthread_mutex_init(&job.lock, NULL);
    if (n_threads > 1) {
        pthread_t *tid = xmalloc((size_t)n_threads * sizeof(pthread_t), "threads");
        int started = 0;
        for (c = 0; c < n_threads; c++)
            if (pthread_create(&tid[c], NULL, chain_worker, &job) == 0) started++;
            else break;
        if (started == 0) chain_worker(&job);
        for (c = 0; c < started; c++) pthread_join(tid[c], NULL);
        free(tid);
    } else {
        chain_worker(&job);
    }
    pthread_mutex_destroy(&job.lock);
#else
    chain_worker(&job);
#endif

    /* per chain: nbeta (mean draw - init loss) over the draws it recorded */
    for (c = 0; c < s->chains; c++) {
        double mean = 0.0;
        int d, n_draws = r->draws_done[c];
        if (r->diverged_step[c] >= 0 || n_draws == 0) {
            r->llc_chain[c] = NAN;
            r->n_diverged += r->diverged_step[c] >= 0;
            continue;
        }
        for (d = 0; d < n_draws; d++) mean += r->loss_trace[(size_t)c * s->draws + d];
        mean /= n_draws;
        r->llc_chain[c] = r->nbeta * (mean - r->init_loss);
        sum += r->llc_chain[c];
        n_ok++;
    }
    r->llc_mean = n_ok > 0 ? sum / n_ok : NAN;
    for (c = 0; c < s->chains; c++)
        if (isfinite(r->llc_chain[c])) sq += (r->llc_chain[c] - r->llc_mean) * (r->llc_chain[c] - r->llc_mean);
    r->llc_std = n_ok > 1 ? sqrt(sq / (n_ok - 1)) : NAN;
    r->unchanged_fraction = job.n_updates ? (double)job.n_unchanged / (double)job.n_updates : 0.0;
    r->unchanged_fraction_nonzero =
        job.n_updates_nonzero ? (double)job.n_unchanged_nonzero / (double)job.n_updates_nonzero : 0.0;
    trace_diagnostics(r);
    r->seconds = now_seconds() - job.t_start;
    r->interrupted = g_interrupted != 0;
    return 0;
}

void llc_result_free(LlcResult *r) {
    free(r->loss_trace);
    free(r->mala_chain);
    free(r->llc_chain);
    free(r->diverged_step);
    free(r->diverged_draw);
    free(r->draws_done);
    memset(r, 0, sizeof *r);
}

/* Calibration: short chains over a grid of step sizes and nbeta values, as
 * devinterp's epsilon-beta analysis suggests. A grid point is stable when no
 * chain diverges, the mean MALA acceptance (with both potentials on the same
 * minibatch, because the loss difference between two minibatches times nbeta
 * swamps devinterp's formula for small batches) is at least 0.95, the second half
 * of the mean loss trace is flat and the LLC is not negative. devinterp's
 * notebooks call an acceptance of 0.9 to 0.95 roughly optimal; on the
 * known-answer models an acceptance of 0.9 already biases the LLC upwards by
 * up to 40 %, hence the upper end. For each nbeta the best point is its
 * largest stable step size. The recommended nbeta is, among those whose LLC
 * there is within 20 % of their neighbours' (the flat region; all of them if
 * none is), the one closest to the default batch / ln(batch); the
 * recommended step size is its largest stable one. */
typedef struct {
    int n_lrs, n_nbetas;
    const double *lrs, *nbetas;
    double *llc_mean, *llc_std, *mala, *r_hat;   /* [i_lr * n_nbetas + i_nbeta] */
    int *n_diverged, *flat, *stable;
    char (*reason)[96];                          /* why a point is unstable; empty when stable */
    int best;                                    /* index of the recommended point, or -1 */
    double lr, nbeta;
    char explanation[512];
} Calibration;

static void calibration_free(Calibration *cal) {
    free(cal->llc_mean);
    free(cal->llc_std);
    free(cal->mala);
    free(cal->r_hat);
    free(cal->n_diverged);
    free(cal->flat);
    free(cal->stable);
    free(cal->reason);
    memset(cal, 0, sizeof *cal);
}

static int calibration_choose(Calibration *cal, const SgldSettings *base);

static int calibrate(const LlcProblem *p, const SgldSettings *base, const double *lrs, int n_lrs, const double *nbetas,
                     int n_nbetas, Calibration *cal) {
    int n = n_lrs * n_nbetas, i, j;
    memset(cal, 0, sizeof *cal);
    cal->n_lrs = n_lrs;
    cal->n_nbetas = n_nbetas;
    cal->lrs = lrs;
    cal->nbetas = nbetas;
    cal->llc_mean = xcalloc((size_t)n, sizeof(double), "the calibration grid");
    cal->llc_std = xcalloc((size_t)n, sizeof(double), "the calibration grid");
    cal->mala = xcalloc((size_t)n, sizeof(double), "the calibration grid");
    cal->r_hat = xcalloc((size_t)n, sizeof(double), "the calibration grid");
    cal->n_diverged = xcalloc((size_t)n, sizeof(int), "the calibration grid");
    cal->flat = xcalloc((size_t)n, sizeof(int), "the calibration grid");
    cal->stable = xcalloc((size_t)n, sizeof(int), "the calibration grid");
    cal->reason = xcalloc((size_t)n, sizeof *cal->reason, "the calibration grid");
    cal->best = -1;

    for (i = 0; i < n_lrs && !g_interrupted; i++) {
        for (j = 0; j < n_nbetas && !g_interrupted; j++) {
            int k = i * n_nbetas + j, quiet = g_quiet;
            SgldSettings s = *base;
            LlcResult r;
            s.lr = lrs[i];
            s.nbeta = nbetas[j];
            s.mala_same_batch = 1;
            g_quiet = 1;
            if (llc_estimate(p, &s, &r) != 0) {
                g_quiet = quiet;
                calibration_free(cal);
                return -1;
            }
            g_quiet = quiet;
            if (g_interrupted) {
                llc_result_free(&r);
                return 1;
            }
            cal->llc_mean[k] = r.llc_mean;
            cal->llc_std[k] = r.llc_std;
            cal->mala[k] = r.mala_mean;
            cal->r_hat[k] = r.r_hat;
            cal->n_diverged[k] = r.n_diverged;
            cal->flat[k] = r.flat && r.settled;
            if (r.n_diverged) snprintf(cal->reason[k], sizeof cal->reason[k], "%d %s diverged", r.n_diverged,
                                     r.n_diverged == 1 ? "chain" : "chains");
            else if (!(r.mala_mean >= 0.95))
                snprintf(cal->reason[k], sizeof cal->reason[k], "MALA acceptance %.3f < 0.95",
                         floor(1000 * r.mala_mean) / 1000);   /* rounded down, never to 0.950 */
            else if (!r.flat || !r.settled)
                snprintf(cal->reason[k], sizeof cal->reason[k], "loss still moving in the second half");
            else if (!(r.llc_mean >= 0)) snprintf(cal->reason[k], sizeof cal->reason[k], "negative LLC");
            cal->stable[k] = cal->reason[k][0] == 0;
            progress("calibration: lr %g, nbeta %g: llc %.4g, MALA %.2f, %s", lrs[i], nbetas[j], r.llc_mean,
                     r.mala_mean, cal->stable[k] ? "stable" : cal->reason[k]);
            llc_result_free(&r);
        }
    }
    if (g_interrupted) return 1;

    /* choose, then confirm the choice with chains four times as long; a
     * point that fails the check is marked unstable and the choice repeated
     * (chains can stay calm for a short run and diverge later) */
    for (;;) {
        SgldSettings s = *base;
        LlcResult r;
        int k, quiet = g_quiet;
        if (calibration_choose(cal, base) != 0 || cal->best < 0) return 0;
        k = cal->best;
        s.lr = cal->lr;
        s.nbeta = cal->nbeta;
        s.draws = 4 * base->draws;
        s.mala_same_batch = 1;
        g_quiet = 1;
        llc_estimate(p, &s, &r);
        g_quiet = quiet;
        if (g_interrupted) {
            llc_result_free(&r);
            return 1;
        }
        if (r.n_diverged)
            snprintf(cal->reason[k], sizeof cal->reason[k], "%d %s diverged in a 4x longer check", r.n_diverged,
                     r.n_diverged == 1 ? "chain" : "chains");
        else if (!(r.mala_mean >= 0.95))
            snprintf(cal->reason[k], sizeof cal->reason[k], "MALA acceptance %.3f < 0.95 in a 4x longer check",
                     floor(1000 * r.mala_mean) / 1000);
        else if (!(r.llc_mean >= 0))
            snprintf(cal->reason[k], sizeof cal->reason[k], "negative LLC in a 4x longer check");
        llc_result_free(&r);
        if (!cal->reason[k][0]) break;
        progress("calibration: lr %g, nbeta %g: %s", cal->lr, cal->nbeta, cal->reason[k]);
        cal->stable[k] = 0;
        cal->best = -1;
    }
    return 0;
}

/* Picks the recommended point of a filled calibration grid (see above). */
static int calibration_choose(Calibration *cal, const SgldSettings *base) {
    int n_lrs = cal->n_lrs, n_nbetas = cal->n_nbetas, i, j;
    const double *lrs = cal->lrs, *nbetas = cal->nbetas;
    cal->best = -1;
    {
        int *top = xmalloc((size_t)n_nbetas * sizeof(int), "the calibration grid");
        int n_with = 0, n_flat = 0, pass;
        double default_nbeta = sgld_default_nbeta(base->batch), best_distance = INFINITY;
        for (j = 0; j < n_nbetas; j++) {
            top[j] = -1;
            for (i = 0; i < n_lrs; i++)
                if (cal->stable[i * n_nbetas + j] && (top[j] < 0 || lrs[i] > lrs[top[j]])) top[j] = i;
            n_with += top[j] >= 0;
        }
        if (n_with == 0) {
            snprintf(cal->explanation, sizeof cal->explanation,
                     "no grid point is stable (no divergence, MALA acceptance >= 0.95, flat second half, LLC >= 0)");
            free(top);
            return 0;
        }

        /* the flat region: LLC within 20 % of the neighbours that have a stable point */
        for (pass = 0; pass < 2 && cal->best < 0; pass++) {
            for (j = 0; j < n_nbetas; j++) {
                int side, flat = 1;
                double llc, distance;
                if (top[j] < 0) continue;
                llc = cal->llc_mean[top[j] * n_nbetas + j];
                for (side = -1; side <= 1; side += 2) {
                    int nb = j + side;
                    double other;
                    if (nb < 0 || nb >= n_nbetas || top[nb] < 0) continue;
                    other = cal->llc_mean[top[nb] * n_nbetas + nb];
                    if (fabs(other - llc) > 0.2 * fmax(fabs(llc), 1e-12)) flat = 0;
                }
                if (pass == 0 && !flat) continue;
                n_flat += pass == 0;
                distance = fabs(log(nbetas[j] / default_nbeta));
                if (distance < best_distance) best_distance = distance, cal->best = top[j] * n_nbetas + j;
            }
        }
        cal->lr = lrs[cal->best / n_nbetas];
        cal->nbeta = nbetas[cal->best % n_nbetas];
        if (n_with == 1)
            snprintf(cal->explanation, sizeof cal->explanation,
                     "only nbeta %g has a stable step size (so flatness in nbeta cannot be judged), and lr %g is its "
                     "largest: llc %.4g, MALA acceptance %.2f", cal->nbeta, cal->lr, cal->llc_mean[cal->best],
                     cal->mala[cal->best]);
        else
            snprintf(cal->explanation, sizeof cal->explanation,
                     "%d of %d nbeta values have a stable step size, %d of them in a region where the LLC is flat "
                     "in nbeta (within 20 %% of its neighbours); nbeta %g is %s closest to the default %g, and lr %g "
                     "is its largest stable step size: llc %.4g, MALA acceptance %.2f",
                     n_with, n_nbetas, n_flat, cal->nbeta, n_flat ? "the flat one" : "the one", default_nbeta,
                     cal->lr, cal->llc_mean[cal->best], cal->mala[cal->best]);
        free(top);
    }
    return 0;
}

/* The LlcProblem of a model: its trainable parameters, a dataset and a loss. */
typedef struct {
    const Model *m;
    const Dataset *data;
    LossKind loss;
    int max_batch;
} ModelProblem;

typedef struct {
    const ModelProblem *mp;
    Weights w;           /* trainable tensors at the chain's w, fixed ones shared with the model */
    Weights g;           /* gradients, same layout */
    real *grad_fixed;    /* gradient of the fixed tensors, computed and discarded */
    Workspace *ws;
    int *ids, *seq_start, *row_src;
    real *dy;
    Arena arena;         /* holds this struct and every buffer above */
} ModelChain;

/* Points a chain's buffers into the arena (or only measures them). */
static void model_chain_layout(ModelChain *ch, Arena *a, const ModelProblem *mp) {
    const Model *m = mp->m;
    size_t max_rows = (size_t)mp->max_batch * (size_t)(m->cfg.max_seq_len + 1);
    Workspace measured;
    ch->mp = mp;
    ch->w.layer = arena_take(a, (size_t)m->cfg.n_layers, sizeof(LayerWeights));
    ch->g.layer = arena_take(a, (size_t)m->cfg.n_layers, sizeof(LayerWeights));
    ch->grad_fixed = arena_take(a, m->n_fixed, sizeof(real));
    ch->ws = arena_take(a, 1, sizeof(Workspace));
    workspace_layout(ch->ws ? ch->ws : &measured, a, &m->cfg, mp->max_batch);
    ch->ids = arena_take(a, max_rows, sizeof(int));
    ch->row_src = arena_take(a, max_rows, sizeof(int));
    ch->seq_start = arena_take(a, (size_t)mp->max_batch + 1, sizeof(int));
    ch->dy = arena_take(a, max_rows * (size_t)m->cfg.n_outputs, sizeof(real));
}

/* Bytes of one chain's arena: activations, batch buffers and gradients of
 * the fixed tensors. */
static size_t model_chain_bytes(const ModelProblem *mp) {
    Arena a = arena_measuring();
    ModelChain measured;
    arena_take(&a, 1, sizeof(ModelChain));
    model_chain_layout(&measured, &a, mp);
    return a.used;
}

static void *model_chain_new(const LlcProblem *p, real *w) {
    const ModelProblem *mp = p->ctx;
    ModelChain *ch;
    Arena a;
    arena_init(&a, model_chain_bytes(mp), "a chain's buffers");
    ch = arena_take(&a, 1, sizeof(ModelChain));
    model_chain_layout(ch, &a, mp);
    weights_bind(mp->m, w, mp->m->fixed, &ch->w);
    ch->arena = a;
    return ch;
}

static double model_loss_grad(void *chain, const int *samples, int n, real *grad) {
    ModelChain *ch = chain;
    const Model *m = ch->mp->m;
    Batch b = batch_gather(ch->mp->data, samples, n, ch->ids, ch->seq_start, ch->row_src);
    const real *y = model_forward(&m->cfg, &ch->w, ch->ws, &b);
    double loss = loss_compute(ch->mp->loss, y, &b, ch->row_src, ch->mp->data, grad ? ch->dy : NULL);
    if (grad) {
        memset(grad, 0, m->n_params * sizeof(real));
        memset(ch->grad_fixed, 0, m->n_fixed * sizeof(real));
        weights_bind(m, grad, ch->grad_fixed, &ch->g);
        model_backward(&m->cfg, &ch->w, &ch->g, ch->ws, ch->dy);
    }
    return loss;
}

static void model_chain_free(void *chain) {
    ModelChain *ch = chain;
    Arena a = ch->arena;   /* ch lives inside it */
    arena_free(&a);
}

static LlcProblem model_problem(ModelProblem *mp) {
    LlcProblem p;
    p.n_params = mp->m->n_params;
    p.w_star = mp->m->params;
    p.n_samples = mp->data->n;
    p.ctx = mp;
    p.chain_new = model_chain_new;
    p.loss_grad = model_loss_grad;
    p.chain_free = model_chain_free;
    return p;
}

/* ---------------------------------------------------------------------------
 * Distillation: Adam on a student's trainable parameters.
 * ------------------------------------------------------------------------- */

/* Adam as PyTorch's torch.optim.Adam (no weight decay, no amsgrad). */
typedef struct {
    size_t n;
    double lr, beta1, beta2, eps;
    long t;            /* steps taken */
    real *m, *v;       /* [n] first and second moment estimates */
} Adam;

static void adam_init(Adam *a, size_t n, double lr) {
    a->n = n;
    a->lr = lr;
    a->beta1 = 0.9;
    a->beta2 = 0.999;
    a->eps = 1e-8;
    a->t = 0;
    a->m = xcalloc(n, sizeof(real), "Adam's moments");
    a->v = xcalloc(n, sizeof(real), "Adam's moments");
}

static void adam_free(Adam *a) {
    free(a->m);
    free(a->v);
    a->m = a->v = NULL;
}

/* w -= lr * m_hat / (sqrt(v_hat) + eps), with bias-corrected moments. */
static void adam_step(Adam *a, real *w, const real *grad) {
    size_t j;
    double c1, c2;
    a->t++;
    c1 = 1.0 - pow(a->beta1, (double)a->t);
    c2 = 1.0 - pow(a->beta2, (double)a->t);
    for (j = 0; j < a->n; j++) {
        double m_hat, v_hat;
        a->m[j] = (real)(a->beta1 * a->m[j] + (1.0 - a->beta1) * grad[j]);
        a->v[j] = (real)(a->beta2 * a->v[j] + (1.0 - a->beta2) * (double)grad[j] * grad[j]);
        m_hat = a->m[j] / c1;
        v_hat = a->v[j] / c2;
        w[j] -= (real)(a->lr * m_hat / (sqrt(v_hat) + a->eps));
    }
}

/* The student of a teacher: the teacher's layers, heads, d_head, vocabulary
 * and outputs, with d_model and d_mlp shrunk by the fraction `shrink`
 * (rounded up, at least 1), every tensor trainable, and a learned
 * unembedding in place of the teacher's fixed output projection. */
static int shrink_dim(int d, double shrink) {
    /* the small offset keeps (1 - 0.48) * 50 = 26.000000000000004 at 26 */
    int n = (int)ceil((1.0 - shrink) * d - 1e-9);
    return n < 1 ? 1 : n;
}

static char **copy_strings(char **s, int n) {
    char **out = xcalloc((size_t)n, sizeof(char *), "strings");
    int i;
    for (i = 0; i < n; i++) out[i] = xstrdup(s[i]);
    return out;
}

/* Initial weights, from the seeded stream rng: embeddings N(0, 1), weight
 * matrices N(0, 1 / fan_in), biases zero. */
static void student_init(Model *s, const Model *t, double shrink, const char *teacher_path, Rng *rng) {
    int *trainable, k;
    char text[64];
    memset(s, 0, sizeof *s);
    s->cfg = t->cfg;
    s->cfg.d_model = shrink_dim(t->cfg.d_model, shrink);
    s->cfg.d_mlp = shrink_dim(t->cfg.d_mlp, shrink);
    trainable = xmalloc((size_t)model_tensor_count(s->cfg.n_layers) * sizeof(int), "tensor flags");
    for (k = 0; k < model_tensor_count(s->cfg.n_layers); k++) trainable[k] = 1;
    model_layout(s, trainable);
    free(trainable);

    s->vocab = copy_strings(t->vocab, t->cfg.n_vocab);
    s->output_values = copy_strings(t->output_values, t->cfg.n_outputs);
    if (model_meta(t, "program")) model_set_meta(s, "program", model_meta(t, "program"));
    model_set_meta(s, "source", "llc distill");
    model_set_meta(s, "teacher", teacher_path);
    snprintf(text, sizeof text, "%g", shrink);
    model_set_meta(s, "shrink", text);

    for (k = 0; k < s->n_tensors; k++) {
        const TensorInfo *ti = &s->tensors[k];
        real *v = s->params + ti->offset;
        double std = 1.0 / sqrt((double)ti->rows);   /* a weight matrix */
        size_t j;
        if (k < 2) std = 1.0;                           /* the embeddings */
        if (model_tensor_is_bias(&s->cfg, k)) std = 0.0;
        for (j = 0; j < ti->numel; j++) v[j] = (real)(std * rng_normal(rng));
    }
}

typedef struct {
    double shrink;
    int steps;
    double lr;             /* Adam's step size */
    int batch;             /* sequences per step */
    uint64_t seed;
    int eval_samples;      /* held-out sequences for the agreement */
    double restored_at;    /* agreement that counts as restoring the teacher */
    double tolerance;      /* numerical outputs agree when this close */
} DistillSettings;

typedef struct {
    LossKind loss;         /* kl for categorical outputs, mse for numerical ones */
    double final_loss;     /* mean training loss over the last 100 steps (or fewer) */
    double eval_loss;      /* the same loss on the held-out inputs */
    double agreement;      /* share of held-out non-BOS positions where student and teacher agree */
    int restored;
    int steps_done;
    double seconds;
    int interrupted;
} DistillResult;

/* Runs model over d in batches and returns the mean loss against d's
 * reference; stores the share of non-BOS positions where the model agrees
 * with the reference: the same argmax, or within tolerance for a numerical
 * output. */
static double model_agreement(const Model *m, const Dataset *d, LossKind loss, double tolerance,
                              int batch, double *agreement) {
    const ModelConfig *c = &m->cfg;
    Workspace *ws = workspace_new(c, batch);
    int *samples = xmalloc((size_t)batch * sizeof(int), "a batch");
    int *ids = xmalloc((size_t)ws->max_rows * sizeof(int), "a batch");
    int *row_src = xmalloc((size_t)ws->max_rows * sizeof(int), "a batch");
    int *seq_start = xmalloc((size_t)(batch + 1) * sizeof(int), "a batch");
    long n_rows = 0, n_agree = 0;
    double loss_sum = 0.0;
    int i, j, r, n;

    for (i = 0; i < d->n; i += batch) {
        const real *y;
        Batch b;
        n = d->n - i < batch ? d->n - i : batch;
        for (j = 0; j < n; j++) samples[j] = i + j;
        b = batch_gather(d, samples, n, ids, seq_start, row_src);
        y = model_forward(c, &m->w, ws, &b);
        loss_sum += loss_compute(loss, y, &b, row_src, d, NULL) * (b.n_rows - b.n_seqs);
        for (r = 0; r < b.n_rows; r++) {
            size_t src = (size_t)row_src[r];
            const real *yr = y + (size_t)r * c->n_outputs;
            if (src % (size_t)d->stride == 0) continue;   /* BOS */
            n_rows++;
            if (c->output_kind == OUTPUT_CATEGORICAL)
                n_agree += argmax(yr, c->n_outputs) == d->label[src];
            else
                n_agree += fabs((double)yr[0] - d->target[src]) <= tolerance;
        }
    }
    free(samples);
    free(ids);
    free(row_src);
    free(seq_start);
    workspace_free(ws);
    *agreement = n_rows ? (double)n_agree / n_rows : 0.0;
    return n_rows ? loss_sum / n_rows : 0.0;
}

/* Trains student towards teacher with Adam on fresh random inputs (lengths
 * uniform in 1 .. max_seq_len, half of them from a random subset of the
 * vocab, see dataset_fill_random): KL(teacher || student) of the output
 * distributions at non-BOS positions for a categorical output, squared
 * error for a numerical one (a KL over one output is always zero).
 * Returns 0, or -1 when the loss turns non-finite. */
static int distill(const Model *teacher, Model *student, const DistillSettings *ds, DistillResult *res) {
    const ModelConfig *c = &teacher->cfg;
    Workspace *teacher_ws = workspace_new(c, ds->batch);
    real *grad = xmalloc(student->n_params * sizeof(real), "the student's gradient");
    int *all = xmalloc((size_t)ds->batch * sizeof(int), "a batch");
    int window = ds->steps < 100 ? ds->steps : 100, n_recent, step, i, status = 0;
    double *recent = xcalloc((size_t)window, sizeof(double), "recent losses");
    double t_start = now_seconds(), t_report = t_start;
    Dataset batch, held_out;
    ModelProblem mp;
    LlcProblem p;
    Adam adam;
    Rng rng;
    void *chain;

    memset(res, 0, sizeof *res);
    res->loss = c->output_kind == OUTPUT_CATEGORICAL ? LOSS_KL : LOSS_MSE;
    rng_seed(&rng, ds->seed);
    rng_jump(&rng);   /* the stream after student_init's */
    dataset_alloc(&batch, ds->batch, c);
    for (i = 0; i < ds->batch; i++) all[i] = i;
    mp.m = student;
    mp.data = &batch;
    mp.loss = res->loss;
    mp.max_batch = ds->batch;
    p = model_problem(&mp);
    chain = p.chain_new(&p, student->params);
    adam_init(&adam, student->n_params, ds->lr);

    for (step = 0; step < ds->steps && !g_interrupted; step++) {
        double loss;
        dataset_fill_random(&batch, c, 0, 1, &rng);
        dataset_label_with(&batch, teacher, teacher_ws);
        loss = p.loss_grad(chain, all, ds->batch, grad);
        if (!isfinite(loss)) {
            fprintf(stderr, "%s: the training loss became %g at step %d; try a smaller --lr\n", g_program,
                    loss, step);
            status = -1;
            break;
        }
        /* cosine decay of the step size from lr to lr / 10 */
        adam.lr = ds->lr * (0.55 + 0.45 * cos(LLC_PI * step / ds->steps));
        adam_step(&adam, student->params, grad);
        recent[step % window] = loss;
        res->steps_done = step + 1;
        if (now_seconds() - t_report >= 2.0) {
            t_report = now_seconds();
            progress("step %d/%d, loss %.4g, %.0f s", step + 1, ds->steps, loss, t_report - t_start);
        }
    }
    n_recent = res->steps_done < window ? res->steps_done : window;
    for (i = 0; i < n_recent; i++) res->final_loss += recent[i];
    res->final_loss = n_recent ? res->final_loss / n_recent : NAN;

    /* held-out inputs from a third stream */
    rng_jump(&rng);
    dataset_alloc(&held_out, ds->eval_samples, c);
    dataset_fill_random(&held_out, c, 0, 1, &rng);
    dataset_label(&held_out, teacher, ds->batch);
    res->eval_loss = model_agreement(student, &held_out, res->loss, ds->tolerance, ds->batch, &res->agreement);
    res->restored = res->agreement >= ds->restored_at;
    res->seconds = now_seconds() - t_start;
    res->interrupted = g_interrupted != 0;

    p.chain_free(chain);
    adam_free(&adam);
    dataset_free(&batch);
    dataset_free(&held_out);
    workspace_free(teacher_ws);
    free(grad);
    free(all);
    free(recent);
    return status;
}

/* ---------------------------------------------------------------------------
 * PCA of minibatch gradients and the loss landscape. K minibatch gradients
 * at w* form the rows of G [K, P]; after centring, the principal directions
 * are the top eigenvectors of the covariance G^T G / (K - 1). Its non-zero
 * eigenvalues are those of the K x K Gram matrix G G^T / (K - 1), and an
 * eigenvector u of the Gram matrix gives the direction G^T u, so power
 * iteration runs on the K x K matrix and the P x P covariance is never
 * formed.
 * ------------------------------------------------------------------------- */

/* Top two eigenpairs of the symmetric k x k matrix M by power iteration
 * with deflation: the second pair is found on M - value[0] vec0 vec0^T.
 * vecs holds vec0 then vec1 (unit length). Returns the iterations used. */
static int power_iteration_top2(const double *M, int k, uint64_t seed, double *values, double *vecs) {
    double *v = xmalloc((size_t)k * sizeof(double), "a vector"), *w = xmalloc((size_t)k * sizeof(double), "a vector");
    int which, i, j, it, total = 0;
    Rng rng;
    rng_seed(&rng, seed);
    for (which = 0; which < 2; which++) {
        double *out = vecs + (size_t)which * k, norm = 0.0, value = 0.0;
        for (i = 0; i < k; i++) v[i] = rng_normal(&rng);
        for (it = 0; it < 100000; it++) {
            double change = 0.0, dot;

            /* w = (M - deflation) v, kept orthogonal to the first vector */
            for (i = 0; i < k; i++) {
                w[i] = 0.0;
                for (j = 0; j < k; j++) w[i] += M[(size_t)i * k + j] * v[j];
            }
            for (j = 0; j < which; j++) {
                const double *prev = vecs + (size_t)j * k;
                dot = 0.0;
                for (i = 0; i < k; i++) dot += prev[i] * w[i];
                for (i = 0; i < k; i++) w[i] -= dot * prev[i];
            }

            /* Rayleigh quotient and normalisation */
            value = 0.0;
            norm = 0.0;
            for (i = 0; i < k; i++) value += v[i] * w[i], norm += w[i] * w[i];
            norm = sqrt(norm);
            if (norm == 0.0) break;   /* M is zero on what is left */
            for (i = 0; i < k; i++) {
                double next = w[i] / norm;
                change += (next - v[i]) * (next - v[i]);
                v[i] = next;
            }
            if (change < 1e-26) break;
        }
        total += it;
        values[which] = norm == 0.0 ? 0.0 : value;
        memcpy(out, v, (size_t)k * sizeof(double));
    }
    free(v);
    free(w);
    return total;
}

/* Fills d [P] with a seeded random unit vector, orthogonal to the unit
 * vector `orthogonal_to` unless that is NULL. The projection runs twice,
 * because one pass leaves a component of the order of the rounding error
 * of d's entries. */
static void random_unit_direction(real *d, size_t P, uint64_t seed, const real *orthogonal_to) {
    double norm = 0.0;
    size_t k;
    int pass;
    Rng rng;
    rng_seed(&rng, seed);
    for (k = 0; k < P; k++) d[k] = (real)rng_normal(&rng);
    for (pass = 0; orthogonal_to && pass < 2; pass++) {
        double dot = 0.0;
        for (k = 0; k < P; k++) dot += (double)d[k] * orthogonal_to[k];
        for (k = 0; k < P; k++) d[k] = (real)(d[k] - dot * orthogonal_to[k]);
    }
    for (k = 0; k < P; k++) norm += (double)d[k] * d[k];
    norm = sqrt(norm);
    for (k = 0; k < P && norm > 0; k++) d[k] = (real)(d[k] / norm);
}

typedef struct {
    const LlcProblem *p;
    const LandscapeSettings *s;
    Landscape *l;
    const int *order;      /* sample ids for the grid loss: all of them */
    int next_point;
    int n_threads;
#if LLC_THREADS
    pthread_mutex_t lock;
#endif
    double t_start, t_report;
    int done;
} GridJob;

/* Mean loss over every sample at the chain's current weights, in batches. */
static double full_loss(const LlcProblem *p, void *chain, const int *order, int batch) {
    double sum = 0.0;
    int i;
    for (i = 0; i < p->n_samples; i += batch) {
        int n = p->n_samples - i < batch ? p->n_samples - i : batch;
        sum += p->loss_grad(chain, order + i, n, NULL) * n;
    }
    return sum / p->n_samples;
}

static void *grid_worker(void *arg) {
    GridJob *job = arg;
    const LlcProblem *p = job->p;
    Landscape *l = job->l;
    int N = l->grid;
    real *w = xmalloc(p->n_params * sizeof(real), "grid weights");
    void *chain = p->chain_new(p, w);
    for (;;) {
        int point, i, j;
        size_t k;
#if LLC_THREADS
        pthread_mutex_lock(&job->lock);
#endif
        point = g_interrupted ? N * N : job->next_point++;
        if (point < N * N && now_seconds() - job->t_report >= 2.0) {
            job->t_report = now_seconds();
            progress("%d/%d grid points, %.0f s", job->done, N * N, job->t_report - job->t_start);
        }
#if LLC_THREADS
        pthread_mutex_unlock(&job->lock);
#endif
        if (point >= N * N) break;
        i = point / N;
        j = point % N;
        for (k = 0; k < p->n_params; k++)
            w[k] = (real)(p->w_star[k] + l->step_unit * (l->a[j] * l->d1[k] + l->b[i] * l->d2[k]));
        l->loss[point] = full_loss(p, chain, job->order, job->s->batch);
#if LLC_THREADS
        pthread_mutex_lock(&job->lock);
#endif
        job->done++;
#if LLC_THREADS
        pthread_mutex_unlock(&job->lock);
#endif
    }
    p->chain_free(chain);
    free(w);
    return NULL;
}

int landscape_compute(const LlcProblem *p, const LandscapeSettings *s, Landscape *l) {
    size_t P = p->n_params, k;
    int K = s->batches, N = s->grid, i, j, n_threads;
    int *order = xmalloc((size_t)p->n_samples * sizeof(int), "the sample order");
    real *G = xmalloc((size_t)K * P * sizeof(real), "the gradients");
    double *gram = xcalloc((size_t)K * K, sizeof(double), "the Gram matrix");
    double *mean = xcalloc(P, sizeof(double), "the mean gradient");
    double values[2], *u = xmalloc((size_t)2 * K * sizeof(double), "eigenvectors"), trace = 0.0, dot = 0.0;
    double real_eps, zero_tol;
    real *w = xmalloc(P * sizeof(real), "a copy of w*"), *grad = xmalloc(P * sizeof(real), "a gradient");
    void *chain;
    GridJob job;
    Rng rng;

    memset(l, 0, sizeof *l);
    if (K < 2 || N < 2 || !(s->span > 0) || s->batch < 1 || (long)K * s->batch > p->n_samples) return -1;
    l->seconds = now_seconds();
    l->grid = N;

    /* K minibatch gradients at w*, from a seeded permutation of the samples */
    rng_seed(&rng, s->seed);
    for (i = 0; i < p->n_samples; i++) order[i] = i;
    if (s->shuffle) rng_shuffle(&rng, order, p->n_samples);
    memcpy(w, p->w_star, P * sizeof(real));
    chain = p->chain_new(p, w);
    for (i = 0; i < K; i++) {
        p->loss_grad(chain, order + (size_t)i * s->batch, s->batch, grad);
        memcpy(G + (size_t)i * P, grad, P * sizeof(real));
    }

    /* centre, then the Gram matrix G G^T / (K - 1) and its top eigenpairs */
    for (i = 0; i < K; i++)
        for (k = 0; k < P; k++) mean[k] += (double)G[(size_t)i * P + k] / K;
    for (i = 0; i < K; i++)
        for (k = 0; k < P; k++) G[(size_t)i * P + k] = (real)(G[(size_t)i * P + k] - mean[k]);
    for (i = 0; i < K; i++)
        for (j = 0; j <= i; j++) {
            double sum = 0.0;
            for (k = 0; k < P; k++) sum += (double)G[(size_t)i * P + k] * G[(size_t)j * P + k];
            gram[(size_t)i * K + j] = gram[(size_t)j * K + i] = sum / (K - 1);
        }
    for (i = 0; i < K; i++) trace += gram[(size_t)i * K + i];
    power_iteration_top2(gram, K, s->seed + 1, values, u);

    /* An eigenvalue at or below zero_tol is rounding noise and counts as zero. Storing the centred
     * gradients as real moves the Gram matrix's eigenvalues by up to eps_real^2 trace / 4. Summing P
     * products per entry in double and iterating on the K x K matrix moves them by up to about
     * (P + K) eps_double trace. K centred gradients span at most K - 1 directions, so with K = 2 the
     * second eigenvalue is always such noise. */
    real_eps = sizeof(real) == sizeof(double) ? DBL_EPSILON : FLT_EPSILON;
    zero_tol = trace * (real_eps * real_eps + (double)(P + (size_t)K) * DBL_EPSILON);

    /* directions d = G^T u / ||G^T u|| */
    l->d1 = xcalloc(P, sizeof(real), "a direction");
    l->d2 = xcalloc(P, sizeof(real), "a direction");
    for (j = 0; j < 2; j++) {
        real *d = j == 0 ? l->d1 : l->d2;
        double norm = 0.0;
        for (k = 0; k < P; k++) {
            double sum = 0.0;
            for (i = 0; i < K; i++) sum += (double)G[(size_t)i * P + k] * u[(size_t)j * K + i];
            d[k] = (real)sum;
            norm += sum * sum;
        }
        norm = sqrt(norm);
        l->eigenvalue[j] = values[j];
        l->variance_share[j] = trace > 0 ? values[j] / trace : 0.0;
        if (j > K - 2 || !(values[j] > zero_tol) || !(norm > 0)) {
            /* no principal component j + 1, so a random direction replaces it */
            random_unit_direction(d, P, s->seed + 2 + (uint64_t)j, j == 1 ? l->d1 : NULL);
            l->random_directions++;
            l->variance_share[j] = NAN;
            continue;
        }
        for (k = 0; k < P; k++) d[k] = (real)(d[k] / norm);
    }
    for (k = 0; k < P; k++) dot += (double)l->d1[k] * l->d2[k];
    l->angle_degrees = acos(fmax(-1.0, fmin(1.0, dot))) * 180.0 / LLC_PI;

    /* grid coordinates, with an exact 0 at the centre of an odd grid. Each is span times a number in [-1, 1],
     * which is finite for any finite span, while 2 span overflows above half the largest double. */
    for (k = 0; k < P; k++) l->w_norm += (double)p->w_star[k] * p->w_star[k];
    l->w_norm = sqrt(l->w_norm);
    l->step_unit = s->scale_by_norm ? l->w_norm : 1.0;
    l->a = xmalloc((size_t)N * sizeof(double), "grid coordinates");
    l->b = xmalloc((size_t)N * sizeof(double), "grid coordinates");
    for (i = 0; i < N; i++) {
        l->a[i] = 2 * i == N - 1 ? 0.0 : s->span * (2.0 * i / (N - 1) - 1.0);
        l->b[i] = l->a[i];
    }
    for (i = 0; i < p->n_samples; i++) order[i] = i;
    l->centre_loss = full_loss(p, chain, order, s->batch);
    p->chain_free(chain);

    /* the loss at every grid point, spread over threads */
    l->loss = xmalloc((size_t)N * N * sizeof(double), "the grid");
    memset(&job, 0, sizeof job);
    job.p = p;
    job.s = s;
    job.l = l;
    job.order = order;
    job.t_start = job.t_report = now_seconds();
    n_threads = s->threads > 0 ? s->threads : cpu_count();
#if LLC_THREADS
    pthread_mutex_init(&job.lock, NULL);
    if (n_threads > 1) {
        pthread_t *tid = xmalloc((size_t)n_threads * sizeof(pthread_t), "threads");
        int started = 0;
        for (i = 0; i < n_threads; i++)
            if (pthread_create(&tid[i], NULL, grid_worker, &job) == 0) started++;
            else break;
        if (started == 0) grid_worker(&job);
        for (i = 0; i < started; i++) pthread_join(tid[i], NULL);
        free(tid);
    } else {
        grid_worker(&job);
    }
    pthread_mutex_destroy(&job.lock);
#else
    (void)n_threads;
    grid_worker(&job);
#endif
    l->min_loss = INFINITY;
    l->max_loss = -INFINITY;
    for (i = 0; i < N * N; i++) {
        if (isfinite(l->loss[i]) && l->loss[i] < l->min_loss) l->min_loss = l->loss[i];
        if (isfinite(l->loss[i]) && l->loss[i] > l->max_loss) l->max_loss = l->loss[i];
    }
    l->seconds = now_seconds() - l->seconds;

    free(order);
    free(G);
    free(gram);
    free(mean);
    free(u);
    free(w);
    free(grad);
    return g_interrupted ? 1 : 0;
}

void landscape_free(Landscape *l) {
    free(l->a);
    free(l->b);
    free(l->loss);
    free(l->d1);
    free(l->d2);
    memset(l, 0, sizeof *l);
}

/* ---------------------------------------------------------------------------
 * Plots: SVG line charts with labelled axes, an optional right axis and a
 * legend. Coordinates are in SVG user units (pixels).
 * ------------------------------------------------------------------------- */

/* Ten distinguishable colours (the "category10" palette of d3 and matplotlib). */
static const char *const plot_colors[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                            "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

typedef struct {
    const char *label;
    const double *x, *y;   /* non-finite points are left out and break the line */
    int n;
    int dashed;
    int right;             /* drawn against the right axis */
    int color;             /* index into plot_colors */
    const int *marked;     /* optional: points drawn as crosses where marked[i] is set */
} PlotSeries;

typedef struct {
    const char *title, *x_label, *y_label, *y2_label;
    int log_x, log_y, log_y2;
    int integer_x;         /* the x values are whole numbers, so the x ticks are too */
    const PlotSeries *series;
    int n_series;
    const char *note;      /* optional line under the plot */
} LinePlot;

static void svg_text(FILE *f, double x, double y, const char *anchor, int size, const char *extra,
                     const char *text) {
    const char *s;
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%d\"%s%s>", x, y, anchor, size,
            extra ? " " : "", extra ? extra : "");
    for (s = text; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
    fputs("</text>\n", f);
}

/* Tick values at 1, 2 or 5 times a power of ten, about max_ticks of them. */
static int nice_ticks(double lo, double hi, int max_ticks, double *ticks) {
    double span = hi - lo, raw, mag, step, t;
    int n = 0;
    if (!(span > 0)) {
        ticks[0] = lo;
        return 1;
    }
    raw = span / max_ticks;
    mag = pow(10.0, floor(log10(raw)));
    if (raw / mag <= 1) step = mag;
    else if (raw / mag <= 2) step = 2 * mag;
    else if (raw / mag <= 5) step = 5 * mag;
    else step = 10 * mag;
    for (t = ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9 && n < 32; t += step)
        ticks[n++] = fabs(t) < step * 1e-9 ? 0.0 : t;
    return n;
}

static void format_tick(char *out, size_t n, double v) {
    if (v != 0 && (fabs(v) >= 1e5 || fabs(v) < 1e-3)) snprintf(out, n, "%.0e", v);
    else snprintf(out, n, "%g", v);
}

/* Range of the finite values of the series on one axis. */
static void series_range(const LinePlot *p, int axis_y, int right, int log_scale, double *lo, double *hi) {
    int s, i;
    *lo = INFINITY;
    *hi = -INFINITY;
    for (s = 0; s < p->n_series; s++) {
        const PlotSeries *ps = &p->series[s];
        if (axis_y && ps->right != right) continue;
        for (i = 0; i < ps->n; i++) {
            double v = axis_y ? ps->y[i] : ps->x[i];
            if (!isfinite(v) || (log_scale && v <= 0)) continue;
            if (!axis_y && !isfinite(ps->y[i])) continue;
            if (v < *lo) *lo = v;
            if (v > *hi) *hi = v;
        }
    }
    if (!isfinite(*lo)) *lo = log_scale ? 1 : 0, *hi = log_scale ? 10 : 1;
    if (*hi == *lo) {
        double pad = log_scale ? *lo : (*lo == 0 ? 1 : fabs(*lo) * 0.1);
        *lo -= log_scale ? pad / 2 : pad;
        *hi += pad;
    }
}

typedef struct {
    double lo, hi;         /* data range (log10 of it for a log axis) */
    int log_scale;
    int integer;           /* only whole-number ticks on a linear axis */
    double px0, px1;       /* pixel positions of lo and hi */
} Axis;

static double axis_pos(const Axis *a, double v) {
    double u = a->log_scale ? log10(v) : v;
    return a->px0 + (u - a->lo) / (a->hi - a->lo) * (a->px1 - a->px0);
}

/* Sets up an axis over [lo, hi] and draws its ticks and grid lines. */
static void draw_axis(FILE *f, Axis *a, double lo, double hi, int log_scale, int vertical, double px0,
                      double px1, double across0, double across1, int right_side) {
    double ticks[40];
    int n, i;
    char label[32];
    a->log_scale = log_scale;
    a->px0 = px0;
    a->px1 = px1;
    if (log_scale) {
        a->lo = floor(log10(lo));
        a->hi = ceil(log10(hi));
        if (a->hi == a->lo) a->hi += 1;
        n = 0;
        for (i = (int)a->lo; i <= (int)a->hi && n < 40; i++) ticks[n++] = pow(10.0, i);
        if (n > 12) {   /* thin out long decades */
            int k = 0, every = (n + 11) / 12;
            for (i = 0; i < n; i += every) ticks[k++] = ticks[i];
            n = k;
        }
    } else {
        double pad = (hi - lo) * 0.05;
        a->lo = lo - pad;
        a->hi = hi + pad;
        n = nice_ticks(a->lo, a->hi, 6, ticks);
        if (a->integer) {
            int k = 0;
            for (i = 0; i < n; i++)
                if (ticks[i] == floor(ticks[i])) ticks[k++] = ticks[i];
            n = k;
        }
    }
    for (i = 0; i < n; i++) {
        double p = axis_pos(a, ticks[i]);
        if (p < fmin(px0, px1) - 0.5 || p > fmax(px0, px1) + 0.5) continue;
        format_tick(label, sizeof label, ticks[i]);
        if (vertical) {
            if (!right_side)
                fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n",
                        across0, p, across1, p);
            svg_text(f, right_side ? across1 + 6 : across0 - 6, p + 4, right_side ? "start" : "end", 12, NULL,
                     label);
        } else {
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n", p,
                    across0, p, across1);
            svg_text(f, p, across0 + 18, "middle", 12, NULL, label);
        }
    }
}

/* Writes a line chart; series with right set use a second y axis on the right. */
static void svg_line_plot(FILE *f, const LinePlot *p) {
    const double width = 760, height = 460, left = 80, top = 50, bottom = 70;
    int has_right = 0, n_labels = 0, s, i;
    double right, x_lo, x_hi, y_lo, y_hi, legend_y, legend_width = 0;
    size_t longest = 0;
    Axis ax, ay, ay2;
    for (s = 0; s < p->n_series; s++) {
        has_right |= p->series[s].right;
        if (!p->series[s].label) continue;
        n_labels++;
        if (strlen(p->series[s].label) > longest) longest = strlen(p->series[s].label);
    }
    right = has_right ? 90 : 30;
    /* the legend sits in a column right of the plot, so it never covers data */
    if (n_labels) legend_width = 60 + 7.0 * (double)longest;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n", width + legend_width, height,
            width + legend_width, height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    if (p->title) svg_text(f, width / 2, 28, "middle", 16, "font-weight=\"bold\"", p->title);

    series_range(p, 0, 0, p->log_x, &x_lo, &x_hi);
    ax.integer = p->integer_x;
    ay.integer = ay2.integer = 0;
    draw_axis(f, &ax, x_lo, x_hi, p->log_x, 0, left, width - right, height - bottom, top, 0);
    series_range(p, 1, 0, p->log_y, &y_lo, &y_hi);
    draw_axis(f, &ay, y_lo, y_hi, p->log_y, 1, height - bottom, top, left, width - right, 0);
    if (has_right) {
        series_range(p, 1, 1, p->log_y2, &y_lo, &y_hi);
        draw_axis(f, &ay2, y_lo, y_hi, p->log_y2, 1, height - bottom, top, left, width - right, 1);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n",
            left, top, width - right - left, height - bottom - top);

    /* axis labels */
    svg_text(f, (left + width - right) / 2, height - bottom + 42, "middle", 14, NULL, p->x_label);
    {
        char rotate[96];
        snprintf(rotate, sizeof rotate, "transform=\"rotate(-90 %.1f %.1f)\"", 24.0, (top + height - bottom) / 2);
        svg_text(f, 24, (top + height - bottom) / 2, "middle", 14, rotate, p->y_label);
        if (has_right && p->y2_label) {
            snprintf(rotate, sizeof rotate, "transform=\"rotate(90 %.1f %.1f)\"", width - 20,
                     (top + height - bottom) / 2);
            svg_text(f, width - 20, (top + height - bottom) / 2, "middle", 14, rotate, p->y2_label);
        }
    }

    /* the series, clipped to the plot area */
    fprintf(f, "<clipPath id=\"area\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath>\n",
            left, top, width - right - left, height - bottom - top);
    fprintf(f, "<g clip-path=\"url(#area)\">\n");
    for (s = 0; s < p->n_series; s++) {
        const PlotSeries *ps = &p->series[s];
        const Axis *y_axis = ps->right ? &ay2 : &ay;
        const char *color = plot_colors[ps->color % 10];
        int open = 0;
        for (i = 0; i < ps->n; i++) {
            int log_axis = ps->right ? p->log_y2 : p->log_y;
            int ok = isfinite(ps->x[i]) && isfinite(ps->y[i]) && (!p->log_x || ps->x[i] > 0) &&
                     (!log_axis || ps->y[i] > 0);
            if (!ok) {
                if (open) fputs("\"/>\n", f);
                open = 0;
                continue;
            }
            if (!open)
                fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\"%s points=\"", color,
                        ps->dashed ? " stroke-dasharray=\"6 4\"" : "");
            fprintf(f, "%.1f,%.1f ", axis_pos(&ax, ps->x[i]), axis_pos(y_axis, ps->y[i]));
            open = 1;
        }
        if (open) fputs("\"/>\n", f);
        for (i = 0; ps->n <= 60 && i < ps->n; i++) {
            double px, py;
            if (!isfinite(ps->x[i]) || !isfinite(ps->y[i])) continue;
            if ((p->log_x && ps->x[i] <= 0) || ((ps->right ? p->log_y2 : p->log_y) && ps->y[i] <= 0)) continue;
            px = axis_pos(&ax, ps->x[i]);
            py = axis_pos(y_axis, ps->y[i]);
            if (ps->marked && ps->marked[i])
                fprintf(f, "<path d=\"M%.1f %.1fl8 8m0 -8l-8 8\" stroke=\"%s\" stroke-width=\"2\"/>\n", px - 4,
                        py - 4, color);
            else
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px, py, color);
        }
    }
    fprintf(f, "</g>\n");

    /* legend */
    legend_y = top + 4;
    fprintf(f, "<g font-size=\"12\">\n");
    for (s = 0; s < p->n_series; s++) {
        const PlotSeries *ps = &p->series[s];
        if (!ps->label) continue;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n",
                width + 10, legend_y + 5, width + 34, legend_y + 5, plot_colors[ps->color % 10],
                ps->dashed ? " stroke-dasharray=\"6 4\"" : "");
        svg_text(f, width + 40, legend_y + 9, "start", 12, NULL, ps->label);
        legend_y += 17;
    }
    fprintf(f, "</g>\n");
    if (p->note) svg_text(f, left, height - 12, "start", 11, "fill=\"#555\"", p->note);
    fprintf(f, "</svg>\n");
}

static int write_line_plot(const char *path, const LinePlot *p) {
    AtomicFile af;
    if (atomic_open(&af, path) != 0) return -1;
    svg_line_plot(af.f, p);
    return atomic_commit(&af);
}

/* Heat maps of loss landscapes: one panel per landscape on a shared colour
 * scale (viridis), with contour lines, a colour bar and the centre w*
 * marked. */

/* Viridis at nine evenly spaced points (the colormap of matplotlib). */
static const unsigned char viridis[9][3] = {{68, 1, 84},   {71, 45, 123},  {59, 82, 139},
                                             {44, 114, 142}, {33, 145, 140}, {40, 174, 128},
                                             {94, 201, 98},  {173, 220, 48}, {253, 231, 37}};

static void viridis_color(double t, char *out) {
    double x = 8 * fmin(fmax(t, 0.0), 1.0);
    int i = x >= 8 ? 7 : (int)x, c;
    double frac = x - i;
    int rgb[3];
    for (c = 0; c < 3; c++) rgb[c] = (int)(viridis[i][c] + frac * (viridis[i + 1][c] - viridis[i][c]) + 0.5);
    sprintf(out, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

typedef struct {
    int log_color;
    double offset;    /* with log_color: colour value = log10(loss - offset) */
    double lo, hi;    /* colour values mapped to the ends of the scale */
} ColorScale;

static double color_value(const ColorScale *cs, double loss) {
    return cs->log_color ? log10(fmax(loss - cs->offset, 1e-300)) : loss;
}

/* Adds the contour segments at `level` of one grid cell (corner values
 * v[0] at (x0, y0), v[1] at (x1, y0), v[2] at (x1, y1), v[3] at (x0, y1)). */
static void contour_cell(FILE *f, const double v[4], double x0, double y0, double x1, double y1, double level) {
    double px[4], py[4], cx[4] = {x0, x1, x1, x0}, cy[4] = {y0, y0, y1, y1};
    int n = 0, e;
    for (e = 0; e < 4; e++) {
        double a = v[e], b = v[(e + 1) % 4];
        if ((a < level) != (b < level) && isfinite(a) && isfinite(b)) {
            double t = (level - a) / (b - a);
            px[n] = cx[e] + t * (cx[(e + 1) % 4] - cx[e]);
            py[n] = cy[e] + t * (cy[(e + 1) % 4] - cy[e]);
            n++;
        }
    }
    if (n >= 2) fprintf(f, "M%.1f %.1fL%.1f %.1f", px[0], py[0], px[1], py[1]);
    if (n == 4) fprintf(f, "M%.1f %.1fL%.1f %.1f", px[2], py[2], px[3], py[3]);
}

static void svg_landscape_panel(FILE *f, const Landscape *l, const char *title, const ColorScale *cs, double ox,
                                double oy, double size, const char *unit) {
    int N = l->grid, i, j, k;
    /* The axes count in units of a power of ten near span, because the axis range, 2 span N / (N - 1),
     * overflows for spans near the largest double. */
    double axis_unit = pow(10.0, floor(log10(l->a[N - 1])));
    double span = l->a[N - 1] / axis_unit, cell = size / (N - 1), ticks[40];
    int n_ticks;
    char color[8], label[96];
    Axis ax, ay;
    ax.log_scale = ay.log_scale = 0;
    ax.lo = ay.lo = -span - span / (N - 1);
    ax.hi = ay.hi = span + span / (N - 1);
    ax.px0 = ox, ax.px1 = ox + size + cell;
    ay.px0 = oy + size + cell, ay.px1 = oy;

    /* cells: each grid point colours the square around it */
    for (i = 0; i < N; i++)
        for (j = 0; j < N; j++) {
            double v = l->loss[(size_t)i * N + j];
            if (!isfinite(v)) strcpy(color, "#ff00ff");
            else viridis_color((color_value(cs, v) - cs->lo) / (cs->hi - cs->lo), color);
            fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"/>\n",
                    axis_pos(&ax, l->a[j] / axis_unit) - cell / 2, axis_pos(&ay, l->b[i] / axis_unit) - cell / 2,
                    cell + 0.3, cell + 0.3, color);
        }

    /* contour lines at eight levels of the colour scale */
    fprintf(f, "<path fill=\"none\" stroke=\"white\" stroke-opacity=\"0.7\" stroke-width=\"0.8\" d=\"");
    for (k = 1; k <= 8; k++) {
        double level = cs->lo + (cs->hi - cs->lo) * k / 9.0;
        for (i = 0; i + 1 < N; i++)
            for (j = 0; j + 1 < N; j++) {
                double v[4];
                v[0] = color_value(cs, l->loss[(size_t)i * N + j]);
                v[1] = color_value(cs, l->loss[(size_t)i * N + j + 1]);
                v[2] = color_value(cs, l->loss[(size_t)(i + 1) * N + j + 1]);
                v[3] = color_value(cs, l->loss[(size_t)(i + 1) * N + j]);
                contour_cell(f, v, axis_pos(&ax, l->a[j] / axis_unit), axis_pos(&ay, l->b[i] / axis_unit),
                             axis_pos(&ax, l->a[j + 1] / axis_unit), axis_pos(&ay, l->b[i + 1] / axis_unit), level);
            }
    }
    fprintf(f, "\"/>\n");

    /* frame, ticks, labels and the centre */
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", ox, oy,
            size + cell, size + cell);
    n_ticks = nice_ticks(-span, span, 5, ticks);
    for (k = 0; k < n_ticks; k++) {
        char text[32];
        format_tick(text, sizeof text, ticks[k] * axis_unit);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", axis_pos(&ax, ticks[k]),
                oy + size + cell, axis_pos(&ax, ticks[k]), oy + size + cell + 5);
        svg_text(f, axis_pos(&ax, ticks[k]), oy + size + cell + 18, "middle", 11, NULL, text);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", ox - 5,
                axis_pos(&ay, ticks[k]), ox, axis_pos(&ay, ticks[k]));
        svg_text(f, ox - 8, axis_pos(&ay, ticks[k]) + 4, "end", 11, NULL, text);
    }
    if (isfinite(l->variance_share[0])) snprintf(label, sizeof label, "PC1 (%.1f %%)%s", 100 * l->variance_share[0], unit);
    else snprintf(label, sizeof label, "random direction 1%s", unit);
    svg_text(f, ox + (size + cell) / 2, oy + size + cell + 40, "middle", 13, NULL, label);
    if (isfinite(l->variance_share[1])) snprintf(label, sizeof label, "PC2 (%.1f %%)%s", 100 * l->variance_share[1], unit);
    else snprintf(label, sizeof label, "random direction 2%s", unit);
    {
        char rotate[96];
        snprintf(rotate, sizeof rotate, "transform=\"rotate(-90 %.1f %.1f)\"", ox - 48, oy + (size + cell) / 2);
        svg_text(f, ox - 48, oy + (size + cell) / 2, "middle", 13, rotate, label);
    }
    svg_text(f, ox + (size + cell) / 2, oy - 10, "middle", 13, "font-weight=\"bold\"", title);
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"white\" stroke=\"black\" stroke-width=\"1.5\"/>\n",
            axis_pos(&ax, 0), axis_pos(&ay, 0));
    svg_text(f, axis_pos(&ax, 0) + 7, axis_pos(&ay, 0) - 6, "start", 12, "fill=\"white\"", "w*");
}

/* Writes landscapes side by side on one colour scale, with a colour bar. */
static void svg_landscapes(FILE *f, const Landscape *const *ls, const char *const *titles, int n, int log_color,
                           const char *loss_label, const char *unit) {
    const double size = 340, left = 80, top = 50, gap = 110, bar_width = 18;
    double width = left + n * (size + gap) + 60, height = top + size + 90, ticks[40];
    double lo, hi, min_loss = INFINITY, max_loss = -INFINITY, bar_x;
    int i, k, n_ticks;
    ColorScale cs;
    char label[160];

    for (i = 0; i < n; i++) {
        if (ls[i]->min_loss < min_loss) min_loss = ls[i]->min_loss;
        if (ls[i]->max_loss > max_loss) max_loss = ls[i]->max_loss;
    }
    if (!(min_loss <= max_loss)) {
        /* no grid has a finite loss, so every cell has the non-finite colour and the scale is arbitrary */
        min_loss = 0.0;
        max_loss = 1.0;
    }
    cs.log_color = log_color;
    /* the offset keeps log10(loss - offset) finite at the minimum */
    cs.offset = min_loss - 1e-6 * fmax(max_loss - min_loss, 1e-12) - 1e-12;
    if (log_color && min_loss > 0) cs.offset = 0;
    lo = color_value(&cs, min_loss);
    hi = color_value(&cs, max_loss);
    if (!(hi > lo)) hi = lo + 1;
    cs.lo = lo;
    cs.hi = hi;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\">\n", width, height, width, height);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    for (i = 0; i < n; i++) svg_landscape_panel(f, ls[i], titles[i], &cs, left + i * (size + gap), top, size, unit);

    /* colour bar */
    bar_x = left + n * (size + gap) - gap + 40;
    for (k = 0; k < 100; k++) {
        char color[8];
        viridis_color((k + 0.5) / 100, color);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.1f\" height=\"%.2f\" fill=\"%s\"/>\n", bar_x,
                top + size - (k + 1) * size / 100, bar_width, size / 100 + 0.3, color);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", bar_x,
            top, bar_width, size);
    n_ticks = nice_ticks(lo, hi, 6, ticks);
    for (k = 0; k < n_ticks; k++) {
        char text[32];
        double y = top + size - (ticks[k] - lo) / (hi - lo) * size;
        format_tick(text, sizeof text, ticks[k]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", bar_x + bar_width, y,
                bar_x + bar_width + 4, y);
        svg_text(f, bar_x + bar_width + 7, y + 4, "start", 11, NULL, text);
    }
    if (log_color && cs.offset != 0)
        snprintf(label, sizeof label, "log10(%s - %.6g)", loss_label, cs.offset);
    else if (log_color)
        snprintf(label, sizeof label, "log10(%s)", loss_label);
    else
        snprintf(label, sizeof label, "%s", loss_label);
    {
        char rotate[96];
        snprintf(rotate, sizeof rotate, "transform=\"rotate(90 %.1f %.1f)\"", bar_x + bar_width + 50, top + size / 2);
        svg_text(f, bar_x + bar_width + 50, top + size / 2, "middle", 13, rotate, label);
    }
    fprintf(f, "</svg>\n");
}

/* ---------------------------------------------------------------------------
 * Command line. Results go to stdout, progress and diagnostics to stderr.
 * Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted.
 * ------------------------------------------------------------------------- */

#ifndef LLC_TESTING

typedef enum { OPT_FLAG, OPT_INT, OPT_REAL, OPT_STRING, OPT_U64 } OptionKind;

typedef struct {
    const char *name;      /* "--lr" */
    OptionKind kind;
    void *dest;            /* int (flags too), double, const char *, or uint64_t */
    double min, max;       /* valid range of a number, inclusive unless `open` says otherwise */
    int open;              /* OPEN_MIN: the number must be > min; OPEN_MAX: < max; or both */
    const char *metavar;
    const char *help;
    const char *choices;   /* "a|b|c": the allowed strings */
} Option;

enum { OPEN_MIN = 1, OPEN_MAX = 2 };

typedef struct {
    const char *name;
    const char *usage;     /* after "llc NAME " */
    const char *summary;
    int min_positional, max_positional;
    const char *details;   /* printed after the options, or NULL */
} Command;

static void print_option_default(const Option *o) {
    switch (o->kind) {
    case OPT_INT: printf(" (default %d)", *(int *)o->dest); break;
    case OPT_REAL:
        if (isfinite(*(double *)o->dest)) printf(" (default %g)", *(double *)o->dest);
        break;
    case OPT_U64: printf(" (default %llu)", (unsigned long long)*(uint64_t *)o->dest); break;
    case OPT_STRING:
        if (*(const char **)o->dest) printf(" (default %s)", *(const char **)o->dest);
        break;
    default: break;
    }
}

static void print_help(const Command *cmd, const Option *opts) {
    int i;
    printf("usage: llc %s %s\n\n%s\n", cmd->name, cmd->usage, cmd->summary);
    if (opts && opts[0].name) printf("\noptions:\n");
    for (i = 0; opts && opts[i].name; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", opts[i].name, opts[i].metavar ? " " : "",
                 opts[i].metavar ? opts[i].metavar : "");
        printf("  %-22s %s", left, opts[i].help);
        print_option_default(&opts[i]);
        printf("\n");
    }
    printf("  %-22s %s\n", "--help", "show this help and exit");
    if (cmd->details) printf("\n%s", cmd->details);
}

static void usage_error(const Command *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "llc %s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see llc %s --help)\n", cmd->name);
    exit(2);
}

/* Writes the valid range of o, e.g. "a number in (0, 1)" or "an integer >= 1";
 * integers are written out in full, not as 1e+08. */
static void describe_range(char *out, size_t n, const Option *o) {
    const char *what = o->kind == OPT_REAL ? "a number" : "an integer";
    const char *fmt = o->kind == OPT_REAL ? "%g" : "%.0f";
    char lo[40], hi[40];
    snprintf(lo, sizeof lo, fmt, o->min);
    snprintf(hi, sizeof hi, fmt, o->max);
    if (isinf(o->max))
        snprintf(out, n, "%s %s %s", what, o->open & OPEN_MIN ? ">" : ">=", lo);
    else
        snprintf(out, n, "%s in %s%s, %s%s", what, o->open & OPEN_MIN ? "(" : "[", lo, hi,
                 o->open & OPEN_MAX ? ")" : "]");
}

static void parse_option_value(const Command *cmd, const Option *o, const char *value) {
    char *end = NULL, range[128];
    describe_range(range, sizeof range, o);
    errno = 0;
    if (o->kind == OPT_STRING) {
        if (!*value) usage_error(cmd, "option %s needs a value (%s)", o->name, o->metavar);
        if (o->choices) {
            const char *c = o->choices;
            size_t len = strlen(value);
            int found = 0;
            while (*c && !found) {
                const char *bar = strchr(c, '|');
                size_t n = bar ? (size_t)(bar - c) : strlen(c);
                found = n == len && !strncmp(c, value, n);
                c += n + (bar != NULL);
            }
            if (!found) usage_error(cmd, "%s must be one of %s, got \"%s\"", o->name, o->choices, value);
        }
        *(const char **)o->dest = value;
    } else if (o->kind == OPT_U64) {
        unsigned long long v = strtoull(value, &end, 10);
        if (!*value || *end || errno || value[0] == '-')
            usage_error(cmd, "%s must be a non-negative integer, got \"%s\"", o->name, value);
        *(uint64_t *)o->dest = (uint64_t)v;
    } else {
        double v = strtod(value, &end);
        if (!*value || *end || errno == ERANGE || !isfinite(v))
            usage_error(cmd, "%s must be %s, got \"%s\"", o->name, range, value);
        if (o->kind == OPT_INT && (v != floor(v)))
            usage_error(cmd, "%s must be %s, got \"%s\"", o->name, range, value);
        if (v < o->min || v > o->max || ((o->open & OPEN_MIN) && v <= o->min) ||
            ((o->open & OPEN_MAX) && v >= o->max))
            usage_error(cmd, "%s must be %s, got \"%s\"", o->name, range, value);
        if (o->kind == OPT_INT) *(int *)o->dest = (int)v;
        else *(double *)o->dest = v;
    }
}

/* Parses argv (after the command name); returns the positional arguments. */
static int parse_args(const Command *cmd, const Option *opts, int argc, char **argv, char **positional) {
    int i, n = 0, only_positional = 0;
    for (i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!only_positional && !strcmp(arg, "--")) {
            only_positional = 1;
        } else if (!only_positional && (!strcmp(arg, "--help") || !strcmp(arg, "-h"))) {
            print_help(cmd, opts);
            exit(0);
        } else if (!only_positional && arg[0] == '-' && arg[1] && !isdigit((unsigned char)arg[1]) &&
                   arg[1] != '.') {
            const char *eq = strchr(arg, '=');
            size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
            const Option *o = NULL;
            int k;
            for (k = 0; opts && opts[k].name; k++)
                if (strlen(opts[k].name) == len && !strncmp(opts[k].name, arg, len)) o = &opts[k];
            if (!o) usage_error(cmd, "unknown option %.*s", (int)len, arg);
            if (o->kind == OPT_FLAG) {
                if (eq) usage_error(cmd, "option %s takes no value", o->name);
                *(int *)o->dest = 1;
            } else if (eq) {
                parse_option_value(cmd, o, eq + 1);
            } else {
                /* "--json --quiet" lacks the value; "--json=--odd-name" gives one that starts with -- */
                if (i + 1 >= argc || (argv[i + 1][0] == '-' && argv[i + 1][1] == '-'))
                    usage_error(cmd, "option %s needs a value (%s)", o->name, o->metavar);
                parse_option_value(cmd, o, argv[++i]);
            }
        } else {
            if (n >= cmd->max_positional)
                usage_error(cmd, "unexpected argument \"%s\"", arg);
            positional[n++] = argv[i];
        }
    }
    if (n < cmd->min_positional) {
        /* name the first missing argument after the usage line, e.g. MODEL or PROGRAM */
        const char *u = cmd->usage;
        int k, len;
        for (k = 0; k < n; k++) {
            u += strcspn(u, " ");
            u += strspn(u, " ");
        }
        len = (int)strcspn(u, " ");
        while (len > 0 && u[len - 1] == '.') len--;
        if (len > 0 && *u >= 'A' && *u <= 'Z')
            usage_error(cmd, "missing %.*s; usage: llc %s %s", len, u, cmd->name, cmd->usage);
        usage_error(cmd, "missing arguments; usage: llc %s %s", cmd->name, cmd->usage);
    }
    return n;
}

static void load_model_or_exit(Model *m, const char *path) {
    if (model_load(m, path) != 0) exit(1);
}

static const char *model_program(const Model *m) {
    const char *p = model_meta(m, "program");
    return p ? p : "unknown program";
}

static double model_sparsity(const Model *m, size_t nonzero) {
    return m->n_params ? (double)nonzero / (double)m->n_params : 0.0;
}

/* Shared pieces of the commands that run many estimates -------------------- */

/* The SGLD options of every command that estimates an LLC. */
#define SGLD_OPTIONS(s, nbeta, n_samples)                                                          \
    {"--lr", OPT_REAL, &(s).lr, 0, INFINITY, OPEN_MIN, "EPS", "SGLD step size epsilon", NULL},      \
    SGLD_OPTIONS_BUT_LR(s, nbeta, n_samples)

/* The same without --lr, for commands that read it differently. */
#define SGLD_OPTIONS_BUT_LR(s, nbeta, n_samples)                                                   \
    {"--nbeta", OPT_REAL, &(nbeta), 0, INFINITY, OPEN_MIN, "NB",                                   \
     "inverse temperature n*beta (default batch / ln(batch))", NULL},                              \
    SGLD_CHAIN_OPTIONS(s, n_samples)

/* The chains' options without --lr and --nbeta, for llc calibrate. */
#define SGLD_CHAIN_OPTIONS(s, n_samples)                                                            \
    {"--localization", OPT_REAL, &(s).localization, 0, INFINITY, 0, "G",                           \
     "strength gamma of the pull towards w*", NULL},                                               \
    {"--chains", OPT_INT, &(s).chains, 1, 100000, 0, "N", "independent SGLD chains", NULL},         \
    {"--draws", OPT_INT, &(s).draws, 1, 1e8, 0, "N", "recorded draws per chain", NULL},             \
    {"--burnin", OPT_INT, &(s).burnin, 0, 1e9, 0, "N", "steps before the first draw", NULL},        \
    {"--every", OPT_INT, &(s).every, 1, 1e6, 0, "N", "steps between draws", NULL},                  \
    {"--batch", OPT_INT, &(s).batch, 1, 1e6, 0, "N", "sequences per minibatch", NULL},              \
    {"--samples", OPT_INT, &(n_samples), 1, 1e8, 0, "N", "random input sequences", NULL},           \
    {"--seed", OPT_U64, &(s).seed, 0, 0, 0, "N", "seed of the inputs and the SGLD noise", NULL},    \
    {"--threads", OPT_INT, &(s).threads, 0, 4096, 0, "N", "worker threads, 0 = one per core", NULL}

/* Rejects SGLD settings whose chains would run more steps than an int counts. */
static void check_sgld_steps(const Command *cmd, const SgldSettings *s) {
    if (sgld_steps_per_chain(s) > INT_MAX)
        usage_error(cmd, "--burnin + --draws * --every is %lld steps per chain; the maximum is %d",
                    sgld_steps_per_chain(s), INT_MAX);
}

static void sgld_defaults(SgldSettings *s) {
    memset(s, 0, sizeof *s);
    s->lr = 1e-5;
    s->noise_level = 1.0;
    s->chains = 5;
    s->draws = 100;
    s->every = 1;
    s->batch = 32;
    s->shuffle = 1;
    s->seed = 1;
}

/* Estimates the LLC of m on n_samples random full-length inputs (from the
 * settings' seed) labelled by ref: the teacher, or m itself. */
static void estimate_on_random_inputs(const Model *m, const Model *ref, LossKind loss, const SgldSettings *s,
                                      int n_samples, LlcResult *r) {
    Dataset d;
    ModelProblem mp;
    LlcProblem p;
    Rng rng;
    rng_seed(&rng, s->seed);
    dataset_random(&d, &m->cfg, n_samples, &rng);
    dataset_label(&d, ref, s->batch < n_samples ? s->batch : n_samples);
    mp.m = m;
    mp.data = &d;
    mp.loss = loss;
    mp.max_batch = s->batch < n_samples ? s->batch : n_samples;
    p = model_problem(&mp);
    if (llc_estimate(&p, s, r) != 0) die("invalid SGLD settings");
    dataset_free(&d);
}

/* Writes v with format, or nothing (an empty CSV field) when it is not finite. */
static void csv_number(FILE *f, double v, const char *format) {
    if (isfinite(v)) fprintf(f, format, v);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int make_dir(const char *path) {
    if (dir_exists(path)) return 0;
    if (mkdir(path, 0777) != 0) {
        fprintf(stderr, "%s: cannot create the folder %s: %s\n", g_program, path,
                errno == EEXIST ? "a file of that name exists" : strerror(errno));
        return -1;
    }
    return 0;
}

/* Checks, before a long job starts, that path can be written: its folder
 * exists and is writable, and path is not a folder. A symbolic link is
 * checked at the file it resolves to, and a stream (a FIFO or a device,
 * see output_is_stream) must itself be writable. Prints why not. */
static int check_writable(const char *path) {
    char *target, *folder, *slash;
    const char *dir = ".";
    int ok = 1, stream_fd;
    if (dir_exists(path)) {
        fprintf(stderr, "%s: cannot write %s: it is a folder\n", g_program, path);
        return -1;
    }
    if (output_is_stream(path, &stream_fd)) {
        if (stream_fd < 0 && access(path, W_OK) != 0) {
            fprintf(stderr, "%s: cannot write %s: %s\n", g_program, path, strerror(errno));
            return -1;
        }
        return 0;
    }
    target = resolve_symlinks(path);
    if (!target) {
        fprintf(stderr, "%s: cannot write %s: %s\n", g_program, path, strerror(errno));
        return -1;
    }
    folder = xstrdup(target);
    slash = strrchr(folder, '/');
    if (slash == folder) dir = "/";
    else if (slash) *slash = 0, dir = folder;
    if (!dir_exists(dir)) {
        struct stat st;
        if (stat(dir, &st) == 0)
            fprintf(stderr, "%s: cannot write %s: %s is a file, not a folder\n", g_program, path, dir);
        else
            fprintf(stderr, "%s: cannot write %s: the folder %s does not exist\n", g_program, path, dir);
        ok = 0;
    } else if (access(dir, W_OK) != 0) {
        fprintf(stderr, "%s: cannot write %s: the folder %s is not writable (%s)\n", g_program, path, dir,
                strerror(errno));
        ok = 0;
    } else {
        /* the temporary file, and the partial results of an interrupted run, add a suffix to the name */
        const char *base = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
        const size_t suffix = strlen(".incomplete.tmp") + 10;   /* 10: the digits of a process id */
        long name_max = pathconf(dir, _PC_NAME_MAX);
        if (name_max <= 0) name_max = 255;
        if (strlen(base) + suffix > (size_t)name_max) {
            fprintf(stderr, "%s: cannot write %s: the file name is %zu bytes long, and llc needs a name of at "
                            "most %ld bytes here to add its suffixes\n", g_program, path, strlen(base),
                    name_max - (long)suffix);
            ok = 0;
        }
    }
    free(folder);
    free(target);
    return ok ? 0 : -1;
}

/* Returns 1 when a and b name the same existing file. */
static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* A file named on the command line: the option or argument that names it
 * ("--json", "MODEL") and its path, or NULL when it is not given. */
typedef struct {
    const char *name;
    const char *path;
    int incomplete;   /* an interrupted run writes this output to path + ".incomplete" instead */
} CommandFile;

/* Exits with a usage error when an output is the same file as an input or
 * as another output, because writing it would destroy a file that the
 * command reads or writes. files[0, n_inputs) are the inputs and
 * files[n_inputs, n_files) the outputs. */
static void check_outputs_distinct(const Command *cmd, const CommandFile *files, int n_inputs, int n_files) {
    int i, j;
    for (i = n_inputs; i < n_files; i++) {
        char partial[4200];
        if (!files[i].path) continue;
        for (j = 0; j < i; j++) {
            if (!files[j].path || !output_overlaps(files[i].path, files[j].path)) continue;
            if (j < n_inputs)
                usage_error(cmd, "%s %s is the same file as the input %s %s; write %s to another file",
                            files[i].name, files[i].path, files[j].name, files[j].path, files[i].name);
            usage_error(cmd, "%s %s and %s %s name the same file; give them different files", files[j].name,
                        files[j].path, files[i].name, files[i].path);
        }

        /* the file an interrupted run writes must not be an input or another output either */
        if (!files[i].incomplete) continue;
        snprintf(partial, sizeof partial, "%s.incomplete", files[i].path);
        for (j = 0; j < n_files; j++) {
            if (j == i || !files[j].path || !output_overlaps(partial, files[j].path)) continue;
            usage_error(cmd, "an interrupted run writes %s %s to %s, which is %s %s; rename one of them",
                        files[i].name, files[i].path, partial, j < n_inputs ? "the input" : "the output",
                        files[j].name);
        }
    }
}

/* The path of the file `target` relative to the folder `from_dir`, both
 * resolved with realpath; NULL when either cannot be resolved. */
static char *relative_path(const char *target, const char *from_dir) {
    char *t = realpath(target, NULL), *f = realpath(from_dir, NULL), *out = NULL;
    if (t && f) {
        size_t common = 0, i, n_up = 0, len;
        for (i = 0; t[i] && t[i] == f[i]; i++)
            if (t[i] == '/') common = i + 1;
        if (f[i] == 0 && t[i] == '/') common = i + 1;   /* from_dir is a prefix of target */

        /* One "../" per folder of from_dir below the common prefix. When
         * from_dir is the prefix itself, common is past its end, so none. */
        if (common <= strlen(f)) {
            for (i = common; f[i]; i++) n_up += f[i] == '/';
            if (f[common]) n_up++;
        }
        len = 3 * n_up + strlen(t + common) + 1;
        out = xmalloc(len, "a path");
        out[0] = 0;
        for (i = 0; i < n_up; i++) strcat(out, "../");
        strcat(out, t + common);
    }
    free(t);
    free(f);
    return out;
}

/* Records teacher_path in the student written to student_path, relative to
 * the folder of the file written (after symbolic links), so that the pair can
 * move together. */
static void record_teacher(Model *student, const char *teacher_path, const char *student_path) {
    char *resolved = resolve_symlinks(student_path);
    char *folder = xstrdup(resolved ? resolved : student_path), *slash = strrchr(folder, '/'), *rel;
    free(resolved);
    if (slash == folder) folder[1] = 0;
    else if (slash) *slash = 0;
    else strcpy(folder, ".");
    rel = relative_path(teacher_path, folder);
    model_set_meta(student, "teacher", rel ? rel : teacher_path);
    free(rel);
    free(folder);
}

/* The folder of shipped models and compile.py: --weights, else
 * tracr_weights beside the llc executable, else ./tracr_weights. */
static const char *weights_dir(const char *given) {
    static char found[4200];
    char exe[4096];
    ssize_t n;
    if (given) return given;
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        char *slash;
        exe[n] = 0;
        slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(found, sizeof found, "%s/tracr_weights", exe);
            if (dir_exists(found)) return found;
        }
    }
    return "tracr_weights";
}

static const char *const tracr_programs[] = {"length", "frac_prevs", "sort", "sort_unique", "hist",
                                             "sort_freq", "pair_balance", "dyck-2", "dyck-3"};

/* The programs with a numerical output, for which only the mse loss applies. */
static int is_numerical_program(const char *name) {
    return !strcmp(name, "frac_prevs") || !strcmp(name, "pair_balance");
}

static int is_tracr_program(const char *name) {
    size_t i;
    for (i = 0; i < sizeof tracr_programs / sizeof tracr_programs[0]; i++)
        if (!strcmp(tracr_programs[i], name)) return 1;
    return 0;
}

/* Rejects name as a usage error, with the list of programs, unless it is one. */
static void check_tracr_program(const Command *cmd, const char *name, const char *where) {
    char list[160] = "";
    size_t i;
    if (is_tracr_program(name)) return;
    for (i = 0; i < sizeof tracr_programs / sizeof tracr_programs[0]; i++) {
        strcat(list, i ? ", " : "");
        strcat(list, tracr_programs[i]);
    }
    usage_error(cmd, "unknown program \"%s\"%s; the programs are %s", name, where, list);
}

/* Runs argv[0] with its arguments (no shell) and returns its exit status.
 * The child's standard output goes to stderr, so that llc's own standard
 * output carries only results. */
static int run_process(char *const argv[]) {
    pid_t pid = fork();
    int status;
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(2, 1);
        execvp(argv[0], argv);
        fprintf(stderr, "%s: cannot run %s: %s\n", g_program, argv[0], strerror(errno));
        _exit(127);
    }
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Finds PROGRAM at max_seq_len among the shipped models, else in cache_dir,
 * else compiles it into cache_dir with tracr_weights/compile.py. Stores the
 * path in out (out_size bytes) and returns 0, or -1 after a message. */
static int find_or_compile_model(const char *program, int max_seq_len, const char *weights, const char *cache_dir,
                                 char *out, size_t out_size) {
    char script[4096], n_text[32];
    char *args[8];
    int status;
    snprintf(out, out_size, "%s/%s_n%d.llcw", weights, program, max_seq_len);
    if (file_exists(out)) return 0;
    snprintf(out, out_size, "%s/%s_n%d.llcw", cache_dir, program, max_seq_len);
    if (file_exists(out)) return 0;
    snprintf(script, sizeof script, "%s/compile.py", weights);
    if (!file_exists(script)) {
        fprintf(stderr, "%s: %s not found, so %s at max_seq_len %d cannot be compiled (set --weights to the "
                        "tracr_weights folder)\n", g_program, script, program, max_seq_len);
        return -1;
    }
    snprintf(n_text, sizeof n_text, "%d", max_seq_len);
    progress("compiling %s at max_seq_len %d into %s", program, max_seq_len, out);
    args[0] = "python3";
    args[1] = script;
    args[2] = (char *)program;
    args[3] = "--max-seq-len";
    args[4] = n_text;
    args[5] = "-o";
    args[6] = out;
    args[7] = NULL;
    status = run_process(args);
    if (status != 0) {
        fprintf(stderr, "%s: compiling %s at max_seq_len %d failed (python3 %s exited with status %d)\n",
                g_program, program, max_seq_len, script, status);
        return -1;
    }
    return 0;
}

/* Splits "a,b,c" into at most max numbers; returns the count or -1. */
static int parse_number_list(const char *text, double *out, int max) {
    int n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        double v;
        errno = 0;
        v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || n == max) return -1;
        out[n++] = v;
        if (*end == ',') end++;
        else if (*end) return -1;
        p = end;
    }
    return n;
}

/* Mean over the chains that did not diverge of (loss - init_loss), per draw. */
static void mean_trace(const LlcResult *r, double *out) {
    int c, d;
    for (d = 0; d < r->draws; d++) {
        double sum = 0.0;
        int n = 0;
        for (c = 0; c < r->chains; c++) {
            double v = r->loss_trace[(size_t)c * r->draws + d];
            if (r->diverged_step[c] >= 0 || !isfinite(v)) continue;
            sum += v - r->init_loss;
            n++;
        }
        out[d] = n ? sum / n : NAN;
    }
}

/* llc info ---------------------------------------------------------------- */

static int cmd_info(int argc, char **argv) {
    static const Command cmd = {"info", "MODEL [--json]",
                                "Print a model's configuration, size and sparsity "
                                "(non-zero parameters / parameters).", 1, 1, NULL};
    int as_json = 0, i;
    Option opts[] = {{"--json", OPT_FLAG, &as_json, 0, 0, 0, NULL, "print JSON instead of text", NULL},
                     {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[1];
    Model m;
    size_t nonzero;
    const ModelConfig *c;

    parse_args(&cmd, opts, argc, argv, pos);
    load_model_or_exit(&m, pos[0]);
    c = &m.cfg;
    nonzero = model_count_nonzero(&m);

    if (as_json) {
        Json j;
        json_init(&j, stdout);
        j.inline_depth = 2;
        json_object(&j, NULL);
        json_str(&j, "path", pos[0]);
        json_str(&j, "program", model_meta(&m, "program"));
        json_int(&j, "n_layers", c->n_layers);
        json_int(&j, "n_heads", c->n_heads);
        json_int(&j, "d_model", c->d_model);
        json_int(&j, "d_head", c->d_head);
        json_int(&j, "d_mlp", c->d_mlp);
        json_int(&j, "max_seq_len", c->max_seq_len);
        json_bool(&j, "causal", c->causal);
        json_int(&j, "n_vocab", c->n_vocab);
        json_array(&j, "vocab");
        for (i = 0; i < c->n_vocab; i++) json_str(&j, NULL, m.vocab[i]);
        json_array_end(&j);
        json_int(&j, "bos_id", c->bos_id);
        json_int(&j, "pad_id", c->pad_id);
        json_str(&j, "output", c->output_kind == OUTPUT_CATEGORICAL ? "categorical" : "numerical");
        json_array(&j, "output_values");
        for (i = 0; i < c->n_outputs; i++) json_str(&j, NULL, m.output_values[i]);
        json_array_end(&j);
        if (m.output_dims) {
            json_array(&j, "output_dims");
            for (i = 0; i < c->n_outputs; i++) json_int(&j, NULL, m.output_dims[i]);
            json_array_end(&j);
        } else {
            json_str(&j, "output_dims", NULL);
        }
        json_int(&j, "n_params", (long long)m.n_params);
        json_int(&j, "n_nonzero", (long long)nonzero);
        json_num(&j, "sparsity", model_sparsity(&m, nonzero));
        json_int(&j, "n_fixed", (long long)m.n_fixed);
        json_object(&j, "meta");
        for (i = 0; i < m.n_meta; i++) json_str(&j, m.meta_keys[i], m.meta_values[i]);
        json_object_end(&j);
        json_object_end(&j);
    } else {
        printf("model        %s\n", pos[0]);
        for (i = 0; i < m.n_meta; i++)
            if (!strcmp(m.meta_keys[i], "program") || !strcmp(m.meta_keys[i], "source") ||
                !strcmp(m.meta_keys[i], "teacher"))
                printf("%-12s %s\n", m.meta_keys[i], m.meta_values[i]);
        printf("n_layers     %d\nn_heads      %d\nd_model      %d\nd_head       %d\n", c->n_layers,
               c->n_heads, c->d_model, c->d_head);
        printf("d_mlp        %d\nmax_seq_len  %d%s\n", c->d_mlp, c->max_seq_len,
               c->causal ? "\nattention    causal" : "");
        printf("vocab       ");
        for (i = 0; i < c->n_vocab; i++) printf(" %s", m.vocab[i]);
        printf("  (bos_id %d, pad_id %d)\n", c->bos_id, c->pad_id);
        if (c->output_kind == OUTPUT_CATEGORICAL) {
            printf("output       categorical, %d values:", c->n_outputs);
            for (i = 0; i < c->n_outputs; i++) printf(" %s", m.output_values[i]);
            printf("\n");
        } else {
            printf("output       numerical (%s)\n", m.output_values[0]);
        }
        printf("n_params     %zu\nn_nonzero    %zu\nsparsity     %.6g (n_nonzero / n_params)\n",
               m.n_params, nonzero, model_sparsity(&m, nonzero));
        if (m.n_fixed)
            printf("n_fixed      %zu (fixed values such as the output projection; not parameters)\n",
                   m.n_fixed);
    }
    model_free(&m);
    return 0;
}

/* llc run ----------------------------------------------------------------- */

static void print_value(double v) {
    printf("%.9g", v);
}

/* Prints the outputs of batch row r: decoded values, or with raw the
 * output-space values of every position, BOS included, one line each. */
static int print_outputs(const Model *m, const real *y, int n_rows, int raw) {
    const ModelConfig *c = &m->cfg;
    int t, j, n_bad = 0;
    for (t = raw ? 0 : 1; t < n_rows; t++) {
        const real *yt = y + (size_t)t * c->n_outputs;
        int finite = 1;
        for (j = 0; j < c->n_outputs; j++) finite &= isfinite(yt[j]) != 0;
        n_bad += !finite && t > 0;
        if (raw) {
            for (j = 0; j < c->n_outputs; j++) {
                if (j) printf(" ");
                print_value(yt[j]);
            }
            printf("\n");
        } else {
            if (t > 1) printf(" ");
            if (!finite) printf("nan");   /* no value to decode */
            else if (c->output_kind == OUTPUT_CATEGORICAL) printf("%s", m->output_values[argmax(yt, c->n_outputs)]);
            else print_value(yt[0]);
        }
    }
    if (!raw) printf("\n");
    return n_bad;
}

static int cmd_run(int argc, char **argv) {
    static const Command cmd = {
        "run", "MODEL TOKEN... | MODEL --inputs FILE [--raw]",
        "Run the model and print one output per input token, space separated.\n"
        "BOS is added in front of the tokens (a leading BOS token is accepted and not doubled).\n"
        "Categorical outputs are decoded by argmax; numerical outputs are printed as numbers.",
        1, 1 << 20,
        "With --inputs, each line of FILE is one input (tokens separated by spaces) and each\n"
        "gives one line of outputs; with --raw, a block of lines followed by a blank line.\n"
        "Use -- before tokens that start with \"--\".\n"};
    int raw = 0, n_pos, n_tok, t, j, i, *ids, seq_start[2], n_bad = 0, status = 0;
    const char *inputs = NULL;
    Option opts[] = {{"--raw", OPT_FLAG, &raw, 0, 0, 0, NULL,
                      "print the output-space values instead: one line per position, BOS first", NULL},
                     {"--inputs", OPT_STRING, &inputs, 0, 0, 0, "FILE", "read inputs from FILE, one per line",
                      NULL},
                     {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char **pos = xmalloc((size_t)(argc + 1) * sizeof(char *), "arguments");
    Model m;
    Workspace *ws;
    Batch b;
    const ModelConfig *c;

    n_pos = parse_args(&cmd, opts, argc, argv, pos);
    if (inputs && n_pos > 1) usage_error(&cmd, "give input tokens or --inputs, not both");
    if (!inputs && n_pos < 2) usage_error(&cmd, "missing input tokens");
    load_model_or_exit(&m, pos[0]);
    c = &m.cfg;
    ws = workspace_new(c, 1);

    if (inputs) {
        Dataset d;
        if (dataset_read(&d, &m, inputs) != 0) {
            status = 1;
            goto done;
        }
        for (i = 0; i < d.n; i++) {
            int *row_src = xmalloc((size_t)d.stride * sizeof(int), "a batch");
            int *seq_ids = xmalloc((size_t)d.stride * sizeof(int), "a batch");
            b = batch_gather(&d, &i, 1, seq_ids, seq_start, row_src);
            n_bad += print_outputs(&m, model_forward(c, &m.w, ws, &b), b.n_rows, raw);
            if (raw) printf("\n");
            free(row_src);
            free(seq_ids);
        }
        dataset_free(&d);
    } else {
        n_tok = n_pos - 1;
        ids = xmalloc((size_t)(n_tok + 1) * sizeof(int), "the input");
        ids[0] = c->bos_id;
        for (t = 1, j = 1; j < n_pos; j++) {
            int id = vocab_lookup(&m, pos[j]);
            if (j == 1 && id == c->bos_id) {
                n_tok--;
                continue;
            }
            if (id < 0 || id == c->bos_id || id == c->pad_id) {
                fprintf(stderr, "llc run: token \"%s\" %s; the input tokens of %s are", pos[j], token_error(c, id),
                        pos[0]);
                print_input_tokens(stderr, &m);
                fprintf(stderr, "\n");
                free(ids);
                status = 2;
                goto done;
            }
            ids[t++] = id;
        }
        if (n_tok < 1 || n_tok > c->max_seq_len) {
            fprintf(stderr, "llc run: %d tokens given; %s takes 1 to max_seq_len = %d tokens\n", n_tok,
                    pos[0], c->max_seq_len);
            free(ids);
            status = 2;
            goto done;
        }
        seq_start[0] = 0;
        seq_start[1] = n_tok + 1;
        b.n_seqs = 1;
        b.n_rows = n_tok + 1;
        b.ids = ids;
        b.seq_start = seq_start;
        n_bad += print_outputs(&m, model_forward(c, &m.w, ws, &b), b.n_rows, raw);
        free(ids);
    }
    if (n_bad) {
        fprintf(stderr, "llc run: %d output positions of %s are not finite (printed as nan); the model's weights "
                        "overflow\n", n_bad, pos[0]);
        status = 1;
    }
done:
    workspace_free(ws);
    model_free(&m);
    free(pos);
    return status;
}

/* llc estimate ------------------------------------------------------------ */

/* Checks that a teacher reads the same inputs and writes the same outputs. */
static int check_teacher(const Model *student, const Model *teacher, const char *teacher_path) {
    const ModelConfig *s = &student->cfg, *t = &teacher->cfg;
    int i;
    const struct { const char *name; int model, teacher; } fields[] = {
        {"vocab size", s->n_vocab, t->n_vocab},
        {"BOS id", s->bos_id, t->bos_id},
        {"max_seq_len", s->max_seq_len, t->max_seq_len},
        {"number of output values", s->n_outputs, t->n_outputs},
        {"output kind (0 categorical, 1 numerical)", (int)s->output_kind, (int)t->output_kind}};
    for (i = 0; i < (int)(sizeof fields / sizeof fields[0]); i++) {
        if (fields[i].model == fields[i].teacher) continue;
        fprintf(stderr, "%s: teacher %s does not match the model: %s %d in the model, %d in the teacher; a "
                        "teacher must read the same inputs and write the same outputs\n", g_program, teacher_path,
                fields[i].name, fields[i].model, fields[i].teacher);
        return -1;
    }
    for (i = 0; i < s->n_vocab; i++) {
        if (strcmp(student->vocab[i], teacher->vocab[i]) != 0) {
            fprintf(stderr, "%s: teacher %s has token \"%s\" at id %d where the model has \"%s\"\n",
                    g_program, teacher_path, teacher->vocab[i], i, student->vocab[i]);
            return -1;
        }
    }
    return 0;
}

/* Loads the teacher named on the command line, or else the one recorded in
 * the student's metadata, where a relative path is taken from the folder of
 * the student file (after symbolic links). Returns 1 when loaded, 0 when
 * there is none, and stores the path it loaded in used (when not NULL).
 * outputs are the n_outputs files the command writes (NULL when not given):
 * a recorded teacher among them is a usage error, as --teacher is for
 * check_outputs_distinct. Exits after a message when it cannot be loaded. */
static int load_teacher(Model *teacher, const Model *m, const char *model_path, const char *given, char *used,
                        size_t used_size, const char *const *outputs, int n_outputs) {
    const char *recorded = model_meta(m, "teacher"), *path = given ? given : recorded;
    char *alt = NULL;
    int rc, k;
    if (!path) return 0;
    if (!given && path[0] != '/') {
        char *student = resolve_symlinks(model_path);
        const char *real = student ? student : model_path, *slash = strrchr(real, '/');
        int folder_len = slash ? (int)(slash - real) + 1 : 0;
        size_t n = (size_t)folder_len + strlen(path) + 1;
        alt = xmalloc(n, "a path");
        snprintf(alt, n, "%.*s%s", folder_len, real, path);
        path = alt;
        free(student);
    }
    if (!given && access(path, R_OK) != 0) {
        fprintf(stderr, "%s: the teacher recorded in %s, %s, cannot be opened at %s (%s); give it with --teacher "
                        "FILE\n", g_program, model_path, recorded, path, strerror(errno));
        exit(1);
    }
    for (k = 0; !given && k < n_outputs; k++) {
        if (!outputs[k] || !output_overlaps(outputs[k], path)) continue;
        fprintf(stderr, "%s: %s is the teacher recorded in %s; write the output to another file\n", g_program,
                outputs[k], model_path);
        exit(2);
    }
    if (same_file(path, model_path)) {
        fprintf(stderr, "%s: %s is its own teacher%s; give the real teacher with --teacher FILE\n", g_program,
                model_path, given ? "" : " (as recorded in it)");
        exit(1);
    }
    if (used) snprintf(used, used_size, "%s", path);
    rc = model_load(teacher, path);
    if (rc == 0 && check_teacher(m, teacher, path) != 0) {
        model_free(teacher);
        rc = -1;
    }
    free(alt);
    if (rc != 0) exit(1);
    return 1;
}

static LossKind resolve_loss(const char *name, const Model *m, const char *cmd) {
    int numerical = m->cfg.output_kind == OUTPUT_NUMERICAL;
    if (!strcmp(name, "auto")) return numerical ? LOSS_MSE : LOSS_KL;
    if (numerical && strcmp(name, "mse") != 0) {
        fprintf(stderr, "llc %s: --loss %s needs a categorical output, and this model's output is "
                        "numerical (use --loss mse)\n", cmd, name);
        exit(2);
    }
    return !strcmp(name, "ce") ? LOSS_CE : !strcmp(name, "mse") ? LOSS_MSE : LOSS_KL;
}

static void write_trace_csv(FILE *f, const LlcResult *r, const SgldSettings *s) {
    int c, d;
    fprintf(f, "chain,draw,step,loss\n");
    for (c = 0; c < r->chains; c++) {
        for (d = 0; d < r->draws; d++) {
            double v = r->loss_trace[(size_t)c * r->draws + d];
            if (d >= r->draws_done[c] && !isfinite(v)) continue;
            fprintf(f, "%d,%d,%ld,%.9g\n", c, d, (long)s->burnin + (long)d * s->every + s->every - 1, v);
        }
    }
}

/* The memory an estimate needs and its largest part. */
typedef struct {
    double total;               /* bytes */
    double largest;             /* bytes of the largest part */
    const char *largest_name;   /* that part, such as "the loss trace" */
    const char *advice;         /* how to shrink it, such as "use fewer --chains or --draws", or NULL */
} MemoryEstimate;

static void memory_part(MemoryEstimate *e, double bytes, const char *name, const char *advice) {
    if (bytes <= e->largest) return;
    e->largest = bytes;
    e->largest_name = name;
    e->advice = advice;
}

/* Bytes an estimate needs, from the sizes of the arenas it allocates: the
 * model and the dataset, plus the largest of the phases that follow one
 * another (labelling the inputs, the loss and gradient at w*, the chains
 * running in parallel), plus 10 % and 16 MB for the allocator and the
 * program. An estimate, used to refuse jobs that would not fit before they
 * start; a teacher model is not counted. */
static MemoryEstimate estimate_memory(const ModelConfig *c, size_t n_params, size_t n_fixed, int chains, int draws,
                                      int threads, int batch, int n_samples) {
    double r = (double)sizeof(real), rows = (double)n_samples * (c->max_seq_len + 1), chain, at_w_star, labelling;
    double model = r * (double)(n_params + n_fixed), dataset, trace, phase;
    MemoryEstimate e = {0.0, 0.0, NULL, NULL};
    int parallel = threads > 0 ? threads : cpu_count();
    Model shape;
    ModelProblem mp;
    LlcProblem p;
    if (parallel > chains) parallel = chains;
    memset(&shape, 0, sizeof shape);
    shape.cfg = *c;
    shape.n_fixed = n_fixed;
    memset(&mp, 0, sizeof mp);
    mp.m = &shape;
    mp.max_batch = batch < n_samples ? batch : n_samples;
    memset(&p, 0, sizeof p);
    p.n_params = n_params;
    p.n_samples = n_samples;
    chain = (double)sgld_chain_bytes(&p) + (double)model_chain_bytes(&mp);
    at_w_star = (double)model_chain_bytes(&mp) + (2 * r + 8) * (double)n_params;   /* a chain, w, grad, the mean */
    labelling = (double)workspace_bytes(c, mp.max_batch);
    dataset = rows * (3 * sizeof(int) + 2 * r * c->n_outputs) + (double)n_samples * sizeof(int);
    trace = (double)chains * (draws * sizeof(double) + 64);   /* the loss trace and per-chain results */
    phase = parallel * chain;
    if (at_w_star > phase) phase = at_w_star;
    if (labelling > phase) phase = labelling;
    e.total = 1.1 * (model + dataset + trace + phase) + 16e6;

    memory_part(&e, 16e6, "the program itself", NULL);
    memory_part(&e, model, "the model", NULL);
    memory_part(&e, dataset, "the input samples", "use fewer --samples");
    memory_part(&e, trace, "the loss trace", "use fewer --chains or --draws");
    memory_part(&e, parallel * chain, "the chains running in parallel", "use fewer --threads or a smaller --batch");
    memory_part(&e, at_w_star > labelling ? at_w_star : labelling, "one minibatch's activations and gradient",
                "use a smaller --batch");
    return e;
}

static double estimate_memory_bytes(const ModelConfig *c, size_t n_params, size_t n_fixed, int chains, int draws,
                                    int threads, int batch, int n_samples) {
    return estimate_memory(c, n_params, n_fixed, chains, draws, threads, batch, n_samples).total;
}

/* Memory available to a new job: MemAvailable of /proc/meminfo, else the
 * free physical pages, else unlimited. */
static double available_memory_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    if (f) {
        while (fgets(line, sizeof line, f)) {
            double kb;
            if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) {
                fclose(f);
                return kb * 1024.0;
            }
        }
        fclose(f);
    }
#ifdef _SC_AVPHYS_PAGES
    {
        long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        if (pages > 0 && size > 0) return (double)pages * (double)size;
    }
#endif
    return INFINITY;
}

static const char *format_bytes(double bytes, char *out, size_t n) {
    if (bytes >= 1e9) snprintf(out, n, "%.1f GB", bytes / 1e9);
    else if (bytes >= 1e6) snprintf(out, n, "%.0f MB", bytes / 1e6);
    else snprintf(out, n, "%.0f kB", bytes / 1e3);
    return out;
}

static const char *format_seconds(double seconds, char *out, size_t n) {
    if (seconds < 1) snprintf(out, n, "under 1 s");
    else if (seconds < 120) snprintf(out, n, "%.0f s", seconds);
    else if (seconds < 7200) snprintf(out, n, "%.0f min", seconds / 60);
    else snprintf(out, n, "%.1f h", seconds / 3600);
    return out;
}

/* Parses a memory size such as 8G, 512M, 100k or 2e9 (bytes); -1 if invalid. */
static double parse_bytes(const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (end == text || !isfinite(v) || v <= 0) return -1;
    if (*end == 'k' || *end == 'K') v *= 1e3, end++;
    else if (*end == 'M') v *= 1e6, end++;
    else if (*end == 'G') v *= 1e9, end++;
    else if (*end == 'T') v *= 1e12, end++;
    if (*end == 'B') end++;
    return *end ? -1 : v;
}

/* Multiply-adds per second of one thread on a mid-sized matmul: measured
 * once, for the time estimates printed before jobs start. */
static double measured_flops_per_second(void) {
    static double rate = 0.0;
    enum { M = 96, K = 256, N = 256 };
    real *A, *B, *C, *pack;
    double t0, elapsed;
    int reps = 0;
    if (rate > 0) return rate;
    A = xcalloc(M * K, sizeof(real), "a benchmark");
    B = xcalloc(K * N, sizeof(real), "a benchmark");
    C = xcalloc(M * N, sizeof(real), "a benchmark");
    pack = xcalloc(MM_PACK_REALS, sizeof(real), "a benchmark");
    A[0] = B[0] = 1;
    t0 = now_seconds();
    do {
        matmul_nn(pack, C, A, B, M, K, N, 0);
        reps++;
        elapsed = now_seconds() - t0;
    } while (elapsed < 0.05);
    rate = 2.0 * M * K * N * reps / elapsed;
    free(A), free(B), free(C), free(pack);
    return rate;
}

/* Seconds an estimate takes, from the parameter count, the rows per batch
 * and the measured matmul speed: a forward and a backward pass cost about
 * 6 flops per parameter and token position. A rough guide, not a promise. */
static double estimate_seconds(size_t n_params, const ModelConfig *c, const SgldSettings *s, int n_samples) {
    int parallel = s->threads > 0 ? s->threads : cpu_count();
    int batch = s->batch < n_samples ? s->batch : n_samples;
    double steps = (double)s->chains * ((double)s->draws * s->every + s->burnin);
    double flops = 6.0 * (double)n_params * batch * (c->max_seq_len + 1);
    if (parallel > s->chains) parallel = s->chains;
    return steps * flops / (measured_flops_per_second() * parallel);
}

/* The step size after --lr-scale: the base lr divided by (n_params /
 * ref_params) for linear and by its square for quadratic. */
static double scaled_lr(double base_lr, const char *lr_scale, size_t n_params, double ref_params) {
    double ratio = (double)n_params / ref_params;
    if (!strcmp(lr_scale, "linear")) return base_lr / ratio;
    if (!strcmp(lr_scale, "quadratic")) return base_lr / (ratio * ratio);
    return base_lr;
}

/* An LLC estimate as `llc estimate` runs it; llc sweep runs the same. */
typedef struct {
    const char *model_path, *teacher_path, *loss_arg, *inputs, *json_path, *trace_path;
    int n_samples;
    SgldSettings s;            /* s.lr is the base step size, before lr_scale */
    const char *lr_scale;      /* none, linear or quadratic */
    double lr_ref_params;
    double max_memory;         /* bytes; refuse jobs that need more */
    int strict;                /* any diverged chain makes the job fail */
    int lr_auto;               /* choose lr (and nbeta unless given) by calibration first */
    int summary;               /* print the summary on stdout */
} EstimateRequest;

static void estimate_request_defaults(EstimateRequest *q) {
    memset(q, 0, sizeof *q);
    sgld_defaults(&q->s);
    q->loss_arg = "auto";
    q->n_samples = 1024;
    q->lr_scale = "none";
    q->lr_ref_params = 1e4;
    q->max_memory = 0;
    q->summary = 1;
}

typedef struct {
    const EstimateRequest *q;
    const Model *m;
    size_t n_nonzero;
    const char *teacher_path, *loss;
    double lr;                 /* after lr_scale */
    double memory_bytes, estimated_seconds;
    int n_samples;
    long long peak_memory_bytes;   /* from getrusage(), or -1 */
    size_t model_bytes;            /* the parameter arena */
    size_t chain_bytes;            /* one chain's arenas */
} EstimateInfo;

static void write_estimate_json(FILE *f, const EstimateInfo *info, const SgldSettings *s, const LlcResult *r) {
    const EstimateRequest *q = info->q;
    Json j;
    int c, d;
    json_init(&j, f);
    j.inline_depth = 3;
    json_object(&j, NULL);
    json_str(&j, "model", q->model_path);
    json_str(&j, "program", model_meta(info->m, "program"));
    json_int(&j, "max_seq_len", info->m->cfg.max_seq_len);
    json_int(&j, "n_params", (long long)info->m->n_params);
    json_int(&j, "n_nonzero", (long long)info->n_nonzero);
    json_num(&j, "sparsity", model_sparsity(info->m, info->n_nonzero));
    json_str(&j, "loss", info->loss);
    json_str(&j, "status", r->interrupted ? "incomplete" : r->n_diverged == r->chains ? "diverged" : "ok");
    json_bool(&j, "complete", !r->interrupted);
    json_num(&j, "llc_mean", r->llc_mean);
    json_num(&j, "llc_std", r->llc_std);
    json_num(&j, "init_loss", r->init_loss);
    json_array(&j, "llc_chains");
    for (c = 0; c < r->chains; c++) json_num(&j, NULL, r->llc_chain[c]);
    json_array_end(&j);
    json_array(&j, "draws_done");
    for (c = 0; c < r->chains; c++) json_int(&j, NULL, r->draws_done[c]);
    json_array_end(&j);
    json_array(&j, "diverged_chains");
    for (c = 0; c < r->chains; c++) {
        if (r->diverged_step[c] < 0) continue;
        j.inline_depth = 2;
        json_object(&j, NULL);
        json_int(&j, "chain", c);
        json_int(&j, "step", r->diverged_step[c]);
        json_int(&j, "draw", r->diverged_draw[c]);
        json_object_end(&j);
        j.inline_depth = 3;
    }
    json_array_end(&j);
    json_object(&j, "diagnostics");
    json_num(&j, "grad_norm", r->grad_norm);
    json_num(&j, "grad_noise", r->grad_noise);
    json_int(&j, "grad_batches", r->grad_batches);
    json_bool(&j, "w_star_is_minimum", !r->not_minimum);
    json_array(&j, "mala_acceptance_chains");
    for (c = 0; c < r->chains; c++) json_num(&j, NULL, r->mala_chain[c]);
    json_array_end(&j);
    json_num(&j, "mala_acceptance_mean", r->mala_mean);
    json_num(&j, "r_hat", r->r_hat);
    json_num(&j, "second_half_slope", r->second_half_slope);
    json_num(&j, "second_half_change", r->second_half_change);
    json_num(&j, "second_half_std", r->second_half_std);
    json_bool(&j, "second_half_flat", r->flat);
    json_bool(&j, "second_half_settled", r->settled);
    json_int(&j, "chains_below_init_loss", r->n_below_init);
    json_object_end(&j);
    json_num(&j, "unchanged_update_fraction", r->unchanged_fraction);
    json_num(&j, "unchanged_update_fraction_nonzero", r->unchanged_fraction_nonzero);
    json_num(&j, "memory_estimate_bytes", info->memory_bytes);
    json_num(&j, "seconds", r->seconds);
    json_int(&j, "peak_memory_bytes", info->peak_memory_bytes);
    json_int(&j, "model_arena_bytes", (long long)info->model_bytes);
    json_int(&j, "chain_arena_bytes", (long long)info->chain_bytes);
    json_object(&j, "settings");
    json_num(&j, "lr", info->lr);
    json_num(&j, "base_lr", q->lr_auto ? info->lr : q->s.lr);
    json_bool(&j, "lr_auto", q->lr_auto);
    json_str(&j, "lr_scale", q->lr_scale);
    json_num(&j, "lr_ref_params", q->lr_ref_params);
    json_str(&j, "loss_arg", q->loss_arg);
    json_num(&j, "nbeta", r->nbeta);
    json_num(&j, "localization", s->localization);
    json_int(&j, "chains", s->chains);
    json_int(&j, "draws", s->draws);
    json_int(&j, "burnin", s->burnin);
    json_int(&j, "every", s->every);
    json_int(&j, "batch", s->batch);
    json_int(&j, "samples", info->n_samples);
    json_uint(&j, "seed", s->seed);
    json_str(&j, "inputs", q->inputs);
    json_str(&j, "teacher", info->teacher_path);
    json_str(&j, "precision", LLC_REAL_NAME);
    json_object_end(&j);
    json_array(&j, "loss_trace");
    for (c = 0; c < r->chains; c++) {
        /* an interrupted run's rows end at the chain's last draw, not padded with nulls up to --draws */
        int n = r->interrupted ? r->draws_done[c] : r->draws;
        json_array(&j, NULL);
        for (d = 0; d < n; d++) json_num(&j, NULL, r->loss_trace[(size_t)c * r->draws + d]);
        json_array_end(&j);
    }
    json_array_end(&j);
    json_object_end(&j);
}

/* Writes one output through a temporary file. An interrupted run writes to
 * PATH.incomplete instead, so a finished PATH from an earlier run stays. */
static int write_output(const char *path, int interrupted, void (*write)(FILE *, const void *), const void *ctx) {
    AtomicFile af;
    char *target = (char *)path;
    int rc;
    if (interrupted) {
        size_t n = strlen(path) + 16;
        target = xmalloc(n, "a path");
        snprintf(target, n, "%s.incomplete", path);
    }
    rc = atomic_open(&af, target);
    if (rc == 0) {
        write(af.f, ctx);
        rc = atomic_commit(&af);
    }
    if (rc == 0 && interrupted) {
        if (file_exists(path)) warn("interrupted: partial results are in %s; %s is unchanged", target, path);
        else warn("interrupted: partial results are in %s", target);
    }
    if (target != path) free(target);
    return rc;
}

typedef struct {
    const EstimateInfo *info;
    const SgldSettings *s;
    const LlcResult *r;
} EstimateOutput;

static void write_estimate_json_cb(FILE *f, const void *ctx) {
    const EstimateOutput *o = ctx;
    write_estimate_json(f, o->info, o->s, o->r);
}

static void write_trace_csv_cb(FILE *f, const void *ctx) {
    const EstimateOutput *o = ctx;
    write_trace_csv(f, o->r, o->s);
}

/* Prints the diagnostics in one line on stderr, and a warning for each sign
 * that the estimate cannot be trusted. */
static void report_diagnostics(const LlcResult *r, const char *loss, int self_reference) {
    char noise[48] = "", ratio[64] = "one batch, so no noise estimate";
    if (g_quiet == 0 || r->not_minimum || r->n_below_init) {
        if (isfinite(r->grad_noise)) snprintf(noise, sizeof noise, ", noise %.2g", r->grad_noise);
        fprintf(stderr, "%s: diagnostics: gradient norm at w* %.3g%s (%s), MALA acceptance %.3f, split-R-hat %.3f, "
                        "second half %s, %d of %d chains below init_loss\n",
                g_program, r->grad_norm, noise, r->not_minimum ? "w* is not a minimum" : "w* looks like a minimum",
                r->mala_mean, r->r_hat, r->flat ? "flat" : "not flat", r->n_below_init, r->chains);
    }
    if (isfinite(r->grad_noise) && r->grad_noise > 0)
        snprintf(ratio, sizeof ratio, "%.1f times its noise", r->grad_norm / r->grad_noise);
    else if (isfinite(r->grad_noise))
        snprintf(ratio, sizeof ratio, "the same on every batch");
    if (r->not_minimum)
        warn("w* is not a local minimum of the %s loss (mean gradient norm %.3g, %s): the LLC assumes a minimum, "
             "and the estimate depends on where the chains drift (it can come out negative)%s", loss, r->grad_norm,
             ratio, self_reference && !strcmp(loss, "ce")
                        ? "; the kl loss to the model itself is zero at w*, with zero gradient" : "");
    if (r->n_below_init)
        warn("%d of %d %s a mean loss below init_loss (a negative LLC): %s still descending from w*",
             r->n_below_init, r->chains, r->n_below_init == 1 ? "chain has" : "chains have",
             r->n_below_init == 1 ? "it is" : "they are");
    /* with most updates rounded away the chains do not move, and the acceptance measures only rounding */
    if (r->mala_mean < 0.5 && !(r->unchanged_fraction_nonzero > 0.5))
        warn("the MALA acceptance is %.2f: steps this large sample the tempered posterior poorly; a smaller --lr "
             "(see llc calibrate) gives acceptances near 0.9 or above", r->mala_mean);
    if (!r->flat && isfinite(r->second_half_change))
        warn("the mean loss still moves in the second half of the draws (by %.3g, std %.3g): the chains have not "
             "settled; more --draws, a --burnin or a --localization above 0 help", r->second_half_change,
             r->second_half_std);
}

/* Runs an estimate request; returns the exit status (0, 1, or 130). */
static int estimate_job(const EstimateRequest *q) {
    SgldSettings s = q->s;
    Model m, teacher;
    ModelConfig cfg;
    size_t n_params, n_fixed;
    Dataset data;
    ModelProblem mp;
    LlcProblem problem;
    LlcResult r;
    LossKind loss;
    EstimateInfo info;
    EstimateOutput out;
    Rng rng;
    int has_teacher, status = 0, i;
    char bytes_text[32], limit_text[32], part_text[32], time_text[32], teacher_used[4096];
    MemoryEstimate memory;

    /* size first: refuse what does not fit before allocating it */
    if (model_peek(q->model_path, &cfg, &n_params, &n_fixed) != 0) return 1;
    memset(&info, 0, sizeof info);
    info.q = q;
    memory = estimate_memory(&cfg, n_params, n_fixed, s.chains, s.draws, s.threads, s.batch, q->n_samples);
    info.memory_bytes = memory.total;
    if (info.memory_bytes > q->max_memory) {
        fprintf(stderr, "%s: %s needs about %s of memory, more than the limit of %s (--max-memory). The largest part "
                        "is %s, about %s, so %s%sraise --max-memory\n", g_program, q->model_path,
                format_bytes(info.memory_bytes, bytes_text, sizeof bytes_text),
                format_bytes(q->max_memory, limit_text, sizeof limit_text), memory.largest_name,
                format_bytes(memory.largest, part_text, sizeof part_text), memory.advice ? memory.advice : "",
                memory.advice ? ", or " : "");
        return 1;
    }

    load_model_or_exit(&m, q->model_path);
    {
        const char *outputs[2] = {q->json_path, q->trace_path};
        has_teacher = load_teacher(&teacher, &m, q->model_path, q->teacher_path, teacher_used, sizeof teacher_used,
                                   outputs, 2);
    }
    loss = resolve_loss(q->loss_arg, &m, "estimate");
    s.lr = info.lr = scaled_lr(q->s.lr, q->lr_scale, m.n_params, q->lr_ref_params);
    s.nbeta = q->s.nbeta;
    if (s.batch <= 1 && s.nbeta == 0) warn("batch size 1 gives the default nbeta 1 (B / ln B is undefined)");

    /* dataset: random full-length inputs, or the file; labelled by the reference */
    rng_seed(&rng, s.seed);
    info.n_samples = q->n_samples;
    if (q->inputs) {
        if (dataset_read(&data, &m, q->inputs) != 0) {
            if (has_teacher) model_free(&teacher);
            model_free(&m);
            return 1;
        }
        info.n_samples = data.n;
        if (s.batch > data.n)
            warn("%s has %d sequences, fewer than --batch %d: every minibatch is the whole file (nbeta still "
                 "follows --batch)", q->inputs, data.n, s.batch);
    } else {
        dataset_random(&data, &m.cfg, q->n_samples, &rng);
    }
    dataset_label(&data, has_teacher ? &teacher : &m, s.batch < data.n ? s.batch : data.n);

    /* labels in the file are targets, which only ce and mse fit */
    if (data.labels_from_file && !strcmp(q->loss_arg, "auto") && loss == LOSS_KL) loss = LOSS_CE;
    if (data.labels_from_file && loss == LOSS_KL)
        warn("the labels in %s are not used, because the kl loss compares with the %s's output distribution; "
             "use --loss ce to fit them", q->inputs, has_teacher ? "teacher" : "model");

    mp.m = &m;
    mp.data = &data;
    mp.loss = loss;
    mp.max_batch = s.batch < data.n ? s.batch : data.n;
    problem = model_problem(&mp);
    info.estimated_seconds = estimate_seconds(m.n_params, &m.cfg, &s, data.n);
    /* before the first progress line, so a caller that waits for that line can signal safely */
    install_interrupt_handlers();
    progress("%s: %zu parameters, loss %s, %d %s x %d %s, lr %g; needs about %s of memory and %s",
             q->model_path, m.n_params, loss_name(loss), s.chains, s.chains == 1 ? "chain" : "chains", s.draws,
             s.draws == 1 ? "draw" : "draws", s.lr,
             format_bytes(info.memory_bytes, bytes_text, sizeof bytes_text),
             format_seconds(info.estimated_seconds, time_text, sizeof time_text));
    if (q->lr_auto) {
        Calibration cal;
        double nbetas[5], lrs[] = {1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2};
        int j, n_nbetas = 5;
        SgldSettings short_chains = s;
        short_chains.chains = s.chains < 4 ? s.chains : 4;
        short_chains.draws = 100;
        short_chains.burnin = 0;
        short_chains.every = 1;
        if (s.nbeta > 0) nbetas[0] = s.nbeta, n_nbetas = 1;
        else
            for (j = 0; j < 5; j++) nbetas[j] = sgld_default_nbeta(s.batch) * pow(10.0, (j - 2) / 2.0);
        progress("--lr auto: calibrating over %d step sizes x %d nbeta values", 6, n_nbetas);
        if (calibrate(&problem, &short_chains, lrs, 6, nbetas, n_nbetas, &cal) < 0) die("invalid calibration settings");
        if (g_interrupted || cal.best < 0) {
            if (g_interrupted)
                warn("interrupted during the calibration of --lr auto: nothing is written");
            else
                fprintf(stderr, "%s: --lr auto found no stable settings (%s); run llc calibrate to see the grid, "
                                "or give --lr\n", g_program, cal.explanation);
            calibration_free(&cal);
            dataset_free(&data);
            if (has_teacher) model_free(&teacher);
            model_free(&m);
            return g_interrupted ? 130 : 1;
        }
        progress("--lr auto: %s", cal.explanation);
        s.lr = info.lr = cal.lr;
        s.nbeta = cal.nbeta;
        calibration_free(&cal);
    }
    if (llc_estimate(&problem, &s, &r) != 0) die("invalid SGLD settings");
    info.m = &m;
    info.teacher_path = NULL;
    if (has_teacher) info.teacher_path = teacher_used;
    info.loss = loss_name(loss);
    info.n_nonzero = model_count_nonzero(&m);
    info.peak_memory_bytes = peak_memory_bytes();
    info.model_bytes = (m.n_params + m.n_fixed) * sizeof(real);
    info.chain_bytes = sgld_chain_bytes(&problem) + model_chain_bytes(&mp);

    if (q->summary) {
        printf("model        %s (%s, max_seq_len %d)\n", q->model_path, model_program(&m), m.cfg.max_seq_len);
        printf("n_params     %zu (%zu non-zero, sparsity %.6g)\n", m.n_params, info.n_nonzero,
               model_sparsity(&m, info.n_nonzero));
        const char *reference = "the model itself at w*", *lr_note = "", *nbeta_note = "";
        if (has_teacher) reference = teacher_used;
        if (data.labels_from_file && loss != LOSS_KL) reference = "the labels in --inputs";
        if (strcmp(q->lr_scale, "none")) lr_note = " (scaled)";
        if (q->lr_auto) lr_note = " (calibrated)";
        if (s.nbeta <= 0) nbeta_note = " (batch / ln batch)";
        if (q->lr_auto && q->s.nbeta == 0) nbeta_note = " (calibrated)";
        printf("loss         %s on %d %s, reference %s\n", info.loss, data.n,
               q->inputs ? "input sequences" : "random inputs", reference);
        printf("sgld         lr %g%s, nbeta %g%s, localization %g, batch %d\n", s.lr, lr_note, r.nbeta, nbeta_note,
               s.localization, s.batch);
        printf("chains       %d x %d draws, burn-in %d, every %d, seed %llu\n", s.chains, s.draws, s.burnin, s.every,
               (unsigned long long)s.seed);
        printf("init_loss    %.9g\n", r.init_loss);
        printf("llc_mean     %.6g\n", r.llc_mean);
        printf("llc_std      %.6g\n", r.llc_std);
        printf("llc_chains  ");
        for (i = 0; i < r.chains; i++) printf(" %.6g", r.llc_chain[i]);
        printf("\n");
        if (r.n_diverged) {
            printf("diverged     %d of %d chains, left out of llc_mean:", r.n_diverged, r.chains);
            for (i = 0; i < r.chains; i++) {
                if (r.diverged_step[i] < 0) continue;
                if (r.diverged_draw[i] >= 0)
                    printf(" chain %d at step %d (after %d draws)", i, r.diverged_step[i], r.draws_done[i]);
                else
                    printf(" chain %d at step %d (burn-in)", i, r.diverged_step[i]);
            }
            printf("\n");
        }
        if (r.interrupted) {
            long long done = 0;
            for (i = 0; i < r.chains; i++) done += r.draws_done[i];
            printf("incomplete   interrupted after %lld of %lld draws\n", done, (long long)r.chains * r.draws);
        }
        printf("time         %.2f s\n", r.seconds);
        if (info.peak_memory_bytes >= 0)
            printf("memory       peak %.1f MiB resident (getrusage); ", info.peak_memory_bytes / 1048576.0);
        else
            printf("memory       peak unknown (getrusage failed); ");
        printf("arenas: parameters %.2f MiB, %.2f MiB per chain\n", info.model_bytes / 1048576.0,
               info.chain_bytes / 1048576.0);
    }
    for (i = 0; i < r.chains; i++) {
        if (r.diverged_step[i] < 0) continue;
        if (r.diverged_draw[i] >= 0)
            warn("chain %d diverged: non-finite loss or gradient at step %d, after %d of %d draws; it is left out "
                 "of llc_mean", i, r.diverged_step[i], r.draws_done[i], r.draws);
        else
            warn("chain %d diverged: non-finite loss or gradient at step %d, during burn-in; it is left out of "
                 "llc_mean", i, r.diverged_step[i]);
    }
    if (!isfinite(r.init_loss))
        warn("the loss at w* is %g, so there is no estimate: the model's outputs are not finite at its own "
             "weights (see llc run --raw)", r.init_loss);
    else if (r.n_diverged == r.chains)
        warn("every chain diverged, so there is no estimate; try a smaller --lr");
    report_diagnostics(&r, loss_name(loss), !has_teacher && !data.labels_from_file);
    /* A step changes a weight only if it exceeds about half the weight's spacing, eps/2 times |w|, with
     * eps 1.2e-7 in float32 and 2.2e-16 in float64. */
    if (r.unchanged_fraction_nonzero > 0.5)
        warn("%.0f %% of the updates of parameters that are non-zero at w* rounded to no change in %s (lr %g is "
             "below their precision)%s", 100 * r.unchanged_fraction_nonzero, LLC_REAL_NAME, s.lr,
             sizeof(real) == sizeof(double) ? ""
             : "; the float64 build llc64 (make DOUBLE=1) resolves steps down to about 1e-16 of a weight, "
               "against 6e-8 here");

    out.info = &info;
    out.s = &s;
    out.r = &r;
    if (q->json_path && write_output(q->json_path, r.interrupted, write_estimate_json_cb, &out) != 0) status = 1;
    if (q->trace_path && write_output(q->trace_path, r.interrupted, write_trace_csv_cb, &out) != 0) status = 1;
    if (status == 0 && r.n_diverged == r.chains) status = 1;
    if (status == 0 && q->strict && r.n_diverged > 0) {
        fprintf(stderr, "%s: %d of %d chains diverged and --strict is set\n", g_program, r.n_diverged, r.chains);
        status = 1;
    }
    if (r.interrupted) status = 130;

    llc_result_free(&r);
    dataset_free(&data);
    if (has_teacher) model_free(&teacher);
    model_free(&m);
    return status;
}

static int cmd_estimate(int argc, char **argv) {
    static const Command cmd = {
        "estimate", "MODEL [options]",
        "Estimate the local learning coefficient (LLC) of MODEL at its weights w* with SGLD,\n"
        "as devinterp's estimate_learning_coeff does. Each step moves the trainable parameters by\n"
        "  w <- w - (lr/2) (nbeta grad L(w) + localization (w - w*)) + sqrt(lr) N(0, I)\n"
        "and the LLC of a chain is nbeta (mean loss over its draws - loss at w*).",
        1, 1,
        "Losses (mean over the non-BOS positions of a minibatch):\n"
        "  ce   cross-entropy of the output logits against the reference's argmax labels\n"
        "       (the labels of --inputs when it gives them)\n"
        "  mse  squared error against the reference's outputs (one-hot labels when --inputs\n"
        "       gives them)\n"
        "  kl   KL(reference || model) of the output distributions\n"
        "  auto mse for a numerical output, ce when --inputs gives labels, else kl\n"
        "The reference is the teacher when one is given or recorded in MODEL, else MODEL\n"
        "itself at w*. Inputs are random full-length sequences unless --inputs is given.\n"
        "--lr-scale divides --lr by n_params / --lr-ref-params (linear) or by its square\n"
        "(quadratic). Before starting, the memory need is estimated and a job above\n"
        "--max-memory (default: the available memory) is refused. An interrupted run (Ctrl-C or SIGTERM)\n"
        "writes its partial results to FILE.incomplete and exits with status 130.\n"};
    EstimateRequest q;
    double nbeta = NAN;
    const char *max_memory = NULL, *lr_text = NULL;
    int quiet = 0;
    Option opts[] = {
        {"--lr", OPT_STRING, &lr_text, 0, 0, 0, "EPS|auto",
         "SGLD step size epsilon (default 1e-5); auto: calibrate first (see llc calibrate)", NULL},
        SGLD_OPTIONS_BUT_LR(q.s, nbeta, q.n_samples),
        {"--loss", OPT_STRING, &q.loss_arg, 0, 0, 0, "NAME", "loss: auto, ce, mse or kl", "auto|ce|mse|kl"},
        {"--teacher", OPT_STRING, &q.teacher_path, 0, 0, 0, "FILE", "reference model for labels and the KL loss",
         NULL},
        {"--inputs", OPT_STRING, &q.inputs, 0, 0, 0, "FILE", "input sequences, one per line (optionally \"| labels\")",
         NULL},
        {"--lr-scale", OPT_STRING, &q.lr_scale, 0, 0, 0, "KIND", "divide --lr by the relative model size",
         "none|linear|quadratic"},
        {"--lr-ref-params", OPT_REAL, &q.lr_ref_params, 0, INFINITY, 1, "N", "reference size of --lr-scale", NULL},
        {"--max-memory", OPT_STRING, &max_memory, 0, 0, 0, "BYTES", "refuse jobs needing more (e.g. 8G; default: "
         "available memory)", NULL},
        {"--strict", OPT_FLAG, &q.strict, 0, 0, 0, NULL, "fail (exit status 1) when any chain diverges", NULL},
        {"--json", OPT_STRING, &q.json_path, 0, 0, 0, "FILE", "write the results as JSON", NULL},
        {"--trace", OPT_STRING, &q.trace_path, 0, 0, 0, "FILE", "write the loss traces as CSV", NULL},
        {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "no progress messages", NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[1];

    estimate_request_defaults(&q);
    parse_args(&cmd, opts, argc, argv, pos);
    g_quiet = quiet;
    check_sgld_steps(&cmd, &q.s);
    q.model_path = pos[0];
    q.s.nbeta = isfinite(nbeta) ? nbeta : 0.0;
    if (lr_text && !strcmp(lr_text, "auto")) {
        q.lr_auto = 1;
    } else if (lr_text) {
        char *end;
        q.s.lr = strtod(lr_text, &end);
        if (*end || end == lr_text || !(q.s.lr > 0) || !isfinite(q.s.lr))
            usage_error(&cmd, "--lr must be a number > 0 or auto, got \"%s\"", lr_text);
    }
    if (q.lr_auto && strcmp(q.lr_scale, "none") != 0) usage_error(&cmd, "--lr auto cannot be combined with --lr-scale");
    q.max_memory = max_memory ? parse_bytes(max_memory) : available_memory_bytes();
    if (q.max_memory <= 0) usage_error(&cmd, "--max-memory must be a size such as 8G or 512M, got \"%s\"", max_memory);
    if (!q.inputs && q.s.batch > q.n_samples)
        usage_error(&cmd, "--batch %d is larger than --samples %d; use a batch of at most the samples", q.s.batch,
                    q.n_samples);
    {
        const CommandFile files[] = {{"MODEL", q.model_path, 0}, {"--teacher", q.teacher_path, 0},
                                     {"--inputs", q.inputs, 0},   {"--json", q.json_path, 1},
                                     {"--trace", q.trace_path, 1}};
        check_outputs_distinct(&cmd, files, 3, 5);
    }
    if ((q.json_path && check_writable(q.json_path) != 0) || (q.trace_path && check_writable(q.trace_path) != 0))
        return 1;
    return estimate_job(&q);
}

/* llc diff ---------------------------------------------------------------- */

static int cmd_diff(int argc, char **argv) {
    static const Command cmd = {
        "diff", "A.llcw B.llcw [--tol T]",
        "Compare two models: configuration, vocabulary, outputs, residual labels and, per tensor,\n"
        "the largest difference |a - b| / max(1, |a|). Exit status 0 when everything matches\n"
        "within the tolerance, 1 otherwise.",
        2, 2, NULL};
    double tol = 1e-6;
    int quiet = 0, k, i, same = 1;
    Option opts[] = {{"--tol", OPT_REAL, &tol, 0, INFINITY, 0, "T", "largest accepted scaled difference", NULL},
                     {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "print only the differences", NULL},
                     {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[2];
    Model a, b;
    const ModelConfig *ca, *cb;

    parse_args(&cmd, opts, argc, argv, pos);
    load_model_or_exit(&a, pos[0]);
    load_model_or_exit(&b, pos[1]);
    ca = &a.cfg;
    cb = &b.cfg;

#define DIFF_FIELD(field)                                                                          \
    if (ca->field != cb->field) {                                                                  \
        printf("config %-12s %d vs %d\n", #field, ca->field, cb->field);                          \
        same = 0;                                                                                  \
    }
    DIFF_FIELD(n_layers) DIFF_FIELD(n_heads) DIFF_FIELD(d_model) DIFF_FIELD(d_head) DIFF_FIELD(d_mlp)
    DIFF_FIELD(max_seq_len) DIFF_FIELD(n_vocab) DIFF_FIELD(bos_id) DIFF_FIELD(pad_id)
    DIFF_FIELD(output_kind) DIFF_FIELD(n_outputs) DIFF_FIELD(causal)
#undef DIFF_FIELD
    if (!same) {
        printf("different architectures\n");
        model_free(&a);
        model_free(&b);
        return 1;
    }

    for (i = 0; i < ca->n_vocab; i++)
        if (strcmp(a.vocab[i], b.vocab[i]) != 0) {
            printf("vocab %d: \"%s\" vs \"%s\"\n", i, a.vocab[i], b.vocab[i]);
            same = 0;
        }
    for (i = 0; i < ca->n_outputs; i++)
        if (strcmp(a.output_values[i], b.output_values[i]) != 0) {
            printf("output value %d: \"%s\" vs \"%s\"\n", i, a.output_values[i], b.output_values[i]);
            same = 0;
        }
    if (!a.output_dims != !b.output_dims) {
        printf("output dims: only one model projects residual dims onto the output\n");
        same = 0;
    }
    for (i = 0; a.output_dims && b.output_dims && i < ca->n_outputs; i++)
        if (a.output_dims[i] != b.output_dims[i]) {
            printf("output dim %d: %d vs %d\n", i, a.output_dims[i], b.output_dims[i]);
            same = 0;
        }
    if (a.residual_labels && b.residual_labels) {
        for (i = 0; i < ca->d_model; i++)
            if (strcmp(a.residual_labels[i], b.residual_labels[i]) != 0) {
                printf("residual %d: \"%s\" vs \"%s\"\n", i, a.residual_labels[i], b.residual_labels[i]);
                same = 0;
            }
    } else if (!quiet) {
        printf("residual labels: not compared (%s)\n",
               !a.residual_labels && !b.residual_labels ? "neither model has them" : "only one model has them");
    }

    for (k = 0; k < a.n_tensors; k++) {
        const real *va = model_tensor_data(&a, k), *vb = model_tensor_data(&b, k);
        double max_abs = 0.0, max_scaled = 0.0;
        size_t j, where = 0;
        for (j = 0; j < a.tensors[k].numel; j++) {
            double d = fabs((double)va[j] - vb[j]), scale = fabs((double)va[j]);
            double scaled = d / (scale > 1.0 ? scale : 1.0);
            if (d > max_abs) max_abs = d;
            if (scaled > max_scaled) max_scaled = scaled, where = j;
        }
        if (a.tensors[k].trainable != b.tensors[k].trainable) {
            printf("%-36s trainable in only one model\n", a.tensors[k].name);
            same = 0;
        }
        if (max_scaled > tol) {
            printf("%-36s max |a-b| %.3g, scaled %.3g at index %zu (%g vs %g): DIFFERENT\n",
                   a.tensors[k].name, max_abs, max_scaled, where, (double)va[where], (double)vb[where]);
            same = 0;
        } else if (!quiet) {
            printf("%-36s max |a-b| %.3g\n", a.tensors[k].name, max_abs);
        }
    }
    printf("%s\n", same ? "same within tolerance" : "models differ");
    model_free(&a);
    model_free(&b);
    return same ? 0 : 1;
}

/* llc distill ------------------------------------------------------------- */

static void distill_defaults(DistillSettings *ds) {
    memset(ds, 0, sizeof *ds);
    ds->steps = 10000;
    ds->lr = 3e-3;
    ds->batch = 32;
    ds->seed = 1;
    ds->eval_samples = 1024;
    ds->restored_at = 0.99;
    ds->tolerance = 1e-2;
}

static void write_distill_json(FILE *f, const char *teacher_path, const char *student_path, const Model *t,
                               const Model *s, const DistillSettings *ds, const DistillResult *r) {
    Json j;
    json_init(&j, f);
    json_object(&j, NULL);
    json_str(&j, "teacher", teacher_path);
    json_str(&j, "student", student_path);
    json_str(&j, "program", model_meta(t, "program"));
    json_int(&j, "max_seq_len", t->cfg.max_seq_len);
    json_num(&j, "shrink", ds->shrink);
    json_int(&j, "teacher_d_model", t->cfg.d_model);
    json_int(&j, "teacher_d_mlp", t->cfg.d_mlp);
    json_int(&j, "teacher_n_params", (long long)t->n_params);
    json_int(&j, "d_model", s->cfg.d_model);
    json_int(&j, "d_mlp", s->cfg.d_mlp);
    json_int(&j, "n_params", (long long)s->n_params);
    json_str(&j, "loss", loss_name(r->loss));
    json_bool(&j, "complete", !r->interrupted);
    json_num(&j, "final_loss", r->final_loss);
    json_num(&j, "eval_loss", r->eval_loss);
    json_num(&j, "agreement", r->agreement);
    json_bool(&j, "restored", r->restored);
    json_num(&j, "restored_at", ds->restored_at);
    json_int(&j, "steps", r->steps_done);
    json_num(&j, "seconds", r->seconds);
    json_object(&j, "settings");
    json_int(&j, "steps", ds->steps);
    json_num(&j, "lr", ds->lr);
    json_int(&j, "batch", ds->batch);
    json_uint(&j, "seed", ds->seed);
    json_int(&j, "eval_samples", ds->eval_samples);
    json_num(&j, "tolerance", ds->tolerance);
    json_object_end(&j);
    json_object_end(&j);
}

static int cmd_distill(int argc, char **argv) {
    static const Command cmd = {
        "distill", "TEACHER -o STUDENT --shrink F [options]",
        "Distill TEACHER into a student with the same layers and heads and with d_model and d_mlp\n"
        "shrunk by the fraction F (rounded up, at least 1). The student learns its embeddings and\n"
        "an unembedding onto the teacher's outputs with Adam on fresh random inputs, minimising\n"
        "KL(teacher || student) of the output distributions (squared error for a numerical output).",
        1, 1,
        "The student file records the teacher's path, so `llc estimate STUDENT` measures its LLC\n"
        "with the KL loss against the teacher by default.\n"};
    DistillSettings ds;
    const char *out = NULL, *json_path = NULL;
    int quiet = 0, status;
    Option opts[] = {
        {"-o", OPT_STRING, &out, 0, 0, 0, "FILE", "student weight file to write (required)", NULL},
        {"--shrink", OPT_REAL, &ds.shrink, 0, 1, OPEN_MAX, "F", "fraction of d_model and d_mlp to remove, 0 <= F < 1",
         NULL},
        {"--steps", OPT_INT, &ds.steps, 1, 1e8, 0, "N", "Adam steps", NULL},
        {"--lr", OPT_REAL, &ds.lr, 0, INFINITY, 1, "LR", "Adam step size", NULL},
        {"--batch", OPT_INT, &ds.batch, 1, 1e6, 0, "N", "random input sequences per step", NULL},
        {"--seed", OPT_U64, &ds.seed, 0, 0, 0, "N", "seed of the initial weights and the inputs", NULL},
        {"--eval-samples", OPT_INT, &ds.eval_samples, 1, 1e8, 0, "N", "held-out inputs for the agreement", NULL},
        {"--restored-at", OPT_REAL, &ds.restored_at, 0, 1, 0, "A",
         "agreement with the teacher that counts as restored", NULL},
        {"--tolerance", OPT_REAL, &ds.tolerance, 0, INFINITY, 1, "T",
         "numerical outputs agree when this close", NULL},
        {"--json", OPT_STRING, &json_path, 0, 0, 0, "FILE", "write the results as JSON", NULL},
        {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "no progress messages", NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[1];
    Model teacher, student;
    DistillResult r;
    Rng rng;

    distill_defaults(&ds);
    ds.shrink = NAN;
    parse_args(&cmd, opts, argc, argv, pos);
    g_quiet = quiet;
    if (!out) usage_error(&cmd, "missing -o STUDENT");
    if (!isfinite(ds.shrink)) usage_error(&cmd, "missing --shrink F");
    {
        const CommandFile files[] = {{"TEACHER", pos[0], 0}, {"-o", out, 1}, {"--json", json_path, 1}};
        check_outputs_distinct(&cmd, files, 1, 3);
    }
    if (check_writable(out) != 0 || (json_path && check_writable(json_path) != 0)) return 1;

    load_model_or_exit(&teacher, pos[0]);
    rng_seed(&rng, ds.seed);
    student_init(&student, &teacher, ds.shrink, pos[0], &rng);
    record_teacher(&student, pos[0], out);
    install_interrupt_handlers();   /* before the first progress line, as in estimate */
    progress("student of %s: d_model %d -> %d, d_mlp %d -> %d, %zu parameters", pos[0], teacher.cfg.d_model,
             student.cfg.d_model, teacher.cfg.d_mlp, student.cfg.d_mlp, student.n_params);
    status = distill(&teacher, &student, &ds, &r) == 0 ? 0 : 1;
    if (status == 0) model_set_meta(&student, "loss", loss_name(r.loss));

    printf("teacher      %s (%s, d_model %d, d_mlp %d, %zu parameters)\n", pos[0], model_program(&teacher),
           teacher.cfg.d_model, teacher.cfg.d_mlp, teacher.n_params);
    printf("student      %s (shrink %g: d_model %d, d_mlp %d, %zu parameters)\n", out, ds.shrink,
           student.cfg.d_model, student.cfg.d_mlp, student.n_params);
    printf("loss         %s\n", r.loss == LOSS_KL ? "kl: KL(teacher || student) of the output distributions"
                                                 : "mse: squared error against the teacher's output");
    printf("training     %d steps of %d inputs, Adam lr %g, final loss %.6g\n", r.steps_done, ds.batch, ds.lr,
           r.final_loss);
    printf("held-out     %d inputs: loss %.6g, agreement %.4f\n", ds.eval_samples, r.eval_loss, r.agreement);
    printf("restored     %s (agreement %s %g)\n", r.restored ? "yes" : "no", r.restored ? ">=" : "<",
           ds.restored_at);
    if (r.interrupted) printf("incomplete   interrupted after %d of %d steps\n", r.steps_done, ds.steps);
    printf("time         %.1f s\n", r.seconds);

    if (status == 0) {
        const char *student_path = out;
        char *partial = NULL;
        if (r.interrupted) {
            size_t n = strlen(out) + 16;
            partial = xmalloc(n, "a path");
            snprintf(partial, n, "%s.incomplete", out);
            student_path = partial;
            model_set_meta(&student, "incomplete", "interrupted before the last step");
            warn("interrupted after %d of %d steps: the student is written to %s%s%s%s, and %s is unchanged",
                 r.steps_done, ds.steps, partial, json_path ? " and the report to " : "", json_path ? json_path : "",
                 json_path ? ".incomplete" : "", out);
        }
        if (model_save(&student, student_path) != 0) status = 1;
        if (json_path) {
            AtomicFile af;
            char *json_out = NULL;
            if (r.interrupted) {
                size_t n = strlen(json_path) + 16;
                json_out = xmalloc(n, "a path");
                snprintf(json_out, n, "%s.incomplete", json_path);
            }
            if (atomic_open(&af, json_out ? json_out : json_path) == 0) {
                write_distill_json(af.f, pos[0], student_path, &teacher, &student, &ds, &r);
                if (atomic_commit(&af) != 0) status = 1;
            } else {
                status = 1;
            }
            free(json_out);
        }
        free(partial);
    }
    if (r.interrupted) status = 130;
    model_free(&teacher);
    model_free(&student);
    return status;
}

/* llc study-distill --------------------------------------------------------- */

enum { MAX_SHRINKS = 16 };

typedef struct {
    char program[32];
    char teacher_loss[8];
    char student_loss[8];               /* kl, or mse for a numerical output */
    double llc_mean[MAX_SHRINKS + 1];   /* [0] the teacher, [1 + k] the student of shrink k */
    double llc_std[MAX_SHRINKS + 1];
    double distill_loss[MAX_SHRINKS + 1];
    int restored[MAX_SHRINKS + 1];
    double *trace[MAX_SHRINKS + 1];     /* mean (loss - init_loss) per draw */
} StudyRow;

/* Returns the footer text of distill.md for the teachers' loss named name. */
static const char *teacher_loss_text(const char *name) {
    if (!strcmp(name, "ce")) return "the cross-entropy on their own argmax labels";
    if (!strcmp(name, "mse")) return "the squared error against their own outputs";
    if (!strcmp(name, "kl")) return "the KL to themselves";
    return "the KL to themselves (squared error for numerical outputs)";
}

static int cmd_study_distill(int argc, char **argv) {
    static const Command cmd = {
        "study-distill", "PROGRAM... [options]",
        "For each Tracr program: the teacher's LLC, then for each shrink fraction a distilled student,\n"
        "its LLC (KL loss against the teacher), its held-out distillation loss and whether it restores\n"
        "the teacher. Writes DIR/distill.csv, DIR/distill.md, and SVG plots of the SGLD loss traces\n"
        "per program and of the LLC and distillation loss against the shrink fraction.",
        1, 9,
        "Programs: length frac_prevs sort sort_unique hist sort_freq pair_balance dyck-2 dyck-3.\n"
        "Teachers are the shipped models, or are compiled into DIR with tracr_weights/compile.py.\n"};
    SgldSettings s;
    DistillSettings ds;
    double nbeta = NAN, shrinks[MAX_SHRINKS];
    int n_samples = 1024, max_seq_len = 5, quiet = 0, n_shrinks, n_programs, i, k, status = 0;
    const char *shrink_text = "0,0.48,0.95", *out_dir = "study_distill", *weights = NULL;
    const char *teacher_loss_name = "auto";
    Option opts[] = {
        SGLD_OPTIONS(s, nbeta, n_samples),
        {"--shrink", OPT_STRING, &shrink_text, 0, 0, 0, "F,F,...", "shrink fractions of the students", NULL},
        {"--max-seq-len", OPT_INT, &max_seq_len, 1, 100, 0, "N", "max_seq_len of the teachers", NULL},
        {"--out", OPT_STRING, &out_dir, 0, 0, 0, "DIR", "folder for models, tables and plots", NULL},
        {"--weights", OPT_STRING, &weights, 0, 0, 0, "DIR", "folder of shipped models and compile.py", NULL},
        {"--teacher-loss", OPT_STRING, &teacher_loss_name, 0, 0, 0, "NAME",
         "loss of the teacher's LLC: auto (kl to itself, mse for numerical outputs), ce, mse or kl",
         "auto|ce|mse|kl"},
        {"--distill-steps", OPT_INT, &ds.steps, 1, 1e8, 0, "N", "Adam steps per student", NULL},
        {"--distill-lr", OPT_REAL, &ds.lr, 0, INFINITY, 1, "LR", "Adam step size", NULL},
        {"--distill-batch", OPT_INT, &ds.batch, 1, 1e6, 0, "N", "random inputs per Adam step", NULL},
        {"--restored-at", OPT_REAL, &ds.restored_at, 0, 1, 0, "A", "agreement that counts as restored", NULL},
        {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "no progress messages", NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *programs[9], path[4096];
    StudyRow rows[9];
    AtomicFile af;
    FILE *csv;
    char *csv_text = NULL;
    size_t csv_len = 0;

    sgld_defaults(&s);
    distill_defaults(&ds);
    n_programs = parse_args(&cmd, opts, argc, argv, programs);
    g_quiet = quiet;
    check_sgld_steps(&cmd, &s);
    s.nbeta = isfinite(nbeta) ? nbeta : 0.0;
    n_shrinks = parse_number_list(shrink_text, shrinks, MAX_SHRINKS);
    if (n_shrinks < 1) usage_error(&cmd, "--shrink must be a list of up to %d numbers, got \"%s\"", MAX_SHRINKS,
                                   shrink_text);
    for (k = 0; k < n_shrinks; k++)
        if (shrinks[k] < 0 || shrinks[k] >= 1)
            usage_error(&cmd, "--shrink values must be in [0, 1), got %g", shrinks[k]);
    for (i = 0; i < n_programs; i++) check_tracr_program(&cmd, programs[i], "");
    if (make_dir(out_dir) != 0) return 1;
    weights = weights_dir(weights);
    ds.seed = s.seed;
    install_interrupt_handlers();
    memset(rows, 0, sizeof rows);

    csv = open_memstream(&csv_text, &csv_len);
    if (!csv) die("out of memory for the results table");
    fprintf(csv, "program,max_seq_len,model,shrink,d_model,d_mlp,n_params,n_nonzero,loss,llc_mean,llc_std,"
                  "init_loss,diverged_chains,distill_loss_name,distill_loss,agreement,restored,path\n");

    for (i = 0; i < n_programs && !g_interrupted; i++) {
        char teacher_path[4096];
        Model teacher;
        LlcResult r;
        LossKind teacher_loss;
        StudyRow *row = &rows[i];
        snprintf(row->program, sizeof row->program, "%s", programs[i]);

        if (find_or_compile_model(programs[i], max_seq_len, weights, out_dir, teacher_path, sizeof teacher_path))
            return 1;
        load_model_or_exit(&teacher, teacher_path);
        teacher_loss = resolve_loss(teacher_loss_name, &teacher, "study-distill");
        snprintf(row->teacher_loss, sizeof row->teacher_loss, "%s", loss_name(teacher_loss));
        progress("%s: teacher LLC (%s loss)", programs[i], loss_name(teacher_loss));
        estimate_on_random_inputs(&teacher, &teacher, teacher_loss, &s, n_samples, &r);
        row->llc_mean[0] = r.llc_mean;
        row->llc_std[0] = r.llc_std;
        row->distill_loss[0] = 0.0;
        row->trace[0] = xmalloc((size_t)s.draws * sizeof(double), "a trace");
        mean_trace(&r, row->trace[0]);
        csv_field(csv, programs[i]);
        fprintf(csv, ",%d,teacher,,%d,%d,%zu,%zu,%s,", max_seq_len, teacher.cfg.d_model, teacher.cfg.d_mlp,
                teacher.n_params, model_count_nonzero(&teacher), loss_name(teacher_loss));
        csv_number(csv, r.llc_mean, "%.9g");
        fputc(',', csv);
        csv_number(csv, r.llc_std, "%.9g");
        fputc(',', csv);
        csv_number(csv, r.init_loss, "%.9g");
        fprintf(csv, ",%d,,,,,", r.n_diverged);
        csv_field(csv, teacher_path);
        fputc('\n', csv);
        llc_result_free(&r);

        for (k = 0; k < n_shrinks && !g_interrupted; k++) {
            char student_path[4096];
            Model student;
            DistillResult dr;
            Rng rng;
            ds.shrink = shrinks[k];
            snprintf(student_path, sizeof student_path, "%s/%s_n%d_shrink%g.llcw", out_dir, programs[i],
                     max_seq_len, shrinks[k]);
            progress("%s: distilling the student of shrink %g", programs[i], shrinks[k]);
            rng_seed(&rng, ds.seed);
            student_init(&student, &teacher, shrinks[k], teacher_path, &rng);
            record_teacher(&student, teacher_path, student_path);
            if (distill(&teacher, &student, &ds, &dr) != 0 || dr.interrupted) {
                model_free(&student);
                status = dr.interrupted ? 130 : 1;
                break;
            }
            model_set_meta(&student, "loss", loss_name(dr.loss));
            snprintf(row->student_loss, sizeof row->student_loss, "%s", loss_name(dr.loss));
            if (model_save(&student, student_path) != 0) return 1;

            progress("%s: student LLC (%s loss against the teacher)", programs[i], loss_name(dr.loss));
            estimate_on_random_inputs(&student, &teacher, dr.loss, &s, n_samples, &r);
            row->llc_mean[1 + k] = r.llc_mean;
            row->llc_std[1 + k] = r.llc_std;
            row->distill_loss[1 + k] = dr.eval_loss;
            row->restored[1 + k] = dr.restored;
            row->trace[1 + k] = xmalloc((size_t)s.draws * sizeof(double), "a trace");
            mean_trace(&r, row->trace[1 + k]);
            csv_field(csv, programs[i]);
            fprintf(csv, ",%d,student,%g,%d,%d,%zu,%zu,%s,", max_seq_len, shrinks[k], student.cfg.d_model,
                    student.cfg.d_mlp, student.n_params, model_count_nonzero(&student), loss_name(dr.loss));
            csv_number(csv, r.llc_mean, "%.9g");
            fputc(',', csv);
            csv_number(csv, r.llc_std, "%.9g");
            fputc(',', csv);
            csv_number(csv, r.init_loss, "%.9g");
            fprintf(csv, ",%d,%s,", r.n_diverged, loss_name(dr.loss));
            csv_number(csv, dr.eval_loss, "%.9g");
            fputc(',', csv);
            csv_number(csv, dr.agreement, "%.6f");
            fprintf(csv, ",%s,", dr.restored ? "true" : "false");
            csv_field(csv, student_path);
            fputc('\n', csv);
            llc_result_free(&r);
            model_free(&student);
        }
        model_free(&teacher);
        if (status) break;
    }
    if (g_interrupted) status = 130;
    fclose(csv);
    snprintf(path, sizeof path, "%s/distill.csv%s", out_dir, status == 130 ? ".incomplete" : "");
    if (atomic_open(&af, path) != 0) return 1;
    fwrite(csv_text, 1, csv_len, af.f);
    free(csv_text);
    if (atomic_commit(&af) != 0) return 1;

    /* Markdown table shaped like the study's: one row per program. */
    snprintf(path, sizeof path, "%s/distill.md%s", out_dir, status == 130 ? ".incomplete" : "");
    if (atomic_open(&af, path) != 0) return 1;
    fprintf(af.f, "| Program | Teacher |");
    for (k = 0; k < n_shrinks; k++) fprintf(af.f, " %g %% shrunk |", 100 * shrinks[k]);
    fprintf(af.f, "\n|---|---|");
    for (k = 0; k < n_shrinks; k++) fprintf(af.f, "---|");
    fprintf(af.f, "\n");
    for (i = 0; i < n_programs && rows[i].trace[0]; i++) {
        fprintf(af.f, "| %s | %.3g ± %.2g |", rows[i].program, rows[i].llc_mean[0], rows[i].llc_std[0]);
        for (k = 0; k < n_shrinks; k++) {
            if (rows[i].trace[1 + k])
                fprintf(af.f, " %.3g ± %.2g %s |", rows[i].llc_mean[1 + k], rows[i].llc_std[1 + k],
                        rows[i].restored[1 + k] ? "(restored)" : "(not restored)");
            else
                fprintf(af.f, " |");
        }
        fprintf(af.f, "\n");
    }
    fprintf(af.f, "\nLLC mean ± std over %d chains (%d draws, lr %g, batch %d). The teachers' LLC uses %s; the "
                  "students' uses the KL to their teacher (squared error for numerical outputs). \"restored\": "
                  "the student agrees with the teacher on at least %g %% of held-out positions.\n",
            s.chains, s.draws, s.lr, s.batch, teacher_loss_text(teacher_loss_name), 100 * ds.restored_at);
    if (atomic_commit(&af) != 0) return 1;
    if (status == 130) {
        warn("interrupted: the finished rows are in %s/distill.csv.incomplete and %s/distill.md.incomplete; no "
             "plots are drawn", out_dir, out_dir);
        for (i = 0; i < n_programs; i++)
            for (k = 0; k <= n_shrinks; k++) free(rows[i].trace[k]);
        return status;
    }

    /* Plots: traces per program, then LLC and distillation loss against shrink. */
    {
        double *draw_x = xmalloc((size_t)s.draws * sizeof(double), "draw numbers");
        PlotSeries series[MAX_SHRINKS + 1], by_shrink[18];
        char labels[MAX_SHRINKS + 1][96], title[128];
        double *llc_all = xcalloc((size_t)n_programs * n_shrinks, sizeof(double), "series");
        double *loss_all = xcalloc((size_t)n_programs * n_shrinks, sizeof(double), "series");
        double *teacher_line = xcalloc((size_t)n_programs * n_shrinks, sizeof(double), "series");
        LinePlot plot;
        int n_done = 0;
        for (k = 0; k < s.draws; k++) draw_x[k] = k;
        for (i = 0; i < n_programs && rows[i].trace[0]; i++) {
            int n_series = 0;
            for (k = 0; k <= n_shrinks; k++) {
                if (!rows[i].trace[k]) continue;
                if (k == 0) snprintf(labels[k], sizeof labels[k], "teacher (%s loss)", rows[i].teacher_loss);
                else snprintf(labels[k], sizeof labels[k], "student, %g %% shrunk (%s to the teacher)",
                              100 * shrinks[k - 1], rows[i].student_loss);
                memset(&series[n_series], 0, sizeof series[0]);
                series[n_series].label = labels[k];
                series[n_series].x = draw_x;
                series[n_series].y = rows[i].trace[k];
                series[n_series].n = s.draws;
                series[n_series].color = k;
                n_series++;
            }
            memset(&plot, 0, sizeof plot);
            snprintf(title, sizeof title, "SGLD loss traces: %.31s, max_seq_len %d", rows[i].program, max_seq_len);
            plot.title = title;
            plot.x_label = "draw";
            plot.y_label = "mean over chains of loss - init_loss";
            plot.series = series;
            plot.n_series = n_series;
            snprintf(path, sizeof path, "%.4000s/traces_%.31s.svg", out_dir, rows[i].program);
            if (write_line_plot(path, &plot) != 0) status = 1;
            n_done++;
        }
        for (i = 0; i < n_done; i++) {
            for (k = 0; k < n_shrinks; k++) {
                llc_all[i * n_shrinks + k] = rows[i].trace[1 + k] ? rows[i].llc_mean[1 + k] : NAN;
                loss_all[i * n_shrinks + k] = rows[i].trace[1 + k] ? rows[i].distill_loss[1 + k] : NAN;
                teacher_line[i * n_shrinks + k] = rows[i].llc_mean[0];
            }
        }
        memset(by_shrink, 0, sizeof by_shrink);
        for (i = 0; i < n_done; i++) {
            by_shrink[2 * i].label = rows[i].program;
            by_shrink[2 * i].x = shrinks;
            by_shrink[2 * i].y = llc_all + i * n_shrinks;
            by_shrink[2 * i].n = n_shrinks;
            by_shrink[2 * i].color = i;
            by_shrink[2 * i + 1].label = NULL;
            by_shrink[2 * i + 1].x = shrinks;
            by_shrink[2 * i + 1].y = teacher_line + i * n_shrinks;
            by_shrink[2 * i + 1].n = n_shrinks;
            by_shrink[2 * i + 1].color = i;
            by_shrink[2 * i + 1].dashed = 1;
        }
        memset(&plot, 0, sizeof plot);
        plot.title = "LLC of distilled students";
        plot.x_label = "shrink fraction of d_model and d_mlp";
        plot.y_label = "llc_mean";
        plot.series = by_shrink;
        plot.n_series = 2 * n_done;
        plot.note = "solid: students; dashed: the teacher's LLC";
        snprintf(path, sizeof path, "%s/llc_vs_shrink.svg", out_dir);
        if (write_line_plot(path, &plot) != 0) status = 1;
        for (i = 0; i < n_done; i++) {
            by_shrink[i] = by_shrink[2 * i];
            by_shrink[i].y = loss_all + i * n_shrinks;
        }
        plot.title = "Distillation loss of the students";
        plot.y_label = "held-out KL(teacher || student) (mse for numerical outputs)";
        plot.n_series = n_done;
        plot.log_y = 1;
        plot.note = NULL;
        snprintf(path, sizeof path, "%s/kl_vs_shrink.svg", out_dir);
        if (write_line_plot(path, &plot) != 0) status = 1;
        free(draw_x);
        free(llc_all);
        free(loss_all);
        free(teacher_line);
    }
    for (i = 0; i < n_programs; i++)
        for (k = 0; k <= n_shrinks; k++) free(rows[i].trace[k]);
    printf("wrote %s/distill.csv, %s/distill.md and plots in %s\n", out_dir, out_dir, out_dir);
    return status;
}

/* llc landscape ----------------------------------------------------------- */

enum { MAX_LANDSCAPES = 8 };

static int cmd_landscape(int argc, char **argv) {
    static const Command cmd = {
        "landscape", "MODEL... [options]",
        "Loss landscape around the weights w* along the top two principal components of minibatch\n"
        "gradients: K gradients at w* are centred, their top two principal directions are found by\n"
        "power iteration, and the loss is evaluated on an N x N grid w* + a d1 + b d2, a and b in\n"
        "[-span, span]. Several models (a teacher and its students) share one colour scale.",
        1, MAX_LANDSCAPES,
        "--loss auto is ce for a categorical model without a teacher (the KL to itself has zero\n"
        "gradient at w* and so no principal directions), kl against the teacher for a student,\n"
        "and mse for numerical outputs. Where the centred gradients at w* vary along one direction\n"
        "only (always so with --batches 2) or not at all, seeded random orthogonal directions\n"
        "replace the missing principal components and are labelled so. The default span is\n"
        "1 parameter unit, or 0.1 with --scale norm (a and b in units of ||w*||).\n"};
    LandscapeSettings ls;
    double span = NAN;
    int n_samples = 512, quiet = 0, log_color = 0, n_models, i, j, status = 0;
    const char *scale = "raw", *loss_arg = "auto", *teacher_arg = NULL, *csv_path = NULL, *json_path = NULL,
               *svg_path = NULL;
    Option opts[] = {
        {"--batches", OPT_INT, &ls.batches, 2, 1e5, 0, "K", "minibatch gradients for the PCA", NULL},
        {"--batch", OPT_INT, &ls.batch, 1, 1e6, 0, "N", "sequences per minibatch", NULL},
        {"--samples", OPT_INT, &n_samples, 1, 1e8, 0, "N", "random input sequences (at least K * batch)", NULL},
        {"--grid", OPT_INT, &ls.grid, 2, 1001, 0, "N", "grid points per axis", NULL},
        {"--span", OPT_REAL, &span, 0, INFINITY, 1, "R", "the grid covers [-R, R] on both axes", NULL},
        {"--scale", OPT_STRING, &scale, 0, 0, 0, "raw|norm", "units of a and b: parameters, or ||w*||", "raw|norm"},
        {"--loss", OPT_STRING, &loss_arg, 0, 0, 0, "NAME", "loss: auto, ce, mse or kl", "auto|ce|mse|kl"},
        {"--teacher", OPT_STRING, &teacher_arg, 0, 0, 0, "FILE", "reference model for every MODEL", NULL},
        {"--seed", OPT_U64, &ls.seed, 0, 0, 0, "N", "seed of the inputs and the gradient batches", NULL},
        {"--threads", OPT_INT, &ls.threads, 0, 4096, 0, "N", "worker threads, 0 = one per core", NULL},
        {"--csv", OPT_STRING, &csv_path, 0, 0, 0, "FILE", "write rows a,b,loss (model,a,b,loss for several)", NULL},
        {"--json", OPT_STRING, &json_path, 0, 0, 0, "FILE", "write the grids and directions' shares as JSON", NULL},
        {"--svg", OPT_STRING, &svg_path, 0, 0, 0, "FILE", "draw the heat maps", NULL},
        {"--log-color", OPT_FLAG, &log_color, 0, 0, 0, NULL, "logarithmic colour scale, for sharp landscapes", NULL},
        {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "no progress messages", NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *paths[MAX_LANDSCAPES];
    Landscape lands[MAX_LANDSCAPES];
    const Landscape *land_ptrs[MAX_LANDSCAPES];
    const char *titles[MAX_LANDSCAPES], *loss_names[MAX_LANDSCAPES];
    AtomicFile af;

    memset(&ls, 0, sizeof ls);
    ls.batches = 16;
    ls.batch = 32;
    ls.grid = 21;
    ls.shuffle = 1;
    ls.seed = 1;
    n_models = parse_args(&cmd, opts, argc, argv, paths);
    g_quiet = quiet;
    ls.scale_by_norm = !strcmp(scale, "norm");
    ls.span = isfinite(span) ? span : ls.scale_by_norm ? 0.1 : 1.0;
    if ((long)ls.batches * ls.batch > n_samples)
        usage_error(&cmd, "--samples (%d) must be at least --batches * --batch (%ld)", n_samples,
                    (long)ls.batches * ls.batch);
    {
        CommandFile files[MAX_LANDSCAPES + 4];
        for (i = 0; i < n_models; i++) files[i] = (CommandFile){"MODEL", paths[i], 0};
        files[n_models] = (CommandFile){"--teacher", teacher_arg, 0};
        files[n_models + 1] = (CommandFile){"--csv", csv_path, 0};
        files[n_models + 2] = (CommandFile){"--json", json_path, 0};
        files[n_models + 3] = (CommandFile){"--svg", svg_path, 0};
        check_outputs_distinct(&cmd, files, n_models + 1, n_models + 4);
    }
    if ((csv_path && check_writable(csv_path)) || (json_path && check_writable(json_path)) ||
        (svg_path && check_writable(svg_path)))
        return 1;
    for (i = 0; i <= n_models; i++) {   /* every model's header, so a bad one fails before any work */
        const char *path = i < n_models ? paths[i] : teacher_arg;
        ModelConfig cfg;
        size_t n_params, n_fixed;
        if (path && model_peek(path, &cfg, &n_params, &n_fixed) != 0) return 1;
    }
    install_interrupt_handlers();

    for (i = 0; i < n_models; i++) {
        const char *outputs[3] = {csv_path, json_path, svg_path};
        Model m, teacher;
        Dataset d;
        ModelProblem mp;
        LlcProblem p;
        LossKind loss;
        Rng rng;
        int has_teacher, rc;
        load_model_or_exit(&m, paths[i]);
        has_teacher = load_teacher(&teacher, &m, paths[i], teacher_arg, NULL, 0, outputs, 3);
        /* auto: the KL to the model itself has zero gradient at w*, which gives no directions, so a
         * teacher without a reference uses the cross-entropy on its own labels */
        if (!strcmp(loss_arg, "auto") && !has_teacher && m.cfg.output_kind == OUTPUT_CATEGORICAL) loss = LOSS_CE;
        else loss = resolve_loss(loss_arg, &m, "landscape");
        rng_seed(&rng, ls.seed);
        dataset_random(&d, &m.cfg, n_samples, &rng);
        dataset_label(&d, has_teacher ? &teacher : &m, ls.batch);
        mp.m = &m;
        mp.data = &d;
        mp.loss = loss;
        mp.max_batch = ls.batch;
        p = model_problem(&mp);
        progress("%s: %d gradients, %d x %d grid, %s loss", paths[i], ls.batches, ls.grid, ls.grid, loss_name(loss));
        rc = landscape_compute(&p, &ls, &lands[i]);
        if (rc < 0) die("invalid landscape settings");
        land_ptrs[i] = &lands[i];
        titles[i] = paths[i];
        loss_names[i] = loss_name(loss);
        printf("model        %s (%s loss)\n", paths[i], loss_name(loss));
        if (lands[i].random_directions == 2)
            printf("directions   both random, %.4f degrees apart\n", lands[i].angle_degrees);
        else if (lands[i].random_directions == 1)
            printf("directions   PC1 %.1f %% of the gradient variance, PC2 random, %.4f degrees apart\n",
                   100 * lands[i].variance_share[0], lands[i].angle_degrees);
        else
            printf("directions   PC1 %.1f %%, PC2 %.1f %% of the gradient variance, %.4f degrees apart\n",
                   100 * lands[i].variance_share[0], 100 * lands[i].variance_share[1], lands[i].angle_degrees);
        if (lands[i].random_directions == 2)
            warn("%s: both directions are random, because the %d minibatch gradients of the %s loss at w* are "
                 "equal up to rounding (all zero if w* is a stationary point of every batch's loss)", paths[i],
                 ls.batches, loss_name(loss));
        else if (lands[i].random_directions == 1 && ls.batches == 2)
            warn("%s: PC2 is a random direction, because 2 centred gradients span only one direction; use "
                 "--batches 3 or more for a second principal component", paths[i]);
        else if (lands[i].random_directions == 1)
            warn("%s: PC2 is a random direction, because the %d centred minibatch gradients of the %s loss vary "
                 "along one direction only", paths[i], ls.batches, loss_name(loss));
        if (rc > 0)
            printf("incomplete   interrupted before the grid was finished\n");
        else if (lands[i].min_loss <= lands[i].max_loss)
            printf("loss         %.6g at w*, from %.6g to %.6g on the grid\n", lands[i].centre_loss,
                   lands[i].min_loss, lands[i].max_loss);
        else
            printf("loss         %.6g at w*, not finite at any grid point\n", lands[i].centre_loss);
        printf("time         %.1f s\n", lands[i].seconds);
        dataset_free(&d);
        if (has_teacher) model_free(&teacher);
        model_free(&m);
        if (rc > 0) {
            warn("interrupted: no files are written");
            for (j = 0; j <= i; j++) landscape_free(&lands[j]);
            return 130;
        }
    }

    if (csv_path) {
        if (atomic_open(&af, csv_path) != 0) return 1;
        fprintf(af.f, n_models > 1 ? "model,a,b,loss\n" : "a,b,loss\n");
        for (i = 0; i < n_models; i++) {
            int N = lands[i].grid, r, c;
            for (r = 0; r < N; r++)
                for (c = 0; c < N; c++) {
                    if (n_models > 1) {
                        csv_field(af.f, paths[i]);
                        fputc(',', af.f);
                    }
                    fprintf(af.f, "%.9g,%.9g,%.9g\n", lands[i].a[c], lands[i].b[r], lands[i].loss[(size_t)r * N + c]);
                }
        }
        if (atomic_commit(&af) != 0) status = 1;
    }
    if (json_path) {
        Json js;
        if (atomic_open(&af, json_path) != 0) return 1;
        json_init(&js, af.f);
        js.inline_depth = 3;
        json_object(&js, NULL);
        json_object(&js, "settings");
        json_int(&js, "batches", ls.batches);
        json_int(&js, "batch", ls.batch);
        json_int(&js, "samples", n_samples);
        json_int(&js, "grid", ls.grid);
        json_num(&js, "span", ls.span);
        json_str(&js, "scale", ls.scale_by_norm ? "norm" : "raw");
        json_uint(&js, "seed", ls.seed);
        json_object_end(&js);
        json_array(&js, "landscapes");
        for (i = 0; i < n_models; i++) {
            const Landscape *l = &lands[i];
            int r, c;
            json_object(&js, NULL);
            json_str(&js, "model", paths[i]);
            json_str(&js, "loss", loss_names[i]);
            json_array(&js, "variance_share");
            json_num(&js, NULL, l->variance_share[0]);
            json_num(&js, NULL, l->variance_share[1]);
            json_array_end(&js);
            json_num(&js, "angle_degrees", l->angle_degrees);
            json_int(&js, "random_directions", l->random_directions);
            json_num(&js, "w_norm", l->w_norm);
            json_num(&js, "centre_loss", l->centre_loss);
            json_num(&js, "min_loss", l->min_loss);
            json_num(&js, "max_loss", l->max_loss);
            json_array(&js, "a");
            for (c = 0; c < l->grid; c++) json_num(&js, NULL, l->a[c]);
            json_array_end(&js);
            json_array(&js, "b");
            for (r = 0; r < l->grid; r++) json_num(&js, NULL, l->b[r]);
            json_array_end(&js);
            json_array(&js, "loss");
            for (r = 0; r < l->grid; r++) {
                json_array(&js, NULL);
                for (c = 0; c < l->grid; c++) json_num(&js, NULL, l->loss[(size_t)r * l->grid + c]);
                json_array_end(&js);
            }
            json_array_end(&js);
            json_object_end(&js);
        }
        json_array_end(&js);
        json_object_end(&js);
        if (atomic_commit(&af) != 0) status = 1;
    }
    if (svg_path) {
        char loss_label[64];
        int same_loss = 1;
        for (i = 1; i < n_models; i++) same_loss &= !strcmp(loss_names[i], loss_names[0]);
        snprintf(loss_label, sizeof loss_label, "%s loss", same_loss ? loss_names[0] : "each model's");
        if (atomic_open(&af, svg_path) != 0) return 1;
        svg_landscapes(af.f, land_ptrs, titles, n_models, log_color, loss_label,
                       ls.scale_by_norm ? " in units of ||w*||" : "");
        if (atomic_commit(&af) != 0) status = 1;
    }
    for (i = 0; i < n_models; i++) landscape_free(&lands[i]);
    return status;
}

/* llc calibrate ------------------------------------------------------------ */

static int cmd_calibrate(int argc, char **argv) {
    static const Command cmd = {
        "calibrate", "MODEL [--lr-grid EPS,...] [--nbeta-grid NB,...] [options]",
        "Run short SGLD chains over a grid of step sizes and nbeta values and recommend settings: the\n"
        "largest step size whose chains are stable (no divergence, MALA acceptance at least 0.95,\n"
        "a flat second half of the loss trace, a non-negative LLC, confirmed by chains four times\n"
        "as long) with an nbeta where the LLC is flat in nbeta, preferring the default batch / ln(batch).",
        1, 1,
        "The MALA acceptance here takes both potentials on the same minibatch (one more forward pass\n"
        "per step): devinterp's formula mixes two minibatches, and nbeta times their loss difference\n"
        "swamps it for small batches. Writes the grid with --csv and a plot of the LLC against the\n"
        "step size per nbeta with --svg (unstable points drawn as crosses).\n"};
    SgldSettings s;
    double lrs[32], nbetas[32];
    int n_samples = 1024, quiet = 0, n_lrs, n_nbetas, i, j, status = 0, has_teacher;
    const char *lr_grid = "1e-7,1e-6,1e-5,1e-4,1e-3,1e-2", *nbeta_grid = NULL, *loss_arg = "auto",
               *teacher_arg = NULL, *csv_path = NULL, *svg_path = NULL;
    Option opts[] = {
        {"--lr-grid", OPT_STRING, &lr_grid, 0, 0, 0, "EPS,...", "step sizes to try", NULL},
        {"--nbeta-grid", OPT_STRING, &nbeta_grid, 0, 0, 0, "NB,...",
         "nbeta values to try (default: batch / ln(batch) times 0.1, 0.32, 1, 3.2 and 10)", NULL},
        SGLD_CHAIN_OPTIONS(s, n_samples),
        {"--loss", OPT_STRING, &loss_arg, 0, 0, 0, "NAME", "loss: auto, ce, mse or kl", "auto|ce|mse|kl"},
        {"--teacher", OPT_STRING, &teacher_arg, 0, 0, 0, "FILE", "reference model for labels and the KL loss", NULL},
        {"--csv", OPT_STRING, &csv_path, 0, 0, 0, "FILE", "write the grid as CSV", NULL},
        {"--svg", OPT_STRING, &svg_path, 0, 0, 0, "FILE", "plot the LLC against the step size per nbeta", NULL},
        {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "no progress messages", NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[1];
    Model m, teacher;
    Dataset d;
    ModelProblem mp;
    LlcProblem p;
    Calibration cal;
    Rng rng;

    sgld_defaults(&s);
    s.chains = 4;
    s.draws = 100;
    parse_args(&cmd, opts, argc, argv, pos);
    g_quiet = quiet;
    n_lrs = parse_number_list(lr_grid, lrs, 32);
    if (n_lrs < 1) usage_error(&cmd, "--lr-grid must be a list of up to 32 numbers, got \"%s\"", lr_grid);
    for (i = 0; i < n_lrs; i++)
        if (!(lrs[i] > 0)) usage_error(&cmd, "--lr-grid values must be > 0, got %g", lrs[i]);
    if (nbeta_grid) {
        n_nbetas = parse_number_list(nbeta_grid, nbetas, 32);
        if (n_nbetas < 1) usage_error(&cmd, "--nbeta-grid must be a list of up to 32 numbers, got \"%s\"", nbeta_grid);
        for (j = 0; j < n_nbetas; j++)
            if (!(nbetas[j] > 0)) usage_error(&cmd, "--nbeta-grid values must be > 0, got %g", nbetas[j]);
    } else {
        n_nbetas = 5;
        for (j = 0; j < 5; j++) nbetas[j] = sgld_default_nbeta(s.batch) * pow(10.0, (j - 2) / 2.0);
    }

    if (s.batch > n_samples)
        usage_error(&cmd, "--batch %d is larger than --samples %d; use a batch of at most the samples", s.batch,
                    n_samples);
    {
        const CommandFile files[] = {{"MODEL", pos[0], 0}, {"--teacher", teacher_arg, 0}, {"--csv", csv_path, 0},
                                     {"--svg", svg_path, 0}};
        check_outputs_distinct(&cmd, files, 2, 4);
    }
    if ((csv_path && check_writable(csv_path)) || (svg_path && check_writable(svg_path))) return 1;
    load_model_or_exit(&m, pos[0]);
    {
        const char *outputs[2] = {csv_path, svg_path};
        has_teacher = load_teacher(&teacher, &m, pos[0], teacher_arg, NULL, 0, outputs, 2);
    }
    rng_seed(&rng, s.seed);
    dataset_random(&d, &m.cfg, n_samples, &rng);
    dataset_label(&d, has_teacher ? &teacher : &m, s.batch < n_samples ? s.batch : n_samples);
    mp.m = &m;
    mp.data = &d;
    mp.loss = resolve_loss(loss_arg, &m, "calibrate");
    mp.max_batch = s.batch < n_samples ? s.batch : n_samples;
    p = model_problem(&mp);
    install_interrupt_handlers();
    if (calibrate(&p, &s, lrs, n_lrs, nbetas, n_nbetas, &cal) < 0) die("invalid calibration settings");
    if (g_interrupted) {
        warn("interrupted: no files are written");
        status = 130;
        goto done;
    }

    printf("%-10s %-10s %-12s %-8s %s\n", "lr", "nbeta", "llc_mean", "MALA", "status");
    for (i = 0; i < n_lrs; i++)
        for (j = 0; j < n_nbetas; j++) {
            int k = i * n_nbetas + j;
            printf("%-10g %-10.4g %-12.5g %-8.3f %s%s\n", lrs[i], nbetas[j], cal.llc_mean[k], cal.mala[k],
                   cal.stable[k] ? "stable" : cal.reason[k], k == cal.best ? "  <- recommended" : "");
        }
    if (cal.best >= 0) printf("recommended  --lr %g --nbeta %g\n%s\n", cal.lr, cal.nbeta, cal.explanation);
    else printf("no recommendation: %s; try smaller step sizes (--lr-grid), more --draws, or a --localization "
                "above 0\n", cal.explanation);

    if (csv_path) {
        AtomicFile af;
        if (atomic_open(&af, csv_path) != 0) {
            status = 1;
            goto done;
        }
        fprintf(af.f, "lr,nbeta,llc_mean,llc_std,mala_acceptance,r_hat,diverged_chains,second_half_flat,stable,"
                      "recommended,reason\n");
        for (i = 0; i < n_lrs; i++)
            for (j = 0; j < n_nbetas; j++) {
                int k = i * n_nbetas + j;
                fprintf(af.f, "%g,%.9g,", lrs[i], nbetas[j]);
                csv_number(af.f, cal.llc_mean[k], "%.9g");
                fputc(',', af.f);
                csv_number(af.f, cal.llc_std[k], "%.9g");
                fputc(',', af.f);
                csv_number(af.f, cal.mala[k], "%.6f");
                fputc(',', af.f);
                csv_number(af.f, cal.r_hat[k], "%.6f");
                fprintf(af.f, ",%d,%s,%s,%s,", cal.n_diverged[k], cal.flat[k] ? "true" : "false",
                        cal.stable[k] ? "true" : "false", k == cal.best ? "true" : "false");
                csv_field(af.f, cal.reason[k]);
                fputc('\n', af.f);
            }
        if (atomic_commit(&af) != 0) status = 1;
    }
    if (svg_path) {
        PlotSeries series[32];
        char labels[32][48];
        double *llc = xmalloc((size_t)n_lrs * n_nbetas * sizeof(double), "a series");
        int *marked = xmalloc((size_t)n_lrs * n_nbetas * sizeof(int), "a series");
        double stable_max = 0.0;
        int n_left_out = 0;
        char note[256];
        LinePlot plot;
        /* unstable points far outside the stable ones would flatten the plot: leave those out */
        for (i = 0; i < n_lrs * n_nbetas; i++)
            if (cal.stable[i] && fabs(cal.llc_mean[i]) > stable_max) stable_max = fabs(cal.llc_mean[i]);
        for (j = 0; j < n_nbetas; j++) {
            for (i = 0; i < n_lrs; i++) {
                int k = i * n_nbetas + j;
                double v = cal.llc_mean[k];
                int left_out = !cal.stable[k] && stable_max > 0 && fabs(v) > 10 * stable_max;
                llc[j * n_lrs + i] = left_out ? NAN : v;
                marked[j * n_lrs + i] = !cal.stable[k];
                n_left_out += left_out;
            }
            snprintf(labels[j], sizeof labels[j], "nbeta %.4g", nbetas[j]);
            memset(&series[j], 0, sizeof series[j]);
            series[j].label = labels[j];
            series[j].x = lrs;
            series[j].y = llc + j * n_lrs;
            series[j].n = n_lrs;
            series[j].color = j;
            series[j].marked = marked + j * n_lrs;
        }
        memset(&plot, 0, sizeof plot);
        plot.title = "Calibration: LLC of short chains against the SGLD step size";
        plot.x_label = "lr (SGLD step size)";
        plot.y_label = "llc_mean";
        plot.log_x = 1;
        plot.series = series;
        plot.n_series = n_nbetas;
        if (n_left_out)
            snprintf(note, sizeof note, "crosses: unstable (see --csv for why); %d unstable %s above 10x the largest "
                     "stable LLC not drawn", n_left_out, n_left_out == 1 ? "point" : "points");
        else
            snprintf(note, sizeof note, "crosses: unstable (diverged, MALA acceptance < 0.95, loss still moving, or "
                     "negative LLC)");
        plot.note = note;
        if (write_line_plot(svg_path, &plot) != 0) status = 1;
        free(llc);
        free(marked);
    }

done:
    calibration_free(&cal);
    dataset_free(&d);
    if (has_teacher) model_free(&teacher);
    model_free(&m);
    return status;
}

/* llc sweep, collect and plot ---------------------------------------------- */

/* Runs argv[0] (no shell) and returns its standard output, NUL-terminated,
 * or NULL when it cannot run or exits with a non-zero status. */
static char *run_process_output(char *const argv[]) {
    int fds[2], status;
    pid_t pid;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (pipe(fds) != 0) return NULL;
    pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        close(fds[1]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    for (;;) {
        ssize_t got;
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            buf = realloc(buf, cap);
            if (!buf) die("out of memory reading the output of %s", argv[0]);
        }
        got = read(fds[0], buf + n, cap - n - 1);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        n += (size_t)got;
    }
    close(fds[0]);
    buf[n] = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

typedef struct {
    const char *program;
    int max_seq_len;
    double base_lr;
    char name[128];          /* PROGRAM_nN_lrLR[_SCALE], the job's file name without .json */
} SweepJob;

/* The sizes a job needs before its model exists: from the model file when
 * there is one, else from compile.py --sizes (which builds nothing). */
typedef struct {
    ModelConfig cfg;
    size_t n_params, n_fixed;
    double n_nonzero;        /* NaN when unknown */
} JobSizes;

static int job_sizes(const char *program, int max_seq_len, const char *weights, const char *cache_dir, JobSizes *z) {
    char path[8300], script[4200], n_text[32], *args[8], *text;
    JsonValue v;
    const char *error = NULL;
    memset(z, 0, sizeof *z);
    z->n_nonzero = NAN;
    snprintf(path, sizeof path, "%s/%s_n%d.llcw", weights, program, max_seq_len);
    if (!file_exists(path)) snprintf(path, sizeof path, "%s/%s_n%d.llcw", cache_dir, program, max_seq_len);
    if (file_exists(path)) return model_peek(path, &z->cfg, &z->n_params, &z->n_fixed);

    snprintf(script, sizeof script, "%s/compile.py", weights);
    if (!file_exists(script)) {
        fprintf(stderr, "%s: %s not found, so the size of %s at max_seq_len %d is unknown (set --weights to the "
                        "tracr_weights folder)\n", g_program, script, program, max_seq_len);
        return -1;
    }
    snprintf(n_text, sizeof n_text, "%d", max_seq_len);
    args[0] = "python3";
    args[1] = script;
    args[2] = (char *)program;
    args[3] = "--max-seq-len";
    args[4] = n_text;
    args[5] = "--sizes";
    args[6] = "--json";
    args[7] = NULL;
    text = run_process_output(args);
    if (!text || json_parse(text, strlen(text), &v, &error) != 0) {
        fprintf(stderr, "%s: cannot get the sizes of %s at max_seq_len %d from python3 %s --sizes\n", g_program,
                program, max_seq_len, script);
        free(text);
        return -1;
    }
    z->cfg.d_model = (int)json_number(&v, "d_model", 1);
    z->cfg.n_layers = (int)json_number(&v, "n_layers", 1);
    z->cfg.n_heads = (int)json_number(&v, "n_heads", 1);
    z->cfg.d_head = (int)json_number(&v, "d_head", 1);
    z->cfg.d_mlp = (int)json_number(&v, "d_mlp", 1);
    z->cfg.max_seq_len = max_seq_len;
    /* embeddings are (vocab + max_seq_len + 1) x d_model; the outputs are at most d_model */
    z->cfg.n_vocab = (int)(json_number(&v, "embed_params", 0) / z->cfg.d_model) - max_seq_len - 1;
    z->cfg.n_outputs = z->cfg.d_model;
    z->n_params = (size_t)json_number(&v, "total_params", 0);
    z->n_nonzero = json_number(&v, "nonzero_params", NAN);
    json_value_free(&v);
    free(text);
    return 0;
}

/* Writes the JSON of a job refused up front, with the same fields as an
 * estimate's so that llc collect makes the same row of it. */
static int write_skipped_job(const char *path, const SweepJob *job, const EstimateRequest *q, const JobSizes *z,
                             double memory, const char *status) {
    AtomicFile af;
    Json j;
    if (atomic_open(&af, path) != 0) return -1;
    json_init(&j, af.f);
    json_object(&j, NULL);
    json_str(&j, "model", NULL);
    json_str(&j, "program", job->program);
    json_int(&j, "max_seq_len", job->max_seq_len);
    json_int(&j, "n_params", (long long)z->n_params);
    json_num(&j, "n_nonzero", z->n_nonzero);
    json_num(&j, "sparsity", z->n_params ? z->n_nonzero / (double)z->n_params : NAN);
    json_str(&j, "status", status);
    json_bool(&j, "complete", 1);
    json_num(&j, "llc_mean", NAN);
    json_num(&j, "llc_std", NAN);
    json_num(&j, "init_loss", NAN);
    json_array(&j, "diverged_chains");
    json_array_end(&j);
    json_num(&j, "memory_estimate_bytes", memory);
    json_num(&j, "seconds", 0);
    json_object(&j, "settings");
    json_num(&j, "lr", scaled_lr(job->base_lr, q->lr_scale, z->n_params, q->lr_ref_params));
    json_num(&j, "base_lr", job->base_lr);
    json_str(&j, "lr_scale", q->lr_scale);
    json_num(&j, "lr_ref_params", q->lr_ref_params);
    json_str(&j, "loss_arg", q->loss_arg);
    json_num(&j, "nbeta", q->s.nbeta > 0 ? q->s.nbeta : sgld_default_nbeta(q->s.batch));
    json_num(&j, "localization", q->s.localization);
    json_int(&j, "chains", q->s.chains);
    json_int(&j, "draws", q->s.draws);
    json_int(&j, "burnin", q->s.burnin);
    json_int(&j, "every", q->s.every);
    json_int(&j, "batch", q->s.batch);
    json_int(&j, "samples", q->n_samples);
    json_uint(&j, "seed", q->s.seed);
    json_object_end(&j);
    json_object_end(&j);
    return atomic_commit(&af);
}

/* Returns 1 when PATH holds the finished result of a job. */
static int job_finished(const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    JsonValue v;
    const char *error;
    const JsonValue *complete;
    int done = 0;
    if (!text) return 0;
    if (json_parse(text, len, &v, &error) == 0) {
        const char *status = json_string(&v, "status");
        complete = json_get(&v, "complete");
        done = complete && complete->type == JSON_BOOL && complete->number == 1;
        /* a job skipped for its size is sized again, in case the memory limit changed */
        if (status && !strncmp(status, "skipped", 7)) done = 0;
        json_value_free(&v);
    }
    free(text);
    return done;
}

/* Compares the settings recorded in a finished job's JSON with a request,
 * so that a rerun never mixes results made with other settings. Returns 0
 * when they match, else -1 with the first difference in why. */
static int job_settings_match(const char *path, const EstimateRequest *q, double base_lr, char *why, size_t n) {
    size_t len;
    char *text = read_file(path, &len);
    JsonValue v;
    const JsonValue *st;
    const char *error, *loss;
    double nbeta = q->s.nbeta > 0 ? q->s.nbeta : sgld_default_nbeta(q->s.batch);
    struct { const char *key; double want; } numbers[] = {
        {"base_lr", base_lr}, {"lr_ref_params", q->lr_ref_params}, {"nbeta", nbeta},
        {"localization", q->s.localization}, {"chains", q->s.chains}, {"draws", q->s.draws},
        {"burnin", q->s.burnin}, {"every", q->s.every}, {"batch", q->s.batch}, {"samples", q->n_samples}};
    unsigned long long seed;
    size_t k;
    int rc = 0;
    if (!text || json_parse(text, len, &v, &error) != 0) {
        free(text);
        return 0;   /* unreadable: job_finished already calls it unfinished */
    }
    free(text);
    st = json_get(&v, "settings");
    for (k = 0; k < sizeof numbers / sizeof numbers[0] && rc == 0; k++) {
        double got = json_number(st, numbers[k].key, NAN);
        /* json_num writes 9 significant digits, which round by up to 5e-9 of the value */
        if (!(fabs(got - numbers[k].want) <= 1e-8 * fabs(numbers[k].want))) {
            snprintf(why, n, "%s %.9g there, %.9g now", numbers[k].key, got, numbers[k].want);
            rc = -1;
        }
    }
    if (rc == 0 && !json_uint64(st, "seed", &seed)) {
        snprintf(why, n, "no seed there, %llu now", (unsigned long long)q->s.seed);
        rc = -1;
    } else if (rc == 0 && seed != q->s.seed) {
        snprintf(why, n, "seed %llu there, %llu now", seed, (unsigned long long)q->s.seed);
        rc = -1;
    }
    loss = json_string(st, "loss_arg");
    if (rc == 0 && (!loss || strcmp(loss, q->loss_arg) != 0)) {
        snprintf(why, n, "--loss %s there, %s now", loss ? loss : "unknown", q->loss_arg);
        rc = -1;
    }
    if (rc == 0 && (!json_string(st, "lr_scale") || strcmp(json_string(st, "lr_scale"), q->lr_scale) != 0)) {
        snprintf(why, n, "--lr-scale %s there, %s now", json_string(st, "lr_scale") ? json_string(st, "lr_scale")
                                                                                    : "unknown", q->lr_scale);
        rc = -1;
    }
    json_value_free(&v);
    return rc;
}

typedef struct {
    char program[64];
    int max_seq_len;
    double n_params, n_nonzero, sparsity, lr, base_lr, nbeta, chains, draws, llc_mean, llc_std, diverged, init_loss,
        seconds;
    unsigned long long seed;
    int has_seed;
    char lr_scale[16];
    char status[160];
} ResultRow;

static int compare_rows(const void *pa, const void *pb) {
    const ResultRow *a = pa, *b = pb;
    int c = strcmp(a->program, b->program);
    if (c) return c;
    if (a->max_seq_len != b->max_seq_len) return a->max_seq_len < b->max_seq_len ? -1 : 1;
    c = strcmp(a->lr_scale, b->lr_scale);
    if (c) return c;
    return a->base_lr < b->base_lr ? 1 : a->base_lr > b->base_lr ? -1 : 0;
}

/* Merges the .json files of DIR/jobs into DIR/results.csv; returns the
 * number of rows, or -1. Files that do not parse are reported and left out. */
static int collect_results(const char *dir, int *n_bad) {
    char jobs_dir[4200], path[4200 + 260];   /* the folder, a slash and a 255-byte name */
    DIR *d;
    struct dirent *e;
    ResultRow *rows = NULL;
    int n = 0, cap = 0, i;
    AtomicFile af;
    *n_bad = 0;
    snprintf(jobs_dir, sizeof jobs_dir, "%s/jobs", dir);
    d = opendir(jobs_dir);
    if (!d) {
        fprintf(stderr, "%s: cannot read the folder %s: %s\n", g_program, jobs_dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name), text_len;
        char *text;
        JsonValue v;
        const char *error = "unreadable";
        const JsonValue *settings, *diverged;
        double max_seq_len;
        ResultRow *r;
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0 || e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", jobs_dir, e->d_name);
        text = read_file(path, &text_len);
        if (!text) {
            warn("%s cannot be read (%s); it is left out", path,
                 errno == EINVAL ? "not a regular file" : strerror(errno));
            (*n_bad)++;
            continue;
        }
        if (json_parse(text, text_len, &v, &error) != 0) {
            warn("%s is not valid JSON (%s); it is left out", path, error);
            free(text);
            (*n_bad)++;
            continue;
        }
        free(text);
        if (!json_string(&v, "program") || !json_get(&v, "settings") ||
            !isfinite(json_number(json_get(&v, "settings"), "lr", NAN))) {
            warn("%s is not a job result (it lacks program, settings or lr); it is left out", path);
            json_value_free(&v);
            (*n_bad)++;
            continue;
        }
        max_seq_len = json_number(&v, "max_seq_len", 0);
        if (!(max_seq_len >= 0 && max_seq_len <= INT_MAX && max_seq_len == floor(max_seq_len))) {
            warn("%s has max_seq_len %g, which is not a whole number from 0 to %d; it is left out", path,
                 max_seq_len, INT_MAX);
            json_value_free(&v);
            (*n_bad)++;
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            rows = realloc(rows, (size_t)cap * sizeof *rows);
            if (!rows) die("out of memory collecting results");
        }
        r = &rows[n++];
        memset(r, 0, sizeof *r);
        settings = json_get(&v, "settings");
        diverged = json_get(&v, "diverged_chains");
        snprintf(r->program, sizeof r->program, "%s", json_string(&v, "program"));
        r->max_seq_len = (int)max_seq_len;
        r->n_params = json_number(&v, "n_params", NAN);
        r->n_nonzero = json_number(&v, "n_nonzero", NAN);
        r->sparsity = json_number(&v, "sparsity", NAN);
        r->lr = json_number(settings, "lr", NAN);
        r->base_lr = json_number(settings, "base_lr", r->lr);
        snprintf(r->lr_scale, sizeof r->lr_scale, "%s",
                 json_string(settings, "lr_scale") ? json_string(settings, "lr_scale") : "none");
        r->nbeta = json_number(settings, "nbeta", NAN);
        r->chains = json_number(settings, "chains", NAN);
        r->draws = json_number(settings, "draws", NAN);
        r->has_seed = json_uint64(settings, "seed", &r->seed);
        r->llc_mean = json_number(&v, "llc_mean", NAN);
        r->llc_std = json_number(&v, "llc_std", NAN);
        r->init_loss = json_number(&v, "init_loss", NAN);
        r->seconds = json_number(&v, "seconds", NAN);
        r->diverged = diverged && diverged->type == JSON_ARRAY ? diverged->n : 0;
        snprintf(r->status, sizeof r->status, "%s", json_string(&v, "status") ? json_string(&v, "status") : "ok");
        json_value_free(&v);
    }
    closedir(d);
    qsort(rows, (size_t)n, sizeof *rows, compare_rows);
    for (i = 1; i < n; i++)   /* a job file copied by hand gives a second row of the same job */
        if (compare_rows(&rows[i - 1], &rows[i]) == 0)
            warn("%s/jobs holds two results for %s at max_seq_len %d, lr %g (%s); both are kept, so remove the "
                 "stray file", dir, rows[i].program, rows[i].max_seq_len, rows[i].base_lr, rows[i].lr_scale);

    snprintf(path, sizeof path, "%s/results.csv", dir);
    if (atomic_open(&af, path) != 0) {
        free(rows);
        return -1;
    }
    fprintf(af.f, "program,max_seq_len,n_params,n_nonzero,sparsity,lr,nbeta,chains,draws,llc_mean,llc_std,"
                  "diverged_chains,init_loss,seconds,seed,base_lr,lr_scale,status\n");
    for (i = 0; i < n; i++) {
        const ResultRow *r = &rows[i];
        csv_field(af.f, r->program);
        fprintf(af.f, ",%d,", r->max_seq_len);
        csv_number(af.f, r->n_params, "%.0f");
        fputc(',', af.f);
        csv_number(af.f, r->n_nonzero, "%.0f");
        fputc(',', af.f);
        csv_number(af.f, r->sparsity, "%.9g");
        fputc(',', af.f);
        csv_number(af.f, r->lr, "%.9g");
        fputc(',', af.f);
        csv_number(af.f, r->nbeta, "%.9g");
        fputc(',', af.f);
        csv_number(af.f, r->chains, "%.0f");
        fputc(',', af.f);
        csv_number(af.f, r->draws, "%.0f");
        fputc(',', af.f);
        csv_number(af.f, r->llc_mean, "%.9g");
        fputc(',', af.f);
        csv_number(af.f, r->llc_std, "%.9g");
        fprintf(af.f, ",%.0f,", r->diverged);
        csv_number(af.f, r->init_loss, "%.9g");
        fputc(',', af.f);
        csv_number(af.f, r->seconds, "%.3f");
        fputc(',', af.f);
        if (r->has_seed) fprintf(af.f, "%llu", r->seed);
        fputc(',', af.f);
        csv_number(af.f, r->base_lr, "%.9g");
        fputc(',', af.f);
        csv_field(af.f, r->lr_scale);
        fputc(',', af.f);
        csv_field(af.f, r->status);
        fputc('\n', af.f);
    }
    free(rows);
    if (atomic_commit(&af) != 0) return -1;
    return n;
}

/* The largest max_seq_len of a sweep, the same limit as study-distill's
 * --max-seq-len. At 100, sort_freq already has 3.2 billion parameters. */
enum { SWEEP_MAX_SEQ_LEN = 100 };

/* Parses "4:100", "4:100:2" or "5,10,20" (and mixes, "4:9,20") into out.
 * Every number, the step included, must be in [1, SWEEP_MAX_SEQ_LEN], which
 * also keeps the loop below from overflowing. Returns -1 when the text is
 * invalid or gives more than max lengths. */
static int parse_lengths(const char *text, int *out, int max) {
    int n = 0;
    const char *p = text;
    while (*p) {
        long a, b, step = 1;
        char *end;
        a = strtol(p, &end, 10);
        if (end == p) return -1;
        b = a;
        if (*end == ':') {
            p = end + 1;
            b = strtol(p, &end, 10);
            if (end == p) return -1;
            if (*end == ':') {
                p = end + 1;
                step = strtol(p, &end, 10);
                if (end == p || step < 1 || step > SWEEP_MAX_SEQ_LEN) return -1;
            }
        }
        if (a < 1 || b < a || b > SWEEP_MAX_SEQ_LEN) return -1;
        for (; a <= b; a += step) {
            if (n == max) return -1;
            out[n++] = (int)a;
        }
        if (*end == ',') end++;
        else if (*end) return -1;
        p = end;
    }
    return n;
}

/* The shortest "%g" form of v that reads back as the same double. */
static const char *format_double(double v, char *out, size_t n) {
    int digits;
    for (digits = 6; digits < 17; digits++) {
        snprintf(out, n, "%.*g", digits, v);
        if (strtod(out, NULL) == v) return out;
    }
    snprintf(out, n, "%.17g", v);
    return out;
}

/* Appends a shell-quoted argument to a command line. */
static void shell_quote(FILE *f, const char *arg) {
    const char *s;
    fputc('\'', f);
    for (s = arg; *s; s++) {
        if (*s == '\'') fputs("'\\''", f);
        else fputc(*s, f);
    }
    fputc('\'', f);
}

static const char *g_argv0 = "llc";   /* main's argv[0] */

/* The path of the running llc, for the command lines of --emit-jobs. */
static const char *self_path(void) {
    static char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        return exe;
    }
    return g_argv0;
}

enum { MAX_SWEEP_LENGTHS = 1000, MAX_SWEEP_LRS = 32, MAX_SWEEP_PROGRAMS = 9 };

static int cmd_sweep(int argc, char **argv) {
    static const Command cmd = {
        "sweep", "--programs P,... --lengths 4:100[:STEP] --out DIR [options]",
        "Estimate the LLC of Tracr programs at many max_seq_len and step sizes. Each job (program,\n"
        "max_seq_len, lr) writes DIR/jobs/NAME.json; DIR/results.csv is rebuilt from them after\n"
        "every job, so an interrupted sweep resumes where it stopped when run again. Models come\n"
        "from the shipped ones or are compiled into DIR/models with tracr_weights/compile.py.\n"
        "A job whose estimated memory exceeds --max-memory is skipped up front, with its size in\n"
        "the row's status, and its model is not compiled.",
        0, 0,
        "--emit-jobs prints one `llc estimate ... --json DIR/jobs/NAME.json` command per job\n"
        "instead of running them (models are compiled first), for GNU parallel, xargs -P, make -j\n"
        "or a Slurm array; `llc collect DIR` then writes DIR/results.csv.\n"};
    EstimateRequest q;
    double nbeta = NAN, lrs[MAX_SWEEP_LRS];
    int lengths[MAX_SWEEP_LENGTHS], n_lengths, n_lrs, n_programs = 0, quiet = 0, emit = 0, i, k, l;
    int n_done = 0, n_run = 0, n_skipped = 0, n_failed = 0, n_bad, status = 0, emit_threads = 1;
    const char *programs_text = NULL, *lengths_text = NULL, *lr_text = "1e-5", *out_dir = NULL, *weights = NULL;
    const char *max_memory = NULL;
    char *programs[MAX_SWEEP_PROGRAMS], *programs_copy, *tok, *save = NULL, models_dir[4200], jobs_dir[4200];
    Option opts[] = {
        {"--programs", OPT_STRING, &programs_text, 0, 0, 0, "P,...", "programs, comma separated (required)", NULL},
        {"--lengths", OPT_STRING, &lengths_text, 0, 0, 0, "A:B[:S]",
         "max_seq_len values from 1 to 100, e.g. 4:100 or 5,10,20", NULL},
        {"--lr", OPT_STRING, &lr_text, 0, 0, 0, "EPS,...", "SGLD step sizes (base values with --lr-scale)", NULL},
        {"--lr-scale", OPT_STRING, &q.lr_scale, 0, 0, 0, "KIND", "divide lr by the relative model size",
         "none|linear|quadratic"},
        {"--lr-ref-params", OPT_REAL, &q.lr_ref_params, 0, INFINITY, 1, "N", "reference size of --lr-scale", NULL},
        {"--nbeta", OPT_REAL, &nbeta, 0, INFINITY, 1, "NB", "inverse temperature n*beta (default batch / ln(batch))",
         NULL},
        {"--localization", OPT_REAL, &q.s.localization, 0, INFINITY, 0, "G", "strength gamma of the pull towards w*",
         NULL},
        {"--chains", OPT_INT, &q.s.chains, 1, 100000, 0, "N", "independent SGLD chains", NULL},
        {"--draws", OPT_INT, &q.s.draws, 1, 1e8, 0, "N", "recorded draws per chain", NULL},
        {"--burnin", OPT_INT, &q.s.burnin, 0, 1e9, 0, "N", "steps before the first draw", NULL},
        {"--every", OPT_INT, &q.s.every, 1, 1e6, 0, "N", "steps between draws", NULL},
        {"--batch", OPT_INT, &q.s.batch, 1, 1e6, 0, "N", "sequences per minibatch", NULL},
        {"--samples", OPT_INT, &q.n_samples, 1, 1e8, 0, "N", "random input sequences", NULL},
        {"--seed", OPT_U64, &q.s.seed, 0, 0, 0, "N", "seed of every job's inputs and SGLD noise", NULL},
        {"--threads", OPT_INT, &q.s.threads, 0, 4096, 0, "N",
         "worker threads per job, 0 = one per core (with --emit-jobs, 0 means 1)", NULL},
        {"--loss", OPT_STRING, &q.loss_arg, 0, 0, 0, "NAME", "loss: auto, ce, mse or kl", "auto|ce|mse|kl"},
        {"--max-memory", OPT_STRING, &max_memory, 0, 0, 0, "BYTES",
         "skip jobs needing more (e.g. 8G; default: available memory)", NULL},
        {"--out", OPT_STRING, &out_dir, 0, 0, 0, "DIR", "folder of models, job results and results.csv (required)",
         NULL},
        {"--weights", OPT_STRING, &weights, 0, 0, 0, "DIR", "folder of shipped models and compile.py", NULL},
        {"--emit-jobs", OPT_FLAG, &emit, 0, 0, 0, NULL, "print the jobs' command lines instead of running them", NULL},
        {"--quiet", OPT_FLAG, &quiet, 0, 0, 0, NULL, "no progress messages", NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};

    estimate_request_defaults(&q);
    parse_args(&cmd, opts, argc, argv, NULL);
    g_quiet = quiet;
    check_sgld_steps(&cmd, &q.s);
    if (!programs_text) usage_error(&cmd, "missing --programs");
    if (!lengths_text) usage_error(&cmd, "missing --lengths");
    if (!out_dir) usage_error(&cmd, "missing --out DIR");
    n_lengths = parse_lengths(lengths_text, lengths, MAX_SWEEP_LENGTHS);
    if (n_lengths < 1)
        usage_error(&cmd, "--lengths must be like 4:100, 4:100:2 or 5,10,20, with A <= B in A:B and every value "
                          "from 1 to %d, got \"%s\"", SWEEP_MAX_SEQ_LEN, lengths_text);
    n_lrs = parse_number_list(lr_text, lrs, MAX_SWEEP_LRS);
    if (n_lrs < 1) usage_error(&cmd, "--lr must be a list of up to %d numbers, got \"%s\"", MAX_SWEEP_LRS, lr_text);
    for (k = 0; k < n_lrs; k++)
        if (!(lrs[k] > 0)) usage_error(&cmd, "--lr values must be > 0, got %g", lrs[k]);
    programs_copy = xstrdup(programs_text);
    for (tok = strtok_r(programs_copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        check_tracr_program(&cmd, tok, " in --programs");
        if (is_numerical_program(tok) && (!strcmp(q.loss_arg, "ce") || !strcmp(q.loss_arg, "kl")))
            usage_error(&cmd, "--loss %s needs categorical outputs, and %s has a numerical one (use --loss auto or "
                              "mse, or leave %s out)", q.loss_arg, tok, tok);
        if (n_programs == MAX_SWEEP_PROGRAMS) usage_error(&cmd, "--programs lists more than 9 programs");
        programs[n_programs++] = tok;
    }
    q.s.nbeta = isfinite(nbeta) ? nbeta : 0.0;
    /* jobs emitted for a parallel runner each take one thread unless told otherwise */
    if (emit && q.s.threads == 0) emit_threads = 1;
    else emit_threads = q.s.threads;
    q.s.threads = emit_threads;
    q.max_memory = max_memory ? parse_bytes(max_memory) : available_memory_bytes();
    if (q.max_memory <= 0) usage_error(&cmd, "--max-memory must be a size such as 8G or 512M, got \"%s\"", max_memory);
    q.summary = 0;
    weights = weights_dir(weights);
    snprintf(models_dir, sizeof models_dir, "%s/models", out_dir);
    snprintf(jobs_dir, sizeof jobs_dir, "%s/jobs", out_dir);
    if (make_dir(out_dir) || make_dir(models_dir) || make_dir(jobs_dir)) {
        free(programs_copy);
        return 1;
    }
    install_interrupt_handlers();

    for (i = 0; i < n_programs && !g_interrupted; i++)
        for (l = 0; l < n_lengths && !g_interrupted; l++)
            for (k = 0; k < n_lrs && !g_interrupted; k++) {
                SweepJob job;
                JobSizes z;
                char json_path[4400], model_path[4200], bytes_text[32], limit_text[32];
                double memory;
                int rc;
                job.program = programs[i];
                job.max_seq_len = lengths[l];
                job.base_lr = lrs[k];
                /* the shortest form that reads back as the same lr, so distinct step sizes get distinct files */
                snprintf(job.name, sizeof job.name, "%s_n%d_lr%s%s%s", job.program, job.max_seq_len,
                         format_double(job.base_lr, bytes_text, sizeof bytes_text), strcmp(q.lr_scale, "none") ? "_" : "",
                         strcmp(q.lr_scale, "none") ? q.lr_scale : "");
                snprintf(json_path, sizeof json_path, "%s/%s.json", jobs_dir, job.name);
                if (job_finished(json_path)) {
                    char why[160];
                    if (job_settings_match(json_path, &q, job.base_lr, why, sizeof why) != 0) {
                        fprintf(stderr, "%s: %s was made with other settings (%s); use another --out folder, or "
                                        "delete %s to start over\n", g_program, json_path, why, jobs_dir);
                        free(programs_copy);
                        return 1;
                    }
                    n_done++;
                    continue;
                }

                /* size and memory before anything is compiled or allocated */
                if (job_sizes(job.program, job.max_seq_len, weights, models_dir, &z) != 0) {
                    n_failed++;
                    continue;
                }
                memory = estimate_memory_bytes(&z.cfg, z.n_params, z.n_fixed, q.s.chains, q.s.draws,
                                               emit ? 1 : q.s.threads, q.s.batch, q.n_samples);
                if (memory > q.max_memory) {
                    char text[160];
                    snprintf(text, sizeof text, "skipped: needs about %s of memory; the limit is %s",
                             format_bytes(memory, bytes_text, sizeof bytes_text),
                             format_bytes(q.max_memory, limit_text, sizeof limit_text));
                    progress("%s: %zu parameters, %s", job.name, z.n_params, text);
                    if (write_skipped_job(json_path, &job, &q, &z, memory, text) != 0) n_failed++;
                    n_skipped++;
                    continue;
                }
                if (find_or_compile_model(job.program, job.max_seq_len, weights, models_dir, model_path,
                                          sizeof model_path) != 0) {
                    n_failed++;
                    continue;
                }

                if (emit) {
                    shell_quote(stdout, self_path());
                    printf(" estimate ");
                    shell_quote(stdout, model_path);
                    printf(" --lr %s --lr-scale %s", format_double(job.base_lr, bytes_text, sizeof bytes_text),
                           q.lr_scale);
                    printf(" --lr-ref-params %s", format_double(q.lr_ref_params, bytes_text, sizeof bytes_text));
                    if (q.s.nbeta > 0) printf(" --nbeta %s", format_double(q.s.nbeta, bytes_text, sizeof bytes_text));
                    printf(" --localization %s", format_double(q.s.localization, bytes_text, sizeof bytes_text));
                    printf(" --chains %d --draws %d --burnin %d --every %d --batch %d --samples %d --seed %llu"
                           " --loss %s --threads %d", q.s.chains, q.s.draws, q.s.burnin, q.s.every, q.s.batch,
                           q.n_samples, (unsigned long long)q.s.seed, q.loss_arg, q.s.threads);
                    if (max_memory) printf(" --max-memory %s", max_memory);
                    printf(" --quiet --json ");
                    shell_quote(stdout, json_path);
                    printf("\n");
                    continue;
                }

                {
                    EstimateRequest job_q = q;
                    progress("job %d of %d: %s", (i * n_lengths + l) * n_lrs + k + 1, n_programs * n_lengths * n_lrs,
                             job.name);
                    job_q.model_path = model_path;
                    job_q.json_path = json_path;
                    job_q.s.lr = job.base_lr;
                    rc = estimate_job(&job_q);
                }
                if (rc == 130) break;
                /* a job whose chains all diverged still has its row, with status "diverged" */
                if (job_finished(json_path)) {
                    char stale[4500];
                    snprintf(stale, sizeof stale, "%s.incomplete", json_path);
                    remove(stale);   /* partial results of an earlier interrupted run of this job */
                    n_run++;
                } else {
                    n_failed++;
                }
                if (collect_results(out_dir, &n_bad) < 0) status = 1;
            }

    if (!emit) {
        int n_rows = collect_results(out_dir, &n_bad);
        if (n_rows < 0) status = 1;
        printf("%s/results.csv: %d %s (%d run now, %d done before, %d skipped up front, %d failed)\n", out_dir,
               n_rows, n_rows == 1 ? "row" : "rows", n_run, n_done, n_skipped, n_failed);
    }
    free(programs_copy);
    if (g_interrupted) {
        warn("interrupted: the finished jobs are in %s/results.csv; run the same command again to continue", out_dir);
        return 130;
    }
    return status || n_failed ? 1 : 0;
}

static int cmd_collect(int argc, char **argv) {
    static const Command cmd = {"collect", "DIR",
                                "Merge the job results in DIR/jobs (.json files from llc sweep or its --emit-jobs commands)\n"
                                "into DIR/results.csv, one row per job, sorted by program, max_seq_len and lr.",
                                1, 1, NULL};
    Option opts[] = {{NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[1];
    int n_bad, n;
    parse_args(&cmd, opts, argc, argv, pos);
    n = collect_results(pos[0], &n_bad);
    if (n < 0) return 1;
    printf("%s/results.csv: %d %s\n", pos[0], n, n == 1 ? "row" : "rows");
    return n_bad ? 1 : 0;
}

/* Splits a CSV line into at most max fields, in place, and returns their
 * number. A field in double quotes (RFC 4180) may contain commas and
 * doubled double quotes. NOTE: a quoted field that contains a line break
 * is cut there, because the caller reads one line at a time. */
static int split_csv(char *line, char **fields, int max) {
    int n = 0;
    char *p = line;
    line[strcspn(line, "\r\n")] = 0;
    while (n < max) {
        if (*p == '"') {
            char *in = p + 1, *out = p;   /* the unquoted text moves left over the opening quote */
            fields[n++] = p;
            while (*in && !(in[0] == '"' && in[1] != '"')) {
                if (*in == '"') in++;   /* the first of two double quotes */
                *out++ = *in++;
            }
            p = strchr(in, ',');
            *out = 0;
        } else {
            fields[n++] = p;
            p = strchr(p, ',');
            if (p) *p = 0;
        }
        if (!p) break;
        p++;
    }
    return n;
}

static int cmd_plot(int argc, char **argv) {
    static const Command cmd = {
        "plot", "DIR [--clip Y]",
        "Draw DIR/results.csv (from llc sweep or llc collect): for each step size, the LLC against\n"
        "max_seq_len per program on the left axis and each model's sparsity ratio (n_nonzero /\n"
        "n_params, dashed) on a logarithmic right axis. Writes DIR/llc_lr<LR>.svg per step size.",
        1, 1, NULL};
    double clip = INFINITY;
    Option opts[] = {{"--clip", OPT_REAL, &clip, 0, INFINITY, 1, "Y",
                      "leave out programs whose |llc_mean| exceeds Y at any length", NULL},
                     {NULL, OPT_FLAG, NULL, 0, 0, 0, NULL, NULL, NULL}};
    char *pos[1], path[4400], line[4096], *fields[32];
    FILE *f;
    ResultRow *rows = NULL;
    int n = 0, cap = 0, i, g, status = 0, col[32], n_cols, n_written = 0;
    static const char *const wanted[] = {"program", "max_seq_len", "sparsity", "llc_mean", "base_lr", "lr_scale"};
    char groups[MAX_SWEEP_LRS][64];
    int n_groups = 0;

    parse_args(&cmd, opts, argc, argv, pos);
    snprintf(path, sizeof path, "%s/results.csv", pos[0]);
    f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: cannot open %s: %s (run llc sweep or llc collect first)\n", g_program, path,
                strerror(errno));
        return 1;
    }
    if (!fgets(line, sizeof line, f)) {
        fclose(f);
        fprintf(stderr, "%s: %s is empty\n", g_program, path);
        return 1;
    }
    n_cols = split_csv(line, fields, 32);
    for (i = 0; i < 6; i++) {
        int c;
        col[i] = -1;
        for (c = 0; c < n_cols; c++)
            if (!strcmp(fields[c], wanted[i])) col[i] = c;
        if (col[i] < 0) {
            fclose(f);
            fprintf(stderr, "%s: %s has no column %s\n", g_program, path, wanted[i]);
            return 1;
        }
    }
    while (fgets(line, sizeof line, f)) {
        int nf = split_csv(line, fields, 32);
        ResultRow *r;
        if (nf < n_cols) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            rows = realloc(rows, (size_t)cap * sizeof *rows);
            if (!rows) die("out of memory reading %s", path);
        }
        r = &rows[n++];
        memset(r, 0, sizeof *r);
        snprintf(r->program, sizeof r->program, "%s", fields[col[0]]);
        r->max_seq_len = atoi(fields[col[1]]);
        r->sparsity = *fields[col[2]] ? atof(fields[col[2]]) : NAN;
        r->llc_mean = *fields[col[3]] ? atof(fields[col[3]]) : NAN;
        r->base_lr = atof(fields[col[4]]);
        snprintf(r->lr_scale, sizeof r->lr_scale, "%s", fields[col[5]]);
    }
    fclose(f);

    /* one figure per step size (and scaling) */
    for (i = 0; i < n; i++) {
        char key[64];
        snprintf(key, sizeof key, "%g%s%s", rows[i].base_lr, strcmp(rows[i].lr_scale, "none") ? "_" : "",
                 strcmp(rows[i].lr_scale, "none") ? rows[i].lr_scale : "");
        for (g = 0; g < n_groups && strcmp(groups[g], key); g++) {}
        if (g == n_groups && n_groups < MAX_SWEEP_LRS) snprintf(groups[n_groups++], sizeof groups[0], "%s", key);
    }
    for (g = 0; g < n_groups; g++) {
        PlotSeries series[2 * MAX_SWEEP_PROGRAMS];
        double *xs = xcalloc((size_t)n + 1, sizeof(double), "a series"), *ys = xcalloc((size_t)n + 1, sizeof(double), "a series");
        double *sp = xcalloc((size_t)n + 1, sizeof(double), "a series");
        char names[MAX_SWEEP_PROGRAMS][64], note[512] = "", title[160], clipped[256] = "";
        int n_series = 0, used = 0, p_count = 0, p;
        LinePlot plot;
        for (i = 0; i < n; i++) {
            char key[64];
            int seen = 0;
            snprintf(key, sizeof key, "%g%s%s", rows[i].base_lr, strcmp(rows[i].lr_scale, "none") ? "_" : "",
                     strcmp(rows[i].lr_scale, "none") ? rows[i].lr_scale : "");
            if (strcmp(key, groups[g])) continue;
            for (p = 0; p < p_count; p++) seen |= !strcmp(names[p], rows[i].program);
            if (!seen && p_count < MAX_SWEEP_PROGRAMS) snprintf(names[p_count++], 64, "%s", rows[i].program);
        }
        for (p = 0; p < p_count; p++) {
            int start = used, exploded = 0;
            for (i = 0; i < n; i++) {
                char key[64];
                snprintf(key, sizeof key, "%g%s%s", rows[i].base_lr, strcmp(rows[i].lr_scale, "none") ? "_" : "",
                         strcmp(rows[i].lr_scale, "none") ? rows[i].lr_scale : "");
                if (strcmp(key, groups[g]) || strcmp(rows[i].program, names[p])) continue;
                xs[used] = rows[i].max_seq_len;
                ys[used] = rows[i].llc_mean;
                sp[used] = rows[i].sparsity;
                if (fabs(rows[i].llc_mean) > clip) exploded = 1;
                used++;
            }
            if (exploded) {
                size_t len = strlen(clipped);
                snprintf(clipped + len, sizeof clipped - len, "%s%s", len ? ", " : "", names[p]);
                used = start;
                continue;
            }
            memset(&series[n_series], 0, 2 * sizeof series[0]);
            series[n_series].label = names[p];
            series[n_series].x = xs + start;
            series[n_series].y = ys + start;
            series[n_series].n = used - start;
            series[n_series].color = p;
            series[n_series + 1].x = xs + start;
            series[n_series + 1].y = sp + start;
            series[n_series + 1].n = used - start;
            series[n_series + 1].color = p;
            series[n_series + 1].dashed = 1;
            series[n_series + 1].right = 1;
            n_series += 2;
        }
        snprintf(note, sizeof note, "solid: llc_mean (left axis); dashed: sparsity n_nonzero / n_params (right axis)%s%s",
                 clipped[0] ? "; left out (|llc_mean| above the --clip value): " : "", clipped);
        snprintf(title, sizeof title, "LLC against max_seq_len, lr %.63s", groups[g]);
        memset(&plot, 0, sizeof plot);
        plot.title = title;
        plot.x_label = "max_seq_len";
        plot.integer_x = 1;
        plot.y_label = "llc_mean";
        plot.y2_label = "sparsity (n_nonzero / n_params)";
        plot.log_y2 = 1;
        plot.series = series;
        plot.n_series = n_series;
        plot.note = note;
        snprintf(path, sizeof path, "%s/llc_lr%s.svg", pos[0], groups[g]);
        if (clipped[0]) warn("%s leaves out %s, whose |llc_mean| exceeds --clip %g", path, clipped, clip);
        if (write_line_plot(path, &plot) != 0) status = 1;
        else printf("wrote %s\n", path), n_written++;
        free(xs);
        free(ys);
        free(sp);
    }
    free(rows);
    if (n_written == 0 && status == 0) {
        fprintf(stderr, "%s: %s has no rows to plot\n", g_program, pos[0]);
        status = 1;
    }
    return status;
}

/* main -------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} CommandEntry;

static const CommandEntry commands[] = {
    {"info", cmd_info, "print a model's configuration, size and sparsity"},
    {"run", cmd_run, "run a model on one input and print its outputs"},
    {"estimate", cmd_estimate, "estimate the LLC with SGLD"},
    {"diff", cmd_diff, "compare two models tensor by tensor"},
    {"distill", cmd_distill, "distill a teacher into a smaller student"},
    {"study-distill", cmd_study_distill, "teacher and student LLCs for several programs and shrinks"},
    {"landscape", cmd_landscape, "loss landscape along the top principal components of the gradients"},
    {"calibrate", cmd_calibrate, "recommend SGLD settings from short chains over a grid"},
    {"sweep", cmd_sweep, "LLC against max_seq_len and step size for several programs"},
    {"collect", cmd_collect, "merge the job results of a sweep into results.csv"},
    {"plot", cmd_plot, "plot a sweep's results.csv as SVG"},
};

static void print_usage(FILE *f) {
    size_t i;
    fprintf(f, "usage: llc COMMAND [options]\n\n"
               "The local learning coefficient (LLC) of Tracr-compiled transformers.\n\ncommands:\n");
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nRun \"llc COMMAND --help\" for a command's options.\n");
}

int main(int argc, char **argv) {
    size_t i;
    static char name[64];
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    g_argv0 = argv[0];
    if (!strcmp(argv[1], "--version")) {
        printf("llc 0.1 (%s)\n", LLC_REAL_NAME);
        return 0;
    }
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!strcmp(argv[1], commands[i].name)) {
            snprintf(name, sizeof name, "llc %s", commands[i].name);
            g_program = name;
            return commands[i].run(argc - 2, argv + 2);
        }
    }
    fprintf(stderr, "llc: unknown command \"%s\"\n", argv[1]);
    print_usage(stderr);
    return 2;
}

#endif /* LLC_TESTING */
