/* Fault injection for the log's write path, loaded into the real server with LD_PRELOAD
 * (tests/hardening.rs builds it with the machine's C compiler).
 *
 * While the file named by SLUICE_FAULT_FILE exists, its first word says what fails on
 * files whose path contains SLUICE_FAULT_MATCH:
 *   sync     fsync and fdatasync fail with EIO (the data may still reach the page cache)
 *   write    write, pwrite and pwrite64 fail with EIO, writing nothing
 *   partial  they write the first half of the buffer, then fail with EIO
 * Other files, and every call while the file is absent, go to the C library.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum fault { NONE, SYNC, WRITE, PARTIAL };

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void *real(const char *name) { return dlsym(RTLD_NEXT, name); }

/* The fault armed for `fd`, read from the control file at every call. */
static enum fault armed(int fd) {
    const char *ctl = getenv("SLUICE_FAULT_FILE");
    const char *match = getenv("SLUICE_FAULT_MATCH");
    if (!ctl || !match) return NONE;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return NONE;
    path[n] = 0;
    if (!strstr(path, match)) return NONE;
    int c = open(ctl, O_RDONLY | O_CLOEXEC);
    if (c < 0) return NONE;
    char word[16] = {0};
    ssize_t got = read(c, word, sizeof word - 1);
    close(c);
    if (got <= 0) return NONE;
    if (!strncmp(word, "sync", 4)) return SYNC;
    if (!strncmp(word, "write", 5)) return WRITE;
    if (!strncmp(word, "partial", 7)) return PARTIAL;
    return NONE;
}

int fsync(int fd) {
    if (!real_fsync) real_fsync = real("fsync");
    if (armed(fd) == SYNC) { errno = EIO; return -1; }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (!real_fdatasync) real_fdatasync = real("fdatasync");
    if (armed(fd) == SYNC) { errno = EIO; return -1; }
    return real_fdatasync(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    if (!real_write) real_write = real("write");
    enum fault f = armed(fd);
    if (f == WRITE) { errno = EIO; return -1; }
    if (f == PARTIAL && n > 1) { real_write(fd, buf, n / 2); errno = EIO; return -1; }
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    if (!real_pwrite) real_pwrite = real("pwrite");
    enum fault f = armed(fd);
    if (f == WRITE) { errno = EIO; return -1; }
    if (f == PARTIAL && n > 1) { real_pwrite(fd, buf, n / 2, off); errno = EIO; return -1; }
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    if (!real_pwrite64) real_pwrite64 = real("pwrite64");
    enum fault f = armed(fd);
    if (f == WRITE) { errno = EIO; return -1; }
    if (f == PARTIAL && n > 1) { real_pwrite64(fd, buf, n / 2, off); errno = EIO; return -1; }
    return real_pwrite64(fd, buf, n, off);
}
