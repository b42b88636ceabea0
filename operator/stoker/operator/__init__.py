"""Stoker's Kubernetes operator: reconciles TrainingJobs into elastic torchrun worker pods.

Layout: ``main.py`` holds the kopf decorators and startup settings only; every
decision is a pure function in a small module (``reconcile``, ``pods``,
``policy_failure``, ``policy_success``, ``policy_ttl``, ``status``) that the
thin I/O shell (``controller``, ``kube``) calls.
"""
