"""Build the labelled query set (quality/queries.json) from a corpus file; the output is committed.

    python -m quality.queries --corpus .data/eval/corpus.jsonl --out quality/queries.json

Three kinds of query, each with the page(s) that answer it:

- ``keyword``: an identifier (a constant such as ``EPOLLEXCLUSIVE`` or ``PR_SET_NAME``, or a snake_case name
  such as ``open_how``) that occurs in exactly one page of the corpus, at least twice there: a user pasting an
  identifier from code or a log. Mined deterministically, at most two per page, the most frequent first.
- ``description``: the page's NAME line ("open and possibly create a file"), which the corpus removes from the
  indexed text, so it is a summary of the page in other words, not a copy of a sentence in it. Only
  descriptions that name a single page are used.
- ``question``: hand-written natural-language questions (QUESTIONS below) with every page that answers them.

The CI gate ingests only the short labelled pages (``ci_corpus.json``, committed: ~100 KB of man-page text,
under the pages' own licences) so it runs in seconds; `make eval` builds the whole corpus from the package.

The set records the corpus package and version it was built from; `quality.evaluate` refuses a corpus whose
pages do not include every labelled page, so a different package version cannot quietly change the test.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from dataclasses import asdict
from pathlib import Path

from quality.corpus import Page, read_jsonl

KEYWORDS_PER_PAGE = 2
# The CI subset: every labelled page shorter than this (rendered text, NAME removed), so the gate embeds ~100 KB.
CI_PAGE_CHARS = 2500
_IDENTIFIER = re.compile(r"\b(?:[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]|[a-z][a-z0-9]*_[a-z0-9_]*[a-z0-9])\b")

# (question, pages that answer it). Written by hand against the page texts of manpages-dev 6.03.
QUESTIONS: list[tuple[str, list[str]]] = [
    ("how do I wait until a child process exits and get its status", ["wait.2", "wait4.2"]),
    ("make a copy of the current process", ["fork.2", "vfork.2", "clone.2"]),
    ("send a signal to another process", ["kill.2", "tkill.2", "rt_sigqueueinfo.2", "pidfd_send_signal.2"]),
    ("map a file into memory", ["mmap.2"]),
    ("create a unidirectional channel between two related processes", ["pipe.2"]),
    ("duplicate a file descriptor onto a specific number", ["dup.2"]),
    ("pause the thread for a number of nanoseconds", ["nanosleep.2", "clock_nanosleep.2"]),
    ("change the permission bits of a file", ["chmod.2"]),
    ("remove a name from the filesystem", ["unlink.2"]),
    ("move a file to a new path atomically", ["rename.2"]),
    (
        "wait for several file descriptors to become ready",
        ["select.2", "poll.2", "epoll_wait.2", "select_tut.2"],
    ),
    (
        "scalable I/O event notification for many sockets",
        ["epoll.7", "epoll_create.2", "epoll_wait.2", "epoll_ctl.2"],
    ),
    ("create an endpoint for network communication", ["socket.2"]),
    ("give a socket a local address", ["bind.2"]),
    ("initiate a connection to a server socket", ["connect.2"]),
    ("take an incoming connection from the listen queue", ["accept.2"]),
    ("limit how much CPU time or memory a process may use", ["getrlimit.2"]),
    ("let a debugger observe and control another process", ["ptrace.2"]),
    ("replace the running program with a new executable", ["execve.2", "execveat.2"]),
    ("install a handler that runs when a signal arrives", ["sigaction.2", "signal.2"]),
    ("fast user-space locking primitive", ["futex.2"]),
    (
        "watch a directory for file changes",
        ["inotify_init.2", "inotify_add_watch.2", "fanotify_init.2", "fanotify_mark.2"],
    ),
    (
        "copy data between a file and a socket inside the kernel without user buffers",
        ["sendfile.2", "splice.2", "copy_file_range.2"],
    ),
    (
        "advise the kernel about how memory will be accessed",
        ["madvise.2", "posix_fadvise.2", "process_madvise.2"],
    ),
    ("prevent pages of memory from being swapped out", ["mlock.2"]),
    ("change memory page protection to read only", ["mprotect.2"]),
    ("take an advisory lock on a whole file", ["flock.2", "fcntl.2"]),
    ("make sure file data reaches the disk", ["fsync.2", "sync.2", "sync_file_range.2"]),
    ("change the root directory of the process", ["chroot.2", "pivot_root.2"]),
    ("run with the privileges of another user id", ["setuid.2", "seteuid.2", "setresuid.2", "setreuid.2"]),
    ("find out the kernel name and release", ["uname.2"]),
    ("total and free RAM and the load average", ["sysinfo.2"]),
    ("get cryptographically secure random bytes", ["getrandom.2"]),
    ("anonymous file that lives only in memory", ["memfd_create.2", "memfd_secret.2"]),
    ("timer delivered through a file descriptor", ["timerfd_create.2"]),
    ("file descriptor used as an event counter between threads", ["eventfd.2"]),
    ("set the name of the calling thread", ["prctl.2"]),
    ("default permission mask for newly created files", ["umask.2"]),
    ("check whether the user may read a file", ["access.2"]),
    ("make a hard link to an existing file", ["link.2"]),
    ("create a symbolic link", ["symlink.2"]),
    ("create a new directory", ["mkdir.2"]),
    ("shrink or extend a file to a given length", ["truncate.2", "fallocate.2"]),
    ("move the read/write offset of an open file", ["lseek.2", "llseek.2"]),
    ("schedule a SIGALRM after some seconds", ["alarm.2", "setitimer.2", "getitimer.2"]),
    ("grow the data segment of the process heap", ["brk.2"]),
    ("restart or power off the machine", ["reboot.2"]),
    ("pin a process to particular CPUs", ["sched_setaffinity.2"]),
    ("start a new session detached from the terminal", ["setsid.2"]),
    ("set file access and modification timestamps with nanosecond precision", ["utimensat.2", "utime.2"]),
    ("free space on a mounted filesystem", ["statfs.2", "statvfs.3"]),
    ("reserve disk blocks for a file ahead of time", ["fallocate.2"]),
    ("shared memory segment between processes", ["shmget.2", "shmop.2", "shmctl.2"]),
    ("attach a filesystem to the directory tree", ["mount.2"]),
    ("get a file descriptor that refers to a process", ["pidfd_open.2"]),
    ("close every file descriptor in a range", ["close_range.2"]),
    (
        "restrict the system calls a process can make with a filter",
        ["seccomp.2", "seccomp_unotify.2", "prctl.2"],
    ),
    ("run the process in new namespaces", ["unshare.2", "clone.2", "setns.2"]),
    ("load a new kernel to boot into later", ["kexec_load.2"]),
    ("read the kernel message ring buffer", ["syslog.2"]),
    ("scatter gather read into several buffers at once", ["readv.2"]),
    ("read extended attributes of a file", ["getxattr.2", "listxattr.2"]),
    ("read where a symbolic link points", ["readlink.2"]),
    ("find out the thread id of the caller", ["gettid.2"]),
    ("resource usage of a terminated child such as CPU time", ["getrusage.2", "wait4.2", "times.2"]),
    ("block signals while a critical section runs", ["sigprocmask.2"]),
    ("alternate stack for signal handlers", ["sigaltstack.2"]),
    ("monitor performance counters of the CPU", ["perf_event_open.2"]),
    ("asynchronous I/O context in the kernel", ["io_setup.2", "io_submit.2", "io_getevents.2"]),
    ("give up the processor to other threads", ["sched_yield.2"]),
    ("change the owner and group of a file", ["chown.2"]),
    ("detach a mounted filesystem", ["umount.2"]),
    (
        "set the scheduling priority of a process",
        ["getpriority.2", "nice.2", "sched_setattr.2", "sched_setparam.2"],
    ),
    ("receive several messages on a socket with one call", ["recvmmsg.2"]),
    ("resize an existing memory mapping", ["mremap.2"]),
    ("which CPU and NUMA node am I running on", ["getcpu.2"]),
    ("load a kernel module", ["init_module.2"]),
    ("file status such as size, owner and timestamps", ["stat.2", "statx.2"]),
    (
        "sandbox a process's access to files without root",
        ["landlock_create_ruleset.2", "landlock_add_rule.2", "landlock_restrict_self.2"],
    ),
    ("handle page faults of a memory region in user space", ["userfaultfd.2"]),
    ("read memory of another process directly", ["process_vm_readv.2"]),
    ("store a secret key in the kernel keyring", ["add_key.2", "keyctl.2", "request_key.2"]),
    ("create a device special file", ["mknod.2"]),
    ("get the current time of day with microseconds", ["gettimeofday.2", "time.2"]),
    ("message queue for System V inter-process communication", ["msgget.2", "msgop.2", "msgctl.2"]),
    ("semaphore set operations", ["semop.2", "semget.2", "semctl.2"]),
    ("invoke a system call by its number", ["syscall.2"]),
    ("list of all Linux system calls", ["syscalls.2"]),
]


def keyword_queries(pages: list[Page]) -> list[dict]:
    """Identifiers unique to one page (at least twice there), at most KEYWORDS_PER_PAGE per page."""
    counts = {page.document_id: collections.Counter(_IDENTIFIER.findall(page.text)) for page in pages}
    document_frequency: collections.Counter[str] = collections.Counter()
    for counter in counts.values():
        document_frequency.update(set(counter))
    all_names = {name for page in pages for name in page.names}
    queries = []
    for page in pages:
        candidates = sorted(
            (
                (-count, token)
                for token, count in counts[page.document_id].items()
                if document_frequency[token] == 1
                and count >= 2
                and len(token) >= 6
                and token not in all_names
            ),
        )
        for _, token in candidates[:KEYWORDS_PER_PAGE]:
            queries.append({"kind": "keyword", "query": token, "relevant": [page.document_id]})
    return queries


def description_queries(pages: list[Page]) -> list[dict]:
    """NAME-line descriptions that belong to exactly one page."""
    seen = collections.Counter(page.description.lower() for page in pages)
    return [
        {"kind": "description", "query": page.description, "relevant": [page.document_id]}
        for page in pages
        if seen[page.description.lower()] == 1 and len(page.description.split()) >= 3
    ]


def question_queries(pages: list[Page]) -> list[dict]:
    """The hand-written questions, each with the answering pages this corpus has (none missing entirely)."""
    ids = {page.document_id for page in pages}
    queries = []
    for question, relevant in QUESTIONS:
        present = [document_id for document_id in relevant if document_id in ids]
        if not present:
            raise SystemExit(f"no page of {relevant} is in the corpus (question {question!r})")
        queries.append({"kind": "question", "query": question, "relevant": present})
    return queries


def ci_subset(pages: list[Page], queries: list[dict]) -> list[Page]:
    """The pages the CI gate ingests: every labelled page under CI_PAGE_CHARS, in id order."""
    labelled = {document_id for query in queries for document_id in query["relevant"]}
    return [page for page in pages if page.document_id in labelled and len(page.text) < CI_PAGE_CHARS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Build quality/queries.json (and the CI subset quality/ci_corpus.json) from a corpus file."
    )
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("queries.json"))
    args = parser.parse_args(argv)
    header, pages = read_jsonl(args.corpus)
    queries = []
    texts: set[str] = set()
    for query in keyword_queries(pages) + description_queries(pages) + question_queries(pages):
        if query["query"].lower() not in texts:  # one label per query text
            texts.add(query["query"].lower())
            queries.append(query)
    for number, query in enumerate(queries):
        query["id"] = f"q{number:04d}"
    document = {"corpus": header, "pages": sorted(page.document_id for page in pages), "queries": queries}
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    subset = ci_subset(pages, queries)
    ci_path = args.out.with_name("ci_corpus.json")
    ci_document = {"corpus": header, "pages": [asdict(page) for page in subset]}
    ci_path.write_text(json.dumps(ci_document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"CI subset: {len(subset)} pages -> {ci_path}")
    kinds = collections.Counter(query["kind"] for query in queries)
    print(f"{len(queries)} queries ({dict(kinds)}) over {len(pages)} pages -> {args.out}")


if __name__ == "__main__":
    main()
