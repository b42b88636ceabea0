"""Stoker's Kubernetes operator: reconciles TrainingJobs into elastic torchrun worker pods.

Layout: ``main.py`` holds the kopf decorators and startup settings only; every
decision is a pure function in a small module that the thin I/O shell
(``controller``, ``kube``) calls. ``reconcile.plan`` is a list of named steps
(``reconcile.STEPS``) over one ``pass_state.Pass``; each step lives in the module
named after the spec field it implements: ``policy_ttl`` (runPolicy.ttlSecondsAfterFinished),
``policy_deadline`` (runPolicy.activeDeadlineSeconds), ``drain`` (planned stops),
``policy_suspend`` (runPolicy.suspend), ``policy_failure`` (failurePolicy),
``on_call`` (the restart/checkpoint request annotations), ``policy_success`` and
``replicas`` (spec.replicas / minReplicas).
"""
