/* wml-enter: start a run's command in its sandbox (wml_runner.isolation.Sandbox).
 *
 * It takes the steps Sandbox.preexec takes in a forked runner, as a program of its own, so that
 * the runner starts it with vfork rather than by copying its whole interpreter (~9 ms a run).
 *
 *   wml-enter -n NAME -u UID -g GID -p RUNNER_PID -d CWD -o PROC_OPTIONS -m COVER_OPTIONS
 *             [-c FOLDER -b PATH [-b PATH]...]... -E ENV_FD -x PROGRAM -- ARGV0 ARG...
 *
 * In order: a private mount namespace; a tmpfs on each FOLDER showing only the PATHs given after
 * it (each opened in the namespace before the tmpfs hides it, then bound back); a /proc of the
 * namespace's own; CWD; the user UID:GID for good (no groups, umask 077, no new privileges, killed
 * with the runner, RUNNER_PID); then PROGRAM (a path) with ARGV0 ARG..., and only the environment
 * read from ENV_FD (NAME=VALUE entries, each ended by a NUL byte). It is itself started with an
 * empty environment, so nothing the run chose (LD_PRELOAD...) reaches it while it is root; and
 * the command's is not in its arguments, which anyone may read in /proc (it holds credentials).
 *
 * A step that fails: one line on stderr (the training log), and exit 125 (nothing of the
 * command ran); PROGRAM that cannot be run: exit 127, as a shell does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

enum { SETUP_FAILED = 125, CANNOT_RUN = 127, RUNNER_GONE = 137, MOST_PATHS = 4096 };

struct bound { const char *cover; const char *path; int fd; };

static const char *user_name = "its user";

static void fail(const char *what, const char *where)
{
    fprintf(stderr, "wml-runner: cannot start the command as %s: %s %s: %s\n", user_name, what, where,
            strerror(errno));
    exit(SETUP_FAILED);
}

static long number(const char *text, const char *what)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < 0) {
        errno = EINVAL;
        fail("bad", what);
    }
    return value;
}

/* mkdir -p PATH (0755), in the tmpfs just mounted above it. */
static void make_folders(const char *path)
{
    char partial[4096];
    if (strlen(path) >= sizeof partial) {
        errno = ENAMETOOLONG;
        fail("mkdir", path);
    }
    strcpy(partial, path);
    for (char *slash = partial + 1;; slash++) {
        if (*slash != '/' && *slash != '\0')
            continue;
        char kept = *slash;
        *slash = '\0';
        if (mkdir(partial, 0755) != 0 && errno != EEXIST)
            fail("mkdir", partial);
        if (kept == '\0')
            return;
        *slash = kept;
    }
}

static void cover(struct bound *bounds, int count, const char *options)
{
    umask(022);
    /* Opened in this namespace (a mount of another cannot be bound), before a tmpfs hides them. */
    for (int i = 0; i < count; i++)
        if ((bounds[i].fd = open(bounds[i].path, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
            fail("open", bounds[i].path);
    const char *covered = NULL;
    for (int i = 0; i < count; i++) {
        if (covered == NULL || strcmp(covered, bounds[i].cover) != 0) {
            covered = bounds[i].cover;
            if (mount("tmpfs", covered, "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
                fail("mount", covered);
        }
        char source[64];
        snprintf(source, sizeof source, "/proc/self/fd/%d", bounds[i].fd);
        make_folders(bounds[i].path);
        if (mount(source, bounds[i].path, NULL, MS_BIND | MS_REC, NULL) != 0)
            fail("mount", bounds[i].path);
        close(bounds[i].fd);
    }
}

static void become(uid_t uid, gid_t gid, pid_t runner)
{
    if (setgroups(0, NULL) != 0)
        fail("setgroups", "[]");
    if (setgid(gid) != 0)
        fail("setgid", user_name);
    if (setuid(uid) != 0)
        fail("setuid", user_name);
    umask(077);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail("prctl", "no_new_privs");
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) /* after setuid, which clears it */
        fail("prctl", "pdeathsig");
    if (getppid() != runner) /* the runner died before the line above */
        _exit(RUNNER_GONE);
}

/* The NUL-ended NAME=VALUE entries of fd, as an environment (fd is closed: the command gets none of it). */
static char **read_environment(int fd)
{
    size_t size = 0, room = 1 << 16;
    char *text = malloc(room);
    for (;;) {
        if (text == NULL)
            fail("read", "the environment");
        if (size == room) {
            text = realloc(text, room *= 2);
            continue;
        }
        ssize_t got = read(fd, text + size, room - size);
        if (got == 0)
            break;
        if (got < 0 && errno != EINTR)
            fail("read", "the environment");
        if (got > 0)
            size += (size_t)got;
    }
    close(fd);
    size_t count = 0;
    for (size_t i = 0; i < size; i++)
        count += text[i] == '\0';
    char **env = calloc(count + 1, sizeof *env);
    if (env == NULL)
        fail("read", "the environment");
    for (size_t i = 0, start = 0, n = 0; i < size; i++)
        if (text[i] == '\0') {
            env[n++] = text + start;
            start = i + 1;
        }
    return env;
}

int main(int argc, char **argv)
{
    static struct bound bounds[MOST_PATHS];
    int bound_count = 0, env_fd = -1, option;
    const char *program = NULL, *cwd = NULL, *proc_options = NULL, *cover_options = NULL, *folder = NULL;
    long uid = -1, gid = -1, runner = -1;

    while ((option = getopt(argc, argv, "+n:u:g:p:d:o:m:c:b:E:x:")) != -1) {
        if (option == 'b' && bound_count == MOST_PATHS) {
            errno = E2BIG;
            fail("too many", "folders");
        }
        switch (option) {
        case 'n': user_name = optarg; break;
        case 'u': uid = number(optarg, "uid"); break;
        case 'g': gid = number(optarg, "gid"); break;
        case 'p': runner = number(optarg, "runner pid"); break;
        case 'd': cwd = optarg; break;
        case 'x': program = optarg; break;
        case 'o': proc_options = optarg; break;
        case 'm': cover_options = optarg; break;
        case 'c': folder = optarg; break;
        case 'b':
            if (folder == NULL) {
                errno = EINVAL;
                fail("-b before -c:", optarg);
            }
            bounds[bound_count++] = (struct bound){folder, optarg, -1};
            break;
        case 'E': env_fd = (int)number(optarg, "environment fd"); break;
        default:
            errno = EINVAL;
            fail("bad", "arguments");
        }
    }
    if (uid < 0 || gid < 0 || runner < 0 || env_fd < 0 || !program || !cwd || !proc_options || !cover_options
        || optind >= argc) {
        errno = EINVAL;
        fail("missing", "arguments");
    }
    char **env = read_environment(env_fd);
    if (unshare(CLONE_NEWNS) != 0)
        fail("unshare", "mount namespace");
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        fail("mount", "/ (private)");
    cover(bounds, bound_count, cover_options);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, proc_options) != 0)
        fail("mount", "/proc");
    if (chdir(cwd) != 0)
        fail("chdir", cwd);
    become((uid_t)uid, (gid_t)gid, (pid_t)runner);
    execve(program, argv + optind, env);
    fprintf(stderr, "wml-runner: cannot run %s: %s\n", program, strerror(errno));
    return CANNOT_RUN;
}
