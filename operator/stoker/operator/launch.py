"""`python -m stoker.operator.launch <torchrun arguments>`: torchrun, but the pod's
exit code is the failing worker's own exit code.

Plain torchrun exits 1 whatever its workers exited with, which would hide the
user's exit code from spec.failurePolicy.exitCodeRules. This runs torchrun's
own `main` in-process and turns its ChildFailedError into the root-cause
worker's exit code (a worker killed by signal N exits 128+N, like a shell), and
a signal to the agent itself (pod deletion) into 128+N as well.

Runs inside the worker pod (needs torch); the operator only names it.
"""
from __future__ import annotations

import sys

# The agent lost the rendezvous store (e.g. the operator restarted): not the
# user's fault. policy_failure classifies it as infrastructure.
EXIT_RENDEZVOUS_LOST = 86


def exit_code_of(exitcode: int) -> int:
    if exitcode < 0:
        return 128 + (-exitcode)
    return exitcode if 0 < exitcode < 256 else 1


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = exit_code_of(int(failure.exitcode))
        print(f"stoker launch: worker rank {rank} exited with {failure.exitcode}; exiting {code}",
              file=sys.stderr, flush=True)
        return code
    except SignalException as e:
        return 128 + int(e.sigval)
    except RendezvousConnectionError as e:
        print(f"stoker launch: lost the rendezvous store: {e}", file=sys.stderr, flush=True)
        return EXIT_RENDEZVOUS_LOST
    return 0


if __name__ == "__main__":
    sys.exit(main())
