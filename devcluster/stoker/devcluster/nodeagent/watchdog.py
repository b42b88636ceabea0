"""Kills a node agent's pod processes once the agent is gone, however it went
(SIGKILL included): ``python -m stoker.devcluster.nodeagent.watchdog MARKER`` runs in its
own session, blocks reading stdin (a pipe whose only writer is the agent) and,
at EOF, SIGKILLs every process whose environment holds MARKER."""
import sys

from .procs import kill_marked


def main() -> None:
    marker = sys.argv[1].encode()
    sys.stdin.buffer.read()  # EOF when the agent exits
    for _ in range(3):  # a few passes: a dying parent may still fork
        kill_marked(marker)


if __name__ == "__main__":
    main()
