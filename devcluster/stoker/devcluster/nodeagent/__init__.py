"""Process node agent: a stand-in for the kubelet that runs pods as local processes.

TEST / LOCAL USE ONLY. This is not a kubelet and gives none of a kubelet's
guarantees:

* Images are ignored. Each container runs its ``command`` + ``args`` (with the
  kubelet's ``$(VAR)`` expansion) as a plain process on the host, as the
  agent's own user, with no isolation at all: no namespaces, cgroups, resource
  limits, volumes, or image filesystem. ``PATH`` starts with the directory of
  the Python running the agent, so ``python`` means the same interpreter.
* Networking is loopback only. The node gets 127.N.0.1 and each pod its own
  127.N.a.b (N unique among the agents on this machine, allocated under a lock
  in a shared directory; see ``ipam``), published as ``status.podIP(s)``;
  ``hostIP`` is the node address (also the pod IP of ``hostNetwork`` pods).
  All pods share the host's network namespace: servers should bind their pod
  IP (env via ``fieldRef: status.podIP``), since two pods binding 0.0.0.0 on
  one port collide (torch's TCPStore server binds all addresses: give
  concurrent jobs distinct ports). Connections to another pod come from
  127.0.0.1, not from the caller's pod IP. There is no kube-proxy: ClusterIPs
  are not reachable.
* Cluster DNS is emulated inside pod processes, not served: a ``sitecustomize``
  shim (``shim/``) put first on ``PYTHONPATH`` wraps ``socket.getaddrinfo`` /
  ``gethostbyname(_ex)`` / ``gethostname`` for Python code, and, where a C
  compiler exists, ``shim/stokerdns.c`` (built once per machine, set as
  ``LD_PRELOAD``) answers ``getaddrinfo(3)`` / ``gethostbyname(3)`` for
  dynamically linked programs (C/C++ code such as torch's TCPStore; not static
  Go binaries). Service names (``<svc>.<ns>.svc.cluster.local``,
  ``<svc>.<ns>.svc``, ``<svc>.<ns>``, ``<svc>``) resolve to the ready pod IPs
  behind the Service, for headless and ClusterIP Services alike (see
  ``dnsmap``); ``<hostname>.<subdomain>...`` records and the pod's own
  hostname work too. EndpointSlices stay empty for process-node pods (the
  apiserver rejects loopback endpoint addresses), so nothing may rely on them.

What exists:

* Node registration (or adoption of an existing Node of that name) with
  capacity/allocatable cpu, memory, pods, ``nvidia.com/gpu`` = ``--gpus``
  (device ids 0..N-1 handed out per container as ``CUDA_VISIBLE_DEVICES`` /
  ``NVIDIA_VISIBLE_DEVICES``, empty for containers that request none; see
  ``gpus``; nothing checks that such devices exist), labels ``--label k=v``,
  ``kubernetes.io/hostname``, ``stoker.dev/process-node=true``; the Ready
  condition refreshed by NodeStatus updates every 10s and a Lease in
  ``kube-node-lease`` renewed every 2s.
* On SIGTERM/SIGINT: every pod process is SIGKILLed (the "machine" is gone) and
  the agent exits WITHOUT touching the Node, so the node lifecycle controller
  has to notice. If the agent is SIGKILLed instead, its pod processes still
  die: direct children through PR_SET_PDEATHSIG, and all of them (also those
  in their own session) through a small watchdog process
  (``python -m stoker.devcluster.nodeagent.watchdog``, own session) that waits for the
  agent's end and kills every process carrying the agent's marker in its
  environment (``STOKER_NODEAGENT_HOSTS=<state-dir>/dns/hosts.json``). A
  restarted agent with the same ``--state-dir`` kills leftovers too, then
  continues the pods bound to it: containers that were running count as
  exited with 137 ("process lost") and restart per restartPolicy.
* Pods bound to the node (watch with ``spec.nodeName`` field selector):
  init containers (sequentially) and all containers (each a process group);
  env literals, ``fieldRef`` (metadata.name/namespace/uid, labels['k'],
  annotations['k'], spec.nodeName, spec.serviceAccountName, status.podIP(s),
  status.hostIP(s)), ``resourceFieldRef``, ``secretKeyRef`` /
  ``configMapKeyRef`` (``optional`` honoured), ``envFrom`` of Secrets and
  ConfigMaps; ``HOSTNAME`` = spec.hostname or pod name; ``workingDir`` (must
  exist; default: the pod's directory under the state dir).
* restartPolicy Always / OnFailure / Never with exponential crash-loop backoff
  (default 1s doubling to 30s, shorter than the kubelet's 10s/300s; flags
  ``--restart-backoff-base/cap``), ``restartCount``, ``lastState``, real exit
  codes (signals as 128+N) with reason Completed / Error (never OOMKilled),
  phases Pending / Running / Succeeded / Failed following the kubelet's rules,
  conditions Initialized / ContainersReady / Ready, ``startTime``.
  readinessProbe (exec, tcpSocket, httpGet); no liveness or startup probes.
* Deletion: SIGTERM to each container's process group, SIGKILL to the process
  tree after the grace period, then the pod is deleted with grace 0 (as the
  kubelet finishes). Pods deleted while the agent was down are cleaned up at
  its next start.
* Logs: stdout+stderr of each container are appended (across restarts) to
  ``<state-dir>/pods/<namespace>_<pod>/<container>.log``; files are kept after
  the pod is gone. ``PYTHONUNBUFFERED=1`` is set so output appears promptly.
* ``kubectl logs`` / ``read_namespaced_pod_log``: with ``--kubelet-client-ca``
  (``LocalCluster.start_process_node`` passes the cluster CA) the agent serves a
  minimal kubelet API on ``<node address>:10250`` (or an ephemeral port; the
  Node's ``status.daemonEndpoints.kubeletEndpoint.Port`` says which) to the
  apiserver's kubelet client certificate: ``/containerLogs`` with ``follow``,
  ``tailLines``, ``limitBytes`` and ``previous`` (each container start records
  its offset in ``<container>.log.starts``). See ``kubeletapi``.
* Agent logs: JSON lines on stderr.

Not supported: volumes, ports/hostPort, liveness/startup probes, native sidecar
init containers, ephemeral containers, resource enforcement, service account
tokens, service-link env vars, exec/attach/port-forward through the API.

Run: ``python -m stoker.devcluster.nodeagent --kubeconfig K --node NAME --gpus N
[--label k=v ...] --state-dir D``.
"""

__version__ = "0.1.0"
