"""Start a kernel with resource limits: ``python kernel_launcher.py
--memory BYTES --tasks N --file-size BYTES --cpu SECONDS [--user UID:GID]
-- KERNEL COMMAND...``.

The grader (:mod:`helpers.course.sandbox`) runs this file by its path, so it
imports nothing of the course. It sets the limits on its own process, which
the kernel and everything the kernel starts inherit, and, with ``--user``
(when the grader runs as root), hands the kernel's connection file and
sockets to that user and drops to it, so that the kernel cannot write the
course's files. Then it replaces itself by the kernel.
"""
import argparse
import json
import os
import resource
import sys


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", type=int, required=True, help="address space of each process, bytes")
    parser.add_argument("--tasks", type=int, required=True, help="processes and threads of the user, in all")
    parser.add_argument("--file-size", type=int, required=True, help="largest file it may write, bytes")
    parser.add_argument("--cpu", type=int, required=True, help="CPU seconds of each process")
    parser.add_argument("--user", default=None, help="UID:GID to run the kernel as")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.user:
        uid, gid = (int(v) for v in args.user.split(":"))
        connection = command[command.index("-f") + 1]
        os.chown(connection, uid, gid)
        info = json.load(open(connection))
        if info.get("transport") == "ipc":
            os.chown(os.path.dirname(info["ip"]), uid, gid)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    for limit, value in ((resource.RLIMIT_AS, args.memory), (resource.RLIMIT_NPROC, args.tasks),
                         (resource.RLIMIT_FSIZE, args.file_size), (resource.RLIMIT_CPU, args.cpu),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
